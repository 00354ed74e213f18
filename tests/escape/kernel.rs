//! Process and kernel surface: ptrace and process_vm_readv, host pids, nested user namespaces,
//! the mount API, keyrings, bpf/perf_event_open/userfaultfd/io_uring, TIOCSTI/TIOCLINUX, module
//! loading, cgroup release_agent and cgroup escapes, /proc/self/exe overwrite, /proc/sys
//! (core_pattern and other kernel.* sysctls), host administration syscalls (kexec, reboot, swap,
//! acct, the clock, hostname, chroot), personality/setuid/capset, and the foreign syscall ABIs
//! (i386 `int 0x80`, x32).
//!
//! Every probe runs in a default sandbox, where the refusal is checked by its exact errno (or
//! signal) and, for a seccomp denial, by the `violation` event naming the syscall. The control
//! runs the same probe with `--seccomp off --allow-weaker-isolation`: the call then reaches the
//! kernel, which either lets it through or refuses with a different errno — or, where the
//! sandbox holds no capability for it, with the same EPERM (the layered defence: the control
//! asserts that errno too, and also makes a variant of the call the kernel answers differently,
//! e.g. a missing mount target gives ENOENT, so a broken probe cannot pass). Calls that are
//! harmless as host root with the arguments used (missing paths, bad magic numbers, invalid
//! values) also run on the host with a plain `python3 -c`.
//!
//! Raw syscall numbers are x86_64's (the suite's CI host); `sc()` returns `[ret, errno]`.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ESRCH: i64 = libc::ESRCH as i64;
const ENXIO: i64 = libc::ENXIO as i64;
const EAGAIN: i64 = libc::EAGAIN as i64;
const ENOTTY: i64 = libc::ENOTTY as i64;
const ETXTBSY: i64 = libc::ETXTBSY as i64;
const ENOKEY: i64 = libc::ENOKEY as i64;
const EOPNOTSUPP: i64 = libc::EOPNOTSUPP as i64;
const ENODEV: i64 = libc::ENODEV as i64;

/// SIGSYS, as `stockade run` reports it (128 + 31).
const EXIT_SIGSYS: i32 = 128 + libc::SIGSYS;

// --- helpers ------------------------------------------------------------------------------------

/// A raw syscall's result `[-1, errno]`.
fn refused(errno: i64) -> Value {
    json!([-1, errno])
}

/// Every key in `keys` recorded `want`.
fn expect_all(run: &Run, keys: &[&str], want: &Value) {
    for k in keys {
        run.expect(k, want.clone());
    }
}

/// A raw syscall `key` succeeded: errno 0 and a non-negative return, which is returned.
fn expect_success(run: &Run, key: &str) -> i64 {
    let v = run.get(key);
    assert_eq!(v[1], 0, "{}: {key} failed: {}", run.label, run.result());
    let ret = v[0]
        .as_i64()
        .unwrap_or_else(|| panic!("{}: {key}: {v}", run.label));
    assert!(ret >= 0, "{}: {key}: {v}", run.label);
    ret
}

/// Like [`expect_success`] for a host result.
fn host_success(r: &Value, key: &str) -> i64 {
    assert_eq!(r[key][1], 0, "host control: {key} failed: {r}");
    let ret = r[key][0].as_i64().unwrap_or_else(|| panic!("{key}: {r}"));
    assert!(ret >= 0, "host control: {key}: {r}");
    ret
}

/// The same probe in a sandbox with the seccomp filter lifted.
fn seccomp_off(label: &str) -> Sandbox {
    Sandbox::new(label).flags(&["--seccomp", "off", "--allow-weaker-isolation"])
}

/// Without the filter there is nothing to deny a syscall, so no `violation` of kind syscall may
/// appear: the events of the refused run are the filter's.
fn expect_no_syscall_violation(run: &Run) {
    let v: Vec<&Value> = run
        .of_type("violation")
        .into_iter()
        .filter(|e| e["kind"] == "syscall")
        .collect();
    assert!(v.is_empty(), "{}: unexpected violations: {v:?}", run.label);
}

/// A syscall the filter allows is refused by the kernel (capabilities, namespaces), not by
/// seccomp: no violation may name it.
fn expect_no_violation_named(run: &Run, syscall: &str) {
    assert!(
        !run.of_type("violation")
            .iter()
            .any(|e| e["kind"] == "syscall" && e["syscall"] == syscall),
        "{}: {syscall} is allowed by the filter, yet a violation names it",
        run.label
    );
}

/// Runs the probe `body` (after PRELUDE) as root on the host: the control for calls that are
/// harmless there with the arguments used.
fn host_python(body: &str, args: &[&str]) -> Value {
    let script = format!("{PRELUDE}\n{body}\n");
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "host control exited {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("host control printed nothing");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("host control output {stdout:?}: {e}"))
}

/// A host sysctl's value, trimmed; None when the kernel does not have it.
fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A file's bytes and the identity a write would change (inode, size, mtime, ctime), for
/// "unchanged" checks.
#[derive(PartialEq)]
struct Snapshot {
    identity: (u64, u64, i64, i64, i64, i64),
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({} bytes)", self.identity, self.bytes.len())
    }
}

/// `p` is byte for byte what `before` saw, in place. A new inode means the file was replaced
/// (a concurrent `cargo build` relinking stockade), not written through /proc/PID/exe, which
/// keeps the inode: the check could not run, and says so.
fn assert_unchanged(p: &Path, before: &Snapshot) {
    let now = snapshot(p);
    assert_eq!(
        now.identity.0,
        before.identity.0,
        "{} was replaced during the test (rebuilt?): the overwrite check could not run; rerun",
        p.display()
    );
    assert!(
        now == *before,
        "{} changed: {before:?} -> {now:?}",
        p.display()
    );
}

fn snapshot(p: &Path) -> Snapshot {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    Snapshot {
        identity: (
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ),
        bytes: std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
    }
}

/// Defines `in_child(f)`: runs `f` in a forked child and returns its JSON-able result, so a call
/// that changes the caller (ptrace, unshare, setsid) does not disturb the rest of the probe.
const IN_CHILD: &str = r#"
def in_child(f):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = f()
        except OSError as e:
            out = ["err", e.errno]
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while True:
        b = os.read(r, 4096)
        if not b:
            break
        out += b
    os.waitpid(pid, 0)
    return json.loads(out)
KEEP = []
def cstr(s):
    b = ctypes.create_string_buffer(s if isinstance(s, bytes) else s.encode())
    KEEP.append(b)
    return ctypes.addressof(b)
"#;

// --- ptrace -------------------------------------------------------------------------------------

/// PTRACE_TRACEME (in a child), PTRACE_ATTACH to PID 1 (the agent), to a sibling process and to
/// the probe's own child, and process_vm_readv of PID 1 and of the probe itself.
const PTRACE: &str = r#"
R["traceme"] = in_child(lambda: sc(101, 0, 0, 0, 0))
R["attach_pid1"] = sc(101, 16, 1, 0, 0)
sib = os.fork()
if sib == 0:
    time.sleep(60)
    os._exit(0)
# A true sibling: another child of the probe attaches to `sib`; its tracee is released when it exits.
R["attach_sibling"] = in_child(lambda: sc(101, 16, sib, 0, 0))
os.kill(sib, 9)
os.waitpid(sib, 0)
kid = os.fork()
if kid == 0:
    time.sleep(60)
    os._exit(0)
R["attach_child"] = sc(101, 16, kid, 0, 0)
os.kill(kid, 9)
os.waitpid(kid, 0)
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
src = ctypes.create_string_buffer(b"probe-bytes", 11)
dst = ctypes.create_string_buffer(11)
loc, rem = Iov(ctypes.addressof(dst), 11), Iov(ctypes.addressof(src), 11)
R["vm_read_pid1"] = sc(310, 1, ctypes.addressof(loc), 1, ctypes.addressof(rem), 1, 0)
R["vm_read_self"] = sc(310, os.getpid(), ctypes.addressof(loc), 1, ctypes.addressof(rem), 1, 0)
R["vm_read_copied"] = dst.raw == src.raw
done()
"#;

#[test]
fn ptrace_and_process_vm_readv_are_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{PTRACE}");
    let run = Sandbox::new("ptrace").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0);
    expect_all(
        &run,
        &[
            "traceme",
            "attach_pid1",
            "attach_sibling",
            "attach_child",
            "vm_read_pid1",
            "vm_read_self",
        ],
        &refused(EPERM),
    );
    run.expect("vm_read_copied", json!(false));
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("ptrace");
    run.expect_syscall_violation("process_vm_readv");
    run.expect_clean_end();

    // Control: without the filter a process may trace and read a process of its own user; PID 1
    // (the agent, another user) stays out of reach of the kernel's ptrace access check.
    let off = seccomp_off("ptrace control").python(&body, &[]);
    off.expect_exit(0)
        .expect("traceme", json!([0, 0]))
        .expect("attach_child", json!([0, 0]))
        // gVisor applies Yama ptrace_scope 1 (its /proc/sys/kernel/yama/ptrace_scope): only a
        // descendant may be attached, so a sibling is EPERM there (the child above is attached)
        .expect(
            "attach_sibling",
            per_level(json!([0, 0]), refused(EPERM), json!([0, 0])),
        )
        // gVisor (runsc 2022-12) has no process_vm_readv: ENOSYS, nothing copied
        .expect(
            "vm_read_self",
            per_level(json!([11, 0]), refused(ENOSYS), json!([11, 0])),
        )
        .expect("vm_read_copied", json!(per_level(true, false, true)))
        .expect("attach_pid1", refused(EPERM))
        .expect("vm_read_pid1", refused(per_level(EPERM, ENOSYS, EPERM)));
    expect_no_syscall_violation(&off);
}

