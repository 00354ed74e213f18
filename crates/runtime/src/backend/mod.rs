//! The stronger levels' host side: `__vmm`, started by the supervisor in place of `__launch` with
//! the same descriptors, starts the backend (runsc or QEMU) and carries the sandbox's descriptors
//! and control frames over one byte stream (`stockade_agent::tunnel`). (Being built: issue 9.)

pub mod vmm;

use std::path::PathBuf;

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
