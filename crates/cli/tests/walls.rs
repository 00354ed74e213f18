//! End-to-end tests of the walls of `stockade run`, through the real binary and real sandboxes.
//!
//! Every denial is checked by its exact errno (or exit status) next to a control that runs the
//! same probe without that wall (the path bound with `--mount`, the probe run on the host, the
//! filter turned off with `--allow-weaker-isolation`, the variable passed with `--env-pass`), so
//! no test can pass because the probe itself is broken. Probes are small Python programs that
//! print one JSON object: `{"name": ["ok", value]}` or `{"name": ["err", errno]}`.
//!
//! Needs what CI has: root (or unprivileged user namespaces), `/usr/bin/python3`, x86_64.

// Helpers outside #[test] fns panic on failure too: that is how a test reports.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ENOENT: i64 = libc::ENOENT as i64;
const EROFS: i64 = libc::EROFS as i64;

// --- helpers ------------------------------------------------------------------------------------

/// Helpers for every probe: `t(name, f)` records f's value or its errno; `sc(nr, ...)` is a raw
/// syscall returning `[ret, errno]` (errno 0 on success).
const PRELUDE: &str = r#"
import ctypes, json, os, socket, sys
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
def write(p, s):
    with open(p, "w") as f:
        return f.write(s)
"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockade")
}

fn workspace() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stockade-walls-ws-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A name no other test run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("stockade-walls-{tag}-{}-{nanos}", std::process::id())
}

/// `stockade run --workspace WS FLAGS -- CMD`, bounded by a generous timeout.
fn sandbox(ws: &Path, flags: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("run")
        .arg("--workspace")
        .arg(ws)
        .args(["--timeout", "120s"])
        .args(flags)
        .arg("--")
        .args(cmd);
    c.stdin(Stdio::null());
    c
}

fn output(mut c: Command) -> Output {
    let out = c.output().unwrap();
    let code = out.status.code();
    assert_ne!(
        code,
        Some(127),
        "command not found: {c:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        code,
        Some(125),
        "stockade failed: {c:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn success(c: Command) -> String {
    let shown = format!("{c:?}");
    let out = output(c);
    assert!(
        out.status.success(),
        "{shown} exited {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse(stdout: &str) -> Value {
    let last = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("probe printed nothing"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("probe output {stdout:?}: {e}"))
}

/// The probe `body` (after PRELUDE, ending with the JSON print) as python3 arguments.
fn python(body: &str, args: &[&str]) -> Vec<String> {
    let script = format!("{PRELUDE}\n{body}\nprint(json.dumps(R))\n");
    ["/usr/bin/python3".to_string(), "-c".into(), script]
        .into_iter()
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

fn probe_in(ws: &Path, flags: &[&str], body: &str, args: &[&str]) -> Value {
    let argv = python(body, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    parse(&success(sandbox(ws, flags, &argv)))
}

fn probe_host(body: &str, args: &[&str]) -> Value {
    let argv = python(body, args);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).stdin(Stdio::null());
    parse(&success(c))
}

fn err(errno: i64) -> Value {
    json!(["err", errno])
}

fn ok<T: Into<Value>>(v: T) -> Value {
    json!(["ok", v.into()])
}

/// Polls `cond` until it holds, failing after 30 s with `what`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills and reaps a child when the test ends, passing or not.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if proc_status_field(pid, "PPid:").as_deref() == Some(parent.to_string().as_str()) {
            out.push(pid);
        }
    }
    out
}

fn environ_names(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv.split(|&b| b == b'=').next().unwrap()).into_owned())
        .collect()
}

// --- 1. host files are not visible ------------------------------------------------------------

const READ_PROBE: &str = r#"
canary, host_home = sys.argv[1], sys.argv[2]
t("canary", lambda: read(canary))
t("shadow", lambda: os.stat("/etc/shadow").st_size > 0)
t("root", lambda: os.stat("/root").st_nlink > 0)
t("host_home", lambda: os.stat(host_home).st_nlink > 0)
t("home_list", lambda: sorted(os.listdir("/home")))
"#;