// --- host pids ----------------------------------------------------------------------------------

/// argv: host pids. The sandbox lists its own pids and tries each host pid by kill(pid, 0),
/// /proc/<pid> and pidfd_open.
const HOST_PIDS: &str = r#"
R["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
R["self"] = os.getpid()
R["nspid"] = next((l for l in read("/proc/self/status").splitlines() if l.startswith("NSpid:")), "no NSpid")
for i, a in enumerate(sys.argv[1:]):
    pid = int(a)
    t("kill_%d" % i, lambda: os.kill(pid, 0))
    t("proc_%d" % i, lambda: len(os.listdir("/proc/%d" % pid)) > 0)
    t("pidfd_%d" % i, lambda: os.close(os.pidfd_open(pid)))
done()
"#;

/// Kills and reaps a host child when the test ends, passing or not.
struct Reaped(std::process::Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn host_pids_are_invisible_from_inside() {
    require_root("escape suite");
    let c = Canaries::plant();
    let sleeper = Reaped(
        Command::new("/usr/bin/sleep")
            .arg("120")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let host_pids = [sleeper.0.id().to_string(), std::process::id().to_string()];
    let args: Vec<&str> = host_pids.iter().map(String::as_str).collect();
    let run = Sandbox::new("host pids")
        .with_canaries(&c)
        .python(HOST_PIDS, &args);
    run.expect_exit(0);
    // The sandbox sees exactly two processes: PID 1 (the agent) and the probe; one pid level.
    // At gvisor three: PID 1 is the guest shim, PID 2 the agent; gVisor's /proc/PID/status has
    // no NSpid line (its kernel has one pid namespace per sandbox here).
    let me = run.get("self");
    assert_eq!(
        run.get("pids"),
        per_level(json!([1, me]), json!([1, 2, me]), json!([1, me])),
        "{}",
        run.result()
    );
    assert_eq!(
        run.get("nspid"),
        per_level(
            json!(format!("NSpid:\t{me}")),
            json!("no NSpid"),
            json!(format!("NSpid:\t{me}"))
        )
    );
    for i in 0..host_pids.len() {
        run.expect(&format!("kill_{i}"), err(ESRCH))
            .expect(&format!("proc_{i}"), err(ENOENT))
            // gVisor (runsc 2022-12) has no pidfd_open: ENOSYS, no descriptor either way
            .expect(&format!("pidfd_{i}"), err(per_level(ESRCH, ENOSYS, ESRCH)));
    }
    c.assert_nothing_got_through(&run);
    // The pid namespace refuses, not a wall that reports: kill and pidfd_open are allowed by the
    // filter and simply find no such process, so there is no violation to record; the attempt
    // is written down with its exit.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: the same probe on the host reaches both processes.
    let host = host_python(HOST_PIDS, &args);
    for i in 0..host_pids.len() {
        assert_eq!(host[format!("kill_{i}")], ok(Value::Null), "{host}");
        assert_eq!(host[format!("proc_{i}")], ok(true), "{host}");
        assert_eq!(host[format!("pidfd_{i}")], ok(Value::Null), "{host}");
    }
}

// --- nested user namespaces ---------------------------------------------------------------------

/// clone(CLONE_NEWUSER), clone3 with CLONE_NEWUSER, unshare(CLONE_NEWUSER) — each in a child,
/// which reports its CapEff inside the new namespace — and setns to the namespaces of PID 1 (not
/// even openable) and to the probe's own (the same ones).
const USERNS: &str = r#"
NEWUSER = 0x10000000
def capeff():
    return [l for l in read("/proc/self/status").splitlines() if l.startswith("CapEff:")][0].split()[1]
def clone_into_userns():
    r, w = os.pipe()
    res = sc(56, NEWUSER | 17, 0, 0, 0, 0)   # clone(CLONE_NEWUSER|SIGCHLD): a fork into a new userns
    if res[0] == 0:
        os.write(w, capeff().encode())
        os._exit(0)
    os.close(w)
    caps = os.read(r, 100).decode() if res[0] > 0 else None
    if res[0] > 0:
        os.waitpid(res[0], 0)
    return [res, caps]
R["clone_newuser"] = clone_into_userns()
# struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls
args = cstr(struct.pack("<8Q", NEWUSER, 0, 0, 0, 17, 0, 0, 0))
def clone3_into_userns():
    res = sc(435, args, 64)
    if res[0] == 0:
        os._exit(0)
    if res[0] > 0:
        os.waitpid(res[0], 0)
    return res
R["clone3_newuser"] = clone3_into_userns()
R["unshare_newuser"] = in_child(lambda: [sc(272, NEWUSER), capeff()])
for ns in ["user", "mnt", "net", "pid", "uts", "ipc", "cgroup"]:
    t("open_pid1_" + ns, lambda: os.open("/proc/1/ns/" + ns, os.O_RDONLY))
    try:
        fd = os.open("/proc/self/ns/" + ns, os.O_RDONLY)
    except OSError as e:
        R["setns_" + ns] = ["no_ns_file", e.errno]
        continue
    R["setns_" + ns] = sc(308, fd, 0)
    os.close(fd)
R["setns_badfd"] = sc(308, -1, 0)
R["capeff"] = capeff()
done()
"#;

const NAMESPACES: [&str; 7] = ["user", "mnt", "net", "pid", "uts", "ipc", "cgroup"];

#[test]
fn nested_user_namespaces_cannot_regain_capabilities() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{USERNS}");
    let run = Sandbox::new("userns").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0)
        .expect("clone_newuser", json!([[-1, EPERM], null]))
        // clone3 carries its flags in memory the filter cannot read: refused outright with
        // ENOSYS, so glibc falls back to clone, whose flags it checks.
        .expect("clone3_newuser", refused(ENOSYS))
        .expect("unshare_newuser", json!([[-1, EPERM], "0000000000000000"]))
        .expect("setns_badfd", refused(EPERM))
        .expect("capeff", json!("0000000000000000"));
    for ns in NAMESPACES {
        if level() == Level::Gvisor {
            check_gvisor_ns(&run, ns, refused(EPERM));
            continue;
        }
        // /proc/1/ns/* cannot even be opened (PID 1 is another user: ptrace access check);
        // setns on the namespaces the probe can open (its own, PID 1's too) is the filter's.
        run.expect(&format!("open_pid1_{ns}"), err(EACCES))
            .expect(&format!("setns_{ns}"), refused(EPERM));
    }
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("clone");
    run.expect_syscall_violation("clone3");
    run.expect_syscall_violation("unshare");
    run.expect_syscall_violation("setns");
    run.expect_clean_end();

    // Control: without the filter each call gets a new user namespace with every capability in
    // it; setns reaches the kernel (re-entering one's own user namespace is EINVAL, a bad fd
    // EBADF) and is refused for the others only for want of CAP_SYS_ADMIN.
    let off = seccomp_off("userns control").python(&body, &[]);
    off.expect_exit(0);
    // every capability the kernel knows: Linux 6.1 has 41, gVisor (runsc 2022-12) 38
    let full = per_level("000001ffffffffff", "0000003fffffffff", "000001ffffffffff");
    let clone = off.get("clone_newuser");
    assert_eq!(clone[0][1], 0, "{clone}");
    assert!(clone[0][0].as_i64().unwrap() > 0, "{clone}");
    assert_eq!(clone[1], full, "{clone}");
    off.expect("unshare_newuser", json!([[0, 0], full]))
        .expect("capeff", json!("0000000000000000"));
    if level() == Level::Gvisor {
        // gVisor (runsc 2022-12) has neither clone3 (ENOSYS, so glibc's fallback to clone,
        // checked above, is the way in) nor setns: EOPNOTSUPP for every descriptor, even a bad
        // one — not the filter's EPERM, so the refusals above were the filter's.
        off.expect("clone3_newuser", refused(ENOSYS))
            .expect("setns_badfd", refused(EOPNOTSUPP));
        for ns in NAMESPACES {
            check_gvisor_ns(&off, ns, refused(EOPNOTSUPP));
        }
    } else {
        assert!(off.get("clone3_newuser")[0].as_i64().unwrap() > 0);
        off.expect("setns_user", refused(EINVAL))
            .expect("setns_badfd", refused(EBADF));
        for ns in NAMESPACES {
            off.expect(&format!("open_pid1_{ns}"), err(EACCES));
            if ns != "user" {
                off.expect(&format!("setns_{ns}"), refused(EPERM));
            }
        }
    }
    expect_no_syscall_violation(&off);
}

/// The namespace files gVisor's /proc has (runsc 2022-12): `/proc/PID/ns` holds only these.
const GVISOR_NS_FILES: [&str; 3] = ["user", "net", "pid"];

/// At gvisor: `ns`'s file exists only for [`GVISOR_NS_FILES`] (the others are ENOENT, so
/// setns has no descriptor to be tried on); where it exists, setns on the probe's own
/// descriptor must give `setns`. PID 1's namespace files open there: a documented limitation
/// (gVisor's /proc lets the command read PID 1's entries, docs/isolation-levels.md) — it leads
/// nowhere, as setns is refused by the filter and gVisor has no setns at all (the control).
fn check_gvisor_ns(run: &Run, ns: &str, setns: Value) {
    let (open, set) = (format!("open_pid1_{ns}"), format!("setns_{ns}"));
    if GVISOR_NS_FILES.contains(&ns) {
        let v = run.get(&open);
        assert!(
            v[0] == "ok" && v[1].as_i64().is_some_and(|fd| fd >= 0),
            "{}: {open}: {}",
            run.label,
            run.result()
        );
        run.expect(&set, setns);
    } else {
        run.expect(&open, err(ENOENT))
            .expect(&set, json!(["no_ns_file", ENOENT]));
    }
}

// --- mount --------------------------------------------------------------------------------------

/// Every mount-table syscall, each with arguments the kernel would act on and, where it
/// differs, a variant (missing target, bad flags) the kernel answers with another errno.
const MOUNT: &str = r#"
os.makedirs("/tmp/mnt", exist_ok=True)
before = read("/proc/self/mountinfo")
R["mount_tmpfs"] = sc(165, cstr("tmpfs"), cstr("/tmp/mnt"), cstr("tmpfs"), 0, 0)
R["mount_missing_target"] = sc(165, cstr("tmpfs"), cstr("/nonexistent-target"), cstr("tmpfs"), 0, 0)
R["remount_usr_rw"] = sc(165, cstr("/usr"), cstr("/usr"), 0, 0x1000 | 0x20 | 0x4000, 0)
R["umount_usr"] = sc(166, cstr("/usr"), 2)
R["umount_missing"] = sc(166, cstr("/nonexistent-target"), 0)
R["pivot_root"] = sc(155, cstr("/tmp/mnt"), cstr("/tmp/mnt"))
R["open_tree"] = sc(428, -100, cstr("/usr"), 0)
R["open_tree_clone"] = sc(428, -100, cstr("/usr"), 1)
R["fsopen"] = sc(430, cstr("tmpfs"), 0)
R["move_mount"] = sc(429, -1, cstr(""), -100, cstr("/tmp/mnt"), 4)
R["fspick"] = sc(433, -100, cstr("/usr"), 0)
R["mount_setattr"] = sc(442, -100, cstr("/usr"), 0, 0, 0)
R["mounts_unchanged"] = read("/proc/self/mountinfo") == before
done()
"#;

/// The calls of [`MOUNT`] that are harmless as host root: missing paths, a bad fd, contexts
/// opened and closed without being configured (fspick on /proc, a mount root on the host).
const MOUNT_HOST: &str = r#"
R["mount_missing_target"] = sc(165, cstr("tmpfs"), cstr("/nonexistent-target"), cstr("tmpfs"), 0, 0)
R["umount_missing"] = sc(166, cstr("/nonexistent-target"), 0)
R["pivot_root_missing"] = sc(155, cstr("/nonexistent-a"), cstr("/nonexistent-b"))
R["fsopen"] = sc(430, cstr("tmpfs"), 0)
R["fspick"] = sc(433, -100, cstr("/proc"), 0)
R["move_mount"] = sc(429, -1, cstr(""), -100, cstr("/nonexistent-target"), 0)
done()
"#;

const MOUNT_CALLS: [&str; 12] = [
    "mount_tmpfs",
    "mount_missing_target",
    "remount_usr_rw",
    "umount_usr",
    "umount_missing",
    "pivot_root",
    "open_tree",
    "open_tree_clone",
    "fsopen",
    "move_mount",
    "fspick",
    "mount_setattr",
];

#[test]
fn the_mount_api_is_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{MOUNT}");
    let run = Sandbox::new("mount").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0);
    expect_all(&run, &MOUNT_CALLS, &refused(EPERM));
    run.expect("mounts_unchanged", json!(true));
    c.assert_nothing_got_through(&run);
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "open_tree",
        "fsopen",
        "move_mount",
        "fspick",
        "mount_setattr",
    ] {
        run.expect_syscall_violation(name);
    }
    run.expect_clean_end();

    // Control 1: without the filter the calls reach the kernel. A missing target is ENOENT,
    // mount_setattr with a zero-sized attr EINVAL, and open_tree without OPEN_TREE_CLONE (which
    // needs no privilege) gives a descriptor; everything that would change the mount table is
    // refused for want of CAP_SYS_ADMIN over the sandbox's mount namespace (layered).
    // gVisor (runsc 2022-12) checks CAP_SYS_ADMIN before the path (a missing target is EPERM
    // there, as for chroot), and has no new mount API: open_tree, fsopen, move_mount, fspick and
    // mount_setattr are its ENOSYS, not the filter's EPERM.
    let off = seccomp_off("mount control").python(&body, &[]);
    off.expect_exit(0)
        .expect(
            "mount_missing_target",
            refused(per_level(ENOENT, EPERM, ENOENT)),
        )
        .expect("umount_missing", refused(per_level(ENOENT, EPERM, ENOENT)))
        .expect("mount_setattr", refused(per_level(EINVAL, ENOSYS, EINVAL)))
        .expect("mounts_unchanged", json!(true));
    if level() == Level::Gvisor {
        off.expect("open_tree", refused(ENOSYS));
    } else {
        expect_success(&off, "open_tree");
    }
    expect_all(
        &off,
        &["mount_tmpfs", "remount_usr_rw", "umount_usr", "pivot_root"],
        &refused(EPERM),
    );
    expect_all(
        &off,
        &["open_tree_clone", "fsopen", "move_mount", "fspick"],
        &refused(per_level(EPERM, ENOSYS, EPERM)),
    );
    expect_no_syscall_violation(&off);

    // Control 2: host root gets past the capability checks to the arguments.
    let host = host_python(&format!("{IN_CHILD}\n{MOUNT_HOST}"), &[]);
    for k in [
        "mount_missing_target",
        "umount_missing",
        "pivot_root_missing",
        "move_mount",
    ] {
        assert_eq!(host[k], refused(ENOENT), "{k}: {host}");
    }
    host_success(&host, "fsopen");
    host_success(&host, "fspick");
}

