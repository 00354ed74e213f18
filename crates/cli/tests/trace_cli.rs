//! End-to-end tests of the audit trail's reading side with the real `stockade` binary: `trace`
//! (tree, `--json`, `--last`, id prefixes, torn logs, `--follow`), `ls` and `gc`, on logs written
//! by the audit crate's own `Recorder` into a temp state directory; the example in docs/audit.md
//! is checked against what `trace` prints; one real `stockade run` is traced (needs root).
//!
//! The fixture holds four sandboxes, created in this order: NORMAL (exit 0), TIMEOUT (killed by
//! its wall-clock limit), TORN (stockade "died" while writing sandbox.destroyed: a torn last
//! line, a quiet log) and RUNNING (no sandbox.destroyed, just written).

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockade_audit::{
    CgroupEnforced, Change, DestroyReason, Enforcement, Event, EventKind, Limit, Recorder,
    Redactor, SCHEMA_VERSION, StateDir,
};

const NORMAL: &str = "a1b2c3d4e5f60001";
const TIMEOUT: &str = "a1b2c3d4e5f60002";
const TORN: &str = "c9d0e1f2a3b40004";
const RUNNING: &str = "b7c8d9e0f1a20003";
const DIGEST: &str = "sha256:6b1f0c3e9a2d4f5b8c7e1a0d3f6b9c2e5a8d1f4b7c0e3a6d9f2b5c8e1a4d7f0b";
/// The last-written times given to the finished logs (2025-03-01, -02, -03 at 00:00:00 UTC).
const MTIMES: [(&str, u64); 3] = [
    (NORMAL, 1_740_787_200),
    (TIMEOUT, 1_740_873_600),
    (TORN, 1_740_960_000),
];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockade")
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: StateDir,
    torn_bytes: usize,
    /// Each log's size once written (gc tests need them after the logs are gone).
    sizes: std::collections::HashMap<&'static str, u64>,
}

impl Fixture {
    fn path(&self) -> &Path {
        &self.state.0
    }
    fn log(&self, id: &str) -> PathBuf {
        self.state.sandbox_log(id)
    }
    fn stored(&self, id: &str) -> String {
        fs::read_to_string(self.log(id)).unwrap()
    }
    /// `stockade --state-dir STATE ARGS`, stdout piped (so never coloured).
    fn stockade(&self, args: &[&str]) -> Output {
        stockade_in(self.path(), args)
    }
}

fn stockade_in(state: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--state-dir".to_string(), state.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    run_bounded(Command::new(bin()).args(&all), &all)
}

/// Runs `cmd` to completion with stdout/stderr captured; kills it and fails after a minute.
fn run_bounded(cmd: &mut Command, what: &[String]) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stockade {what:?} still running after a minute; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn context(o: &Output) -> String {
    format!(
        "{:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn expect_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", context(o));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stockade-e2e-trace-")
        .tempdir_in("/tmp")
        .unwrap()
}

fn enforced(seccomp: &str, weakenings: &[&str]) -> Enforcement {
    let cg = |c: &str| CgroupEnforced {
        controller: c.into(),
        version: "v2".into(),
    };
    Enforcement {
        level: "container".into(),
        accel: None,
        platform: None,
        namespaces: ["user", "mount", "pid", "net", "ipc", "uts", "cgroup"]
            .map(String::from)
            .to_vec(),
        seccomp: seccomp.into(),
        landlock: "full".into(),
        landlock_abi: 4,
        cgroups: vec![cg("memory"), cg("pids"), cg("cpu")],
        no_new_privs: true,
        capabilities_dropped: true,
        uid: 1000,
        gid: 1000,
        weakenings: weakenings.iter().map(|w| w.to_string()).collect(),
    }
}

fn created(seccomp: &str, weakenings: &[&str]) -> EventKind {
    EventKind::SandboxCreated {
        policy_digest: DIGEST.into(),
        workspace: "/home/dev/proj".into(),
        workspace_mode: "rw".into(),
        enforced: enforced(seccomp, weakenings),
    }
}

fn started(argv: &[&str]) -> EventKind {
    EventKind::ExecStarted {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        cwd: "/home/dev/proj".into(),
        env_names: vec!["HOME".into(), "PATH".into()],
    }
}

fn exited(code: Option<i32>, signal: Option<i32>, ms: u64, limit: Option<Limit>) -> EventKind {
    EventKind::ExecExited {
        exit_code: code,
        signal,
        duration_ms: ms,
        cpu_time_ms: Some(150),
        peak_memory_bytes: Some(12 << 20),
        output_bytes: 2,
        limit,
    }
}

fn destroyed(reason: DestroyReason, ms: u64) -> EventKind {
    EventKind::SandboxDestroyed {
        reason,
        clean: true,
        leftovers: vec![],
        duration_ms: ms,
        error: None,
    }
}

