//! Helpers for the end-to-end tests of the real `stockade` binary (`limits.rs`, `lifecycle.rs`):
//! running it with a hard deadline, scanning host processes, cgroup leaves, mounts and /tmp, and
//! polling with deadlines instead of sleeping.
//!
//! Included with `mod support_limits;`; cargo also builds it as an (empty) test target of its own.

// A test crate: helpers outside #[test] fns panic on failure too. Each including binary uses a subset.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every temp dir these tests make starts with this, so the /tmp leftover check can ignore them.
pub const PREFIX: &str = "stockade-e2e-";

/// The longest any single stockade invocation may take before the test gives up on it.
pub const HARD_LIMIT: Duration = Duration::from_secs(120);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockade")
}

/// These tests drive real sandboxes with cgroups; CI runs them as root.
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what}: this end-to-end test needs root (cgroup v1 leaves, useradd); CI runs it as root"
    );
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises tests that take host-wide before/after snapshots against every other sandbox of
/// the same test binary.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh temp dir under /tmp named `stockade-e2e-*`.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in("/tmp")
        .unwrap()
}

/// A tag unique to this test process and call, for process markers.
pub fn unique_tag() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}x{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    )
}

/// Polls `f` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one finished stockade invocation did.
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn context(&self) -> String {
        let mut so = self.stdout_str();
        if so.len() > 2000 {
            so.truncate(2000);
            so.push_str("...[truncated]");
        }
        format!(
            "`{}` → {:?} after {:?}\n--- stdout ---\n{so}\n--- stderr ---\n{}",
            self.what, self.status, self.elapsed, self.stderr
        )
    }

    /// Panics unless stockade exited normally with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit {code}: {}",
            self.context()
        );
        self
    }

    pub fn has_stderr_line(&self, line: &str) -> bool {
        self.stderr.lines().any(|l| l == line)
    }

    pub fn expect_stderr_line(&self, line: &str) -> &Self {
        assert!(
            self.has_stderr_line(line),
            "expected stderr line {line:?}: {}",
            self.context()
        );
        self
    }

    /// Lines stockade itself wrote ("stockade: ...").
    pub fn stockade_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("stockade: "))
            .collect()
    }

    /// Panics unless stderr is exactly one line, starting with "stockade: "; returns it.
    pub fn expect_one_error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("stockade: ") && self.stderr.ends_with('\n'),
            "expected exactly one \"stockade: \" line on stderr: {}",
            self.context()
        );
        lines[0]
    }
}

