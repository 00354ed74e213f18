//! End-to-end tests of a sandbox's life and death with the real `stockade` binary: daemons do not
//! outlive the run, SIGKILL/SIGTERM/SIGINT to stockade leave no process or cgroup, overlay mode
//! leaves the host byte-identical and lists the changes, bad input fails with one clear line and
//! leaves nothing behind, sample policies check, and an unprivileged user fails closed or runs
//! with `--allow-weaker-isolation`.
//!
//! Every test takes the `serial()` lock: several take host-wide before/after snapshots (cgroup
//! leaves, mounts, `__launch` processes, /tmp) that another sandbox of this binary would disturb.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_limits;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support_limits::*;

// ---------------------------------------------------------------------------------------------
// 7. setsid + double-fork daemon

/// `python3 -c DAEMON TAG`: forks; the child calls setsid and forks again; the grandchild writes
/// `daemon.ready` ("its session id, the main process's session id") and execs a sleeper whose argv carries "stockade-e2e-daemon-TAG" (a string
/// that is not in stockade's own argv). The main process waits for the file `go`, then exits 0.
const DAEMON: &str = r#"
import os, sys, time
marker = "stockade-e2e-daemon-" + sys.argv[1]
main_sid = os.getsid(0)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("daemon.ready.tmp", "w").write("%d %d" % (os.getsid(0), main_sid))
        os.rename("daemon.ready.tmp", "daemon.ready")
        os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(300)", marker])
    os._exit(0)
os.wait()
while not os.path.exists("go"):
    time.sleep(0.02)
print("main done", flush=True)
"#;

