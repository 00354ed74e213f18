//! Filesystem: reading the host's secret file by every path trick, writing outside the
//! workspace, the workspace's .git/hooks, /proc/sys and /sys, /dev.
//!
//! Most refusals here have no audit event to look for, and each case says why: a host path that
//! does not exist inside (ENOENT) is not refused by any wall; a write that fails at a read-only
//! mount (EROFS), a permission check (EACCES), a non-dumpable PID 1 (EACCES) or a missing
//! capability (EPERM from the kernel, not seccomp) is not reported by the kernel's audit records
//! (docs/audit.md, "What is observed": `write_outside_workspace` is defined, not emitted). Those
//! cases check that the attempt is written down with its exit (`expect_exec_recorded`). Seccomp
//! denials (mount, open_tree, name_to_handle_at, open_by_handle_at) are checked by their
//! violation event.

use crate::environment::{high, host_python};
use crate::support::*;

const EEXIST: i64 = libc::EEXIST as i64;
use serde_json::{Value, json};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

const EXDEV: i64 = libc::EXDEV as i64;
const EBUSY: i64 = libc::EBUSY as i64;

/// A temporary directory under /opt: the same filesystem as the canary (see the hard-link case).
fn opt_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/opt")
        .unwrap()
}

fn ws_tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stockade-escape-ws-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// `../` enough times to climb from `dir` to `/`, then `abs` (relative).
fn climb(dir: &Path, abs: &str) -> String {
    let depth = dir.components().count();
    format!("{}{}", "../".repeat(depth + 3), abs.trim_start_matches('/'))
}

// --- .. and absolute paths ----------------------------------------------------------------------

const DOTDOT: &str = r#"
canary, ws = sys.argv[1], os.getcwd()
up = "../" * (ws.count("/") + 3)
t("dotdot", lambda: read(ws + "/" + up + canary.lstrip("/")))
t("abs", lambda: read(canary))
done()
"#;

#[test]
fn the_secret_file_cannot_be_read_by_dotdot_or_absolute_path() {
    require_root("escape suite");
    let c = Canaries::plant();
    let run = Sandbox::new("dotdot")
        .with_canaries(&c)
        .python(DOTDOT, &[c.file_str()]);
    run.expect_exit(0)
        .expect("dotdot", err(ENOENT))
        .expect("abs", err(ENOENT));
    c.assert_nothing_got_through(&run);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: the same probe with the secret's directory bound read-only reads it.
    let dir = c.file.parent().unwrap().to_str().unwrap().to_string();
    let control = Sandbox::new("dotdot control")
        .flags(&["--mount", &dir])
        .python(DOTDOT, &[c.file_str()]);
    control.expect("abs", ok(c.file_secret.as_str()));
}

// --- symlinks -----------------------------------------------------------------------------------

/// Reads links the host planted in the workspace before the run, then makes the same kinds of
/// link itself (in the workspace and in /tmp) and reads those.
const SYMLINKS: &str = r#"
canary, ws = sys.argv[1], os.getcwd()
up = "../" * (ws.count("/") + 3)
base = os.path.basename(canary)
for n in ["abs-link", "rel-link", "dir-link/" + base, "procself-link", "proc1-link"]:
    t("planted:" + n, lambda: read(n))
os.symlink(canary, "in-abs")
os.symlink(up + canary.lstrip("/"), "in-rel")
os.symlink(os.path.dirname(canary), "in-dir")
os.symlink(canary, "/tmp/in-tmp")
for n in ["in-abs", "in-rel", "in-dir/" + base, "/tmp/in-tmp"]:
    t("made:" + n, lambda: read(n))
t("readlink", lambda: os.readlink("in-abs"))
done()
"#;

/// Links the host plants: absolute, relative (climbing out with ..), to the secret's directory,
/// through /proc/self/root, and through /proc/1/root (inside, the agent's root).
fn plant_links(ws: &Path, c: &Canaries) {
    let ln = |target: &str, name: &str| std::os::unix::fs::symlink(target, ws.join(name)).unwrap();
    ln(c.file_str(), "abs-link");
    ln(&climb(ws, c.file_str()), "rel-link");
    ln(c.file.parent().unwrap().to_str().unwrap(), "dir-link");
    ln(&format!("/proc/self/root{}", c.file_str()), "procself-link");
    ln(&format!("/proc/1/root{}", c.file_str()), "proc1-link");
}

#[test]
fn symlinks_to_the_secret_resolve_inside_the_sandbox_root() {
    require_root("escape suite");
    let c = Canaries::plant();
    let ws = ws_tmp();
    plant_links(ws.path(), &c);
    let run = Sandbox::new("symlinks")
        .with_canaries(&c)
        .workspace(ws)
        .python(SYMLINKS, &[c.file_str()]);
    let base = c.file.file_name().unwrap().to_str().unwrap();
    run.expect_exit(0)
        .expect("planted:abs-link", err(ENOENT))
        .expect("planted:rel-link", err(ENOENT))
        .expect(&format!("planted:dir-link/{base}"), err(ENOENT))
        .expect("planted:procself-link", err(ENOENT))
        // /proc/1 is the agent, non-dumpable: its root link is refused outright.
        .expect("planted:proc1-link", err(EACCES))
        .expect("made:in-abs", err(ENOENT))
        .expect("made:in-rel", err(ENOENT))
        .expect(&format!("made:in-dir/{base}"), err(ENOENT))
        .expect("made:/tmp/in-tmp", err(ENOENT))
        // The link itself is intact: it is only resolved against the sandbox's root.
        .expect("readlink", ok(c.file_str()));
    c.assert_nothing_got_through(&run);
    // ENOENT: nothing was refused, the target does not exist inside; EACCES on /proc/1 comes
    // from PID 1 being non-dumpable, which the kernel does not audit. The attempt is recorded.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control 1: on the host, every link — those planted and those the sandbox made, left in the
    // workspace — leads to the secret. Only the sandbox's root stopped them. (proc1-link is left
    // out: the host's PID 1 belongs to the machine running the tests, not to this suite.)
    let host = host_python(
        r#"
for n in sys.argv[1:]:
    t(n, lambda: read(n))
done()
"#,
        &[
            "abs-link",
            "rel-link",
            &format!("dir-link/{base}"),
            "procself-link",
            "in-abs",
            "in-rel",
            &format!("in-dir/{base}"),
        ],
        Some(run.ws.path()),
        &[],
    );
    for (k, v) in host.as_object().unwrap() {
        assert_eq!(v, &ok(c.file_secret.as_str()), "host control {k}: {host}");
    }
    assert_eq!(host.as_object().unwrap().len(), 7, "{host}");

    // Control 2: with the secret's directory bound inside, the absolute links reach it.
    let ws2 = ws_tmp();
    plant_links(ws2.path(), &c);
    let dir = c.file.parent().unwrap().to_str().unwrap().to_string();
    let control = Sandbox::new("symlinks control")
        .flags(&["--mount", &dir])
        .workspace(ws2)
        .python(SYMLINKS, &[c.file_str()]);
    control
        .expect("planted:abs-link", ok(c.file_secret.as_str()))
        .expect(
            &format!("planted:dir-link/{base}"),
            ok(c.file_secret.as_str()),
        )
        .expect("made:in-abs", ok(c.file_secret.as_str()))
        .expect("made:/tmp/in-tmp", ok(c.file_secret.as_str()));
}

// --- /proc/<pid>/root and /proc/<pid>/cwd -------------------------------------------------------

/// For every pid visible (or those in argv[2]), its root and cwd links: where they point, the
/// secret through them, and the same for each of its threads.
const PROC_LINKS: &str = r#"
canary, which = sys.argv[1], sys.argv[2]
up = "../" * (os.getcwd().count("/") + 3)
pids = sorted((d for d in os.listdir("/proc") if d.isdigit()), key=int)
R["pids"] = [int(p) for p in pids]
R["self"] = os.getpid()
targets = pids + ["self", "thread-self"] if which == "all" else which.split(",")
def probe(key, base):
    t(key + ":root", lambda: os.readlink(base + "/root"))
    t(key + ":cwd", lambda: os.readlink(base + "/cwd"))
    t(key + ":root/canary", lambda: read(base + "/root" + canary))
    t(key + ":cwd/canary", lambda: read(base + "/cwd/" + up + canary.lstrip("/")))
    t(key + ":root/ls", lambda: len(os.listdir(base + "/root")) > 0)
