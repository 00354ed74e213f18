//! The gvisor level: an OCI bundle for the system's `runsc`, driven by `__vmm` (see `backend`).
//!
//! - [`write_bundle`] builds the bundle (root directory, mounts, the guest binary as init) and
//!   returns the plan the agent still needs inside;
//! - [`runsc_command`] is the `runsc run` whose stdin/stdout are the container init's fds 0/1
//!   (host pipes imported as plain descriptors: the tunnel's byte stream), with cgroups left to
//!   the caller (`--ignore-cgroups`: runsc and every process it starts stay in the cgroups of
//!   whoever starts it);
//! - [`cleanup`] kills and deletes the container and removes its state (idempotent);
//! - [`probe`] finds the platform that works here, cached per boot.
//!
//! See docs/gvisor.md for what this runsc version can and cannot do.

mod bundle;
mod probe;

pub use bundle::{CAPABILITIES, GUEST_ARGS, GUEST_PATH, write_bundle, write_bundle_with_args};
pub use probe::{PlatformTry, probe, probe_uncached, runsc_binary, try_each};

use std::path::Path;
use std::process::{Command, Stdio};

/// The `runsc run` of the bundle at `bundle` as container `id`: `runsc --root <state_root>
/// --platform <platform> --network none --ignore-cgroups --overlay2 none run --bundle <bundle>
/// <id>`. Its stdin and stdout become the container init's fds 0 and 1 (the caller sets them to
/// the tunnel's pipes or socket); its stderr carries runsc's errors and the init's fd 2 (the
/// caller points it at a log). No network device: loopback only.
pub fn runsc_command(
    runsc: &Path,
    platform: &str,
    state_root: &Path,
    bundle: &Path,
    id: &str,
) -> Command {
    let mut c = Command::new(runsc);
    c.arg("--root")
        .arg(state_root)
        .arg("--platform")
        .arg(platform)
        .args([
            "--network",
            "none",
            "--ignore-cgroups",
            "--overlay2",
            "none",
        ])
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id);
    c
}

/// Kills container `id` (SIGKILL to all its processes), deletes it (`delete --force` also stops
/// the sandbox and gofer), and removes its state files under `state_root`, then `state_root`
/// itself when empty. Safe to call twice and for a container that never started.
///
/// runsc is asked only while `state_root` holds anything: a `runsc run` that returned has
/// destroyed its container and sandbox and left the directory empty, and asking runsc then
/// costs two process starts (~100-130 ms here) on the way out of every sandbox for nothing.
/// Whatever of the sandbox could still run is in its cgroups, which the caller destroys.
pub fn cleanup(runsc: &Path, state_root: &Path, id: &str) {
    let quiet = |args: &[&str]| {
        let _ = Command::new(runsc)
            .arg("--root")
            .arg(state_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let has_state = std::fs::read_dir(state_root).is_ok_and(|mut rd| rd.next().is_some());
    if has_state {
        quiet(&["kill", "--all", id, "KILL"]);
        quiet(&["delete", "--force", id]);
    }
    if let Ok(rd) = std::fs::read_dir(state_root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().contains(id) {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    let _ = std::fs::remove_dir(state_root);
}
