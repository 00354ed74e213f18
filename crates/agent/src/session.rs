//! Session mode (`stockade serve`): after `Go`, PID 1 serves requests until `Stop` instead of
//! running one command.
//!
//! One single-threaded loop polls the SIGCHLD signalfd, the control socket, the inotify
//! descriptor of the watches and the network bridge (DNS questions and connection hand-offs
//! keep working as in a one-shot run). It guarantees:
//! - [`SupervisorMsg::Exec`] starts the process the way a one-shot command starts (signals
//!   reset, its own session, oom_score_adj 500, exactly the request's environment, the
//!   request's working directory) and answers `ExecStarted` with the supervisor's ends of its
//!   stdio attached, in this order: the stdin pipe's write end when `stdin` was asked for and
//!   there is no PTY, then the PTY master alone, or else the stdout and stderr pipes' read ends.
//!   The agent keeps no copy: output and input never pass through it, so a slow reader stalls
//!   only the process that writes. Failures answer `ExecRefused` (127 not found, 126 not
//!   executable, 125 anything else: bad cwd, NUL byte, no PTY...), and nothing runs.
//! - Every child that ends is reaped; a request's process gets one `ExecExited` (its own
//!   children may live on until the sandbox ends). Orphans are reaped silently.
//! - [`SupervisorMsg::Signal`] reaches only the process group of a request still running
//!   (each request leads its own session and group); signals outside 1..=31 and unknown ids
//!   are ignored.
//! - [`SupervisorMsg::Fs`] runs in the agent under the sandbox's own confinement (uid, mount
//!   namespace, Landlock, seccomp): see [`crate::fsops`] and [`crate::watch`] for the rules
//!   and limits. Only descriptors of regular files are handed out.
//! - `Stop`, the end of the control stream or a frame that does not parse ends the loop; the
//!   caller then kills every process and reports `Exited` as after a command. Requests still
//!   running get no `ExecExited` (the sandbox's end is their end).
//!
//! Not guaranteed: the loop serves one request at a time, so a long file operation (removing
//! a huge tree) delays the others; frames to the supervisor are written blocking (they are
//! small, and the supervisor reads them on a thread of their own).
//! Tested by the unit tests of `fsops`, `watch` and `protocol`, and end to end through
//! `stockade_runtime::session`.

use crate::fsops;
use crate::pid1::{child_prelude, cstring, decode, resolve};
use crate::protocol::{
    AgentMsg, ExecRequest, PtySize, SupervisorMsg, read_frame, write_frame, write_frame_with_fds,
};
use crate::watch::Watcher;
use rustix::fs::{Mode, OFlags};
use rustix::pipe::PipeFlags;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use stockade_jail::sys;

/// Where the child failed before exec (reported through the CLOEXEC pipe with the errno).
const STAGE_STDIO: i32 = 1;
const STAGE_TTY: i32 = 2;
const STAGE_CWD: i32 = 3;
const STAGE_EXEC: i32 = 4;

/// Running requests: pid ↔ id.
#[derive(Default)]
struct Running {
    by_pid: HashMap<i32, u64>,
    by_id: HashMap<u64, i32>,
    /// The PTY master of each running request that has one (for `Resize`).
    ptys: HashMap<u64, OwnedFd>,
}