#[test]
fn host_files_outside_the_binds_do_not_exist_inside() {
    let ws = workspace();
    let dir = tempfile::Builder::new()
        .prefix("stockade-walls-secret-")
        .tempdir_in("/opt")
        .unwrap();
    let home = tempfile::Builder::new()
        .prefix("stockade-walls-home-")
        .tempdir_in("/home")
        .unwrap();
    let content = unique("canary");
    let canary = dir.path().join("canary.txt");
    std::fs::write(&canary, &content).unwrap();
    let args = [canary.to_str().unwrap(), home.path().to_str().unwrap()];

    let inside = probe_in(ws.path(), &[], READ_PROBE, &args);
    assert_eq!(inside["canary"], err(ENOENT), "{inside}");
    assert_eq!(inside["shadow"], err(ENOENT), "{inside}");
    assert_eq!(inside["root"], err(ENOENT), "{inside}");
    assert_eq!(inside["host_home"], err(ENOENT), "{inside}");
    assert_eq!(inside["home_list"], ok(json!(["sandbox"])), "{inside}");

    // Control: the same probe on the host sees every one of them.
    let host = probe_host(READ_PROBE, &args);
    assert_eq!(host["canary"], ok(content.as_str()), "{host}");
    assert_eq!(host["shadow"], ok(true), "{host}");
    assert_eq!(host["root"], ok(true), "{host}");
    assert_eq!(host["host_home"], ok(true), "{host}");

    // Control: binding the directory makes the very same read succeed inside.
    let bound = probe_in(
        ws.path(),
        &["--mount", dir.path().to_str().unwrap()],
        READ_PROBE,
        &args,
    );
    assert_eq!(bound["canary"], ok(content.as_str()), "{bound}");
}

// --- 2. writes outside the workspace fail -----------------------------------------------------

const WRITE_PROBE: &str = r#"
for p in sys.argv[1:]:
    t(p, lambda: write(p, "written:" + p))
"#;

#[test]
fn writes_outside_the_workspace_fail_with_erofs() {
    let ws = workspace();
    let name = unique("w");
    let outside: Vec<PathBuf> = ["/usr", "/etc", "/"]
        .iter()
        .map(|d| Path::new(d).join(&name))
        .collect();
    let inside_ws = ws.path().join(&name);
    let mut args: Vec<&str> = outside.iter().map(|p| p.to_str().unwrap()).collect();
    args.push(inside_ws.to_str().unwrap());

    let r = probe_in(ws.path(), &[], WRITE_PROBE, &args);
    for p in &outside {
        assert_eq!(r[p.to_str().unwrap()], err(EROFS), "{}: {r}", p.display());
        assert!(!p.exists(), "{} appeared on the host", p.display());
    }
    // Control: the same write into the workspace goes through to the host.
    let expect = format!("written:{}", inside_ws.display());
    assert_eq!(r[inside_ws.to_str().unwrap()], ok(expect.len()), "{r}");
    assert_eq!(std::fs::read_to_string(&inside_ws).unwrap(), expect);
}

