//! End-to-end tests of the audit trail (issue 3): each test runs the real `stockade` binary with a
//! fresh state directory, then reads `<state>/sandboxes/<id>/events.jsonl` and the global
//! `<state>/events.jsonl` strictly (every line complete and valid, the two logs byte-identical)
//! and asserts the exact events a run produced. Every claim has a control: the same workload
//! without the flag or limit, showing the event is caused by what the test says.
//!
//! OTLP is checked against a real receiver: a TCP listener on 127.0.0.1 that reads the HTTP
//! request and decodes its body as an `ExportTraceServiceRequest`. No traffic leaves 127.0.0.1.
//! Violation events come from the kernel's audit records (netlink multicast group, /dev/kmsg as
//! the fallback). Runs as root (CI does): cgroups, fanotify and the audit records need it.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};
use stockade_audit::{Change, DestroyReason, Event, EventKind, Limit, ViolationKind};

/// The longest one stockade invocation may take before the test kills it and fails.
const HARD_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Running the binary

fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what}: this end-to-end test needs root (cgroups, fanotify, /dev/kmsg); CI runs it as root"
    );
}

fn tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("stockade-audit-{what}-"))
        .tempdir_in("/tmp")
        .unwrap()
}

/// A value unique to this process and call, safe in a shell word and a file name.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A stockade command with no ambient OTLP configuration.
fn command(args: &[String], cwd: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stockade"));
    c.args(args).current_dir(cwd);
    for v in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "STOCKADE_STATE_DIR",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    what: String,
}

