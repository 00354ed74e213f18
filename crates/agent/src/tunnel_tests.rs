#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Host and guest halves joined by a socketpair, with a fake supervisor and a fake agent.

use super::*;
use crate::protocol::SupervisorMsg;
use crate::protocol::{Entry, EntryKind, FdFrameReader, write_frame, write_frame_with_fds};
use std::io::{Read, Write};
use std::thread::JoinHandle;

struct Pair {
    /// The supervisor's side: its control socket and its ends of the fixed streams.
    sup_ctrl: UnixStream,
    sup_stdin: Option<std::fs::File>,
    sup_stdout: std::fs::File,
    sup_plan: Option<std::fs::File>,
    /// The agent's side.
    agent_ctrl: UnixStream,
    agent_stdout: Option<std::fs::File>,
    agent_stdin: std::fs::File,
    agent_plan: std::fs::File,
    host: JoinHandle<io::Result<Outcome>>,
    guest: JoinHandle<io::Result<Outcome>>,
}

fn pipe_files() -> (std::fs::File, std::fs::File) {
    let (r, w) = stockade_jail::sys::pipe_cloexec().unwrap();
    (std::fs::File::from(r), std::fs::File::from(w))
}

fn start() -> Pair {
    let (h2g_r, h2g_w) = stockade_jail::sys::pipe_cloexec().unwrap();
    let (g2h_r, g2h_w) = stockade_jail::sys::pipe_cloexec().unwrap();
    let (sup_ctrl, host_ctrl) = UnixStream::pair().unwrap();
    let (agent_ctrl, guest_ctrl) = UnixStream::pair().unwrap();
    // Host: reads stdin/plan written by the supervisor, writes stdout for it.
    let (host_stdin_r, sup_stdin) = pipe_files();
    let (sup_stdout, host_stdout_w) = pipe_files();
    let (host_plan_r, sup_plan) = pipe_files();
    // Guest: writes stdin/plan for the agent, reads its stdout.
    let (agent_stdin, guest_stdin_w) = pipe_files();
    let (guest_stdout_r, agent_stdout) = pipe_files();
    let (agent_plan, guest_plan_w) = pipe_files();
    let host = std::thread::spawn(move || {
        run(
            Role::Host,
            g2h_r,
            h2g_w,
            host_ctrl,
            vec![
                (PLAN, host_plan_r.into(), Way::Send),
                (STDIN, host_stdin_r.into(), Way::Send),
                (STDOUT, host_stdout_w.into(), Way::Recv),
            ],
        )
    });
    let guest = std::thread::spawn(move || {
        run(
            Role::Guest,
            h2g_r,
            g2h_w,
            guest_ctrl,
            vec![
                (PLAN, guest_plan_w.into(), Way::Recv),
                (STDIN, guest_stdin_w.into(), Way::Recv),
                (STDOUT, guest_stdout_r.into(), Way::Send),
            ],
        )
    });
    Pair {
        sup_ctrl,
        sup_stdin: Some(sup_stdin),
        sup_stdout,
        sup_plan: Some(sup_plan),
        agent_ctrl,
        agent_stdout: Some(agent_stdout),
        agent_stdin,
        agent_plan,
        host,
        guest,
    }
}

impl Pair {
    /// The agent ends (control closed, stdout closed): both halves return cleanly.
    fn finish(mut self, agent_spoke: bool) {
        drop(self.agent_stdout.take());
        self.agent_ctrl.shutdown(std::net::Shutdown::Both).unwrap();
        self.guest.join().unwrap().unwrap();
        // The host half ends when the guest's transport end closes.
        assert_eq!(self.host.join().unwrap().unwrap().peer_spoke, agent_spoke);
    }
}

#[test]
fn fixed_streams_carry_bytes_and_their_end() {
    let mut p = start();
    let plan = vec![b'p'; 200_000];
    let mut w = p.sup_plan.take().unwrap();
    let pl = plan.clone();
    let t = std::thread::spawn(move || w.write_all(&pl).unwrap());
    let mut got = Vec::new();
    p.agent_plan.read_to_end(&mut got).unwrap();
    t.join().unwrap();
    assert_eq!(got, plan, "the plan arrives whole and then ends");
    p.sup_stdin.as_mut().unwrap().write_all(b"input").unwrap();
    drop(p.sup_stdin.take());
    let mut got = Vec::new();
    p.agent_stdin.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"input");
    p.agent_stdout
        .as_mut()
        .unwrap()
        .write_all(b"output")
        .unwrap();
    drop(p.agent_stdout.take());
    let mut got = Vec::new();
    p.sup_stdout.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"output");
    p.finish(false);
}

