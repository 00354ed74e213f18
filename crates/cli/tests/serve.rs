//! End-to-end tests of `stockade serve`'s core (issue 7): the real binary with a fresh state
//! directory on a free port of 127.0.0.1, spoken to over plain HTTP/1.1.
//!
//! Covered: API keys (401 without, with a wrong or revoked key; 200 with the right one), create,
//! list, get, kill, owner isolation, inline policy errors with line:col, the maximum timeout,
//! TTL expiry (audit: limit.hit + sandbox.destroyed reason timeout; cgroup gone), quotas (429),
//! templates, the warm pool (hand-out from the pool, never twice), graceful shutdown on SIGTERM
//! (nothing left: cgroups, launcher processes, mounts) and crash recovery after `kill -9`.
//! Every denial has its control: the same request that succeeds with the wall removed.
//! Runs as root (CI does): sandboxes need cgroups and user namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use stockade_audit::{DestroyReason, Event, EventKind, Limit};
use stockade_server::store::{RowState, SandboxRow};

const BIN: &str = env!("CARGO_BIN_EXE_stockade");

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these end-to-end tests need root (cgroups, namespaces); CI runs them as root"
    );
}

fn tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("stockade-serve-{what}-"))
        .tempdir_in("/tmp")
        .unwrap()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn stockade(state: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("STOCKADE_LOG")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(127), "binary missing");
    out
}

fn new_key(state: &Path, name: &str) -> String {
    let out = stockade(state, &["keys", "create", "--name", name]);
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        key.starts_with("sk_") && key.len() == 46,
        "key shape: {key}"
    );
    key
}

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// One HTTP/1.1 request (Connection: close), the whole answer read.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Server {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(state: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let log = state.join(format!("serve-{port}.log"));
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(state)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env_remove("STOCKADE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Server {
            child: Some(child),
            port,
            log,
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("stockade serve exited at start ({st}):\n{}", s.log_text());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(port, "GET", "/health", &[], None).status == 200
            {
                return s;
            }
            assert!(
                Instant::now() < until,
                "server not ready in 60 s:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn req(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Resp {
        let b = body.map(|v| v.to_string());
        http(
            self.port,
            method,
            path,
            &[("Authorization", &format!("Bearer {key}"))],
            b.as_deref(),
        )
    }

    fn create(&self, key: &str, body: Value) -> Value {
        let r = self.req("POST", "/v1/sandboxes", key, Some(body));
        assert_eq!(r.status, 201, "create: {}", r.body);
        r.json()
    }

    /// SIGTERM, then the exit status (at most 120 s).
    fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        signal(c.id() as i32, libc::SIGTERM);
        wait_for(&mut c, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("no exit 120 s after SIGTERM:\n{}", self.log_text()))
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        signal(c.id() as i32, libc::SIGKILL);
        c.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test still stops its sandboxes.
        if let Some(mut c) = self.child.take() {
            signal(c.id() as i32, libc::SIGTERM);
            if wait_for(&mut c, Duration::from_secs(60)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill with the pid of our own child and a valid signal number.
    unsafe { libc::kill(pid, sig) };
}

fn wait_for(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn store(state: &Path) -> stockade_server::store::Store {
    stockade_server::open_store(state).unwrap()
}

fn row(state: &Path, id: &str) -> SandboxRow {
    store(state)
        .sandbox(id)
        .unwrap()
        .unwrap_or_else(|| panic!("no row for {id}"))
}

fn record(state: &Path, id: &str) -> stockade_runtime::session::RecoveryRecord {
    serde_json::from_str(row(state, id).recovery.as_deref().unwrap()).unwrap()
}

fn events(state: &Path, id: &str) -> Vec<Event> {
    let path = state.join("sandboxes").join(id).join("events.jsonl");
    let log = stockade_audit::read_log(&path).unwrap();
    assert!(log.warnings.is_empty(), "{id}: {:?}", log.warnings);
    log.events
}

/// The last event of the sandbox's trail is `sandbox.destroyed` with `reason`. A kill answers
/// once every process is dead and finishes the verified teardown (and this event) right after,
/// in the background: waited for here, at most 10 s.
fn assert_destroyed(state: &Path, id: &str, reason: DestroyReason) -> Vec<Event> {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut ev = events(state, id);
    while !matches!(
        ev.last().map(|e| &e.kind),
        Some(EventKind::SandboxDestroyed { .. })
    ) && std::time::Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(20));
        ev = events(state, id);
    }
    match ev.last().map(|e| &e.kind) {
        Some(EventKind::SandboxDestroyed { reason: r, .. }) => {
            assert_eq!(*r, reason, "{id}: destroy reason")
        }
        other => panic!("{id}: trail does not end with sandbox.destroyed: {other:?}"),
    }
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e.kind, EventKind::SandboxDestroyed { .. }))
            .count(),
        1,
        "{id}: one sandbox.destroyed"
    );
    ev
}