impl Out {
    fn context(&self) -> String {
        format!(
            "{}\n  exit: {:?}\n  stdout: {:?}\n  stderr: {}",
            self.what,
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
    fn expect_code(&self, code: i32) -> &Out {
        assert_eq!(self.code, Some(code), "{}", self.context());
        self
    }
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs stockade with `args`, draining both pipes, killed (and failed) past [`HARD_LIMIT`].
fn stockade(args: &[String], cwd: &Path, env: &[(&str, &str)]) -> Out {
    let what = format!("stockade {args:?}");
    let mut child = command(args, cwd, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + HARD_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past {HARD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
        what,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `stockade --state-dir STATE run --workspace WS FLAGS -- CMD`, from WS.
fn run(state: &Path, ws: &Path, flags: &[&str], cmd: &[&str]) -> Out {
    run_env(state, ws, flags, cmd, &[])
}

fn run_env(state: &Path, ws: &Path, flags: &[&str], cmd: &[&str], env: &[(&str, &str)]) -> Out {
    let mut args = strings(&["--state-dir", path_str(state), "run", "--workspace"]);
    args.push(path_str(ws).into());
    args.extend(strings(flags));
    args.push("--".into());
    args.extend(strings(cmd));
    stockade(&args, ws, env)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reading the trail

/// One sandbox's trail, read strictly.
struct Trail {
    id: String,
    raw: String,
    events: Vec<Event>,
}

/// The only sandbox under `state`: its log parsed line by line (no torn or invalid line is
/// tolerated), the global log byte-identical to it, and the invariants every event keeps:
/// schema_version 1, seq 1..=n, one sandbox id (16 hex, the directory's name), `at` RFC 3339
/// UTC and non-decreasing, `exec_id` "e1" exactly on exec-scoped events.
fn trail(state: &Path) -> Trail {
    let dirs = sandbox_dirs(state);
    assert_eq!(dirs.len(), 1, "one sandbox dir under {state:?}: {dirs:?}");
    let id = dirs[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "sandbox id is 16 lowercase hex: {id:?}"
    );
    let raw = std::fs::read_to_string(dirs[0].join("events.jsonl")).unwrap();
    let global = std::fs::read_to_string(state.join("events.jsonl")).unwrap();
    assert_eq!(
        global, raw,
        "the global log holds exactly the sandbox's lines"
    );
    assert!(
        !raw.is_empty(),
        "sandbox {id}'s log is empty: not one event was recorded"
    );
    assert!(raw.ends_with('\n'), "last line complete: {raw:?}");
    let events: Vec<Event> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    let mut last = SystemTime::UNIX_EPOCH;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.schema_version, 1, "{e:?}");
        assert_eq!(e.seq, i as u64 + 1, "seq runs 1..=n: {raw}");
        assert_eq!(e.sandbox_id, id, "{e:?}");
        let at = humantime::parse_rfc3339(&e.at).unwrap_or_else(|x| panic!("{e:?}: {x}"));
        assert!(at >= last, "`at` goes back at seq {}: {raw}", e.seq);
        last = at;
        let exec_scoped = !matches!(
            e.kind,
            EventKind::SandboxCreated { .. } | EventKind::SandboxDestroyed { .. }
        );
        let want = exec_scoped.then(|| "e1".to_string());
        assert_eq!(e.exec_id, want, "exec_id of {e:?}");
    }
    Trail { id, raw, events }
}

fn sandbox_dirs(state: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(state.join("sandboxes")) {
        Ok(rd) => rd.map(|d| d.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{state:?}: {e}"),
    }
}

impl Trail {
    fn types(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.kind.type_name()).collect()
    }
    fn all(&self, ty: &str) -> Vec<&EventKind> {
        self.events
            .iter()
            .filter(|e| e.kind.type_name() == ty)
            .map(|e| &e.kind)
            .collect()
    }
    /// The only event of type `ty`.
    fn one(&self, ty: &str) -> &EventKind {
        let all = self.all(ty);
        assert_eq!(all.len(), 1, "one {ty}: {}", self.raw);
        all[0]
    }
    fn expect_types(&self, want: &[&str]) {
        assert_eq!(self.types(), want, "event types: {}", self.raw);
    }
    fn exited(&self) -> (Option<i32>, Option<i32>, Option<Limit>, u64) {
        match self.one("exec.exited") {
            EventKind::ExecExited {
                exit_code,
                signal,
                limit,
                output_bytes,
                ..
            } => (*exit_code, *signal, *limit, *output_bytes),
            _ => unreachable!(),
        }
    }
    fn destroyed(&self) -> (DestroyReason, bool, Vec<String>, Option<String>) {
        match self.one("sandbox.destroyed") {
            EventKind::SandboxDestroyed {
                reason,
                clean,
                leftovers,
                error,
                ..
            } => (*reason, *clean, leftovers.clone(), error.clone()),
            _ => unreachable!(),
        }
    }
    fn expect_clean_end(&self, reason: DestroyReason) {
        assert_eq!(
            self.destroyed(),
            (reason, true, Vec::new(), None),
            "{}",
            self.raw
        );
    }
}

/// Every file under `dir`, recursively, with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for d in rd {
        let p = d.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Polls `f` every 10 ms until it holds or `limit` passes.
fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
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

// ---------------------------------------------------------------------------------------------
// A real OTLP/HTTP receiver

struct Received {
    head: String,
    body: Vec<u8>,
}

/// Serves one connection on 127.0.0.1: reads one request, answers 200 with an empty protobuf
/// body, then stops; gives up waiting for a connection after 60 s.
fn receiver() -> (String, mpsc::Receiver<Received>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let Some(req) = read_request(&mut stream) else {
            return;
        };
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let _ = tx.send(req);
    });
    (url, rx)
}

/// One HTTP/1.1 request: the head up to the blank line, then exactly Content-Length bytes.
fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("the exporter sends a Content-Length body");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received { head, body })
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> &'a Value {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .unwrap_or_else(|| panic!("no attribute {key} in {attrs:?}"))
}

fn sval(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// The two spans of a one-exec sandbox: (sandbox, exec), checked to form one trace.
fn two_spans(req: &ExportTraceServiceRequest) -> (&Span, &Span) {
    assert_eq!(req.resource_spans.len(), 1, "{req:?}");
    let rs = &req.resource_spans[0];
    assert_eq!(rs.scope_spans.len(), 1, "{req:?}");
    let spans = &rs.scope_spans[0].spans;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sandbox", "exec"], "{req:?}");
    let (root, exec) = (&spans[0], &spans[1]);
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(root.trace_id.len(), 16);
    assert_ne!(root.trace_id, vec![0; 16]);
    assert_eq!(exec.trace_id, root.trace_id, "one trace per sandbox");
    assert_eq!(
        exec.parent_span_id, root.span_id,
        "exec is the sandbox's child"
    );
    (root, exec)
}

/// (name, stockade.seq) of a span's events.
fn span_events(sp: &Span) -> Vec<(String, u64)> {
    sp.events
        .iter()
        .map(|ev| match attr(&ev.attributes, "stockade.seq") {
            Value::IntValue(n) => (ev.name.clone(), u64::try_from(*n).unwrap()),
            other => panic!("{other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. A normal run

fn cgroup_version() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    }
}

#[test]
fn a_normal_run_records_the_exact_lifecycle() {
    require_root("audit trail");
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let script = "echo hi > new.txt; exit 3";
    let t0 = SystemTime::now();
    let out = run(state.path(), ws.path(), &[], &["sh", "-c", script]);
    let t1 = SystemTime::now();
    out.expect_code(3);
    let t = trail(state.path());
    t.expect_types(&[
        "sandbox.created",
        "exec.started",
        "file.changed",
        "exec.exited",
        "sandbox.destroyed",
    ]);
    // `at` is the wall clock of the run (microseconds, truncated).
    for e in &t.events {
        let at = humantime::parse_rfc3339(&e.at).unwrap();
        assert!(
            at + Duration::from_micros(1) >= t0 && at <= t1,
            "{e:?} outside {t0:?}..{t1:?}"
        );
        assert!(e.at.ends_with('Z'), "UTC: {e:?}");
    }

    let EventKind::SandboxCreated {
        policy_digest,
        workspace,
        workspace_mode,
        enforced: en,
    } = t.one("sandbox.created")
    else {
        unreachable!()
    };
    assert!(
        policy_digest.len() == 64 && policy_digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "policy digest is a sha256 in hex: {policy_digest:?}"
    );
    assert_eq!(workspace, path_str(&ws.path().canonicalize().unwrap()));
    assert_eq!(workspace_mode, "rw");
    assert_eq!(en.level, "container");
    for ns in ["user", "mount", "pid", "net"] {
        assert!(en.namespaces.iter().any(|n| n == ns), "{ns}: {en:?}");
    }
    assert!(en.seccomp.contains("bpf"), "seccomp in force: {en:?}");
    assert_eq!(en.landlock, "full");
    assert!(en.landlock_abi >= 1, "{en:?}");
    let mut controllers: Vec<&str> = en.cgroups.iter().map(|c| c.controller.as_str()).collect();
    controllers.sort_unstable();
    controllers.retain(|c| *c != "cpuacct");
    assert_eq!(controllers, ["cpu", "memory", "pids"], "{en:?}");
    assert!(
        en.cgroups.iter().all(|c| c.version == cgroup_version()),
        "{en:?}"
    );
    assert!(en.no_new_privs && en.capabilities_dropped, "{en:?}");
    assert_eq!((en.uid, en.gid), (1000, 1000));
    assert!(en.weakenings.is_empty(), "{en:?}");

    let EventKind::ExecStarted {
        argv,
        cwd,
        env_names,
    } = t.one("exec.started")
    else {
        unreachable!()
    };
    assert_eq!(argv, &strings(&["sh", "-c", script]));
    assert_eq!(cwd, workspace);
    assert!(env_names.iter().any(|n| n == "PATH"), "{env_names:?}");

    assert_eq!(
        t.one("file.changed"),
        &EventKind::FileChanged {
            path: "new.txt".into(),
            change: Change::Created,
            size: 3
        }
    );
    let EventKind::ExecExited {
        exit_code,
        signal,
        duration_ms,
        cpu_time_ms,
        peak_memory_bytes,
        output_bytes,
        limit,
    } = t.one("exec.exited")
    else {
        unreachable!()
    };
    assert_eq!(
        (*exit_code, *signal, *limit, *output_bytes),
        (Some(3), None, None, 0)
    );
    let wall = u64::try_from(t1.duration_since(t0).unwrap().as_millis()).unwrap();
    assert!(*duration_ms <= wall, "{duration_ms} ms > wall {wall} ms");
    assert!(cpu_time_ms.is_some(), "{}", t.raw);
    assert!(peak_memory_bytes.is_some_and(|b| b > 0), "{}", t.raw);
    t.expect_clean_end(DestroyReason::Exit);
    let EventKind::SandboxDestroyed { duration_ms: d, .. } = t.one("sandbox.destroyed") else {
        unreachable!()
    };
    assert!(*d >= *duration_ms && *d <= wall, "{d} ms: {}", t.raw);

    // The logs hold argv: readable by their owner only.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = state.path().join("sandboxes").join(&t.id);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("events.jsonl")), 0o600);
    assert_eq!(mode(&state.path().join("events.jsonl")), 0o600);
}

// ---------------------------------------------------------------------------------------------
// 2. Environment: names, never values

#[test]
fn env_names_are_recorded_never_their_values() {
    require_root("audit trail");
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let value = unique("canaryvalue");
    let env_flag = format!("CANARY_VAR={value}");
    // --state-dir after `run` this time: it is a global flag.
    let args = strings(&[
        "run",
        "--state-dir",
        path_str(state.path()),
        "--workspace",
        path_str(ws.path()),
        "--env",
        &env_flag,
        "--",
        "sh",
        "-c",
        r#"printf %s "$CANARY_VAR" > seen.txt"#,
    ]);
    let out = stockade(&args, ws.path(), &[]);
    out.expect_code(0);
    // Control: the value really was inside the sandbox.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("seen.txt")).unwrap(),
        value
    );
    let t = trail(state.path());
    let EventKind::ExecStarted { env_names, .. } = t.one("exec.started") else {
        unreachable!()
    };
    let mut names = env_names.clone();
    names.sort();
    assert_eq!(
        names,
        ["CANARY_VAR", "HOME", "LANG", "PATH", "TERM", "USER"],
        "{}",
        t.raw
    );
    assert_eq!(
        t.one("file.changed"),
        &EventKind::FileChanged {
            path: "seen.txt".into(),
            change: Change::Created,
            size: value.len() as u64
        }
    );
    let files = all_files(state.path());
    assert_eq!(files.len(), 2, "the two logs: {files:?}");
    for (p, bytes) in &files {
        assert!(!contains(bytes, &value), "{p:?} holds the env value");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Redaction in every sink

#[test]
fn redacted_values_reach_no_sink() {
    require_root("audit trail");
    let s1 = unique("tokA");
    let s2 = unique("tokB");
    let script = format!("echo {s1} {s2} > out.txt; touch {s1}.txt {s2}.txt");
    let env_flag = format!("TOKEN={s1}");
    let host_env = [("HOST_TOKEN", s2.as_str())];

    // Control: without --redact-env both values are in the log as they were given.
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    run_env(
        state.path(),
        ws.path(),
        &["--env", &env_flag, "--env-pass", "HOST_TOKEN"],
        &["sh", "-c", &script],
        &host_env,
    )
    .expect_code(0);
    let t = trail(state.path());
    let EventKind::ExecStarted { argv, .. } = t.one("exec.started") else {
        unreachable!()
    };
    assert_eq!(argv[2], script, "control: argv recorded as given");
    let paths: Vec<String> = t
        .all("file.changed")
        .iter()
        .map(|k| match k {
            EventKind::FileChanged { path, .. } => path.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert!(paths.contains(&format!("{s1}.txt")), "control: {paths:?}");

    // With --redact-env: every sink is clean of both values, in the fields that held them.
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let (url, rx) = receiver();
    let out = run_env(
        state.path(),
        ws.path(),
        &[
            "--env",
            &env_flag,
            "--env-pass",
            "HOST_TOKEN",
            "--redact-env",
            "TOKEN",
            "--redact-env",
            "HOST_TOKEN",
            "--otlp-endpoint",
            &url,
        ],
        &["sh", "-c", &script],
        &host_env,
    );
    out.expect_code(0);
    // The sandbox did see the values (they are in what it wrote).
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        format!("{s1} {s2}\n")
    );
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("no OTLP request arrived: {}", out.context()));
    let mut sinks: Vec<(String, Vec<u8>)> = all_files(state.path())
        .into_iter()
        .map(|(p, b)| (p.display().to_string(), b))
        .collect();
    assert_eq!(sinks.len(), 2, "the two logs: {sinks:?}");
    sinks.push(("OTLP body".into(), got.body.clone()));
    sinks.push(("stockade stderr".into(), out.stderr.clone().into_bytes()));
    sinks.push(("stockade stdout".into(), out.stdout.clone()));
    for (name, bytes) in &sinks {
        for s in [&s1, &s2] {
            assert!(!contains(bytes, s), "{name} holds the secret {s}");
        }
    }
    let t = trail(state.path());
    let EventKind::ExecStarted { argv, .. } = t.one("exec.started") else {
        unreachable!()
    };
    let redacted_script =
        "echo [REDACTED] [REDACTED] > out.txt; touch [REDACTED].txt [REDACTED].txt";
    assert_eq!(argv, &strings(&["sh", "-c", redacted_script]));
    let mut changed: Vec<&EventKind> = t.all("file.changed");
    changed.sort_by_key(|k| format!("{k:?}"));
    let file = |path: &str, size| EventKind::FileChanged {
        path: path.into(),
        change: Change::Created,
        size,
    };
    assert_eq!(
        changed,
        [
            &file("[REDACTED].txt", 0),
            &file("[REDACTED].txt", 0),
            &file("out.txt", (s1.len() + s2.len() + 2) as u64)
        ],
        "{}",
        t.raw
    );
    // The OTLP copy carries the redacted argv too.
    let req = ExportTraceServiceRequest::decode(got.body.as_slice()).unwrap();
    let (_, exec) = two_spans(&req);
    let Value::ArrayValue(a) = attr(&exec.attributes, "stockade.argv") else {
        panic!("{exec:?}")
    };
    assert_eq!(a.values[2].value, Some(sval(redacted_script)));
}

// ---------------------------------------------------------------------------------------------
// 4. Limits

fn limit_hit(t: &Trail) -> (Limit, String, String) {
    match t.one("limit.hit") {
        EventKind::LimitHit {
            limit,
            value,
            detail,
        } => (*limit, value.clone(), detail.clone()),
        _ => unreachable!(),
    }
}

const LIMITED: [&str; 5] = [
    "sandbox.created",
    "exec.started",
    "limit.hit",
    "exec.exited",
    "sandbox.destroyed",
];
const UNLIMITED: [&str; 4] = [
    "sandbox.created",
    "exec.started",
    "exec.exited",
    "sandbox.destroyed",
];

#[test]
fn timeout_is_a_limit_hit_and_ends_the_sandbox_by_timeout() {
    require_root("timeout");
    let cmd = ["sleep", "3"];
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    run(state.path(), ws.path(), &["--timeout", "30s"], &cmd).expect_code(0);
    let t = trail(state.path());
    t.expect_types(&UNLIMITED);
    assert_eq!(t.exited(), (Some(0), None, None, 0), "control: {}", t.raw);
    t.expect_clean_end(DestroyReason::Exit);

    let (state, ws) = (tempdir("state"), tempdir("ws"));
    run(state.path(), ws.path(), &["--timeout", "1s"], &cmd).expect_code(137);
    let t = trail(state.path());
    t.expect_types(&LIMITED);
    assert_eq!(
        limit_hit(&t),
        (
            Limit::Timeout,
            "1s".into(),
            "killed: timeout 1s reached".into()
        )
    );
    assert_eq!(t.exited(), (None, Some(9), Some(Limit::Timeout), 0));
    let EventKind::ExecExited { duration_ms, .. } = t.one("exec.exited") else {
        unreachable!()
    };
    // The timeout clock starts with the launcher, a little before exec.started: the command's
    // own duration may be a few ms under 1 s, the sandbox's is not.
    assert!(
        (500..2900).contains(duration_ms),
        "ended by the 1 s timeout, not by sleep 3: {}",
        t.raw
    );
    let EventKind::SandboxDestroyed { duration_ms, .. } = t.one("sandbox.destroyed") else {
        unreachable!()
    };
    assert!(*duration_ms >= 1000, "{}", t.raw);
    t.expect_clean_end(DestroyReason::Timeout);
}

const ALLOC_2GIB: &str = r#"
b = bytearray(2 << 30)
for i in range(0, len(b), 4096):
    b[i] = 1
print("touched", flush=True)
"#;

#[test]
fn memory_limit_is_a_limit_hit_and_ends_the_sandbox_by_limit() {
    require_root("memory limit");
    let cmd = ["python3", "-c", ALLOC_2GIB];
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(state.path(), ws.path(), &["--memory", "3GiB"], &cmd);
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "touched\n", "control: {}", out.context());
    let t = trail(state.path());
    t.expect_types(&UNLIMITED);
    assert_eq!(t.exited(), (Some(0), None, None, 8), "control: {}", t.raw);
    t.expect_clean_end(DestroyReason::Exit);

    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(state.path(), ws.path(), &["--memory", "256MiB"], &cmd);
    out.expect_code(137);
    assert!(out.stdout.is_empty(), "{}", out.context());
    let t = trail(state.path());
    t.expect_types(&LIMITED);
    assert_eq!(
        limit_hit(&t),
        (
            Limit::Memory,
            "256MiB".into(),
            "killed: memory limit 256MiB reached".into()
        )
    );
    assert_eq!(t.exited(), (None, Some(9), Some(Limit::Memory), 0));
    let EventKind::ExecExited {
        peak_memory_bytes, ..
    } = t.one("exec.exited")
    else {
        unreachable!()
    };
    assert!(
        peak_memory_bytes.is_some_and(|b| b <= 256 << 20),
        "{}",
        t.raw
    );
    t.expect_clean_end(DestroyReason::Limit);
}

#[test]
fn output_limit_is_a_limit_hit_and_ends_the_sandbox_by_limit() {
    require_root("output limit");
    // No pipe: the command's stderr stays empty, so output_bytes is exactly its stdout. The
    // sleep keeps it alive after the output, so the stop, not its own exit, ends it.
    let cmd = ["sh", "-c", "head -c 100000 /dev/zero; sleep 1"];
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(state.path(), ws.path(), &["--max-output", "1MiB"], &cmd);
    out.expect_code(0);
    assert_eq!(out.stdout.len(), 100_000, "control");
    assert_eq!(out.stderr, "", "control");
    let t = trail(state.path());
    t.expect_types(&UNLIMITED);
    assert_eq!(t.exited(), (Some(0), None, None, 100_000), "{}", t.raw);
    t.expect_clean_end(DestroyReason::Exit);

    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(state.path(), ws.path(), &["--max-output", "10KiB"], &cmd);
    out.expect_code(137);
    assert_eq!(out.stdout.len(), 10 * 1024, "{}", out.context());
    let t = trail(state.path());
    t.expect_types(&LIMITED);
    assert_eq!(
        limit_hit(&t),
        (
            Limit::Output,
            "10KiB".into(),
            "stopped: output limit 10KiB reached".into()
        )
    );
    assert_eq!(
        t.exited(),
        (None, Some(9), Some(Limit::Output), 10 * 1024),
        "{}",
        t.raw
    );
    t.expect_clean_end(DestroyReason::Limit);
}

/// Forks sleeping children up to 100; prints "errno E N" at the first refused fork, or "ok N".
const FORK_BOMB: &str = r#"
import os, time
n = 0
try:
    while n < 100:
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        n += 1
    print("ok", n, flush=True)
except OSError as e:
    print("errno", e.errno, n, flush=True)
"#;

#[test]
fn pids_limit_is_a_limit_hit_counting_refused_creations() {
    require_root("pids limit");
    let cmd = ["python3", "-c", FORK_BOMB];
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(state.path(), ws.path(), &["--pids", "256"], &cmd);
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "ok 100\n", "control: {}", out.context());
    let t = trail(state.path());
    t.expect_types(&UNLIMITED);
    t.expect_clean_end(DestroyReason::Exit);

    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(state.path(), ws.path(), &["--pids", "32"], &cmd);
    out.expect_code(0);
    assert!(
        out.stdout_str().starts_with("errno 11 "),
        "fork refused with EAGAIN: {}",
        out.context()
    );
    let t = trail(state.path());
    t.expect_types(&LIMITED);
    let (limit, value, detail) = limit_hit(&t);
    assert_eq!((limit, value.as_str()), (Limit::Pids, "32"));
    let refused: u64 = detail
        .strip_suffix(" process creations refused")
        .unwrap_or_else(|| panic!("detail names refused creations: {detail:?}"))
        .parse()
        .unwrap();
    assert!(refused >= 1, "{detail}");
    // The same count as the run's own message.
    let line = format!("stockade: limit: pids limit 32 reached ({detail})");
    assert!(out.stderr.lines().any(|l| l == line), "{}", out.context());
    // The command survived the refusal and exited by itself.
    assert_eq!(t.exited().0, Some(0));
    assert_eq!(t.exited().2, None);
    t.expect_clean_end(DestroyReason::Exit);
}

// ---------------------------------------------------------------------------------------------
// 5. Seccomp violations

/// Sets its comm to argv[1] (so the kernel's record names this run alone), then calls
/// unshare(CLONE_NEWUSER) through ctypes; prints the result and errno.
const UNSHARE: &str = "import ctypes, sys\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)\n\
    r = libc.syscall(272, 0x10000000)\n\
    print(r, ctypes.get_errno(), flush=True)\n";

/// A comm of 15 characters unique to this call.
fn unique_comm() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let v =
        nanos ^ (u64::from(std::process::id()) << 40) ^ (N.fetch_add(1, Ordering::SeqCst) << 32);
    format!("aud{:012}", v % 1_000_000_000_000)
}

/// Runs `cmd(comm)` under the default policy once; returns the run and its trail. The violation
/// must be in the trail: the kernel's audit records are read from the netlink multicast group,
/// which is not rate-limited (unlike /dev/kmsg), so there is no retry.
fn denied_run(cmd: impl Fn(&str, &Path) -> Vec<String>) -> (Out, Trail, String) {
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let comm = unique_comm();
    let argv = cmd(&comm, ws.path());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = run(state.path(), ws.path(), &[], &argv);
    (out, trail(state.path()), comm)
}

fn expect_unshare_violation(t: &Trail, comm: &str) {
    t.expect_types(&[
        "sandbox.created",
        "exec.started",
        "violation",
        "exec.exited",
        "sandbox.destroyed",
    ]);
    let EventKind::Violation {
        kind,
        detail,
        syscall,
        path,
        ..
    } = t.one("violation")
    else {
        unreachable!()
    };
    assert_eq!(*kind, ViolationKind::Syscall);
    assert_eq!(syscall.as_deref(), Some("unshare"));
    assert_eq!(*path, None);
    assert!(
        detail.starts_with("seccomp denied unshare (pid ")
            && detail.ends_with(&format!(" comm {comm})")),
        "{detail}"
    );
    t.expect_clean_end(DestroyReason::Exit);
}

#[test]
fn a_denied_syscall_is_a_violation_event() {
    require_root("violation events (kernel audit records, unique host uid)");
    let python = |comm: &str, _: &Path| strings(&["python3", "-c", UNSHARE, comm]);
    // Control: without seccomp the same call succeeds; the kernel reports and the trail records
    // nothing.
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let comm = unique_comm();
    let out = run(
        state.path(),
        ws.path(),
        &["--seccomp", "off", "--allow-weaker-isolation"],
        &["python3", "-c", UNSHARE, &comm],
    );
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "0 0\n", "control: {}", out.context());
    let t = trail(state.path());
    t.expect_types(&UNLIMITED);
    let EventKind::SandboxCreated { enforced, .. } = t.one("sandbox.created") else {
        unreachable!()
    };
    assert_eq!(enforced.seccomp, "off");
    assert_eq!(
        enforced.weakenings,
        ["weaker isolation: seccomp disabled by policy"]
    );

    let (out, t, comm) = denied_run(python);
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "-1 1\n", "EPERM: {}", out.context());
    expect_unshare_violation(&t, &comm);
}