#[test]
fn read_only_workspace_refuses_writes_with_erofs() {
    let ws = workspace();
    let target = ws.path().join("file.txt");
    let args = [target.to_str().unwrap()];

    let ro = probe_in(ws.path(), &["--workspace-mode", "ro"], WRITE_PROBE, &args);
    assert_eq!(ro[args[0]], err(EROFS), "{ro}");
    assert!(!target.exists(), "the ro workspace was written");

    // Control: the same probe with --workspace-mode rw writes the file.
    let rw = probe_in(ws.path(), &["--workspace-mode", "rw"], WRITE_PROBE, &args);
    let expect = format!("written:{}", target.display());
    assert_eq!(rw[args[0]], ok(expect.len()), "{rw}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), expect);
}

// --- 3. host processes are invisible ----------------------------------------------------------

/// The marker is passed in two halves so the probe's own command line never contains it whole.
const PROC_PROBE: &str = r#"
marker = (sys.argv[1] + sys.argv[2]).encode()
hits, pids = [], []
for d in os.listdir("/proc"):
    if d.isdigit():
        pids.append(int(d))
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if marker in f.read():
                    hits.append(int(d))
        except OSError:
            pass
R["hits"] = hits
R["pids"] = sorted(pids)
R["me"] = os.getpid()
"#;

#[test]
fn host_processes_are_invisible_and_the_command_is_pid_2() {
    let ws = workspace();
    let marker = unique("proc");
    let (a, b) = marker.split_at(marker.len() / 2);
    let sleeper = Reaped(
        Command::new("sleep")
            .arg0(&marker)
            .arg("1000")
            .spawn()
            .unwrap(),
    );
    let sleeper_pid = i64::from(sleeper.0.id());

    // Control: the probe on the host finds the marker process.
    let host = probe_host(PROC_PROBE, &[a, b]);
    assert!(
        host["hits"]
            .as_array()
            .unwrap()
            .contains(&json!(sleeper_pid)),
        "host scan: {host}"
    );

    let inside = probe_in(ws.path(), &[], PROC_PROBE, &[a, b]);
    assert_eq!(inside["hits"], json!([]), "{inside}");
    assert_eq!(inside["me"], json!(2), "{inside}");
    // PID 1 (the agent) and the command; nothing of the host's.
    assert_eq!(inside["pids"], json!([1, 2]), "{inside}");
}

// --- 4. loopback only ---------------------------------------------------------------------------

const NET_PROBE: &str = r#"
port = int(sys.argv[1])
def connect(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(addr)
        return "connected"
    finally:
        s.close()
t("loopback", lambda: connect(("127.0.0.1", port)))
t("testnet", lambda: connect(("192.0.2.1", 9)))
t("ifaces", lambda: sorted(l.split(":")[0].strip() for l in read("/proc/net/dev").splitlines()[2:]))
"#;

#[test]
fn network_is_loopback_only_and_the_host_loopback_is_unreachable() {
    let ws = workspace();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    listener.set_nonblocking(true).unwrap();

    let r = probe_in(ws.path(), &[], NET_PROBE, &[&port]);
    assert_eq!(r["loopback"], err(i64::from(libc::ECONNREFUSED)), "{r}");
    assert_eq!(r["testnet"], err(i64::from(libc::ENETUNREACH)), "{r}");
    assert_eq!(r["ifaces"], ok(json!(["lo"])), "{r}");

    // A connection from the sandbox would have completed its handshake, and so be queued, before
    // the sandbox exited: the queue must be empty.
    let mut accepted = 0;
    loop {
        match listener.accept() {
            Ok(_) => accepted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    assert_eq!(accepted, 0, "the sandbox reached the host's listener");

    // Control: the host itself reaches the same listener, counted once.
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut control = 0;
    wait_for("the control connection", || match listener.accept() {
        Ok(_) => {
            control += 1;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    });
    assert_eq!(control, 1);
}

// --- 5. environment -------------------------------------------------------------------------------

const SAFE_NAMES: &[&str] = &["HOME", "LANG", "PATH", "TERM", "TZ", "USER"];

fn env_of(out: &str) -> Vec<(String, String)> {
    out.lines()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap()
        })
        .collect()
}

/// stockade with a known host environment: a canary, LANG and TERM set, TZ unset.
fn sandbox_with_canary(
    ws: &Path,
    flags: &[&str],
    cmd: &[&str],
    canary: &(String, String),
) -> Command {
    let mut c = sandbox(ws, flags, cmd);
    c.env(&canary.0, &canary.1)
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .env_remove("TZ");
    c
}

#[test]
fn host_environment_is_not_inherited_by_the_command() {
    let ws = workspace();
    let canary = (
        unique("env").replace('-', "_").to_uppercase(),
        unique("value"),
    );
    let env = env_of(&success(sandbox_with_canary(
        ws.path(),
        &[],
        &["env"],
        &canary,
    )));
    let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["HOME", "LANG", "PATH", "TERM", "USER"]),
        "{env:?}"
    );
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("HOME"), Some("/home/sandbox"));
    assert_eq!(
        get("PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    assert_eq!(get("USER"), Some("sandbox"));
    assert_eq!(get("LANG"), Some("C.UTF-8"));
    assert_eq!(get("TERM"), Some("dumb"));
    assert!(
        !env.iter()
            .any(|(k, v)| k == &canary.0 || v.contains(&canary.1)),
        "{env:?}"
    );

    // Control: --env-pass brings exactly that variable in.
    let passed = env_of(&success(sandbox_with_canary(
        ws.path(),
        &["--env-pass", &canary.0],
        &["env"],
        &canary,
    )));
    assert!(
        passed.contains(&canary),
        "--env-pass {} did not reach the command: {passed:?}",
        canary.0
    );
}

#[test]
fn host_environment_is_not_in_the_launcher_or_pid_1() {
    let ws = workspace();
    let canary = (
        unique("env").replace('-', "_").to_uppercase(),
        unique("value"),
    );
    let ready = ws.path().join("ready");
    let done = ws.path().join("done");
    let script = "touch ready; while [ ! -e done ]; do sleep 0.05; done";
    let child = sandbox_with_canary(ws.path(), &[], &["sh", "-c", script], &canary)
        .spawn()
        .unwrap();
    let mut stockade = Reaped(child);
    wait_for("the command's ready marker", || ready.exists());

    let host_pid = stockade.0.id();
    // Control: the canary is in stockade's own environment, so reading environ works and would see it.
    assert!(
        environ_names(host_pid).contains(&canary.0),
        "canary missing from stockade itself"
    );

    let launchers = children_of(host_pid);
    assert_eq!(launchers.len(), 1, "stockade's children: {launchers:?}");
    let launcher = launchers[0];
    let pid1s = children_of(launcher);
    assert_eq!(pid1s.len(), 1, "launcher's children: {pid1s:?}");
    let pid1 = pid1s[0];
    let nspid = proc_status_field(pid1, "NSpid:").unwrap();
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "not the sandbox's PID 1: NSpid {nspid}"
    );
    let cmds = children_of(pid1);
    assert_eq!(cmds.len(), 1, "PID 1's children: {cmds:?}");

    for (what, pid) in [
        ("launcher", launcher),
        ("PID 1", pid1),
        ("command", cmds[0]),
    ] {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !String::from_utf8_lossy(&raw).contains(&canary.1),
            "{what} ({pid}) has the canary's value"
        );
        let names = environ_names(pid);
        assert!(
            !names.contains(&canary.0),
            "{what} ({pid}) has the canary: {names:?}"
        );
        for n in &names {
            assert!(
                SAFE_NAMES.contains(&n.as_str()),
                "{what} ({pid}) has {n} in its environment: {names:?}"
            );
        }
    }
    std::fs::write(&done, "").unwrap();
    let status = stockade.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

// --- 6. seccomp ------------------------------------------------------------------------------------

/// Raw x86_64 syscalls. userfaultfd takes invalid flags because userfaultfd(0) is EPERM for an
/// unprivileged caller even without the filter (vm.unprivileged_userfaultfd = 0), which would
/// make the denial indistinguishable; with bad flags the kernel says EINVAL, the filter EPERM.
/// clone3 and bpf take NULL arguments so the unfiltered call fails harmlessly (EINVAL).
const SECCOMP_PROBE: &str = r#"
R["unshare_newuser"] = sc(272, 0x10000000)
R["socket_netlink"] = sc(41, 16, 3, 0)
R["ptrace_traceme"] = sc(101, 0, 0, 0, 0)
R["personality_bsd"] = sc(135, 6)
R["io_uring_setup"] = sc(425, 1, 0)
R["keyctl_session"] = sc(250, 0, -3, 0)
R["clone3_null"] = sc(435, 0, 0)
R["userfaultfd_badflags"] = sc(323, 0xffff)
R["bpf_null"] = sc(321, 0, 0, 0)
"#;

fn errno_of(r: &Value, name: &str) -> i64 {
    let v = r[name]
        .as_array()
        .unwrap_or_else(|| panic!("{name} missing: {r}"));
    v[1].as_i64().unwrap()
}

fn ret_of(r: &Value, name: &str) -> i64 {
    r[name][0]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} missing: {r}"))
}

