//! The tunnel: the launcher's descriptors and the control channel carried over ONE byte stream,
//! for the levels where descriptors cannot cross (a gVisor sandbox, a microVM).
//!
//! On the host, `__vmm` holds the supervisor's side of descriptors 0-5 exactly as `__launch`
//! would, and runs [`run`] with [`Role::Host`]; inside, the guest binary runs it with
//! [`Role::Guest`] and hands recreated descriptors 0-5 to the launcher or the agent. Neither the
//! supervisor nor the agent can tell the difference, except that a descriptor the agent passes
//! (an exec's pipes or PTY, an accepted connection, an opened file) arrives on the host as a
//! local pipe or socket whose other end is pumped through the tunnel:
//!
//! | passed inside               | becomes on the host            |
//! |-----------------------------|--------------------------------|
//! | read end of a pipe, a file opened for reading | the read end of a pipe |
//! | write end of a pipe, a file opened for writing | the write end of a pipe |
//! | a socket, a PTY master      | one end of a socketpair        |
//!
//! Wire format, both ways: `type:u8 stream:u32 len:u32 payload[len]` (big endian), with
//! `len <= MAX_PAYLOAD`. `CTRL` (stream 0) carries control bytes; from the guest, `FDS` announces
//! the new streams of the descriptors attached to the frame whose bytes follow it. `DATA`/`EOF` carry a
//! stream's bytes and its end; `CREDIT` grants the sender more bytes (each direction of each
//! stream has a window of [`WINDOW`], so one stalled reader never blocks the others); `CLOSE`
//! says the receiving side is gone (the sender stops reading).
//!
//! Ordering: before a control frame is sent, every stream's bytes that are already readable
//! (bounded by the kernel's pipe and socket buffers) are sent first, credit or not. So whatever a
//! process wrote before the agent reported it (an exec's output before `ExecExited`, an upload's
//! bytes before the `Move` that publishes it) arrives first; regular files are written the moment
//! their bytes arrive.
//!
//! Hostile input: the host treats everything from the guest as hostile: unknown types, lengths
//! over the limit, data beyond a window plus the drain allowance, streams it did not announce,
//! more than [`MAX_STREAMS`] at once, or descriptors missing for a frame end the tunnel with an
//! error (the supervisor then sees its control channel close).

use crate::protocol::{AgentMsg, FsReply, MAX_FRAME};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const T_CTRL: u8 = 1;
const T_DATA: u8 = 2;
const T_EOF: u8 = 3;
const T_CREDIT: u8 = 4;
const T_CLOSE: u8 = 5;
const T_FDS: u8 = 6;

/// Largest payload of one message.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes one direction of one stream may have in flight.
pub const WINDOW: usize = 256 * 1024;
/// What a receiver accepts beyond the window: the sender's drain before a control frame may
/// exceed its credit by what the kernel buffered (a pipe or a socket's buffer).
const DRAIN_ALLOWANCE: usize = 8 * 1024 * 1024;
/// Most streams open at once.
pub const MAX_STREAMS: usize = 4096;
/// The transport's unsent bytes above which local descriptors are not read.
const TX_HIGH: usize = 1024 * 1024;
/// Control bytes waiting for the local side above which the transport is not read.
const CTRL_HIGH: usize = 16 * 1024 * 1024;
/// Stream bytes waiting for their local descriptors (all streams together) above which the
/// transport is not read: the peer's windows bound each stream, this bounds their sum (a
/// hostile guest opening thousands of streams cannot make the host buffer more).
const STREAMS_HIGH: usize = 64 * 1024 * 1024;
/// The first id the guest gives to a descriptor it passes (ids below are the fixed streams).
const FIRST_DYNAMIC: u32 = 16;

/// Fixed streams: the launcher's descriptors.
pub const PLAN: u32 = 1;
pub const LIVENESS: u32 = 2;
pub const STDIN: u32 = 3;
pub const STDOUT: u32 = 4;
pub const STDERR: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Host,
    Guest,
}

