//! The pure part: which control files get which values for a set of limits, and the one routine that
//! writes a plan and reads every value back.

use std::path::Path;

use super::fsops::{CgroupFs, read_trimmed};
use super::{CgroupError, Controller, Limits};

/// CFS period used for CPU limits, in microseconds (both versions).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// How a written value is checked when read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Must read back exactly.
    Exact,
    /// A byte count the kernel rounds down to a page multiple.
    PageRounded,
    /// Optional tuning: failure to write is ignored and nothing is read back.
    BestEffort,
}

/// One control-file write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WriteOp {
    pub(crate) controller: Controller,
    pub(crate) file: &'static str,
    pub(crate) value: String,
    pub(crate) check: Check,
}

impl WriteOp {
    pub(crate) fn new(c: Controller, file: &'static str, value: String, check: Check) -> Self {
        WriteOp {
            controller: c,
            file,
            value,
            check,
        }
    }
}

/// What the plan needs to know about the host besides the limits.
pub(crate) struct HostFacts<'a> {
    /// The new cgroup directory (optional files such as swap accounting are looked up there).
    pub(crate) dir: &'a Path,
    /// Whether /proc/swaps lists active swap.
    pub(crate) swap_active: bool,
}

impl HostFacts<'_> {
    pub(crate) fn has_file(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
}

/// A plan for one controller: the writes, plus notes for the audit record.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) writes: Vec<WriteOp>,
    pub(crate) notes: Vec<String>,
}

/// The controllers a set of limits needs, in a fixed order.
pub(crate) fn needed(limits: &Limits) -> Vec<Controller> {
    let mut v = Vec::new();
    if limits.memory_bytes.is_some() || limits.swap_bytes.is_some() {
        v.push(Controller::Memory);
    }
    if limits.cpus.is_some() {
        v.push(Controller::Cpu);
    }
    if limits.pids.is_some() {
        v.push(Controller::Pids);
    }
    v
}

/// CFS quota in microseconds per [`CPU_PERIOD_US`] for a CPU count; rejects what the kernel would.
pub(crate) fn cpu_quota_us(cpus: f64) -> Result<u64, CgroupError> {
    let q = cpus * CPU_PERIOD_US as f64;
    if !q.is_finite() || !(1000.0..=1e15).contains(&q) {
        return Err(CgroupError::InvalidCpus { cpus });
    }
    Ok(q.round() as u64)
}

/// Decides what a missing swap-accounting file means: fine (with a note) when the host has no active
/// swap, since nothing can be swapped; otherwise the swap limit cannot be enforced.
pub(crate) fn swap_unaccounted(
    file: &'static str,
    facts: &HostFacts<'_>,
) -> Result<String, CgroupError> {
    if facts.swap_active {
        return Err(CgroupError::SwapUnenforceable {
            controller: Controller::Memory,
            file: facts.dir.join(file),
        });
    }
    Ok(format!(
        "swap: {file} absent (no swap accounting) but the host has no active swap, so the sandbox cannot swap"
    ))
}

/// Writes each op into `dir` and reads it back. Stops at the first failure.
pub(crate) fn apply(fs: &dyn CgroupFs, dir: &Path, ops: &[WriteOp]) -> Result<(), CgroupError> {
    let page = rustix::param::page_size() as u64;
    for op in ops {
        let file = dir.join(op.file);
        if let Err(source) = fs.write(&file, &op.value) {
            if op.check == Check::BestEffort {
                continue;
            }
            return Err(CgroupError::Write {
                controller: op.controller,
                file,
                value: op.value.clone(),
                source,
            });
        }
        let read = match read_trimmed(&file) {
            Ok(r) => r,
            Err(_) if op.check == Check::BestEffort => continue,
            Err(e) => format!("<unreadable: {e}>"),
        };
        let ok = match op.check {
            Check::Exact => read == op.value,
            Check::PageRounded => match (read.parse::<u64>(), op.value.parse::<u64>()) {
                (Ok(r), Ok(w)) => r <= w && w - r < page,
                _ => false,
            },
            Check::BestEffort => true,
        };
        if !ok {
            return Err(CgroupError::ReadBack {
                controller: op.controller,
                file,
                wrote: op.value.clone(),
                read,
            });
        }
    }
    Ok(())
}
