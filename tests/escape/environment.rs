//! Environment: the host's environment variables, descriptors open when stockade starts, the
//! agent's (PID 1) environ, cmdline and memory, and the supervisor's environment.
//!
//! None of these refusals is reported by the kernel's audit records: a variable that is not
//! passed, a descriptor that was closed (EBADF), a host pid that is not in the sandbox's PID
//! namespace (ENOENT, ESRCH) are absences, not denials; PID 1's /proc files fail the kernel's
//! ptrace access check (EACCES: PID 1 is non-dumpable), which is not audited. Each case checks
//! the attempt is recorded with its exit, and what the trail does say (exec.started lists the
//! environment's names). Syscalls seccomp denies (process_vm_readv) are checked by their
//! violation event.

use crate::support::*;
use serde_json::{Value, json};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

// --- shared by filesystem.rs and environment.rs: host controls ----------------------------------

/// `fd` moved to a number >= 100 (close-on-exec), so leaking several at 10, 11, ... by dup2 can
/// never overwrite a source that happened to sit at one of those numbers.
pub(crate) fn high(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC takes integers and returns a new descriptor (checked).
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(
        n >= 0,
        "F_DUPFD_CLOEXEC: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// Control: runs the probe `body` (after PRELUDE) with python3 on the host — no sandbox — in
/// `cwd`, with `fds` open at 10, 11, ... as `Sandbox::leak_fd` leaks them into stockade; returns
/// its result. A probe that fails or prints no JSON fails the test.
pub(crate) fn host_python(body: &str, args: &[&str], cwd: Option<&Path>, fds: &[RawFd]) -> Value {
    let script = format!("{PRELUDE}\n{body}\n");
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-c").arg(script).args(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let raw = fds.to_vec();
    for fd in &raw {
        assert!(
            *fd >= 100,
            "move leaked descriptors out of the way with high()"
        );
    }
    // SAFETY: the closure runs in the forked child before exec and only calls dup2 (async-signal
    // safe) on integers moved in; every source is >= 100, so no target 10+i overwrites one.
    unsafe {
        c.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 10 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = c.output().expect("python3 must run on the host");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "host control probe failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("host control printed nothing");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("host control output {stdout:?}: {e}"))
}

// --- host environment variables -----------------------------------------------------------------

/// Host variables with secret-looking names set in stockade's environment (besides the canary).
const SECRET_NAMES: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
    "OPENAI_API_KEY",
    "SSH_AUTH_SOCK",
    "DATABASE_URL",
];

/// argv: the names to look for, each reversed (so the probe's own cmdline never contains one).
/// The probe dumps every environ and cmdline it can read, so the test can search them for the
/// values, which the probe is never told.
const ENV_PROBE: &str = r#"
names = [n[::-1] for n in sys.argv[1:]]
R["self"] = os.getpid()
R["pids"] = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
R["environ_names"] = sorted(os.environ)
R["exec_names"] = sorted(kv.split(b"=", 1)[0].decode() for kv in readb("/proc/self/environ").split(b"\0") if kv)
R["passed"] = {n: os.environ.get(n) for n in names}
dump, hits = {}, []
for d in sorted(x for x in os.listdir("/proc") if x.isdigit()):
    for f in ("environ", "cmdline"):
        p = "/proc/%s/%s" % (d, f)
        try:
            b = readb(p)
            dump[p] = ["ok", b.decode(errors="replace")]
            hits += [[p, n] for n in names if n.encode() in b]
        except OSError as e:
            dump[p] = ["err", e.errno]
# A child sees what its parent was given, nothing more.
import subprocess
child = subprocess.run(["/usr/bin/env"], capture_output=True).stdout
dump["child"] = ["ok", child.decode(errors="replace")]
hits += [["child", n] for n in names if n.encode() in child]
R["dump"] = dump
R["name_hits"] = hits
done()
"#;

fn reversed(s: &str) -> String {
    s.chars().rev().collect()
}

#[test]
fn host_environment_variables_do_not_reach_the_sandbox() {
    require_root("escape suite");
    let c = Canaries::plant();
    let values: Vec<(String, String)> = SECRET_NAMES
        .iter()
        .map(|n| (n.to_string(), format!("HOSTVAL-{n}-{}", unique("v"))))
        .collect();
    let mut names: Vec<&str> = vec![c.env_name];
    names.extend(SECRET_NAMES);
    let rev: Vec<String> = names.iter().map(|n| reversed(n)).collect();
    let args: Vec<&str> = rev.iter().map(String::as_str).collect();
    let sandbox = |label: &str| {
        values
            .iter()
            .fold(Sandbox::new(label).with_canaries(&c), |s, (k, v)| {
                s.host_env(k, v)
            })
    };

    let run = sandbox("host env").python(ENV_PROBE, &args);
    run.expect_exit(0);
    // Exactly the curated environment: PATH, HOME, USER, LANG, and TERM/TZ when the host has them.
    let mut want: Vec<&str> = vec!["HOME", "LANG", "PATH", "USER"];
    for k in ["TERM", "TZ"] {
        if std::env::var_os(k).is_some() {
            want.push(k);
        }
    }
    want.sort();
    assert_eq!(run.get("exec_names"), json!(want), "{}", run.result());
    let passed = run.get("passed");
    for n in &names {
        assert_eq!(passed[n], Value::Null, "{n} reached the sandbox: {passed}");
    }
    assert_eq!(run.get("name_hits"), json!([]), "{}", run.result());
    let dump = run.get("dump");
    let me = run.get("self").as_u64().unwrap() as u32;
    // Stockade's own processes, then the probe: nothing else is in the sandbox's PID namespace.
    let mut visible: Vec<u32> = stockade_pids().iter().map(|(p, _)| *p).collect();
    visible.push(me);
    assert_eq!(run.get("pids"), json!(visible), "{}", run.result());
    for (pid, cmdline) in stockade_pids() {
        // Their cmdlines are readable and hold no secret.
        assert_eq!(dump[format!("/proc/{pid}/cmdline")], ok(cmdline), "{dump}");
        // container: PID 1 (the agent) is non-dumpable: its environ is refused (its environment
        // is empty anyway: the launcher starts with env_clear).
        // gvisor: LIMITATION, not a wall — gVisor's /proc does not apply the ptrace access check
        // to environ (nor to maps and the fd listing): the command reads the shim's environment
        // (runsc gives the OCI process `HOME=/root`, the bundle's env is empty) and the agent's
        // (empty). The exact values are asserted, so a secret ever put there fails this case.
        let environ = per_level(err(EACCES), ok(gvisor_environ(pid)), err(EACCES));
        assert_eq!(dump[format!("/proc/{pid}/environ")], environ, "{dump}");
    }
    assert_eq!(dump[format!("/proc/{me}/environ")][0], "ok", "{dump}");
    c.assert_nothing_got_through(&run);
    for (k, v) in &values {
        for (what, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            assert!(!text.contains(v.as_str()), "{k}'s value reached the {what}");
        }
        assert!(
            !serde_json::to_string(&run.events)
                .unwrap()
                .contains(v.as_str()),
            "{k}'s value reached the audit trail"
        );
    }
    // The trail records the environment by name: exactly the curated names.
    run.event("exec.started", |e| {
        let mut got: Vec<&str> = e["env_names"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        got.sort();
        got == want
    });
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: --env-pass makes each variable visible — the probe finds what is there.
    let mut flags: Vec<String> = Vec::new();
    for n in &names {
        flags.push("--env-pass".into());
        flags.push(n.to_string());
    }
    let fl: Vec<&str> = flags.iter().map(String::as_str).collect();
    let control = sandbox("host env control")
        .flags(&fl)
        .python(ENV_PROBE, &args);
    let passed = control.get("passed");
    assert_eq!(passed[c.env_name], json!(c.env_secret), "{passed}");
    for (k, v) in &values {
        assert_eq!(passed[k], json!(v), "{passed}");
    }
    let hits = control.get("name_hits");
    let me = control.get("self");
    assert!(
        hits.as_array()
            .unwrap()
            .contains(&json!([format!("/proc/{me}/environ"), c.env_name])),
        "{hits}"
    );
    control.event("exec.started", |e| {
        e["env_names"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(c.env_name)))
    });
}

// --- inherited descriptors ----------------------------------------------------------------------

/// fds 10, 11, 12: a file (read-write), a TCP socket connected to a canary, a pipe's write end.
const FD_PROBE: &str = r#"
marker = sys.argv[1].encode()
t("fds", lambda: sorted(int(x) for x in os.listdir("/proc/self/fd")))
for fd in (10, 11, 12):
    t("fstat:%d" % fd, lambda: os.fstat(fd).st_mode > 0)
    t("write:%d" % fd, lambda: os.write(fd, marker))
    t("link:%d" % fd, lambda: os.readlink("/proc/self/fd/%d" % fd))
def open_fds():
    out = []
    for fd in range(3, 1024):
        try:
            os.fstat(fd)
            out.append(fd)
        except OSError:
            pass
    return out
t("open_fds", open_fds)
done()
"#;

struct Leaks {
    file: tempfile::NamedTempFile,
    tcp: TcpCanary,
    pipe_r: std::fs::File,
    fds: Vec<OwnedFd>,
}

fn leaks() -> Leaks {
    let file = tempfile::NamedTempFile::new_in("/opt").unwrap();
    std::fs::write(file.path(), "before").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file.path())
        .unwrap();
    let tcp = TcpCanary::bind("127.0.0.1");
    let sock = std::net::TcpStream::connect(tcp.addr).unwrap();
    wait_for("the test's own connection to the fd canary", 10, || {
        tcp.connections() == 1
    });
    let mut p = [0; 2];
    // SAFETY: `p` is a valid two-element out-array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both ends are fresh descriptors owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: O_NONBLOCK on our own read end, so checking it for data never blocks.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    Leaks {
        file,
        tcp,
        pipe_r: std::fs::File::from(r),
        fds: vec![high(OwnedFd::from(f)), high(OwnedFd::from(sock)), high(w)],
    }
}