// --- keyrings -----------------------------------------------------------------------------------

/// A fresh session keyring (so keys die with the probe), add_key, keyctl, request_key, and what
/// /proc/keys shows.
const KEYS: &str = r#"
R["join_session"] = sc(250, 1, 0)
R["add_key"] = sc(248, cstr("user"), cstr("escape-key"), cstr("payload"), 7, -3)
R["keyctl_session_id"] = sc(250, 0, -3, 0)
R["request_key"] = sc(249, cstr("user"), cstr("no-such-escape-key"), 0, 0)
t("proc_keys", lambda: read("/proc/keys"))
done()
"#;

#[test]
fn keyrings_are_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{KEYS}");
    let run = Sandbox::new("keys").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0);
    expect_all(
        &run,
        &[
            "join_session",
            "add_key",
            "keyctl_session_id",
            "request_key",
        ],
        &refused(EPERM),
    );
    // /proc/keys is masked (bound to /dev/null); gVisor has no /proc/keys at all.
    run.expect("proc_keys", per_level(ok(""), err(ENOENT), ok("")));
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("keyctl");
    run.expect_syscall_violation("add_key");
    run.expect_syscall_violation("request_key");
    run.expect_clean_end();

    // Control: without the filter the keyring works (the key lands in a session keyring of the
    // probe's own, gone with it), and an unknown key is the kernel's ENOKEY.
    let off = seccomp_off("keys control").python(&body, &[]);
    off.expect_exit(0);
    if level() == Level::Gvisor {
        // gVisor (runsc 2022-12) has no keyrings: add_key, keyctl and request_key are its
        // EACCES ("not available to user"), not the filter's EPERM.
        expect_all(
            &off,
            &[
                "join_session",
                "add_key",
                "keyctl_session_id",
                "request_key",
            ],
            &refused(EACCES),
        );
    } else {
        off.expect("request_key", refused(ENOKEY));
        for k in ["join_session", "add_key", "keyctl_session_id"] {
            assert!(expect_success(&off, k) > 0, "{k}: {}", off.result());
        }
    }
    expect_no_syscall_violation(&off);
}

// --- bpf, perf_event_open, userfaultfd, io_uring -----------------------------------------------

/// BPF_MAP_CREATE (an array map), BPF_PROG_LOAD (a two-instruction socket filter), bpf with no
/// attr; perf_event_open of the probe's own task clock (user space only); userfaultfd plain,
/// user-mode-only and with bad flags, and /dev/userfaultfd; io_uring_setup/enter/register.
const KERNEL_APIS: &str = r#"
attr = bytearray(128)
struct.pack_into("<IIII", attr, 0, 2, 4, 8, 1)
R["bpf_map_create"] = sc(321, 0, cstr(bytes(attr)), 128)
insns = cstr(struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0))
prog = bytearray(128)
struct.pack_into("<IIQQ", prog, 0, 1, 2, insns, cstr("GPL"))
R["bpf_prog_load"] = sc(321, 5, cstr(bytes(prog)), 128)
R["bpf_null_attr"] = sc(321, 0, 0, 0)
pe = bytearray(128)
struct.pack_into("<IIQ", pe, 0, 1, 128, 1)
struct.pack_into("<Q", pe, 40, 1 | 1 << 5 | 1 << 6)
R["perf_event_open"] = sc(298, cstr(bytes(pe)), 0, -1, -1, 0)
R["perf_event_open_badflags"] = sc(298, cstr(bytes(pe)), 0, -1, -1, 0xffff)
R["userfaultfd"] = sc(323, 0)
R["userfaultfd_user_mode_only"] = sc(323, 1)
R["userfaultfd_badflags"] = sc(323, 0xffff)
t("dev_userfaultfd", lambda: os.open("/dev/userfaultfd", os.O_RDWR))
R["io_uring_setup"] = sc(425, 4, cstr(bytes(120)))
R["io_uring_enter"] = sc(426, -1, 0, 0, 0, 0, 0)
R["io_uring_register"] = sc(427, -1, 0, 0, 0)
done()
"#;

