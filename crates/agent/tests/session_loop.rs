//! The session loop end to end over a real control socket, without a sandbox: the loop runs in
//! a forked child (single-threaded there, with SIGCHLD blocked and read from a signalfd, as in
//! PID 1) and this test plays the supervisor. It checks the frames, the descriptors passed and
//! their order, that the agent keeps no copy of them (EOF arrives), PTYs, refusals with their
//! codes, signals, file operations and watch events through the loop, and the end on Stop.
//! The same loop inside a real sandbox is exercised through `stockade_runtime::session`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use stockade_agent::protocol::{
    AgentMsg, EntryKind, ExecRequest, FdFrameReader, FsOp, FsReply, PtySize, SupervisorMsg,
    Termination, WatchEvent, WatchOp, write_frame,
};

const WAIT: Duration = Duration::from_secs(20);

struct Agent {
    pid: i32,
    to: UnixStream,
    from: FdFrameReader,
}

impl Agent {
    fn start() -> Agent {
        let (sup, agent) = UnixStream::pair().unwrap();
        sup.set_read_timeout(Some(WAIT)).unwrap();
        // SAFETY: the child only sets up a signalfd and runs the loop, then _exits; glibc's
        // fork leaves malloc usable in the child, and this test binary has one test.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            drop(sup);
            let mut agent = agent;
            // SAFETY: as in pid1::block_sigchld; this child has one thread.
            let sfd = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                OwnedFd::from_raw_fd(libc::signalfd(
                    -1,
                    &set,
                    libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
                ))
            };
            stockade_agent::session::serve(&sfd, &mut agent, None);
            // SAFETY: leaving the forked child without running the test harness's code.
            unsafe { libc::_exit(0) }
        }
        drop(agent);
        let to = sup.try_clone().unwrap();
        Agent {
            pid,
            to,
            from: FdFrameReader::new(sup),
        }
    }

    fn send(&mut self, m: &SupervisorMsg) {
        write_frame(&mut self.to, m).unwrap();
    }

    fn next(&mut self) -> AgentMsg {
        self.from
            .next_frame::<AgentMsg>()
            .unwrap()
            .expect("the agent ended early")
    }

    fn exec(&mut self, req: ExecRequest) -> AgentMsg {
        self.send(&SupervisorMsg::Exec(req));
        self.next()
    }

    fn fs(&mut self, id: u64, op: FsOp) -> (FsReply, Option<OwnedFd>) {
        self.send(&SupervisorMsg::Fs { id, op });
        match self.next() {
            AgentMsg::FsDone { id: got, reply } => {
                assert_eq!(got, id);
                let fd =
                    matches!(reply, FsReply::Opened { .. }).then(|| self.from.take_fd().unwrap());
                (reply, fd)
            }
            other => panic!("expected FsDone, got {other:?}"),
        }
    }

    /// The descriptors of an ExecStarted, checked for count.
    fn started(&mut self, msg: AgentMsg, id: u64, n: u8) -> Vec<OwnedFd> {
        match msg {
            AgentMsg::ExecStarted { id: got, pid, fds } => {
                assert_eq!((got, fds), (id, n));
                assert!(pid > 0);
                (0..n)
                    .map(|_| self.from.take_fd().expect("fd attached"))
                    .collect()
            }
            other => panic!("expected ExecStarted for {id}, got {other:?}"),
        }
    }

    fn exited(&mut self, id: u64) -> Termination {
        match self.next() {
            AgentMsg::ExecExited {
                id: got,
                termination,
            } if got == id => termination,
            other => panic!("expected ExecExited for {id}, got {other:?}"),
        }
    }
}

fn req(id: u64, argv: &[&str]) -> ExecRequest {
    ExecRequest {
        id,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("FOO".into(), "bar".into()),
        ],
        cwd: "/tmp".into(),
        stdin: false,
        pty: None,
    }
}

fn file_type(fd: &OwnedFd) -> u32 {
    let st = rustix::fs::fstat(fd).unwrap();
    st.st_mode & libc::S_IFMT
}