/// Which way a fixed stream's bytes go, seen from this side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Read the local descriptor, send to the peer.
    Send,
    /// Receive from the peer, write the local descriptor.
    Recv,
}

/// How a passed descriptor is carried (announced with it in a control message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// Bytes flow guest → host (host gets a pipe's read end).
    Source = 1,
    /// Bytes flow host → guest (host gets a pipe's write end).
    Sink = 2,
    /// Both ways (host gets a socketpair end).
    Duplex = 3,
    /// A regular file opened for writing: bytes flow host → guest, and the other way only its
    /// outcome once the host's side ended: nothing (every byte written and the file closed) or
    /// the 4-byte errno (big-endian) of the write or close that failed. The host gets a
    /// socketpair end: shut down its write side, then read the outcome to EOF.
    SinkFile = 4,
}

struct Stream {
    fd: Option<OwnedFd>,
    /// We still read the local descriptor and send.
    reading: bool,
    /// We still accept bytes for the local descriptor.
    writing: bool,
    /// Bytes received, not yet written locally.
    out: VecDeque<u8>,
    /// The peer sent EOF: once `out` is written, end the local write side.
    peer_eof: bool,
    /// Bytes we may still send.
    credit: usize,
    /// Bytes written locally not yet granted back.
    to_grant: usize,
    /// A regular file: written at once (ordering), never drained before control frames.
    file: bool,
    /// A socket: the write side ends with shutdown(SHUT_WR), not close.
    socket: bool,
    /// Guest side of a [`Kind::SinkFile`]: report how the writing ended.
    outcome: bool,
}

impl Stream {
    fn new(fd: OwnedFd, reading: bool, writing: bool) -> Stream {
        let (file, socket) = match rustix::fs::fstat(&fd) {
            Ok(st) => {
                let t = rustix::fs::FileType::from_raw_mode(st.st_mode);
                (
                    t == rustix::fs::FileType::RegularFile,
                    t == rustix::fs::FileType::Socket,
                )
            }
            Err(_) => (false, false),
        };
        Stream {
            fd: Some(fd),
            reading,
            writing,
            out: VecDeque::new(),
            peer_eof: false,
            credit: WINDOW,
            to_grant: 0,
            file,
            socket,
            outcome: false,
        }
    }

    /// Ends the local write side by closing the descriptor, with close's own error (a file
    /// system may report a failed write only there).
    fn close_checked(&mut self) -> Result<(), i32> {
        self.writing = false;
        self.out.clear();
        let r = match self.fd.take() {
            Some(fd) => {
                let raw = fd.into_raw_fd();
                // SAFETY: `raw` came from an OwnedFd released just above, so this close is
                // its only one.
                if unsafe { libc::close(raw) } == 0 {
                    Ok(())
                } else {
                    match io::Error::last_os_error().raw_os_error() {
                        // Linux closes the descriptor even then: nothing was lost.
                        Some(libc::EINTR) => Ok(()),
                        e => Err(e.unwrap_or(libc::EIO)),
                    }
                }
            }
            None => Ok(()),
        };
        if self.reading {
            self.reading = false;
        }
        r
    }

