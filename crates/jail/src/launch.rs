//! Creating the sandbox's namespaces from the launcher, a freshly exec'd, single-threaded helper
//! (never a fork of the multi-threaded supervisor).
//!
//! The launcher `clone`s the sandbox's first process directly into new user, mount, PID, network,
//! IPC and UTS namespaces; that child is PID 1 of its PID namespace. While the child waits on a
//! pipe, the launcher (still in the host's namespaces) writes its uid and gid maps and lets it
//! build its root; meanwhile it puts the child into its cgroups and then says so on the same pipe.
//! The child enters a new cgroup namespace only after that ([`enter_cgroups`]), so
//! /proc/self/cgroup inside shows `/`, and nothing untrusted runs before.
//!
//! Identity mapping:
//! - launched by an ordinary user: the one mapping the kernel allows, sandbox uid → caller's uid;
//! - launched by root: sandbox uid → an otherwise unused host uid (`idmap_host_uid`), plus 0 → 0
//!   so the setup phase can create files; after setup the sandbox never holds uid 0 again. Files
//!   owned by host root therefore give the sandbox no owner rights (e.g. /proc/sysrq-trigger).
//!   Writable host paths (the workspace) are attached as *idmapped* mounts made here, while still
//!   privileged, so host-root-owned files appear owned by the sandbox user and its writes land as
//!   root-owned files on the host, as a root user expects.

use crate::plan::{IdMap, SandboxPlan};
use crate::sys;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Namespaces the sandbox's PID 1 is cloned into. The cgroup namespace follows after it joins its cgroup.
pub const CLONE_FLAGS: libc::c_ulong = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS) as libc::c_ulong;

#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct LaunchError {
    pub step: String,
    #[source]
    pub source: io::Error,
}

fn le(step: impl Into<String>) -> impl FnOnce(io::Error) -> LaunchError {
    let step = step.into();
    move |source| LaunchError { step, source }
}

/// The sandbox's PID 1 as seen from the launcher.
pub struct Child {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// Which side of the clone we are on.
pub enum Side {
    Launcher(Child),
    /// In the sandbox, as PID 1, with the descriptors prepared while privileged, and the pipe
    /// on which the launcher says "you are in your cgroups" (see [`enter_cgroups`]).
    Sandbox(crate::rootfs::PreOpened, CgroupGate),
}

fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Clones the sandbox's PID 1. Must be called from a single-threaded process.
pub fn clone_sandbox(plan: &SandboxPlan) -> Result<Side, LaunchError> {
    let root = is_root();
    if root {
        // Supplementary groups of the caller would otherwise travel into the sandbox.
        sys::clear_groups().map_err(le("dropping supplementary groups"))?;
    }
    let pre = prepare_idmapped(plan)?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: the launcher is a freshly exec'd process that never starts threads (checked by the
    // caller via /proc/self/status before this point), so the child may keep running Rust code.
    let pid = unsafe { sys::clone_fork(CLONE_FLAGS) }.map_err(le("creating namespaces (clone)"))?;
    if pid == 0 {
        drop(go_w);
        // Die with the launcher; if it already died, stop here.
        if sys::set_parent_death_signal(libc::SIGKILL).is_err() {
            // SAFETY: _exit never returns and is async-signal-safe.
            unsafe { libc::_exit(125) };
        }
        let mut b = [0u8; 1];
        let mut f = fs::File::from(go_r);
        if !matches!(f.read(&mut b), Ok(1)) {
            // SAFETY: as above.
            unsafe { libc::_exit(125) };
        }
        return Ok(Side::Sandbox(pre, CgroupGate(f)));
    }
    drop(go_r);
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: kill takes integers; `pid` is our own unreaped child, so it cannot be reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(le("pidfd_open")(e));
        }
    };
    let child = Child { pid, pidfd };
    let fail = |e: LaunchError| {
        let _ = sys::pidfd_kill(&child.pidfd, libc::SIGKILL);
        let _ = sys::waitpid(pid, 0);
        e
    };
    configure_child(plan, pid, root).map_err(fail)?;
    let mut w = fs::File::from(go_w);
    // First byte: the maps are written; the child builds its root meanwhile.
    w.write_all(b"g")
        .map_err(le("releasing the sandbox"))
        .map_err(fail)?;
    // Moving a task between v1 cgroups waits for an RCU grace period (up to ~20 ms here): done
    // while the child builds its root, which needs no limit yet (no untrusted code runs before
    // the child has read the second byte and its agent has been told to go).
    for procs in &plan.cgroup_procs {
        fs::write(procs, pid.to_string())
            .map_err(le(format!("joining cgroup {}", procs.display())))
            .map_err(fail)?;
    }
    w.write_all(b"c")
        .map_err(le("releasing the sandbox"))
        .map_err(fail)?;
    Ok(Side::Launcher(child))
}