const KERNEL_API_CALLS: [&str; 11] = [
    "bpf_map_create",
    "bpf_prog_load",
    "bpf_null_attr",
    "perf_event_open",
    "perf_event_open_badflags",
    "userfaultfd",
    "userfaultfd_user_mode_only",
    "userfaultfd_badflags",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

#[test]
fn bpf_perf_userfaultfd_and_io_uring_are_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{KERNEL_APIS}");
    let run = Sandbox::new("kernel apis")
        .with_canaries(&c)
        .python(&body, &[]);
    run.expect_exit(0);
    expect_all(&run, &KERNEL_API_CALLS, &refused(EPERM));
    // The device that hands out userfaultfds without the syscall is not in the sandbox's /dev.
    run.expect("dev_userfaultfd", err(ENOENT));
    c.assert_nothing_got_through(&run);
    for name in [
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        run.expect_syscall_violation(name);
    }
    run.expect_clean_end();

    // Control: without the filter every call reaches the kernel. Invalid arguments get the
    // kernel's EINVAL/EBADF; the valid ones succeed or are refused by the host's sysctls for an
    // unprivileged caller (read here, so each expectation is exact for this host).
    let off = seccomp_off("kernel apis control").python(&body, &[]);
    if level() == Level::Gvisor {
        check_kernel_apis_control_gvisor(&off);
    } else {
        check_kernel_apis_control_linux(&off);
    }
    expect_no_syscall_violation(&off);

    // Control 2: host root loads the map and the program (closed when the probe exits).
    let host = host_python(&format!("{IN_CHILD}\n{KERNEL_APIS}"), &[]);
    host_success(&host, "bpf_map_create");
    host_success(&host, "bpf_prog_load");
}

/// gVisor's own answers without the filter (runsc 2022-12): io_uring_setup works (so the
/// filter's EPERM above was the only thing stopping it); perf_event_open is ENODEV (no
/// counters), userfaultfd and io_uring_register ENOSYS; bpf needs CAP_SYS_ADMIN there, checked
/// before the arguments (EPERM, even with no attr); io_uring_enter on a bad descriptor comes back
/// as -1 with EPERM from gVisor itself.
fn check_kernel_apis_control_gvisor(off: &Run) {
    off.expect_exit(0)
        .expect("perf_event_open", refused(ENODEV))
        .expect("perf_event_open_badflags", refused(ENODEV))
        .expect("userfaultfd", refused(ENOSYS))
        .expect("userfaultfd_user_mode_only", refused(ENOSYS))
        .expect("userfaultfd_badflags", refused(ENOSYS))
        .expect("io_uring_enter", refused(EPERM))
        .expect("io_uring_register", refused(ENOSYS))
        .expect("dev_userfaultfd", err(ENOENT));
    expect_success(off, "io_uring_setup");
    expect_all(
        off,
        &["bpf_map_create", "bpf_prog_load", "bpf_null_attr"],
        &refused(EPERM),
    );
}

/// Linux's answers without the filter (the container and the microvm guest).
fn check_kernel_apis_control_linux(off: &Run) {
    off.expect_exit(0)
        .expect("bpf_null_attr", refused(EINVAL))
        .expect("perf_event_open_badflags", refused(EINVAL))
        .expect("userfaultfd_badflags", refused(EINVAL))
        .expect("io_uring_enter", refused(EBADF))
        .expect("io_uring_register", refused(EINVAL))
        .expect("dev_userfaultfd", err(ENOENT));
    expect_success(off, "userfaultfd_user_mode_only");
    let bpf_off = sysctl("kernel/unprivileged_bpf_disabled").unwrap_or_default();
    for k in ["bpf_map_create", "bpf_prog_load"] {
        if bpf_off == "0" {
            expect_success(off, k);
        } else {
            off.expect(k, refused(EPERM));
        }
    }
    match sysctl("kernel/perf_event_paranoid").as_deref() {
        Some("-1" | "0" | "1" | "2") => {
            expect_success(off, "perf_event_open");
        }
        _ => {
            off.expect("perf_event_open", refused(EACCES));
        }
    }
    if sysctl("vm/unprivileged_userfaultfd").as_deref() == Some("1") {
        expect_success(off, "userfaultfd");
    } else {
        off.expect("userfaultfd", refused(EPERM));
    }
    if matches!(
        sysctl("kernel/io_uring_disabled").as_deref(),
        None | Some("0")
    ) {
        expect_success(off, "io_uring_setup");
    } else {
        off.expect("io_uring_setup", refused(EPERM));
    }
}

// --- TIOCSTI / TIOCLINUX ------------------------------------------------------------------------

/// TIOCSTI on stdin (a pipe from stockade), /dev/tty (no controlling terminal), a pty from
/// /dev/ptmx: on the master, on the slave, on the slave as the controlling terminal of a new
/// session (where the kernel lets its owner inject input), with the command's high bits set
/// (the kernel reads 32 bits); TIOCLINUX on the slave. Whatever was injected is read back from
/// the master.
const TTY: &str = r#"
import fcntl
ch = cstr("x")
R["stdin"] = os.readlink("/proc/self/fd/0").split(":")[0]
R["tiocsti_stdin"] = sc(16, 0, 0x5412, ch)
t("open_dev_tty", lambda: os.open("/dev/tty", os.O_RDWR))
m = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"\0\0\0\0"))[0]
slave = "/dev/pts/%d" % n
s = os.open(slave, os.O_RDWR | os.O_NOCTTY)
R["tiocsti_master"] = sc(16, m, 0x5412, ch)
R["tiocsti_slave"] = sc(16, s, 0x5412, ch)
R["tioclinux_slave"] = sc(16, s, 0x541C, cstr(bytes([6])))
def as_controlling_tty():
    os.setsid()
    fd = os.open(slave, os.O_RDWR)
    return [sc(16, fd, 0x5412, cstr("y")), sc(16, fd, 0x100005412, cstr("z"))]
R["tiocsti_ctty"], R["tiocsti_ctty_high_bits"] = in_child(as_controlling_tty)
os.set_blocking(m, False)
time.sleep(0.1)
t("injected", lambda: os.read(m, 100).decode())
done()
"#;

#[test]
fn tiocsti_and_tioclinux_are_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{TTY}");
    let run = Sandbox::new("tiocsti").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0)
        // stockade relays stdio through pipes: the caller's terminal (or /dev/null) is not here.
        .expect("stdin", json!("pipe"))
        // no controlling terminal: Linux says ENXIO, gVisor EIO
        .expect(
            "open_dev_tty",
            err(per_level(ENXIO, libc::EIO as i64, ENXIO)),
        );
    expect_all(
        &run,
        &[
            "tiocsti_stdin",
            "tiocsti_master",
            "tiocsti_slave",
            "tioclinux_slave",
            "tiocsti_ctty",
            "tiocsti_ctty_high_bits",
        ],
        &refused(EPERM),
    );
    // Nothing was injected into the terminal.
    run.expect("injected", err(EAGAIN));
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("ioctl");
    run.expect_clean_end();

    // Control: without the filter the kernel takes TIOCSTI on the probe's controlling terminal
    // (with the command's high bits ignored) and the characters come out of the master; on a
    // terminal that is not its own the kernel refuses (EPERM), on a pipe it is ENOTTY, and
    // TIOCLINUX on a pty is ENOTTY.
    let off = seccomp_off("tiocsti control").python(&body, &[]);
    off.expect_exit(0)
        .expect("tiocsti_stdin", refused(ENOTTY))
        .expect(
            "open_dev_tty",
            err(per_level(ENXIO, libc::EIO as i64, ENXIO)),
        )
        .expect("tioclinux_slave", refused(ENOTTY));
    if level() == Level::Gvisor {
        // gVisor's tty driver (runsc 2022-12) has no TIOCSTI at all: ENOTTY on every terminal,
        // its controlling one too, not the filter's EPERM; nothing reaches the master.
        expect_all(
            &off,
            &[
                "tiocsti_master",
                "tiocsti_slave",
                "tiocsti_ctty",
                "tiocsti_ctty_high_bits",
            ],
            &refused(ENOTTY),
        );
        off.expect("injected", err(EAGAIN));
    } else if sysctl("dev/tty/legacy_tiocsti").as_deref() == Some("0") {
        off.expect("tiocsti_master", refused(EPERM))
            .expect("tiocsti_slave", refused(EPERM));
        off.expect("tiocsti_ctty", refused(libc::EIO as i64))
            .expect("injected", err(EAGAIN));
    } else {
        off.expect("tiocsti_master", refused(EPERM))
            .expect("tiocsti_slave", refused(EPERM))
            .expect("tiocsti_ctty", json!([0, 0]))
            .expect("tiocsti_ctty_high_bits", json!([0, 0]))
            .expect("injected", ok("yz"));
    }
    expect_no_syscall_violation(&off);
}

// --- modules ------------------------------------------------------------------------------------

/// init_module of a zero-length image, finit_module of /dev/null and of a bad fd,
/// delete_module of a name no module has. Harmless as host root too.
const MODULES: &str = r#"
R["init_module"] = sc(175, cstr(bytes(64)), 0, cstr(""))
fd = os.open("/dev/null", os.O_RDONLY)
R["finit_module"] = sc(313, fd, cstr(""), 0)
R["finit_module_badfd"] = sc(313, -1, cstr(""), 0)
R["delete_module"] = sc(176, cstr("no_such_escape_module"), 0o4000)
done()
"#;

