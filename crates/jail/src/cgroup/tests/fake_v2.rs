//! cgroup v2 against a fake unified tree: placement under the no-internal-processes rule, the
//! files written, stats, destroy, and a hybrid with controllers split across versions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::discovery::V2_MOUNTINFO;
use super::fake::{FakeFs, NO_SWAP, SOME_SWAP, put, read, v1_memory_files, v2_files};
use crate::cgroup::{Cgroup, CgroupError, Controller, Layout, Limits, Version, probe};

const MIB: u64 = 1 << 20;
const OWN: &str = "system.slice/stockade.service";

struct Tree {
    _t: tempfile::TempDir,
    cg: PathBuf,
    layout: Layout,
    fs: Arc<FakeFs>,
}

/// Which cgroup the caller sits in, and its state.
struct Own {
    /// Path from the mount, "" for the root.
    rel: &'static str,
    controllers: &'static str,
    subtree: &'static str,
    procs: &'static str,
    /// cgroup.type present: not the real root (matters when `rel` is "").
    typed: bool,
}

const SERVICE_WITH_PROCS: Own = Own {
    rel: OWN,
    controllers: "cpu memory pids",
    subtree: "",
    procs: "812\n",
    typed: true,
};

fn build(own: Own, swap_max: bool, swaps: &str, fail: Option<(&'static str, i32)>) -> Tree {
    let t = tempfile::tempdir().unwrap();
    let cg = t.path().join("sys/fs/cgroup");
    put(&cg, "cgroup.controllers", "cpuset cpu io memory pids\n");
    put(&cg, "cgroup.subtree_control", "cpu memory pids\n");
    put(&cg, "cgroup.procs", "1\n");
    put(&cg, "system.slice/cgroup.controllers", "cpu memory pids\n");
    put(
        &cg,
        "system.slice/cgroup.subtree_control",
        "cpu memory pids\n",
    );
    put(&cg, "system.slice/cgroup.procs", "");
    put(&cg, "system.slice/cgroup.type", "domain\n");
    let dir = cg.join(own.rel);
    put(&dir, "cgroup.controllers", own.controllers);
    put(&dir, "cgroup.subtree_control", own.subtree);
    put(&dir, "cgroup.procs", own.procs);
    if own.typed {
        put(&dir, "cgroup.type", "domain\n");
    } else {
        let _ = std::fs::remove_file(dir.join("cgroup.type"));
    }
    put(t.path(), "proc/swaps", swaps);
    let fs = FakeFs::with(Box::new(move |d: &Path| v2_files(d, swap_max)), None, fail);
    let layout = Layout::from_sources(V2_MOUNTINFO, &format!("0::/{}\n", own.rel), t.path())
        .unwrap()
        .with_fs(fs.clone());
    Tree {
        _t: t,
        cg,
        layout,
        fs,
    }
}

fn all_limits() -> Limits {
    Limits {
        memory_bytes: Some(64 * MIB),
        swap_bytes: Some(0),
        cpus: Some(0.5),
        pids: Some(16),
    }
}

/// Every directory called `stockade` under `root`, each checked to hold no sandbox directory
/// (the parents persist once created; the leaves must be gone).
fn empty_parents(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            if e.file_name() == "stockade" {
                let leaves: Vec<_> = std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .filter(|l| l.file_type().unwrap().is_dir())
                    .map(|l| l.file_name())
                    .collect();
                assert!(
                    leaves.is_empty(),
                    "{} still holds {leaves:?}",
                    e.path().display()
                );
                found.push(e.path());
            } else {
                found.extend(empty_parents(&e.path()));
            }
        }
    }
    found.sort();
    found
}

const NONE: Vec<PathBuf> = Vec::new();

#[test]
fn at_the_root_controllers_are_enabled_and_limits_written() {
    let t = build(
        Own {
            rel: "",
            controllers: "cpuset cpu io memory pids",
            subtree: "",
            procs: "1\n",
            typed: false,
        },
        true,
        NO_SWAP,
        None,
    );
    put(&t.cg, "cgroup.subtree_control", "");
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    let leaf = t.cg.join("stockade/sb");
    assert_eq!(c.paths(), vec![leaf.clone()]);
    assert_eq!(
        read(&t.cg.join("cgroup.subtree_control")),
        "cpu memory pids"
    );
    assert_eq!(
        read(&t.cg.join("stockade/cgroup.subtree_control")),
        "cpu memory pids"
    );
    assert_eq!(read(&leaf.join("memory.max")), "67108864");
    assert_eq!(read(&leaf.join("memory.swap.max")), "0");
    assert_eq!(read(&leaf.join("cpu.max")), "50000 100000");
    assert_eq!(read(&leaf.join("pids.max")), "16");
    assert_eq!(
        c.enforced(),
        vec![
            (Controller::Memory, Version::V2),
            (Controller::Cpu, Version::V2),
            (Controller::Pids, Version::V2)
        ]
    );
    assert_eq!(c.procs_files(), vec![leaf.join("cgroup.procs")]);
    let r = c.destroy();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(
        t.fs.writes_to("cgroup.kill"),
        vec![(leaf.join("cgroup.kill"), "1".to_string())]
    );
    assert!(!leaf.exists());
    assert_eq!(empty_parents(&t.cg), vec![t.cg.join("stockade")]);
}

