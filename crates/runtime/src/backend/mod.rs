//! The stronger levels' host side: `__vmm`, started by the supervisor in place of `__launch` with
//! the same descriptors, starts the backend (runsc or QEMU) and carries the sandbox's descriptors
//! and control frames over one byte stream (`stockade_agent::tunnel`). (Being built: issue 9.)

pub mod vmm;

use crate::error::RunError;
use crate::levels::Resolved;
use crate::spawn::{Launched, spawn_helper};
use std::path::PathBuf;
use stockade_jail::plan::{BackendLevel, BackendSpec};
use stockade_policy::{Level, Policy};

/// Starts the sandbox's helper: `__launch` for the container level, `__vmm` above it.
pub fn spawn(resolved: &Resolved, allow_weaker: bool) -> std::io::Result<Launched> {
    match resolved.level {
        Level::Container => spawn_helper("__launch", allow_weaker),
        Level::Gvisor | Level::Microvm => spawn_helper("__vmm", allow_weaker),
    }
}

/// Where a sandbox's backend files live on the host (created by `__vmm`, removed at its end).
pub fn work_dir(id: &str) -> PathBuf {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        PathBuf::from("/run/stockade/backend").join(id)
    } else {
        std::env::temp_dir()
            .join(format!("stockade-backend-{uid}"))
            .join(id)
    }
}

/// What `__vmm` needs for `resolved`, or None at the container level.
pub fn spec(
    resolved: &Resolved,
    policy: &Policy,
    id: &str,
) -> Result<Option<BackendSpec>, RunError> {
    let level = match resolved.level {
        Level::Container => return Ok(None),
        Level::Gvisor => BackendLevel::Gvisor,
        Level::Microvm => BackendLevel::Microvm,
    };
    if level == BackendLevel::Microvm {
        let least = vmm::VMM_OVERHEAD + vmm::MIN_GUEST_MEMORY;
        if policy.limits.memory.0 < least {
            // Below this QEMU is killed by the limit before the guest boots: refuse up front
            // with the reason rather than fail later with a dead VMM.
            return Err(RunError::Usage(format!(
                "the microvm level needs a memory limit of at least {} MiB (limits.memory / --memory \
                 is {} MiB): the limit covers QEMU itself (~{} MiB) and the guest's RAM (at least \
                 {} MiB)",
                least >> 20,
                policy.limits.memory.0 >> 20,
                vmm::VMM_OVERHEAD >> 20,
                vmm::MIN_GUEST_MEMORY >> 20
            )));
        }
    }
    let guest_bin = guest_binary().map_err(RunError::Unsupported)?;
    let runsc = match level {
        BackendLevel::Gvisor => Some(crate::gvisor::runsc_binary().map_err(RunError::Unsupported)?),
        BackendLevel::Microvm => None,
    };
    Ok(Some(BackendSpec {
        level,
        guest_bin,
        work_dir: work_dir(id),
        memory: policy.limits.memory.0,
        cpus: (policy.limits.cpus.ceil() as u32).max(1),
        accel: resolved.accel,
        runsc,
        platform: resolved.platform.clone(),
    }))
}

/// The static guest binary: `$STOCKADE_GUEST_BIN`, else the static build in the cargo target
/// directory beside the current executable, else `stockade-guest` beside it. Whichever is found
/// must be statically linked (no ELF interpreter): inside a microVM or a gVisor root there is no
/// dynamic loader to run anything else.
pub fn guest_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STOCKADE_GUEST_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            check_static(&p).map(|()| p)
        } else {
            Err(format!("STOCKADE_GUEST_BIN={}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/release/stockade-guest"),
        dir.join("stockade-guest"),
    ];
    let mut why = Vec::new();
    for c in &candidates {
        if c.is_file() {
            match check_static(c) {
                Ok(()) => {
                    return std::fs::canonicalize(c).map_err(|e| format!("{}: {e}", c.display()));
                }
                Err(e) => why.push(e),
            }
        } else {
            why.push(format!("{}: not found", c.display()));
        }
    }
    Err(format!(
        "no static guest binary stockade-guest ({}); build it with \
         `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p stockade-guest --target x86_64-unknown-linux-gnu` \
         or set STOCKADE_GUEST_BIN",
        why.join("; ")
    ))
}

/// Ok when `p` is an x86-64 ELF executable without a program interpreter (statically linked).
pub fn check_static(p: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |what: &str| format!("{}: {what}", p.display());
    let mut f = std::fs::File::open(p).map_err(|e| bad(&e.to_string()))?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).map_err(|_| bad("not an ELF file"))?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 || u16::from_le_bytes([h[18], h[19]]) != 62 {
        return Err(bad("not a 64-bit little-endian x86-64 ELF file"));
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().map_err(|_| bad("bad header"))?);
    let phentsize = u64::from(u16::from_le_bytes([h[54], h[55]]));
    let phnum = u16::from_le_bytes([h[56], h[57]]);
    if phentsize < 56 || phnum > 256 {
        return Err(bad("bad program headers"));
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 4];
        f.seek(SeekFrom::Start(phoff + i * phentsize))
            .and_then(|_| f.read_exact(&mut ph))
            .map_err(|_| bad("truncated program headers"))?;
        if u32::from_le_bytes(ph) == 3 {
            return Err(bad(
                "dynamically linked (it has an ELF interpreter); the guest needs the static build",
            ));
        }
    }
    Ok(())
}

/// Removes what a backend may have left when its `__vmm` died without cleaning up (killed by
/// the supervisor's timeout, or with a crashed server): runsc's container and state, the work
/// directory. Returns what could not be removed.
pub fn cleanup_after(id: &str) -> Vec<String> {
    let dir = work_dir(id);
    if !dir.exists() {
        return Vec::new();
    }
    let runsc_root = dir.join("runsc");
    if runsc_root.exists()
        && let Ok(runsc) = crate::gvisor::runsc_binary()
    {
        crate::gvisor::cleanup(&runsc, &runsc_root, &vmm::runsc_id(id));
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("{}: {e}", dir.display())],
    }
}
