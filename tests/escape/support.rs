//! The escape suite's harness: canaries planted on the host, a real `stockade run` of a probe,
//! and the three checks every case makes — the attack was refused (a specific errno, signal or
//! exit), the canaries prove nothing got through, and the expected audit event was written.
//!
//! Probes are small Python programs (the sandbox sees the host's read-only /usr) that print one
//! JSON object as their last line: `{"name": ["ok", value]}` or `{"name": ["err", errno]}`, so a
//! refusal is checked by its exact errno. Probes never receive a canary's *value*, only where it
//! is (a path, a port, a socket name); a leak would have to be found by the probe itself.

#![allow(dead_code)] // each category file uses its own subset

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EPERM: i64 = libc::EPERM as i64;
pub const ENOENT: i64 = libc::ENOENT as i64;
pub const EACCES: i64 = libc::EACCES as i64;
pub const EROFS: i64 = libc::EROFS as i64;
pub const ENOSYS: i64 = libc::ENOSYS as i64;
pub const EINVAL: i64 = libc::EINVAL as i64;
pub const EBADF: i64 = libc::EBADF as i64;
pub const ENETUNREACH: i64 = libc::ENETUNREACH as i64;
pub const ECONNREFUSED: i64 = libc::ECONNREFUSED as i64;
pub const EAFNOSUPPORT: i64 = libc::EAFNOSUPPORT as i64;
pub const EPROTONOSUPPORT: i64 = libc::EPROTONOSUPPORT as i64;
pub const EOPNOTSUPP: i64 = libc::EOPNOTSUPP as i64;
pub const ENXIO: i64 = libc::ENXIO as i64;
pub const ESRCH: i64 = libc::ESRCH as i64;

/// Helpers every probe gets: `t(name, f)` records f's value or its errno; `sc(nr, ...)` is a raw
/// syscall returning `[ret, errno]` (errno 0 on success); `read`/`write` of whole files.
pub const PRELUDE: &str = r#"
import ctypes, errno, json, os, socket, struct, sys, time
R = {}
def t(name, f):
    try:
        R[name] = ["ok", f()]
    except OSError as e:
        R[name] = ["err", e.errno]
libc = ctypes.CDLL(None, use_errno=True)
def sc(*a):
    ctypes.set_errno(0)
    r = libc.syscall(*[ctypes.c_long(x) for x in a])
    return [r, ctypes.get_errno() if r == -1 else 0]
def read(p):
    with open(p) as f:
        return f.read()
def readb(p):
    with open(p, "rb") as f:
        return f.read()
def write(p, s):
    with open(p, "w") as f:
        return f.write(s)
def done():
    print(json.dumps(R))
"#;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockade")
}

/// The isolation level every `stockade run` of the suite asks for: env `STOCKADE_ESCAPE_LEVEL` =
/// `container` (default) | `gvisor` | `microvm` (under TCG here: `--allow-emulated` is added).
/// An unknown value is a failure, not a silent fallback to the container level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Container,
    Gvisor,
    Microvm,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Container => "container",
            Level::Gvisor => "gvisor",
            Level::Microvm => "microvm",
        }
    }
}

pub fn level() -> Level {
    match std::env::var("STOCKADE_ESCAPE_LEVEL").as_deref() {
        Err(_) | Ok("") | Ok("container") => Level::Container,
        Ok("gvisor") => Level::Gvisor,
        Ok("microvm") => Level::Microvm,
        Ok(other) => {
            panic!("STOCKADE_ESCAPE_LEVEL={other:?}: expected container, gvisor or microvm")
        }
    }
}

/// The errno of a connect/sendto with no route out of the sandbox: Linux (container, and the
/// microvm guest's kernel) says ENETUNREACH; gVisor's netstack says EHOSTUNREACH. Both: no route.
pub fn no_route() -> i64 {
    per_level(ENETUNREACH, libc::EHOSTUNREACH as i64, ENETUNREACH)
}