#[test]
fn module_loading_is_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{MODULES}");
    let run = Sandbox::new("modules").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0);
    let calls = [
        "init_module",
        "finit_module",
        "finit_module_badfd",
        "delete_module",
    ];
    expect_all(&run, &calls, &refused(EPERM));
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("init_module");
    run.expect_syscall_violation("finit_module");
    run.expect_syscall_violation("delete_module");
    run.expect_clean_end();

    // Control: host root reaches the arguments (a zero-length image is ENOEXEC, a bad fd EBADF,
    // an unknown module ENOENT) — or, on a kernel built without modules, ENOSYS.
    let host = host_python(&format!("{IN_CHILD}\n{MODULES}"), &[]);
    let modular = Path::new("/proc/modules").exists();
    if modular {
        assert_eq!(host["init_module"], refused(libc::ENOEXEC as i64), "{host}");
        assert_eq!(host["finit_module_badfd"], refused(EBADF), "{host}");
        assert_eq!(host["delete_module"], refused(ENOENT), "{host}");
    } else {
        for k in calls {
            assert_eq!(host[k], refused(ENOSYS), "{k}: {host}");
        }
    }
    // Without the filter the sandbox reaches the kernel too: ENOSYS where there are no
    // modules, else EPERM for want of CAP_SYS_MODULE (layered). gVisor has no modules and
    // answers EPERM to a caller without CAP_SYS_MODULE whatever the host kernel is: the same
    // errno as the filter's (no event at gvisor tells them apart); the host control above shows
    // the probe's calls are real.
    let off = seccomp_off("modules control").python(&body, &[]);
    off.expect_exit(0);
    let linux = if modular { EPERM } else { ENOSYS };
    expect_all(&off, &calls, &refused(per_level(linux, EPERM, linux)));
    expect_no_syscall_violation(&off);
}

// --- host administration syscalls ---------------------------------------------------------------

/// kexec (too many segments / bad fds), reboot with a bad magic number, swapon of a missing file
/// and with bad flags, acct to a missing directory, settimeofday/clock_settime with invalid
/// times and on a clock that cannot be set, adjtimex read-only. None of these change anything
/// even as host root.
const ADMIN: &str = r#"
R["kexec_load"] = sc(246, 0, 1000, 0, 0)
R["kexec_file_load"] = sc(320, -1, -1, 0, 0, 0)
R["reboot_bad_magic"] = sc(169, 0, 0, 0, 0)
R["swapon_missing"] = sc(167, cstr("/nonexistent-swap"), 0)
R["swapon_badflags"] = sc(167, cstr("/nonexistent-swap"), 0x7fffffff)
R["acct_missing"] = sc(163, cstr("/nonexistent-dir/acct"))
R["settimeofday_invalid"] = sc(164, cstr(struct.pack("<qq", 0, -1)), 0)
R["clock_settime_invalid"] = sc(227, 0, cstr(struct.pack("<qq", 0, -1)))
R["clock_settime_monotonic"] = sc(227, 1, cstr(struct.pack("<qq", 0, 0)))
R["adjtimex_read"] = sc(159, cstr(bytes(208)))
done()
"#;

const ADMIN_CALLS: [&str; 10] = [
    "kexec_load",
    "kexec_file_load",
    "reboot_bad_magic",
    "swapon_missing",
    "swapon_badflags",
    "acct_missing",
    "settimeofday_invalid",
    "clock_settime_invalid",
    "clock_settime_monotonic",
    "adjtimex_read",
];

#[test]
fn host_administration_syscalls_are_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{ADMIN}");
    let run = Sandbox::new("admin").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0);
    expect_all(&run, &ADMIN_CALLS, &refused(EPERM));
    c.assert_nothing_got_through(&run);
    for name in [
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "acct",
        "settimeofday",
        "clock_settime",
        "adjtimex",
    ] {
        run.expect_syscall_violation(name);
    }
    run.expect_clean_end();

    // Control 1: host root gets past the capability checks to the arguments.
    let host = host_python(&format!("{IN_CHILD}\n{ADMIN}"), &[]);
    let kexec = host["kexec_load"] != refused(ENOSYS);
    if kexec {
        assert_eq!(host["kexec_load"], refused(EINVAL), "{host}");
    } else {
        assert_eq!(host["kexec_file_load"], refused(ENOSYS), "{host}");
    }
    for (k, errno) in [
        ("reboot_bad_magic", EINVAL),
        ("swapon_missing", ENOENT),
        ("swapon_badflags", EINVAL),
        ("acct_missing", ENOENT),
        ("settimeofday_invalid", EINVAL),
        ("clock_settime_invalid", EINVAL),
        ("clock_settime_monotonic", EINVAL),
    ] {
        assert_eq!(host[k], refused(errno), "{k}: {host}");
    }
    host_success(&host, "adjtimex_read");

    // Control 2: without the filter the sandbox reaches the kernel: invalid values are EINVAL,
    // adjtimex may read the clock, kexec is ENOSYS on a kernel without it; what would act on
    // the host is refused for want of the capability (layered).
    let off = seccomp_off("admin control").python(&body, &[]);
    off.expect_exit(0);
    if level() == Level::Gvisor {
        // gVisor (runsc 2022-12) answers every one of these with EPERM for want of the
        // capability (CAP_SYS_BOOT, CAP_SYS_ADMIN, CAP_SYS_PACCT, CAP_SYS_TIME), before looking at
        // the arguments, and refuses adjtimex even to read: the same errno as the filter's (no
        // event at gvisor tells them apart); the host control above shows the calls are real.
        expect_all(&off, &ADMIN_CALLS, &refused(EPERM));
    } else {
        off.expect("swapon_badflags", refused(EINVAL))
            .expect("settimeofday_invalid", refused(EINVAL))
            .expect("clock_settime_invalid", refused(EINVAL))
            .expect("clock_settime_monotonic", refused(EINVAL))
            .expect("reboot_bad_magic", refused(EPERM))
            .expect("swapon_missing", refused(EPERM))
            .expect("acct_missing", refused(EPERM));
        expect_success(&off, "adjtimex_read");
        for k in ["kexec_load", "kexec_file_load"] {
            off.expect(k, refused(if kexec { EPERM } else { ENOSYS }));
        }
    }
    expect_no_syscall_violation(&off);
}

/// sethostname/setdomainname (the sandbox's own UTS namespace) and chroot: not in the filter's
/// allow list. A too-long name and a missing directory are the variants the kernel answers
/// differently.
const UTS_CHROOT: &str = r#"
R["sethostname"] = sc(170, cstr("pwned"), 5)
R["sethostname_too_long"] = sc(170, cstr("x" * 100), 100)
R["setdomainname"] = sc(171, cstr("pwned"), 5)
R["chroot_tmp"] = sc(161, cstr("/tmp"))
R["chroot_missing"] = sc(161, cstr("/nonexistent-root"))
R["nodename"] = os.uname().nodename
done()
"#;

/// The host-safe variants of [`UTS_CHROOT`].
const UTS_CHROOT_HOST: &str = r#"
R["sethostname_too_long"] = sc(170, cstr("x" * 100), 100)
R["chroot_missing"] = sc(161, cstr("/nonexistent-root"))
done()
"#;

#[test]
fn sethostname_and_chroot_are_denied_and_named_in_the_trail() {
    require_root("escape suite");
    let c = Canaries::plant();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let body = format!("{IN_CHILD}\n{UTS_CHROOT}");
    let run = Sandbox::new("uts chroot")
        .with_canaries(&c)
        .python(&body, &[]);
    run.expect_exit(0);
    expect_all(
        &run,
        &[
            "sethostname",
            "sethostname_too_long",
            "setdomainname",
            "chroot_tmp",
            "chroot_missing",
        ],
        &refused(EPERM),
    );
    run.expect("nodename", json!("stockade"));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "the host's hostname changed"
    );
    c.assert_nothing_got_through(&run);
    run.expect_clean_end();

    // Control 1: without the filter the kernel is reached: a missing directory is ENOENT; the
    // rest is refused for want of CAP_SYS_ADMIN / CAP_SYS_CHROOT in the sandbox's own user
    // namespace (layered): the sandbox cannot rename even its own UTS namespace.
    let off = seccomp_off("uts chroot control").python(&body, &[]);
    off.expect_exit(0)
        // gVisor checks CAP_SYS_CHROOT before the path: EPERM, still refused
        .expect("chroot_missing", refused(per_level(ENOENT, EPERM, ENOENT)))
        .expect("chroot_tmp", refused(EPERM))
        .expect("sethostname", refused(EPERM))
        .expect("setdomainname", refused(EPERM))
        .expect("nodename", json!("stockade"));
    expect_no_syscall_violation(&off);
    // Control 2: host root gets to the arguments (a name over 64 bytes is EINVAL).
    let host = host_python(&format!("{IN_CHILD}\n{UTS_CHROOT_HOST}"), &[]);
    assert_eq!(host["sethostname_too_long"], refused(EINVAL), "{host}");
    assert_eq!(host["chroot_missing"], refused(ENOENT), "{host}");

    // The trail names what was denied. These three are not in the filter's tables, and the
    // event must still say which syscall it was (not "#170").
    run.expect_syscall_violation("sethostname");
    run.expect_syscall_violation("setdomainname");
    run.expect_syscall_violation("chroot");
}

