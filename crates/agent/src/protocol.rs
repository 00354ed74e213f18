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
    /// The command ended; every other process of the sandbox has been killed.
    Exited {
        termination: Termination,
        changes: Option<Vec<Change>>,
        changes_error: Option<String>,
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