/// Whether seccomp denials become `violation` events at the level under test.
/// - container: yes, read from the host kernel's audit records of the sandbox's unique host uid.
/// - gvisor: no — runsc 2022 refuses SECCOMP_FILTER_FLAG_LOG, the agent installs the same filter
///   unlogged, and gVisor's own kernel never writes the host's audit records (docs/gvisor.md).
/// - microvm: no — the denial is logged by the guest kernel, whose audit records the host side
///   does not read.
pub fn seccomp_violations_recorded() -> bool {
    per_level(true, false, false)
}

/// Stockade's own processes the command sees in its PID namespace, by pid, with their
/// `/proc/<pid>/cmdline`; the command's own pid comes after them.
/// - container (and microvm, whose guest runs the same container jail): PID 1, the agent
///   (`__launch`, the sandbox uid, non-dumpable).
/// - gvisor: PID 1, the guest shim (`__guest gvisor`, root in the sandbox, non-dumpable, only
///   CAP_KILL left), and PID 2, the agent (`__direct`, the sandbox uid, non-dumpable).
pub fn stockade_pids() -> Vec<(u32, &'static str)> {
    per_level(
        vec![(1, "/proc/self/exe\0__launch\0")],
        vec![
            (1, "/.stockade/stockade-guest\0__guest\0gvisor\0"),
            (2, "/proc/self/exe\0__direct\0"),
        ],
        vec![(1, "/proc/self/exe\0__launch\0")],
    )
}

/// The flags every `stockade run` of the suite gets for the level under test.
pub fn level_args() -> Vec<&'static str> {
    match level() {
        Level::Container => vec!["--level", "container"],
        Level::Gvisor => vec!["--level", "gvisor"],
        Level::Microvm => vec!["--level", "microvm", "--allow-emulated"],
    }
}

/// Picks the expectation for the level under test: `container` is what the host kernel and
/// stockade's container jail give; the others say what that level gives instead (each call site
/// says why in a comment).
pub fn per_level<T>(container: T, gvisor: T, microvm: T) -> T {
    match level() {
        Level::Container => container,
        Level::Gvisor => gvisor,
        Level::Microvm => microvm,
    }
}

/// Violation events come from the kernel's audit records of the sandbox's unique host uid, which
/// only a root-launched sandbox has; CI runs as root.
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what}: the escape suite needs root (unique host uid for violation events, cgroups, \
         fanotify); CI runs it as root"
    );
}

/// A name no other run uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "esc-{tag}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos % 1_000_000_000
    )
}

pub fn ok<T: Into<Value>>(v: T) -> Value {
    json!(["ok", v.into()])
}

pub fn err(errno: i64) -> Value {
    json!(["err", errno])
}

/// Polls `cond` until it holds, failing after `secs` with `what`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- canaries -----------------------------------------------------------------------------------

