//! The gvisor level: an OCI bundle for the system's `runsc`, driven by `__vmm` (see `backend`).
//! (Being built: issue 9.)

/// The runsc platform that works on this host (e.g. "ptrace"), or why gVisor cannot run here.
pub fn probe() -> Result<String, String> {
    Err("the gvisor backend is not built yet".into())
}