#[test]
fn seccomp_denies_dangerous_syscalls_that_succeed_without_it() {
    let ws = workspace();
    let on = probe_in(ws.path(), &[], SECCOMP_PROBE, &[]);
    let off = probe_in(
        ws.path(),
        &["--seccomp", "off", "--allow-weaker-isolation"],
        SECCOMP_PROBE,
        &[],
    );

    // (syscall, errno with the filter, errno without it); 0 = success.
    let cases: &[(&str, i32, i32)] = &[
        ("unshare_newuser", libc::EPERM, 0),
        ("socket_netlink", libc::EAFNOSUPPORT, 0),
        ("ptrace_traceme", libc::EPERM, 0),
        ("personality_bsd", libc::EPERM, 0),
        ("io_uring_setup", libc::EPERM, libc::EFAULT),
        ("keyctl_session", libc::EPERM, 0),
        ("clone3_null", libc::ENOSYS, libc::EINVAL),
        ("userfaultfd_badflags", libc::EPERM, libc::EINVAL),
        ("bpf_null", libc::EPERM, libc::EINVAL),
    ];
    for &(name, denied, control) in cases {
        assert_eq!(ret_of(&on, name), -1, "{name} with seccomp: {on}");
        assert_eq!(
            errno_of(&on, name),
            i64::from(denied),
            "{name} with seccomp: {on}"
        );
        assert_eq!(
            errno_of(&off, name),
            i64::from(control),
            "{name} without seccomp: {off}"
        );
    }
    // The successes return what the kernel gives: 0 for unshare/ptrace, the old persona (0), a
    // descriptor for the socket, a positive serial for the session keyring.
    assert_eq!(ret_of(&off, "unshare_newuser"), 0, "{off}");
    assert_eq!(ret_of(&off, "ptrace_traceme"), 0, "{off}");
    assert_eq!(ret_of(&off, "personality_bsd"), 0, "{off}");
    assert!(ret_of(&off, "socket_netlink") >= 3, "{off}");
    assert!(ret_of(&off, "keyctl_session") > 0, "{off}");
}