/// Serves requests until `Stop`, the end of the control stream, or a broken frame.
///
/// `sfd` is a signalfd for SIGCHLD (blocked), `ctrl` the control socket. Called by PID 1 after
/// `Go`; public for the loop's own tests, which run it in a forked child outside any sandbox.
pub fn serve(sfd: &OwnedFd, ctrl: &mut UnixStream, mut bridge: Option<&mut crate::net::Bridge>) {
    let mut running = Running::default();
    let mut watcher = Watcher::default();
    loop {
        if reap(&mut running, ctrl).is_err() {
            return;
        }
        let mut pfd = vec![pollin(sfd.as_raw_fd()), pollin(ctrl.as_raw_fd())];
        let inotify_at = watcher.fd().map(|fd| {
            pfd.push(pollin(fd));
            pfd.len() - 1
        });
        let bridge_from = pfd.len();
        if let Some(b) = bridge.as_deref() {
            pfd.extend(b.fds().into_iter().map(pollin));
        }
        // SAFETY: `pfd` is a valid array of pollfd structs of the given length for the call.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), pfd.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        if pfd[0].revents != 0 {
            let mut info = [0u8; 128];
            // SAFETY: draining the signalfd into a stack buffer of the documented record size.
            while unsafe { libc::read(sfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {
            }
        }
        if pfd[1].revents != 0 {
            let msg = match read_frame::<SupervisorMsg>(ctrl) {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return,
            };
            let sent = match msg {
                SupervisorMsg::Stop => return,
                SupervisorMsg::Go => Ok(()), // already serving
                SupervisorMsg::DnsReply {
                    token,
                    allowed,
                    ports,
                } => {
                    if let Some(b) = bridge.as_deref_mut() {
                        b.reply(token, allowed, &ports);
                    }
                    Ok(())
                }
                SupervisorMsg::Exec(req) => exec(&mut running, req, ctrl),
                SupervisorMsg::Signal { id, signal } => {
                    if (1..=31).contains(&signal)
                        && let Some(pid) = running.by_id.get(&id)
                    {
                        // SAFETY: kill takes integers; -pid names the request's own process
                        // group (it leads a session), still reserved while it is unreaped.
                        unsafe { libc::kill(-pid, signal) };
                    }
                    Ok(())
                }
                SupervisorMsg::Resize { id, size } => {
                    if let Some(m) = running.ptys.get(&id) {
                        let ws = libc::winsize {
                            ws_row: size.rows,
                            ws_col: size.cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ reads one winsize struct from the valid pointer;
                        // `m` is the request's PTY master, kept open while it runs.
                        unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                    }
                    Ok(())
                }
                SupervisorMsg::Fs { id, op } => {
                    let (reply, fd) = fsops::run(&op, &mut watcher);
                    let msg = AgentMsg::FsDone { id, reply };
                    match fd {
                        Some(fd) => write_frame_with_fds(ctrl, &msg, &[fd.as_raw_fd()]),
                        None => write_frame(ctrl, &msg),
                    }
                }
            };
            if sent.is_err() {
                return;
            }
        }
        if let Some(i) = inotify_at
            && pfd[i].revents != 0
        {
            for (watch, event) in watcher.read_events() {
                if write_frame(ctrl, &AgentMsg::FsEvent { watch, event }).is_err() {
                    return;
                }
            }
        }
        if let Some(b) = bridge.as_deref_mut() {
            for p in pfd.iter().skip(bridge_from).filter(|p| p.revents != 0) {
                b.ready(p.fd, ctrl);
            }
        }
    }
}

fn pollin(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reaps every child that ended; reports the requests' ends. Err: the supervisor is gone.
fn reap(running: &mut Running, ctrl: &mut UnixStream) -> io::Result<()> {
    while let Ok((pid, status)) = sys::waitpid(-1, libc::WNOHANG) {
        if pid <= 0 {
            break;
        }
        if let Some(id) = running.by_pid.remove(&pid) {
            running.by_id.remove(&id);
            running.ptys.remove(&id);
            let msg = AgentMsg::ExecExited {
                id,
                termination: decode(status),
            };
            write_frame(ctrl, &msg)?;
        }
    }
    Ok(())
}

/// Starts one request and answers it. Err: the supervisor is gone.
fn exec(running: &mut Running, req: ExecRequest, ctrl: &mut UnixStream) -> io::Result<()> {
    let id = req.id;
    if running.by_id.contains_key(&id) {
        let message = format!("request {id} is already running");
        return write_frame(
            ctrl,
            &AgentMsg::ExecRefused {
                id,
                code: 125,
                message,
            },
        );
    }
    match spawn(&req) {
        Err((code, message)) => write_frame(ctrl, &AgentMsg::ExecRefused { id, code, message }),
        Ok((pid, ends)) => {
            running.by_pid.insert(pid, id);
            running.by_id.insert(id, pid);
            if req.pty.is_some()
                && let Some(m) = ends.first().and_then(|m| m.try_clone().ok())
            {
                running.ptys.insert(id, m);
            }
            let raw: Vec<RawFd> = ends.iter().map(|f| f.as_raw_fd()).collect();
            let msg = AgentMsg::ExecStarted {
                id,
                pid,
                fds: raw.len() as u8,
            };
            // `ends` (the agent's copies) close when this returns.
            write_frame_with_fds(ctrl, &msg, &raw)
        }
    }
}

type Refusal = (i32, String);

fn other(what: &str, e: impl std::fmt::Display) -> Refusal {
    (125, format!("{what}: {e}"))
}

/// A new PTY sized `size`: (master, slave). The sandbox's own devpts instance is used.
fn open_pty(size: PtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
    let master = match rustix::fs::open("/dev/pts/ptmx", flags, Mode::empty()) {
        Err(rustix::io::Errno::NOENT) => rustix::fs::open("/dev/ptmx", flags, Mode::empty())?,
        r => r?,
    };
    let unlock: libc::c_int = 0;
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ioctls on the master we own; `unlock` and `ws` live on this frame for the calls.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0
            || libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // The slave through the master itself (no path lookup), else by its number.
    let peer = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes an integer and returns a new descriptor that we own.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, peer) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        return Ok((master, unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to `n`, which lives on this frame.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let slave = rustix::fs::open(format!("/dev/pts/{n}").as_str(), flags, Mode::empty())?;
    Ok((master, slave))
}

/// Forks and execs one request; returns its pid and the supervisor's ends of its stdio.
fn spawn(req: &ExecRequest) -> Result<(i32, Vec<OwnedFd>), Refusal> {
    let argv0 = req
        .argv
        .first()
        .ok_or((125, "no command given".to_string()))?;
    if !req.cwd.starts_with('/') {
        return Err((
            125,
            format!("{}: the working directory must be absolute", req.cwd),
        ));
    }
    match std::fs::metadata(&req.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err((125, format!("{}: not a directory", req.cwd))),
        Err(e) => return Err(other(&format!("cannot enter {}", req.cwd), e)),
    }
    let cwd = Path::new(&req.cwd);
    // Relative names resolve against the request's directory, as they would after its chdir.
    let path_var: String = req
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/bin:/bin", |(_, v)| v.as_str())
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cwd.join(d).to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let name = if argv0.contains('/') {
        cwd.join(argv0).to_string_lossy().into_owned()
    } else {
        argv0.clone()
    };
    // NUL bytes are bad input (125), not a file that cannot be executed.
    let cstring = |b: &[u8]| cstring(b).map_err(|(_, m)| (125, m));
    if argv0.contains('\0') {
        return Err((
            125,
            "argument or environment contains a NUL byte".to_string(),
        ));
    }
    let exe = resolve(&name, &path_var)?;
    let exe_c = cstring(exe.as_os_str().as_bytes())?;
    let cwd_c = CString::new(req.cwd.as_bytes())
        .map_err(|_| (125, "the working directory contains a NUL byte".to_string()))?;
    // A NUL byte in a request is a bad request (125), not an unrunnable command.
    let args = crate::pid1::ExecArgs::new(&req.argv, &req.env).map_err(|(_, m)| (125, m))?;
    let (argv_p, envp_p) = (&args.argv_p, &args.envp_p);

    // The child's 0/1/2 and the supervisor's ends, all close-on-exec here.
    let pipe = || rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| other("pipe", e));
    let (child, ends): ([OwnedFd; 3], Vec<OwnedFd>) = match req.pty {
        Some(size) => {
            let (master, slave) = open_pty(size).map_err(|e| other("opening a PTY", e))?;
            let s1 = slave.try_clone().map_err(|e| other("dup", e))?;
            let s2 = slave.try_clone().map_err(|e| other("dup", e))?;
            ([slave, s1, s2], vec![master])
        }
        None => {
            let mut ends = Vec::new();
            let stdin = if req.stdin {
                let (r, w) = pipe()?;
                ends.push(w);
                r
            } else {
                rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| other("/dev/null", e))?
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            ends.push(out_r);
            ends.push(err_r);
            ([stdin, out_w, err_w], ends)
        }
    };
    let tty = req.pty.is_some();
    let stdio = [
        child[0].as_raw_fd(),
        child[1].as_raw_fd(),
        child[2].as_raw_fd(),
    ];
    let (report_r, report_w) = pipe()?;
    let report = report_w.as_raw_fd();

    // SAFETY: fork in PID 1, which is single-threaded. Between fork and exec the child only
    // calls async-signal-safe functions on memory prepared above (its own copy of it).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(other("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side, see above. Descriptor numbers are this process's copies; on any
        // failure the child writes (stage, errno) to the report pipe and exits.
        unsafe {
            let fail = |stage: i32| -> ! {
                let msg = [stage, *libc::__errno_location()];
                libc::write(report, msg.as_ptr().cast(), 8);
                libc::_exit(127)
            };
            child_prelude();
            // Above 2 first, so placing one cannot overwrite another.
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(stdio) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
                if *h < 0 {
                    fail(STAGE_STDIO);
                }
            }
            if tty && libc::ioctl(high[0], libc::TIOCSCTTY, 0) < 0 {
                fail(STAGE_TTY);
            }
            for (target, h) in high.iter().enumerate() {
                if libc::dup2(*h, target as libc::c_int) < 0 {
                    fail(STAGE_STDIO);
                }
            }
            // Whatever else is open (the agent's own descriptors) closes at exec.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if libc::chdir(cwd_c.as_ptr()) < 0 {
                fail(STAGE_CWD);
            }
            libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            fail(STAGE_EXEC)
        }
    }
    drop(child);
    drop(report_w);
    let mut r = std::fs::File::from(report_r);
    let mut buf = [0u8; 8];
    match r.read(&mut buf) {
        Ok(8) => {
            let _ = sys::waitpid(pid, 0);
            let stage = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let e = io::Error::from_raw_os_error(errno);
            Err(match stage {
                STAGE_EXEC if errno == libc::ENOENT => (127, format!("{}: {e}", exe.display())),
                STAGE_EXEC => (126, format!("{}: {e}", exe.display())),
                STAGE_CWD => other(&format!("cannot enter {}", req.cwd), e),
                STAGE_TTY => other("making the PTY the controlling terminal", e),
                _ => other("setting up stdio", e),
            })
        }
        _ => Ok((pid, ends)),
    }
}