fn set_mtime(path: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn fixture() -> Fixture {
    let dir = tempdir();
    let state = StateDir(dir.path().to_path_buf());
    let open = |id: &str| {
        // Strictly increasing creation times, even on a coarse clock.
        std::thread::sleep(Duration::from_millis(3));
        Recorder::open(&state, id, Redactor::default()).unwrap()
    };
    let mut r = open(NORMAL);
    r.emit(None, created("filter", &[])).unwrap();
    r.emit(Some("e1"), started(&["python3", "-c", "print(1)"]))
        .unwrap();
    r.emit(
        Some("e1"),
        EventKind::FileChanged {
            path: "out/result.txt".into(),
            change: Change::Created,
            size: 12,
        },
    )
    .unwrap();
    r.emit(Some("e1"), exited(Some(0), None, 319, None))
        .unwrap();
    r.emit(None, destroyed(DestroyReason::Exit, 330)).unwrap();
    r.sync().unwrap();

    let mut r = open(TIMEOUT);
    r.emit(
        None,
        created(
            "off",
            &["seccomp off (allowed by --allow-weaker-isolation)"],
        ),
    )
    .unwrap();
    r.emit(Some("e1"), started(&["sleep", "100"])).unwrap();
    r.emit(
        Some("e1"),
        EventKind::LimitHit {
            limit: Limit::Timeout,
            value: "2s".into(),
            detail: "the command ran past its wall-clock limit".into(),
        },
    )
    .unwrap();
    r.emit(
        Some("e1"),
        exited(None, Some(9), 2003, Some(Limit::Timeout)),
    )
    .unwrap();
    r.emit(None, destroyed(DestroyReason::Timeout, 2010))
        .unwrap();

    let mut r = open(TORN);
    r.emit(None, created("filter", &[])).unwrap();
    r.emit(Some("e1"), started(&["cat", "missing"])).unwrap();
    r.emit(Some("e1"), exited(Some(1), None, 4, None)).unwrap();
    drop(r);
    // Stockade died in the middle of writing sandbox.destroyed.
    let torn = r#"{"schema_version":1,"seq":4,"at":"2026-"#;
    fs::OpenOptions::new()
        .append(true)
        .open(state.sandbox_log(TORN))
        .unwrap()
        .write_all(torn.as_bytes())
        .unwrap();

    let mut r = open(RUNNING);
    r.emit(None, created("filter", &[])).unwrap();
    r.emit(Some("e1"), started(&["make", "test"])).unwrap();
    drop(r);

    for (id, secs) in MTIMES {
        set_mtime(&state.sandbox_log(id), secs);
    }
    let sizes = [NORMAL, TIMEOUT, TORN, RUNNING]
        .map(|id| (id, fs::metadata(state.sandbox_log(id)).unwrap().len()))
        .into();
    Fixture {
        _dir: dir,
        state,
        torn_bytes: torn.len(),
        sizes,
    }
}

/// The tree's lines split into the relative-time column and the rest.
fn untimed(stdout: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut times = Vec::new();
    let mut rest = Vec::new();
    for l in text(stdout).lines() {
        assert!(
            l.len() >= 11 && l.is_char_boundary(11) && &l[9..11] == "  ",
            "not a tree line: {l:?}"
        );
        times.push(l[..9].trim().to_string());
        rest.push(l[11..].to_string());
    }
    (times, rest)
}

/// `+12.3ms`, `+1.250s`, `+2m03.4s` in microseconds.
fn rel_us(t: &str) -> f64 {
    let t = t
        .strip_prefix('+')
        .unwrap_or_else(|| panic!("no sign: {t:?}"));
    if let Some(ms) = t.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() * 1e3
    } else if let Some((m, s)) = t.split_once('m') {
        m.parse::<f64>().unwrap() * 60e6 + s.trim_end_matches('s').parse::<f64>().unwrap() * 1e6
    } else {
        t.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1e6
    }
}

/// Asserts the time column: `+0.0ms` first, a time exactly on `timed` lines, non-decreasing.
fn check_times(times: &[String], timed: &[usize]) {
    assert_eq!(times[0], "+0.0ms", "{times:?}");
    let mut last = 0.0;
    for (i, t) in times.iter().enumerate() {
        if timed.contains(&i) {
            let us = rel_us(t);
            assert!(us >= last, "time goes back at line {i}: {times:?}");
            last = us;
        } else {
            assert_eq!(t, "", "line {i} should have no time: {times:?}");
        }
    }
}

fn first_at(stored: &str) -> String {
    serde_json::from_str::<Event>(stored.lines().next().unwrap())
        .unwrap()
        .at
}