const STATUS_PROBE: &str = r#"
for l in read("/proc/self/status").splitlines():
    k, _, v = l.partition(":")
    if k in ("Seccomp", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        R[k] = v.strip()
"#;

#[test]
fn proc_status_shows_filter_no_new_privs_and_no_capabilities() {
    let ws = workspace();
    let on = probe_in(ws.path(), &[], STATUS_PROBE, &[]);
    assert_eq!(on["Seccomp"], "2", "{on}");
    assert_eq!(on["NoNewPrivs"], "1", "{on}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(on[cap], "0000000000000000", "{cap}: {on}");
    }
    // Control: without the filter the same field reads 0 (so "2" above is the filter's doing).
    let off = probe_in(
        ws.path(),
        &["--seccomp", "off", "--allow-weaker-isolation"],
        STATUS_PROBE,
        &[],
    );
    assert_eq!(off["Seccomp"], "0", "{off}");
}

// --- 7. Landlock ---------------------------------------------------------------------------------------

fn verbose_line(flags: &[&str]) -> String {
    let ws = workspace();
    let mut all = vec!["--verbose"];
    all.extend_from_slice(flags);
    let out = output(sandbox(ws.path(), &all, &["true"]));
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    stderr
        .lines()
        .find(|l| l.contains(" enforced: "))
        .unwrap_or_else(|| panic!("no enforced line: {stderr}"))
        .to_string()
}

/// No path exists where Landlock is the only wall: every path it leaves unwritable is also a
/// read-only mount (checked for /, /usr, /etc, /run, /var, /home, /dev, /proc/sys with and
/// without Landlock: the same EROFS), so only the reported enforcement can be checked here.
#[test]
fn verbose_reports_landlock_full_and_none_when_turned_off() {
    let on = verbose_line(&[]);
    assert!(on.starts_with("stockade: "), "{on}");
    assert!(on.contains("landlock full (kernel ABI "), "{on}");
    let off = verbose_line(&["--landlock", "off", "--allow-weaker-isolation"]);
    assert!(off.contains("landlock none"), "{off}");
}

// --- 8. .git protection -----------------------------------------------------------------------------

const HOOK: &str = "#!/bin/sh\necho pwned\n";
const CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n";
const CONFIG_ADD: &str = "[core]\n\thooksPath = /tmp\n";

/// argv: the hook's text, the line appended to .git/config.
const GIT_PROBE: &str = r#"
t("hook", lambda: write(".git/hooks/pre-commit", sys.argv[1]))
def append():
    with open(".git/config", "a") as f:
        return f.write(sys.argv[2])
t("config", append)
"#;

fn git_workspace() -> tempfile::TempDir {
    let ws = workspace();
    std::fs::create_dir_all(ws.path().join(".git/hooks")).unwrap();
    std::fs::write(ws.path().join(".git/config"), CONFIG).unwrap();
    ws
}

fn git_files(ws: &Path) -> (Option<String>, String) {
    let hook = std::fs::read_to_string(ws.join(".git/hooks/pre-commit")).ok();
    (
        hook,
        std::fs::read_to_string(ws.join(".git/config")).unwrap(),
    )
}

#[test]
fn git_hooks_and_config_are_read_only_inside_a_rw_workspace() {
    let ws = git_workspace();
    let r = probe_in(ws.path(), &[], GIT_PROBE, &[HOOK, CONFIG_ADD]);
    assert_eq!(r["hook"], err(EROFS), "{r}");
    assert_eq!(r["config"], err(EROFS), "{r}");
    assert_eq!(
        git_files(ws.path()),
        (None, CONFIG.to_string()),
        "host .git changed"
    );

    // Control: --no-protect-git lets both writes through to the host.
    let ws = git_workspace();
    let r = probe_in(
        ws.path(),
        &["--no-protect-git"],
        GIT_PROBE,
        &[HOOK, CONFIG_ADD],
    );
    assert_eq!(r["hook"], ok(HOOK.len()), "{r}");
    assert_eq!(r["config"], ok(CONFIG_ADD.len()), "{r}");
    let expect = (Some(HOOK.to_string()), format!("{CONFIG}{CONFIG_ADD}"));
    assert_eq!(git_files(ws.path()), expect);
}

// --- 9. descriptors of the caller ---------------------------------------------------------------

/// Descriptors still open after the listing (the listing's own descriptor is closed by then).
const FD_PROBE: &str = r#"
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
still = []
for fd in fds:
    try:
        os.fstat(fd)
        still.append([fd, os.readlink("/proc/self/fd/%d" % fd)])
    except OSError:
        pass
R["fds"] = still
"#;

/// Makes the open canary descriptor the child's fd 7, without CLOEXEC.
fn with_fd_7(c: &mut Command, canary: &std::fs::File) {
    let src = canary.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2 is async-signal-safe and `src` is a
    // descriptor the parent keeps open (borrowed from `canary`) until the child has been spawned.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(src, 7) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
}

fn fd_numbers(r: &Value) -> Vec<i64> {
    r["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect()
}

#[test]
fn no_descriptor_of_the_caller_reaches_the_command() {
    let ws = workspace();
    let dir = tempfile::Builder::new()
        .prefix("stockade-walls-fd-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("canary");
    std::fs::write(&path, unique("fd")).unwrap();
    let canary = std::fs::File::open(&path).unwrap();
    let argv = python(FD_PROBE, &[]);

    // Control: the probe run on the host directly, with the same inheritance, sees fd 7.
    let mut host = Command::new(&argv[0]);
    host.args(&argv[1..]).stdin(Stdio::null());
    with_fd_7(&mut host, &canary);
    let host = parse(&success(host));
    // (The test harness may hold more inherited descriptors; stockade inherits them too.)
    let seven = json!([7, path.to_str().unwrap()]);
    assert!(host["fds"].as_array().unwrap().contains(&seven), "{host}");

    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut c = sandbox(ws.path(), &[], &refs);
    with_fd_7(&mut c, &canary);
    let inside = parse(&success(c));
    let fds = fd_numbers(&inside);
    assert!(
        !fds.contains(&7),
        "the caller's fd 7 reached the command: {inside}"
    );
    assert!(
        !inside.to_string().contains(path.to_str().unwrap()),
        "canary open inside: {inside}"
    );
    // Nor any other descriptor: only the command's stdio.
    assert_eq!(
        fds,
        vec![0, 1, 2],
        "descriptors open in the command: {inside}"
    );
}

// --- 10. identity -------------------------------------------------------------------------------------

#[test]
fn command_runs_as_the_sandbox_uid_and_files_belong_to_the_caller() {
    let ws = workspace();
    assert_eq!(
        success(sandbox(ws.path(), &[], &["id", "-u"])).trim(),
        "1000"
    );
    assert_eq!(
        success(sandbox(ws.path(), &[], &["id", "-g"])).trim(),
        "1000"
    );
    let custom = ["--uid", "1234", "--gid", "1234"];
    assert_eq!(
        success(sandbox(ws.path(), &custom, &["id", "-u"])).trim(),
        "1234"
    );
    assert_eq!(
        success(sandbox(ws.path(), &custom, &["id", "-g"])).trim(),
        "1234"
    );

    // Inside the file belongs to the sandbox's uid; on the host, to whoever ran stockade.
    let inside = success(sandbox(
        ws.path(),
        &custom,
        &["sh", "-c", "echo hi > made && stat -c %u:%g made"],
    ));
    assert_eq!(inside.trim(), "1234:1234");
    let meta = std::fs::metadata(ws.path().join("made")).unwrap();
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!(
        (meta.uid(), meta.gid()),
        (euid, egid),
        "owner of a file the sandbox created"
    );
}