fn pipe_bytes(r: &mut std::fs::File) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    match r.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Vec::new(),
        Err(e) => panic!("reading the pipe: {e}"),
    }
}

#[test]
fn inherited_descriptors_are_closed_before_the_command_runs() {
    require_root("escape suite");
    let c = Canaries::plant();
    let mut l = leaks();
    let marker = unique("fd-marker");
    let mut sb = Sandbox::new("inherited fds").with_canaries(&c);
    for fd in std::mem::take(&mut l.fds) {
        sb = sb.leak_fd(fd);
    }
    let run = sb.python(FD_PROBE, &[&marker]);
    run.expect_exit(0)
        // The listing's own descriptor (3) besides stdio; then nothing else is open at all.
        .expect("fds", ok(json!([0, 1, 2, 3])))
        .expect("open_fds", ok(json!([])));
    for fd in [10, 11, 12] {
        run.expect(&format!("fstat:{fd}"), err(EBADF))
            .expect(&format!("write:{fd}"), err(EBADF))
            .expect(&format!("link:{fd}"), err(ENOENT));
    }
    c.assert_nothing_got_through(&run);
    // Nothing arrived through any of them: the file is unchanged, the canary received nothing
    // (only the test's own connection), the pipe is empty.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read_to_string(l.file.path()).unwrap(), "before");
    assert_eq!(l.tcp.received(), b"", "bytes reached the fd canary");
    assert_eq!(l.tcp.connections(), 1, "a connection reached the fd canary");
    assert_eq!(pipe_bytes(&mut l.pipe_r), b"", "bytes reached the pipe");
    // EBADF: the descriptors are simply not there (closed by the launcher); nothing to audit.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: the same probe on the host, with the same three descriptors leaked the same way,
    // sees them and writes through each.
    let mut l = leaks();
    let raw: Vec<RawFd> = l.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let host = host_python(FD_PROBE, &[&marker], None, &raw);
    let n = marker.len();
    for fd in [10, 11, 12] {
        assert_eq!(host[format!("write:{fd}")], ok(n), "{host}");
    }
    let open = host["open_fds"][1].as_array().unwrap().clone();
    for fd in [10, 11, 12] {
        assert!(open.contains(&json!(fd)), "host control: fd {fd}: {host}");
    }
    wait_for("the control's bytes at the fd canary", 10, || {
        l.tcp.received() == marker.as_bytes()
    });
    assert_eq!(pipe_bytes(&mut l.pipe_r), marker.as_bytes());
    let mut f = std::fs::File::open(l.file.path()).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, marker, "control: the write through fd 10 did not land");
}