// --- personality, setuid, capset ---------------------------------------------------------------

/// personality with flags that weaken hardening (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) next to
/// ones Docker allows (PER_LINUX32, the 0xffffffff query), each reset to 0 after; setuid(0),
/// setresuid(0, 0, 0), capset raising every capability, next to the no-op setuid(own uid) and
/// capset(current sets) that must work.
const CREDS: &str = r#"
def persona(p):
    r = sc(135, p)
    sc(135, 0)
    return r
R["personality_read_implies_exec"] = persona(0x0400000)
R["personality_addr_no_randomize"] = persona(0x0040000)
R["personality_linux32"] = persona(0x8)
R["personality_query"] = sc(135, 0xffffffff)
R["setuid0"] = sc(105, 0)
R["setresuid0"] = sc(117, 0, 0, 0)
R["setuid_self"] = sc(105, os.getuid())
hdr = cstr(struct.pack("<Ii", 0x20080522, 0))
cur = ctypes.create_string_buffer(24)
R["capget"] = sc(125, hdr, ctypes.addressof(cur))
R["capset_same"] = sc(126, hdr, ctypes.addressof(cur))
R["capset_all"] = sc(126, hdr, cstr(struct.pack("<6I", *([0xffffffff] * 6))))
R["uid"] = [os.getuid(), os.geteuid()]
done()
"#;

#[test]
fn personality_setuid_and_capset_cannot_regain_privilege() {
    require_root("escape suite");
    let c = Canaries::plant();
    let body = format!("{IN_CHILD}\n{CREDS}");
    let run = Sandbox::new("creds").with_canaries(&c).python(&body, &[]);
    run.expect_exit(0)
        .expect("personality_read_implies_exec", refused(EPERM))
        .expect("personality_addr_no_randomize", refused(EPERM))
        // gVisor accepts only PER_LINUX: EINVAL for PER_LINUX32 (refused, not granted)
        .expect(
            "personality_linux32",
            per_level(json!([0, 0]), refused(EINVAL), json!([0, 0])),
        )
        .expect(
            "personality_query",
            per_level(json!([0, 0]), refused(EINVAL), json!([0, 0])),
        )
        // setuid and capset are allowed by the filter; the kernel refuses them: no capability.
        .expect("setuid0", refused(EPERM))
        .expect("setresuid0", refused(EPERM))
        .expect("setuid_self", json!([0, 0]))
        .expect("capget", json!([0, 0]))
        .expect("capset_same", json!([0, 0]))
        .expect("capset_all", refused(EPERM))
        .expect("uid", json!([1000, 1000]));
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("personality");
    expect_no_violation_named(&run, "setuid");
    expect_no_violation_named(&run, "setresuid");
    expect_no_violation_named(&run, "capset");
    run.expect_clean_end();

    // Control: without the filter the personality flags are taken (the previous persona, 0, is
    // returned); setuid/capset are refused the same way, by the kernel (layered).
    // gVisor supports only PER_LINUX: it refuses these two flags itself (EINVAL).
    let taken = per_level(json!([0, 0]), refused(EINVAL), json!([0, 0]));
    let off = seccomp_off("creds control").python(&body, &[]);
    off.expect_exit(0)
        .expect("personality_read_implies_exec", taken.clone())
        .expect("personality_addr_no_randomize", taken)
        .expect("setuid0", refused(EPERM))
        .expect("setresuid0", refused(EPERM))
        .expect("capset_same", json!([0, 0]))
        .expect("capset_all", refused(EPERM))
        .expect("uid", json!([1000, 1000]));
    expect_no_syscall_violation(&off);
}

// --- cgroups ------------------------------------------------------------------------------------

/// argv: a marker (so the test finds the probe on the host). Looks for any cgroup mount, tries
/// release_agent, notify_on_release and cgroup.procs where a host would have them, mounts cgroup
/// v1 and v2 (and to a missing target), reads its own cgroup paths, then waits until the host
/// has looked at it.
const CGROUP: &str = r#"
R["cgroup_mounts"] = [l for l in read("/proc/self/mountinfo").splitlines() if " - cgroup" in l]
R["self_cgroup"] = read("/proc/self/cgroup").splitlines()
for f in ["memory/release_agent", "memory/notify_on_release", "memory/cgroup.procs",
          "pids/release_agent", "unified/cgroup.procs", "cgroup.procs"]:
    t("write_" + f, lambda: write("/sys/fs/cgroup/" + f, "/tmp/x"))
os.makedirs("/tmp/cg", exist_ok=True)
R["mount_cgroup_v1"] = sc(165, cstr("cgroup"), cstr("/tmp/cg"), cstr("cgroup"), 0, cstr("memory"))
R["mount_cgroup_v2"] = sc(165, cstr("cgroup2"), cstr("/tmp/cg"), cstr("cgroup2"), 0, 0)
R["mount_cgroup_missing"] = sc(165, cstr("cgroup"), cstr("/nonexistent-cg"), cstr("cgroup"), 0, cstr("memory"))
open("ready", "w").close()
for _ in range(3000):
    if os.path.exists("go"):
        break
    time.sleep(0.01)
R["went"] = os.path.exists("go")
done()
"#;

/// The host pid of the process running `/usr/bin/python3` with `marker` in its argv.
fn host_pid_of(marker: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if argv.first() == Some(&b"/usr/bin/python3".as_slice())
            && argv.contains(&marker.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// What the host sees of the probe while it waits.
struct HostView {
    cgroup: String,
    nspid: String,
    uid: String,
    /// (path, owner uid, mode) of cgroup.procs in the sandbox's memory cgroup and its parent.
    procs: Vec<(String, u32, u32)>,
    /// At gvisor, where the probe is no host process: what stands for it.
    gvisor: Option<GvisorView>,
}

/// At gvisor: the sandbox found from the host by its workspace's run.
struct GvisorView {
    id: String,
    /// Whether any host process carries the probe's marker in its argv.
    marker_on_host: bool,
}

/// At gvisor the probe is a task of gVisor's kernel, not a host process: the host view is the
/// sandbox's runsc processes (checked: runsc, gofer, sandbox, stubs, in its cgroup), with the
/// memory cgroup of its runsc sandbox process.
fn gvisor_host_view(ws: &Path, marker: &str) -> Option<HostView> {
    let id = crate::resources::sandbox_id_on_workspace("cgroup", ws);
    let procs = crate::resources::expect_gvisor_host_procs("cgroup", &id);
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", procs[0].pid)).ok()?;
    Some(HostView {
        procs: procs_files(&cgroup),
        cgroup,
        nspid: String::new(),
        uid: String::new(),
        gvisor: Some(GvisorView {
            id,
            marker_on_host: host_pid_of(marker).is_some(),
        }),
    })
}

/// Owner and mode of `cgroup.procs` in the memory cgroup named in `cgroup` (a /proc/PID/cgroup
/// text) and in its parent, read while the sandbox is alive.
fn procs_files(cgroup: &str) -> Vec<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let Some(rel) = cgroup
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
    else {
        return Vec::new();
    };
    let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{rel}"));
    [dir.join("cgroup.procs"), dir.join("../cgroup.procs")]
        .iter()
        .filter_map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((p.display().to_string(), m.uid(), m.mode()))
        })
        .collect()
}

