//! Sandbox lifecycle for Stockade: policy → plan → launcher → supervision → verified teardown.
//!
//! Guarantees: a run either reports the command's status or fails with one [`RunError`]; in
//! both cases the cgroup it created is removed (or the leftover is reported), and the launcher
//! is reaped. Tested by unit tests of the pure plan and end to end through the binary.

pub mod audit;
pub mod backend;
pub mod container;
pub mod egress;
pub mod error;
pub mod git;
pub mod gvisor;
pub mod kmsg;
pub mod levels;
pub mod microvm;
pub mod plan;
pub mod reads;
pub mod relay;
pub mod secrets;
pub mod session;
pub mod spawn;
pub mod track;

pub use container::{EndReason, RunOptions, RunReport, run};
pub use error::RunError;