fn header(id: &str, at: &str, seccomp: &str, weakened: &str) -> Vec<String> {
    vec![
        format!("sandbox {id}  created {at}"),
        "│ workspace  /home/dev/proj (rw)".into(),
        format!("│ policy     {DIGEST}"),
        "│ isolation  container · uid 1000 gid 1000 · no_new_privs · capabilities dropped".into(),
        "│ namespaces user mount pid net ipc uts cgroup".into(),
        format!("│ seccomp    {seccomp}"),
        "│ landlock   full (kernel ABI 4)".into(),
        "│ cgroups    memory v2 · pids v2 · cpu v2".into(),
        format!("│ weakened   {weakened}"),
    ]
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// trace

#[test]
fn trace_json_prints_exactly_the_stored_events() {
    let f = fixture();
    for id in [NORMAL, TIMEOUT, RUNNING] {
        let o = f.stockade(&["trace", id, "--json"]);
        expect_code(&o, 0);
        assert_eq!(text(&o.stdout), f.stored(id), "{id}");
        assert_eq!(text(&o.stderr), "", "{id}");
        let events: Vec<Event> = text(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            events.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1
                && e.sandbox_id == id
                && e.schema_version == SCHEMA_VERSION),
            "{events:?}"
        );
    }
    // The torn one: every complete line, byte for byte, and not the torn tail.
    let o = f.stockade(&["trace", TORN, "--json"]);
    expect_code(&o, 0);
    let stored = f.stored(TORN);
    assert_eq!(
        text(&o.stdout),
        stored[..stored.len() - f.torn_bytes],
        "{}",
        context(&o)
    );
}

#[test]
fn trace_prints_the_tree_in_order() {
    let f = fixture();
    let o = f.stockade(&["trace", NORMAL]);
    expect_code(&o, 0);
    assert_eq!(text(&o.stderr), "");
    assert!(
        !o.stdout.contains(&0x1b),
        "colour in a pipe: {}",
        context(&o)
    );
    let (times, rest) = untimed(&o.stdout);
    let mut want = header(NORMAL, &first_at(&f.stored(NORMAL)), "filter", "none");
    want.extend(lines(&[
        "├─ exec e1: python3 -c 'print(1)'",
        "│  │ cwd /home/dev/proj · env HOME PATH",
        "│  ├─ file.changed created out/result.txt (12 B)",
        "│  └─ exec.exited  exit 0 in 319ms · cpu 150ms · peak 12.0 MiB · output 2 B",
        "└─ sandbox.destroyed exit · clean · 330ms",
    ]));
    assert_eq!(rest, want, "{}", context(&o));
    check_times(&times, &[0, 9, 11, 12, 13]);
}

#[test]
fn trace_of_a_timeout_shows_the_limit_the_signal_and_the_weakening() {
    let f = fixture();
    let o = f.stockade(&["trace", TIMEOUT]);
    expect_code(&o, 0);
    let (times, rest) = untimed(&o.stdout);
    let mut want = header(
        TIMEOUT,
        &first_at(&f.stored(TIMEOUT)),
        "off",
        "seccomp off (allowed by --allow-weaker-isolation)",
    );
    want.extend(lines(&[
        "├─ exec e1: sleep 100",
        "│  │ cwd /home/dev/proj · env HOME PATH",
        "│  ├─ limit.hit    timeout 2s: the command ran past its wall-clock limit",
        "│  └─ exec.exited  signal 9 (SIGKILL) in 2.003s · cpu 150ms · peak 12.0 MiB · output 2 B · stopped by the timeout limit",
        "└─ sandbox.destroyed timeout · clean · 2.010s",
    ]));
    assert_eq!(rest, want, "{}", context(&o));
    check_times(&times, &[0, 9, 11, 12, 13]);
}

#[test]
fn unique_prefix_works_unknown_and_ambiguous_fail_with_one_line() {
    let f = fixture();
    let by_prefix = f.stockade(&["trace", "b7c8", "--json"]);
    expect_code(&by_prefix, 0);
    assert_eq!(text(&by_prefix.stdout), f.stored(RUNNING));

    let state = f.path().display();
    for (q, want) in [
        ("ffff", format!("stockade: no sandbox ffff in {state}\n")),
        // Never a path: only names in the sandboxes directory match.
        (
            "../sandboxes",
            format!("stockade: no sandbox ../sandboxes in {state}\n"),
        ),
        (
            "a1b2",
            format!(
                "stockade: a1b2 names 2 sandboxes in {state}: {NORMAL}, {TIMEOUT}; give more of the id\n"
            ),
        ),
    ] {
        for extra in [&[][..], &["--json"], &["--follow"]] {
            let mut args = vec!["trace", q];
            args.extend_from_slice(extra);
            let o = f.stockade(&args);
            expect_code(&o, 125);
            assert_eq!(text(&o.stderr), want, "{args:?}");
            assert_eq!(text(&o.stdout), "", "{args:?}");
        }
    }
    // An empty state directory names nothing either.
    let empty = tempdir();
    let o = stockade_in(empty.path(), &["trace", "--last"]);
    expect_code(&o, 125);
    assert_eq!(
        text(&o.stderr),
        format!("stockade: no sandboxes in {}\n", empty.path().display())
    );
}