#[test]
fn cgroup_release_agent_and_cgroup_escapes_are_refused() {
    require_root("escape suite");
    let c = Canaries::plant();
    let release_agents: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("release_agent"))
        .filter(|p| p.exists())
        .collect();
    // Control: the host has the files the probe looks for (cgroup v1, as in CI).
    assert!(
        !release_agents.is_empty(),
        "no cgroup v1 release_agent on this host: the probe would prove nothing"
    );
    assert!(Path::new("/sys/fs/cgroup/memory/notify_on_release").exists());
    let agents_before: Vec<String> = release_agents
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();

    let ws = tempfile::Builder::new()
        .prefix("stockade-escape-ws-")
        .tempdir_in("/tmp")
        .unwrap();
    let ws_path = ws.path().to_path_buf();
    let marker = unique("cgroup");
    let body = format!("{IN_CHILD}\n{CGROUP}");
    let (run, view) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            Sandbox::new("cgroup")
                .with_canaries(&c)
                .workspace(ws)
                .python(&body, &[&marker])
        });
        // Look at the probe from the host while it waits; assert only after letting it go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ws_path.join("ready").exists()
            && !h.is_finished()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let view = if level() == Level::Gvisor {
            gvisor_host_view(&ws_path, &marker)
        } else {
            host_pid_of(&marker).map(|pid| {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let field = |k: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                let cgroup =
                    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                HostView {
                    procs: procs_files(&cgroup),
                    cgroup,
                    nspid: field("NSpid:"),
                    uid: field("Uid:"),
                    gvisor: None,
                }
            })
        };
        let _ = std::fs::write(ws_path.join("go"), "");
        (h.join().unwrap(), view)
    });
    let view = view.expect("the probe was never seen on the host");

    run.expect_exit(0).expect("went", json!(true));
    // No cgroup filesystem at all inside, so no release_agent/notify_on_release/cgroup.procs.
    run.expect("cgroup_mounts", json!([]));
    for f in [
        "memory/release_agent",
        "memory/notify_on_release",
        "memory/cgroup.procs",
        "pids/release_agent",
        "unified/cgroup.procs",
    ] {
        run.expect(&format!("write_{f}"), err(ENOENT));
    }
    // gVisor's own /sys has an empty /sys/fs/cgroup (root's, 0755): creating a file there is
    // EACCES; the container level has no /sys at all.
    run.expect("write_cgroup.procs", err(per_level(ENOENT, EACCES, ENOENT)));
    expect_all(
        &run,
        &["mount_cgroup_v1", "mount_cgroup_v2", "mount_cgroup_missing"],
        &refused(EPERM),
    );
    let id = run.events[0]["sandbox_id"].as_str().unwrap().to_string();
    // Inside, every hierarchy's path is the cgroup namespace root (gVisor's kernel has no
    // cgroups unless a cgroupfs is mounted: its /proc/self/cgroup is empty)...
    let inside = run.get("self_cgroup");
    let lines = inside.as_array().unwrap();
    assert_eq!(lines.is_empty(), level() == Level::Gvisor, "{inside}");
    for l in lines {
        assert!(l.as_str().unwrap().ends_with(":/"), "{inside}");
    }
    // ...while the host sees the same process deep in stockade's cgroups, in a pid namespace
    // of its own (two pid levels), as an unused host uid. At gvisor the host has no process of
    // the command at all (gVisor's tasks), only runsc's, in the sandbox's cgroup.
    if let Some(gv) = &view.gvisor {
        assert_eq!(gv.id, id, "the run on the workspace is this sandbox");
        assert!(
            !gv.marker_on_host,
            "a host process carries the probe's argv at gvisor"
        );
    }
    let memory = view
        .cgroup
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| panic!("no memory cgroup on the host: {}", view.cgroup));
    assert!(
        memory.ends_with(&format!("/stockade/{id}")),
        "{memory} / {id}"
    );
    if view.gvisor.is_none() {
        let levels: Vec<&str> = view.nspid.split_whitespace().collect();
        assert_eq!(levels.len(), 2, "NSpid {:?}", view.nspid);
        let host_uid: u64 = view.uid.split_whitespace().next().unwrap().parse().unwrap();
        assert!(host_uid >= 0x7000_0000, "Uid {:?}", view.uid);
    }
    // Even with a cgroup filesystem in view, the sandbox's host uid could not move itself: its
    // cgroup's and the parent's cgroup.procs belong to root, writable by root only. (At gvisor
    // runsc and its gofer ARE host root: there only runsc's own confinement of them — mount
    // namespace, seccomp — keeps them from these files; a documented limitation.)
    assert_eq!(view.procs.len(), 2, "{:?}", view.procs);
    for (p, uid, mode) in &view.procs {
        assert_eq!((*uid, mode & 0o022), (0, 0), "{p}: uid {uid} mode {mode:o}");
    }
    // Case-specific: the host's release agents are untouched.
    for (p, before) in release_agents.iter().zip(&agents_before) {
        assert_eq!(
            &std::fs::read_to_string(p).unwrap(),
            before,
            "{} changed",
            p.display()
        );
    }
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("mount");
    run.expect_clean_end();

    // Control: without the filter mount reaches the kernel: a missing target is ENOENT, a
    // cgroup mount is refused for want of CAP_SYS_ADMIN (layered).
    // (`go` is there from the start: the control does not wait for the host.)
    let off = seccomp_off("cgroup control")
        .ws_file("go", b"")
        .python(&body, &["no-marker"]);
    off.expect_exit(0)
        // gVisor checks CAP_SYS_ADMIN before the path: EPERM, still refused
        .expect(
            "mount_cgroup_missing",
            refused(per_level(ENOENT, EPERM, ENOENT)),
        )
        .expect("mount_cgroup_v1", refused(EPERM))
        .expect("mount_cgroup_v2", refused(EPERM));
    expect_no_syscall_violation(&off);
}

// --- /proc/self/exe -----------------------------------------------------------------------------

/// The runc CVE-2019-5736 moves from inside: open the running binary through /proc/self/exe and
/// PID 1's (the agent: the stockade binary) through /proc/1/exe for writing, directly, with
/// O_TRUNC, as O_PATH, and by reopening an O_PATH descriptor through /proc/self/fd.
const EXE: &str = r#"
def wopen(p, flags):
    os.close(os.open(p, flags))
    return "opened"
t("self_exe_wronly", lambda: wopen("/proc/self/exe", os.O_WRONLY))
t("self_exe_rdwr", lambda: wopen("/proc/self/exe", os.O_RDWR))
t("self_exe_trunc", lambda: wopen("/proc/self/exe", os.O_WRONLY | os.O_TRUNC))
def reopen():
    fd = os.open("/proc/self/exe", os.O_PATH)
    return wopen("/proc/self/fd/%d" % fd, os.O_WRONLY)
t("self_exe_reopen", reopen)
t("pid1_exe_wronly", lambda: wopen("/proc/1/exe", os.O_WRONLY))
t("pid1_exe_path", lambda: wopen("/proc/1/exe", os.O_PATH))
t("pid1_exe_readlink", lambda: os.readlink("/proc/1/exe"))
t("python_wronly", lambda: wopen("/usr/bin/python3", os.O_WRONLY))
t("self_exe_rdonly", lambda: wopen("/proc/self/exe", os.O_RDONLY))
done()
"#;

/// The part of [`EXE`] that is harmless as host root: no O_TRUNC, nothing of PID 1's.
const EXE_HOST: &str = r#"
def wopen(p, flags):
    os.close(os.open(p, flags))
    return "opened"
t("self_exe_wronly", lambda: wopen("/proc/self/exe", os.O_WRONLY))
t("self_exe_rdwr", lambda: wopen("/proc/self/exe", os.O_RDWR))
t("self_exe_rdonly", lambda: wopen("/proc/self/exe", os.O_RDONLY))
done()
"#;

#[test]
fn proc_self_exe_and_pid1_exe_cannot_be_overwritten() {
    require_root("escape suite");
    let c = Canaries::plant();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let stockade = std::fs::canonicalize(bin()).unwrap();
    let before = (snapshot(&python), snapshot(&stockade));
    // Above the container level PID 1 runs the static guest binary: it must stay intact too.
    let guest = (level() != Level::Container).then(|| {
        let p = guest_binary();
        let s = snapshot(&p);
        (p, s)
    });
    // O_TRUNC meets the read-only /usr mount first on Linux (EROFS); gVisor checks the file's
    // permission before the mount's read-only flag (EACCES). Refused either way.
    let trunc = err(per_level(EROFS, EACCES, EROFS));
    let run = Sandbox::new("exe").with_canaries(&c).python(EXE, &[]);
    run.expect_exit(0)
        // The binary belongs to host root (unmapped inside), mode 0755: the sandbox user may
        // not write it; O_TRUNC meets the read-only /usr mount first.
        .expect("self_exe_wronly", err(EACCES))
        .expect("self_exe_rdwr", err(EACCES))
        .expect("self_exe_trunc", trunc.clone())
        .expect("self_exe_reopen", err(EACCES))
        .expect("python_wronly", err(EACCES))
        // PID 1 is another user: its /proc entries are closed (ptrace access check).
        .expect("pid1_exe_wronly", err(EACCES))
        .expect("pid1_exe_path", err(EACCES))
        .expect("pid1_exe_readlink", err(EACCES))
        .expect("self_exe_rdonly", ok("opened"));
    assert_unchanged(&python, &before.0);
    assert_unchanged(&stockade, &before.1);
    if let Some((p, s)) = &guest {
        assert_unchanged(p, s);
    }
    c.assert_nothing_got_through(&run);
    // DAC, the pid namespace's ptrace check and a read-only mount refuse, all before Landlock
    // is asked; open is allowed by seccomp: no wall that reports, so the attempt is recorded
    // with its exit.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control 1: host root passes the permission checks; only the kernel's text-busy guard of a
    // running binary stops it (the probe never writes).
    let host = host_python(EXE_HOST, &[]);
    assert_eq!(host["self_exe_wronly"], err(ETXTBSY), "{host}");
    assert_eq!(host["self_exe_rdwr"], err(ETXTBSY), "{host}");
    assert_eq!(host["self_exe_rdonly"], ok("opened"), "{host}");
    // Control 2: the same refusals with seccomp and Landlock both lifted (the layers beneath).
    let off = Sandbox::new("exe control")
        .flags(&[
            "--seccomp",
            "off",
            "--landlock",
            "off",
            "--allow-weaker-isolation",
        ])
        .python(EXE, &[]);
    off.expect_exit(0)
        .expect("self_exe_wronly", err(EACCES))
        .expect("self_exe_trunc", trunc)
        .expect("pid1_exe_wronly", err(EACCES));
    assert_unchanged(&python, &before.0);
    assert_unchanged(&stockade, &before.1);
    if let Some((p, s)) = &guest {
        assert_unchanged(p, s);
    }
}

/// The static guest binary the stronger levels run as PID 1, found as the runtime finds it
/// (crates/runtime/src/backend `guest_binary`): `$STOCKADE_GUEST_BIN`, else the static release
/// build beside the target directory, else `stockade-guest` beside stockade.
fn guest_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STOCKADE_GUEST_BIN") {
        return PathBuf::from(p);
    }
    let dir = Path::new(bin()).parent().unwrap();
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/release/stockade-guest"),
        dir.join("stockade-guest"),
    ];
    let found = candidates.iter().find(|p| p.is_file());
    std::fs::canonicalize(found.expect("no guest binary: the run could not have started")).unwrap()
}

// --- /proc/sys ----------------------------------------------------------------------------------

