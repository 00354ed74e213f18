//! `stockade-guest __direct`: the agent of a gvisor-level sandbox, in the root runsc already
//! built from the OCI bundle (`stockade_runtime::gvisor`). No namespaces, mounts or Landlock of
//! its own (gVisor offers none of the APIs the container-level jail needs, and its own kernel is
//! the wall): it finishes what the bundle left to the agent, then runs the same end as the
//! container level's PID 1 ([`crate::pid1::serve`]).
//!
//! Descriptors on entry, as for the launcher: 0/1/2 the command's stdio, [`CTRL_FD`] the control
//! socket, [`PLAN_FD`] the plan (JSON, read to EOF), [`LIVENESS_FD`] the liveness pipe (closed
//! here: a lost supervisor also ends the control stream, and the host side kills runsc).
//!
//! The agent is not PID 1 (the guest shim carrying the tunnel is): it asks to be a child
//! subreaper so orphans of the command are reparented to it (runsc 2022 refuses that outside PID
//! 1: orphans then go to the shim, which must reap them), and at the end it kills every process
//! it may signal but itself and PID 1, i.e. everything of the sandbox user, and waits until none
//! is left before it reports.

use crate::launcher::{CTRL_FD, LIVENESS_FD, PLAN_FD};
use crate::pid1::{self, Prepared};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use stockade_jail::confine::{self, Enforced};
use stockade_jail::plan::SandboxPlan;
use stockade_jail::seccomp::{SeccompError, SeccompProgram};
use stockade_jail::sys;

/// What the record says about Landlock at this level.
pub const LANDLOCK_NOT_APPLICABLE: &str = "not applicable (gvisor)";

/// Entry point; returns the exit code when it fails before the agent's end takes over.
pub fn main(allow_weaker: bool) -> i32 {
    if close_fds_from(LIVENESS_FD + 1).is_err() {
        return 125;
    }
    for fd in [CTRL_FD, PLAN_FD, LIVENESS_FD] {
        if sys::set_cloexec(fd).is_err() {
            return 125;
        }
    }
    // SAFETY: the guest shim placed these descriptors at fixed numbers before exec and nothing
    // else in this fresh process owns them.
    let mut ctrl = unsafe { UnixStream::from_raw_fd(CTRL_FD) };
    // SAFETY: as above.
    let mut plan_pipe = unsafe { std::fs::File::from_raw_fd(PLAN_FD) };
    // SAFETY: as above.
    drop(unsafe { std::fs::File::from_raw_fd(LIVENESS_FD) });
    let mut buf = Vec::new();
    if let Err(e) = plan_pipe.read_to_end(&mut buf) {
        pid1::setup_failed(&mut ctrl, format!("reading the plan: {e}"));
    }
    drop(plan_pipe);
    let plan: SandboxPlan = match serde_json::from_slice(&buf) {
        Ok(p) => p,
        Err(e) => pid1::setup_failed(&mut ctrl, format!("bad plan: {e}")),
    };
    if !crate::launcher::single_threaded() {
        pid1::setup_failed(&mut ctrl, "the agent is not single-threaded".into());
    }
    let prepared = match setup(&plan, allow_weaker) {
        Ok(p) => p,
        Err(message) => pid1::setup_failed(&mut ctrl, message),
    };
    pid1::serve(&plan, ctrl, prepared)
}

/// Closes every descriptor from `first` on: close_range, or where gVisor refuses it (EINVAL from
/// runsc 2022 for the open-ended range; ENOSYS elsewhere), one by one from /proc/self/fd.
fn close_fds_from(first: i32) -> std::io::Result<()> {
    match sys::close_fds_from(first) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
            let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd >= first)
                .collect();
            for fd in fds {
                // SAFETY: descriptors >= `first` are owned by no Rust object in this freshly
                // exec'd process (the directory listing's own descriptor is already closed:
                // EBADF then, which is ignored).
                unsafe { libc::close(fd) };
            }
            Ok(())
        }
        r => r,
    }
}

/// Whether a TCP connection over 127.0.0.1 succeeds (loopback is up).
fn loopback_works() -> bool {
    let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return false;
    };
    l.local_addr()
        .and_then(std::net::TcpStream::connect)
        .is_ok()
}