#[test]
fn torn_log_shows_its_events_and_warns() {
    let f = fixture();
    let o = f.stockade(&["trace", TORN]);
    expect_code(&o, 0);
    assert_eq!(
        text(&o.stderr),
        format!(
            "stockade: warning: {}:4: torn last line skipped ({} bytes)\n",
            f.log(TORN).display(),
            f.torn_bytes
        )
    );
    let (times, rest) = untimed(&o.stdout);
    let mut want = header(TORN, &first_at(&f.stored(TORN)), "filter", "none");
    want.extend(lines(&[
        "└─ exec e1: cat missing",
        "   │ cwd /home/dev/proj · env HOME PATH",
        "   └─ exec.exited  exit 1 in 4ms · cpu 150ms · peak 12.0 MiB · output 2 B",
    ]));
    assert_eq!(rest, want, "{}", context(&o));
    check_times(&times, &[0, 9, 11]);
}

#[test]
fn last_picks_the_newest_by_created_time_or_directory_mtime() {
    let f = fixture();
    let o = f.stockade(&["trace", "--last", "--json"]);
    expect_code(&o, 0);
    assert_eq!(text(&o.stdout), f.stored(RUNNING));
    // Log times decide, not directory times: touch an older sandbox's directory.
    set_dir_mtime(
        &f.state.sandbox_dir(NORMAL),
        SystemTime::now() + Duration::from_secs(60),
    );
    let o = f.stockade(&["trace", "--last", "--json"]);
    assert_eq!(text(&o.stdout), f.stored(RUNNING));
    // A sandbox with no log yet is dated by its directory.
    let fresh = "f00d000000000005";
    fs::create_dir(f.state.sandbox_dir(fresh)).unwrap();
    let o = f.stockade(&["trace", "--last"]);
    expect_code(&o, 0);
    assert_eq!(
        text(&o.stdout),
        format!("           sandbox {fresh}  (no events yet)\n")
    );
    set_dir_mtime(
        &f.state.sandbox_dir(fresh),
        UNIX_EPOCH + Duration::from_secs(1_000_000_000),
    );
    let o = f.stockade(&["trace", "--last", "--json"]);
    assert_eq!(text(&o.stdout), f.stored(RUNNING));
}

fn set_dir_mtime(dir: &Path, t: SystemTime) {
    fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

/// The fenced blocks of docs/audit.md that open with "```LANG".
fn doc_blocks<'a>(doc: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    doc.match_indices(&fence)
        .map(|(i, _)| {
            let body = &doc[i + fence.len()..];
            &body[..body.find("```\n").unwrap()]
        })
        .collect()
}

#[test]
fn the_example_in_docs_is_what_trace_prints() {
    let doc =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/audit.md")).unwrap();
    let logs = doc_blocks(&doc, "jsonl");
    let texts = doc_blocks(&doc, "text");
    assert_eq!(logs.len(), 2, "two example logs in docs/audit.md");
    let dir = tempdir();
    let state = StateDir(dir.path().to_path_buf());
    let mut trees = Vec::new();
    for log in &logs {
        let first: Event = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        fs::create_dir_all(state.sandbox_dir(&first.sandbox_id)).unwrap();
        fs::write(state.sandbox_log(&first.sandbox_id), log).unwrap();
        let o = stockade_in(dir.path(), &["trace", &first.sandbox_id[..4], "--json"]);
        expect_code(&o, 0);
        assert_eq!(text(&o.stdout), *log);
        let o = stockade_in(dir.path(), &["trace", &first.sandbox_id]);
        expect_code(&o, 0);
        assert_eq!(text(&o.stderr), "");
        trees.push(text(&o.stdout));
    }
    // Each log's tree follows it in the page, then the `ls` of both.
    let o = stockade_in(dir.path(), &["ls"]);
    expect_code(&o, 0);
    trees.push(text(&o.stdout));
    let texts: Vec<&str> = texts
        .into_iter()
        .filter(|t| !t.starts_with("STATE/"))
        .collect();
    assert_eq!(
        texts, trees,
        "docs/audit.md no longer shows what the code prints"
    );
}

// ---------------------------------------------------------------------------------------------
// --follow

