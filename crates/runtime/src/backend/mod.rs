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

/// The static guest binary: `$STOCKADE_GUEST_BIN`, else `stockade-guest` beside the current
/// executable, else the cargo target directory's static build beside it.
pub fn guest_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STOCKADE_GUEST_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STOCKADE_GUEST_BIN={}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("stockade-guest"),
        dir.join("../x86_64-unknown-linux-gnu/release/stockade-guest"),
    ];
    for c in &candidates {
        if c.is_file() {
            return std::fs::canonicalize(c).map_err(|e| format!("{}: {e}", c.display()));
        }
    }
    Err(format!(
        "the static guest binary stockade-guest was not found (looked at {}); build it with \
         `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p stockade-guest --target x86_64-unknown-linux-gnu` \
         or set STOCKADE_GUEST_BIN",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