    fn raw(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn done(&self) -> bool {
        !self.reading && !self.writing
    }

    /// Ends the local write side.
    fn end_write(&mut self) {
        self.writing = false;
        self.out.clear();
        if let Some(fd) = &self.fd
            && self.socket
            && self.reading
        {
            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
        }
        if !self.reading {
            self.fd = None;
        }
    }

    /// Stops reading the local descriptor.
    fn end_read(&mut self) {
        self.reading = false;
        if !self.writing {
            self.fd = None;
        }
    }
}

/// The control channel's local side.
struct Ctrl {
    sock: UnixStream,
    open: bool,
    /// Bytes read, not yet complete frames (guest side).
    inbuf: Vec<u8>,
    /// Descriptors received, not yet matched to a frame (guest side).
    fds: VecDeque<OwnedFd>,
    /// Bytes (and descriptors for the first byte) to write locally.
    out: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    out_len: usize,
    /// Host: descriptors announced for the next control bytes.
    attach: Vec<OwnedFd>,
    /// The peer's control channel ended: end ours once `out` is written.
    peer_eof: bool,
}

struct Tunnel {
    role: Role,
    rx: OwnedFd,
    tx: OwnedFd,
    rx_open: bool,
    rx_buf: Vec<u8>,
    tx_buf: VecDeque<u8>,
    tx_broken: bool,
    ctrl: Ctrl,
    streams: HashMap<u32, Stream>,
    next_id: u32,
    peer_spoke: bool,
}

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// The other side sent at least one control byte (on the host: the guest's agent started).
    pub peer_spoke: bool,
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take integer arguments on a descriptor the caller owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take integer arguments on a descriptor the caller owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes for the duration of the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of reads for the duration of the call.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// How many descriptors the agent attaches to `msg` (as the supervisor reads them).
pub fn fds_of(msg: &AgentMsg) -> usize {
    match msg {
        AgentMsg::ExecStarted { fds, .. } => usize::from(*fds).min(3),
        AgentMsg::Connect { .. } | AgentMsg::Proxy => 1,
        AgentMsg::FsDone {
            reply: FsReply::Opened { .. },
            ..
        } => 1,
        _ => 0,
    }
}

/// How a descriptor passed inside is carried: by its type and access mode.
fn kind_of(fd: &OwnedFd) -> io::Result<Kind> {
    let st = rustix::fs::fstat(fd)?;
    let t = rustix::fs::FileType::from_raw_mode(st.st_mode);
    // SAFETY: F_GETFL takes no argument beyond the descriptor, which `fd` keeps open.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    let read_only = fl & libc::O_ACCMODE == libc::O_RDONLY;
    use rustix::fs::FileType as F;
    match t {
        F::Fifo | F::RegularFile if read_only => Ok(Kind::Source),
        F::RegularFile => Ok(Kind::SinkFile),
        F::Fifo => Ok(Kind::Sink),
        F::Socket | F::CharacterDevice => Ok(Kind::Duplex),
        _ => Err(bad("a descriptor of a kind the tunnel does not carry")),
    }
}

impl Tunnel {
    fn send_msg(&mut self, t: u8, stream: u32, payload: &[u8]) {
        if self.tx_broken {
            return;
        }
        self.tx_buf.push_back(t);
        self.tx_buf.extend(stream.to_be_bytes());
        self.tx_buf.extend((payload.len() as u32).to_be_bytes());
        self.tx_buf.extend(payload);
    }

    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() && !self.tx_broken {
            let (a, _) = self.tx_buf.as_slices();
            match write_fd(self.tx.as_raw_fd(), a) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                }
                Err(e) if would_block(&e) => return,
                Err(_) => {
                    self.tx_broken = true;
                    self.tx_buf.clear();
                }
            }
        }
    }

    /// Reads what stream `id` has (up to its credit unless `drain`) and sends it.
    fn pump_stream(&mut self, id: u32, drain: bool) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            if !s.reading || (!drain && s.credit == 0) {
                return;
            }
            let want = if drain {
                MAX_PAYLOAD
            } else {
                MAX_PAYLOAD.min(s.credit)
            };
            let file = s.file;
            match read_fd(s.raw(), &mut buf[..want]) {
                Ok(n) if n > 0 => {
                    s.credit = s.credit.saturating_sub(n);
                    self.send_msg(T_DATA, id, &buf[..n]);
                    if !drain && (file || self.tx_buf.len() > TX_HIGH) {
                        // A file is always readable: one chunk per turn, so others get theirs.
                        break;
                    }
                }
                Err(e) if would_block(&e) => break,
                // End of file, or EIO from a PTY master whose other side closed: any error
                // ends the reading.
                _ => {
                    s.end_read();
                    self.send_msg(T_EOF, id, &[]);
                    break;
                }
            }
        }
        self.drop_if_done(id);
    }

    /// Before a control frame: every stream's already-readable bytes (regular files excepted).
    fn drain_all(&mut self) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.reading && !s.file)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.pump_stream(id, true);
        }
    }

    fn drop_if_done(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::done) {
            self.streams.remove(&id);
        }
    }

    /// Writes what stream `id` has received to its local descriptor.
    fn flush_stream(&mut self, id: u32) {
        let mut grant = 0;
        let mut closed = false;
        // A SinkFile's outcome, once known: Ok, or the errno that ended it.
        let mut outcome: Option<Result<(), i32>> = None;
        if let Some(s) = self.streams.get_mut(&id) {
            while s.writing && !s.out.is_empty() {
                let (a, _) = s.out.as_slices();
                match write_fd(s.raw(), a) {
                    Ok(n) => {
                        s.out.drain(..n);
                        s.to_grant += n;
                    }
                    Err(e) if would_block(&e) && !s.file => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if s.outcome {
                            outcome = Some(Err(e.raw_os_error().unwrap_or(libc::EIO)));
                            let _ = s.close_checked();
                        } else {
                            s.end_write();
                        }
                        closed = true;
                        break;
                    }
                }
            }
            if s.writing && s.out.is_empty() && s.peer_eof {
                if s.outcome {
                    outcome = Some(s.close_checked());
                } else {
                    s.end_write();
                }
            }
            if s.to_grant >= WINDOW / 4 || (s.out.is_empty() && s.to_grant > 0) {
                grant = s.to_grant;
                s.to_grant = 0;
            }
        }
        match outcome {
            Some(Ok(())) => self.send_msg(T_EOF, id, &[]),
            Some(Err(errno)) => {
                self.send_msg(T_DATA, id, &errno.to_be_bytes());
                self.send_msg(T_EOF, id, &[]);
            }
            None => {}
        }
        if closed {
            self.send_msg(T_CLOSE, id, &[]);
        } else if grant > 0 {
            self.send_msg(T_CREDIT, id, &(grant as u32).to_be_bytes());
        }
        self.drop_if_done(id);
    }

    /// Reads the local control socket: on the host raw bytes, on the guest whole frames with
    /// their descriptors, which become new streams.
    fn read_ctrl(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let got = match self.role {
                Role::Host => read_fd(self.ctrl.sock.as_raw_fd(), &mut chunk).map(|n| (n, vec![])),
                Role::Guest => {
                    stockade_jail::sys::recv_with_fds(self.ctrl.sock.as_raw_fd(), &mut chunk)
                }
            };
            match got {
                Ok((0, _)) => {
                    self.ctrl.open = false;
                    self.drain_all();
                    self.send_msg(T_EOF, 0, &[]);
                    return Ok(());
                }
                Ok((n, fds)) => match self.role {
                    Role::Host => {
                        self.drain_all();
                        self.send_msg(T_CTRL, 0, &chunk[..n]);
                    }
                    Role::Guest => {
                        self.ctrl.fds.extend(fds);
                        self.ctrl.inbuf.extend_from_slice(&chunk[..n]);
                        self.guest_frames()?;
                    }
                },
                Err(e) if would_block(&e) => return Ok(()),
                Err(_) => {
                    self.ctrl.open = false;
                    self.send_msg(T_EOF, 0, &[]);
                    return Ok(());
                }
            }
        }
    }

    /// Guest: sends every complete frame with its descriptors announced as new streams.
    fn guest_frames(&mut self) -> io::Result<()> {
        while self.ctrl.inbuf.len() >= 4 {
            let b = &self.ctrl.inbuf;
            let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if n > MAX_FRAME {
                return Err(bad("control frame too large"));
            }
            if b.len() < 4 + n {
                break;
            }
            let frame: Vec<u8> = self.ctrl.inbuf.drain(..4 + n).collect();
            let want = match serde_json::from_slice::<AgentMsg>(&frame[4..]) {
                Ok(m) => fds_of(&m),
                Err(_) => 0,
            };
            if self.ctrl.fds.len() < want {
                return Err(bad("a control frame came without its descriptors"));
            }
            let mut header = vec![want as u8];
            let mut new = Vec::new();
            for _ in 0..want {
                let Some(fd) = self.ctrl.fds.pop_front() else {
                    break;
                };
                let kind = kind_of(&fd)?;
                let id = self.next_id;
                self.next_id += 1;
                header.extend(id.to_be_bytes());
                header.push(kind as u8);
                let (reading, writing) = match kind {
                    Kind::Source => (true, false),
                    Kind::Sink | Kind::SinkFile => (false, true),
                    Kind::Duplex => (true, true),
                };
                let mut s = Stream::new(fd, reading, writing);
                s.outcome = kind == Kind::SinkFile;
                if s.file {
                    // A regular file is read and written at once, in order (some kernels, gVisor
                    // among them, answer EAGAIN for a file opened O_NONBLOCK).
                    set_blocking(s.raw())?;
                } else {
                    set_nonblocking(s.raw())?;
                }
                new.push((id, s));
            }
            self.drain_all();
            if want > 0 {
                self.send_msg(T_FDS, 0, &header);
            }
            for c in frame.chunks(MAX_PAYLOAD) {
                self.send_msg(T_CTRL, 0, c);
            }
            self.streams.extend(new);
        }
        Ok(())
    }

    /// Host: the guest announces the streams of the descriptors for the frame that follows.
    fn host_fds(&mut self, p: &[u8]) -> io::Result<()> {
        let Some((&count, mut rest)) = p.split_first() else {
            return Err(bad("empty descriptor announcement"));
        };
        if usize::from(count) > 3
            || rest.len() != usize::from(count) * 5
            || !self.ctrl.attach.is_empty()
        {
            return Err(bad("malformed descriptor announcement"));
        }
        for _ in 0..count {
            let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let kind = rest[4];
            rest = &rest[5..];
            if id < self.next_id || self.streams.contains_key(&id) {
                return Err(bad("a stream id reused or out of order"));
            }
            if self.streams.len() >= MAX_STREAMS {
                return Err(bad("too many streams"));
            }
            self.next_id = id + 1;
            let (ours, theirs, reading, writing) = match kind {
                1 => {
                    let (r, w) = stockade_jail::sys::pipe_cloexec()?;
                    (w, r, false, true)
                }
                2 => {
                    let (r, w) = stockade_jail::sys::pipe_cloexec()?;
                    (r, w, true, false)
                }
                3 | 4 => {
                    let (a, b) = UnixStream::pair()?;
                    (OwnedFd::from(a), OwnedFd::from(b), true, true)
                }
                _ => return Err(bad("unknown stream kind")),
            };
            set_nonblocking(ours.as_raw_fd())?;
            self.streams.insert(id, Stream::new(ours, reading, writing));
            self.ctrl.attach.push(theirs);
        }
        Ok(())
    }

    fn flush_ctrl(&mut self) {
        while let Some((bytes, fds)) = self.ctrl.out.front_mut() {
            if bytes.is_empty() {
                self.ctrl.out.pop_front();
                continue;
            }
            if !self.ctrl.open {
                self.ctrl.out.clear();
                self.ctrl.out_len = 0;
                return;
            }
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let r = if raw.is_empty() {
                write_fd(self.ctrl.sock.as_raw_fd(), bytes)
            } else {
                stockade_jail::sys::send_with_fds(self.ctrl.sock.as_raw_fd(), bytes, &raw)
                    .map(|()| bytes.len())
            };
            match r {
                Ok(n) => {
                    fds.clear();
                    bytes.drain(..n);
                    self.ctrl.out_len -= n;
                    if bytes.is_empty() {
                        self.ctrl.out.pop_front();
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(_) => {
                    self.ctrl.open = false;
                }
            }
        }
        if self.ctrl.peer_eof && self.ctrl.open {
            let _ = self.ctrl.sock.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Handles every complete message in `rx_buf`.
    fn handle_rx(&mut self) -> io::Result<()> {
        let mut at = 0;
        while self.rx_buf.len() - at >= 9 {
            let b = &self.rx_buf[at..];
            let t = b[0];
            let id = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
            let len = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(bad("tunnel message too large"));
            }
            if b.len() < 9 + len {
                break;
            }
            let payload = self.rx_buf[at + 9..at + 9 + len].to_vec();
            at += 9 + len;
            self.handle(t, id, &payload)?;
        }
        self.rx_buf.drain(..at);
        Ok(())
    }

    fn handle(&mut self, t: u8, id: u32, p: &[u8]) -> io::Result<()> {
        match (t, id) {
            (T_CTRL, 0) => {
                self.peer_spoke = true;
                if self.ctrl.peer_eof {
                    return Err(bad("control bytes after the end"));
                }
                let fds = std::mem::take(&mut self.ctrl.attach);
                self.ctrl.out_len += p.len();
                self.ctrl.out.push_back((p.to_vec(), fds));
                self.flush_ctrl();
            }
            (T_FDS, 0) if self.role == Role::Host => self.host_fds(p)?,
            (T_EOF, 0) => {
                self.ctrl.peer_eof = true;
                self.flush_ctrl();
            }
            (T_DATA, _) => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.unknown(id);
                };
                if s.peer_eof {
                    return Err(bad("data after the end of a stream"));
                }
                if s.writing {
                    if s.out.len() + p.len() > WINDOW + DRAIN_ALLOWANCE {
                        return Err(bad("a stream overran its window"));
                    }
                    s.out.extend(p);
                }
                self.flush_stream(id);
            }
            (T_EOF, _) => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.unknown(id);
                };
                s.peer_eof = true;
                self.flush_stream(id);
            }
            (T_CREDIT, _) => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.unknown(id);
                };
                let n = p
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| bad("malformed credit"))?;
                s.credit = (s.credit + n as usize).min(WINDOW);
            }
            (T_CLOSE, _) => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return self.unknown(id);
                };
                s.end_read();
                self.drop_if_done(id);
            }
            _ => return Err(bad(format!("unknown tunnel message type {t}"))),
        }
        Ok(())
    }

    /// A message for a stream that is not open: fine if it ended here already (the peer's
    /// messages cross ours), an error if it never existed.
    fn unknown(&self, id: u32) -> io::Result<()> {
        let known = if id < FIRST_DYNAMIC {
            (PLAN..=STDERR).contains(&id)
        } else {
            id < self.next_id
        };
        if known {
            Ok(())
        } else {
            Err(bad(format!("a message for stream {id}, never announced")))
        }
    }

    fn read_transport(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 128 * 1024];
        loop {
            match read_fd(self.rx.as_raw_fd(), &mut chunk) {
                Ok(0) => {
                    self.rx_open = false;
                    return Ok(());
                }
                Ok(n) => {
                    self.rx_buf.extend_from_slice(&chunk[..n]);
                    self.handle_rx()?;
                    let buffered: usize = self.streams.values().map(|s| s.out.len()).sum();
                    if self.ctrl.out_len > CTRL_HIGH || buffered > STREAMS_HIGH {
                        return Ok(());
                    }
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(_) => {
                    self.rx_open = false;
                    return Ok(());
                }
            }
        }
    }

    /// The guest is finished when its control channel ended, nothing is left to read locally
    /// and everything is sent.
    fn guest_finished(&self) -> bool {
        !self.ctrl.open && self.tx_buf.is_empty() && !self.streams.values().any(|s| s.reading)
    }
}