/// Reads a child's stdout line by line into a channel.
fn line_reader(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Collects lines until one contains `needle`; panics after 10 s.
fn until(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("no line with {needle:?} ({e}); so far: {seen:#?}"),
        }
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("trace --follow did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn line_of(e: &Event) -> String {
    format!("{}\n", serde_json::to_string(e).unwrap())
}

#[test]
fn follow_prints_appended_events_waits_for_whole_lines_and_ends_at_destroyed() {
    let dir = tempdir();
    let state = StateDir(dir.path().to_path_buf());
    let id = "d1e2f3a4b5c60006";
    let mut r = Recorder::open(&state, id, Redactor::default()).unwrap();
    let created_at = r.emit(None, created("filter", &[])).unwrap().at;
    r.emit(Some("e1"), started(&["make", "test"])).unwrap();

    let mut child = Command::new(bin())
        .arg("--state-dir")
        .arg(dir.path())
        .args(["trace", &id[..6], "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    until(&rx, &mut seen, "cwd /home/dev/proj");

    r.emit(
        Some("e1"),
        EventKind::FileChanged {
            path: "report.xml".into(),
            change: Change::Modified,
            size: 2048,
        },
    )
    .unwrap();
    until(&rx, &mut seen, "file.changed");

    // Half a line, as a reader may see a write in progress: nothing is printed, nothing warned.
    let exited_line = line_of(&Event {
        schema_version: SCHEMA_VERSION,
        seq: 4,
        at: stockade_audit::event::now_rfc3339(),
        sandbox_id: id.into(),
        exec_id: Some("e1".into()),
        kind: EventKind::ExecExited {
            exit_code: Some(0),
            signal: None,
            duration_ms: 1500,
            cpu_time_ms: None,
            peak_memory_bytes: None,
            output_bytes: 0,
            limit: None,
        },
    });
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(state.sandbox_log(id))
        .unwrap();
    let (a, b) = exited_line.split_at(40);
    log.write_all(a.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rx.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "printed before the line was whole"
    );
    log.write_all(b.as_bytes()).unwrap();
    until(&rx, &mut seen, "exec.exited");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before sandbox.destroyed"
    );

    let destroyed_line = line_of(&Event {
        schema_version: SCHEMA_VERSION,
        seq: 5,
        at: stockade_audit::event::now_rfc3339(),
        sandbox_id: id.into(),
        exec_id: None,
        kind: destroyed(DestroyReason::Exit, 1600),
    });
    log.write_all(destroyed_line.as_bytes()).unwrap();
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    seen.extend(rx.iter());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr, "", "warned about a line being written");

    let out = seen.join("\n") + "\n";
    let (times, rest) = untimed(out.as_bytes());
    let mut want = header(id, &created_at, "filter", "none");
    want.extend(lines(&[
        "├─ exec e1: make test",
        "│  │ cwd /home/dev/proj · env HOME PATH",
        "│  ├─ file.changed modified report.xml (2.0 KiB)",
        "│  ├─ exec.exited  exit 0 in 1.500s · output 0 B",
        "└─ sandbox.destroyed exit · clean · 1.600s",
    ]));
    assert_eq!(rest, want, "{out}");
    check_times(&times, &[0, 9, 11, 12, 13]);
}

#[test]
fn follow_of_a_finished_sandbox_prints_it_and_exits() {
    let f = fixture();
    let o = f.stockade(&["trace", NORMAL, "--follow", "--json"]);
    expect_code(&o, 0);
    assert_eq!(text(&o.stdout), f.stored(NORMAL));
}

#[test]
fn follow_ends_when_its_reader_goes_away() {
    let f = fixture();
    let mut child = Command::new(bin())
        .arg("--state-dir")
        .arg(f.path())
        .args(["trace", RUNNING, "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    assert!(first.contains(&format!("sandbox {RUNNING}")), "{first:?}");
    drop(out); // `| head -1`
    let mut r = fs::OpenOptions::new()
        .append(true)
        .open(f.log(RUNNING))
        .unwrap();
    let line = line_of(&Event {
        schema_version: SCHEMA_VERSION,
        seq: 3,
        at: stockade_audit::event::now_rfc3339(),
        sandbox_id: RUNNING.into(),
        exec_id: Some("e1".into()),
        kind: EventKind::FileRead {
            path: ".env".into(),
        },
    });
    r.write_all(line.as_bytes()).unwrap();
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr, "");
}

#[test]
fn follow_stops_on_ctrl_c_with_130() {
    let f = fixture();
    let mut child = Command::new(bin())
        .arg("--state-dir")
        .arg(f.path())
        .args(["trace", RUNNING, "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    until(&rx, &mut seen, "exec e1: make test");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "follow ended by itself"
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    assert_eq!(wait_exit(&mut child).code(), Some(130));
}

// ---------------------------------------------------------------------------------------------
// ls

/// Table cells, by the header's column starts (all but the last column are ASCII).
fn table(stdout: &[u8]) -> Vec<Vec<String>> {
    let t = text(stdout);
    let mut rows = t.lines();
    let head = rows.next().unwrap();
    let starts: Vec<usize> = ["SANDBOX", "STARTED", "STATUS", "DURATION", "COMMAND"]
        .iter()
        .map(|h| head.find(h).unwrap())
        .collect();
    assert_eq!(starts[0], 0, "{head}");
    rows.map(|r| {
        (0..5)
            .map(|i| {
                let end = starts.get(i + 1).copied().unwrap_or(r.len()).min(r.len());
                r[starts[i]..end].trim_end().to_string()
            })
            .collect()
    })
    .collect()
}

/// Microseconds between two `at`s of the same day or consecutive days.
fn at_diff_ms(a: &str, b: &str) -> u64 {
    let us = |s: &str| -> i64 {
        let (h, m, sec) = (&s[11..13], &s[14..16], &s[17..26]);
        h.parse::<i64>().unwrap() * 3_600_000_000
            + m.parse::<i64>().unwrap() * 60_000_000
            + (sec.parse::<f64>().unwrap() * 1e6).round() as i64
    };
    ((us(b) - us(a)).rem_euclid(86_400_000_000) / 1000) as u64
}

#[test]
fn ls_lists_newest_first_with_status_duration_and_command() {
    let f = fixture();
    let o = f.stockade(&["ls"]);
    expect_code(&o, 0);
    assert_eq!(
        text(&o.stderr),
        format!(
            "stockade: warning: {}:4: torn last line skipped ({} bytes)\n",
            f.log(TORN).display(),
            f.torn_bytes
        )
    );
    let started = |id: &str| format!("{}Z", &first_at(&f.stored(id))[..19]);
    let torn_events: Vec<Event> = f
        .stored(TORN)
        .lines()
        .take(3)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let torn_ms = at_diff_ms(&torn_events[0].at, &torn_events[2].at);
    let rows = table(&o.stdout);
    assert_eq!(rows.len(), 4, "{}", context(&o));
    // The running one's duration is "so far": only its form is known.
    let so_far = rows[0][3].clone();
    assert!(
        so_far.ends_with("ms") && so_far[..so_far.len() - 2].parse::<u64>().is_ok()
            || so_far.ends_with('s') && so_far[..so_far.len() - 1].parse::<f64>().is_ok(),
        "{so_far:?}"
    );
    let fmt_ms = |ms: u64| {
        if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{}.{:03}s", ms / 1000, ms % 1000)
        }
    };
    let want = [
        [RUNNING, &started(RUNNING), "running", &so_far, "make test"],
        [
            TORN,
            &started(TORN),
            "unfinished",
            &fmt_ms(torn_ms),
            "cat missing",
        ],
        [TIMEOUT, &started(TIMEOUT), "timeout", "2.010s", "sleep 100"],
        [
            NORMAL,
            &started(NORMAL),
            "exit 0",
            "330ms",
            "python3 -c 'print(1)'",
        ],
    ];
    assert_eq!(
        rows,
        want.map(|r| r.map(String::from).to_vec()),
        "{}",
        context(&o)
    );

    let o = f.stockade(&["runs", "--limit", "2"]);
    expect_code(&o, 0);
    let ids: Vec<String> = table(&o.stdout).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, [RUNNING, TORN]);

    let o = f.stockade(&["ls", "--json"]);
    expect_code(&o, 0);
    let rows: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[3],
        serde_json::json!({
            "sandbox_id": NORMAL, "created_at": first_at(&f.stored(NORMAL)), "status": "exit 0",
            "running": false, "reason": "exit", "clean": true, "exit_code": 0, "signal": null,
            "limit": null, "duration_ms": 330, "argv": ["python3", "-c", "print(1)"], "events": 5,
        })
    );
    assert_eq!(
        rows[2],
        serde_json::json!({
            "sandbox_id": TIMEOUT, "created_at": first_at(&f.stored(TIMEOUT)), "status": "timeout",
            "running": false, "reason": "timeout", "clean": true, "exit_code": null, "signal": 9,
            "limit": "timeout", "duration_ms": 2010, "argv": ["sleep", "100"], "events": 5,
        })
    );
    assert_eq!(rows[1]["status"], "unfinished");
    assert_eq!(rows[1]["reason"], serde_json::Value::Null);
    assert_eq!(rows[0]["status"], "running");
    assert_eq!(rows[0]["running"], true);

    let empty = tempdir();
    let o = stockade_in(empty.path(), &["ls"]);
    expect_code(&o, 0);
    assert_eq!(
        text(&o.stdout),
        format!("no sandboxes in {}\n", empty.path().display())
    );
}

// ---------------------------------------------------------------------------------------------
// gc

/// What `gc` prints for a size: `N B` or `N.N KiB` (the logs here are far below a MiB).
fn kib(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        let tenths = (n * 10 + 512) / 1024;
        format!("{}.{} KiB", tenths / 10, tenths % 10)
    }
}