#[test]
fn control_frames_both_ways_and_a_passed_pipe_arrives_before_its_report() {
    let p = start();
    write_frame(&mut &p.sup_ctrl, &SupervisorMsg::Go).unwrap();
    let got: Option<SupervisorMsg> = crate::protocol::read_frame(&mut &p.agent_ctrl).unwrap();
    assert!(matches!(got, Some(SupervisorMsg::Go)));
    // The agent passes an exec's stdout read end, then the process writes and exits, then the
    // agent reports the exit: the bytes are readable on the host when the report arrives.
    let (r, mut w) = pipe_files();
    let started = AgentMsg::ExecStarted {
        id: 7,
        pid: 42,
        fds: 1,
    };
    write_frame_with_fds(&p.agent_ctrl, &started, &[r.as_raw_fd()]).unwrap();
    drop(r);
    w.write_all(&[b'x'; 10_000]).unwrap();
    drop(w);
    let exited = AgentMsg::ExecExited {
        id: 7,
        termination: crate::protocol::Termination::Exited(0),
    };
    write_frame(&mut &p.agent_ctrl, &exited).unwrap();
    let mut reader = FdFrameReader::new(p.sup_ctrl.try_clone().unwrap());
    let m: AgentMsg = reader.next_frame().unwrap().unwrap();
    assert!(matches!(m, AgentMsg::ExecStarted { id: 7, fds: 1, .. }));
    let fd = reader
        .take_fd()
        .expect("the descriptor came with the frame");
    let st = rustix::fs::fstat(&fd).unwrap();
    assert_eq!(
        rustix::fs::FileType::from_raw_mode(st.st_mode),
        rustix::fs::FileType::Fifo
    );
    let m: AgentMsg = reader.next_frame().unwrap().unwrap();
    assert!(matches!(m, AgentMsg::ExecExited { id: 7, .. }));
    set_nonblocking(fd.as_raw_fd()).unwrap();
    let mut f = std::fs::File::from(fd);
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the bytes and their end were not there with the report: {e}"),
        }
    }
    assert_eq!(got.len(), 10_000);
    p.finish(true);
}

/// The agent hands over `file` opened inside (an `Opened` reply with it attached); returns the
/// descriptor the supervisor receives for it.
fn pass_opened(p: &Pair, file: std::fs::File, path: &str) -> OwnedFd {
    let entry = Entry {
        name: path.rsplit('/').next().unwrap_or(path).into(),
        path: path.into(),
        kind: EntryKind::File,
        size: 0,
        mode: 0o644,
        mtime: 0,
        mtime_nsec: 0,
        symlink_target: None,
        uid: 0,
        gid: 0,
    };
    let opened = AgentMsg::FsDone {
        id: 1,
        reply: FsReply::Opened { entry },
    };
    write_frame_with_fds(&p.agent_ctrl, &opened, &[file.as_raw_fd()]).unwrap();
    drop(file);
    let mut reader = FdFrameReader::new(p.sup_ctrl.try_clone().unwrap());
    let _: AgentMsg = reader.next_frame().unwrap().unwrap();
    reader.take_fd().unwrap()
}

#[test]
fn an_upload_is_in_the_file_before_the_next_request_arrives() {
    let p = start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up");
    let file = std::fs::File::create(&path).unwrap();
    let fd = pass_opened(&p, file, &path.display().to_string());
    // A file opened for writing crosses as a socket: the host shuts down its side, then reads
    // the outcome, which is nothing (all written, the file closed) and EOF.
    let mut w = UnixStream::from(fd);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    w.write_all(&data).unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    let mut outcome = Vec::new();
    w.read_to_end(&mut outcome).unwrap();
    assert_eq!(outcome, b"", "nothing but EOF: written and closed");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        data,
        "all there once the outcome is in"
    );
    drop(w);
    write_frame(&mut &p.sup_ctrl, &SupervisorMsg::Stop).unwrap();
    let got: Option<SupervisorMsg> = crate::protocol::read_frame(&mut &p.agent_ctrl).unwrap();
    assert!(matches!(got, Some(SupervisorMsg::Stop)));
    // No waiting: the bytes written before Stop are in the file when Stop arrives.
    assert_eq!(std::fs::read(&path).unwrap(), data);
    p.finish(true);
}