#[test]
fn busy_service_cgroup_places_sandboxes_beside_it() {
    let t = build(SERVICE_WITH_PROCS, true, NO_SWAP, None);
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    assert_eq!(c.paths(), vec![t.cg.join("system.slice/stockade/sb")]);
    assert_eq!(
        read(&t.cg.join(OWN).join("cgroup.subtree_control")),
        "",
        "own cgroup untouched"
    );
    assert!(
        c.notes().iter().any(|n| n.contains("beside")),
        "{:?}",
        c.notes()
    );
    assert!(c.destroy().is_clean());
    assert_eq!(
        empty_parents(&t.cg),
        vec![t.cg.join("system.slice/stockade")]
    );
}

#[test]
fn empty_own_cgroup_gets_controllers_enabled() {
    let t = build(
        Own {
            procs: "",
            ..SERVICE_WITH_PROCS
        },
        true,
        NO_SWAP,
        None,
    );
    let c = Cgroup::create(
        &t.layout,
        "sb",
        &Limits {
            pids: Some(4),
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(c.paths(), vec![t.cg.join(OWN).join("stockade/sb")]);
    assert_eq!(read(&t.cg.join(OWN).join("cgroup.subtree_control")), "pids");
    assert!(c.destroy().is_clean());
}

#[test]
fn delegating_own_cgroup_is_used_without_writing_to_it() {
    let t = build(
        Own {
            subtree: "cpu memory pids",
            ..SERVICE_WITH_PROCS
        },
        true,
        NO_SWAP,
        None,
    );
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    assert_eq!(c.paths(), vec![t.cg.join(OWN).join("stockade/sb")]);
    let own_sc = t.cg.join(OWN).join("cgroup.subtree_control");
    assert!(
        t.fs.writes_to("cgroup.subtree_control")
            .iter()
            .all(|(f, _)| f != &own_sc)
    );
    assert!(c.destroy().is_clean());
}

#[test]
fn busy_namespace_root_is_a_clear_error() {
    let t = build(
        Own {
            rel: "",
            controllers: "cpu memory pids",
            subtree: "",
            procs: "1\n",
            typed: true,
        },
        true,
        NO_SWAP,
        None,
    );
    put(&t.cg, "cgroup.subtree_control", "");
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(
        matches!(e, CgroupError::NoInternalProcesses { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("leaf cgroup"), "{e}");
    assert_eq!(empty_parents(&t.cg), NONE);
    let r = probe(&t.layout);
    assert!(
        r.iter().all(|c| !c.writable
            && c.reason
                .as_deref()
                .is_some_and(|m| m.contains("holds processes"))),
        "{r:?}"
    );
}

#[test]
fn ebusy_on_subtree_control_is_reported_as_internal_processes() {
    let t = build(
        Own {
            procs: "",
            ..SERVICE_WITH_PROCS
        },
        true,
        NO_SWAP,
        Some(("cgroup.subtree_control", libc::EBUSY)),
    );
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(
        matches!(e, CgroupError::NoInternalProcesses { .. }),
        "{e:?}"
    );
    assert_eq!(empty_parents(&t.cg), NONE);
}

#[test]
fn undelegated_controller_fails_closed() {
    let t = build(
        Own {
            controllers: "cpu memory",
            ..SERVICE_WITH_PROCS
        },
        true,
        NO_SWAP,
        None,
    );
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::ControllerUnavailable {
                controller: Controller::Pids,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("Delegate=yes"), "{e}");
    assert_eq!(empty_parents(&t.cg), NONE);
}

#[test]
fn refused_limit_write_fails_closed() {
    let t = build(
        SERVICE_WITH_PROCS,
        true,
        NO_SWAP,
        Some(("cpu.max", libc::EINVAL)),
    );
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(
        matches!(&e, CgroupError::Write { controller: Controller::Cpu, value, .. } if value == "50000 100000"),
        "{e:?}"
    );
    assert_eq!(
        empty_parents(&t.cg),
        vec![t.cg.join("system.slice/stockade")]
    );
}

#[test]
fn swap_without_swap_max_depends_on_active_swap() {
    let lim = Limits {
        memory_bytes: Some(64 * MIB),
        swap_bytes: Some(0),
        ..Limits::default()
    };
    let t = build(SERVICE_WITH_PROCS, false, NO_SWAP, None);
    let c = Cgroup::create(&t.layout, "sb", &lim).unwrap();
    assert!(
        c.notes()
            .iter()
            .any(|n| n.contains("memory.swap.max absent")),
        "{:?}",
        c.notes()
    );
    assert!(c.destroy().is_clean());
    let t = build(SERVICE_WITH_PROCS, false, SOME_SWAP, None);
    let e = Cgroup::create(&t.layout, "sb", &lim).unwrap_err();
    assert!(matches!(e, CgroupError::SwapUnenforceable { .. }), "{e:?}");
    assert_eq!(
        empty_parents(&t.cg),
        vec![t.cg.join("system.slice/stockade")]
    );
    // v2 can limit swap alone.
    let t = build(SERVICE_WITH_PROCS, true, SOME_SWAP, None);
    let c = Cgroup::create(
        &t.layout,
        "sb",
        &Limits {
            swap_bytes: Some(MIB),
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(read(&c.paths()[0].join("memory.swap.max")), MIB.to_string());
    assert!(c.destroy().is_clean());
}

#[test]
fn stats_read_the_v2_files() {
    let t = build(SERVICE_WITH_PROCS, true, NO_SWAP, None);
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    let leaf = &c.paths()[0];
    put(leaf, "memory.peak", "7000000\n");
    put(
        leaf,
        "memory.events",
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
    );
    put(
        leaf,
        "cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    );
    put(leaf, "pids.events", "max 3\n");
    put(leaf, "pids.current", "2\n");
    let s = c.stats();
    assert_eq!(s.memory_peak, Some(7_000_000));
    assert_eq!(s.oom_kills, 2);
    assert_eq!(s.cpu_usage_ns, Some(1_500_000));
    assert_eq!(s.pids_max_hits, 3);
    assert_eq!(s.pids_current, Some(2));
    // Kernels before 5.19 have no memory.peak.
    std::fs::remove_file(leaf.join("memory.peak")).unwrap();
    assert_eq!(c.stats().memory_peak, None);
    assert!(c.destroy().is_clean());
}

#[test]
fn hybrid_splits_controllers_across_versions() {
    let t = tempfile::tempdir().unwrap();
    let mi = "\
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    let cg = t.path().join("sys/fs/cgroup");
    put(&cg, "memory/cgroup.procs", "1\n");
    put(&cg, "unified/cgroup.controllers", "pids\n");
    put(&cg, "unified/cgroup.subtree_control", "");
    put(&cg, "unified/cgroup.procs", "1\n");
    put(t.path(), "proc/swaps", NO_SWAP);
    let mem_root = cg.join("memory");
    let fs = FakeFs::new(Box::new(move |d: &Path| {
        if d.starts_with(&mem_root) {
            v1_memory_files(true)
        } else {
            v2_files(d, true)
        }
    }));
    let layout = Layout::from_sources(mi, "4:memory:/\n0::/\n", t.path())
        .unwrap()
        .with_fs(fs);
    assert_eq!(
        layout.summary(),
        "hybrid: memory=v1 cpu=none pids=v2 (cgroup2 has: pids)"
    );
    let lim = Limits {
        memory_bytes: Some(64 * MIB),
        pids: Some(16),
        ..Limits::default()
    };
    let c = Cgroup::create(&layout, "sb", &lim).unwrap();
    assert_eq!(
        c.enforced(),
        vec![
            (Controller::Memory, Version::V1),
            (Controller::Pids, Version::V2)
        ]
    );
    assert_eq!(
        c.paths(),
        vec![
            cg.join("memory/stockade/sb"),
            cg.join("unified/stockade/sb")
        ]
    );
    assert_eq!(read(&cg.join("unified/stockade/sb/pids.max")), "16");
    assert_eq!(
        read(&cg.join("memory/stockade/sb/memory.limit_in_bytes")),
        "67108864"
    );
    // No cpu anywhere: asking for it fails closed.
    let e = Cgroup::create(
        &layout,
        "sb2",
        &Limits {
            cpus: Some(1.0),
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::ControllerUnavailable {
                controller: Controller::Cpu,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(c.destroy().is_clean());
    assert_eq!(
        empty_parents(&cg),
        vec![cg.join("memory/stockade"), cg.join("unified/stockade")]
    );
}

#[test]
fn create_uses_a_parent_that_exists_already() {
    let t = build(SERVICE_WITH_PROCS, true, NO_SWAP, None);
    let parent = t.cg.join("system.slice/stockade");
    let pids_only = Limits {
        pids: Some(4),
        ..Limits::default()
    };
    let a = Cgroup::create(&t.layout, "a", &pids_only).unwrap();
    assert_eq!(read(&parent.join("cgroup.subtree_control")), "pids");
    // The parent exists (EEXIST on mkdir) and lacks memory and cpu: they are enabled in it while
    // the other sandbox lives there.
    let b = Cgroup::create(&t.layout, "b", &all_limits()).unwrap();
    assert_eq!(
        read(&parent.join("cgroup.subtree_control")),
        "cpu memory pids"
    );
    assert_eq!(read(&parent.join("b/memory.max")), "67108864");
    assert_eq!(read(&parent.join("b/cpu.max")), "50000 100000");
    assert_eq!(b.enforced().len(), 3);
    assert!(a.destroy().is_clean() && b.destroy().is_clean());
    assert_eq!(empty_parents(&t.cg), vec![parent.clone()]);
    // After both are gone the empty parent is reused, and the names are free again.
    let a = Cgroup::create(&t.layout, "a", &all_limits()).unwrap();
    assert_eq!(a.paths(), vec![parent.join("a")]);
    assert_eq!(read(&parent.join("a/pids.max")), "16");
    assert!(a.destroy().is_clean());
    assert_eq!(empty_parents(&t.cg), vec![parent]);
}