/// The start time (field 22 of /proc/PID/stat) of a live process. A zombie is not live: it
/// holds nothing but its exit status until its (new) parent reaps it.
fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let mut f = after.split_whitespace();
    if f.next()? == "Z" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// Everything of a sandbox the host could still hold: its cgroup directories (recorded and
/// any directory named after it under /sys/fs/cgroup), its launcher process, mounts naming it.
fn leftovers(state: &Path, id: &str) -> Vec<String> {
    let rec = record(state, id);
    let mut out = Vec::new();
    assert!(!rec.cgroup_dirs.is_empty(), "{id}: no cgroup recorded");
    for d in &rec.cgroup_dirs {
        if d.exists() {
            out.push(format!("cgroup {}", d.display()));
        }
    }
    for d in find_dirs(Path::new("/sys/fs/cgroup"), id, 6) {
        if !rec.cgroup_dirs.contains(&d) {
            out.push(format!("cgroup {}", d.display()));
        }
    }
    assert!(rec.launcher_pid > 0, "{id}: no launcher pid recorded");
    if start_time(rec.launcher_pid) == Some(rec.launcher_starttime) {
        out.push(format!("launcher process {}", rec.launcher_pid));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for l in mounts.lines() {
        if l.contains(id) || l.contains(state.to_str().unwrap()) {
            out.push(format!("mount {l}"));
        }
    }
    out
}

fn find_dirs(root: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if depth > 0 {
            out.extend(find_dirs(&p, name, depth - 1));
        }
    }
    out
}

fn id_of(v: &Value) -> String {
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "id shape: {id}"
    );
    id
}

#[test]
fn api_keys_are_required_and_checked() {
    require_root();
    let dir = tempdir("auth");
    let key = new_key(dir.path(), "ci");
    let revoked = new_key(dir.path(), "old");
    let srv = Server::start(dir.path(), &[]);
    // Health needs no key; everything else does.
    let h = http(srv.port, "GET", "/health", &[], None);
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));
    let r = http(srv.port, "GET", "/v1/sandboxes", &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "unauthorized");
    assert!(
        r.error_message().contains("stockade keys create"),
        "{}",
        r.body
    );
    // A key of the right shape that was never issued; a mangled one; a malformed header.
    let forged = format!("sk_{}", "A".repeat(43));
    for h in [
        ("Authorization", format!("Bearer {forged}")),
        ("X-API-Key", forged.clone()),
        ("Authorization", format!("Bearer {}x", &key)),
        ("Authorization", format!("Basic {key}")),
    ] {
        let r = http(srv.port, "GET", "/v1/sandboxes", &[(h.0, &h.1)], None);
        assert_eq!(r.status, 401, "{}: {}", h.0, r.body);
        assert_eq!(r.error_code(), "unauthorized");
        assert!(!r.body.contains(&key[3..]), "the key echoed back");
    }
    // A revoked key stops working at once (the server is running).
    let ok = http(
        srv.port,
        "GET",
        "/v1/sandboxes",
        &[("X-API-Key", &revoked)],
        None,
    );
    assert_eq!(ok.status, 200, "control before revoking: {}", ok.body);
    let ls = stockade(dir.path(), &["keys", "ls", "--json"]);
    let keys: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let old_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "old")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!String::from_utf8_lossy(&ls.stdout).contains(&revoked[3..]));
    let out = stockade(dir.path(), &["keys", "revoke", &old_id]);
    assert!(out.status.success());
    let r = http(
        srv.port,
        "GET",
        "/v1/sandboxes",
        &[("X-API-Key", &revoked)],
        None,
    );
    assert_eq!(r.status, 401, "revoked key still works: {}", r.body);
    let out = stockade(dir.path(), &["keys", "revoke", &old_id]);
    assert_eq!(out.status.code(), Some(125), "second revoke");
    // Control: the right key, either header.
    for h in [
        ("Authorization", format!("Bearer {key}")),
        ("X-API-Key", key.clone()),
    ] {
        let r = http(srv.port, "GET", "/v1/sandboxes", &[(h.0, &h.1)], None);
        assert_eq!(r.status, 200, "{}: {}", h.0, r.body);
        assert_eq!(r.json(), json!({ "sandboxes": [] }));
    }
    // No key reached the server's log or the database in clear.
    for k in [&key, &revoked, &forged] {
        assert!(!srv.log_text().contains(&k[3..]), "a key in the server log");
    }
    let db = std::fs::read(dir.path().join("server.db")).unwrap();
    let wal = std::fs::read(dir.path().join("server.db-wal")).unwrap_or_default();
    for b in [db, wal] {
        assert!(!String::from_utf8_lossy(&b).contains(&key[3..]));
    }
}

