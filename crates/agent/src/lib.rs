//! The Stockade agent: the in-sandbox PID 1 and its control protocol, plus the launcher that
//! creates it. The same agent code serves every backend; the control channel is a byte stream.
//!
//! Guarantees: the command runs in its own session with only the plan's environment; when it
//! ends, every other process of the sandbox is killed before the exit is reported; the report
//! of an overlay workspace lists every created, modified and deleted path (bounded).
//! Not guaranteed here: anything about the walls themselves (see `stockade-jail`).
//! Tested by unit tests (protocol, change walk) and end to end through the `stockade` binary.

pub mod changes;
pub mod direct;
pub mod fsops;
pub mod guest_boot;
pub mod launcher;
pub mod net;
pub mod pid1;
pub mod protocol;
pub mod session;
pub mod tunnel;
pub mod watch;
