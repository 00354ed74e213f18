//! cgroup v1 against a fake cgroupfs tree (the hybrid layout of the CI host, cpu,cpuacct co-mounted).

use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// No directory named `stockade` is left anywhere in the tree.
fn assert_no_stockade_dirs(cg: &Path) {
    for h in ["memory/process_api/e442", "cpu,cpuacct", "pids"] {
        let p = cg.join(h).join("stockade");
        assert!(!p.exists(), "{} left behind", p.display());
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
    assert_no_stockade_dirs(&t.cg);
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
    assert_no_stockade_dirs(&t.cg);
}

#[test]
fn value_the_kernel_ignores_fails_read_back() {
    let t = tree_with(true, NO_SWAP, None, Some("cpu.cfs_quota_us"));
    let e = Cgroup::create(&t.layout, "sb", &all_limits()).unwrap_err();
    assert!(
        matches!(&e, CgroupError::ReadBack { controller: Controller::Cpu, wrote, read, .. } if wrote == "50000" && read == "-1"),
        "{e:?}"
    );
    assert_no_stockade_dirs(&t.cg);
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
        !cg.join("memory/stockade").exists(),
        "memory dir created before the failure is removed"
    );
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
    assert_no_stockade_dirs(&t.cg);
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
    assert_no_stockade_dirs(&t.cg);
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
    assert_no_stockade_dirs(&t.cg);
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
    assert_eq!(sweep_stale(&t.layout), vec!["dead".to_string()]);
    assert!(dead_paths.iter().all(|p| !p.exists()));
    assert!(live_paths.iter().all(|p| p.exists()));
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