#[test]
fn create_list_get_kill_and_owner_isolation() {
    require_root();
    let dir = tempdir("crud");
    let a = new_key(dir.path(), "a");
    let b = new_key(dir.path(), "b");
    let srv = Server::start(dir.path(), &[]);
    let before = std::time::SystemTime::now();
    let c = srv.create(&a, json!({"metadata": {"job": "42"}, "timeout": 120}));
    let id = id_of(&c);
    assert_eq!(c["template"], "base");
    assert_eq!(c["state"], "running");
    assert_eq!(c["metadata"], json!({"job": "42"}));
    let token = c["access_token"].as_str().unwrap();
    assert!(token.len() >= 40, "access token: {token}");
    let created = humantime::parse_rfc3339(c["created_at"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339(c["expires_at"].as_str().unwrap()).unwrap();
    assert!(created + Duration::from_secs(1) >= before);
    assert_eq!(expires.duration_since(created).unwrap().as_secs(), 120);
    // Acknowledged ⇒ in SQLite, with what crash recovery needs.
    let r = row(dir.path(), &id);
    assert_eq!(r.state, RowState::Running);
    assert!(r.owner.is_some());
    assert!(record(dir.path(), &id).launcher_pid > 0);
    assert!(
        !std::fs::read_to_string(dir.path().join("server.db"))
            .unwrap_or_default()
            .contains(token)
    );
    // The audit trail began.
    assert!(matches!(
        events(dir.path(), &id)[0].kind,
        EventKind::SandboxCreated { ref workspace_mode, .. } if workspace_mode == "tmp"
    ));

    let list = srv.req("GET", "/v1/sandboxes", &a, None).json();
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 1);
    assert_eq!(list["sandboxes"][0]["id"], id.as_str());
    assert!(list["sandboxes"][0].get("access_token").is_none());
    let info = srv.req("GET", &format!("/v1/sandboxes/{id}"), &a, None);
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    assert_eq!(info["id"], id.as_str());
    assert!(info["usage"].is_object(), "usage: {info}");
    assert!(info["usage"]["pids"].as_u64().unwrap_or(0) >= 1, "{info}");

    // Another key sees nothing of it and cannot touch it.
    assert_eq!(
        srv.req("GET", "/v1/sandboxes", &b, None).json(),
        json!({"sandboxes": []})
    );
    for (m, p, body) in [
        ("GET", format!("/v1/sandboxes/{id}"), None),
        ("DELETE", format!("/v1/sandboxes/{id}"), None),
        (
            "POST",
            format!("/v1/sandboxes/{id}/timeout"),
            Some(json!({"timeout": 10})),
        ),
    ] {
        let r = srv.req(m, &p, &b, body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{m} {p}"
        );
    }
    let r = srv.req("GET", "/v1/sandboxes/..%2F..%2Fetc", &a, None);
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("etc"), "{}", r.body);

    // Timeout: expires_at moves.
    let t = srv.req(
        "POST",
        &format!("/v1/sandboxes/{id}/timeout"),
        &a,
        Some(json!({"timeout": 600})),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    let exp2 = humantime::parse_rfc3339(t.json()["expires_at"].as_str().unwrap()).unwrap();
    assert!(exp2 > expires + Duration::from_secs(400));

    // Kill: 204, gone everywhere, audited, nothing left on the host.
    let k = srv.req("DELETE", &format!("/v1/sandboxes/{id}"), &a, None);
    assert_eq!(k.status, 204, "{}", k.body);
    let g = srv.req("GET", &format!("/v1/sandboxes/{id}"), &a, None);
    assert_eq!(g.status, 404);
    let k2 = srv.req("DELETE", &format!("/v1/sandboxes/{id}"), &a, None);
    assert_eq!(k2.status, 404);
    assert_destroyed(dir.path(), &id, DestroyReason::Killed);
    // The row is marked right after the trail is closed (the teardown's last step).
    let until = Instant::now() + Duration::from_secs(10);
    let mut r = row(dir.path(), &id);
    while r.state != RowState::Destroyed && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        r = row(dir.path(), &id);
    }
    assert_eq!(
        (r.state, r.reason.as_deref()),
        (RowState::Destroyed, Some("killed"))
    );
    assert_eq!(leftovers(dir.path(), &id), Vec::<String>::new());
}