#[test]
fn setsid_double_fork_daemon_does_not_outlive_the_run() {
    let _g = serial();
    require_root("daemon");
    let ws = tempdir();
    let tag = unique_tag();
    let marker = format!("stockade-e2e-daemon-{tag}");

    let running = spawn(
        &run_args(ws.path(), &[], &["python3", "-c", DAEMON, &tag]),
        ws.path(),
    );
    let stockade_pid = running.pid();
    assert!(
        poll(Duration::from_secs(30), || ws
            .path()
            .join("daemon.ready")
            .exists()),
        "the daemon never started"
    );
    // Control: while the run is alive, the daemon is a real host process under stockade.
    let mut found = Vec::new();
    let seen = poll(Duration::from_secs(10), || {
        found = marker_procs(&marker);
        !found.is_empty()
    });
    assert!(
        seen,
        "control: the daemon ({marker}) must be visible on the host while the run is alive"
    );
    assert_eq!(found.len(), 1, "one daemon expected: {found:?}");
    let sids = std::fs::read_to_string(ws.path().join("daemon.ready")).unwrap();
    let sids: Vec<&str> = sids.split(' ').collect();
    assert!(
        sids.len() == 2 && sids[0] != sids[1],
        "the daemon must be in a session of its own: {sids:?}"
    );
    let id = sandbox_id_of(found[0].pid);
    let under: Vec<i32> = descendants(stockade_pid).iter().map(|p| p.pid).collect();
    assert!(
        under.contains(&found[0].pid),
        "the daemon must descend from stockade {stockade_pid}: {found:?}"
    );

    std::fs::write(ws.path().join("go"), b"").unwrap();
    let out = running.finish(Duration::from_secs(60));
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "main done\n", "{}", out.context());
    let left = marker_procs(&marker);
    assert!(
        left.is_empty(),
        "the daemon outlived the run: {left:?}\n{}",
        out.context()
    );
    let leaves = leaves_of(&id);
    assert!(
        leaves.is_empty(),
        "cgroup leaves remain after the run: {leaves:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8, 9. stockade killed or signalled mid-run

/// `sh -c SLEEPERS sh TAG`: one background and one foreground python sleeper whose argv carries
/// "stockade-e2e-sleeper-TAG" (not in stockade's argv), `ready` written in between.
const SLEEPERS: &str = r#"python3 -c 'import time; time.sleep(300)' "stockade-e2e-sleeper-$1" &
echo started > ready
exec python3 -c 'import time; time.sleep(300)' "stockade-e2e-sleeper-$1""#;

/// A run of SLEEPERS that has reached both sleepers: (the run, the marker, the new cgroup leaf id).
fn start_sleepers(ws: &Path) -> (Running, String, String) {
    let tag = unique_tag();
    let marker = format!("stockade-e2e-sleeper-{tag}");
    let running = spawn(&run_args(ws, &[], &["sh", "-c", SLEEPERS, "sh", &tag]), ws);
    assert!(
        poll(Duration::from_secs(30), || ws.join("ready").exists()),
        "the sandbox never wrote `ready`"
    );
    assert!(
        poll(Duration::from_secs(10), || marker_procs(&marker).len() == 2),
        "control: both sleepers must be visible on the host mid-run, found {:?}",
        marker_procs(&marker)
    );
    let sleeper = marker_procs(&marker)[0].pid;
    let id = sandbox_id_of(sleeper);
    let leaves = leaves_of(&id);
    assert_eq!(
        leaves.len(),
        4,
        "sandbox {id} must have a pids, cpu, cpuacct and memory leaf: {leaves:?}"
    );
    (running, marker, id)
}

#[test]
fn sigkill_to_stockade_leaves_no_process_within_1s_and_no_cgroup() {
    let _g = serial();
    require_root("SIGKILL");
    let ws = tempdir();
    let (mut running, marker, id) = start_sleepers(ws.path());
    let stockade_pid = running.pid();
    let family = descendants(stockade_pid);
    let launchers = family.iter().filter(|p| p.is_launcher()).count();
    assert!(
        launchers >= 1,
        "control: a __launch process must descend from stockade mid-run: {family:?}"
    );

    send_signal(stockade_pid, libc::SIGKILL);
    let killed_at = Instant::now();
    let status = running.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    let mut left: Vec<String> = Vec::new();
    let gone = poll(
        Duration::from_secs(1).saturating_sub(killed_at.elapsed()),
        || {
            left = marker_procs(&marker)
                .iter()
                .map(|p| format!("marker pid {} {}", p.pid, p.cmdline_str()))
                .collect();
            left.extend(
                family
                    .iter()
                    .filter(|p| alive(p))
                    .map(|p| format!("descendant pid {} {}", p.pid, p.cmdline_str())),
            );
            left.is_empty()
        },
    );
    assert!(
        gone,
        "processes of the sandbox survived stockade's SIGKILL by {:?}:\n  {}",
        killed_at.elapsed(),
        left.join("\n  ")
    );
    let mut remaining = Vec::new();
    let cleaned = poll(Duration::from_secs(5), || {
        remaining = leaves_of(&id);
        remaining.is_empty()
    });
    assert!(
        cleaned,
        "cgroup leaves of sandbox {id} remain 5 s after stockade's SIGKILL: {remaining:?}"
    );
}

#[test]
fn sigterm_and_sigint_to_stockade_stop_the_sandbox() {
    let _g = serial();
    require_root("SIGTERM");
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let ws = tempdir();
        let (running, marker, id) = start_sleepers(ws.path());
        send_signal(running.pid(), sig);
        let out = running.finish(Duration::from_secs(30));
        out.expect_code(code).expect_stderr_line(&format!(
            "stockade: stopped: stockade received signal {sig}"
        ));
        let left = marker_procs(&marker);
        assert!(
            left.is_empty(),
            "signal {sig}: sandbox processes outlived stockade: {left:?}\n{}",
            out.context()
        );
        let leaves = leaves_of(&id);
        assert!(
            leaves.is_empty(),
            "signal {sig}: cgroup leaves remain after exit: {leaves:?}\n{}",
            out.context()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. overlay

fn overlay_fixture() -> tempfile::TempDir {
    let ws = tempdir();
    let p = ws.path();
    std::fs::create_dir_all(p.join("sub/deeper")).unwrap();
    std::fs::write(p.join("a.txt"), "a\n").unwrap();
    std::fs::write(p.join("b.txt"), "b\n").unwrap();
    std::fs::set_permissions(p.join("b.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(p.join("sub/c.txt"), "c\n").unwrap();
    std::fs::write(p.join("sub/tool.sh"), "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(
        p.join("sub/tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(p.join("sub/deeper/d.txt"), "d\n").unwrap();
    std::os::unix::fs::symlink("sub/c.txt", p.join("link")).unwrap();
    ws
}

/// Creates new.txt, modifies a.txt, deletes b.txt, removes the directory sub/deeper, then shows
/// what the sandbox sees.
const CHANGES: &str = "echo new > new.txt && echo more >> a.txt && rm b.txt && rm -r sub/deeper && cat a.txt new.txt && ls";

#[test]
fn overlay_leaves_host_byte_identical_and_lists_changes() {
    let _g = serial();
    require_root("overlay");
    let ws = overlay_fixture();
    let before = snapshot(ws.path());
    let json_dir = tempdir();
    let json = json_dir.path().join("changes.json");
    let json_s = json.display().to_string();

    let out = run(
        ws.path(),
        &["--workspace-mode", "overlay", "--changes-json", &json_s],
        &["sh", "-c", CHANGES],
    );
    out.expect_code(0);
    assert_eq!(
        out.stdout_str(),
        "a\nmore\nnew\na.txt\nlink\nnew.txt\nsub\n",
        "the sandbox sees its changes: {}",
        out.context()
    );
    assert_eq!(
        snapshot(ws.path()),
        before,
        "overlay mode changed the host directory: {}",
        out.context()
    );

    let expected: BTreeSet<(String, &str, u64)> = [
        ("a.txt", "modified", 7),
        ("b.txt", "deleted", 0),
        ("new.txt", "created", 4),
        ("sub/deeper", "deleted", 0),
        ("sub/deeper/d.txt", "deleted", 0),
    ]
    .into_iter()
    .map(|(p, k, s)| (p.to_string(), k, s))
    .collect();

    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("stockade: overlay changes (5):"),
        "{}",
        out.context()
    );
    let listed: BTreeSet<String> = lines[1..].iter().map(|l| l.to_string()).collect();
    let want: BTreeSet<String> = expected
        .iter()
        .map(|(p, k, s)| format!("  {k:<8} {p} ({s} bytes)"))
        .collect();
    assert_eq!(
        lines.len(),
        6,
        "header plus exactly 5 change lines, nothing else: {}",
        out.context()
    );
    assert_eq!(listed, want, "{}", out.context());

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let id = v["sandbox_id"].as_str().unwrap_or_default();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "sandbox_id: {v}"
    );
    let changes = v["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes array: {v}"));
    let got: BTreeSet<(String, String, u64)> = changes
        .iter()
        .map(|c| {
            assert_eq!(
                c.as_object().map(|o| o.len()),
                Some(3),
                "exactly path, kind, size: {c}"
            );
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
                c["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64)> = expected
        .iter()
        .map(|(p, k, s)| (p.clone(), k.to_string(), *s))
        .collect();
    assert_eq!(changes.len(), 5, "{v}");
    assert_eq!(got, want, "{v}");

    // Control: the same commands in rw mode do change the host directory.
    let rw = overlay_fixture();
    let out = run(
        rw.path(),
        &["--workspace-mode", "rw"],
        &["sh", "-c", CHANGES],
    );
    out.expect_code(0);
    assert!(!out.stderr.contains("overlay changes"), "{}", out.context());
    let p = rw.path();
    assert_eq!(
        std::fs::read_to_string(p.join("a.txt")).unwrap(),
        "a\nmore\n"
    );
    assert_eq!(std::fs::read_to_string(p.join("new.txt")).unwrap(), "new\n");
    assert!(
        !p.join("b.txt").exists() && !p.join("sub/deeper").exists() && p.join("sub/c.txt").exists()
    );
}

// ---------------------------------------------------------------------------------------------
// 11. bad input

#[test]
fn bad_input_gets_one_clear_error_and_leaves_nothing() {
    let _g = serial();
    require_root("bad input");
    let ws = tempdir();
    let w = ws.path();
    let wp = w.display().to_string();

    // Usage errors from clap may span lines: exit 125 and name the problem.
    let out = run_clean(&["run"], w);
    out.expect_code(125);
    assert!(
        out.stderr.contains("<CMD>") && out.stderr.contains("required"),
        "{}",
        out.context()
    );
    let out = run_clean(&["run", "--bogus-flag", "--", "true"], w);
    out.expect_code(125);
    assert!(out.stderr.contains("--bogus-flag"), "{}", out.context());

    // Malformed policy: the value "12XB" starts at line 3, column 10.
    let bad = w.join("bad.toml");
    std::fs::write(&bad, "version = 1\n[limits]\nmemory = \"12XB\"\n").unwrap();
    let bad_s = bad.display().to_string();
    expect_error(
        &["run", "--workspace", &wp, "--policy", &bad_s, "--", "true"],
        w,
        125,
        &[&format!("{bad_s}:3:10:"), "memory", "12XB"],
    );

    // Contradictory policy: the same variable set and passed through.
    let contra = w.join("contra.toml");
    std::fs::write(
        &contra,
        "[process]\nenv = { STOCKADE_E2E_VAR = \"x\" }\nenv_pass = [\"STOCKADE_E2E_VAR\"]\n",
    )
    .unwrap();
    let contra_s = contra.display().to_string();
    expect_error(
        &[
            "run",
            "--workspace",
            &wp,
            "--policy",
            &contra_s,
            "--",
            "true",
        ],
        w,
        125,
        &["STOCKADE_E2E_VAR", "env_pass"],
    );

    // Workspaces.
    let missing = w.join("no-such-dir");
    let missing_s = missing.display().to_string();
    expect_error(
        &["run", "--workspace", &missing_s, "--", "true"],
        w,
        125,
        &[&missing_s],
    );
    for sys in ["/", "/etc", "/usr"] {
        expect_error(
            &["run", "--workspace", sys, "--", "true"],
            w,
            125,
            &[&format!("workspace {sys} "), "--allow-system-path"],
        );
    }
    // Control: the same refusal is lifted by the flag.
    let out = run_clean(
        &[
            "run",
            "--workspace",
            "/usr",
            "--allow-system-path",
            "--workspace-mode",
            "ro",
            "--",
            "ls",
            "-d",
            "/usr/bin",
        ],
        w,
    );
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "/usr/bin\n", "{}", out.context());

    // Limits below a working minimum; control: small but workable limits run.
    expect_error(
        &["run", "--workspace", &wp, "--memory", "1MiB", "--", "true"],
        w,
        125,
        &["--memory", "1MiB"],
    );
    expect_error(
        &["run", "--workspace", &wp, "--pids", "1", "--", "true"],
        w,
        125,
        &["--pids"],
    );
    let out = run_clean(
        &[
            "run",
            "--workspace",
            &wp,
            "--memory",
            "64MiB",
            "--pids",
            "16",
            "--",
            "true",
        ],
        w,
    );
    out.expect_code(0);

    // Not found / not executable inside (these do build a sandbox, then must tear it down).
    expect_error(
        &["run", "--workspace", &wp, "--", "no-such-command-e2e"],
        w,
        127,
        &["no-such-command-e2e", "not found inside the sandbox"],
    );
    let script = w.join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    expect_error(
        &["run", "--workspace", &wp, "--", "./script.sh"],
        w,
        126,
        &["script.sh"],
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_clean(&["run", "--workspace", &wp, "--", "./script.sh"], w);
    out.expect_code(0);
    assert_eq!(
        out.stdout_str(),
        "ran\n",
        "control: the executable script runs: {}",
        out.context()
    );
}

// ---------------------------------------------------------------------------------------------
// 12. policy check

#[test]
fn policy_check_passes_samples_and_reports_errors_with_line_and_column() {
    let _g = serial();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    samples.sort();
    assert!(
        samples.len() >= 3,
        "expected the sample policies in {}: {samples:?}",
        dir.display()
    );
    for s in &samples {
        let sp = s.display().to_string();
        let out = stockade(&["policy", "check", &sp], &dir);
        out.expect_code(0);
        assert_eq!(out.stdout_str(), format!("{sp}: ok\n"), "{}", out.context());
    }

    let ws = tempdir();
    let bad = ws.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[limits]\nmemory = \"12XB\"\npids = 0\nbogus = 1\n",
    )
    .unwrap();
    let bp = bad.display().to_string();
    let out = stockade(&["policy", "check", &bp], ws.path());
    out.expect_code(125);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line per error: {}", out.context());
    for (line, (at, key)) in lines.iter().zip([
        ("3:10", "limits.memory"),
        ("4:8", "limits.pids"),
        ("5:1", "limits.bogus"),
    ]) {
        assert!(
            line.starts_with(&format!("{bp}:{at}: {key}: ")),
            "expected {bp}:{at}: {key}: ...: {}",
            out.context()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 13. unprivileged use

#[test]
fn unprivileged_user_fails_closed_without_cgroups_and_runs_weaker_with_the_flag() {
    let _g = serial();
    require_root("unprivileged (useradd and setpriv need root)");
    let (uid, gid) = ensure_user();
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("stockade");
    std::fs::copy(bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(uid), Some(gid)).unwrap();
    // The user's own audit state directory (its HOME here is root's, which it cannot write).
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    let as_user = |flags: &[&str], cmd: &[&str]| {
        let mut a = strings(&["--reuid", E2E_USER, "--regid", E2E_USER, "--init-groups"]);
        a.push(binary.display().to_string());
        a.push("--state-dir".into());
        a.push(state.display().to_string());
        a.extend(run_args(&ws, flags, cmd));
        spawn_program("setpriv", &a, &ws).finish(HARD_LIMIT)
    };

    // Sanity: the user really is unprivileged.
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            E2E_USER,
            "--regid",
            E2E_USER,
            "--init-groups",
            "id",
            "-u",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        uid.to_string(),
        "setpriv must switch to {E2E_USER}"
    );
    assert_ne!(uid, 0);

    // Fail closed: no writable cgroup for this user, so the limits cannot be enforced.
    let before = host_state();
    let refused = as_user(&[], &["id", "-u"]);
    assert_nothing_left(&before, "unprivileged refused run");
    refused.expect_code(125);
    let line = refused.expect_one_error_line();
    assert!(
        line.contains("cgroup") && line.contains("--allow-weaker-isolation"),
        "{}",
        refused.context()
    );
    assert!(
        refused.stdout.is_empty(),
        "the command must not have run: {}",
        refused.context()
    );

    // With the opt-out it runs, says so, keeps seccomp, and writes as the user.
    let before = host_state();
    let out = as_user(
        &["--allow-weaker-isolation"],
        &[
            "sh",
            "-c",
            "id -u; grep '^Seccomp:' /proc/self/status; echo hello > owned.txt",
        ],
    );
    assert_nothing_left(&before, "unprivileged weaker run");
    out.expect_code(0);
    assert_eq!(out.stdout_str(), "1000\nSeccomp:\t2\n", "{}", out.context());
    assert!(
        out.stockade_lines()
            .iter()
            .any(|l| l.starts_with("stockade: weaker isolation") && l.contains("cgroup")),
        "the weakening must be printed: {}",
        out.context()
    );
    let written = ws.join("owned.txt");
    let m = std::fs::metadata(&written)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", written.display(), out.context()));
    assert_eq!(
        (m.uid(), m.gid()),
        (uid, gid),
        "files in the workspace belong to {E2E_USER} on the host"
    );
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "hello\n");
}
