//! cgroup v2: where the `stockade` parent goes (the no-internal-processes rule), enabling
//! controllers in `cgroup.subtree_control`, the plan, and the statistics.

use std::io;
use std::path::{Path, PathBuf};

use super::fsops::{CgroupFs, list_pids, read_keyed, read_trimmed, read_u64};
use super::plan::{CPU_PERIOD_US, Check, HostFacts, Plan, WriteOp, cpu_quota_us, swap_unaccounted};
use super::{CgroupError, Controller, Limits};

/// Where the `stockade` directory goes on the unified hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The directory that holds `stockade/`.
    pub(crate) base: PathBuf,
    /// Whether `base/cgroup.subtree_control` must get the controllers first.
    pub(crate) enable_in_base: bool,
    /// True when `base` is the parent of the caller's cgroup (the sibling fallback).
    pub(crate) sibling: bool,
}

fn words(file: &Path) -> Vec<String> {
    read_trimmed(file)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Decides where sandboxes go (see the module doc, "cgroup v2 placement"):
/// 1. the caller's own cgroup already delegates every needed controller to children → under it;
/// 2. it is the real root, or holds no processes → enable the controllers in it, then under it;
/// 3. it holds processes → beside it, in its parent (which already enables the controllers, since
///    they appear in the caller's `cgroup.controllers`);
/// 4. it holds processes and is the top of what this mount shows → error.
pub(crate) fn place(
    own: &Path,
    mount: &Path,
    needed: &[Controller],
) -> Result<Placement, CgroupError> {
    let available = words(&own.join("cgroup.controllers"));
    for c in needed {
        if !available.iter().any(|a| a == c.name()) {
            return Err(CgroupError::ControllerUnavailable {
                controller: *c,
                reason: format!(
                    "{} does not list {}: the parent cgroup does not delegate it (systemd: Delegate=yes)",
                    own.join("cgroup.controllers").display(),
                    c.name()
                ),
            });
        }
    }
    let subtree = words(&own.join("cgroup.subtree_control"));
    if needed.iter().all(|c| subtree.iter().any(|s| s == c.name())) {
        return Ok(Placement {
            base: own.to_path_buf(),
            enable_in_base: false,
            sibling: false,
        });
    }
    let is_root = !own.join("cgroup.type").exists();
    let procs = list_pids(&own.join("cgroup.procs")).map_err(|e| CgroupError::Read {
        file: own.join("cgroup.procs"),
        source: e,
    })?;
    if is_root || procs.is_empty() {
        return Ok(Placement {
            base: own.to_path_buf(),
            enable_in_base: true,
            sibling: false,
        });
    }
    match own.parent() {
        Some(parent) if own != mount && parent.starts_with(mount) => Ok(Placement {
            base: parent.to_path_buf(),
            enable_in_base: false,
            sibling: true,
        }),
        _ => Err(CgroupError::NoInternalProcesses {
            cgroup: own.to_path_buf(),
            reason: "it is the top of the visible hierarchy (cgroup namespace), so there is no parent to place sandboxes beside it".into(),
        }),
    }
}

/// Adds the missing `needed` controllers to `dir/cgroup.subtree_control` (one write, e.g.
/// `+memory +pids`) and checks they are listed afterwards.
pub(crate) fn enable(
    fs: &dyn CgroupFs,
    dir: &Path,
    needed: &[Controller],
) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let have = words(&file);
    let missing: Vec<Controller> = needed
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h == c.name()))
        .collect();
    let Some(&first) = missing.first() else {
        return Ok(());
    };
    let value = missing
        .iter()
        .map(|c| format!("+{}", c.name()))
        .collect::<Vec<_>>()
        .join(" ");
    if let Err(source) = fs.write(&file, &value) {
        if source.raw_os_error() == Some(libc::EBUSY) {
            return Err(CgroupError::NoInternalProcesses {
                cgroup: dir.to_path_buf(),
                reason: format!("writing {value:?} to {} returned EBUSY", file.display()),
            });
        }
        return Err(CgroupError::Write {
            controller: first,
            file,
            value,
            source,
        });
    }
    let now = words(&file);
    if let Some(c) = missing.iter().find(|c| !now.iter().any(|h| h == c.name())) {
        return Err(CgroupError::ReadBack {
            controller: *c,
            file,
            wrote: value,
            read: now.join(" "),
        });
    }
    Ok(())
}

/// Whether an io error from mkdir of the sibling `stockade` should be reported as the
/// no-internal-processes dead end.
pub(crate) fn sibling_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
    )
}

/// The writes for `c` on the unified hierarchy.
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
                    "memory.max",
                    m.to_string(),
                    Check::PageRounded,
                ));
            }
            if let Some(s) = limits.swap_bytes {
                if facts.has_file("memory.swap.max") {
                    p.writes.push(WriteOp::new(
                        c,
                        "memory.swap.max",
                        s.to_string(),
                        Check::PageRounded,
                    ));
                } else {
                    p.notes.push(swap_unaccounted("memory.swap.max", facts)?);
                }
            }
        }
        Controller::Cpu => {
            if let Some(cpus) = limits.cpus {
                let q = cpu_quota_us(cpus)?;
                p.writes.push(WriteOp::new(
                    c,
                    "cpu.max",
                    format!("{q} {CPU_PERIOD_US}"),
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

/// memory.peak (Linux 5.19+; None before).
pub(crate) fn memory_peak(dir: &Path) -> Option<u64> {
    read_u64(&dir.join("memory.peak"))
}

/// `oom_kill` in memory.events.
pub(crate) fn oom_kills(dir: &Path) -> u64 {
    read_keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0)
}

/// `usage_usec` in cpu.stat, in ns.
pub(crate) fn cpu_usage_ns(dir: &Path) -> Option<u64> {
    read_keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us.saturating_mul(1000))
}

/// `max` in pids.events.
pub(crate) fn pids_max_hits(dir: &Path) -> u64 {
    read_keyed(&dir.join("pids.events"), "max").unwrap_or(0)
}