/// A TCP listener on the host that counts connections and keeps what it was sent.
pub struct TcpCanary {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl TcpCanary {
    pub fn bind(ip: &str) -> TcpCanary {
        let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind canary on {ip}: {e}"));
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (count.clone(), received.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary");
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        TcpCanary {
            addr,
            count,
            received,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Control: the host itself reaches this canary, and it counts the connection.
    pub fn assert_reachable_from_host(&self) {
        let before = self.connections();
        let _s = std::net::TcpStream::connect(self.addr).unwrap();
        wait_for("the host's control connection to the canary", 10, || {
            self.connections() > before
        });
    }
}

/// An abstract unix socket server in the host's network namespace, counting connections.
pub struct UnixCanary {
    pub name: String,
    count: Arc<AtomicUsize>,
}

impl UnixCanary {
    pub fn bind() -> UnixCanary {
        let name = unique("unix");
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = UnixListener::bind_addr(&addr).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"canary");
            }
        });
        UnixCanary { name, count }
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Control: the host itself reaches the abstract socket.
    pub fn assert_reachable_from_host(&self) {
        let before = self.connections();
        let addr = UnixAddr::from_abstract_name(self.name.as_bytes()).unwrap();
        let _s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        wait_for(
            "the host's control connection to the unix canary",
            10,
            || self.connections() > before,
        );
    }
}

/// Everything a case plants on the host before the attack.
pub struct Canaries {
    _dir: tempfile::TempDir,
    /// A secret file outside the workspace (under /opt: no bind covers it).
    pub file: PathBuf,
    pub file_secret: String,
    file_mtime: std::time::SystemTime,
    /// A secret in stockade's own environment.
    pub env_name: &'static str,
    pub env_secret: String,
    /// TCP canaries on 127.0.0.1 and 127.0.0.2.
    pub tcp1: TcpCanary,
    pub tcp2: TcpCanary,
    /// An abstract unix socket in the host network namespace.
    pub unix: UnixCanary,
}

pub const ENV_SECRET_NAME: &str = "STOCKADE_ESCAPE_HOST_TOKEN";

impl Canaries {
    pub fn plant() -> Canaries {
        let dir = tempfile::Builder::new()
            .prefix("stockade-escape-secret-")
            .tempdir_in("/opt")
            .unwrap();
        let file = dir.path().join("secret.txt");
        let file_secret = format!("FILE-SECRET-{}", unique("f"));
        std::fs::write(&file, &file_secret).unwrap();
        let file_mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        Canaries {
            _dir: dir,
            file,
            file_secret,
            file_mtime,
            env_name: ENV_SECRET_NAME,
            env_secret: format!("ENV-SECRET-{}", unique("e")),
            tcp1: TcpCanary::bind("127.0.0.1"),
            tcp2: TcpCanary::bind("127.0.0.2"),
            unix: UnixCanary::bind(),
        }
    }

    pub fn file_str(&self) -> &str {
        self.file.to_str().unwrap()
    }

    /// Nothing got through: no canary value anywhere the sandbox could have put it (its output,
    /// its workspace, the audit trail), the secret file unchanged, no connection to any canary.
    pub fn assert_nothing_got_through(&self, run: &Run) {
        for secret in [&self.file_secret, &self.env_secret] {
            assert!(
                !run.stdout.contains(secret.as_str()),
                "{}: a canary value reached the sandbox's stdout\n{}",
                run.label,
                run.stdout
            );
            assert!(
                !run.stderr.contains(secret.as_str()),
                "{}: a canary value reached the sandbox's stderr\n{}",
                run.label,
                run.stderr
            );
            assert!(
                !run.events_text.contains(secret.as_str()),
                "{}: a canary value reached the audit trail",
                run.label
            );
            if let Some(p) = find_in_tree(run.ws.path(), secret.as_bytes()) {
                panic!(
                    "{}: a canary value was written into the workspace: {}",
                    run.label,
                    p.display()
                );
            }
        }
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            self.file_secret,
            "{}: the secret file was changed",
            run.label
        );
        assert_eq!(
            std::fs::metadata(&self.file).unwrap().modified().unwrap(),
            self.file_mtime,
            "{}: the secret file was touched",
            run.label
        );
        for (name, c) in [("127.0.0.1", &self.tcp1), ("127.0.0.2", &self.tcp2)] {
            assert_eq!(
                c.connections(),
                0,
                "{}: the sandbox reached the TCP canary on {name} (received {:?})",
                run.label,
                String::from_utf8_lossy(&c.received())
            );
        }
        assert_eq!(
            self.unix.connections(),
            0,
            "{}: the sandbox reached the host's abstract unix socket",
            run.label
        );
    }
}

/// The first file under `dir` containing `needle`, if any.
pub fn find_in_tree(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && std::fs::read(&p)
                    .map(|b| b.windows(needle.len()).any(|w| w == needle))
                    .unwrap_or(false)
            {
                return Some(p);
            }
        }
    }
    None
}

