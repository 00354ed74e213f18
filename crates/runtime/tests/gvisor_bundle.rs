//! The gvisor level's OCI bundle, run by the real runsc: what the sandbox sees and what it can
//! write. Needs root and runsc (a missing one is a failure with the reason).
//!
//! A default-policy plan is turned into a bundle whose init is a python3 probe (in place of the
//! guest binary) that reports errnos; each wall is checked next to a control that works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use stockade_runtime::gvisor;
use stockade_runtime::plan::{self, Extras, HostFacts};

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Host files removed when the test ends, even by a failed assertion.
struct Canaries(Vec<PathBuf>);

impl Drop for Canaries {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

const SCRATCH: u64 = 64 * 1024 * 1024;

fn facts(workspace: PathBuf) -> HostFacts {
    HostFacts {
        euid: 0,
        egid: 0,
        env: vec![],
        system_links: plan::system_links(),
        workspace,
        nonce: 1,
    }
}

/// Processes whose command line mentions `needle`.
fn procs_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{name}: {c}"));
            }
        }
    }
    out
}

const PROBE: &str = r#"
import errno, os, sys
ws, canary_name = sys.argv[1], sys.argv[2]
def err(f):
    try:
        f(); return 0
    except OSError as e:
        return e.errno
def write(p):
    return lambda: open(p, "w").write("x")