#[test]
fn bad_create_requests_get_one_clear_400() {
    require_root();
    let dir = tempdir("bad");
    let key = new_key(dir.path(), "k");
    let srv = Server::start(
        dir.path(),
        &["--max-timeout", "60", "--default-timeout", "30"],
    );
    let bad = |body: Value| {
        let r = srv.req("POST", "/v1/sandboxes", &key, Some(body));
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.error_code(), "bad_request");
        r.error_message()
    };
    // An inline policy error names line and column.
    let m = bad(json!({"policy": "[limits]\nmemory = \"lots\"\n"}));
    assert!(m.starts_with("policy:2:10: limits.memory"), "{m}");
    let m = bad(json!({"policy": "[limits\n"}));
    assert!(m.starts_with("policy:1:"), "{m}");
    // An inline policy may not reach the host.
    let m = bad(json!({"policy": "[workspace]\nmode = \"rw\"\npath = \"/srv\"\n"}));
    assert!(m.contains("not allowed in an inline policy"), "{m}");
    // Nor accept gVisor for untrusted code (the operator's decision), naming the key.
    let m = bad(
        json!({"policy": "trust = \"untrusted\"\n[security]\nallow_gvisor_for_untrusted = true\n"}),
    );
    assert!(
        m.starts_with(
            "policy: security.allow_gvisor_for_untrusted: not allowed in an inline policy"
        ),
        "{m}"
    );
    // A level weaker than the trust asks for: the policy error, with line and column.
    let m = bad(json!({"policy": "trust = \"internal\"\nlevel = \"container\"\n"}));
    assert!(
        m.starts_with("policy:2:9: level: level \"container\" is weaker"),
        "{m}"
    );
    // Timeout over the maximum, zero.
    let m = bad(json!({"timeout": 61}));
    assert!(
        m.contains("61") && m.contains("60") && m.contains("--max-timeout"),
        "{m}"
    );
    bad(json!({"timeout": 0}));
    let m = bad(json!({"template": "nope"}));
    assert!(m.contains("nope"), "{m}");
    bad(json!({"env": {"A=B": "x"}}));
    bad(json!({"unknown_field": 1}));
    let r = http(
        srv.port,
        "POST",
        "/v1/sandboxes",
        &[("X-API-Key", &key)],
        Some("{not json"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Nothing was left behind by any of them.
    assert!(store(dir.path()).alive_rows().unwrap().is_empty());
    // Controls: a valid inline policy, the maximum timeout, the default.
    let c = srv.create(
        &key,
        json!({"policy": "[limits]\nmemory = \"256MiB\"\n", "timeout": 60, "env": {"TOKEN": "S3cr3t-v4lue-91827"}}),
    );
    assert_eq!(c["template"], "inline");
    let c2 = srv.create(&key, json!({}));
    let (cr, ex) = (
        humantime::parse_rfc3339(c2["created_at"].as_str().unwrap()).unwrap(),
        humantime::parse_rfc3339(c2["expires_at"].as_str().unwrap()).unwrap(),
    );
    assert_eq!(ex.duration_since(cr).unwrap().as_secs(), 30);
    // The env value never reached the audit trail or the log.
    let trail = std::fs::read_to_string(
        dir.path()
            .join("sandboxes")
            .join(id_of(&c))
            .join("events.jsonl"),
    )
    .unwrap();
    assert!(trail.contains("sandbox.created"));
    assert!(!trail.contains("S3cr3t-v4lue-91827"));
    assert!(!srv.log_text().contains("S3cr3t-v4lue-91827"));
}

#[test]
fn ttl_expiry_reaps_and_audits() {
    require_root();
    let dir = tempdir("ttl");
    let key = new_key(dir.path(), "k");
    let srv = Server::start(dir.path(), &[]);
    let short = id_of(&srv.create(&key, json!({"timeout": 2})));
    let long = id_of(&srv.create(&key, json!({"timeout": 120})));
    let until = Instant::now() + Duration::from_secs(20);
    while srv
        .req("GET", &format!("/v1/sandboxes/{short}"), &key, None)
        .status
        == 200
    {
        assert!(Instant::now() < until, "not reaped 20 s after a 2 s TTL");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The row is marked once the destroy finished.
    let until = Instant::now() + Duration::from_secs(20);
    while row(dir.path(), &short).state != RowState::Destroyed {
        assert!(Instant::now() < until, "row not marked destroyed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(row(dir.path(), &short).reason.as_deref(), Some("timeout"));
    let ev = assert_destroyed(dir.path(), &short, DestroyReason::Timeout);
    assert!(
        ev.iter().any(|e| matches!(
            e.kind,
            EventKind::LimitHit {
                limit: Limit::Timeout,
                ..
            }
        )),
        "no limit.hit timeout: {ev:?}"
    );
    assert_eq!(leftovers(dir.path(), &short), Vec::<String>::new());
    // Control: the one with a long TTL is untouched.
    assert_eq!(
        srv.req("GET", &format!("/v1/sandboxes/{long}"), &key, None)
            .status,
        200
    );
    assert_eq!(row(dir.path(), &long).state, RowState::Running);
}

#[test]
fn quotas_answer_429_with_the_limit() {
    require_root();
    let dir = tempdir("quota");
    let a = new_key(dir.path(), "a");
    let b = new_key(dir.path(), "b");
    let srv = Server::start(dir.path(), &["--max-per-key", "2", "--max-sandboxes", "3"]);
    let a1 = id_of(&srv.create(&a, json!({})));
    srv.create(&a, json!({}));
    let r = srv.req("POST", "/v1/sandboxes", &a, Some(json!({})));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "too_many_sandboxes");
    assert!(
        r.error_message().contains("2") && r.error_message().contains("--max-per-key"),
        "{}",
        r.body
    );
    // Control: another key still may, up to the total.
    srv.create(&b, json!({}));
    let r = srv.req("POST", "/v1/sandboxes", &b, Some(json!({})));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        r.error_message().contains("3") && r.error_message().contains("--max-sandboxes"),
        "{}",
        r.body
    );
    // A refused create left nothing.
    assert_eq!(store(dir.path()).alive_rows().unwrap().len(), 3);
    // Destroying one frees its place.
    assert_eq!(
        srv.req("DELETE", &format!("/v1/sandboxes/{a1}"), &a, None)
            .status,
        204
    );
    srv.create(&a, json!({}));
}

#[test]
fn templates_add_ls_rm_and_create_from_one() {
    require_root();
    let dir = tempdir("tpl");
    let key = new_key(dir.path(), "k");
    let pol = dir.path().join("small.toml");
    std::fs::write(&pol, "[limits]\nmemory = \"128MiB\"\npids = 64\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\npids = \"many\"\n").unwrap();
    let out = stockade(
        dir.path(),
        &[
            "template",
            "add",
            "small",
            "--policy",
            pol.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Errors: a bad policy (line:col), a taken name, base, a missing rootfs.
    let out = stockade(
        dir.path(),
        &[
            "template",
            "add",
            "broken",
            "--policy",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("bad.toml:2:8"), "{err}");
    for args in [
        vec![
            "template",
            "add",
            "small",
            "--policy",
            pol.to_str().unwrap(),
        ],
        vec!["template", "add", "base", "--policy", pol.to_str().unwrap()],
        vec![
            "template",
            "add",
            "r",
            "--policy",
            pol.to_str().unwrap(),
            "--rootfs",
            "/nonexistent/rootfs",
        ],
        vec!["template", "rm", "base"],
        vec!["template", "rm", "nope"],
    ] {
        let out = stockade(dir.path(), &args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    let ls = stockade(dir.path(), &["template", "ls", "--json"]);
    let v: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "small"]);

    // A pool of a template that does not exist stops the server at start.
    let port = free_port().to_string();
    let out = stockade(
        dir.path(),
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pool",
            "nope=1",
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pool nope=1") && err.contains("no template"),
        "{err}"
    );

    let srv = Server::start(dir.path(), &["--pool", "small=1"]);
    let c = srv.create(&key, json!({"template": "small"}));
    assert_eq!(c["template"], "small");
    let id = id_of(&c);
    // Its policy is the template's (and the workspace a tmpfs: nothing of the host).
    let created = events(dir.path(), &id);
    match &created[0].kind {
        EventKind::SandboxCreated {
            policy_digest,
            workspace_mode,
            ..
        } => {
            let mut p =
                stockade_policy::Policy::from_toml(&std::fs::read_to_string(&pol).unwrap(), "x")
                    .unwrap();
            p.workspace.mode = stockade_policy::WorkspaceMode::Tmp;
            assert_eq!(*policy_digest, p.digest());
            assert_eq!(workspace_mode, "tmp");
        }
        other => panic!("{other:?}"),
    }
    // Removed while the server runs: new creates refuse it, the sandbox keeps running.
    let out = stockade(dir.path(), &["template", "rm", "small"]);
    assert!(out.status.success());
    let r = srv.req(
        "POST",
        "/v1/sandboxes",
        &key,
        Some(json!({"template": "small"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        srv.req("GET", &format!("/v1/sandboxes/{id}"), &key, None)
            .status,
        200
    );
}

/// Waits until `n` pooled rows of the server exist; returns their ids.
fn pooled(state: &Path, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let rows: Vec<String> = store(state)
            .alive_rows()
            .unwrap()
            .into_iter()
            .filter(|r| r.state == RowState::Pooled)
            .map(|r| r.id)
            .collect();
        if rows.len() >= n {
            return rows;
        }
        assert!(Instant::now() < until, "pool not filled to {n} in 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn timed_create(srv: &Server, key: &str, body: Value) -> (String, Duration) {
    let t = Instant::now();
    let c = srv.create(key, body);
    (id_of(&c), t.elapsed())
}

#[test]
fn warm_pool_hands_out_at_once_and_never_twice() {
    require_root();
    let dir = tempdir("pool");
    let key = new_key(dir.path(), "k");
    let srv = Server::start(dir.path(), &["--pool", "base=2"]);
    let mut handed = Vec::new();
    let mut pool_times = Vec::new();
    let mut cold_times = Vec::new();
    for _ in 0..3 {
        let ready = pooled(dir.path(), 2);
        let (id, t) = timed_create(&srv, &key, json!({}));
        assert!(ready.contains(&id), "create did not take a pooled sandbox");
        pool_times.push(t);
        handed.push(id);
        // Control: env bypasses the pool (a fresh sandbox, not one of the pooled).
        let ready = pooled(dir.path(), 2);
        let (id, t) = timed_create(&srv, &key, json!({"env": {"X": "1"}}));
        assert!(
            !ready.contains(&id),
            "a create with env got a pooled sandbox"
        );
        cold_times.push(t);
    }
    // Handed out = owned from now on: TTL from the hand-out, metadata set, row running.
    let c = srv.create(&key, json!({"metadata": {"m": "1"}, "timeout": 50}));
    let r = row(dir.path(), &id_of(&c));
    assert_eq!(r.state, RowState::Running);
    assert_eq!(r.metadata, "{\"m\":\"1\"}");
    handed.push(id_of(&c));
    // Never twice: every id handed out is distinct, and none is back in the pool.
    let mut uniq = handed.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        handed.len(),
        "an id handed out twice: {handed:?}"
    );
    for id in &handed {
        assert_eq!(
            srv.req("DELETE", &format!("/v1/sandboxes/{id}"), &key, None)
                .status,
            204
        );
    }
    let ready = pooled(dir.path(), 2);
    assert!(
        ready.iter().all(|p| !handed.contains(p)),
        "a handed-out sandbox is back in the pool"
    );
    pool_times.sort();
    cold_times.sort();
    eprintln!("create from pool: {pool_times:?}; cold: {cold_times:?}");
    assert!(
        pool_times[1] < cold_times[1],
        "the pool is not faster: {pool_times:?} vs {cold_times:?}"
    );
}

#[test]
fn sigterm_destroys_everything_and_exits_0() {
    require_root();
    let dir = tempdir("term");
    let key = new_key(dir.path(), "k");
    let mut srv = Server::start(dir.path(), &["--pool", "base=1"]);
    let mut ids: Vec<String> = (0..3)
        .map(|_| id_of(&srv.create(&key, json!({"env": {"A": "1"}}))))
        .collect();
    ids.extend(pooled(dir.path(), 1));
    for id in &ids {
        let rec = record(dir.path(), id);
        assert!(
            start_time(rec.launcher_pid) == Some(rec.launcher_starttime),
            "control: {id}'s launcher runs before the shutdown"
        );
    }
    let st = srv.terminate();
    assert_eq!(st.code(), Some(0), "exit status:\n{}", srv.log_text());
    // New connections are refused.
    assert!(TcpStream::connect(("127.0.0.1", srv.port)).is_err());
    for id in &ids {
        let r = row(dir.path(), id);
        assert_eq!(r.state, RowState::Destroyed, "{id}");
        assert_destroyed(dir.path(), id, DestroyReason::Killed);
        assert_eq!(leftovers(dir.path(), id), Vec::<String>::new(), "{id}");
    }
    assert!(store(dir.path()).alive_rows().unwrap().is_empty());
}

#[test]
fn crash_recovery_after_kill_9() {
    require_root();
    let dir = tempdir("crash");
    let key = new_key(dir.path(), "k");
    let mut srv = Server::start(dir.path(), &[]);
    let ids: Vec<String> = (0..2)
        .map(|_| id_of(&srv.create(&key, json!({}))))
        .collect();
    // One server per state directory.
    let second = Command::new(BIN)
        .arg("--state-dir")
        .arg(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(125));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another `stockade serve`") && err.contains(&srv.pid().to_string()),
        "{err}"
    );

    // Control: the sandboxes run before the crash.
    for id in &ids {
        let rec = record(dir.path(), id);
        assert_eq!(start_time(rec.launcher_pid), Some(rec.launcher_starttime));
        assert!(rec.cgroup_dirs.iter().all(|d| d.exists()), "{id}");
    }
    srv.kill9();
    // The crash left rows running and trails without their end (what recovery must close).
    for id in &ids {
        assert_eq!(row(dir.path(), id).state, RowState::Running);
        assert!(
            !events(dir.path(), id)
                .iter()
                .any(|e| matches!(e.kind, EventKind::SandboxDestroyed { .. })),
            "{id}: destroyed already recorded before recovery"
        );
    }
    let mut srv2 = Server::start(dir.path(), &[]);
    for id in &ids {
        let r = row(dir.path(), id);
        assert_eq!(r.state, RowState::Lost, "{id}");
        assert!(
            r.reason.as_deref().unwrap_or("").contains("killed"),
            "{r:?}"
        );
        assert_destroyed(dir.path(), id, DestroyReason::Error);
        assert_eq!(leftovers(dir.path(), id), Vec::<String>::new(), "{id}");
        assert_eq!(
            srv2.req("GET", &format!("/v1/sandboxes/{id}"), &key, None)
                .status,
            404
        );
    }
    assert!(
        srv2.log_text().contains("crash recovery"),
        "{}",
        srv2.log_text()
    );
    // The restarted server works.
    let id = id_of(&srv2.create(&key, json!({})));
    assert_eq!(srv2.terminate().code(), Some(0));
    assert_destroyed(dir.path(), &id, DestroyReason::Killed);
}