for p in targets:
    probe(p, "/proc/" + p)
    if p != "thread-self":
        tasks = []
        t(p + ":tasks", lambda: tasks.extend(os.listdir("/proc/%s/task" % p)))
        for tid in tasks:
            probe(p + "/task/" + tid, "/proc/%s/task/%s" % (p, tid))
done()
"#;

#[test]
fn proc_root_and_cwd_links_of_every_visible_pid_lead_nowhere() {
    require_root("escape suite");
    let c = Canaries::plant();
    let run = Sandbox::new("proc links")
        .with_canaries(&c)
        .python(PROC_LINKS, &[c.file_str(), "all"]);
    run.expect_exit(0);
    // Only stockade's own processes and the probe exist in the sandbox's PID namespace:
    // container, the agent (1) and the probe (2); gvisor, the shim (1), the agent (2) and the
    // probe (see support.rs `stockade_pids`).
    let me = run.get("self").as_u64().unwrap();
    let mut visible: Vec<u64> = stockade_pids().iter().map(|(p, _)| *p as u64).collect();
    visible.push(me);
    assert_eq!(run.get("pids"), json!(visible), "{}", run.result());
    let ws = run.ws.path().to_str().unwrap();
    // Stockade's processes are non-dumpable: every link of each of them and of each of its
    // threads is refused (gvisor: gVisor applies the ptrace access check to root and cwd).
    let keys: Vec<String> = run.result().as_object().unwrap().keys().cloned().collect();
    for (pid, _) in stockade_pids() {
        let mut of_pid = vec![pid.to_string()];
        of_pid.extend(
            keys.iter()
                .filter_map(|k| k.strip_suffix(":root"))
                .filter(|k| k.starts_with(&format!("{pid}/task/")))
                .map(str::to_string),
        );
        assert!(
            of_pid.contains(&format!("{pid}/task/{pid}")),
            "pid {pid}'s threads were not listed: {}",
            run.result()
        );
        for key in &of_pid {
            for link in ["root", "cwd", "root/canary", "cwd/canary", "root/ls"] {
                run.expect(&format!("{key}:{link}"), err(EACCES));
            }
        }
    }
    // The probe's own links point at the sandbox's root and the workspace; the secret is not
    // under either.
    let own = [
        me.to_string(),
        "self".to_string(),
        "thread-self".to_string(),
        format!("{me}/task/{me}"),
        format!("self/task/{me}"),
    ];
    for key in &own {
        run.expect(&format!("{key}:root"), ok("/"))
            .expect(&format!("{key}:cwd"), ok(ws))
            .expect(&format!("{key}:root/canary"), err(ENOENT))
            .expect(&format!("{key}:cwd/canary"), err(ENOENT))
            .expect(&format!("{key}:root/ls"), ok(true));
    }
    c.assert_nothing_got_through(&run);
    // ENOENT is no refusal; EACCES from non-dumpability is not audited by the kernel.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control 1: on the host, the root and cwd links of the probe itself and of its parent (this
    // test process) lead to the secret.
    let me = std::process::id().to_string();
    let host = host_python(
        PROC_LINKS,
        &[c.file_str(), &format!("self,{me}")],
        None,
        &[],
    );
    for key in ["self", me.as_str()] {
        assert_eq!(
            host[format!("{key}:root/canary")],
            ok(c.file_secret.as_str()),
            "{host}"
        );
        assert_eq!(
            host[format!("{key}:cwd/canary")],
            ok(c.file_secret.as_str()),
            "{host}"
        );
    }

    // Control 2: with the secret's directory bound inside, the same probe reads it through the
    // probe's own /proc/<pid>/root.
    let dir = c.file.parent().unwrap().to_str().unwrap().to_string();
    let control = Sandbox::new("proc links control")
        .flags(&["--mount", &dir])
        .python(PROC_LINKS, &[c.file_str(), "all"]);
    let me = control.get("self");
    control
        .expect(&format!("{me}:root/canary"), ok(c.file_secret.as_str()))
        .expect("self:root/canary", ok(c.file_secret.as_str()))
        .expect("thread-self:root/canary", ok(c.file_secret.as_str()));
}

// --- hard links ---------------------------------------------------------------------------------

/// Hard links toward the secret and toward other host files visible inside.
const HARDLINKS: &str = r#"
canary = sys.argv[1]
exe = os.path.realpath(sys.executable)
t("link:canary", lambda: os.link(canary, "l-canary"))
t("link:usr", lambda: os.link(exe, "l-usr"))
t("link:etc", lambda: os.link("/etc/hostname", "l-etc"))
fd = os.open(exe, os.O_RDONLY)
t("link:procfd", lambda: os.link("/proc/self/fd/%d" % fd, "l-procfd", follow_symlinks=True))
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
def flink():
    ctypes.set_errno(0)
    if libc.linkat(fd, b"", AT_FDCWD, b"l-flink", AT_EMPTY_PATH) < 0:
        raise OSError(ctypes.get_errno(), "linkat")
t("link:empty_path", flink)
write("own.txt", "own")
t("link:own", lambda: os.link("own.txt", "l-own"))
# Control for AT_EMPTY_PATH: the same call on a file of the workspace, into the workspace.
def flink_own():
    ofd = os.open("own.txt", os.O_RDONLY)
    ctypes.set_errno(0)
    r = libc.linkat(ofd, b"", AT_FDCWD, b"l-flink-own", AT_EMPTY_PATH)
    os.close(ofd)
    if r < 0:
        raise OSError(ctypes.get_errno(), "linkat")
t("link:empty_path:own", flink_own)
t("planted", lambda: [os.stat("planted").st_nlink, read("planted")])
done()
"#;

/// The workspace and the secret are put on the same filesystem (both under /opt), so a hard link
/// between them is possible in principle: the host proves it (control). Inside, the secret's path
/// does not exist (ENOENT), and every host file the sandbox can see is on another mount, which
/// the kernel refuses to link across (EXDEV) however the link is asked for (path, /proc/self/fd
/// with AT_SYMLINK_FOLLOW, AT_EMPTY_PATH). A hard link the HOST plants in the workspace is the
/// same inode as its other name: the sandbox sees it as a workspace file (nlink 2), and as root
/// (idmapped workspace) may also write it, which changes the file under its other name — sharing
/// it was the host's decision; the sandbox cannot make such a link itself.
#[test]
fn hard_links_cannot_reach_the_secret() {
    require_root("escape suite");
    let c = Canaries::plant();
    let ws = opt_dir("stockade-escape-ws-");
    assert_eq!(
        std::fs::metadata(ws.path()).unwrap().dev(),
        std::fs::metadata(&c.file).unwrap().dev(),
        "the workspace and the secret must share a filesystem for this case to mean anything"
    );
    let decoy = c.file.parent().unwrap().join("decoy.txt");
    let decoy_text = format!("DECOY-{}", unique("d"));
    std::fs::write(&decoy, &decoy_text).unwrap();
    std::fs::hard_link(&decoy, ws.path().join("planted")).unwrap();

    let run = Sandbox::new("hard links")
        .with_canaries(&c)
        .workspace(ws)
        .python(HARDLINKS, &[c.file_str()]);
    run.expect_exit(0)
        .expect("link:canary", err(ENOENT))
        .expect("link:usr", err(EXDEV))
        .expect("link:etc", err(EXDEV))
        .expect("link:procfd", err(EXDEV))
        // gvisor: gVisor refuses linkat(AT_EMPTY_PATH) without CAP_DAC_READ_SEARCH, with
        // ENOENT before looking at the target (as Linux did before 6.10): the control below, a
        // workspace file linked into the workspace the same way, gets the same ENOENT there.
        .expect("link:empty_path", err(per_level(EXDEV, ENOENT, EXDEV)))
        .expect(
            "link:empty_path:own",
            per_level(ok(Value::Null), err(ENOENT), ok(Value::Null)),
        )
        // Control inside: hard links within the workspace work.
        .expect("link:own", ok(Value::Null))
        .expect("planted", ok(json!([2, decoy_text])));
    c.assert_nothing_got_through(&run);
    assert_eq!(
        std::fs::metadata(&c.file).unwrap().nlink(),
        1,
        "a new link to the secret exists somewhere"
    );
    for n in ["l-canary", "l-usr", "l-etc", "l-procfd", "l-flink"] {
        assert!(
            !run.ws.path().join(n).exists(),
            "{n} appeared in the workspace"
        );
    }
    // ENOENT/EXDEV come from the path lookup and the kernel's mount check: no wall to audit.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: on the host, the same link from the secret into this workspace succeeds.
    let host = host_python(
        r#"
t("link", lambda: os.link(sys.argv[1], "host-link"))
t("read", lambda: read("host-link"))
os.unlink("host-link")
done()
"#,
        &[c.file_str()],
        Some(run.ws.path()),
        &[],
    );
    assert_eq!(host["link"], ok(Value::Null), "{host}");
    assert_eq!(host["read"], ok(c.file_secret.as_str()), "{host}");
}

