//! cgroup v1: one directory per hierarchy; the plan for memory, cpu and pids, and where the
//! statistics are read.

use std::path::Path;

use super::fsops::{read_keyed, read_u64};
use super::plan::{CPU_PERIOD_US, Check, HostFacts, Plan, WriteOp, cpu_quota_us, swap_unaccounted};
use super::{CgroupError, Controller, Limits};

pub(crate) const MEMSW: &str = "memory.memsw.limit_in_bytes";

/// The writes for `c` on a v1 hierarchy.
pub(crate) fn plan(
    c: Controller,
    limits: &Limits,
    facts: &HostFacts<'_>,
) -> Result<Plan, CgroupError> {
    let mut p = Plan::default();
    match c {
        Controller::Memory => {
            if let Some(m) = limits.memory_bytes {
                p.writes.push(WriteOp::new(
                    c,
                    "memory.limit_in_bytes",
                    m.to_string(),
                    Check::PageRounded,
                ));
            }
            if let Some(s) = limits.swap_bytes {
                let m = limits
                    .memory_bytes
                    .ok_or(CgroupError::SwapNeedsMemoryLimit)?;
                if facts.has_file(MEMSW) {
                    let total = m.saturating_add(s);
                    p.writes.push(WriteOp::new(
                        c,
                        MEMSW,
                        total.to_string(),
                        Check::PageRounded,
                    ));
                } else {
                    p.notes.push(swap_unaccounted(MEMSW, facts)?);
                }
                if s == 0 {
                    p.writes.push(WriteOp::new(
                        c,
                        "memory.swappiness",
                        "0".into(),
                        Check::BestEffort,
                    ));
                }
            }
        }
        Controller::Cpu => {
            if let Some(cpus) = limits.cpus {
                let q = cpu_quota_us(cpus)?;
                p.writes.push(WriteOp::new(
                    c,
                    "cpu.cfs_period_us",
                    CPU_PERIOD_US.to_string(),
                    Check::Exact,
                ));
                p.writes.push(WriteOp::new(
                    c,
                    "cpu.cfs_quota_us",
                    q.to_string(),
                    Check::Exact,
                ));
            }
        }
        Controller::Pids => {
            if let Some(n) = limits.pids {
                p.writes
                    .push(WriteOp::new(c, "pids.max", n.to_string(), Check::Exact));
            }
        }
    }
    Ok(p)
}

/// Peak memory (memory.max_usage_in_bytes).
pub(crate) fn memory_peak(dir: &Path) -> Option<u64> {
    read_u64(&dir.join("memory.max_usage_in_bytes"))
}

/// OOM kills: the `oom_kill` line of memory.oom_control; kernels before 4.13 lack it, and then a
/// non-zero memory.failcnt counts as one (the limit was hit; a kill is likely but not certain).
pub(crate) fn oom_kills(dir: &Path) -> u64 {
    if let Some(n) = read_keyed(&dir.join("memory.oom_control"), "oom_kill") {
        return n;
    }
    match read_u64(&dir.join("memory.failcnt")) {
        Some(n) if n > 0 => 1,
        _ => 0,
    }
}

/// CPU time in ns from cpuacct.usage (needs the cpuacct hierarchy).
pub(crate) fn cpu_usage_ns(cpuacct_dir: &Path) -> Option<u64> {
    read_u64(&cpuacct_dir.join("cpuacct.usage"))
}

/// Forks refused by pids.max (`max` in pids.events).
pub(crate) fn pids_max_hits(dir: &Path) -> u64 {
    read_keyed(&dir.join("pids.events"), "max").unwrap_or(0)
}