/// A stockade invocation running in the background.
pub struct Running {
    pub what: String,
    pub child: Child,
    out: JoinHandle<Vec<u8>>,
    err: JoinHandle<Vec<u8>>,
    started: Instant,
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// An argument as shown in failure messages: inline scripts are abbreviated.
fn shorten(a: &str) -> String {
    if a.contains('\n') || a.len() > 100 {
        let first = a.trim_start().lines().next().unwrap_or("");
        format!("'{}...' ({} bytes)", &first[..first.len().min(40)], a.len())
    } else if a.contains(' ') {
        format!("'{a}'")
    } else {
        a.to_string()
    }
}

/// Starts `program args` with stdin null and stdout/stderr captured.
pub fn spawn_program(program: &str, args: &[String], cwd: &Path) -> Running {
    let what = format!(
        "{program} {}",
        args.iter()
            .map(|a| shorten(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    Running {
        what,
        child,
        out,
        err,
        started: Instant::now(),
    }
}

/// Starts `stockade args` in `cwd`.
pub fn spawn(args: &[String], cwd: &Path) -> Running {
    spawn_program(bin(), args, cwd)
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the exit (killing it and panicking past `limit`) and collects its output.
    pub fn finish(mut self, limit: Duration) -> Out {
        let end = self.started + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("`{}` still running after {limit:?}; killed it", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let stdout = self.out.join().unwrap();
        let stderr = String::from_utf8_lossy(&self.err.join().unwrap()).into_owned();
        Out {
            what: self.what,
            status,
            stdout,
            stderr,
            elapsed,
        }
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `stockade ARGS` in `cwd`, to completion.
pub fn stockade(args: &[&str], cwd: &Path) -> Out {
    spawn(&strings(args), cwd).finish(HARD_LIMIT)
}

/// The argument vector of `stockade run --workspace WS FLAGS -- CMD`.
pub fn run_args(ws: &Path, flags: &[&str], cmd: &[&str]) -> Vec<String> {
    let mut a = strings(&["run", "--workspace"]);
    a.push(ws.display().to_string());
    a.extend(strings(flags));
    a.push("--".into());
    a.extend(strings(cmd));
    a
}

/// `stockade run --workspace WS FLAGS -- CMD` with WS as the working directory, to completion.
pub fn run(ws: &Path, flags: &[&str], cmd: &[&str]) -> Out {
    spawn(&run_args(ws, flags, cmd), ws).finish(HARD_LIMIT)
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; `pid` is our own child,
    // not yet reaped, so the number cannot have been reused.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------------
// Host processes

/// One host process as seen in /proc.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
    pub ppid: i32,
    pub state: char,
    pub cmdline: Vec<u8>,
}

impl Proc {
    pub fn cmdline_str(&self) -> String {
        String::from_utf8_lossy(&self.cmdline).replace('\0', " ")
    }

    pub fn is_launcher(&self) -> bool {
        self.cmdline.starts_with(b"/proc/self/exe\0__launch")
    }
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after "(comm)": state is field 3 of stat(5), ppid 4, starttime 22.
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Some(Proc {
        pid,
        start,
        ppid,
        state,
        cmdline,
    })
}

/// Every host process but zombies (which hold nothing but a pid) and this test process.
pub fn processes() -> Vec<Proc> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(read_proc)
        .filter(|p| p.state != 'Z')
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Live host processes whose argv contains `marker`.
pub fn marker_procs(marker: &str) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| contains(&p.cmdline, marker.as_bytes()))
        .collect()
}

/// Live `/proc/self/exe __launch` processes.
pub fn launcher_procs() -> Vec<Proc> {
    processes().into_iter().filter(Proc::is_launcher).collect()
}

/// Live descendants of `root` (not `root` itself).
pub fn descendants(root: i32) -> Vec<Proc> {
    let all = processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            if !found.iter().any(|f| f.pid == c.pid) {
                frontier.push(c.pid);
                found.push(c.clone());
            }
        }
    }
    found
}

/// Whether this very process (same pid and start time) still lives and is not a zombie.
pub fn alive(p: &Proc) -> bool {
    read_proc(p.pid).is_some_and(|q| q.start == p.start && q.state != 'Z')
}

// ---------------------------------------------------------------------------------------------
// cgroup v1 leaves

/// This process's memory cgroup (stockade, our child, puts its memory leaves under it).
fn own_memory_cgroup() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if ctrls.split(',').any(|c| c == "memory") {
            return PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        }
    }
    panic!(
        "no v1 memory controller in /proc/self/cgroup; these tests exercise the cgroup v1 layout of this machine kind:\n{text}"
    );
}

/// The `stockade` parent directories of the sandbox leaves, one per v1 controller (pids, cpu,
/// cpuacct, memory). Panics if this host does not have that layout.
pub fn cgroup_parents() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for c in ["pids", "cpu", "cpuacct"] {
        let root = PathBuf::from("/sys/fs/cgroup").join(c);
        assert!(
            root.is_dir(),
            "{} missing: these tests exercise cgroup v1 hierarchies",
            root.display()
        );
        v.push(root.join("stockade"));
    }
    v.push(own_memory_cgroup().join("stockade"));
    v
}

fn is_leaf_name(n: &str) -> bool {
    n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every sandbox leaf directory (16 hex digits) under the `stockade` parents.
pub fn cgroup_leaves() -> BTreeSet<PathBuf> {
    let mut s = BTreeSet::new();
    for parent in cgroup_parents() {
        let Ok(rd) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if is_leaf_name(&n) && e.path().is_dir() {
                s.insert(e.path());
            }
        }
    }
    s
}