// --- PID 1 --------------------------------------------------------------------------------------

/// argv[1]: the pid to look at (`self`: the probe's own). Its environ, cmdline, memory, maps,
/// descriptors, and its memory through process_vm_readv. With argv[2] == "use" (sandbox runs
/// only: the host control must not read other processes' pipes) also the environ's text and, for
/// each descriptor listed, whether it opens for reading (and what a read gives) and for writing.
const PID1_PROBE: &str = r#"
pid = str(os.getpid()) if sys.argv[1] == "self" else sys.argv[1]
use = sys.argv[2:] == ["use"]
base = "/proc/" + pid
t("environ", lambda: len(readb(base + "/environ")))
t("cmdline", lambda: readb(base + "/cmdline").decode())
def mem():
    fd = os.open(base + "/mem", os.O_RDONLY)
    os.close(fd)
    return True
t("mem", mem)
t("maps", lambda: len(read(base + "/maps")) > 0)
t("fd", lambda: len(os.listdir(base + "/fd")) > 0)
t("status", lambda: [l for l in read(base + "/status").splitlines() if l.startswith("Uid:")][0].split()[1])
if use:
    t("environ_text", lambda: readb(base + "/environ").decode(errors="replace"))
    def fd_use():
        out = {}
        for fd in sorted(os.listdir(base + "/fd"), key=int):
            p, r = base + "/fd/" + fd, []
            for fl in (os.O_RDONLY, os.O_WRONLY):
                try:
                    x = os.open(p, fl | os.O_NONBLOCK)
                except OSError as e:
                    r.append(e.errno)
                    continue
                try:
                    r.append("read %d" % len(os.read(x, 4096)) if fl == os.O_RDONLY else "opened for writing")
                except OSError as e:
                    r.append("opened, then errno %d" % e.errno)
                finally:
                    os.close(x)
            out[fd] = r
        return out
    t("fd_use", fd_use)
