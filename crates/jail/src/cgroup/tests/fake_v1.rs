//! cgroup v1 against a fake cgroupfs tree (the hybrid layout of the CI host, cpu,cpuacct co-mounted).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::discovery::hybrid;
use super::fake::{
    FakeFs, NO_SWAP, SOME_SWAP, Template, put, read, v1_cpu_files, v1_memory_files, v1_pids_files,
};
use crate::cgroup::{
    Cgroup, CgroupError, Controller, Layout, Limits, Version, probe, sweep_stale, validate_name,
};

const MIB: u64 = 1 << 20;

struct Tree {
    _t: tempfile::TempDir,
    cg: PathBuf,
    layout: Layout,
    fs: Arc<FakeFs>,
}

/// Template for the hybrid tree; `drop` removes one file from new directories.
fn template(cg: &Path, memsw: bool, drop: Option<&'static str>) -> Box<Template> {
    let cg = cg.to_path_buf();
    Box::new(move |dir: &Path| {
        let mut files = if dir.starts_with(cg.join("memory")) {
            v1_memory_files(memsw)
        } else if dir.starts_with(cg.join("cpu,cpuacct")) {
            v1_cpu_files()
        } else {
            v1_pids_files()
        };
        files.retain(|(n, _)| Some(*n) != drop);
        files
    })
}

fn tree_with(
    memsw: bool,
    swaps: &str,
    drop: Option<&'static str>,
    ignore: Option<&'static str>,
) -> Tree {
    let t = tempfile::tempdir().unwrap();
    let cg = t.path().join("sys/fs/cgroup");
    for d in ["memory/process_api/e442", "cpu,cpuacct", "pids"] {
        std::fs::create_dir_all(cg.join(d)).unwrap();
    }
    put(t.path(), "proc/swaps", swaps);
    let fs = match ignore {
        Some(f) => FakeFs::ignoring(template(&cg, memsw, drop), f),
        None => FakeFs::new(template(&cg, memsw, drop)),
    };
    let layout = hybrid(t.path()).with_fs(fs.clone());
    Tree {
        _t: t,
        cg,
        layout,
        fs,
    }
}

fn tree() -> Tree {
    tree_with(true, NO_SWAP, None, None)
}

fn all_limits() -> Limits {
    Limits {
        memory_bytes: Some(64 * MIB),
        swap_bytes: Some(0),
        cpus: Some(0.5),
        pids: Some(16),
    }
}

const HIERARCHIES: [&str; 3] = ["memory/process_api/e442", "cpu,cpuacct", "pids"];

/// The `stockade` parent exists in exactly the hierarchies `kept` (parents persist once created)
/// and holds no sandbox directory there.
fn assert_only_empty_parents(cg: &Path, kept: &[&str]) {
    for h in HIERARCHIES {
        let p = cg.join(h).join("stockade");
        if kept.contains(&h) {
            assert!(
                p.is_dir(),
                "{} removed: the shared parent must stay",
                p.display()
            );
            let leaves: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .map(|e| e.file_name())
                .collect();
            assert!(leaves.is_empty(), "{} still holds {leaves:?}", p.display());
        } else {
            assert!(!p.exists(), "{} created", p.display());
        }
    }
}

/// No `stockade` directory was ever created: the call failed before any mkdir.
fn assert_no_stockade_dirs(cg: &Path) {
    assert_only_empty_parents(cg, &[]);
}

/// Sets the mtime of each directory `ago` into the past (an old leaf, for sweep_stale).
fn backdate(dirs: &[PathBuf], ago: Duration) {
    for d in dirs {
        let f = std::fs::File::open(d).unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }
}