/// A write that fails inside comes back as its errno (4 bytes, big-endian) before EOF, instead
/// of a broken pipe: here a procfs file that refuses what is written (EINVAL), with no effect.
#[test]
fn a_failed_write_inside_comes_back_as_its_errno() {
    let p = start();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/timerslack_ns")
        .unwrap();
    let mut w = UnixStream::from(pass_opened(&p, file, "/proc/self/timerslack_ns"));
    // The write may succeed (buffered on the way) or fail once the guest has given up.
    let _ = w.write_all(b"not a number\n");
    let _ = w.shutdown(std::net::Shutdown::Write);
    let mut outcome = [0u8; 8];
    let mut n = 0;
    loop {
        match w.read(&mut outcome[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            // The guest's side closed with our bytes unread: the data came first.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the outcome: {e}"),
        }
    }
    assert_eq!(
        &outcome[..n],
        &libc::EINVAL.to_be_bytes(),
        "the errno of the failed write"
    );
    write_frame(&mut &p.sup_ctrl, &SupervisorMsg::Stop).unwrap();
    let got: Option<SupervisorMsg> = crate::protocol::read_frame(&mut &p.agent_ctrl).unwrap();
    assert!(matches!(got, Some(SupervisorMsg::Stop)));
    p.finish(true);
}

#[test]
fn a_socket_is_carried_both_ways_with_half_close() {
    let p = start();
    let (inside, mut process) = UnixStream::pair().unwrap();
    write_frame_with_fds(&p.agent_ctrl, &AgentMsg::Proxy, &[inside.as_raw_fd()]).unwrap();
    drop(inside);
    let mut reader = FdFrameReader::new(p.sup_ctrl.try_clone().unwrap());
    let m: AgentMsg = reader.next_frame().unwrap().unwrap();
    assert!(matches!(m, AgentMsg::Proxy));
    let mut gw = UnixStream::from(reader.take_fd().unwrap());
    process.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    process.shutdown(std::net::Shutdown::Write).unwrap();
    let mut req = Vec::new();
    gw.read_to_end(&mut req).unwrap();
    assert_eq!(req, b"GET / HTTP/1.1\r\n\r\n");
    // Big answer: flow control holds it to the window without losing a byte.
    let body = vec![b'b'; 5_000_000];
    let b2 = body.clone();
    let t = std::thread::spawn(move || {
        gw.write_all(&b2).unwrap();
        gw.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut resp = Vec::new();
    process.read_to_end(&mut resp).unwrap();
    t.join().unwrap();
    assert_eq!(resp.len(), body.len());
    p.finish(true);
}

#[test]
fn the_host_refuses_hostile_bytes_from_the_guest() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown type", vec![99, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("oversized", {
            let mut v = vec![T_DATA, 0, 0, 0, 4];
            v.extend(((MAX_PAYLOAD + 1) as u32).to_be_bytes());
            v
        }),
        ("never announced stream", {
            let mut v = vec![T_DATA, 0, 0, 1, 0];
            v.extend(1u32.to_be_bytes());
            v.push(b'x');
            v
        }),
        ("bad announcement", {
            let mut v = vec![T_FDS, 0, 0, 0, 0];
            v.extend(2u32.to_be_bytes());
            v.extend([9, 9]);
            v
        }),
    ];
    for (what, bytes) in cases {
        let (g2h_r, g2h_w) = stockade_jail::sys::pipe_cloexec().unwrap();
        let (_h2g_r, h2g_w) = stockade_jail::sys::pipe_cloexec().unwrap();
        let (_sup, host_ctrl) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || run(Role::Host, g2h_r, h2g_w, host_ctrl, vec![]));
        let mut w = std::fs::File::from(g2h_w);
        w.write_all(&bytes).unwrap();
        let e = h.join().unwrap().expect_err(what);
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
    }
}