// --- a leaked descriptor of the secret's directory ----------------------------------------------

/// fds 10, 11, 12: the secret's directory (O_PATH), the directory (O_RDONLY), the secret itself.
const LEAKED_FD: &str = r#"
name, attack = sys.argv[1], sys.argv[2] == "attack"
def read_at(dfd):
    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)
for fd in (10, 11, 12):
    t("fstat:%d" % fd, lambda: os.fstat(fd).st_ino > 0)
    t("proc:%d" % fd, lambda: os.readlink("/proc/self/fd/%d" % fd) != "")
t("openat:10", lambda: read_at(10))
t("openat:11", lambda: read_at(11))
t("via_proc:10", lambda: read("/proc/self/fd/10/" + name))
t("read:12", lambda: os.read(12, 4096).decode())
# What is open: the listing's own descriptor (3) besides stdio, then nothing at all.
t("fds", lambda: sorted(int(x) for x in os.listdir("/proc/self/fd")))
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
if attack:
    # Stockade's own pids (argv[3]): can their descriptors be listed, or used to reach the
    # secret (read through each, and through each as a directory)?
    for p in sys.argv[3].split(","):
        t("pid%s_fds" % p, lambda: sorted(os.listdir("/proc/%s/fd" % p), key=int))
        def through():
            out = {}
            for fd in os.listdir("/proc/%s/fd" % p):
                q, r = "/proc/%s/fd/%s" % (p, fd), []
                for path in (q, q + "/" + name):
                    try:
                        x = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                    except OSError as e:
                        r.append(e.errno)
                        continue
                    try:
                        r.append(os.read(x, 4096).decode(errors="replace"))
                    except OSError as e:
                        r.append("opened, then errno %d" % e.errno)
                    finally:
                        os.close(x)
                out[fd] = r
            return out
        t("pid%s_through" % p, through)
    # The bind itself: mount --bind of the leaked directory, and open_tree of it.
    nr = {"x86_64": (165, 428), "aarch64": (40, 428)}[os.uname().machine]
    os.mkdir("bound")
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr[0]), b"/proc/self/fd/11", b"bound", None,
                     ctypes.c_long(4096), None)
    R["mount"] = [r, ctypes.get_errno() if r == -1 else 0]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr[1]), ctypes.c_long(-100), b"/proc/self/fd/11",
                     ctypes.c_long(1))
    R["open_tree"] = [r, ctypes.get_errno() if r == -1 else 0]
done()
"#;

fn open_fd(p: &Path, flags: i32) -> OwnedFd {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the call; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    high(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[test]
fn a_leaked_descriptor_of_the_secret_is_closed_before_the_command_runs() {
    require_root("escape suite");
    let c = Canaries::plant();
    let dir = c.file.parent().unwrap();
    let fds = || {
        [
            open_fd(dir, libc::O_PATH | libc::O_DIRECTORY),
            open_fd(dir, libc::O_RDONLY | libc::O_DIRECTORY),
            open_fd(&c.file, libc::O_RDONLY),
        ]
    };
    let name = c.file.file_name().unwrap().to_str().unwrap();
    let [a, b, f] = fds();
    let own: Vec<String> = stockade_pids().iter().map(|(p, _)| p.to_string()).collect();
    let own = own.join(",");
    let run = Sandbox::new("leaked fd")
        .with_canaries(&c)
        .leak_fd(a)
        .leak_fd(b)
        .leak_fd(f)
        .python(LEAKED_FD, &[name, "attack", &own]);
    run.expect_exit(0);
    for fd in [10, 11, 12] {
        run.expect(&format!("fstat:{fd}"), err(EBADF))
            .expect(&format!("proc:{fd}"), err(ENOENT));
    }
    run.expect("openat:10", err(EBADF))
        .expect("openat:11", err(EBADF))
        .expect("via_proc:10", err(ENOENT))
        .expect("read:12", err(EBADF))
        .expect("fds", ok(json!([0, 1, 2, 3])))
        .expect("open_fds", ok(json!([])))
        .expect("mount", json!([-1, EPERM]))
        .expect("open_tree", json!([-1, EPERM]));
    for (pid, _) in stockade_pids() {
        if level() == Level::Gvisor {
            // LIMITATION (gvisor), not a wall: gVisor's /proc lists the descriptors of the shim
            // and the agent (see environment.rs, the agent's case). None of them is a leaked
            // one or leads anywhere: each open, of the descriptor and of the secret's name
            // under it, is refused, or (the shim's stderr, the host's backend log held
            // write-only) opens and reads nothing (EBADF).
            assert_eq!(
                run.get(&format!("pid{pid}_fds"))[0],
                "ok",
                "{}",
                run.result()
            );
            let through = run.get(&format!("pid{pid}_through"));
            let through = through[1].as_object().unwrap();
            assert!(!through.is_empty(), "pid {pid}: {}", run.result());
            for (fd, r) in through {
                for x in r.as_array().unwrap() {
                    assert!(
                        x.is_i64() || x == "opened, then errno 9",
                        "pid {pid} fd {fd}: {r} ({})",
                        run.result()
                    );
                }
            }
        } else {
            // Stockade's PID 1 is non-dumpable: its descriptors cannot be listed.
            run.expect(&format!("pid{pid}_fds"), err(EACCES))
                .expect(&format!("pid{pid}_through"), err(EACCES));
        }
    }
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("mount");
    run.expect_syscall_violation("open_tree");
    run.expect_clean_end();

    // Control: the same probe on the host, given the same descriptors, reads the secret through
    // each of them (the bind attempts are not made on the host).
    let [a, b, f] = fds();
    let host = host_python(
        LEAKED_FD,
        &[name, "no-attack"],
        None,
        &[a.as_raw_fd(), b.as_raw_fd(), f.as_raw_fd()],
    );
    for fd in [10, 11, 12] {
        assert_eq!(host[format!("fstat:{fd}")], ok(true), "{host}");
    }
    assert_eq!(host["openat:10"], ok(c.file_secret.as_str()), "{host}");
    assert_eq!(host["openat:11"], ok(c.file_secret.as_str()), "{host}");
    assert_eq!(host["via_proc:10"], ok(c.file_secret.as_str()), "{host}");
    assert_eq!(host["read:12"], ok(c.file_secret.as_str()), "{host}");
    let open = host["open_fds"][1].as_array().unwrap().clone();
    for fd in [10, 11, 12] {
        assert!(open.contains(&json!(fd)), "host control: fd {fd}: {host}");
    }
}

// --- open_by_handle_at ("shocker") --------------------------------------------------------------

/// argv: the handle type and bytes (hex) the host computed for the secret. Inside: a handle for a
/// workspace file, then the forged handle opened against the workspace's mount. On the host
/// (argv[3] == "host"): the handle opened against the secret's own directory.
const HANDLES: &str = r#"
htype, hbytes, where = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
nr = {"x86_64": (303, 304), "aarch64": (264, 265)}[os.uname().machine]
def n2h(path):
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("Ii", buf, 0, 128, 0)
    mid = ctypes.c_int()
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr[0]), ctypes.c_long(-100), path.encode(), buf,
                     ctypes.byref(mid), ctypes.c_long(0))
    return [r, ctypes.get_errno() if r == -1 else 0]