#[test]
fn create_writes_each_limit_to_the_right_file() {
    let t = tree();
    let c = Cgroup::create(&t.layout, "sb1", &all_limits()).unwrap();
    let mem = t.cg.join("memory/process_api/e442/stockade/sb1");
    let cpu = t.cg.join("cpu,cpuacct/stockade/sb1");
    let pids = t.cg.join("pids/stockade/sb1");
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(read(&mem.join("memory.swappiness")), "0");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&pids.join("pids.max")), "16");
    assert_eq!(
        c.enforced(),
        vec![
            (Controller::Memory, Version::V1),
            (Controller::Cpu, Version::V1),
            (Controller::Pids, Version::V1)
        ]
    );
    // cpu and cpuacct are co-mounted: one directory, three in all.
    assert_eq!(c.paths(), vec![mem.clone(), cpu.clone(), pids.clone()]);
    assert_eq!(
        c.procs_files(),
        vec![
            mem.join("cgroup.procs"),
            cpu.join("cgroup.procs"),
            pids.join("cgroup.procs")
        ]
    );
    assert!(c.notes().is_empty(), "{:?}", c.notes());
    let r = c.destroy();
    assert!(r.is_clean(), "{r:?}");
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn swap_allowance_adds_to_memory_and_keeps_swappiness() {
    let t = tree();
    let l = Limits {
        memory_bytes: Some(64 * MIB),
        swap_bytes: Some(32 * MIB),
        ..Limits::default()
    };
    let c = Cgroup::create(&t.layout, "sb", &l).unwrap();
    let mem = t.cg.join("memory/process_api/e442/stockade/sb");
    assert_eq!(
        read(&mem.join("memory.memsw.limit_in_bytes")),
        (96 * MIB).to_string()
    );
    assert_eq!(read(&mem.join("memory.swappiness")), "60");
    assert_eq!(c.enforced(), vec![(Controller::Memory, Version::V1)]);
    assert!(
        !t.cg.join("pids/stockade").exists(),
        "pids not requested, not created"
    );
    assert!(c.destroy().is_clean());
}

#[test]
fn add_pid_writes_every_hierarchy() {
    let t = tree();
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    c.add_pid(4242).unwrap();
    let joined = t.fs.writes_to("cgroup.procs");
    let files: Vec<PathBuf> = joined.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(files, c.procs_files());
    assert!(joined.iter().all(|(_, v)| v == "4242"));
    assert!(c.destroy().is_clean());
}

#[test]
fn stats_read_the_v1_files() {
    let t = tree();
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    let mem = t.cg.join("memory/process_api/e442/stockade/sb");
    put(&mem, "memory.max_usage_in_bytes", "5000000\n");
    put(
        &mem,
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    put(
        &t.cg.join("cpu,cpuacct/stockade/sb"),
        "cpuacct.usage",
        "123456789\n",
    );
    let pids = t.cg.join("pids/stockade/sb");
    put(&pids, "pids.events", "max 7\n");
    put(&pids, "pids.current", "3\n");
    let s = c.stats();
    assert_eq!(s.memory_peak, Some(5_000_000));
    assert_eq!(s.oom_kills, 2);
    assert_eq!(s.cpu_usage_ns, Some(123_456_789));
    assert_eq!(s.pids_max_hits, 7);
    assert_eq!(s.pids_current, Some(3));
    // Old kernels: no oom_kill line; a non-zero failcnt counts as a hit.
    put(
        &mem,
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\n",
    );
    put(&mem, "memory.failcnt", "12\n");
    assert_eq!(c.stats().oom_kills, 1);
    put(&mem, "memory.failcnt", "0\n");
    assert_eq!(c.stats().oom_kills, 0);
    assert!(c.destroy().is_clean());
}

#[test]
fn missing_limit_file_fails_closed_and_removes_everything() {
    let t = tree_with(true, NO_SWAP, Some("pids.max"), None);
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    match &e {
        CgroupError::Write {
            controller: Controller::Pids,
            file,
            ..
        } => {
            assert!(
                file.ends_with("pids/stockade/sb/pids.max"),
                "{}",
                file.display()
            );
        }
        other => panic!("expected a pids write error, got {other:?}"),
    }
    assert!(e.to_string().contains("pids.max"), "{e}");
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn value_the_kernel_ignores_fails_read_back() {
    let t = tree_with(true, NO_SWAP, None, Some("cpu.cfs_quota_us"));
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(
        matches!(&e, CgroupError::ReadBack { controller: Controller::Cpu, wrote, read, .. } if wrote == "50000" && read == "-1"),
        "{e:?}"
    );
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn missing_controller_fails_closed() {
    let t = tempfile::tempdir().unwrap();
    let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let cg = t.path().join("sys/fs/cgroup");
    std::fs::create_dir_all(cg.join("memory")).unwrap();
    let layout = Layout::from_sources(mi, "4:memory:/\n", t.path())
        .unwrap()
        .with_fs(FakeFs::new(template(&cg, true, None)));
    let l = Limits {
        memory_bytes: Some(MIB),
        pids: Some(4),
        ..Limits::default()
    };
    let e = Cgroup::create(&layout, "sb", &l).unwrap_err();
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
    assert!(
        !cg.join("memory/stockade/sb").exists(),
        "memory dir created before the failure is removed"
    );
    assert!(cg.join("memory/stockade").is_dir(), "the parent stays");
}

#[test]
fn swap_without_accounting_depends_on_active_swap() {
    let no_swap = Limits {
        memory_bytes: Some(64 * MIB),
        swap_bytes: Some(0),
        ..Limits::default()
    };
    // No memsw file, no active swap: nothing can be swapped; recorded.
    let t = tree_with(false, NO_SWAP, None, None);
    let c = Cgroup::create(&t.layout, "sb", &no_swap).unwrap();
    assert!(
        c.notes().iter().any(|n| n.contains("no active swap")),
        "{:?}",
        c.notes()
    );
    assert!(c.destroy().is_clean());
    // No memsw file, swap active: fail closed.
    let t = tree_with(false, SOME_SWAP, None, None);
    let e = Cgroup::create(&t.layout, "sb", &no_swap).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::SwapUnenforceable {
                controller: Controller::Memory,
                ..
            }
        ),
        "{e:?}"
    );
    assert_only_empty_parents(&t.cg, &["memory/process_api/e442"]);
    // With swap accounting, active swap is fine.
    let t = tree_with(true, SOME_SWAP, None, None);
    assert!(
        Cgroup::create(&t.layout, "sb", &no_swap)
            .unwrap()
            .destroy()
            .is_clean()
    );
}

#[test]
fn swap_limit_alone_is_rejected_on_v1() {
    let t = tree();
    let e = Cgroup::create(
        &t.layout,
        "sb",
        &Limits {
            swap_bytes: Some(0),
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, CgroupError::SwapNeedsMemoryLimit), "{e:?}");
    assert_no_stockade_dirs(&t.cg);
}

#[test]
fn bad_cpu_counts_are_rejected_before_any_mkdir() {
    let t = tree();
    for cpus in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY] {
        let e = Cgroup::create(
            &t.layout,
            "sb",
            &Limits {
                cpus: Some(cpus),
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, CgroupError::InvalidCpus { .. }),
            "{cpus}: {e:?}"
        );
    }
    assert_no_stockade_dirs(&t.cg);
}

