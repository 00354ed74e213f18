//! cgroups for sandboxes: one interface, with cgroup v1 and v2 behind it *per controller*.
//!
//! A host may be v2-only (unified at /sys/fs/cgroup), v1-only, or hybrid (controllers on v1
//! hierarchies, a cgroup2 mount holding the rest). [`Layout::discover`] reads /proc/self/mountinfo
//! and /proc/self/cgroup and records, for memory, cpu and pids, which version carries it and where
//! the caller's own cgroup is. A controller bound to a v1 hierarchy is used there; otherwise it is
//! used on cgroup2 if the cgroup2 root offers it. [`Cgroup::create`] then makes
//! `<caller's cgroup>/stockade/<name>` in each hierarchy a requested limit needs.
//!
//! # Guarantees
//! - **Fail closed.** Every requested limit is written and read back (byte limits may read back
//!   rounded down to a page). A missing controller, an unwritable directory, a missing control file,
//!   a refused write or a differing read-back is a [`CgroupError`] naming the controller, the file
//!   and what to do, and the sandbox directories created are removed (the shared `stockade`
//!   parents stay, see below).
//! - A swap limit is enforced (v1 `memory.memsw.limit_in_bytes` = memory+swap, v2
//!   `memory.swap.max`) or, where the kernel does not account swap, accepted only when /proc/swaps
//!   lists no active swap (then nothing can be swapped; this is recorded in [`Cgroup::notes`]).
//! - [`Cgroup::enforced`] lists exactly the controllers whose limits were applied, for the audit record.
//! - Names are one safe path component ([`validate_name`]).
//! - [`Cgroup::destroy`] kills every member (v2 `cgroup.kill`, then a SIGKILL loop over every
//!   `cgroup.procs` until empty or a 5 s deadline), removes the sandbox's directories and *checks*
//!   that they are gone; it reports leftovers instead of assuming success. Kills go through pidfds
//!   opened before a re-read of `cgroup.procs`, so a recycled pid outside the cgroup is never
//!   signalled.
//! - The `stockade` parents are shared by concurrent sandboxes and are never removed, by
//!   [`Cgroup::destroy`] or [`sweep_stale`]: an rmdir of an empty parent would race another
//!   sandbox's mkdir of its directory under it. They persist as empty cgroups, and
//!   [`Cgroup::create`] uses one that exists already.
//!
//! # cgroup v2 placement (the no-internal-processes rule)
//! Controllers can only be enabled in a non-root cgroup's `cgroup.subtree_control` while it holds
//! no processes. The `stockade` parent goes:
//! 1. under the caller's cgroup if that already delegates every needed controller to children;
//! 2. under the caller's cgroup, after enabling the controllers there, if it is the real root
//!    (no `cgroup.type`) or holds no processes;
//! 3. otherwise **beside** it, in its parent, which already enables the controllers (they are in
//!    the caller's `cgroup.controllers`). This is what running a supervisor in a systemd unit
//!    usually hits. Limitation: sandboxes then sit outside the supervisor's own cgroup, so that
//!    cgroup's limits (e.g. a unit's MemoryMax) do not cover them, and the parent belongs to
//!    whoever manages it (systemd does not clean it up; [`sweep_stale`] looks there too). The
//!    intended setup is a delegated unit whose supervisor lives in a leaf (`Delegate=yes`,
//!    `DelegateSubgroup=supervisor`): rule 3 then puts `stockade` next to `supervisor` *inside*
//!    the unit's delegated subtree, so the unit's limits do cover the sandboxes.
//! 4. If the caller's cgroup holds processes and is the top of the visible hierarchy (a cgroup
//!    namespace) or its parent is not writable, creation fails with
//!    [`CgroupError::NoInternalProcesses`] saying how to fix it. The caller's own processes are
//!    never moved: that would change the cgroup of a threaded supervisor behind its back.
//!
//! Controllers enabled in an existing cgroup's `subtree_control` are left enabled on destroy (other
//! sandboxes may rely on them).
//!
//! # Not guaranteed
//! - Limits bind the sandbox only once its processes are in the cgroup: the launcher must call
//!   [`Cgroup::add_pid`] (or write [`Cgroup::procs_files`]) before the child runs untrusted code.
//! - On v1 the kill loop races a process that forks faster than it is killed; the pids limit bounds
//!   this, and destroy reports leftovers after the deadline. No freezer is used.
//! - v1 memory charges made before joining stay with the old cgroup. Stats on a kernel missing a
//!   file (v2 `memory.peak` before 5.19, v1 `oom_kill` before 4.13) are None or approximated (v1:
//!   `memory.failcnt` > 0 counts as one OOM kill).
//! - [`sweep_stale`] cannot tell a dead supervisor's empty cgroup from a live one's not yet joined;
//!   it only spares cgroups younger than its `min_age` (by directory mtime), so `min_age` must
//!   exceed the time a supervisor takes from create to `add_pid`.
//!
//! # How it is tested
//! Unit tests run the whole create/stats/destroy path against a fake cgroupfs tree in a temp dir
//! (a test mkdir seam populates new directories with control files as the kernel would) for v1,
//! v2 and hybrid layouts, including fail-closed cases and mountinfo parsing. Host tests (root, this
//! crate's CI runs as root) create real cgroups on the machine's layout and prove each denial
//! (fork refused by pids.max, OOM kill under memory limit) against a control run without the limit,
//! that destroy kills members and removes the sandbox's directories while the `stockade` parents
//! stay, and that sweep_stale spares a cgroup younger than `min_age`. A host test that cannot run
//! fails with the reason.

mod discovery;
mod error;
mod fsops;
mod maintenance;
mod plan;
mod sandbox;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

pub use discovery::Layout;
pub use error::CgroupError;
pub use maintenance::{probe, sweep_stale};
pub use sandbox::{Cgroup, validate_name};

use std::path::PathBuf;

/// Name of the directory that holds every sandbox's cgroup.
pub(crate) const PARENT_DIR: &str = "stockade";

/// A resource controller Stockade limits.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    /// All controllers, in a fixed order.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// cgroup version carrying a controller.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Version {
    V1,
    V2,
}

/// Requested limits; None means "no limit" and does not need the controller.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Swap allowed in bytes on top of memory (v1 needs `memory_bytes` with it).
    pub swap_bytes: Option<u64>,
    /// CPUs worth of time per 100 ms period (0.5 = half a CPU); at least 0.01.
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

/// Usage figures for the audit record.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Peak memory in bytes (None without the memory controller or on kernels lacking the file).
    pub memory_peak: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
    /// Forks refused because of the pids limit.
    pub pids_max_hits: u64,
    /// CPU time used, in ns (v1: needs cpuacct).
    pub cpu_usage_ns: Option<u64>,
    /// Tasks currently in the cgroup.
    pub pids_current: Option<u64>,
    /// Memory in use now, in bytes.
    pub memory_current: Option<u64>,
}

/// What [`Cgroup::destroy`] could not do, one human-readable line each.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CleanupReport {
    pub leftovers: Vec<String>,
}

impl CleanupReport {
    /// True when every process was killed and every directory removed.
    pub fn is_clean(&self) -> bool {
        self.leftovers.is_empty()
    }
}

/// One controller as `doctor` sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerReport {
    pub controller: Controller,
    /// None when no hierarchy carries the controller.
    pub version: Option<Version>,
    /// The caller's cgroup for this controller.
    pub path: Option<PathBuf>,
    /// Whether a child cgroup could be created (and removed) where sandboxes would go.
    pub writable: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}