// --- running a probe ----------------------------------------------------------------------------

/// A policy with the network allowlist on, naming one local test host: `api.test` on 127.0.0.3
/// (the probe's only permitted destination, at `port`); `evil.test` maps to the 127.0.0.2
/// canary but is not allowed.
pub fn allowlist_policy(port: u16) -> String {
    format!(
        "[network]\nmode = \"allowlist\"\nallow = [\"api.test:{port}\"]\n\
         allow_private = [\"127.0.0.3/32\"]\n\
         [network.hosts]\n\"api.test\" = \"127.0.0.3\"\n\"evil.test\" = \"127.0.0.2\"\n"
    )
}

/// One `stockade run` of a probe, configured before it runs.
pub struct Sandbox {
    label: String,
    policy: Option<String>,
    flags: Vec<String>,
    env: Vec<(String, String)>,
    leaked: Vec<OwnedFd>,
    ws_files: Vec<(String, Vec<u8>)>,
    ws: Option<tempfile::TempDir>,
}

/// What a run left: its exit, output, probe result and audit trail.
pub struct Run {
    pub label: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub events: Vec<Value>,
    events_text: String,
    pub ws: tempfile::TempDir,
    pub state: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox with the default policy; `label` names the case in failures.
    pub fn new(label: &str) -> Sandbox {
        Sandbox {
            label: label.to_string(),
            policy: None,
            flags: Vec::new(),
            env: Vec::new(),
            leaked: Vec::new(),
            ws_files: Vec::new(),
            ws: None,
        }
    }

    pub fn policy(mut self, toml: &str) -> Sandbox {
        self.policy = Some(toml.to_string());
        self
    }

    pub fn flag(mut self, f: &str) -> Sandbox {
        self.flags.push(f.to_string());
        self
    }

    pub fn flags(mut self, fs: &[&str]) -> Sandbox {
        self.flags.extend(fs.iter().map(|s| s.to_string()));
        self
    }