def o2h(mount_dir):
    buf = ctypes.create_string_buffer(struct.pack("Ii", len(hbytes), htype) + hbytes)
    mfd = os.open(mount_dir, os.O_RDONLY | os.O_DIRECTORY)
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr[1]), ctypes.c_long(mfd), buf, ctypes.c_long(os.O_RDONLY))
    res = [r, ctypes.get_errno() if r == -1 else 0]
    if r >= 0:
        R["read"] = os.read(r, 4096).decode()
    return res
if where == "host":
    R["open_by_handle_at"] = o2h(sys.argv[4])
else:
    write("f", "x")
    R["name_to_handle_at"] = n2h("f")
    R["open_by_handle_at"] = o2h(os.getcwd())
done()
"#;

/// The secret's file handle, as the host's name_to_handle_at gives it: (type, bytes as hex).
fn host_handle(p: &Path) -> (i32, String) {
    let v = host_python(
        r#"
nr = {"x86_64": 303, "aarch64": 264}[os.uname().machine]
buf = ctypes.create_string_buffer(8 + 128)
struct.pack_into("Ii", buf, 0, 128, 0)
mid = ctypes.c_int()
r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(-100), sys.argv[1].encode(), buf,
                 ctypes.byref(mid), ctypes.c_long(0))
n, ty = struct.unpack_from("Ii", buf, 0)
R["handle"] = [r, ty, buf.raw[8:8 + n].hex()]
done()
"#,
        &[p.to_str().unwrap()],
        None,
        &[],
    );
    let h = &v["handle"];
    assert_eq!(h[0], json!(0), "host name_to_handle_at: {v}");
    (
        h[1].as_i64().unwrap() as i32,
        h[2].as_str().unwrap().to_string(),
    )
}

/// Both handle syscalls are denied by seccomp (EPERM, each with its violation event). With the
/// filter off, name_to_handle_at works and open_by_handle_at still fails with EPERM — the
/// kernel's own check for CAP_DAC_READ_SEARCH in the initial user namespace, not audited — so
/// seccomp is the wall the events come from and the capability is the second.
#[test]
fn open_by_handle_at_is_refused_by_seccomp_and_then_by_the_capability_check() {
    require_root("escape suite");
    let c = Canaries::plant();
    let (ty, hex) = host_handle(&c.file);
    let ty_s = ty.to_string();

    // Control first: the forged handle reads the secret on the host (root, no walls).
    let dir = c.file.parent().unwrap().to_str().unwrap();
    let host = host_python(HANDLES, &[&ty_s, &hex, "host", dir], None, &[]);
    assert_eq!(host["read"], json!(c.file_secret), "{host}");

    let run = Sandbox::new("open_by_handle_at")
        .with_canaries(&c)
        .python(HANDLES, &[&ty_s, &hex, "sandbox"]);
    run.expect_exit(0)
        .expect("name_to_handle_at", json!([-1, EPERM]))
        .expect("open_by_handle_at", json!([-1, EPERM]));
    c.assert_nothing_got_through(&run);
    run.expect_syscall_violation("name_to_handle_at");
    run.expect_syscall_violation("open_by_handle_at");
    run.expect_clean_end();

    // Control: seccomp lifted. name_to_handle_at now works (so the probe's call is right);
    // open_by_handle_at is still EPERM, from the capability check, and nothing is audited.
    // gvisor: gVisor 2022 implements neither call (EOPNOTSUPP for both, for a workspace file
    // too), so the filter's EPERM above is the only refusal there and there is no second wall
    // to show — nor any file handle to forge.
    let off = Sandbox::new("open_by_handle_at seccomp off")
        .with_canaries(&c)
        .flags(&["--seccomp", "off", "--allow-weaker-isolation"])
        .python(HANDLES, &[&ty_s, &hex, "sandbox"]);
    off.expect_exit(0)
        .expect(
            "name_to_handle_at",
            per_level(json!([0, 0]), json!([-1, EOPNOTSUPP]), json!([0, 0])),
        )
        .expect(
            "open_by_handle_at",
            json!([-1, per_level(EPERM, EOPNOTSUPP, EPERM)]),
        );
    c.assert_nothing_got_through(&off);
    assert!(
        off.of_type("violation").is_empty(),
        "with seccomp off no violation is expected: {:?}",
        off.of_type("violation")
    );
}

// --- writing outside the workspace --------------------------------------------------------------

/// Writes to each path of argv (after `--ops`), plus other mutations of system files.
const WRITES: &str = r#"
n = sys.argv[1]
for p in sys.argv[2:]:
    t("w:" + p, lambda: write(p, "written"))
exe = os.path.realpath(sys.executable)
t("mkdir:/usr", lambda: os.mkdir("/usr/" + n))
t("unlink:/etc/hostname", lambda: os.unlink("/etc/hostname"))
t("rename:/etc/hosts", lambda: os.rename("/etc/hosts", "/etc/" + n))
t("chmod:exe", lambda: os.chmod(exe, 0o777))
t("truncate:/etc/passwd", lambda: os.truncate("/etc/passwd", 0))
t("utime:/etc/passwd", lambda: os.utime("/etc/passwd", (0, 0)))
t("symlink:/", lambda: os.symlink("/tmp", "/" + n + "-link"))
# Whether each directory written to above is on a read-only mount: the options of the mount it
# is on (the topmost of the longest mount point above it) in /proc/self/mounts. (Not statvfs:
# gVisor's does not report ST_RDONLY.)
mounts = [l.split() for l in read("/proc/self/mounts").splitlines()]
def mount_ro(d):
    d, best = os.path.realpath(d), None
    for m in mounts:
        if d == m[1] or d.startswith(m[1].rstrip("/") + "/"):
            if best is None or len(m[1]) >= len(best[1]):
                best = m
    return "ro" in best[3].split(",")
for d in ["/", "/usr", "/usr/bin", "/etc", "/var", "/run", "/home", os.path.dirname(exe)]:
    t("ro:" + d, lambda: mount_ro(d))
done()
"#;