#[test]
fn a_syscall_denied_in_the_first_milliseconds_is_a_violation_event_too() {
    require_root("violation events (kernel audit records, unique host uid)");
    // unshare(1) through a symlink named `comm` (the kernel names the task after it): the denied
    // call comes a millisecond after exec, not after python's start-up.
    let (out, t, comm) = denied_run(|comm, ws| {
        std::os::unix::fs::symlink("/usr/bin/unshare", ws.join(comm)).unwrap();
        strings(&[&format!("./{comm}"), "-U", "true"])
    });
    out.expect_code(1);
    assert!(
        out.stderr
            .contains(&format!("{comm}: unshare failed: Operation not permitted")),
        "EPERM: {}",
        out.context()
    );
    expect_unshare_violation(&t, &comm);
}

#[test]
fn a_burst_of_denials_is_recorded_whole() {
    require_root("violation events (kernel audit records, unique host uid)");
    // 40 denied calls in a few milliseconds: /dev/kmsg would print about 10 of them (the kernel's
    // printk rate limit); the netlink group delivers every one.
    const BURST: &str = "import ctypes, sys\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)\n\
        rs = [(libc.syscall(272, 0x10000000), ctypes.get_errno()) for _ in range(40)]\n\
        print(len([r for r in rs if r == (-1, 1)]), flush=True)\n";
    let (out, t, comm) = denied_run(|comm, _| strings(&["python3", "-c", BURST, comm]));
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "40\n", "40 EPERMs: {}", out.context());
    let n = t
        .events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::Violation { syscall, detail, .. }
                if syscall.as_deref() == Some("unshare") && detail.ends_with(&format!(" comm {comm})")))
        })
        .count();
    assert_eq!(n, 40, "one violation event per denied call");
}