/// Everything until EOF (or EIO: a PTY whose slave closed), failing after WAIT: a copy of the
/// write end left in the agent would hold EOF back forever.
fn read_all(fd: OwnedFd) -> String {
    let mut f = std::fs::File::from(fd);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i32;
        assert!(left > 0, "no EOF: {:?}", String::from_utf8_lossy(&out));
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut p, 1, left) };
        let mut buf = [0u8; 4096];
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_session_loop_serves_exec_signal_and_fs_until_stop() {
    let mut a = Agent::start();

    // Pipes: stdout and stderr, in that order; stdin is /dev/null; exactly the request's env.
    let m = a.exec(req(
        1,
        &["sh", "-c", "echo out; echo err >&2; pwd; env; cat"],
    ));
    let fds = a.started(m, 1, 2);
    assert!(fds.iter().all(|f| file_type(f) == libc::S_IFIFO));
    let mut fds = fds.into_iter();
    let (out, err) = (fds.next().unwrap(), fds.next().unwrap());
    let out = read_all(out);
    assert!(out.starts_with("out\n/tmp\n"), "{out}");
    assert!(out.contains("FOO=bar\n") && !out.contains("HOME="), "{out}");
    assert_eq!(read_all(err), "err\n");
    assert_eq!(a.exited(1), Termination::Exited(0));

    // A stdin pipe first, then stdout and stderr.
    let mut r = req(2, &["cat"]);
    r.stdin = true;
    let m = a.exec(r);
    let mut fds = a.started(m, 2, 3).into_iter();
    let (input, out, _err) = (
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
    );
    let mut input = std::fs::File::from(input);
    input.write_all(b"ping\n").unwrap();
    drop(input);
    assert_eq!(read_all(out), "ping\n");
    assert_eq!(a.exited(2), Termination::Exited(0));

    // A PTY: the master alone (stdin ignored), the size set, a controlling terminal.
    let mut r = req(
        3,
        &["sh", "-c", "tty; stty size; test -t 0 && echo interactive"],
    );
    r.stdin = true;
    r.pty = Some(PtySize {
        rows: 33,
        cols: 101,
    });
    let m = a.exec(r);
    let master = a.started(m, 3, 1).pop().unwrap();
    assert_eq!(file_type(&master), libc::S_IFCHR);
    let out = read_all(master);
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    assert!(out.contains("interactive"), "{out}");
    assert_eq!(a.exited(3), Termination::Exited(0));

    // Refusals, each with its code and a message that says why; nothing runs.
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let d = d.to_str().unwrap().to_string();
    let noexec = format!("{d}/noexec");
    std::fs::write(&noexec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bad_cwd = req(6, &["true"]);
    bad_cwd.cwd = "/nonexistent-dir".into();
    let mut rel_cwd = req(7, &["true"]);
    rel_cwd.cwd = "tmp".into();
    let cases = [
        (req(4, &["definitely-not-a-command"]), 127, "not found"),
        (req(5, &[noexec.as_str()]), 126, "permission denied"),
        (bad_cwd, 125, "/nonexistent-dir"),
        (rel_cwd, 125, "absolute"),
        (req(8, &[]), 125, "no command"),
        (req(9, &["echo", "a\0b"]), 125, "NUL"),
        (req(11, &["ec\0ho"]), 125, "NUL"),
    ];
    for (r, code, why) in cases {
        let id = r.id;
        match a.exec(r) {
            AgentMsg::ExecRefused {
                id: got,
                code: c,
                message,
            } => {
                assert_eq!((got, c), (id, code), "{message}");
                assert!(message.contains(why), "{id}: {message}");
            }
            other => panic!("{id}: expected ExecRefused, got {other:?}"),
        }
    }

    // Signals reach the request's process group only; bad numbers and unknown ids are ignored.
    let m = a.exec(req(10, &["sh", "-c", "sleep 100 & echo $!; wait"]));
    let mut fds = a.started(m, 10, 2).into_iter();
    let mut out = std::fs::File::from(fds.next().unwrap());
    let mut line = [0u8; 32];
    let n = out.read(&mut line).unwrap();
    let sleeper: i32 = String::from_utf8_lossy(&line[..n]).trim().parse().unwrap();
    for (id, signal) in [(10, 0), (10, 64), (10, -9), (999, 9)] {
        a.send(&SupervisorMsg::Signal { id, signal });
    }
    // A duplicate id while it runs is refused.
    match a.exec(req(10, &["true"])) {
        AgentMsg::ExecRefused {
            id: 10,
            code: 125,
            message,
        } => {
            assert!(message.contains("already running"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    a.send(&SupervisorMsg::Signal {
        id: 10,
        signal: libc::SIGTERM,
    });
    assert_eq!(a.exited(10), Termination::Signaled(libc::SIGTERM));
    // The background sleep was in the group: it got the signal too.
    let deadline = Instant::now() + WAIT;
    loop {
        let st = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        if st.is_empty() || st.contains(") Z ") {
            break;
        }
        assert!(Instant::now() < deadline, "the group member survived: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // After its end the id is unknown: a signal is ignored (nothing to report).
    a.send(&SupervisorMsg::Signal { id: 10, signal: 9 });

    // File operations through the loop; an opened file comes attached.
    let (reply, fd) = a.fs(
        20,
        FsOp::Open {
            path: format!("{d}/sub/file"),
            write: true,
        },
    );
    assert!(matches!(reply, FsReply::Opened { .. }), "{reply:?}");
    let mut f = std::fs::File::from(fd.unwrap());
    f.write_all(b"written through the descriptor").unwrap();
    drop(f);
    match a
        .fs(
            21,
            FsOp::Stat {
                path: format!("{d}/sub/file"),
            },
        )
        .0
    {
        FsReply::Entry { entry } => assert_eq!((entry.kind, entry.size), (EntryKind::File, 30)),
        other => panic!("{other:?}"),
    }
    match a
        .fs(
            22,
            FsOp::Stat {
                path: "relative".into(),
            },
        )
        .0
    {
        FsReply::Failed { errno, .. } => assert_eq!(errno, libc::EINVAL),
        other => panic!("{other:?}"),
    }
    // A FIFO is never handed out (and the loop does not hang on it).
    let fifo = format!("{d}/fifo");
    let c = std::ffi::CString::new(fifo.clone()).unwrap();
    // SAFETY: a valid path for the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    match a.fs(
        23,
        FsOp::Open {
            path: fifo,
            write: false,
        },
    ) {
        (FsReply::Failed { errno, .. }, None) => assert_eq!(errno, libc::EINVAL),
        other => panic!("{other:?}"),
    }

    // A watch: events come as FsEvent frames from the loop.
    let (reply, _) = a.fs(
        24,
        FsOp::Watch {
            path: d.clone(),
            recursive: true,
        },
    );
    assert_eq!(reply, FsReply::Watching { watch: 1 });
    std::fs::create_dir(format!("{d}/newdir")).unwrap();
    match a.next() {
        AgentMsg::FsEvent { watch: 1, event } => assert_eq!(
            event,
            WatchEvent::Change {
                op: WatchOp::Create,
                path: format!("{d}/newdir")
            }
        ),
        other => panic!("{other:?}"),
    }
    std::fs::write(format!("{d}/newdir/inner"), b"").unwrap();
    match a.next() {
        AgentMsg::FsEvent { watch: 1, event } => assert_eq!(
            event,
            WatchEvent::Change {
                op: WatchOp::Create,
                path: format!("{d}/newdir/inner")
            }
        ),
        other => panic!("{other:?}"),
    }

    // Stop ends the loop: the stream ends and the agent exits 0.
    a.send(&SupervisorMsg::Stop);
    loop {
        match a.from.next_frame::<AgentMsg>().unwrap() {
            None => break,
            Some(AgentMsg::FsEvent { .. }) => {} // the write's close may still be in flight
            Some(other) => panic!("unexpected after Stop: {other:?}"),
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(a.pid, &mut status, 0) }, a.pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}
