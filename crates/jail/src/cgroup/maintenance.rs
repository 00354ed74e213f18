//! Housekeeping outside one sandbox's life: removing cgroups a dead supervisor left behind, and the
//! `doctor` probe of what this user may create.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
/// hierarchy and whose every directory was last modified at least `min_age` ago (a directory whose
/// age cannot be read counts as young). Returns the names removed. The age guard keeps a
/// concurrent supervisor's cgroup, created but not yet joined (and so empty), out of reach. The
/// `stockade` parents are never removed: a concurrent sandbox's mkdir under them would race.
pub fn sweep_stale(layout: &Layout, min_age: Duration) -> Vec<String> {
    // Per name: its directories, and whether all of them are old enough.
    let mut by_name: BTreeMap<String, (Vec<PathBuf>, bool)> = BTreeMap::new();
    for parent in &parent_dirs(layout) {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            // Unreadable metadata keeps the name (as young) rather than sweeping its other dirs.
            let meta = e.metadata().ok();
            if validate_name(&name).is_err() || meta.as_ref().is_some_and(|m| !m.is_dir()) {
                continue;
            }
            let old_enough = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            let entry = by_name.entry(name).or_insert((Vec::new(), true));
            entry.0.push(e.path());
            entry.1 &= old_enough;
        }
    }
    let mut removed = Vec::new();
    for (name, (dirs, old_enough)) in by_name {
        // Age first: a young (live) sandbox's cgroup.procs is not read at all, so the sweep
        // costs a stat per cgroup, not a read, on a host with many sandboxes alive.
        if !old_enough {
            continue;
        }
        let empty = dirs
            .iter()
            .all(|d| list_pids(&d.join("cgroup.procs")).is_ok_and(|p| p.is_empty()));
        if empty && dirs.iter().all(|d| layout.fs.rmdir(d).is_ok()) {
            removed.push(name);
        }
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