nr = {"x86_64": 310, "aarch64": 270}[os.uname().machine]
buf = ctypes.create_string_buffer(16)
local = struct.pack("PN", ctypes.addressof(buf), 16)
remote = struct.pack("PN", 0x400000, 16)
lb, rb = ctypes.create_string_buffer(local), ctypes.create_string_buffer(remote)
ctypes.set_errno(0)
r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(int(pid)), lb, ctypes.c_long(1), rb,
                 ctypes.c_long(1), ctypes.c_long(0))
R["process_vm_readv"] = [r, ctypes.get_errno() if r == -1 else 0]
done()
"#;

/// The agent (and at gvisor the guest shim) is non-dumpable, so its memory fails the kernel's
/// ptrace access check (EACCES, not audited) and process_vm_readv is denied by seccomp (EPERM,
/// audited where seccomp denials are). At the container level its environ, maps and
/// descriptors are refused by the same check; its cmdline and status stay readable and hold
/// nothing secret.
///
/// gvisor: PID 1 is the guest shim (root in the sandbox) and PID 2 the agent; both are checked.
/// LIMITATION, not a wall: gVisor's /proc (runsc 2022) applies the ptrace access check to `mem`,
/// `root`, `cwd` and `exe`, but not to `environ`, `maps` or the `fd` listing: the command reads
/// both environments (asserted exactly: `HOME=/root` for the shim, empty for the agent), their
/// memory layout (which defeats their ASLR) and their descriptor numbers and link names. No
/// descriptor of theirs can be used: each open is refused or, for the shim's stderr (the host's
/// backend log, write-only), opens and reads nothing (EBADF) — asserted below.
#[test]
fn the_agents_environ_memory_and_descriptors_are_unreadable() {
    require_root("escape suite");
    let c = Canaries::plant();
    for (pid, cmdline) in stockade_pids() {
        let p = pid.to_string();
        let run = Sandbox::new(&format!("pid {pid}"))
            .with_canaries(&c)
            .python(PID1_PROBE, &[&p, "use"]);
        let uid = if level() == Level::Gvisor && pid == 1 {
            "0" // the shim runs as root in the sandbox
        } else {
            "1000"
        };
        run.expect_exit(0)
            .expect("mem", err(EACCES))
            .expect("cmdline", ok(cmdline))
            .expect("status", ok(uid))
            .expect("process_vm_readv", json!([-1, EPERM]));
        match level() {
            Level::Container | Level::Microvm => {
                run.expect("environ", err(EACCES))
                    .expect("environ_text", err(EACCES))
                    .expect("maps", err(EACCES))
                    .expect("fd", err(EACCES))
                    .expect("fd_use", err(EACCES));
            }
            Level::Gvisor => {
                // The LIMITATION above, asserted as it is.
                let env = gvisor_environ(pid);
                run.expect("environ", ok(env.len()))
                    .expect("environ_text", ok(env))
                    .expect("maps", ok(true))
                    .expect("fd", ok(true));
                let uses = run.get("fd_use");
                let uses = uses[1].as_object().unwrap_or_else(|| {
                    panic!("pid {pid}: fd_use: {}", run.result());
                });
                assert!(!uses.is_empty(), "pid {pid}: no descriptor listed");
                for (fd, r) in uses {
                    let (rd, wr) = (&r[0], &r[1]);
                    // Read: refused (an errno), or opened and nothing readable (EBADF: a host
                    // file gVisor holds write-only). Write: refused, always.
                    assert!(
                        rd.is_i64() || rd == "opened, then errno 9",
                        "pid {pid}: fd {fd} opened for reading: {r} ({})",
                        run.result()
                    );
                    assert!(
                        wr.is_i64(),
                        "pid {pid}: fd {fd} opened for writing: {r} ({})",
                        run.result()
                    );
                }
            }
        }
        c.assert_nothing_got_through(&run);
        run.expect_syscall_violation("process_vm_readv");
        run.expect_clean_end();

        // Without seccomp, process_vm_readv meets the same ptrace check as /proc/<pid>/mem
        // (EPERM from the kernel this time, not audited): the memory has two walls.
        // gvisor: gVisor 2022 does not implement process_vm_readv (ENOSYS; the control on the
        // probe's own pid below gets the same), so there the filter's EPERM is the only answer
        // that names a refusal and /proc/<pid>/mem's EACCES is the memory's wall.
        let off = Sandbox::new(&format!("pid {pid}, seccomp off"))
            .with_canaries(&c)
            .flags(&["--seccomp", "off", "--allow-weaker-isolation"])
            .python(PID1_PROBE, &[&p]);
        off.expect_exit(0)
            .expect(
                "environ",
                per_level(err(EACCES), ok(gvisor_environ(pid).len()), err(EACCES)),
            )
            .expect("mem", err(EACCES))
            .expect(
                "process_vm_readv",
                json!([-1, per_level(EPERM, ENOSYS, EPERM)]),
            );
        c.assert_nothing_got_through(&off);
        assert!(
            off.of_type("violation").is_empty(),
            "{:?}",
            off.of_type("violation")
        );
    }

    // Control inside: the probe's own process (dumpable) is readable by the same probe.
    let me = Sandbox::new("pid 1 control").python(PID1_PROBE, &["self"]);
    me.expect("mem", ok(true))
        .expect("maps", ok(true))
        .expect("fd", ok(true));
    assert_eq!(me.get("environ")[0], "ok", "{}", me.result());
    if level() == Level::Gvisor {
        // gVisor's ENOSYS for process_vm_readv is not about the target: its own pid gets it too.
        let own = Sandbox::new("own pid, seccomp off")
            .flags(&["--seccomp", "off", "--allow-weaker-isolation"])
            .python(PID1_PROBE, &["self"]);
        own.expect("process_vm_readv", json!([-1, ENOSYS]));
    }
    // Control on the host: root reads the same files of a process of its own (this test). (Not
    // the host's PID 1: it belongs to the machine running the tests, not to this suite.)
    let me = std::process::id().to_string();
    let host = host_python(PID1_PROBE, &[&me], None, &[]);
    assert_eq!(host["environ"][0], "ok", "{host}");
    assert_eq!(host["mem"], ok(true), "{host}");
    assert_eq!(host["maps"], ok(true), "{host}");
}