    /// Sets `k=v` in stockade's own environment (not passed inside unless a flag says so).
    pub fn host_env(mut self, k: &str, v: &str) -> Sandbox {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Plants the canaries' environment secret in stockade's environment.
    pub fn with_canaries(self, c: &Canaries) -> Sandbox {
        let (k, v) = (c.env_name.to_string(), c.env_secret.clone());
        self.host_env(&k, &v)
    }

    /// Starts stockade with `fd` open (not close-on-exec) at fd number 10 + its index.
    pub fn leak_fd(mut self, fd: OwnedFd) -> Sandbox {
        self.leaked.push(fd);
        self
    }

    /// A file created in the workspace before the run (`rel` relative to it).
    pub fn ws_file(mut self, rel: &str, content: &[u8]) -> Sandbox {
        self.ws_files.push((rel.to_string(), content.to_vec()));
        self
    }

    /// Uses `dir` as the workspace instead of a fresh one.
    pub fn workspace(mut self, dir: tempfile::TempDir) -> Sandbox {
        self.ws = Some(dir);
        self
    }

    /// Runs the Python probe `body` (after PRELUDE; it should end with `done()`).
    pub fn python(self, body: &str, args: &[&str]) -> Run {
        let script = format!("{PRELUDE}\n{body}\n");
        let mut argv = vec!["/usr/bin/python3".to_string(), "-c".to_string(), script];
        argv.extend(args.iter().map(|a| a.to_string()));
        self.command(&argv)
    }

    /// Runs `argv` in the sandbox.
    pub fn command<S: AsRef<str>>(self, argv: &[S]) -> Run {
        let state = tempfile::Builder::new()
            .prefix("stockade-escape-state-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let ws = match self.ws {
            Some(ws) => ws,
            None => tempfile::Builder::new()
                .prefix("stockade-escape-ws-")
                .tempdir_in("/tmp")
                .unwrap(),
        };
        for (rel, content) in &self.ws_files {
            let p = ws.path().join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(p, content).unwrap();
        }
        let mut c = Command::new(bin());
        c.arg("--state-dir").arg(state.path()).arg("run");
        if let Some(p) = &self.policy {
            let path = state.path().join("policy.toml");
            std::fs::write(&path, p).unwrap();
            c.arg("--policy").arg(path);
        }
        c.arg("--workspace")
            .arg(ws.path())
            .args(["--timeout", "120s"])
            .args(level_args())
            .args(&self.flags)
            .arg("--")
            .args(argv.iter().map(AsRef::as_ref));
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let raw: Vec<i32> = self.leaked.iter().map(AsRawFd::as_raw_fd).collect();
        assert!(raw.len() <= 8, "at most 8 leaked descriptors");
        if !raw.is_empty() {
            // SAFETY: the closure runs in the forked child before exec and calls only fcntl and
            // dup2, which are async-signal-safe, and uses a fixed-size array (no allocation).
            // Every source is first duplicated to 200 or above, so placing one at 10+i cannot
            // overwrite another source that happened to sit there; dup2 onto 10+i gives a
            // descriptor without FD_CLOEXEC, so it survives into stockade.
            unsafe {
                c.pre_exec(move || {
                    let mut high = [-1i32; 8];
                    for (i, fd) in raw.iter().enumerate() {
                        high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 200);
                        if high[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, fd) in high.iter().take(raw.len()).enumerate() {
                        if libc::dup2(*fd, 10 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let out = c.output().unwrap();
        let (events, events_text) = read_events(state.path());
        let run = Run {
            label: self.label,
            code: out.status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            events,
            events_text,
            ws,
            state,
        };
        assert_ne!(
            run.code,
            Some(127),
            "{}: command not found (exit 127) — a missing binary is a failure, not a block\n{}",
            run.label,
            run.stderr
        );
        assert_ne!(
            run.code,
            Some(125),
            "{}: stockade itself failed (exit 125)\n{}",
            run.label,
            run.stderr
        );
        run.expect_level_recorded();
        run
    }
}

/// Every event of every sandbox under `state` (and the raw text, for leak checks).
pub fn read_events(state: &Path) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    let mut text = String::new();
    if let Ok(rd) = std::fs::read_dir(state.join("sandboxes")) {
        for d in rd.flatten() {
            let t = std::fs::read_to_string(d.path().join("events.jsonl")).unwrap_or_default();
            for l in t.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(l) {
                    events.push(v);
                }
            }
            text.push_str(&t);
        }
    }
    (events, text)
}

impl Run {
    /// The probe's result: the last stdout line as JSON.
    pub fn result(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or_else(|| {
            panic!(
                "{}: the probe printed nothing (exit {:?}, signal {:?})\nstderr: {}",
                self.label, self.code, self.signal, self.stderr
            )
        });
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "{}: probe output is not JSON ({e}): {:?}\nstderr: {}",
                self.label, self.stdout, self.stderr
            )
        })
    }

    /// `result()[key]`, failing with the whole result when the probe did not record it.
    pub fn get(&self, key: &str) -> Value {
        let r = self.result();
        let v = r[key].clone();
        assert!(
            !v.is_null(),
            "{}: probe recorded no {key:?}: {r}",
            self.label
        );
        v
    }

    /// Asserts the probe recorded `key` as `want` (use `ok(..)`/`err(..)`).
    pub fn expect(&self, key: &str, want: Value) -> &Run {
        let got = self.get(key);
        assert_eq!(got, want, "{}: {key}: {}", self.label, self.result());
        self
    }

    /// Asserts the command exited with `code`.
    pub fn expect_exit(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "{}: exit {:?} signal {:?}\nstdout: {}\nstderr: {}",
            self.label,
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn of_type(&self, ty: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == ty).collect()
    }

    /// The first event of `ty` that `pred` accepts; fails listing the whole trail otherwise.
    pub fn event(&self, ty: &str, pred: impl Fn(&Value) -> bool) -> &Value {
        self.events
            .iter()
            .find(|e| e["type"] == ty && pred(e))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no matching {ty} event in the audit trail:\n{}",
                    self.label, self.events_text
                )
            })
    }

    /// `sandbox.created` records the level under test (`enforced.level`): every run checks it, so
    /// a case can never pass at a weaker level than the one asked for.
    pub fn expect_level_recorded(&self) -> &Value {
        let want = level().name();
        self.event("sandbox.created", |e| e["enforced"]["level"] == want)
    }

    /// A seccomp violation event naming `syscall` where the level records them; at the levels
    /// that cannot (see [`seccomp_violations_recorded`]) the trail must hold no syscall
    /// violation at all (and [`Run::expect_level_recorded`] says which level ran): the errno the
    /// case checks is then the only evidence, and it is still the filter's EPERM.
    pub fn expect_syscall_violation(&self, syscall: &str) -> Option<&Value> {
        if seccomp_violations_recorded() {
            return Some(self.event("violation", |e| {
                e["kind"] == "syscall" && e["syscall"] == syscall
            }));
        }
        self.expect_no_syscall_violations();
        None
    }

    /// No `syscall` violation event in the trail (the levels whose denials never reach the
    /// host kernel's audit records), and the trail says which level ran.
    pub fn expect_no_syscall_violations(&self) {
        let v: Vec<&Value> = self
            .of_type("violation")
            .into_iter()
            .filter(|e| e["kind"] == "syscall")
            .collect();
        assert!(
            v.is_empty(),
            "{}: syscall violations at level {} (this level was expected to have none): {v:?}",
            self.label,
            level().name()
        );
        self.expect_level_recorded();
    }

    /// The trail's exec.exited records the probe's exit code (the attempt is written down).
    pub fn expect_exec_recorded(&self) -> &Value {
        let code = self.code.unwrap_or(-1);
        self.event("exec.exited", |e| {
            e["exit_code"] == code || (code > 128 && e["signal"] == code - 128)
        })
    }

    /// The sandbox was torn down cleanly, nothing left over.
    pub fn expect_clean_end(&self) -> &Value {
        self.event("sandbox.destroyed", |e| {
            e["clean"] == true && e["leftovers"] == json!([])
        })
    }
}

