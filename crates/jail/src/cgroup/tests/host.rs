//! Host tests: real cgroups on this machine's layout (root required; CI runs as root). Each denial
//! has a control run of the same workload without that limit. A test that cannot run here fails
//! with the reason.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::cgroup::{Cgroup, Controller, Layout, Limits, Version, probe, sweep_stale};

const MIB: u64 = 1 << 20;

/// sweep_stale removes any empty sandbox cgroup old enough, including one another test has
/// created (the sweep test backdates its own): it holds this for writing, every other host test
/// for reading.
static SWEEP: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SWEEP.read().unwrap_or_else(|p| p.into_inner())
}

fn layout() -> Layout {
    assert!(
        rustix::process::geteuid().is_root(),
        "host cgroup tests need root (CI runs as root); run `cargo test` as root"
    );
    let l = Layout::discover().unwrap_or_else(|e| panic!("cgroup discovery failed: {e}"));
    for c in Controller::ALL {
        assert!(
            l.controller(c).is_some(),
            "host lacks the {c:?} controller, cannot test it: {}",
            l.summary()
        );
    }
    l
}

fn name(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

/// The real interpreter (a pyenv shim would fork helpers inside the pids-limited cgroup).
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap_or_else(|e| panic!("python3 is needed for the host cgroup tests: {e}"));
        assert!(out.status.success(), "python3 failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// Starts `sh` that waits for a line on stdin, then execs `argv`: the caller moves it into the
/// cgroup in between, so nothing of the workload runs outside it.
fn spawn_gated(argv: &[&str]) -> Child {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "read _ && exec \"$@\"", "sh"])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

fn release(child: &mut Child) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

/// Runs `argv` inside `cg` to completion; returns (status, stdout, stderr).
fn run_in(cg: &Cgroup, argv: &[&str]) -> (ExitStatus, String, String) {
    let mut child = spawn_gated(argv);
    cg.add_pid(child.id() as i32).unwrap();
    release(&mut child);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_ne!(
        status.code(),
        Some(127),
        "command not found: {argv:?}: {err}"
    );
    (status, out, err)
}

fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("child did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Destroys `cg`, checking its directories are gone and the shared `stockade` parents stay.
fn destroy_clean(cg: Cgroup) {
    let paths = cg.paths();
    let r = cg.destroy();
    assert!(r.is_clean(), "{r:?}");
    for p in paths {
        assert!(!p.exists(), "{} still exists after destroy", p.display());
        let parent = p.parent().unwrap();
        assert!(
            parent.is_dir(),
            "{} removed by destroy: the shared parent must stay",
            parent.display()
        );
    }
}

#[test]
fn host_layout_and_probe() {
    let _g = shared();
    let l = layout();
    eprintln!("{}", l.summary());
    for r in probe(&l) {
        assert!(
            r.writable,
            "cannot create a cgroup for {:?}: {:?}",
            r.controller, r.reason
        );
    }
}

#[test]
fn host_create_writes_kernel_files() {
    let _g = shared();
    let l = layout();
    let lim = Limits {
        memory_bytes: Some(64 * MIB),
        swap_bytes: Some(0),
        cpus: Some(0.5),
        pids: Some(16),
    };
    let cg = Cgroup::create(&l, &name("files"), &lim).unwrap();
    let mut seen = Vec::new();
    for (c, v) in cg.enforced() {
        let (version, own) = l.controller(c).unwrap();
        assert_eq!(v, version);
        let dir = own.join("stockade").join(name("files"));
        let f = |n: &str| {
            std::fs::read_to_string(dir.join(n))
                .unwrap()
                .trim()
                .to_string()
        };
        match (c, v) {
            (Controller::Memory, Version::V1) => {
                assert_eq!(f("memory.limit_in_bytes"), "67108864");
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    assert_eq!(f("memory.memsw.limit_in_bytes"), "67108864");
                }
            }
            (Controller::Memory, Version::V2) => assert_eq!(f("memory.max"), "67108864"),
            (Controller::Cpu, Version::V1) => {
                assert_eq!(f("cpu.cfs_period_us"), "100000");
                assert_eq!(f("cpu.cfs_quota_us"), "50000");
            }
            (Controller::Cpu, Version::V2) => assert_eq!(f("cpu.max"), "50000 100000"),
            (Controller::Pids, _) => assert_eq!(f("pids.max"), "16"),
        }
        seen.push(c);
    }
    assert_eq!(seen, Controller::ALL.to_vec());
    destroy_clean(cg);
}

#[test]
fn host_add_pid_moves_the_process_and_destroy_kills_it() {
    let _g = shared();
    let l = layout();
    let n = name("join");
    let lim = Limits {
        memory_bytes: Some(64 * MIB),
        cpus: Some(0.5),
        pids: Some(16),
        ..Limits::default()
    };
    let cg = Cgroup::create(&l, &n, &lim).unwrap();
    let mut child = Command::new("sleep").arg("300").spawn().unwrap();
    cg.add_pid(child.id() as i32).unwrap();
    let proc_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    for c in Controller::ALL {
        let needle = format!("/stockade/{n}");
        let line = proc_cg
            .lines()
            .find(|line| {
                let ctrls = line.split(':').nth(1).unwrap_or("");
                ctrls.split(',').any(|x| x == c.name())
                    || (ctrls.is_empty() && l.controller(c).is_some_and(|(v, _)| v == Version::V2))
            })
            .unwrap_or_else(|| panic!("no {c:?} line in {proc_cg}"));
        assert!(
            line.ends_with(&needle),
            "{c:?}: {line} should end with {needle}"
        );
    }
    assert_eq!(cg.stats().pids_current, Some(1));
    destroy_clean(cg);
    let status = wait_timeout(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

const FORK_BOMBLET: &str = r#"
import os, sys, time, errno
kids = []
result = "OK"
for i in range(24):
    try:
        pid = os.fork()
    except OSError as e:
        result = "EAGAIN" if e.errno == errno.EAGAIN else "ERRNO %d" % e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
print(result, len(kids))
"#;

#[test]
fn host_pids_limit_refuses_fork_with_eagain() {
    let _g = shared();
    let l = layout();
    let py = python();
    // Control: same workload, cgroup without a pids limit (memory only), all forks succeed.
    let control = Cgroup::create(
        &l,
        &name("forkctl"),
        &Limits {
            memory_bytes: Some(256 * MIB),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, out, err) = run_in(&control, &[py, "-c", FORK_BOMBLET]);
    assert!(st.success(), "{st:?} {err}");
    assert_eq!(out.trim(), "OK 24", "{err}");
    destroy_clean(control);

    let cg = Cgroup::create(
        &l,
        &name("fork"),
        &Limits {
            pids: Some(8),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, out, err) = run_in(&cg, &[py, "-c", FORK_BOMBLET]);
    assert!(st.success(), "{st:?} {err}");
    // python itself is one task; 7 children fit, the 8th fork is refused.
    assert_eq!(out.trim(), "EAGAIN 7", "{err}");
    let s = cg.stats();
    assert!(s.pids_max_hits > 0, "{s:?}");
    destroy_clean(cg);
}

const ALLOC_200M: &str = "b = b'\\x01' * (200 * 1024 * 1024); print(len(b))";

#[test]
fn host_memory_limit_oom_kills() {
    let _g = shared();
    let l = layout();
    let py = python();
    // Control: 512 MiB allows the same 200 MiB allocation.
    let control = Cgroup::create(
        &l,
        &name("memctl"),
        &Limits {
            memory_bytes: Some(512 * MIB),
            swap_bytes: Some(0),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, out, err) = run_in(&control, &[py, "-c", ALLOC_200M]);
    assert!(st.success(), "{st:?} {err}");
    assert_eq!(out.trim(), (200 * MIB).to_string());
    assert_eq!(control.stats().oom_kills, 0);
    let peak = control.stats().memory_peak.unwrap();
    assert!(peak >= 200 * MIB, "peak {peak}");
    destroy_clean(control);

    let cg = Cgroup::create(
        &l,
        &name("mem"),
        &Limits {
            memory_bytes: Some(64 * MIB),
            swap_bytes: Some(0),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, out, err) = run_in(&cg, &[py, "-c", ALLOC_200M]);
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "{st:?} out={out} err={err}"
    );
    let s = cg.stats();
    assert!(s.oom_kills >= 1, "{s:?}");
    assert!(s.memory_peak.is_some_and(|p| p <= 64 * MIB), "{s:?}");
    destroy_clean(cg);
}

#[test]
fn host_cpu_usage_is_accounted() {
    let _g = shared();
    let l = layout();
    let cg = Cgroup::create(
        &l,
        &name("cpu"),
        &Limits {
            cpus: Some(0.5),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, _, err) = run_in(
        &cg,
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
        ],
    );
    assert!(st.success(), "{err}");
    let used = cg.stats().cpu_usage_ns;
    assert!(used.is_some_and(|ns| ns > 1_000_000), "{used:?}");
    destroy_clean(cg);
}

#[test]
fn host_destroy_kills_a_process_tree() {
    let _g = shared();
    let l = layout();
    let cg = Cgroup::create(
        &l,
        &name("tree"),
        &Limits {
            pids: Some(32),
            memory_bytes: Some(64 * MIB),
            ..Limits::default()
        },
    )
    .unwrap();
    let mut child = spawn_gated(&[
        "/bin/sh",
        "-c",
        "sleep 300 & sleep 300 & (sleep 300 &) ; echo up; wait",
    ]);
    cg.add_pid(child.id() as i32).unwrap();
    release(&mut child);
    let mut buf = [0u8; 3];
    child.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    let before = cg.stats().pids_current.unwrap();
    assert!(before >= 4, "sh + 3 sleeps expected, saw {before}");
    let procs: Vec<PathBuf> = cg.procs_files();
    destroy_clean(cg);
    assert!(procs.iter().all(|p| !p.exists()));
    let status = wait_timeout(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn host_sweep_removes_a_dead_supervisors_cgroups() {
    let _g = SWEEP.write().unwrap_or_else(|p| p.into_inner());
    let l = layout();
    let n = name("stale");
    let cg = Cgroup::create(
        &l,
        &n,
        &Limits {
            pids: Some(4),
            memory_bytes: Some(64 * MIB),
            ..Limits::default()
        },
    )
    .unwrap();
    let paths = cg.paths();
    std::mem::forget(cg); // the supervisor "dies"
    // Fresh and empty, like a concurrent supervisor's cgroup not yet joined: spared.
    let hour = Duration::from_secs(3600);
    let removed = sweep_stale(&l, hour);
    assert!(!removed.contains(&n), "{removed:?}");
    assert!(paths.iter().all(|p| p.exists()), "fresh cgroup swept");
    // An hour later (mtime set back on cgroupfs): swept. Other test processes' fresh cgroups are
    // younger than an hour and stay out of reach.
    for p in &paths {
        let dir = std::fs::File::open(p).unwrap();
        dir.set_modified(SystemTime::now() - 2 * hour)
            .unwrap_or_else(|e| panic!("cannot set the mtime of {}: {e}", p.display()));
    }
    let removed = sweep_stale(&l, hour);
    assert!(removed.contains(&n), "{removed:?}");
    for p in &paths {
        assert!(!p.exists(), "{} still exists after sweep", p.display());
        let parent = p.parent().unwrap();
        assert!(parent.is_dir(), "{} removed by sweep", parent.display());
    }
}

const BUSY_1S: &str = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass";

/// nr_throttled from cpu.stat of the directory holding the cpu limit (v1 and v2 both have it).
fn nr_throttled(cg: &Cgroup) -> u64 {
    let dir = cg
        .paths()
        .into_iter()
        .find(|p| p.join("cpu.cfs_quota_us").exists() || p.join("cpu.max").exists())
        .expect("a cpu directory");
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).unwrap();
    crate::cgroup::fsops::keyed_value(&stat, "nr_throttled").expect("nr_throttled in cpu.stat")
}

#[test]
fn host_cpu_limit_throttles() {
    let _g = shared();
    let l = layout();
    let py = python();
    // Control: a single thread can never use more than 2 CPUs, so it is never throttled.
    let control = Cgroup::create(
        &l,
        &name("cpuctl"),
        &Limits {
            cpus: Some(2.0),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, _, err) = run_in(&control, &[py, "-c", BUSY_1S]);
    assert!(st.success(), "{err}");
    assert_eq!(nr_throttled(&control), 0);
    destroy_clean(control);

    let cg = Cgroup::create(
        &l,
        &name("cpulim"),
        &Limits {
            cpus: Some(0.2),
            ..Limits::default()
        },
    )
    .unwrap();
    let (st, _, err) = run_in(&cg, &[py, "-c", BUSY_1S]);
    assert!(st.success(), "{err}");
    assert!(
        nr_throttled(&cg) > 0,
        "a busy loop under 0.2 CPU must be throttled"
    );
    let used = cg.stats().cpu_usage_ns.unwrap();
    assert!(
        used < 700_000_000,
        "used {used} ns of CPU in 1 s under a 0.2 CPU limit"
    );
    destroy_clean(cg);
}