/// The environment gVisor lets the command read of stockade's pid `pid` (see the LIMITATION on
/// the case above): the shim's is runsc's `HOME=/root` (the bundle's env is empty), the agent's
/// is empty (the shim starts it with an empty environment).
pub(crate) fn gvisor_environ(pid: u32) -> &'static str {
    if pid == 1 { "HOME=/root\0" } else { "" }
}

// --- the supervisor's environment ---------------------------------------------------------------

/// Says it started (`.started`), waits for the host to write `role:pid` pairs into `.pids` (the
/// host pids of the supervisor and every process of the sandbox on the host), then tries every
/// way at them. Also lists the sandbox's own pids, and pidfd_open of its own pid (control).
const SUPERVISOR_PROBE: &str = r#"
write(".started", "")
deadline = time.time() + 60
while not os.path.exists(".pids") and time.time() < deadline:
    time.sleep(0.02)
pids = [x.split(":") for x in read(".pids").split()]
R["pids_seen"] = len(pids)
R["self"] = os.getpid()
R["visible"] = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
for role, p in pids:
    for f in ("environ", "cmdline", "status"):
        t("%s:%s" % (role, f), lambda: len(readb("/proc/%s/%s" % (p, f))))
    t(role + ":kill", lambda: os.kill(int(p), 0))
    t(role + ":pidfd_open", lambda: os.pidfd_open(int(p)) >= 0)