/// `ci-subset.txt` (the cases CI runs at microvm, passed as `--exact` filters) names only cases
/// that exist, one of every category at least: a misspelled or renamed name would match no test
/// and silently run nothing. This check is itself in the list, so running the subset runs it.
#[test]
fn ci_subset_names_cases_that_exist() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/escape");
    let list = std::fs::read_to_string(dir.join("ci-subset.txt")).unwrap();
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut categories = std::collections::BTreeSet::new();
    for name in &names {
        let (module, case) = name
            .split_once("::")
            .unwrap_or_else(|| panic!("ci-subset.txt: {name:?} is not module::case"));
        let src = std::fs::read_to_string(dir.join(format!("{module}.rs")))
            .unwrap_or_else(|e| panic!("ci-subset.txt: {name}: no {module}.rs ({e})"));
        assert!(
            src.contains(&format!("#[test]\nfn {case}() {{")),
            "ci-subset.txt: {name} is not a test in {module}.rs"
        );
        categories.insert(module);
    }
    for cat in [
        "filesystem",
        "environment",
        "kernel",
        "network",
        "resources",
    ] {
        assert!(
            categories.contains(cat),
            "ci-subset.txt has no {cat} case: {names:?}"
        );
    }
    assert!(
        names.contains(&"support::ci_subset_names_cases_that_exist"),
        "ci-subset.txt must list this check"
    );
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        names.len(),
        "ci-subset.txt lists a name twice"
    );
}
