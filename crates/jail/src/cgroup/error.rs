//! The one error type of the cgroup module. Every variant names the controller and/or the file
//! involved and says what an operator can do about it.

use std::io;
use std::path::PathBuf;

use super::Controller;

/// Why a cgroup could not be discovered, created, limited or joined.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The sandbox name is not a safe single path component.
    #[error("invalid cgroup name {name:?}: {reason}; use 1-64 characters from [A-Za-z0-9_.-]")]
    InvalidName { name: String, reason: &'static str },

    /// `Limits::cpus` is not a usable CPU count.
    #[error(
        "invalid cpu limit {cpus}: must be a finite number >= 0.01 (the kernel's minimum quota is 1ms per 100ms)"
    )]
    InvalidCpus { cpus: f64 },

    /// cgroup v1 expresses swap as memory+swap, so a swap limit needs a memory limit.
    #[error(
        "swap limit without a memory limit on cgroup v1 (memory.memsw.limit_in_bytes is memory+swap): set memory_bytes too"
    )]
    SwapNeedsMemoryLimit,

    /// A file needed for discovery could not be read.
    #[error(
        "cannot read {file}: {source}; check that /proc and the cgroup filesystems are mounted and readable"
    )]
    Read { file: PathBuf, source: io::Error },

    /// A discovery file had a line this module does not understand.
    #[error("cannot parse {file} line {line:?}: {reason}")]
    Parse {
        file: PathBuf,
        line: String,
        reason: &'static str,
    },

    /// The controller a requested limit needs is not mounted or not delegated to the caller.
    #[error(
        "cgroup controller {controller:?} is unavailable: {reason}; enable/delegate it or drop that limit"
    )]
    ControllerUnavailable {
        controller: Controller,
        reason: String,
    },

    /// mkdir of a cgroup directory failed.
    #[error(
        "cannot create cgroup {path} for {controller:?}: {source}; check that the caller may write there (root, or a delegated subtree)"
    )]
    Create {
        controller: Controller,
        path: PathBuf,
        source: io::Error,
    },

    /// The sandbox cgroup already exists: another sandbox has the name, or a stale one is left.
    #[error(
        "cgroup {path} for {controller:?} already exists: pick another sandbox name or run sweep_stale"
    )]
    NameInUse {
        controller: Controller,
        path: PathBuf,
    },

    /// Writing a limit (or enabling a controller) was refused.
    #[error("cannot write {value:?} to {file} ({controller:?}): {source}")]
    Write {
        controller: Controller,
        file: PathBuf,
        value: String,
        source: io::Error,
    },

    /// A limit file read back something other than what was written.
    #[error(
        "{file} ({controller:?}) reads back {read:?} after writing {wrote:?}: the limit is not in force"
    )]
    ReadBack {
        controller: Controller,
        file: PathBuf,
        wrote: String,
        read: String,
    },

    /// A swap limit was requested but the host cannot account swap while swap is active.
    #[error(
        "swap limit requested but {file} does not exist (no swap accounting) and the host has active swap: boot with swapaccount=1 / cgroup swap accounting, disable swap, or drop swap_bytes"
    )]
    SwapUnenforceable {
        controller: Controller,
        file: PathBuf,
    },

    /// cgroup v2's no-internal-processes rule blocks enabling controllers and there is no way around it.
    #[error(
        "cgroup v2: {cgroup} holds processes, so controllers cannot be enabled below it, and {reason}; run the supervisor in a leaf cgroup of a delegated subtree (systemd: Delegate=yes with DelegateSubgroup=, or move it into e.g. <cgroup>/supervisor at start)"
    )]
    NoInternalProcesses { cgroup: PathBuf, reason: String },

    /// Writing a pid into cgroup.procs failed.
    #[error("cannot move pid {pid} into {file} ({controller:?}): {source}")]
    AddPid {
        controller: Controller,
        file: PathBuf,
        pid: i32,
        source: io::Error,
    },
}
