//! Starting the launcher: `/proc/self/exe __launch`, by fork+exec with only async-signal-safe
//! work in between (dup2, sigprocmask, setpgid). Its environment is empty and it receives only
//! the descriptors listed in `stockade_agent::launcher`; every other descriptor is CLOEXEC.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use stockade_agent::launcher::{ALLOW_WEAKER_ARG, CTRL_FD, LIVENESS_FD, PLAN_FD};

/// The supervisor's ends of everything shared with the launcher.
pub struct Launched {
    pub child: Child,
    pub ctrl: UnixStream,
    pub plan: std::fs::File,
    /// Held open for the sandbox's life; dropping it (or our death) tells the launcher to clean up.
    pub liveness: OwnedFd,
    pub stdin: std::fs::File,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

pub fn spawn_launcher(allow_weaker: bool) -> io::Result<Launched> {
    spawn_helper("__launch", allow_weaker)
}

/// Starts `/proc/self/exe <sub>` (`__launch`, or `__vmm` for the stronger levels) with the
/// launcher's descriptors.
pub fn spawn_helper(sub: &str, allow_weaker: bool) -> io::Result<Launched> {
    let (ctrl_ours, ctrl_theirs) = UnixStream::pair()?;
    let (plan_r, plan_w) = stockade_jail::sys::pipe_cloexec()?;
    let (live_r, live_w) = stockade_jail::sys::pipe_cloexec()?;
    let (in_r, in_w) = stockade_jail::sys::pipe_cloexec()?;
    let (out_r, out_w) = stockade_jail::sys::pipe_cloexec()?;
    let (err_r, err_w) = stockade_jail::sys::pipe_cloexec()?;
    let ctrl_theirs = stockade_jail::sys::dup_high(OwnedFd::from(ctrl_theirs))?;
    let plan_r = stockade_jail::sys::dup_high(plan_r)?;
    let live_r = stockade_jail::sys::dup_high(live_r)?;
    let sources: [(RawFd, RawFd); 3] = [
        (ctrl_theirs.as_raw_fd(), CTRL_FD),
        (plan_r.as_raw_fd(), PLAN_FD),
        (live_r.as_raw_fd(), LIVENESS_FD),
    ];
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(sub);
    if allow_weaker {
        cmd.arg(ALLOW_WEAKER_ARG);
    }
    cmd.env_clear()
        .stdin(Stdio::from(in_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0);
    // SAFETY: the closure runs between fork and exec in the child and only calls dup2 and
    // sigprocmask, which are async-signal-safe, on integers captured by value.
    unsafe {
        cmd.pre_exec(move || {
            for (src, dst) in sources {
                if libc::dup2(src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop((ctrl_theirs, plan_r, live_r));
    Ok(Launched {
        child,
        ctrl: ctrl_ours,
        plan: std::fs::File::from(plan_w),
        liveness: live_w,
        stdin: std::fs::File::from(in_w),
        stdout: std::fs::File::from(out_r),
        stderr: std::fs::File::from(err_r),
    })
}