fn size(f: &Fixture, id: &str) -> u64 {
    f.sizes[id]
}

fn sandbox_dirs(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(f.state.sandboxes())
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

const WRITTEN: [&str; 3] = [
    "2025-03-01T00:00:00Z",
    "2025-03-02T00:00:00Z",
    "2025-03-03T00:00:00Z",
];

fn removed_line(verb: &str, f: &Fixture, i: usize, status: &str, why: &str) -> String {
    let id = MTIMES[i].0;
    format!(
        "{verb} {id} ({status}, {}, last written {}): {why}",
        kib(size(f, id)),
        WRITTEN[i]
    )
}

/// Splits off the `kept RUNNING (...)` line, whose age in ms varies, checking its form.
fn take_kept_line(out: &mut Vec<String>) {
    let prefix = format!("kept {RUNNING} (running: no sandbox.destroyed, log written ");
    let i = out
        .iter()
        .position(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no kept line: {out:#?}"));
    let l = out.remove(i);
    let age = l[prefix.len()..].strip_suffix(" ago)").unwrap();
    assert!(age.ends_with("ms") || age.ends_with('s'), "{l}");
    out.insert(i, "kept RUNNING".into());
}

#[test]
fn gc_max_age_zero_removes_finished_keeps_running_and_rewrites_the_global_log() {
    let f = fixture();
    let global_before = fs::read_to_string(f.state.global_log()).unwrap();
    assert_eq!(global_before.lines().count(), 15);
    let removed: u64 = [NORMAL, TIMEOUT, TORN].iter().map(|id| size(&f, id)).sum();
    let want = |verb: &str, keep: &str| {
        vec![
            removed_line(verb, &f, 0, "exit 0", "older than 0s"),
            removed_line(verb, &f, 1, "timeout", "older than 0s"),
            removed_line(verb, &f, 2, "unfinished", "older than 0s"),
            "kept RUNNING".into(),
            format!("global log: {keep} 2 of 15 lines"),
            format!(
                "gc: {verb} 3 sandboxes ({}), {keep} 1 ({})",
                kib(removed),
                kib(size(&f, RUNNING))
            ),
        ]
    };

    let o = f.stockade(&["gc", "--max-age", "0s", "--dry-run"]);
    expect_code(&o, 0);
    let mut out: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    take_kept_line(&mut out);
    assert_eq!(out, want("would remove", "would keep"), "{}", context(&o));
    assert_eq!(sandbox_dirs(&f).len(), 4, "dry run removed something");
    assert_eq!(
        fs::read_to_string(f.state.global_log()).unwrap(),
        global_before
    );

    let expected = want("removed", "kept");
    let o = f.stockade(&["gc", "--max-age", "0s"]);
    expect_code(&o, 0);
    assert_eq!(text(&o.stderr), "");
    let mut out: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    take_kept_line(&mut out);
    assert_eq!(out, expected, "{}", context(&o));
    assert_eq!(sandbox_dirs(&f), [RUNNING]);
    // The global log now holds exactly the running sandbox's lines, and no temp file is left.
    assert_eq!(
        fs::read_to_string(f.state.global_log()).unwrap(),
        f.stored(RUNNING)
    );
    let names: Vec<String> = fs::read_dir(f.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(f.state.global_log())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Nothing left to do.
    let o = f.stockade(&["gc", "--max-age", "0s"]);
    expect_code(&o, 0);
    let mut out: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    take_kept_line(&mut out);
    assert_eq!(
        out,
        [
            "kept RUNNING".to_string(),
            format!(
                "gc: removed 0 sandboxes (0 B), kept 1 ({})",
                kib(size(&f, RUNNING))
            )
        ]
    );
}

#[test]
fn gc_max_size_removes_the_oldest_first_until_under() {
    let f = fixture();
    // Room for the two newest only; not a multiple of 1024, so it prints as bytes.
    let mut room = size(&f, TORN) + size(&f, RUNNING);
    if room.is_multiple_of(1024) {
        room += 1;
    }
    let room_s = room.to_string();
    // An age limit nothing reaches: 2025's logs are younger than 1000 days.
    let o = f.stockade(&["gc", "--max-age", "1000d", "--max-size", &room_s]);
    expect_code(&o, 0);
    let why = format!("over the {room}B total");
    let out: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    assert_eq!(
        out,
        [
            removed_line("removed", &f, 0, "exit 0", &why),
            removed_line("removed", &f, 1, "timeout", &why),
            "global log: kept 5 of 15 lines".into(),
            format!(
                "gc: removed 2 sandboxes ({}), kept 2 ({})",
                kib(size(&f, NORMAL) + size(&f, TIMEOUT)),
                kib(size(&f, TORN) + size(&f, RUNNING))
            ),
        ],
        "{}",
        context(&o)
    );
    assert_eq!(sandbox_dirs(&f), [RUNNING, TORN]);

    // Too small for even the running one: it stays, and gc says why the total is still over.
    let o = f.stockade(&["gc", "--max-age", "1000d", "--max-size", "1"]);
    expect_code(&o, 0);
    let mut out: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    take_kept_line(&mut out);
    assert_eq!(
        out,
        [
            format!(
                "removed {TORN} (unfinished, {}, last written {}): over the 1B total",
                kib(size(&f, TORN)),
                WRITTEN[2]
            ),
            "kept RUNNING".into(),
            "global log: kept 2 of 5 lines".into(),
            format!(
                "gc: removed 1 sandbox ({}), kept 1 ({})",
                kib(size(&f, TORN)),
                kib(size(&f, RUNNING))
            ),
            "gc: still over 1B: what is left is running".into(),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// A real run

#[test]
fn a_real_run_is_traced_listed_and_collected() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this end-to-end test runs a real sandbox and needs root (cgroups); CI runs it as root"
    );
    let state = tempdir();
    let ws = tempdir();
    let script = "echo hi; echo data > out.txt";
    let argv = ["sh", "-c", script];
    let mut all: Vec<String> = ["--state-dir", &state.path().display().to_string(), "run"]
        .map(String::from)
        .to_vec();
    all.extend([
        "--workspace".into(),
        ws.path().display().to_string(),
        "--".into(),
    ]);
    all.extend(argv.map(String::from));
    let o = run_bounded(Command::new(bin()).args(&all).current_dir(ws.path()), &all);
    expect_code(&o, 0);
    assert_eq!(text(&o.stdout), "hi\n");

    let sandboxes: Vec<String> = fs::read_dir(state.path().join("sandboxes"))
        .unwrap_or_else(|e| panic!("stockade run wrote no audit trail under --state-dir: {e}"))
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let id = sandboxes[0].as_str();
    let st = StateDir(state.path().to_path_buf());
    let stored = fs::read_to_string(st.sandbox_log(id)).unwrap();

    // --last --json is the stored log, byte for byte, and the log says what happened.
    let t = stockade_in(state.path(), &["trace", "--last", "--json"]);
    expect_code(&t, 0);
    assert_eq!(text(&t.stdout), stored);
    assert_eq!(text(&t.stderr), "");
    assert_eq!(fs::read_to_string(st.global_log()).unwrap(), stored);
    let events: Vec<Event> = stored
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e.kind.type_name()).collect();
    assert_eq!(
        types,
        [
            "sandbox.created",
            "exec.started",
            "file.changed",
            "exec.exited",
            "sandbox.destroyed"
        ],
        "{stored}"
    );
    let exec_id = events[1]
        .exec_id
        .clone()
        .expect("exec.started without exec_id");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.sandbox_id, id);
        assert_eq!(e.schema_version, SCHEMA_VERSION);
        let is_exec = (1..=3).contains(&i);
        assert_eq!(e.exec_id.as_ref(), is_exec.then_some(&exec_id), "{e:?}");
    }
    let EventKind::SandboxCreated {
        workspace,
        workspace_mode,
        enforced,
        ..
    } = &events[0].kind
    else {
        unreachable!()
    };
    assert_eq!(workspace, &ws.path().display().to_string());
    assert_eq!(workspace_mode, "rw");
    assert_eq!(enforced.level, "container");
    assert!(
        enforced.no_new_privs && enforced.capabilities_dropped,
        "{enforced:?}"
    );
    assert!(enforced.weakenings.is_empty(), "{enforced:?}");
    let EventKind::ExecStarted {
        argv: got,
        env_names,
        ..
    } = &events[1].kind
    else {
        unreachable!()
    };
    assert_eq!(got, &argv.map(String::from));
    assert!(
        env_names.iter().any(|n| n == "PATH") && !env_names.iter().any(|n| n.contains('=')),
        "{env_names:?}"
    );
    assert_eq!(
        events[2].kind,
        EventKind::FileChanged {
            path: "out.txt".into(),
            change: Change::Created,
            size: 5
        }
    );
    let EventKind::ExecExited {
        exit_code,
        signal,
        output_bytes,
        limit,
        ..
    } = &events[3].kind
    else {
        unreachable!()
    };
    assert_eq!(
        (*exit_code, *signal, *output_bytes, *limit),
        (Some(0), None, 3, None)
    );
    let EventKind::SandboxDestroyed {
        reason,
        clean,
        leftovers,
        error,
        ..
    } = &events[4].kind
    else {
        unreachable!()
    };
    assert_eq!(
        (*reason, *clean, leftovers.len(), error),
        (DestroyReason::Exit, true, 0, &None)
    );

    // The tree: the command, its file change and exit under it, then the verdict.
    let t = stockade_in(state.path(), &["trace", &id[..8]]);
    expect_code(&t, 0);
    let (_, rest) = untimed(&t.stdout);
    assert_eq!(rest[0], format!("sandbox {id}  created {}", events[0].at));
    assert_eq!(
        &rest[9..12],
        [
            format!("├─ exec {exec_id}: sh -c 'echo hi; echo data > out.txt'"),
            format!(
                "│  │ cwd {} · env {}",
                ws.path().display(),
                env_names.join(" ")
            ),
            "│  ├─ file.changed created out.txt (5 B)".into(),
        ],
        "{}",
        context(&t)
    );
    assert!(
        rest[12].starts_with("│  └─ exec.exited  exit 0 in "),
        "{}",
        rest[12]
    );
    assert!(rest[12].ends_with(" · output 3 B"), "{}", rest[12]);
    assert!(
        rest[13].starts_with("└─ sandbox.destroyed exit · clean · "),
        "{}",
        rest[13]
    );
    assert_eq!(rest.len(), 14, "{}", context(&t));

    let l = stockade_in(state.path(), &["ls"]);
    expect_code(&l, 0);
    let rows = table(&l.stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        [&rows[0][0], &rows[0][2], &rows[0][4]],
        [id, "exit 0", "sh -c 'echo hi; echo data > out.txt'"]
    );

    let g = stockade_in(state.path(), &["gc", "--max-age", "0s"]);
    expect_code(&g, 0);
    assert!(!st.sandbox_dir(id).exists(), "{}", context(&g));
    assert_eq!(fs::read_to_string(st.global_log()).unwrap(), "");
}