/// The child's end of the launcher's pipe: readable once the child sits in its cgroups.
pub struct CgroupGate(fs::File);

/// Waits until the launcher has put this process into its cgroups, then enters a new cgroup
/// namespace rooted there (so /proc/self/cgroup inside shows `/`). Call before dropping
/// privileges and before anything untrusted runs.
pub fn enter_cgroups(gate: CgroupGate) -> Result<(), LaunchError> {
    let mut f = gate.0;
    let mut b = [0u8; 1];
    match f.read(&mut b) {
        Ok(1) if b[0] == b'c' => {}
        Ok(_) => {
            return Err(le("waiting for the cgroups")(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        Err(e) => return Err(le("waiting for the cgroups")(e)),
    }
    sys::unshare(libc::CLONE_NEWCGROUP).map_err(le("creating cgroup namespace"))
}

fn configure_child(plan: &SandboxPlan, pid: libc::pid_t, root: bool) -> Result<(), LaunchError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !root {
        fs::write(proc_dir.join("setgroups"), "deny").map_err(le("writing setgroups"))?;
    }
    fs::write(proc_dir.join("uid_map"), map_text(&plan.uid_map)).map_err(le("writing uid_map"))?;
    fs::write(proc_dir.join("gid_map"), map_text(&plan.gid_map)).map_err(le("writing gid_map"))?;
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element out-array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(le("pipe")(io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Builds a user namespace whose only mapping is `0 → host_uid` (and the same for gid), used as
/// the idmapping of writable host mounts: host-root-owned files appear owned by `host_uid`.
fn idmap_userns(host_uid: u32) -> Result<OwnedFd, LaunchError> {
    let (r, w) = pipe()?;
    // SAFETY: single-threaded launcher (see clone_sandbox); the child only blocks on a read and
    // exits, using raw syscalls.
    let pid = unsafe { sys::clone_fork(libc::CLONE_NEWUSER as libc::c_ulong) }
        .map_err(le("creating idmap namespace"))?;
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: our copy of the write end is closed first so the read sees EOF when the parent
        // drops its own; then a one-byte read into a stack buffer; _exit never returns.
        unsafe {
            libc::close(w.as_raw_fd());
            libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(r);
    let result = (|| {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        fs::write(dir.join("uid_map"), format!("0 {host_uid} 1\n"))
            .map_err(le("writing idmap uid_map"))?;
        fs::write(dir.join("setgroups"), "deny").map_err(le("writing idmap setgroups"))?;
        fs::write(dir.join("gid_map"), format!("0 {host_uid} 1\n"))
            .map_err(le("writing idmap gid_map"))?;
        fs::File::open(dir.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(le("opening idmap namespace"))
    })();
    drop(w);
    let _ = sys::waitpid(pid, 0);
    result
}

/// Detached, idmapped trees of the workspace and writable binds (root launcher only).
fn prepare_idmapped(plan: &SandboxPlan) -> Result<crate::rootfs::PreOpened, LaunchError> {
    let mut pre = crate::rootfs::PreOpened::default();
    let Some(host_uid) = plan.idmap_host_uid else {
        return Ok(pre);
    };
    let wants_ws = plan.workspace.idmap;
    let binds: Vec<&crate::plan::Bind> = plan
        .root_ops
        .iter()
        .filter_map(|op| match op {
            crate::plan::RootOp::Bind(b) if b.idmap => Some(b),
            _ => None,
        })
        .collect();
    if !wants_ws && binds.is_empty() {
        return Ok(pre);
    }
    let ns = idmap_userns(host_uid)?;
    let tree = |p: &Path| -> Result<OwnedFd, LaunchError> {
        let fd = sys::open_tree_clone(p, true).map_err(le(format!("opening {}", p.display())))?;
        sys::mount_setattr_idmap(&fd, &ns).map_err(|e| {
            le(format!(
                "idmapping {} (its filesystem must support idmapped mounts; run stockade as an \
                 ordinary user, or use --workspace-mode overlay/tmp)",
                p.display()
            ))(e)
        })?;
        Ok(fd)
    };
    if wants_ws {
        pre.workspace = Some(tree(&plan.workspace.host)?);
    }
    for b in binds {
        pre.binds.push((b.target.clone(), tree(&b.source)?));
    }
    Ok(pre)
}

/// Kills what is left in the sandbox's cgroups and removes them: used by the launcher when the
/// supervisor died and cannot clean up itself. Returns what could not be removed.
pub fn reap_cgroups(dirs: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for _ in 0..50 {
        let mut any = false;
        for d in dirs {
            if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in s
                    .lines()
                    .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
                {
                    any = true;
                    // SAFETY: kill takes integers; a pid listed in the sandbox's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for d in dirs {
        let mut ok = false;
        for _ in 0..100 {
            match fs::remove_dir(d) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    ok = true;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        if !ok {
            left.push(d.display().to_string());
        }
    }
    left
}
