//! The guest half of the tunnel: recreates the launcher's descriptors (0/1/2 stdio, 3 control,
//! 4 plan, 5 liveness) as local pipes and a socketpair, starts the child that uses them
//! (`__launch` in a microVM, `__direct` in gVisor), carries everything over the transport, and
//! reaps every process that ends up ours (in a microVM this binary is PID 1).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};
use stockade_agent::tunnel::{self, Role, Way};

/// Runs the child `sub` (with `--allow-weaker-isolation` when `allow_weaker`) behind the tunnel
/// on `rx`/`tx`; returns the child's exit code once it and the tunnel have ended.
pub fn run(rx: OwnedFd, tx: OwnedFd, sub: &str, allow_weaker: bool) -> i32 {
    match run_inner(rx, tx, sub, allow_weaker) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stockade-guest: {e}");
            125
        }
    }
}

fn run_inner(rx: OwnedFd, tx: OwnedFd, sub: &str, allow_weaker: bool) -> io::Result<i32> {
    // Nothing inside may read this process's memory, environment or descriptors through /proc
    // (it runs as root and holds the transport).
    stockade_jail::sys::set_dumpable(false)?;
    let (ctrl_ours, ctrl_theirs) = UnixStream::pair()?;
    let (plan_r, plan_w) = stockade_jail::sys::pipe_cloexec()?;
    let (live_r, live_w) = stockade_jail::sys::pipe_cloexec()?;
    let (in_r, in_w) = stockade_jail::sys::pipe_cloexec()?;
    let (out_r, out_w) = stockade_jail::sys::pipe_cloexec()?;
    let (err_r, err_w) = stockade_jail::sys::pipe_cloexec()?;
    let theirs = [
        stockade_jail::sys::dup_high(in_r)?,
        stockade_jail::sys::dup_high(out_w)?,
        stockade_jail::sys::dup_high(err_w)?,
        stockade_jail::sys::dup_high(OwnedFd::from(ctrl_theirs))?,
        stockade_jail::sys::dup_high(plan_r)?,
        stockade_jail::sys::dup_high(live_r)?,
    ];
    let sources: Vec<(RawFd, RawFd)> = theirs
        .iter()
        .enumerate()
        .map(|(i, fd)| (fd.as_raw_fd(), i as RawFd))
        .collect();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(sub);
    if allow_weaker {
        cmd.arg(stockade_agent::launcher::ALLOW_WEAKER_ARG);
    }
    cmd.env_clear();
    // SAFETY: the closure runs between fork and exec in the child and only calls dup2 and
    // sigprocmask/signal, which are async-signal-safe, on integers captured by value.
    unsafe {
        cmd.pre_exec(move || {
            for &(src, dst) in &sources {
                if libc::dup2(src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let child_pid = child.id() as libc::pid_t;
    drop(theirs);
    if sub == "__direct" {
        // gVisor: this process is the container's init, root with the bundle's capabilities,
        // for the whole life of the sandbox. It needs only CAP_KILL (its kill(-1) at the end
        // must reach the sandbox user's processes): everything else goes before the tunnel
        // thread exists (capabilities are per thread; new threads inherit these).
        const CAP_KILL: u64 = 1 << 5; // capability.h: CAP_KILL = 5
        stockade_jail::sys::drop_bounding_set_except(CAP_KILL)?;
        stockade_jail::sys::capset_only(CAP_KILL)?;
    }
    let fixed = vec![
        (tunnel::PLAN, plan_w, Way::Recv),
        (tunnel::LIVENESS, live_w, Way::Recv),
        (tunnel::STDIN, in_w, Way::Recv),
        (tunnel::STDOUT, out_r, Way::Send),
        (tunnel::STDERR, err_r, Way::Send),
    ];
    let t = std::thread::spawn(move || tunnel::run(Role::Guest, rx, tx, ctrl_ours, fixed));
    // Reap everything: the child, and (as PID 1 of a VM) every orphan.
    let mut code = 125;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break; // ECHILD: nobody left
        }
        if pid == child_pid {
            code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            break;
        }
    }
    // The child is gone (normally after the sandbox ended; or it was killed from inside, in gVisor
    // where the agent is not PID 1): nothing of the sandbox may outlive it. kill(-1) from PID 1
    // reaches every other process.
    if std::process::id() == 1 {
        // SAFETY: kill takes integers; -1 with SIGKILL ends every process but this one.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
    // The tunnel ends once everything the sandbox wrote is sent; bounded, in case a descriptor
    // was leaked to something that outlived the sandbox.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.is_finished() && Instant::now() < deadline {
        // Keep reaping while waiting.
        let mut status = 0;
        // SAFETY: as above.
        unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        match t.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("stockade-guest: tunnel: {e}"),
            Err(_) => eprintln!("stockade-guest: tunnel thread panicked"),
        }
    }
    Ok(code)
}