#[test]
fn names_are_validated() {
    for ok in ["a", "sb-1", "A.b_c", &"x".repeat(64)] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "..",
        ".",
        "a/b",
        "../x",
        "a..b",
        "a\0b",
        "a b",
        "é",
        &"x".repeat(65),
    ] {
        assert!(
            matches!(validate_name(bad), Err(CgroupError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    let t = tree();
    let e = Cgroup::create(&t.layout, "../../escape", &all_limits()).unwrap_err();
    assert!(matches!(e, CgroupError::InvalidName { .. }), "{e:?}");
    assert_no_stockade_dirs(&t.cg);
}

#[test]
fn name_in_use_is_an_error_and_leaves_the_other_alone() {
    let t = tree();
    let a = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(matches!(e, CgroupError::NameInUse { .. }), "{e:?}");
    assert!(a.paths().iter().all(|p| p.exists()), "first sandbox intact");
    assert!(a.destroy().is_clean());
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn destroy_keeps_a_parent_another_sandbox_uses() {
    let t = tree();
    let a = Cgroup::create(&t.layout, "a", &all_limits()).unwrap();
    let b = Cgroup::create(&t.layout, "b", &all_limits()).unwrap();
    let a_paths = a.paths();
    assert!(a.destroy().is_clean());
    assert!(a_paths.iter().all(|p| !p.exists()));
    assert!(b.paths().iter().all(|p| p.exists()));
    assert!(b.destroy().is_clean());
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn destroy_removes_the_leaves_and_leaves_the_parents() {
    let t = tree();
    let c = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap();
    let paths = c.paths();
    assert_eq!(paths.len(), 3);
    let r = c.destroy();
    assert!(r.is_clean(), "{r:?}");
    assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
    // The last sandbox is gone and its parents are empty, yet destroy left them: an rmdir there
    // would race a concurrent create's mkdir of its leaf.
    for p in &paths {
        let parent = p.parent().unwrap();
        assert!(parent.is_dir(), "{} removed", parent.display());
    }
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn create_uses_a_parent_that_exists_already() {
    let t = tree();
    assert!(
        Cgroup::create(&t.layout, "first", &all_limits())
            .unwrap()
            .destroy()
            .is_clean()
    );
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
    // Every parent is there now (EEXIST on its mkdir); the same name is free again.
    for name in ["second", "first"] {
        let c = Cgroup::create(&t.layout, name, &all_limits()).unwrap();
        let pids = t.cg.join("pids/stockade").join(name);
        assert_eq!(read(&pids.join("pids.max")), "16");
        assert_eq!(
            read(
                &t.cg
                    .join("cpu,cpuacct/stockade")
                    .join(name)
                    .join("cpu.cfs_quota_us")
            ),
            "50000"
        );
        assert_eq!(c.enforced().len(), 3);
        assert!(c.destroy().is_clean());
    }
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn no_limits_creates_nothing() {
    let t = tree();
    let c = Cgroup::create(&t.layout, "sb", &Limits::default()).unwrap();
    assert!(c.paths().is_empty() && c.enforced().is_empty());
    assert!(c.destroy().is_clean());
}

#[test]
fn sweep_removes_only_cgroups_without_processes() {
    let t = tree();
    let dead = Cgroup::create(&t.layout, "dead", &all_limits()).unwrap();
    let live = Cgroup::create(&t.layout, "live", &all_limits()).unwrap();
    // Simulate the supervisor dying: no destroy. One sandbox still has a process in one hierarchy.
    put(&t.cg.join("pids/stockade/live"), "cgroup.procs", "999999\n");
    let (dead_paths, live_paths) = (dead.paths(), live.paths());
    std::mem::forget(dead);
    std::mem::forget(live);
    assert_eq!(
        sweep_stale(&t.layout, Duration::ZERO),
        vec!["dead".to_string()]
    );
    assert!(dead_paths.iter().all(|p| !p.exists()));
    assert!(live_paths.iter().all(|p| p.exists()));
    // The parents stay, holding only the live sandbox.
    for p in &live_paths {
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count(),
            1
        );
    }
}

#[test]
fn sweep_spares_a_fresh_cgroup_until_min_age_allows() {
    let t = tree();
    let fresh = Cgroup::create(&t.layout, "fresh", &all_limits()).unwrap();
    let paths = fresh.paths();
    std::mem::forget(fresh); // empty, like a concurrent supervisor's cgroup not yet joined
    assert_eq!(
        sweep_stale(&t.layout, Duration::from_secs(3600)),
        Vec::<String>::new()
    );
    assert!(paths.iter().all(|p| p.exists()), "fresh cgroup swept");
    assert_eq!(
        sweep_stale(&t.layout, Duration::ZERO),
        vec!["fresh".to_string()]
    );
    assert!(paths.iter().all(|p| !p.exists()));
    assert_only_empty_parents(&t.cg, &HIERARCHIES);
}

#[test]
fn sweep_removes_what_is_older_than_min_age() {
    let t = tree();
    let old = Cgroup::create(&t.layout, "old", &all_limits()).unwrap();
    let new = Cgroup::create(&t.layout, "new", &all_limits()).unwrap();
    let (old_paths, new_paths) = (old.paths(), new.paths());
    std::mem::forget(old);
    std::mem::forget(new);
    backdate(&old_paths, Duration::from_secs(7200));
    assert_eq!(
        sweep_stale(&t.layout, Duration::from_secs(3600)),
        vec!["old".to_string()]
    );
    assert!(old_paths.iter().all(|p| !p.exists()));
    assert!(new_paths.iter().all(|p| p.exists()));
}

#[test]
fn sweep_spares_a_name_with_any_young_directory() {
    let t = tree();
    let c = Cgroup::create(&t.layout, "mixed", &all_limits()).unwrap();
    let paths = c.paths();
    std::mem::forget(c);
    // Old in memory and cpu, young in pids: none of its directories may go.
    backdate(&paths[..2], Duration::from_secs(7200));
    assert_eq!(
        sweep_stale(&t.layout, Duration::from_secs(3600)),
        Vec::<String>::new()
    );
    assert!(paths.iter().all(|p| p.exists()), "{paths:?}");
    backdate(&paths[2..], Duration::from_secs(7200));
    assert_eq!(
        sweep_stale(&t.layout, Duration::from_secs(3600)),
        vec!["mixed".to_string()]
    );
    assert!(paths.iter().all(|p| !p.exists()));
}

#[test]
fn probe_reports_each_controller() {
    let t = tree();
    let r = probe(&t.layout);
    assert_eq!(r.len(), 3);
    for c in &r {
        assert_eq!(c.version, Some(Version::V1));
        assert!(c.writable, "{c:?}");
    }
    // The probe directories are gone again.
    assert_eq!(std::fs::read_dir(t.cg.join("pids")).unwrap().count(), 0);
}