t("own:pidfd_open", lambda: os.pidfd_open(os.getpid()) >= 0)
done()
"#;

fn ppid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn children(parent: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| ppid_of(*p) == Some(parent))
        .collect();
    v.sort();
    v
}

/// Every process below `pid` on the host, parents before their children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for c in children(p) {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

fn environ(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default()
}

/// `argv[0]`'s file name, or `stub` for a process without a cmdline (gVisor's ptrace stubs,
/// which hold the sandbox's address spaces).
fn argv0(pid: u32) -> String {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let a0 = c.split(|b| *b == 0).next().unwrap_or_default();
    match Path::new(std::str::from_utf8(a0).unwrap_or("?")).file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => "stub".to_string(),
    }
}

/// The sandbox's processes on the host, by role, once the probe runs (`None`: not yet there):
/// - container: the launcher (the supervisor's child), the sandbox's PID 1 (the agent) and the
///   probe — exactly these roles;
/// - gvisor and microvm: the launcher (`__vmm`) and every process below it, named by argv[0]
///   (gvisor: runsc, runsc-gofer, runsc-sandbox and its ptrace stubs, which hold the
///   sandbox's address spaces; microvm: QEMU).
fn sandbox_processes(sup: u32, ws: &Path) -> Option<Vec<(String, u32)>> {
    if !ws.join(".started").exists() {
        return None;
    }
    let launcher = *children(sup).first()?;
    let mut roles = vec![("launcher".to_string(), launcher)];
    if level() == Level::Container {
        let pid1 = *children(launcher).first()?;
        let probe = *children(pid1).first()?;
        roles.push(("pid1".into(), pid1));
        roles.push(("probe".into(), probe));
        return Some(roles);
    }
    let below = descendants(launcher);
    if level() == Level::Gvisor && !below.iter().any(|p| argv0(*p) == "stub") {
        return None; // runsc-sandbox's stubs appear with the sandbox's first process
    }
    for (i, p) in below.into_iter().enumerate() {
        roles.push((format!("{}-{i}", argv0(p)), p));
    }
    Some(roles)
}