// ---------------------------------------------------------------------------------------------
// 6. Reads of sensitive files

#[test]
fn reading_a_sensitive_file_is_a_file_read_event() {
    require_root("file.read (fanotify)");
    let fixture = || {
        let ws = tempdir("ws");
        std::fs::write(ws.path().join(".env"), "API_KEY=abc\n").unwrap();
        std::fs::write(ws.path().join("other.txt"), "plain\n").unwrap();
        ws
    };
    // Control: a file not marked sensitive is read without an event.
    let (state, ws) = (tempdir("state"), fixture());
    let out = run(
        state.path(),
        ws.path(),
        &["--sensitive", ".env"],
        &["cat", "other.txt"],
    );
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "plain\n");
    trail(state.path()).expect_types(&UNLIMITED);

    let (state, ws) = (tempdir("state"), fixture());
    let out = run(
        state.path(),
        ws.path(),
        &["--sensitive", ".env"],
        &["cat", ".env"],
    );
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "API_KEY=abc\n");
    let t = trail(state.path());
    t.expect_types(&[
        "sandbox.created",
        "exec.started",
        "file.read",
        "exec.exited",
        "sandbox.destroyed",
    ]);
    assert_eq!(
        t.one("file.read"),
        &EventKind::FileRead {
            path: ".env".into()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// 7. File changes: overlay layer and rw snapshot

const CHANGES: &str = "printf new > new.txt; printf more >> mod.txt; rm del.txt; mkdir sub; printf abcdef > sub/f.txt";

fn change_fixture() -> tempfile::TempDir {
    let ws = tempdir("ws");
    for (f, c) in [
        ("keep.txt", "keep\n"),
        ("mod.txt", "mod\n"),
        ("del.txt", "del\n"),
    ] {
        std::fs::write(ws.path().join(f), c).unwrap();
    }
    ws
}

fn expected_changes() -> Vec<EventKind> {
    let ch = |path: &str, change, size| EventKind::FileChanged {
        path: path.into(),
        change,
        size,
    };
    vec![
        ch("del.txt", Change::Deleted, 0),
        ch("mod.txt", Change::Modified, 8),
        ch("new.txt", Change::Created, 3),
        ch("sub", Change::Created, 0),
        ch("sub/f.txt", Change::Created, 6),
    ]
}

fn sorted_changes(t: &Trail) -> Vec<EventKind> {
    let mut v: Vec<EventKind> = t.all("file.changed").into_iter().cloned().collect();
    v.sort_by_key(|k| match k {
        EventKind::FileChanged { path, .. } => path.clone(),
        _ => unreachable!(),
    });
    v
}

#[test]
fn overlay_and_rw_changes_are_file_changed_events() {
    require_root("audit trail");
    // overlay: the events, and the host untouched.
    let (state, ws) = (tempdir("state"), change_fixture());
    let before = all_files(ws.path());
    run(
        state.path(),
        ws.path(),
        &["--workspace-mode", "overlay"],
        &["sh", "-c", CHANGES],
    )
    .expect_code(0);
    assert_eq!(
        all_files(ws.path()),
        before,
        "overlay leaves the host as it was"
    );
    assert!(!ws.path().join("sub").exists());
    let t = trail(state.path());
    let EventKind::SandboxCreated { workspace_mode, .. } = t.one("sandbox.created") else {
        unreachable!()
    };
    assert_eq!(workspace_mode, "overlay");
    assert_eq!(sorted_changes(&t), expected_changes(), "{}", t.raw);
    t.expect_types(
        &[
            &["sandbox.created", "exec.started"][..],
            &["file.changed"; 5],
            &["exec.exited", "sandbox.destroyed"],
        ]
        .concat(),
    );

    // Control, rw: the same script gives the same events, and the host did change.
    let (state, ws) = (tempdir("state"), change_fixture());
    run(state.path(), ws.path(), &[], &["sh", "-c", CHANGES]).expect_code(0);
    let t = trail(state.path());
    assert_eq!(sorted_changes(&t), expected_changes(), "{}", t.raw);
    let read = |f: &str| std::fs::read_to_string(ws.path().join(f)).unwrap();
    assert_eq!(
        (read("new.txt"), read("mod.txt"), read("sub/f.txt")),
        ("new".into(), "mod\nmore".into(), "abcdef".into())
    );
    assert!(!ws.path().join("del.txt").exists());
    // A file the command did not touch is not reported.
    assert!(!t.raw.contains("keep.txt"), "{}", t.raw);
}

// ---------------------------------------------------------------------------------------------
// 8. A sandbox that cannot be built

#[test]
fn a_setup_error_ends_the_trail_with_destroyed_error() {
    require_root("audit trail");
    // Control: an existing extra mount builds and runs.
    let (state, ws, mnt) = (tempdir("state"), tempdir("ws"), tempdir("mnt"));
    run(
        state.path(),
        ws.path(),
        &["--workspace-mode", "rw", "--mount", path_str(mnt.path())],
        &["true"],
    )
    .expect_code(0);
    let t = trail(state.path());
    t.expect_types(&UNLIMITED);
    t.expect_clean_end(DestroyReason::Exit);

    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let out = run(
        state.path(),
        ws.path(),
        &["--workspace-mode", "rw", "--mount", "/nonexistent-path-xyz"],
        &["sh", "-c", "touch ran"],
    );
    out.expect_code(125);
    assert!(!ws.path().join("ran").exists(), "the command never ran");
    let t = trail(state.path());
    // Nothing was created and nothing executed: the trail is the one closing event.
    t.expect_types(&["sandbox.destroyed"]);
    let (reason, clean, leftovers, error) = t.destroyed();
    assert_eq!(
        (reason, clean, leftovers),
        (DestroyReason::Error, true, vec![])
    );
    let error = error.unwrap_or_else(|| panic!("destroyed carries the error: {}", t.raw));
    assert!(error.contains("/nonexistent-path-xyz"), "{error}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l == format!("stockade: {error}")),
        "the recorded error is the one reported: {}",
        out.context()
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Crash durability

/// Kills and reaps the child if the test ends early.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn procs_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| contains(&c, marker))
        })
        .collect()
}

#[test]
fn events_written_before_a_sigkill_of_stockade_survive_whole() {
    require_root("audit trail");
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let marker = unique("stockade-audit-sleeper-");
    let mut args = strings(&["--state-dir", path_str(state.path()), "run", "--"]);
    args.extend(strings(&["sh", "-c", "touch ready; sleep 300", &marker]));
    let mut child = Reaped(
        command(&args, ws.path(), &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        poll(Duration::from_secs(30), || ws.path().join("ready").exists()),
        "the sandbox never wrote `ready`"
    );
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let t = trail(state.path());
    t.expect_types(&["sandbox.created", "exec.started"]);
    let EventKind::ExecStarted { argv, .. } = t.one("exec.started") else {
        unreachable!()
    };
    assert_eq!(argv[3], marker);
    // Hygiene: the sandbox went with stockade.
    assert!(
        poll(Duration::from_secs(10), || procs_with(&marker).is_empty()),
        "sandbox processes outlived stockade: {:?}",
        procs_with(&marker)
    );
}

// ---------------------------------------------------------------------------------------------
// 10. --no-audit

#[test]
fn no_audit_writes_nothing_and_says_so() {
    require_root("audit trail");
    // Control: audited, one sandbox dir, no notice, the trace exported.
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let (url, rx) = receiver();
    let out = run(
        state.path(),
        ws.path(),
        &["--otlp-endpoint", &url],
        &["true"],
    );
    out.expect_code(0);
    assert!(!out.stderr.contains("audit trail"), "{}", out.context());
    assert_eq!(sandbox_dirs(state.path()).len(), 1);
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok(), "control");

    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let (url, rx) = receiver();
    let out = run(
        state.path(),
        ws.path(),
        &["--no-audit", "--otlp-endpoint", &url],
        &["sh", "-c", "echo hi > new.txt"],
    );
    out.expect_code(0);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("new.txt")).unwrap(),
        "hi\n",
        "the command ran"
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("stockade: ") && l.contains("audit trail disabled")),
        "{}",
        out.context()
    );
    let left: Vec<PathBuf> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert!(
        left.is_empty(),
        "nothing written to the state dir: {left:?}"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing exported"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. OTLP end to end

#[test]
fn otlp_export_delivers_the_run_as_one_decoded_trace() {
    require_root("audit trail");
    let script = ["sh", "-c", "echo hi > new.txt; exit 7"];
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let (url, rx) = receiver();
    let out = run(state.path(), ws.path(), &["--otlp-endpoint", &url], &script);
    out.expect_code(7);
    assert!(!out.stderr.contains("otlp"), "{}", out.context());
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("no OTLP request: {}", out.context()));
    assert_eq!(
        got.head.lines().next(),
        Some("POST /v1/traces HTTP/1.1"),
        "{}",
        got.head
    );
    assert!(
        got.head
            .to_ascii_lowercase()
            .contains("content-type: application/x-protobuf\r\n"),
        "{}",
        got.head
    );
    let t = trail(state.path());
    let req = ExportTraceServiceRequest::decode(got.body.as_slice()).unwrap();
    let (root, exec) = two_spans(&req);
    assert_eq!(attr(&root.attributes, "stockade.sandbox_id"), &sval(&t.id));
    assert_eq!(attr(&exec.attributes, "stockade.exec_id"), &sval("e1"));
    assert_eq!(
        attr(&exec.attributes, "stockade.exit_code"),
        &Value::IntValue(7)
    );
    // Every logged event is a span event, with the log's seq, on the span it belongs to.
    let logged = |pick: fn(&Event) -> bool| -> Vec<(String, u64)> {
        t.events
            .iter()
            .filter(|e| pick(e))
            .map(|e| (e.kind.type_name().to_string(), e.seq))
            .collect()
    };
    assert_eq!(span_events(root), logged(|e| e.exec_id.is_none()));
    assert_eq!(span_events(exec), logged(|e| e.exec_id.is_some()));
    let names: Vec<String> = span_events(exec).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["exec.started", "file.changed", "exec.exited"]);

    // Control: with the receiver down the run keeps the command's status, says so, and the log
    // is whole.
    let (state, ws) = (tempdir("state"), tempdir("ws"));
    let dead = dead_url();
    let out = run(
        state.path(),
        ws.path(),
        &["--otlp-endpoint", &dead],
        &script,
    );
    out.expect_code(7);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("stockade: warning: otlp export failed: ")
                && l.contains(&format!("{dead}/v1/traces"))),
        "{}",
        out.context()
    );
    let t = trail(state.path());
    t.expect_types(&[
        "sandbox.created",
        "exec.started",
        "file.changed",
        "exec.exited",
        "sandbox.destroyed",
    ]);
    t.expect_clean_end(DestroyReason::Exit);
}