fn gethostname() -> Option<String> {
    let mut b = [0u8; 256];
    // SAFETY: `b` is a writable buffer of the given length on this frame.
    if unsafe { libc::gethostname(b.as_mut_ptr().cast(), b.len()) } != 0 {
        return None;
    }
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

/// Subreaper, hostname (runsc set it from the bundle: checked, set only if different),
/// loopback, the bridge, cwd, rlimits, then identity and seccomp.
fn setup(plan: &SandboxPlan, allow_weaker: bool) -> Result<Prepared, String> {
    // Orphans of the command are reparented to the agent where gVisor supports a subreaper;
    // runsc 2022 refuses it (EINVAL) outside PID 1, and then they go to PID 1, the guest shim,
    // which reaps them. Either way the end kills them (kill(-1) works by owner, not parentage)
    // and waits until they are gone (`pid1::kill_all_and_reap`).
    let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: integer-only prctl on the calling process (full-width arguments: gVisor checks
    // the unused ones).
    let _ = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, one, zero, zero, zero) };
    if gethostname().as_deref() != Some(plan.hostname.as_str()) {
        pid1::set_hostname(plan)?;
    }
    // runsc brings loopback up itself (and its netstack has no SIOCSIFFLAGS: ENOTTY).
    if !loopback_works() {
        sys::loopback_up().map_err(|e| format!("bringing up loopback: {e}"))?;
    }
    // gVisor lets any user bind ports below 1024, so the bridge's later per-name listeners
    // (80/443) need no sysctl.
    let bridge = pid1::bind_bridge(plan)?;
    let seccomp = pid1::seccomp_program(plan)?;
    crate::fsops::allow_openat_fallback();
    drop_privileges(plan.uid, plan.gid)?;
    // As the sandbox user: root here holds no DAC capability, and a 0700 workspace or HOME
    // belongs to the sandbox user.
    pid1::cwd_and_rlimits(plan)?;
    let enforced = restrict(seccomp.as_ref(), allow_weaker)?;
    Ok(Prepared {
        enforced,
        bridge,
        layers: None,
        _built: None,
    })
}

/// As `confine::drop_privileges`: no groups, an empty bounding set, the sandbox's ids, no
/// capability, no_new_privs, non-dumpable. runsc 2022 has no ambient capabilities
/// (PR_CAP_AMBIENT is EINVAL), so there is none to clear and the sets are emptied by capset.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    let (clear_all, zero): (libc::c_ulong, libc::c_ulong) =
        (libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0);
    // SAFETY: integer-only prctl (full-width arguments).
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear_all, zero, zero, zero) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(format!("clearing ambient capabilities: {e}"));
        }
    }
    let os = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    sys::clear_groups().map_err(os("setgroups"))?;
    sys::drop_bounding_set().map_err(os("dropping the capability bounding set"))?;
    sys::setresgid(gid).map_err(os("setresgid"))?;
    sys::setresuid(uid).map_err(os("setresuid"))?;
    sys::capset_zero().map_err(os("clearing capabilities"))?;
    sys::set_no_new_privs().map_err(os("no_new_privs"))?;
    sys::set_dumpable(false).map_err(os("making the agent non-dumpable"))?;
    Ok(())
}

/// Seccomp (Landlock does not exist in gVisor: recorded as not applicable). runsc 2022 refuses
/// SECCOMP_FILTER_FLAG_LOG (EINVAL before any filter is installed): the same filters are then
/// installed unlogged. When the filter cannot be loaded at all: refused, or with weaker
/// isolation allowed, recorded as not enforced.
fn restrict(seccomp: Option<&SeccompProgram>, allow_weaker: bool) -> Result<Enforced, String> {
    let mut enforced =
        confine::restrict(None, false, allow_weaker, None).map_err(|e| e.to_string())?;
    if let Some(p) = seccomp {
        let applied = match p.apply() {
            Err(SeccompError::Install { index: 0, errno }) if errno == libc::EINVAL => {
                p.apply_unlogged().map(|()| {
                    format!(
                        "{} (unlogged: this kernel has no seccomp log flag)",
                        p.describe()
                    )
                })
            }
            r => r.map(|()| p.describe()),
        };
        enforced.seccomp = match applied {
            Ok(d) => d,
            Err(e @ SeccompError::Install { index: 1.., .. }) => {
                // Some filters are in force already: this process cannot go on.
                return Err(format!("seccomp: {e}"));
            }
            Err(e) if allow_weaker => format!("not enforced (gvisor refused the filter: {e})"),
            Err(e) => return Err(format!("seccomp: {e}")),
        };
    }
    enforced.landlock = LANDLOCK_NOT_APPLICABLE.into();
    enforced.landlock_kernel_abi = 0;
    Ok(enforced)
}