/// argv: `inside` or `host`, then sysctl names. Opens each for writing, plain and (inside only)
/// with O_TRUNC (a shell's `>`), also through /proc/self/root and (inside) /proc/1/root; the
/// probe never writes, and on the host it only opens without O_TRUNC.
const SYSCTL: &str = r#"
def wopen(p, flags):
    os.close(os.open(p, flags))
    return "opened"
inside = sys.argv[1] == "inside"
for k in sys.argv[2:]:
    t("w_" + k, lambda: wopen("/proc/sys/" + k, os.O_WRONLY))
    if inside:
        t("trunc_" + k, lambda: wopen("/proc/sys/" + k, os.O_WRONLY | os.O_TRUNC))
t("via_self_root", lambda: wopen("/proc/self/root/proc/sys/kernel/core_pattern", os.O_WRONLY))
if inside:
    t("via_pid1_root", lambda: wopen("/proc/1/root/proc/sys/kernel/core_pattern", os.O_WRONLY))
t("core_pattern", lambda: read("/proc/sys/kernel/core_pattern"))
done()
"#;

/// The sysctls of [`core_pattern_and_kernel_sysctls_are_not_writable`] that gVisor's /proc/sys
/// has (runsc 2022-12; its /proc/sys/kernel holds hostname, the SysV IPC limits and
/// yama/ptrace_scope; /proc/sys/vm mmap_min_addr, overcommit_memory, max_map_count).
const GVISOR_SYSCTLS: [&str; 2] = ["kernel/hostname", "vm/overcommit_memory"];

#[test]
fn core_pattern_and_kernel_sysctls_are_not_writable() {
    require_root("escape suite");
    let c = Canaries::plant();
    let keys = [
        "kernel/core_pattern",
        "kernel/modprobe",
        "kernel/panic",
        "kernel/panic_on_oops",
        "kernel/hostname",
        "kernel/domainname",
        "vm/overcommit_memory",
        "fs/suid_dumpable",
    ];
    let values: Vec<Option<String>> = keys.iter().map(|k| sysctl(k)).collect();
    let mut args = vec!["inside"];
    args.extend(keys);
    let run = Sandbox::new("sysctl")
        .with_canaries(&c)
        .python(SYSCTL, &args);
    run.expect_exit(0);
    let gvisor = level() == Level::Gvisor;
    for (k, v) in keys.iter().zip(&values) {
        if gvisor {
            // gVisor's /proc/sys is its own kernel's: of these it has only GVISOR_SYSCTLS,
            // owned by its root (EACCES for uid 1000, with O_TRUNC too: no read-only mount
            // over them there); the others do not exist. None is the host's.
            let want = err(if GVISOR_SYSCTLS.contains(k) {
                EACCES
            } else {
                ENOENT
            });
            run.expect(&format!("w_{k}"), want.clone())
                .expect(&format!("trunc_{k}"), want);
        } else if v.is_some() {
            // The sysctl belongs to host root (unmapped inside): EACCES; with O_TRUNC the
            // read-only /proc/sys mount answers first: EROFS.
            run.expect(&format!("w_{k}"), err(EACCES))
                .expect(&format!("trunc_{k}"), err(EROFS));
        } else {
            // Not in this kernel (kernel.modprobe without module support).
            run.expect(&format!("w_{k}"), err(ENOENT));
        }
    }
    // gVisor has no kernel/core_pattern: ENOENT to read it, and by /proc/self/root too.
    run.expect("via_self_root", err(per_level(EACCES, ENOENT, EACCES)))
        .expect("via_pid1_root", err(EACCES));
    let cp = values[0].clone().expect("the host has kernel.core_pattern");
    run.expect(
        "core_pattern",
        per_level(ok(format!("{cp}\n")), err(ENOENT), ok(format!("{cp}\n"))),
    );
    let after: Vec<Option<String>> = keys.iter().map(|k| sysctl(k)).collect();
    assert_eq!(after, values, "a host sysctl changed");
    c.assert_nothing_got_through(&run);
    // Refused by file permissions and a read-only mount, before Landlock is asked; open is
    // allowed by seccomp: no wall that reports, so the attempt is recorded with its exit.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: host root opens each of them for writing (the probe writes nothing).
    args[0] = "host";
    let host = host_python(SYSCTL, &args);
    for (k, v) in keys.iter().zip(&values) {
        if v.is_some() {
            assert_eq!(host[format!("w_{k}")], ok("opened"), "{k}: {host}");
        }
    }
    assert_eq!(host["via_self_root"], ok("opened"), "{host}");
    assert_eq!(
        keys.iter().map(|k| sysctl(k)).collect::<Vec<_>>(),
        values,
        "a host sysctl changed"
    );
}

// --- foreign syscall ABIs -----------------------------------------------------------------------

/// i386 getpid (20) through `int 0x80`, from a page of shellcode: `mov eax, 20; int 0x80; ret`.
const INT80: &str = r#"
import mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3]))
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print("calling", flush=True)
R["i386_getpid"] = f()
R["pid"] = os.getpid()
done()
"#;

#[test]
fn i386_syscalls_through_int80_kill_the_process() {
    require_root("escape suite");
    let c = Canaries::plant();
    let run = Sandbox::new("int 0x80")
        .with_canaries(&c)
        .python(INT80, &[]);
    if level() == Level::Gvisor {
        // gVisor (ptrace platform, runsc 2022) has no i386 entry: the call comes back as -9
        // (EBADF) without running getpid and without reaching the filter, so no SIGSYS and no
        // event. Still refused: the value is not the pid.
        run.expect_exit(0);
        assert_eq!(run.get("i386_getpid"), json!(-9), "{}", run.result());
        assert_ne!(run.get("i386_getpid"), run.get("pid"));
        c.assert_nothing_got_through(&run);
        run.expect_no_syscall_violations();
        run.expect_clean_end();
        return check_int80_control_gvisor(&c);
    }
    // The filter checks the audit architecture first and kills the whole process (SIGSYS)
    // before the call runs: the probe got as far as the call and no further.
    run.expect_exit(EXIT_SIGSYS);
    assert_eq!(run.stdout.trim(), "calling", "{}", run.stdout);
    c.assert_nothing_got_through(&run);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: without the filter the kernel's i386 entry answers (the same pid as getpid).
    let off = seccomp_off("int 0x80 control").python(INT80, &[]);
    off.expect_exit(0);
    assert_eq!(off.get("i386_getpid"), off.get("pid"));
    expect_no_syscall_violation(&off);

    // The trail records the kill. The record carries i386's number 20 (getpid there); the
    // event must say it was an i386 call, not name x86_64's syscall 20 (writev).
    if !seccomp_violations_recorded() {
        // the microvm guest kernel's audit records are not read: no event (asserted)
        run.expect_no_syscall_violations();
        return;
    }
    let v = run.event("violation", |e| e["kind"] == "syscall");
    assert_ne!(
        v["syscall"], "writev",
        "i386 getpid named as x86_64 writev: {v}"
    );
    let text = format!("{} {}", v["syscall"], v["detail"]);
    assert!(
        text.contains("i386") || text.contains("ia32") || text.contains("40000003"),
        "the violation does not say the call came through the i386 ABI: {v}"
    );
}

/// gVisor's control: without the filter the i386 call gives the same -9 (gVisor's refusal,
/// not the filter's), so the filter is not what stops it there.
fn check_int80_control_gvisor(_c: &Canaries) {
    let off = seccomp_off("int 0x80 control").python(INT80, &[]);
    off.expect_exit(0);
    assert_eq!(off.get("i386_getpid"), json!(-9), "{}", off.result());
    expect_no_syscall_violation(&off);
}

/// x32 calls (the syscall number with bit 30 set): getpid and mount.
const X32: &str = r#"
R["x32_getpid"] = sc(0x40000000 | 39)
R["x32_mount"] = sc(0x40000000 | 165, 0, 0, 0, 0, 0)
done()
"#;

#[test]
fn x32_syscalls_are_denied() {
    require_root("escape suite");
    let c = Canaries::plant();
    let run = Sandbox::new("x32").with_canaries(&c).python(X32, &[]);
    run.expect_exit(0)
        .expect("x32_getpid", refused(EPERM))
        .expect("x32_mount", refused(EPERM));
    c.assert_nothing_got_through(&run);
    // x32 calls carry the x86_64 audit architecture; the event names the raw number (0x40000027)
    // or says x32 — never plain getpid, which would hide the ABI.
    for nr in [0x4000_0000u64 | 39, 0x4000_0000 | 165] {
        if !seccomp_violations_recorded() {
            run.expect_no_syscall_violations();
            break;
        }
        run.event("violation", |e| {
            e["kind"] == "syscall"
                && e["syscall"].as_str().is_some_and(|s| {
                    s.contains(&nr.to_string()) || (s.contains("x32") && s != "getpid")
                })
        });
    }
    run.expect_clean_end();

    // Control: host and unfiltered sandbox agree. A kernel without the x32 ABI says ENOSYS; one
    // with it runs the call.
    let host = host_python(X32, &[]);
    let off = seccomp_off("x32 control").python(X32, &[]);
    off.expect_exit(0);
    if host["x32_getpid"] == refused(ENOSYS) {
        off.expect("x32_getpid", refused(ENOSYS))
            .expect("x32_mount", refused(ENOSYS));
    } else {
        assert!(host_success(&host, "x32_getpid") > 0, "{host}");
        assert!(expect_success(&off, "x32_getpid") > 0);
        off.expect("x32_mount", refused(EPERM));
    }
    expect_no_syscall_violation(&off);
}