/// Runs the tunnel until its end: on the host when the guest's side is gone (and what it sent
/// is written, within a few seconds); on the guest when the agent's control channel ended and
/// every local descriptor read to its end is sent, or when the host is gone.
///
/// `fixed` are the launcher's descriptors (see [`PLAN`]...[`STDERR`]) with their direction as
/// seen from this side.
pub fn run(
    role: Role,
    rx: OwnedFd,
    tx: OwnedFd,
    ctrl: UnixStream,
    fixed: Vec<(u32, OwnedFd, Way)>,
) -> io::Result<Outcome> {
    for fd in [rx.as_raw_fd(), tx.as_raw_fd(), ctrl.as_raw_fd()] {
        set_nonblocking(fd)?;
    }
    let mut t = Tunnel {
        role,
        rx,
        tx,
        rx_open: true,
        rx_buf: Vec::new(),
        tx_buf: VecDeque::new(),
        tx_broken: false,
        ctrl: Ctrl {
            sock: ctrl,
            open: true,
            inbuf: Vec::new(),
            fds: VecDeque::new(),
            out: VecDeque::new(),
            out_len: 0,
            attach: Vec::new(),
            peer_eof: false,
        },
        streams: HashMap::new(),
        next_id: FIRST_DYNAMIC,
        peer_spoke: false,
    };
    for (id, fd, way) in fixed {
        set_nonblocking(fd.as_raw_fd())?;
        let s = match way {
            Way::Send => Stream::new(fd, true, false),
            Way::Recv => Stream::new(fd, false, true),
        };
        t.streams.insert(id, s);
    }
    let mut ending: Option<Instant> = None;
    loop {
        let outcome = Outcome {
            peer_spoke: t.peer_spoke,
        };
        if role == Role::Guest && t.guest_finished() {
            return Ok(outcome);
        }
        if !t.rx_open || t.tx_broken {
            // The peer is gone: write out what arrived (bounded), then end.
            let since = *ending.get_or_insert_with(Instant::now);
            let pending = t.streams.values().any(|s| s.writing && !s.out.is_empty())
                || !t.ctrl.out.is_empty();
            if !pending || since.elapsed() > Duration::from_secs(5) {
                return Ok(outcome);
            }
        }
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut who: Vec<Option<u32>> = Vec::new(); // None: transport rx/tx or ctrl
        let backpressure = t.tx_buf.len() > TX_HIGH;
        let buffered: usize = t.streams.values().map(|s| s.out.len()).sum();
        if t.rx_open && t.ctrl.out_len <= CTRL_HIGH && buffered <= STREAMS_HIGH {
            pfds.push(pollfd(t.rx.as_raw_fd(), libc::POLLIN));
            who.push(None);
        }
        if !t.tx_buf.is_empty() && !t.tx_broken {
            pfds.push(pollfd(t.tx.as_raw_fd(), libc::POLLOUT));
            who.push(None);
        }
        let mut ev = 0;
        if t.ctrl.open && !backpressure {
            ev |= libc::POLLIN;
        }
        if !t.ctrl.out.is_empty() && t.ctrl.open {
            ev |= libc::POLLOUT;
        }
        if ev != 0 {
            pfds.push(pollfd(t.ctrl.sock.as_raw_fd(), ev));
            who.push(None);
        }
        for (id, s) in &t.streams {
            let mut ev = 0;
            if s.reading && s.credit > 0 && !backpressure {
                ev |= libc::POLLIN;
            }
            if s.writing && !s.out.is_empty() {
                ev |= libc::POLLOUT;
            }
            if ev != 0 {
                pfds.push(pollfd(s.raw(), ev));
                who.push(Some(*id));
            }
        }
        let timeout = if ending.is_some() { 50 } else { 1000 };
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs for the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (p, w) in pfds.iter().zip(who.iter()) {
            if p.revents == 0 {
                continue;
            }
            match w {
                Some(id) => {
                    if p.revents & libc::POLLOUT != 0 {
                        t.flush_stream(*id);
                    }
                    if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        t.pump_stream(*id, false);
                        // A write-only descriptor whose reader left: stop writing it.
                        if p.revents & libc::POLLERR != 0
                            && t.streams.get(id).is_some_and(|s| !s.reading && s.writing)
                        {
                            if let Some(s) = t.streams.get_mut(id) {
                                s.end_write();
                            }
                            t.send_msg(T_CLOSE, *id, &[]);
                            t.drop_if_done(*id);
                        }
                    }
                }
                None if p.fd == t.rx.as_raw_fd() => t.read_transport()?,
                None if p.fd == t.ctrl.sock.as_raw_fd() => {
                    if p.revents & libc::POLLOUT != 0 {
                        t.flush_ctrl();
                    }
                    if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        t.read_ctrl()?;
                    }
                }
                None => {}
            }
        }
        t.flush_tx();
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
