//! Housekeeping outside one sandbox's life: removing cgroups a dead supervisor left behind, and the
//! `doctor` probe of what this user may create.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::discovery::Layout;
use super::fsops::list_pids;
use super::sandbox::validate_name;
use super::{Controller, ControllerReport, PARENT_DIR, Version, v2};

/// Every `stockade` parent directory this layout may have used (v1 per hierarchy; v2 under the
/// caller's cgroup and the sibling fallback beside it).
fn parent_dirs(layout: &Layout) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = layout
        .placed
        .values()
        .chain(layout.cpuacct.as_ref())
        .map(|p| p.own.join(PARENT_DIR))
        .collect();
    if let Some(v2) = &layout.v2 {
        v.push(v2.own.join(PARENT_DIR));
        if let Some(parent) = v2
            .own
            .parent()
            .filter(|p| v2.own != v2.mount && p.starts_with(&v2.mount))
        {
            v.push(parent.join(PARENT_DIR));
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Removes `stockade/<name>` cgroups left by a supervisor that died: those with no process in any
/// hierarchy. Returns the names removed. Run it at supervisor start, before creating sandboxes: a
/// concurrent supervisor's cgroup that is created but not yet joined looks stale too (its
/// `add_pid` then fails, closed).
pub fn sweep_stale(layout: &Layout) -> Vec<String> {
    let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let parents = parent_dirs(layout);
    for parent in &parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if validate_name(&name).is_ok() && e.path().is_dir() {
                by_name.entry(name).or_default().push(e.path());
            }
        }
    }
    let mut removed = Vec::new();
    for (name, dirs) in by_name {
        let empty = dirs
            .iter()
            .all(|d| list_pids(&d.join("cgroup.procs")).is_ok_and(|p| p.is_empty()));
        if empty && dirs.iter().all(|d| layout.fs.rmdir(d).is_ok()) {
            removed.push(name);
        }
    }
    for parent in &parents {
        // Busy (other sandboxes) or already gone are both fine here.
        let _ = layout.fs.rmdir(parent);
    }
    removed
}

/// mkdir + rmdir of a probe directory in `base`.
fn try_mkdir(layout: &Layout, base: &Path) -> Result<(), String> {
    let probe = base.join(format!("stockade-probe-{}", std::process::id()));
    layout
        .fs
        .mkdir(&probe)
        .map_err(|e| format!("mkdir {}: {e}", probe.display()))?;
    layout
        .fs
        .rmdir(&probe)
        .map_err(|e| format!("rmdir {}: {e}", probe.display()))
}

/// For `doctor`: per controller, where it is, which version, and whether this user may create a
/// child cgroup there (tried: mkdir + rmdir of a probe directory). For v2 the placement decision
/// of `Cgroup::create` is made too, without enabling anything.
pub fn probe(layout: &Layout) -> Vec<ControllerReport> {
    Controller::ALL
        .iter()
        .map(|&c| {
            let Some(placed) = layout.placed.get(&c) else {
                return ControllerReport {
                    controller: c,
                    version: None,
                    path: None,
                    writable: false,
                    reason: Some(format!(
                        "not on any mounted hierarchy ({})",
                        layout.summary()
                    )),
                };
            };
            let base = match placed.version {
                Version::V1 => Ok(placed.own.clone()),
                Version::V2 => v2::place(&placed.own, &placed.mount, &[c])
                    .map(|p| p.base)
                    .map_err(|e| e.to_string()),
            };
            let result = base.and_then(|b| try_mkdir(layout, &b));
            ControllerReport {
                controller: c,
                version: Some(placed.version),
                path: Some(placed.own.clone()),
                writable: result.is_ok(),
                reason: result.err(),
            }
        })
        .collect()
}
