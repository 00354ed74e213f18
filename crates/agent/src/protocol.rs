//! The control protocol between the supervisor and the in-sandbox agent.
//!
//! A byte stream (a unix socket for container/gvisor, vsock or a serial port for microVMs) carries
//! frames: a 4-byte big-endian length, then that many bytes of JSON. Frames larger than
//! [`MAX_FRAME`] are refused, so a compromised agent cannot make the supervisor allocate without
//! bound; every frame from the sandbox side is parsed as hostile input.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use stockade_jail::confine::Enforced;

/// Largest frame either side accepts (the change list of a busy overlay fits comfortably).
pub const MAX_FRAME: usize = 16 << 20;

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
}

impl Termination {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            Termination::Exited(c) => c,
            Termination::Signaled(s) => 128 + s,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Modified,
    Deleted,
}

/// One file changed in an overlay workspace, relative to the workspace root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
    pub size: u64,
}

/// Agent → supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// The sandbox is built and confined; the agent waits for [`SupervisorMsg::Go`] before it
    /// runs the command, so the supervisor can record the start first.
    Ready { enforced: Enforced },
    /// The command was executed (its pid inside the sandbox).
    Started { pid: i32 },
    /// Building the sandbox failed (before any untrusted code ran).
    SetupFailed { message: String },
    /// The command could not be executed: 127 not found, 126 not executable.
    ExecFailed { code: i32, message: String },
    /// A DNS question from inside (egress allowlist): the supervisor answers with `DnsReply`.
    DnsQuery {
        token: u64,
        name: String,
        qtype: String,
    },
    /// A DNS message from inside that is not a question the resolver answers (`code`: the
    /// parser's stable `dns:*` code); it gets no reply, and the supervisor records it.
    DnsMalformed { code: String },
    /// A connection accepted on the loopback address DNS mapped to `name`; the socket itself is
    /// attached to this frame (SCM_RIGHTS).
    Connect { name: String, port: u16 },
    /// A connection to the in-sandbox proxy port; the socket is attached (SCM_RIGHTS).
    Proxy,
    /// Session mode: an [`ExecRequest`] is running (its pid inside). The supervisor's ends of its
    /// stdio come attached to this frame (SCM_RIGHTS), in this order: the stdin pipe's write end
    /// when `stdin` was asked for (else the command reads /dev/null), then for a PTY its master
    /// alone, else the stdout pipe's read end and the stderr pipe's read end. `fds` says how many;
    /// the supervisor checks the count and the type of each (pipe, or the ptmx character device).
    ExecStarted { id: u64, pid: i32, fds: u8 },
    /// Session mode: the request could not be started (126 not executable, 127 not found, 125
    /// anything else); nothing runs.
    ExecRefused { id: u64, code: i32, message: String },
    /// Session mode: the request's process ended (its children may live on until the sandbox ends).
    ExecExited { id: u64, termination: Termination },
    /// Session mode: the answer to a [`SupervisorMsg::Fs`]. For [`FsReply::Opened`] the file's
    /// descriptor is attached (a regular file opened inside the sandbox).
    FsDone { id: u64, reply: FsReply },
    /// Session mode: something changed under a watched directory.
    FsEvent { watch: u64, event: WatchEvent },
    /// The command ended; every other process of the sandbox has been killed.
    Exited {
        termination: Termination,
        changes: Option<Vec<Change>>,
        changes_error: Option<String>,
        /// The scratch space (/tmp, HOME, /dev/shm, the overlay layer) was full at the end:
        /// writes there failed with ENOSPC.
        #[serde(default)]
        scratch_full: bool,
        /// In a microVM guest: the guest kernel OOM-killed something during the run (its RAM
        /// is the memory limit there).
        #[serde(default)]
        guest_oom: bool,
    },
}

/// Supervisor → agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SupervisorMsg {
    /// Run the command (answer to [`AgentMsg::Ready`]).
    Go,
    /// Kill everything and report (timeout, limit, Ctrl-C).
    Stop,
    /// The gateway's answer to a `DnsQuery`: may the name be reached, and on which ports.
    DnsReply {
        token: u64,
        allowed: bool,
        ports: Vec<u16>,
    },
    /// Session mode: start a process (answered by `ExecStarted` or `ExecRefused`, then `ExecExited`).
    Exec(ExecRequest),
    /// Session mode: send `signal` to the process group of a running request (only processes the
    /// agent started for a request can be signalled this way).
    Signal { id: u64, signal: i32 },
    /// Session mode: resize the PTY of a running request (the supervisor's end of a PTY is not
    /// the master itself when it crossed a tunnel).
    Resize { id: u64, size: PtySize },
    /// Session mode: a file operation, run by the agent inside the sandbox under the sandbox's
    /// own confinement (uid, mount namespace, Landlock, seccomp); answered by `FsDone`.
    Fs { id: u64, op: FsOp },
}