#[test]
fn writes_outside_the_workspace_fail_and_leave_the_host_untouched() {
    require_root("escape suite");
    let c = Canaries::plant();
    let n = unique("w");
    let refused: Vec<String> = [
        "/",
        "/usr/",
        "/usr/bin/",
        "/etc/",
        "/var/",
        "/run/",
        "/home/",
    ]
    .iter()
    .map(|d| format!("{d}{n}"))
    .chain(["/etc/passwd".to_string(), "/etc/hosts".to_string()])
    .collect();
    // The sandbox's own: /tmp, HOME and /dev/shm are private tmpfs, not the host's.
    let own: Vec<String> = ["/tmp/", "/home/sandbox/", "/dev/shm/"]
        .iter()
        .map(|d| format!("{d}{n}"))
        .collect();
    let missing = format!("/opt/{n}"); // /opt does not exist inside
    let bound = opt_dir("stockade-escape-rw-");
    let bound_target = bound.path().join(&n);
    let mut args: Vec<&str> = vec![&n];
    args.extend(refused.iter().map(String::as_str));
    args.extend(own.iter().map(String::as_str));
    args.push(&missing);
    let etc_before: Vec<Vec<u8>> = ["/etc/passwd", "/etc/hosts", "/etc/hostname"]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    let check = |run: &Run| {
        run.expect_exit(0);
        // gvisor: gVisor checks the caller's permission before the read-only mount for writes,
        // unlink (EACCES: root's files and directories), chmod and utime (EPERM: not the
        // owner); mkdir, rename and symlink meet the mount first (EROFS). That the mount is
        // read-only at every level is checked directly below (/proc/self/mounts), so the answer that
        // comes first is not the only wall.
        for p in &refused {
            run.expect(&format!("w:{p}"), err(per_level(EROFS, EACCES, EROFS)));
        }
        for p in &own {
            run.expect(&format!("w:{p}"), ok(7));
        }
        run.expect(&format!("w:{missing}"), err(ENOENT))
            .expect("mkdir:/usr", err(EROFS))
            .expect("unlink:/etc/hostname", err(per_level(EROFS, EACCES, EROFS)))
            .expect("rename:/etc/hosts", err(EROFS))
            .expect("chmod:exe", err(per_level(EROFS, EPERM, EROFS)))
            // truncate checks write permission before the mount: /etc/passwd is root's.
            // microvm: the guest's kernel (Debian 6.1) checks the read-only mount first in
            // vfs_truncate (EROFS); the host's newer kernel, and gVisor, the permission.
            .expect(
                "truncate:/etc/passwd",
                err(per_level(EACCES, EACCES, EROFS)),
            )
            .expect("utime:/etc/passwd", err(per_level(EROFS, EPERM, EROFS)))
            .expect("symlink:/", err(EROFS));
        for d in ["/", "/usr", "/usr/bin", "/etc", "/var", "/run", "/home"] {
            run.expect(&format!("ro:{d}"), ok(true));
        }
        // ...and the python executable's own directory (chmod above).
        for (k, v) in run.result().as_object().unwrap() {
            if k.starts_with("ro:") {
                assert_eq!(v, &ok(true), "{}: {k} is not a read-only mount", run.label);
            }
        }
        c.assert_nothing_got_through(run);
        for p in refused.iter().chain(&own).chain([&missing]) {
            if p.starts_with("/etc/passwd") || p.starts_with("/etc/hosts") {
                continue;
            }
            assert!(
                !Path::new(p).exists(),
                "{}: {p} appeared on the host",
                run.label
            );
        }
        for (p, before) in ["/etc/passwd", "/etc/hosts", "/etc/hostname"]
            .iter()
            .zip(&etc_before)
        {
            assert_eq!(
                &std::fs::read(p).unwrap(),
                before,
                "{}: host {p} changed",
                run.label
            );
        }
        // EROFS at a read-only mount is not reported by the kernel (docs/audit.md:
        // write_outside_workspace is defined, not emitted); the attempt is recorded.
        run.expect_exec_recorded();
        run.expect_clean_end();
    };
    let run = Sandbox::new("writes outside")
        .with_canaries(&c)
        .python(WRITES, &args);
    check(&run);

    // The read-only mounts are the wall, not Landlock: with Landlock off every answer is the same.
    let no_ll = Sandbox::new("writes outside, landlock off")
        .with_canaries(&c)
        .flags(&["--landlock", "off", "--allow-weaker-isolation"])
        .python(WRITES, &args);
    check(&no_ll);

    // Control: a host directory bound read-write takes the same write, and it lands on the host.
    let spec = format!("{}:rw", bound.path().display());
    let target = bound_target.to_str().unwrap();
    let control = Sandbox::new("writes outside control")
        .flags(&["--mount", &spec])
        .python(WRITES, &[&n, target]);
    control.expect(&format!("w:{target}"), ok(7));
    assert_eq!(std::fs::read_to_string(&bound_target).unwrap(), "written");
}

// --- .git/hooks and .git/config -----------------------------------------------------------------

const GIT_CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n";
const HOOK_SAMPLE: &str = "#!/bin/sh\nexit 0\n";

fn git_workspace() -> tempfile::TempDir {
    let ws = ws_tmp();
    let g = ws.path().join(".git");
    std::fs::create_dir_all(g.join("hooks")).unwrap();
    std::fs::create_dir_all(g.join("refs/heads")).unwrap();
    std::fs::create_dir_all(g.join("objects")).unwrap();
    std::fs::write(g.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(g.join("config"), GIT_CONFIG).unwrap();
    std::fs::write(g.join("description"), "unnamed\n").unwrap();
    std::fs::write(g.join("hooks/pre-commit.sample"), HOOK_SAMPLE).unwrap();
    ws
}

const GIT_WRITES: &str = r#"
hook = '#!/bin/sh\necho planted\n'
t("config:write", lambda: write(".git/config", "[core]\n\tfsmonitor = planted\n"))
t("config:append", lambda: open(".git/config", "a").write("[core]\n\tfsmonitor = planted\n"))
t("config:unlink", lambda: os.unlink(".git/config"))
t("config:rename", lambda: os.rename(".git/config", ".git/config.old"))
t("hooks:create", lambda: write(".git/hooks/pre-commit", hook))
t("hooks:chmod", lambda: os.chmod(".git/hooks/pre-commit.sample", 0o755))
t("hooks:rename", lambda: os.rename(".git/hooks", ".git/hooks.old"))
t("hooks:rmdir", lambda: os.rmdir(".git/hooks"))
# The rest of .git stays writable: git works inside.
t("git:description", lambda: write(".git/description", "changed\n"))
done()
"#;

/// The listing of `dir` with each file's contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn git_hooks_and_config_are_read_only_inside() {
    require_root("escape suite");
    let c = Canaries::plant();
    let run = Sandbox::new("git protect")
        .with_canaries(&c)
        .workspace(git_workspace())
        .python(GIT_WRITES, &[]);
    run.expect_exit(0)
        .expect("config:write", err(EROFS))
        .expect("config:append", err(EROFS))
        // .git/config and .git/hooks are mount points: they cannot be removed or moved away.
        .expect("config:unlink", err(EBUSY))
        .expect("config:rename", err(EBUSY))
        .expect("hooks:create", err(EROFS))
        .expect("hooks:chmod", err(EROFS))
        .expect("hooks:rename", err(EBUSY))
        .expect("hooks:rmdir", err(EBUSY))
        .expect("git:description", ok(8));
    c.assert_nothing_got_through(&run);
    let g = run.ws.path().join(".git");
    assert_eq!(
        std::fs::read_to_string(g.join("config")).unwrap(),
        GIT_CONFIG
    );
    assert_eq!(
        snapshot(&g.join("hooks")),
        vec![(
            "pre-commit.sample".to_string(),
            HOOK_SAMPLE.as_bytes().to_vec()
        )]
    );
    // EROFS/EBUSY come from the mounts, which the kernel does not audit.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: with --no-protect-git the same writes go through to the host.
    let control = Sandbox::new("git protect control")
        .flag("--no-protect-git")
        .workspace(git_workspace())
        .python(GIT_WRITES, &[]);
    control
        .expect("config:write", ok("[core]\n\tfsmonitor = planted\n".len()))
        .expect("config:unlink", ok(Value::Null))
        .expect("hooks:create", ok("#!/bin/sh\necho planted\n".len()))
        .expect("hooks:chmod", ok(Value::Null))
        .expect("hooks:rename", ok(Value::Null));
    let hook = control.ws.path().join(".git/hooks.old/pre-commit");
    assert_eq!(
        std::fs::read_to_string(hook).unwrap(),
        "#!/bin/sh\necho planted\n",
        "control: the planted hook did not land on the host"
    );
}

