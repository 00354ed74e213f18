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
    /// The command ended; every other process of the sandbox has been killed.
    Exited {
        termination: Termination,
        changes: Option<Vec<Change>>,
        changes_error: Option<String>,
        /// The scratch space (/tmp, HOME, /dev/shm, the overlay layer) was full at the end:
        /// writes there failed with ENOSPC.
        #[serde(default)]
        scratch_full: bool,
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
    fn shell_codes() {
        assert_eq!(Termination::Exited(3).shell_code(), 3);
        assert_eq!(Termination::Signaled(9).shell_code(), 137);
    }
}