/// How the agent runs after `Go`: the policy's command once (`stockade run`), or requests until
/// `Stop` (`stockade serve`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    #[default]
    OneShot,
    Session,
}

/// Terminal size for a PTY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// One process to start in a session sandbox. The supervisor resolves everything: `env` is the
/// whole environment, `cwd` an absolute path inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: u64,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// Give the process a stdin pipe (else /dev/null). Ignored with a PTY (the master is stdin).
    pub stdin: bool,
    /// Run on a new pseudo-terminal (stdin, stdout and stderr are its slave side).
    pub pty: Option<PtySize>,
}

/// A file operation inside a session sandbox. Every path is absolute, inside the sandbox, and is
/// resolved by the agent in the sandbox's mount namespace (so `..` and symlinks cannot leave it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsOp {
    /// lstat; follows nothing.
    Stat {
        path: String,
    },
    /// Entries under a directory, `depth` levels down (1: the directory's own entries). At most
    /// [`MAX_LIST_ENTRIES`] entries; `truncated` says when there were more.
    List {
        path: String,
        depth: u32,
    },
    /// Creates the directory and its missing parents; `created` false when it already existed.
    Mkdir {
        path: String,
    },
    /// rename(2), creating the destination's missing parents.
    Move {
        from: String,
        to: String,
    },
    /// Removes a file, a symlink, or a directory with everything under it.
    Remove {
        path: String,
    },
    /// Opens a regular file for the supervisor to read or write through the attached descriptor;
    /// writing creates it (mode 0644, missing parents 0755) and truncates it.
    Open {
        path: String,
        write: bool,
    },
    /// Watches a directory (and, when `recursive`, its subdirectories, also those created later).
    Watch {
        path: String,
        recursive: bool,
    },
    Unwatch {
        watch: u64,
    },
}

/// Most entries one `List` returns (keeps a reply well under [`MAX_FRAME`]).
pub const MAX_LIST_ENTRIES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What `Stat` and `List` say about one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The last component.
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// st_mode & 0o7777.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// For a symlink, what it points at (as stored, not resolved).
    pub symlink_target: Option<String>,
}

/// The answer to one [`FsOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FsReply {
    Entry {
        entry: Entry,
    },
    List {
        entries: Vec<Entry>,
        truncated: bool,
    },
    Mkdir {
        created: bool,
        entry: Entry,
    },
    Moved {
        entry: Entry,
    },
    Removed,
    /// The descriptor is attached to the frame; `entry` describes the file as opened.
    Opened {
        entry: Entry,
    },
    Watching {
        watch: u64,
    },
    Unwatched,
    /// The operation failed: `errno` is the error number inside (ENOENT, EACCES, ENOTDIR, ...).
    Failed {
        errno: i32,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchOp {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// One change under a watched directory (`path` absolute inside). `Overflow` means events were
/// lost (the kernel's queue filled); the watch goes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    Change {
        op: WatchOp,
        path: String,
    },
    Overflow,
    /// The watched directory itself went away; no more events come for this watch.
    Gone,
}

/// Writes one frame with a descriptor attached to its first byte.
pub fn write_frame_with_fd<T: Serialize>(
    sock: &std::os::unix::net::UnixStream,
    msg: &T,
    fd: std::os::fd::RawFd,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    stockade_jail::sys::send_with_fd(sock.as_raw_fd(), &buf, fd)
}

/// Writes one frame with every descriptor of `fds` attached, in order, to its first byte (one
/// SCM_RIGHTS message; at most [`stockade_jail::sys::MAX_SEND_FDS`]). The caller keeps its
/// copies and closes them after. With no descriptors it is a plain frame.
pub fn write_frame_with_fds<T: Serialize>(
    sock: &std::os::unix::net::UnixStream,
    msg: &T,
    fds: &[std::os::fd::RawFd],
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    stockade_jail::sys::send_with_fds(sock.as_raw_fd(), &buf, fds)
}

/// Reads frames and the descriptors passed with them, in order.
pub struct FdFrameReader {
    sock: std::os::unix::net::UnixStream,
    buf: Vec<u8>,
    fds: std::collections::VecDeque<std::os::fd::OwnedFd>,
}

impl FdFrameReader {
    pub fn new(sock: std::os::unix::net::UnixStream) -> Self {
        FdFrameReader {
            sock,
            buf: Vec::new(),
            fds: std::collections::VecDeque::new(),
        }
    }