/// After a run: the host's .git is the same directory, with the same config and hooks.
fn assert_git_untouched(run: &Run, git_ino: u64) {
    let g = run.ws.path().join(".git");
    let meta = std::fs::symlink_metadata(&g).unwrap_or_else(|e| {
        panic!(
            "{}: the host's .git is gone ({e}); the workspace now holds: {:?}",
            run.label,
            snapshot(run.ws.path())
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(
        meta.ino(),
        git_ino,
        "{}: .git on the host is not the directory it was: the sandbox replaced it, and git on \
         the host now reads the sandbox's config and hooks\nconfig now: {:?}",
        run.label,
        std::fs::read_to_string(g.join("config")).ok()
    );
    assert_eq!(
        std::fs::read_to_string(g.join("config")).ok().as_deref(),
        Some(GIT_CONFIG),
        "{}: .git/config changed",
        run.label
    );
    assert!(
        !g.join("commondir").exists(),
        "{}: the sandbox planted .git/commondir ({:?}): git on the host takes its config and \
         hooks from the directory it names",
        run.label,
        std::fs::read_to_string(g.join("commondir")).ok()
    );
    let hooks: Vec<String> = std::fs::read_dir(g.join("hooks"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        hooks.iter().all(|h| h.ends_with(".sample")),
        "{}: hooks planted: {hooks:?}",
        run.label
    );
}

/// Bypass 1: .git itself is not a mount point, so it can be renamed away (taking the protected
/// mounts with it) and a fresh .git built with the sandbox's own config and hooks.
const GIT_RENAME: &str = r#"
t("rename", lambda: os.rename(".git", ".git-old"))
if R["rename"][0] == "ok":
    os.makedirs(".git/hooks")
    for d in ["HEAD", "description"]:
        write(".git/" + d, read(".git-old/" + d))
    os.symlink("../.git-old/objects", ".git/objects")
    os.symlink("../.git-old/refs", ".git/refs")
    write(".git/config", "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = planted\n")
    write(".git/hooks/pre-commit", '#!/bin/sh\necho planted\n')
    os.chmod(".git/hooks/pre-commit", 0o755)
done()
"#;

#[test]
fn git_protection_cannot_be_bypassed_by_renaming_dot_git() {
    require_root("escape suite");
    let c = Canaries::plant();
    let ws = git_workspace();
    let ino = std::fs::metadata(ws.path().join(".git")).unwrap().ino();
    let run = Sandbox::new("git rename bypass")
        .with_canaries(&c)
        .workspace(ws)
        .python(GIT_RENAME, &[]);
    run.expect_exit(0);
    assert_git_untouched(&run, ino);
    // Once .git is itself pinned (a mount point), renaming it is EBUSY like .git/hooks.
    run.expect("rename", err(EBUSY));
    c.assert_nothing_got_through(&run);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: renaming an ordinary directory of the workspace works.
    let control = Sandbox::new("git rename control")
        .ws_file("notgit/config", b"x")
        .python(
            r#"t("rename", lambda: os.rename("notgit", "notgit-old")); done()"#,
            &[],
        );
    control.expect("rename", ok(Value::Null));
}

/// Bypass 2: .git/commondir, which git reads to find the directory holding the repository's
/// config and hooks: pointed at a directory the sandbox filled, git on the host would take that
/// config (core.fsmonitor, core.hooksPath: commands git runs) and those hooks. A missing file
/// cannot be bound read-only, and creating it ahead would change what git does, so stockade
/// removes one the sandbox created once every process of the sandbox is gone, before returning,
/// and records a `git_protection` violation. (While the sandbox runs, a git command on the host
/// in this workspace could follow it: documented in docs/audit.md.)
const GIT_COMMONDIR: &str = r#"
os.makedirs(".cache/g/hooks")
os.makedirs(".cache/g/objects")
os.makedirs(".cache/g/refs/heads")
write(".cache/g/config", "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = planted\n")
write(".cache/g/hooks/pre-commit", '#!/bin/sh\necho planted\n')
t("commondir", lambda: write(".git/commondir", "../.cache/g\n"))
done()
"#;

#[test]
fn git_protection_cannot_be_bypassed_by_commondir() {
    require_root("escape suite");
    let c = Canaries::plant();
    let ws = git_workspace();
    let ino = std::fs::metadata(ws.path().join(".git")).unwrap().ino();
    let run = Sandbox::new("git commondir bypass")
        .with_canaries(&c)
        .workspace(ws)
        .python(GIT_COMMONDIR, &[]);
    run.expect_exit(0);
    // The write itself went through inside (12 bytes)...
    run.expect("commondir", ok(12));
    // ...and was undone before stockade returned: nothing git on the host reads changed.
    assert_git_untouched(&run, ino);
    let v = run.event("violation", |e| e["kind"] == "git_protection");
    assert_eq!(v["path"], ".git/commondir", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("removed after the run"),
        "{v}"
    );
    assert!(
        run.stderr
            .contains("violation: the sandbox created .git/commondir"),
        "{}",
        run.stderr
    );
    c.assert_nothing_got_through(&run);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: with --no-protect-git the file is written (the probe is right).
    let control = Sandbox::new("git commondir control")
        .flag("--no-protect-git")
        .workspace(git_workspace())
        .python(GIT_COMMONDIR, &[]);
    control.expect("commondir", ok(12));
    assert!(control.ws.path().join(".git/commondir").exists());
    assert!(control.of_type("violation").is_empty());
}

/// Bypass 3: a repository without .git/hooks (git init --template=, some tools) would get no
/// protection: the sandbox could create .git/hooks/pre-commit. stockade creates the empty
/// directory on the host first (as `git init` would), so it exists to be made read-only.
#[test]
fn a_missing_git_hooks_directory_cannot_be_created_inside() {
    require_root("escape suite");
    let c = Canaries::plant();
    let ws = git_workspace();
    std::fs::remove_dir_all(ws.path().join(".git/hooks")).unwrap();
    let probe = r#"
t("mkdir", lambda: os.mkdir(".git/hooks"))
t("hook", lambda: write(".git/hooks/pre-commit", '#!/bin/sh\necho planted\n'))
done()
"#;
    let run = Sandbox::new("git missing hooks")
        .with_canaries(&c)
        .workspace(ws)
        .python(probe, &[]);
    run.expect_exit(0);
    let hooks = run.ws.path().join(".git/hooks");
    assert!(
        !hooks.join("pre-commit").exists(),
        "the sandbox created .git/hooks/pre-commit in a repository that had no hooks directory: \
         git on the host runs it at the next commit"
    );
    run.expect("mkdir", err(EEXIST));
    run.expect("hook", err(EROFS));
    assert!(hooks.is_dir(), "stockade made the empty hooks directory");
    assert_eq!(std::fs::read_dir(&hooks).unwrap().count(), 0);
    c.assert_nothing_got_through(&run);
    run.expect_exec_recorded();
    run.expect_clean_end();
}

/// A symlinked .git/hooks or .git/config is refused before anything runs: protecting the link
/// could leave the real target writable. stockade exits 125 and the trail says why. Three
/// links: hooks to the secret's directory, config to the secret, and hooks to a directory of
/// the workspace itself (`../real-hooks`), where the danger is plain: unprotected, the sandbox
/// plants a hook there that git on the host runs (the control shows it landing).
#[test]
fn a_symlinked_git_hooks_or_config_is_refused() {
    require_root("escape suite");
    let c = Canaries::plant();
    let dir = c.file.parent().unwrap().to_path_buf();
    let in_ws = Path::new("../real-hooks").to_path_buf();
    for (what, target) in [
        ("hooks", in_ws.clone()),
        ("hooks", dir.clone()),
        ("config", c.file.clone()),
    ] {
        let ws = git_workspace();
        let p = ws.path().join(".git").join(what);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let inside = target == in_ws;
        if inside {
            std::fs::create_dir(ws.path().join("real-hooks")).unwrap();
        }
        let what_l = if inside {
            "hooks -> ../real-hooks"
        } else {
            what
        };
        let plant = if what == "hooks" {
            "write('.git/hooks/pre-commit', '#!/bin/sh\\necho planted\\n')"
        } else {
            "write('.git/config', '[core]\\n\\tfsmonitor = planted\\n')"
        };
        let probe = format!(
            "{PRELUDE}\nwrite('ran', 'ran')\nt('through', lambda: read('.git/{what}' + \
             ('/{}' if '{what}' == 'hooks' else '')))\nt('plant', lambda: {plant})\ndone()\n",
            c.file.file_name().unwrap().to_str().unwrap()
        );
        let state = tempfile::Builder::new()
            .prefix("stockade-escape-state-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let run = |extra: &[&str]| {
            Command::new(bin())
                .arg("--state-dir")
                .arg(state.path())
                .arg("run")
                .arg("--workspace")
                .arg(ws.path())
                .args(level_args())
                .args(extra)
                .args(["--", "/usr/bin/python3", "-c", &probe])
                .env(c.env_name, &c.env_secret)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let what = what_l;
        let out = run(&[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hook = ws.path().join("real-hooks/pre-commit");
        assert!(
            !hook.exists(),
            "{what}: the sandbox planted a hook in the link's target, which git on the host runs"
        );
        assert_eq!(out.status.code(), Some(125), "{what}: {stderr}");
        assert!(
            stderr.contains("refusing to protect") && stderr.contains("it is a symlink"),
            "{what}: {stderr}"
        );
        assert!(!ws.path().join("ran").exists(), "{what}: the command ran");
        assert!(!stderr.contains(&c.file_secret) && !stderr.contains(&c.env_secret));
        let (events, text) = read_events(state.path());
        assert!(
            events.iter().any(|e| e["type"] == "sandbox.destroyed"
                && e["reason"] == "error"
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("refusing to protect"))),
            "{what}: no sandbox.destroyed with the refusal:\n{text}"
        );
        assert!(
            !events.iter().any(|e| e["type"] == "exec.started"),
            "{text}"
        );
        assert!(!text.contains(&c.file_secret) && !text.contains(&c.env_secret));

        // Control: with --no-protect-git the run proceeds. A link out of the workspace still
        // leads nowhere inside (its target is outside the sandbox); the link into the workspace
        // takes the planted hook, which lands on the host.
        let out = run(&["--no-protect-git"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{what} control: {out:?}");
        assert!(
            ws.path().join("ran").exists(),
            "{what} control: did not run"
        );
        let r: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(r["through"], err(ENOENT), "{what} control: {r}");
        if inside {
            assert_eq!(r["plant"][0], "ok", "{what} control: {r}");
            assert_eq!(
                std::fs::read_to_string(&hook).unwrap(),
                "#!/bin/sh\necho planted\n",
                "{what} control: the hook did not land"
            );
        } else {
            assert_eq!(r["plant"], err(ENOENT), "{what} control: {r}");
        }
    }
}

// --- /proc/sys and /sys -------------------------------------------------------------------------

const SYSCTLS: &[&str] = &[
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/domainname",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/modprobe",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/sysrq",
    "/proc/sys/kernel/randomize_va_space",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/fs/suid_dumpable",
    "/proc/sysrq-trigger",
];

const SYS_PATHS: &[&str] = &[
    "/sys/kernel/uevent_helper",
    "/sys/kernel/profiling",
    "/sys/power/state",
    "/sys/fs/cgroup",
    "/sys/class/net",
];

/// For each path: a truncating write ("w": O_WRONLY|O_CREAT|O_TRUNC) and a plain O_WRONLY open.
const PROC_SYS: &str = r#"
for p in sys.argv[1:]:
    t("w:" + p, lambda: write(p, "1"))
    t("wo:" + p, lambda: os.close(os.open(p, os.O_WRONLY)))
t("stat:/sys", lambda: os.stat("/sys").st_mode)
t("mkdir:/sys", lambda: os.mkdir("/sys"))
t("ls:/sys/class/net", lambda: sorted(os.listdir("/sys/class/net")))
t("ls:/sys/fs/cgroup", lambda: sorted(os.listdir("/sys/fs/cgroup")))
done()
"#;

/// gvisor: what gVisor's own /proc/sys (runsc 2022, emulated: none of it is the host's) answers
/// for `p`: (truncating write, plain O_WRONLY open). Of the sysctls above it has only
/// kernel/hostname (root's, 0644: EACCES); for the others the open finds nothing (ENOENT) and
/// O_CREAT is refused in root's directory (EACCES) — ENOENT for both where the directory itself
/// is missing (/proc/sys/fs).
fn gvisor_sysctl(p: &str) -> (i64, i64) {
    match p {
        "/proc/sys/kernel/hostname" => (EACCES, EACCES),
        "/proc/sys/fs/suid_dumpable" => (ENOENT, ENOENT),
        _ => (EACCES, ENOENT),
    }
}

/// gvisor: the same for gVisor's own sysfs (emulated): /sys/fs/cgroup and /sys/class/net exist
/// (root's directories: EACCES for both), the others do not (EACCES, ENOENT as above).
fn gvisor_sys(p: &str) -> (i64, i64) {
    match p {
        "/sys/fs/cgroup" | "/sys/class/net" => (EACCES, EACCES),
        _ => (EACCES, ENOENT),
    }
}

/// /proc/sys is a read-only mount: a truncating write fails there first (EROFS, checked before
/// permissions); a plain write-open fails the permission check (EACCES: the sandbox user is not
/// root). /sys does not exist inside (ENOENT), and / is read-only (EROFS for mkdir).
#[test]
fn proc_sys_and_sys_cannot_be_written() {
    require_root("escape suite");
    let c = Canaries::plant();
    let core_before = std::fs::read("/proc/sys/kernel/core_pattern").unwrap();
    let mut args: Vec<&str> = SYSCTLS.to_vec();
    args.extend(SYS_PATHS);
    let run = Sandbox::new("proc sys")
        .with_canaries(&c)
        .python(PROC_SYS, &args);
    run.expect_exit(0);
    let mut checked = 0;
    for p in SYSCTLS {
        if level() == Level::Gvisor {
            // gVisor's own /proc/sys: the host's sysctls are not there to write at all.
            let (w, wo) = gvisor_sysctl(p);
            run.expect(&format!("w:{p}"), err(w))
                .expect(&format!("wo:{p}"), err(wo));
            checked += 1;
        } else if Path::new(p).exists() {
            checked += 1;
            run.expect(&format!("w:{p}"), err(EROFS))
                .expect(&format!("wo:{p}"), err(EACCES));
        } else {
            // Not in this kernel (e.g. modprobe without modules): not there inside either.
            run.expect(&format!("w:{p}"), err(ENOENT))
                .expect(&format!("wo:{p}"), err(ENOENT));
        }
    }
    assert!(checked >= 7, "too few sysctls exist on this host to check");
    for p in SYS_PATHS {
        let (w, wo) = per_level((ENOENT, ENOENT), gvisor_sys(p), (ENOENT, ENOENT));
        run.expect(&format!("w:{p}"), err(w))
            .expect(&format!("wo:{p}"), err(wo));
    }
    match level() {
        Level::Container | Level::Microvm => {
            run.expect("stat:/sys", err(ENOENT))
                .expect("mkdir:/sys", err(EROFS))
                .expect("ls:/sys/class/net", err(ENOENT))
                .expect("ls:/sys/fs/cgroup", err(ENOENT));
        }
        Level::Gvisor => {
            // runsc mounts gVisor's own sysfs at /sys (emulated, nothing of the host's): a
            // root directory, only the sandbox's `lo` under class/net, no cgroup mounted.
            run.expect("stat:/sys", ok(libc::S_IFDIR | 0o755))
                .expect("mkdir:/sys", err(EEXIST))
                .expect("ls:/sys/class/net", ok(json!(["lo"])))
                .expect("ls:/sys/fs/cgroup", ok(json!([])));
        }
    }
    c.assert_nothing_got_through(&run);
    assert_eq!(
        std::fs::read("/proc/sys/kernel/core_pattern").unwrap(),
        core_before,
        "core_pattern changed"
    );
    // EROFS, EACCES and ENOENT: mounts, permissions, absence; none is audited by the kernel.
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: on the host (root), each existing sysctl opens for writing (nothing is written)
    // and the /sys paths that exist here are there.
    let host = host_python(
        r#"
for p in sys.argv[1:]:
    if p.startswith("/sys/"):
        t("stat:" + p, lambda: os.stat(p).st_mode > 0)
    elif os.path.exists(p):
        t("wo:" + p, lambda: os.close(os.open(p, os.O_WRONLY)))
done()
"#,
        &args,
        None,
        &[],
    );
    for p in SYSCTLS.iter().filter(|p| Path::new(p).exists()) {
        assert_eq!(host[format!("wo:{p}")], ok(Value::Null), "{p}: {host}");
    }
    for p in ["/sys/kernel/profiling", "/sys/fs/cgroup", "/sys/class/net"] {
        assert_eq!(host[format!("stat:{p}")], ok(true), "{p}: {host}");
    }
}

// --- /dev ---------------------------------------------------------------------------------------

/// argv[1:]: device names to look for. Then device nodes made where the sandbox can write.
const DEV: &str = r#"
R["dev"] = sorted(os.listdir("/dev"))
for d in sys.argv[1:]:
    t("stat:" + d, lambda: os.stat("/dev/" + d).st_mode)
t("open:kmsg", lambda: os.open("/dev/kmsg", os.O_RDONLY))
mem, disk = os.makedev(1, 1), os.makedev(254, 0)
t("mknod:tmp:chr", lambda: os.mknod("/tmp/mem", 0o20600, mem))
t("mknod:tmp:blk", lambda: os.mknod("/tmp/disk", 0o60600, disk))
t("mknod:ws:chr", lambda: os.mknod("mem", 0o20600, mem))
t("mknod:shm:chr", lambda: os.mknod("/dev/shm/mem", 0o20600, mem))
t("mknod:dev:chr", lambda: os.mknod("/dev/mem", 0o20600, mem))
# Control inside: mknod itself is permitted (a FIFO needs no privilege).
t("mknod:tmp:fifo", lambda: os.mknod("/tmp/fifo", 0o10600))
# What a node made above would give (ENOENT where none was made).
for k, p in [("tmp:chr", "/tmp/mem"), ("tmp:blk", "/tmp/disk"), ("shm:chr", "/dev/shm/mem")]:
    t("open:" + k, lambda: os.close(os.open(p, os.O_RDONLY)))
# gVisor's tun device (where there is one): an interface needs CAP_NET_ADMIN.
def tunsetiff():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        import fcntl
        return fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", b"esc0", 0x0001 | 0x1000)) and "created"
    finally:
        os.close(fd)
t("tunsetiff", tunsetiff)
done()
"#;

/// gvisor: the nodes runsc's own /dev adds (gVisor's emulations, not host nodes): `fuse` (a
/// char device, 0666) and `net` (holding gVisor's `tun`).
const GVISOR_DEV_EXTRA: &[&str] = &["fuse", "net"];

/// The minimal /dev inside, exactly.
const DEV_INSIDE: &[&str] = &[
    "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
    "urandom", "zero",
];

/// Device nodes that must not exist inside: the usual suspects, plus every block device and
/// every other node of this host's /dev.
fn dev_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "mem", "kmem", "port", "kmsg", "sda", "vda", "nvme0n1", "kvm",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in std::fs::read_dir("/dev").unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !DEV_INSIDE.contains(&n.as_str()) && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// /dev has only the minimal nodes; everything else is absent (ENOENT, no wall to audit).
/// mknod of a device fails with EPERM from the kernel's capability check (CAP_MKNOD in the
/// initial user namespace) — not seccomp (mknodat is allowed: the FIFO works) and not Landlock
/// (/tmp grants make-char; the answer is the same with both off) — and is not audited. Even a
/// node that existed would be useless: every writable mount is nodev.
#[test]
fn dev_has_only_the_minimal_nodes_and_device_nodes_cannot_be_made() {
    require_root("escape suite");
    let c = Canaries::plant();
    let names = dev_names();
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    let check = |run: &Run| {
        run.expect_exit(0);
        // gVisor's own devtmpfs adds fuse and net/tun: gVisor's emulations, not host nodes
        // (mounting fuse and opening tun need capabilities the sandbox user lacks).
        let mut want: Vec<&str> = DEV_INSIDE.to_vec();
        let gvisor = level() == Level::Gvisor;
        if gvisor {
            want.extend(GVISOR_DEV_EXTRA);
            want.sort();
        }
        assert_eq!(run.get("dev"), json!(want), "{}", run.label);
        for n in &names {
            if gvisor && GVISOR_DEV_EXTRA.contains(&n.as_str()) {
                continue; // checked below: gVisor's, not the host's
            }
            run.expect(&format!("stat:{n}"), err(ENOENT));
        }
        if gvisor {
            let chr = (libc::S_IFCHR | 0o666) as i64;
            let dir = (libc::S_IFDIR | 0o755) as i64;
            if names.iter().any(|n| n == "fuse") {
                run.expect("stat:fuse", ok(chr));
            }
            if names.iter().any(|n| n == "net") {
                run.expect("stat:net", ok(dir));
            }
        }
        run.expect("open:kmsg", err(ENOENT))
            // gvisor: gVisor's tun opens, but making an interface needs CAP_NET_ADMIN (EPERM).
            .expect("tunsetiff", err(per_level(ENOENT, EPERM, ENOENT)))
            .expect("mknod:ws:chr", err(EPERM))
            // container: /dev is a read-only tmpfs: refused before the capability check.
            // gvisor: runsc's /dev is a tmpfs of root's (0755), writable only by root (the shim):
            // the sandbox user gets EACCES.
            .expect("mknod:dev:chr", err(per_level(EROFS, EACCES, EROFS)))
            .expect("mknod:tmp:fifo", ok(Value::Null));
        for k in ["tmp:chr", "tmp:blk", "shm:chr"] {
            if gvisor {
                // LIMITATION (gvisor), not a wall: gVisor lets the sandbox user make device
                // nodes in its own tmpfs (/tmp, HOME, /dev/shm; not in the workspace, whose
                // gofer refuses: EPERM above). They are gVisor's nodes, not the host's: opening
                // one finds the device in gVisor's own table, which has no /dev/mem (1:1) and no
                // disk (254:0): ENXIO. Only the devices gVisor emulates (null, zero, full,
                // random, urandom, tty, ptmx, pts, fuse, tun — all already in its /dev) open.
                run.expect(&format!("mknod:{k}"), ok(Value::Null))
                    .expect(&format!("open:{k}"), err(ENXIO));
            } else {
                run.expect(&format!("mknod:{k}"), err(EPERM))
                    .expect(&format!("open:{k}"), err(ENOENT));
            }
        }
        c.assert_nothing_got_through(run);
        assert!(
            !run.of_type("violation")
                .iter()
                .any(|e| e["syscall"] == "mknodat" || e["syscall"] == "mknod"),
            "{}: mknod was refused by seccomp, not the capability check",
            run.label
        );
        run.expect_exec_recorded();
        run.expect_clean_end();
    };
    let run = Sandbox::new("dev").with_canaries(&c).python(DEV, &args);
    check(&run);
    assert!(
        !run.ws.path().join("mem").exists(),
        "a device node appeared in the workspace"
    );

    // The same with seccomp and Landlock lifted: still EPERM, so the capability is the wall.
    let off = Sandbox::new("dev, seccomp and landlock off")
        .with_canaries(&c)
        .flags(&[
            "--seccomp",
            "off",
            "--landlock",
            "off",
            "--allow-weaker-isolation",
        ])
        .python(DEV, &args);
    check(&off);

    // Control: on the host the nodes exist (at least /dev/kmsg and one block device), and root
    // makes a device node with the same call.
    let scratch = tempfile::tempdir().unwrap();
    let host = host_python(
        r#"
for d in sys.argv[2:]:
    t("stat:" + d, lambda: os.stat("/dev/" + d).st_mode)
t("mknod", lambda: os.mknod(sys.argv[1] + "/null", 0o20600, os.makedev(1, 3)))
done()
"#,
        &[&[scratch.path().to_str().unwrap()], args.as_slice()].concat(),
        None,
        &[],
    );
    assert_eq!(host["mknod"], ok(Value::Null), "{host}");
    assert!(
        host["stat:kmsg"][0] == "ok",
        "/dev/kmsg missing on the host: {host}"
    );
    let host_nodes = names
        .iter()
        .filter(|n| host[format!("stat:{n}")][0] == "ok")
        .count();
    assert!(
        host_nodes >= 5,
        "the control found too few host nodes: {host}"
    );
    let blk = names.iter().any(|n| {
        host[format!("stat:{n}")][1]
            .as_u64()
            .is_some_and(|m| m & 0o170000 == 0o060000)
    });
    assert!(blk, "no block device on the host to check: {host}");
}