/// The supervisor holds the secret in its environment; no pid of the sandbox can reach it: the
/// host's processes are not in the sandbox's PID namespace (ENOENT in /proc, ESRCH for kill and
/// pidfd_open). The host also checks that no process of the sandbox on the host carries the
/// secret in its environment, so nothing inside could find it there either.
///
/// gvisor: the sandbox on the host is the launcher (`__vmm`), runsc, its gofer, runsc-sandbox and
/// its ptrace stubs (the command's address space lives in one of them): each host pid is
/// ENOENT/ESRCH inside, and each has an empty environment. gVisor 2022 has no pidfd_open (ENOSYS
/// for its own pid too: the control); kill's ESRCH is the answer there.
#[test]
fn the_supervisors_environment_is_not_reachable_from_any_pid() {
    require_root("escape suite");
    let c = Canaries::plant();
    let ws = tempfile::Builder::new()
        .prefix("stockade-escape-ws-")
        .tempdir_in("/tmp")
        .unwrap();
    let ws_path = ws.path().to_path_buf();
    let secret = c.env_secret.clone();
    let finder = std::thread::spawn(move || {
        let needle = secret.as_bytes();
        let has = |pid: u32| environ(pid).windows(needle.len()).any(|w| w == needle);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "never found the sandbox's processes"
            );
            std::thread::sleep(Duration::from_millis(20));
            let Some(sup) = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .is_ok_and(|e| e == Path::new(bin()))
                        && has(*p)
                })
            else {
                continue;
            };
            let Some(roles) = sandbox_processes(sup, &ws_path) else {
                continue;
            };
            let envs: Vec<(String, Vec<u8>)> = roles
                .iter()
                .map(|(r, p)| (r.clone(), environ(*p)))
                .collect();
            let mut all = vec![("supervisor".to_string(), sup)];
            all.extend(roles);
            let list: Vec<String> = all.iter().map(|(r, p)| format!("{r}:{p}")).collect();
            let tmp = ws_path.join(".pids.tmp");
            std::fs::write(&tmp, list.join(" ")).unwrap();
            std::fs::rename(&tmp, ws_path.join(".pids")).unwrap();
            return (sup, has(sup), all, envs);
        }
    });
    let run = Sandbox::new("supervisor env")
        .with_canaries(&c)
        .workspace(ws)
        .python(SUPERVISOR_PROBE, &[]);
    let (sup, sup_has_secret, all, envs) = finder.join().unwrap();
    run.expect_exit(0);
    assert_eq!(run.get("pids_seen"), json!(all.len()), "{}", run.result());
    // Inside, only stockade's own processes and the probe.
    let mut visible: Vec<u32> = stockade_pids().iter().map(|(p, _)| *p).collect();
    visible.push(run.get("self").as_u64().unwrap() as u32);
    assert_eq!(run.get("visible"), json!(visible), "{}", run.result());
    if level() == Level::Gvisor {
        let names: Vec<&str> = all.iter().map(|(r, _)| r.as_str()).collect();
        for want in ["runsc-", "runsc-gofer-", "runsc-sandbox-", "stub-"] {
            assert!(
                names.iter().any(|n| n.starts_with(want)),
                "no {want}* among the sandbox's host processes: {names:?}"
            );
        }
    }
    for (role, _) in &all {
        for f in ["environ", "cmdline", "status"] {
            run.expect(&format!("{role}:{f}"), err(ENOENT));
        }
        // gvisor: gVisor 2022 has no pidfd_open (ENOSYS, for its own pid too: below).
        run.expect(&format!("{role}:kill"), err(ESRCH)).expect(
            &format!("{role}:pidfd_open"),
            err(per_level(ESRCH, ENOSYS, ESRCH)),
        );
    }
    // Control: pidfd_open works on a pid that exists (the probe's own), except where gVisor
    // does not implement it at all.
    run.expect("own:pidfd_open", per_level(ok(true), err(ENOSYS), ok(true)));
    c.assert_nothing_got_through(&run);
    // Control: the supervisor (host pid `sup`) does hold the secret, read by the host.
    assert!(
        sup_has_secret,
        "supervisor {sup}: the secret was not in its environ"
    );
    // Nothing of the sandbox carries it: the launcher and PID 1 start with an empty environment,
    // the command with the curated one (container); at gvisor every host process of the sandbox
    // has an empty environment (the command's lives in gVisor's memory, not in a host environ).
    for (role, env) in &envs {
        let text = String::from_utf8_lossy(env);
        assert!(
            !text.contains(&c.env_secret) && !text.contains(c.env_name),
            "{role}: the secret is in its environment"
        );
        if role != "probe" && level() != Level::Microvm {
            assert_eq!(text, "", "{role}'s environment is not empty");
        }
    }
    // ENOENT/ESRCH: the host pids do not exist in the sandbox's namespace; nothing to audit.
    run.expect_exec_recorded();
    run.expect_clean_end();
}