/// The sandbox id of host process `pid`, from its pids cgroup ("/stockade/<16 hex>").
pub fn sandbox_id_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next(), parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == "pids")
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("pid {pid} has no pids cgroup:\n{text}"));
    let id = path.strip_prefix("/stockade/").unwrap_or("");
    assert!(
        is_leaf_name(id),
        "pid {pid} is not in a sandbox's pids leaf: {path}"
    );
    id.to_string()
}

/// The leaf directories of sandbox `id` that exist now.
pub fn leaves_of(id: &str) -> Vec<PathBuf> {
    cgroup_parents()
        .into_iter()
        .map(|p| p.join(id))
        .filter(|p| p.exists())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Host state before/after

/// What a run could leave behind on the host.
#[derive(Clone, Debug, Default)]
pub struct HostState {
    pub mounts: BTreeSet<String>,
    pub leaves: BTreeSet<PathBuf>,
    pub launchers: BTreeSet<(i32, u64)>,
    pub tmp: BTreeSet<String>,
}

pub fn host_state() -> HostState {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let tmp = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(PREFIX))
        .collect();
    HostState {
        mounts,
        leaves: cgroup_leaves(),
        launchers: launcher_procs()
            .into_iter()
            .map(|p| (p.pid, p.start))
            .collect(),
        tmp,
    }
}

impl HostState {
    /// What is in `self` but not in `before`, as human-readable lines (empty when nothing).
    pub fn new_since(&self, before: &HostState) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(
            self.mounts
                .difference(&before.mounts)
                .map(|m| format!("mount: {m}")),
        );
        v.extend(
            self.leaves
                .difference(&before.leaves)
                .map(|l| format!("cgroup leaf: {}", l.display())),
        );
        v.extend(
            self.launchers
                .difference(&before.launchers)
                .map(|(p, _)| format!("__launch process: pid {p}")),
        );
        v.extend(
            self.tmp
                .difference(&before.tmp)
                .map(|t| format!("/tmp entry: {t}")),
        );
        v
    }
}

/// Panics if a mount, cgroup leaf, `__launch` process or /tmp entry appeared since `before`.
/// Something unrelated on the host may appear transiently, so anything new gets 5 s to vanish.
pub fn assert_nothing_left(before: &HostState, what: &str) {
    let mut last = Vec::new();
    let clean = poll(Duration::from_secs(5), || {
        last = host_state().new_since(before);
        last.is_empty()
    });
    assert!(
        clean,
        "{what}: left behind on the host:\n  {}",
        last.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Trees, errors, users

/// Everything observable about a tree: per path, type+mode, owner, size, mtime, and the bytes
/// (file contents or symlink target).
pub type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, (i64, i64), Vec<u8>)>;

pub fn snapshot(root: &Path) -> Snapshot {
    let mut s = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let bytes = if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            Vec::new()
        };
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        s.insert(
            rel,
            (
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                (m.mtime(), m.mtime_nsec()),
                bytes,
            ),
        );
    }
    s
}

/// Runs `stockade ARGS` in `cwd` between two host snapshots; panics if anything was left behind.
pub fn run_clean(args: &[&str], cwd: &Path) -> Out {
    let before = host_state();
    let out = stockade(args, cwd);
    assert_nothing_left(&before, &out.what);
    out
}

/// One stockade error: exit `code`, exactly one "stockade: " line containing every `needle`.
pub fn expect_error(args: &[&str], cwd: &Path, code: i32, needles: &[&str]) -> Out {
    let out = run_clean(args, cwd);
    out.expect_code(code);
    let line = out.expect_one_error_line().to_string();
    for n in needles {
        assert!(
            line.contains(n),
            "the error should mention {n:?}: {}",
            out.context()
        );
    }
    out
}

pub const E2E_USER: &str = "stockade-e2e";

pub fn id_of(flag: &str) -> Option<u32> {
    let o = Command::new("id").args([flag, E2E_USER]).output().unwrap();
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

pub fn ensure_user() -> (u32, u32) {
    if id_of("-u").is_none() {
        let o = Command::new("useradd")
            .args(["-M", "-r", E2E_USER])
            .output()
            .unwrap();
        assert!(
            o.status.success() || id_of("-u").is_some(),
            "useradd -M -r {E2E_USER}: {:?} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (id_of("-u").unwrap(), id_of("-g").unwrap())
}
