//! `stockade __launch`: the small helper the supervisor starts by re-exec (never by forking the
//! supervisor). It is single-threaded for its whole life, which is what makes cloning the
//! sandbox's PID 1 from it sound.
//!
//! Descriptors on entry: 0/1/2 the command's stdio pipes, [`CTRL_FD`] the control socket,
//! [`PLAN_FD`] the plan (JSON, read to EOF), [`LIVENESS_FD`] a pipe whose write end only the
//! supervisor holds. The launcher then stays as the sandbox's guardian: if the supervisor dies
//! (even by SIGKILL) the pipe reads EOF, and the launcher kills the sandbox and removes its cgroups.

use crate::pid1;
use crate::protocol::{AgentMsg, write_frame};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use stockade_jail::launch::{self, Side};
use stockade_jail::plan::SandboxPlan;
use stockade_jail::sys;

pub const CTRL_FD: i32 = 3;
pub const PLAN_FD: i32 = 4;
pub const LIVENESS_FD: i32 = 5;
/// Set in the launcher's argv (not its environment) when weaker isolation was allowed.
pub const ALLOW_WEAKER_ARG: &str = "--allow-weaker-isolation";

pub(crate) fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Threads:", "1"])
        })
        .unwrap_or(false)
}

/// Entry point; returns the launcher's exit code.
pub fn main(allow_weaker: bool) -> i32 {
    // Nothing of the caller's but the descriptors above may reach the sandbox.
    if sys::close_fds_from(LIVENESS_FD + 1).is_err() {
        return 125;
    }
    // dup2 cleared close-on-exec on these; the command must never inherit the control socket.
    for fd in [CTRL_FD, PLAN_FD, LIVENESS_FD] {
        if sys::set_cloexec(fd).is_err() {
            return 125;
        }
    }
    // SAFETY: the supervisor placed these descriptors at fixed numbers before exec and nothing
    // else in this fresh process owns them.
    let mut ctrl = unsafe { UnixStream::from_raw_fd(CTRL_FD) };
    // SAFETY: as above.
    let mut plan_pipe = unsafe { std::fs::File::from_raw_fd(PLAN_FD) };
    // SAFETY: as above.
    let liveness = unsafe { std::fs::File::from_raw_fd(LIVENESS_FD) };
    let mut buf = Vec::new();
    if let Err(e) = plan_pipe.read_to_end(&mut buf) {
        let _ = write_frame(
            &mut ctrl,
            &AgentMsg::SetupFailed {
                message: format!("reading the plan: {e}"),
            },
        );
        return 125;
    }
    drop(plan_pipe);
    let plan: SandboxPlan = match serde_json::from_slice(&buf) {
        Ok(p) => p,
        Err(e) => {
            let _ = write_frame(
                &mut ctrl,
                &AgentMsg::SetupFailed {
                    message: format!("bad plan: {e}"),
                },
            );
            return 125;
        }
    };
    if !single_threaded() {
        let _ = write_frame(
            &mut ctrl,
            &AgentMsg::SetupFailed {
                message: "launcher is not single-threaded".into(),
            },
        );
        return 125;
    }
    match launch::clone_sandbox(&plan) {
        Err(e) => {
            let _ = write_frame(
                &mut ctrl,
                &AgentMsg::SetupFailed {
                    message: e.to_string(),
                },
            );
            125
        }
        Ok(Side::Sandbox(pre, gate)) => {
            drop(liveness);
            pid1::run(&plan, pre, gate, ctrl, allow_weaker)
        }
        Ok(Side::Launcher(child)) => {
            drop(ctrl);
            guard(&plan, child, &liveness)
        }
    }
}

/// Waits for the sandbox to end, or for the supervisor to die (then cleans up after it).
fn guard(plan: &SandboxPlan, child: launch::Child, liveness: &std::fs::File) -> i32 {
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: child.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: liveness.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `pfd` is a valid two-element pollfd array for the duration of the call.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if pfd[0].revents != 0 {
            let _ = sys::waitpid(child.pid, 0);
            return 0;
        }
        if pfd[1].revents != 0 {
            // The supervisor is gone: nobody else will clean up.
            let _ = sys::pidfd_kill(&child.pidfd, libc::SIGKILL);
            let _ = sys::waitpid(child.pid, 0);
            let left = launch::reap_cgroups(&plan.cgroup_dirs);
            return if left.is_empty() { 0 } else { 1 };
        }
    }
}