    /// The next frame; `Ok(None)` at a clean end. Descriptors that came with it wait in
    /// [`FdFrameReader::take_fd`].
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<T>> {
        use std::os::fd::AsRawFd;
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if n > MAX_FRAME {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "frame too large",
                    ));
                }
                if self.buf.len() >= 4 + n {
                    let msg: T = serde_json::from_slice(&self.buf[4..4 + n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.buf.drain(..4 + n);
                    return Ok(Some(msg));
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let (got, fds) = stockade_jail::sys::recv_with_fds(self.sock.as_raw_fd(), &mut chunk)?;
            self.fds.extend(fds);
            if got == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "truncated frame",
                    ))
                };
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    /// The oldest descriptor received and not yet claimed.
    pub fn take_fd(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.fds.pop_front()
    }
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated frame header",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {n} bytes exceeds the limit"),
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &SupervisorMsg::Stop).unwrap();
        let back: SupervisorMsg = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, SupervisorMsg::Stop);
        // Empty stream: clean end.
        assert!(
            read_frame::<SupervisorMsg>(&mut [].as_slice())
                .unwrap()
                .is_none()
        );
        // Oversized length is refused without allocating.
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        let e = read_frame::<SupervisorMsg>(&mut huge.as_slice()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Truncated header and body.
        assert_eq!(
            read_frame::<SupervisorMsg>(&mut [0u8, 0].as_slice())
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            read_frame::<SupervisorMsg>(&mut [0u8, 0, 0, 9, b'{'].as_slice())
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
        // Garbage JSON.
        assert_eq!(
            read_frame::<SupervisorMsg>(&mut [0u8, 0, 0, 1, b'x'].as_slice())
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn session_frames_round_trip() {
        let sup = vec![
            SupervisorMsg::Exec(ExecRequest {
                id: 7,
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: "/home/sandbox".into(),
                stdin: true,
                pty: Some(PtySize { rows: 24, cols: 80 }),
            }),
            SupervisorMsg::Signal { id: 7, signal: 15 },
            SupervisorMsg::Fs {
                id: 8,
                op: FsOp::List {
                    path: "/tmp".into(),
                    depth: 2,
                },
            },
            SupervisorMsg::Fs {
                id: 9,
                op: FsOp::Unwatch { watch: 3 },
            },
        ];
        for m in sup {
            let mut buf = Vec::new();
            write_frame(&mut buf, &m).unwrap();
            let back: SupervisorMsg = read_frame(&mut buf.as_slice()).unwrap().unwrap();
            assert_eq!(back, m);
        }
        let entry = Entry {
            name: "a".into(),
            path: "/tmp/a".into(),
            kind: EntryKind::Symlink,
            size: 3,
            mode: 0o777,
            uid: 1000,
            gid: 1000,
            mtime: 1,
            mtime_nsec: 2,
            symlink_target: Some("b".into()),
        };
        let agent = vec![
            AgentMsg::ExecStarted {
                id: 7,
                pid: 12,
                fds: 3,
            },
            AgentMsg::ExecRefused {
                id: 7,
                code: 127,
                message: "nope: command not found inside the sandbox".into(),
            },
            AgentMsg::ExecExited {
                id: 7,
                termination: Termination::Signaled(9),
            },
            AgentMsg::FsDone {
                id: 8,
                reply: FsReply::List {
                    entries: vec![entry.clone()],
                    truncated: true,
                },
            },
            AgentMsg::FsDone {
                id: 9,
                reply: FsReply::Failed {
                    errno: 2,
                    message: "/x: No such file or directory".into(),
                },
            },
            AgentMsg::FsEvent {
                watch: 1,
                event: WatchEvent::Change {
                    op: WatchOp::Rename,
                    path: "/tmp/a".into(),
                },
            },
            AgentMsg::FsEvent {
                watch: 1,
                event: WatchEvent::Gone,
            },
        ];
        for m in agent {
            let mut buf = Vec::new();
            write_frame(&mut buf, &m).unwrap();
            let back: AgentMsg = read_frame(&mut buf.as_slice()).unwrap().unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn frame_with_several_fds_arrives_with_them_in_order() {
        use std::os::fd::AsRawFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let msg = AgentMsg::ExecStarted {
            id: 1,
            pid: 5,
            fds: 2,
        };
        write_frame_with_fds(&a, &msg, &[w.as_raw_fd(), r.as_raw_fd()]).unwrap();
        write_frame_with_fds(&a, &AgentMsg::Proxy, &[]).unwrap();
        let mut reader = FdFrameReader::new(b);
        let got: AgentMsg = reader.next_frame().unwrap().unwrap();
        assert_eq!(got, msg);
        let (w2, r2) = (reader.take_fd().unwrap(), reader.take_fd().unwrap());
        rustix::io::write(&w2, b"z").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(rustix::io::read(&r2, &mut one).unwrap(), 1);
        assert_eq!(&one, b"z");
        let got: AgentMsg = reader.next_frame().unwrap().unwrap();
        assert_eq!(got, AgentMsg::Proxy);
        assert!(reader.take_fd().is_none());
    }

    #[test]
    fn shell_codes() {
        assert_eq!(Termination::Exited(3).shell_code(), 3);
        assert_eq!(Termination::Signaled(9).shell_code(), 137);
    }
}
