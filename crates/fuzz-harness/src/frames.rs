//! The agent control protocol: length-prefixed JSON frames, read by `read_frame` (the agent's
//! side) and `FdFrameReader` (the supervisor's side, over a unix socket).

use std::fmt::Debug;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use serde::Serialize;
use serde::de::DeserializeOwned;
use stockade_agent::protocol::{
    AgentMsg, FdFrameReader, MAX_FRAME, SupervisorMsg, read_frame, write_frame,
};

use crate::alloc;

/// What a decoder gave for one frame: a message, a clean end, or an error of some kind.
type Step<T> = Result<Option<T>, io::ErrorKind>;

/// At most this much of the input goes through the socket pair: it fits in the socket's send
/// buffer, so it is written whole before reading starts and no thread is needed.
const SOCKET_INPUT: usize = 64 * 1024;

/// Reads `data` as a stream of frames, both as [`AgentMsg`] and as [`SupervisorMsg`], and checks:
///
/// - `read_frame` never makes an allocation larger than [`MAX_FRAME`], whatever the length field
///   says, and `FdFrameReader` (which buffers what it receives) never allocates more than a small
///   multiple of the bytes actually sent;
/// - every decoded message is written again by `write_frame` and reads back equal;
/// - `read_frame` over the bytes and `FdFrameReader` over a socket carrying the same bytes give
///   the same messages, the same clean end, and errors of the same kind at the same frame.
pub fn agent_frames(data: &[u8]) {
    check_stream::<AgentMsg>(data);
    check_stream::<SupervisorMsg>(data);
}

fn check_stream<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let by_read = read_all::<T>(data);
    for step in &by_read {
        if let Ok(Some(msg)) = step {
            round_trip(msg);
        }
    }
    let input = &data[..data.len().min(SOCKET_INPUT)];
    let by_reader = reader_all::<T>(input);
    let expected = if input.len() == data.len() {
        by_read
    } else {
        read_all::<T>(input)
    };
    assert_eq!(
        by_reader, expected,
        "FdFrameReader and read_frame disagree on the same bytes"
    );
}

/// Every step of `read_frame` until a clean end or the first error.
fn read_all<T: DeserializeOwned>(data: &[u8]) -> Vec<Step<T>> {
    let mut r = data;
    let mut out = Vec::new();
    loop {
        alloc::reset();
        let step = read_frame::<T>(&mut r).map_err(|e| e.kind());
        if alloc::installed() {
            let largest = alloc::largest();
            assert!(
                largest <= MAX_FRAME,
                "read_frame allocated {largest} bytes, more than MAX_FRAME ({MAX_FRAME})"
            );
        }
        let last = !matches!(step, Ok(Some(_)));
        out.push(step);
        if last {
            return out;
        }
    }
}

/// Every step of an `FdFrameReader` reading `data` from a socket, until a clean end or the first
/// error.
fn reader_all<T: DeserializeOwned>(data: &[u8]) -> Vec<Step<T>> {
    let (mut tx, rx) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => panic!("socketpair: {e}"),
    };
    if let Err(e) = tx
        .write_all(data)
        .and_then(|()| tx.shutdown(Shutdown::Write))
    {
        panic!("writing {} bytes to the socket pair: {e}", data.len());
    }
    let mut reader = FdFrameReader::new(rx);
    // The buffer holds what was received (at most the input plus one 64 KiB read), and a
    // growing Vec may double: anything beyond that came from a length field.
    let bound = 2 * (data.len() + 64 * 1024) + 4096;
    let mut out = Vec::new();
    loop {
        alloc::reset();
        let step = reader.next_frame::<T>().map_err(|e| e.kind());
        if alloc::installed() {
            let largest = alloc::largest();
            assert!(
                largest <= bound,
                "FdFrameReader allocated {largest} bytes for {} bytes of input",
                data.len()
            );
        }
        assert!(reader.take_fd().is_none(), "a descriptor out of nowhere");
        let last = !matches!(step, Ok(Some(_)));
        out.push(step);
        if last {
            return out;
        }
    }
}

fn round_trip<T>(msg: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut buf = Vec::new();
    if let Err(e) = write_frame(&mut buf, msg) {
        panic!("write_frame refused a message it read: {e}: {msg:?}");
    }
    match read_frame::<T>(&mut buf.as_slice()) {
        Ok(Some(back)) => assert_eq!(&back, msg, "frame round trip"),
        other => panic!("a written frame reads back as {other:?}: {msg:?}"),
    }
}