r = {}
r["usr"] = err(write("/usr/stockade-gvisor-test"))
r["root"] = err(write("/stockade-gvisor-test"))
r["etc"] = err(write("/etc/stockade-gvisor-test"))
r["guest"] = err(write("/.stockade/stockade-guest"))
r["guest_exists"] = int(os.path.isfile("/.stockade/stockade-guest"))
r["ws"] = err(lambda: open(ws + "/written-inside", "w").write("from-gvisor"))
r["hooks"] = err(write(ws + "/.git/hooks/post-checkout"))
r["git_obj"] = err(write(ws + "/.git/objects-test"))
r["tmp_write"] = err(write("/tmp/t"))
st = os.statvfs("/tmp")
r["tmp_bytes"] = st.f_blocks * st.f_frsize
r["home_owner"] = os.stat("/home/sandbox").st_uid
hs = os.statvfs("/home/sandbox")
r["home_bytes"] = hs.f_blocks * hs.f_frsize
r["canary_root"] = err(lambda: open("/root/" + canary_name).read())
r["canary_vartmp"] = err(lambda: open("/var/tmp/" + canary_name).read())
r["passwd_sandbox"] = int("sandbox:x:1000" in open("/etc/passwd").read())
r["ifaces"] = ",".join(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
r["hostname"] = os.uname().nodename
r["stdin"] = sys.stdin.buffer.read().hex()
print(" ".join(f"{k}={v}" for k, v in r.items()))
"#;

#[test]
fn bundle_walls_hold_under_runsc() {
    assert!(is_root(), "this test needs root (runsc run)");
    let runsc = gvisor::runsc_binary().expect("runsc is needed for this test");
    let platform = gvisor::probe().expect("no working runsc platform");

    let tmp = tempfile::Builder::new()
        .prefix("stockade-gvisor-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
    let ws = std::fs::canonicalize(&ws).unwrap();
    // Host canaries outside every bind: visible on the host (control), not inside.
    let canary_name = format!("stockade-gvisor-canary-{}", std::process::id());
    let canary_root = Path::new("/root").join(&canary_name);
    let canary_vartmp = Path::new("/var/tmp").join(&canary_name);
    let _canaries = Canaries(vec![canary_root.clone(), canary_vartmp.clone()]);
    std::fs::write(&canary_root, "secret").unwrap();
    std::fs::write(&canary_vartmp, "secret").unwrap();

    let policy = stockade_policy::Policy::default();
    let mut p = plan::build(
        &policy,
        &["true".to_string()],
        &facts(ws.clone()),
        Extras {
            id: "gvisor-test".into(),
            ..Extras::default()
        },
    );
    p.scratch_bytes = SCRATCH;
    let bundle = tmp.path().join("bundle");
    let state = tmp.path().join("state");
    let args: Vec<String> = [
        "/usr/bin/python3",
        "-S",
        "-c",
        PROBE,
        ws.to_str().unwrap(),
        &canary_name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let inner = gvisor::write_bundle_with_args(&p, &bundle, Path::new("/bin/true"), &args).unwrap();
    assert!(inner.root_ops.is_empty() && inner.cgroup_procs.is_empty() && inner.backend.is_none());
    assert_eq!(inner.argv, p.argv);

    let id = format!("stockade-gvisor-test-{}", std::process::id());
    let mut child = gvisor::runsc_command(&runsc, &platform, &state, &bundle, &id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[0u8, 0xff, b'\n', 0x80]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    gvisor::cleanup(&runsc, &state, &id);
    assert!(out.status.success(), "runsc run failed: {stdout}\n{stderr}");
    eprintln!("probe: {stdout}");
    let get = |k: &str| -> String {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {stdout:?} (stderr {stderr})"))
            .to_string()
    };
    let erofs = libc::EROFS.to_string();
    let enoent = libc::ENOENT.to_string();
    // Read-only: the system binds, the root itself, generated /etc, the guest binary.
    assert_eq!(get("usr"), erofs);
    assert_eq!(get("root"), erofs);
    assert_eq!(get("etc"), erofs);
    assert_eq!(get("guest"), erofs);
    assert_eq!(get("guest_exists"), "1");
    // The workspace is writable and the write lands on the host; git's hooks stay read-only
    // while the rest of .git is writable (control).
    assert_eq!(get("ws"), "0");
    assert_eq!(
        std::fs::read_to_string(ws.join("written-inside")).unwrap(),
        "from-gvisor"
    );
    assert_eq!(get("hooks"), erofs);
    assert_eq!(get("git_obj"), "0");
    assert!(!ws.join(".git/hooks/post-checkout").exists());
    // /tmp, HOME and /dev/shm split the plan's one disk budget (a third each); /tmp is writable.
    assert_eq!(get("tmp_write"), "0");
    assert_eq!(get("tmp_bytes"), ((SCRATCH / 3) & !4095).to_string());
    // HOME belongs to the sandbox user (root inside has no CAP_DAC_OVERRIDE to write it).
    assert_eq!(get("home_owner"), p.uid.to_string());
    assert_eq!(get("home_bytes"), ((SCRATCH / 3) & !4095).to_string());
    // Host files outside the binds do not exist inside.
    assert_eq!(get("canary_root"), enoent);
    assert_eq!(get("canary_vartmp"), enoent);
    assert_eq!(get("passwd_sandbox"), "1");
    assert_eq!(get("ifaces"), "lo");
    assert_eq!(get("hostname"), p.hostname);
    // stdin reached the init byte for byte (8-bit clean, no tty).
    assert_eq!(get("stdin"), "00ff0a80");

    // Cleanup leaves no state and no process; a second cleanup is harmless.
    gvisor::cleanup(&runsc, &state, &id);
    assert!(!state.exists(), "runsc state left at {}", state.display());
    assert_eq!(procs_with(&id), Vec::<String>::new());
    assert_eq!(procs_with(bundle.to_str().unwrap()), Vec::<String>::new());
}

/// A sandbox still running when cleanup is called: cleanup kills it, runsc run ends, no state
/// or process is left.
#[test]
fn cleanup_stops_a_running_container() {
    assert!(is_root(), "this test needs root (runsc run)");
    let runsc = gvisor::runsc_binary().expect("runsc is needed for this test");
    let platform = gvisor::probe().expect("no working runsc platform");
    let tmp = tempfile::Builder::new()
        .prefix("stockade-gvisor-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let ws = std::fs::canonicalize(tmp.path()).unwrap();
    let p = plan::build(
        &stockade_policy::Policy::default(),
        &["true".to_string()],
        &facts(ws.clone()),
        Extras::default(),
    );
    let bundle = tmp.path().join("bundle");
    let state = tmp.path().join("state");
    let args = vec!["/bin/sleep".to_string(), "600".to_string()];
    gvisor::write_bundle_with_args(&p, &bundle, Path::new("/bin/true"), &args).unwrap();
    let id = format!("stockade-gvisor-sleep-{}", std::process::id());
    let mut child = gvisor::runsc_command(&runsc, &platform, &state, &bundle, &id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Running: its state exists.
    let t0 = std::time::Instant::now();
    while std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(t0.elapsed().as_secs() < 20, "runsc never created its state");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "sleep 600 ended early");
    assert!(
        !procs_with(&id).is_empty(),
        "control: runsc processes visible while running"
    );
    gvisor::cleanup(&runsc, &state, &id);
    let st = child.wait().unwrap();
    assert!(!st.success(), "killed container reported success");
    gvisor::cleanup(&runsc, &state, &id);
    assert!(!state.exists(), "runsc state left at {}", state.display());
    assert_eq!(procs_with(&id), Vec::<String>::new());
}

/// The harness that stands in for the guest shim: it gives `stockade-guest __direct` the
/// launcher's descriptors (3 control socket, 4 plan, 5 liveness), speaks the control protocol
/// (Ready, Go, Started, Exited) and reports what it saw plus the processes left afterwards.
const HARNESS: &str = r#"
import json, os, socket, struct, sys
guest = sys.argv[1]
plan = sys.stdin.buffer.read()
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
pr, pw = os.pipe(); lr, lw = os.pipe(); outr, outw = os.pipe()
pid = os.fork()
if pid == 0:
    nul = os.open("/dev/null", os.O_RDONLY)
    os.dup2(nul, 0); os.dup2(outw, 1); os.dup2(outw, 2)
    os.dup2(b.fileno(), 3); os.dup2(pr, 4); os.dup2(lr, 5)
    os.execv(guest, [guest, "__direct"])
b.close(); os.close(pr); os.close(lr); os.close(outw)
os.write(pw, plan); os.close(pw)
def frame():
    n = b""
    while len(n) < 4:
        c = a.recv(4 - len(n))
        if not c: return None
        n += c
    (ln,) = struct.unpack(">I", n)
    body = b""
    while len(body) < ln:
        body += a.recv(ln - len(body))
    return json.loads(body)
def send(m):
    body = json.dumps(m).encode()
    a.sendall(struct.pack(">I", len(body)) + body)
res = {"agent_pid": pid, "frames": []}
f = frame(); res["frames"].append(f)
if f and f.get("type") == "ready":
    send({"type": "go"})
    while True:
        f = frame()
        if f is None: break
        res["frames"].append(f)
        if f.get("type") in ("exited", "exec_failed", "setup_failed"): break
_, st = os.waitpid(pid, 0)
res["agent_status"] = st
# As the guest shim does: PID 1 reaps orphans handed to it.
while True:
    try:
        p, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if p == 0:
        break
out = b""
while True:
    c = os.read(outr, 65536)
    if not c: break
    out += c
res["output"] = out.decode(errors="replace")
def state(p):
    try:
        return open(f"/proc/{p}/stat").read().rsplit(") ", 1)[1][0]
    except OSError:
        return "gone"
res["left"] = sorted(f"{p}:{state(p)}" for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid())
print("RESULT " + json.dumps(res))
"#;

/// The agent's direct mode in the real runsc: it drops to the sandbox user with no capability
/// and seccomp on, records Landlock as not applicable, runs the command, adopts its orphans (as
/// subreaper) and kills them at the end, and reports the exit.
#[test]
fn direct_agent_runs_the_command_under_runsc() {
    assert!(is_root(), "this test needs root (runsc run)");
    let runsc = gvisor::runsc_binary().expect("runsc is needed for this test");
    let platform = gvisor::probe().expect("no working runsc platform");
    // The static guest build scripts/setup-microvm makes (the one `stockade` itself uses).
    let guest = std::env::var_os("STOCKADE_GUEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-gnu/release/stockade-guest")
        });
    assert!(
        guest.is_file(),
        "{} is missing: run scripts/setup-microvm (it builds the static guest) first",
        guest.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix("stockade-gvisor-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let ws = std::fs::canonicalize(tmp.path()).unwrap();
    let p = plan::build(
        &stockade_policy::Policy::default(),
        &["true".to_string()],
        &facts(ws.clone()),
        Extras {
            id: "gvisor-direct".into(),
            seccomp: Some(
                stockade_jail::seccomp::SeccompProgram::compile_default()
                    .unwrap()
                    .to_bytes(),
            ),
            ..Extras::default()
        },
    );
    let bundle = tmp.path().join("bundle");
    let state = tmp.path().join("state");
    let args: Vec<String> = ["/usr/bin/python3", "-S", "-c", HARNESS, gvisor::GUEST_PATH]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut inner = gvisor::write_bundle_with_args(&p, &bundle, &guest, &args).unwrap();
    inner.argv = [
        "/bin/sh",
        "-c",
        "id -u; id -G; grep -E '^(Seccomp|CapEff):' /proc/self/status; \
         (sleep 300 & echo $! > /tmp/bg); sleep 0.5; grep PPid /proc/$(cat /tmp/bg)/status; exit 3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan_json = serde_json::to_vec(&inner).unwrap();
    let id = format!("stockade-gvisor-direct-{}", std::process::id());
    let mut child = gvisor::runsc_command(&runsc, &platform, &state, &bundle, &id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&plan_json).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    gvisor::cleanup(&runsc, &state, &id);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("harness: {stdout}");
    assert!(out.status.success(), "runsc run failed: {stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result: {stdout}\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(line).unwrap();
    let frames = r["frames"].as_array().unwrap();
    let ready = &frames[0];
    assert_eq!(ready["type"], "ready", "{frames:?}");
    let en = &ready["enforced"];
    assert_eq!(en["landlock"], "not applicable (gvisor)");
    assert_eq!(en["uid"], 1000);
    assert_eq!(en["gid"], 1000);
    assert_eq!(en["capabilities_dropped"], true);
    assert_eq!(en["no_new_privs"], true);
    let sc = en["seccomp"].as_str().unwrap();
    assert!(
        sc != "off" && !sc.starts_with("not enforced"),
        "seccomp: {sc}"
    );
    assert_eq!(frames[1]["type"], "started", "{frames:?}");
    let exited = frames.last().unwrap();
    assert_eq!(exited["type"], "exited", "{frames:?}");
    assert_eq!(exited["termination"], serde_json::json!({"exited": 3}));
    // The command ran as the sandbox user with no extra groups; its orphan went to the agent
    // (subreaper) or, where gVisor refuses a subreaper outside PID 1 (runsc 2022), to PID 1; it
    // was killed before the exit was reported: nothing is left once PID 1 has reaped.
    let output = r["output"].as_str().unwrap();
    let agent = r["agent_pid"].as_i64().unwrap();
    // The command itself runs filtered (seccomp mode 2) with no effective capability.
    let head = "1000\n1000\nCapEff:\t0000000000000000\nSeccomp:\t2\n";
    assert!(
        output == format!("{head}PPid:\t{agent}\n") || output == format!("{head}PPid:\t1\n"),
        "command output: {output:?}"
    );
    assert_eq!(r["agent_status"], 0);
    assert_eq!(r["left"], serde_json::json!([]), "processes left inside");
    assert!(!state.exists());
    assert_eq!(procs_with(&id), Vec::<String>::new());
}
