//! The microvm level: QEMU `-M microvm` with the static guest agent as init, driven by `__vmm`
//! (see `backend`). (Being built: issue 9.)

use stockade_jail::plan::Accel;

/// Whether a microVM can be started here with `accel` (KVM is detected by trying), or why not.
pub fn probe(accel: Accel) -> Result<(), String> {
    let _ = accel;
    Err("the microvm backend is not built yet".into())
}
