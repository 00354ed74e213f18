//! Directory root filesystems (`--rootfs DIR`, `filesystem.rootfs`) end to end, through the real
//! binary: a tiny root filesystem (a static busybox and a few files, owned by root) is the
//! sandbox's root; what it holds is seen, what only the host holds is not (next to a control run
//! without `--rootfs` that sees the host's view); writes never reach the directory on the host;
//! its own identity files and symlinks are not trusted; and a root filesystem that could be
//! altered from outside, or a relative path, is refused with one clear error.
//!
//! Needs root (the root filesystem must be owned by root, and only a root launcher may use one)
//! and a static busybox (`busybox-static`, installed with apt-get when missing). A test that
//! cannot get either fails with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BUSYBOX: &str = "/bin/busybox";
/// strerror(ENOENT) and strerror(EROFS), as busybox prints them: the exact errno of a failure.
const ENOENT_TEXT: &str = "No such file or directory";
const EROFS_TEXT: &str = "Read-only file system";
const TEMPLATE_OS_RELEASE: &str = "ID=stockade-test-template\n";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockade")
}

fn require_root() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests need root: a root filesystem must be owned by root and only a root launcher \
         may use one (CI runs as root)"
    );
}

/// Does the ELF file at `p` have no program interpreter (PT_INTERP), i.e. is it static?
fn is_static_elf(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap();
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

/// A static busybox on the host, installed from Debian's `busybox-static` when missing.
fn busybox() -> &'static Path {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let p = Path::new(BUSYBOX);
    if !p.exists() || !is_static_elf(p) {
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "busybox-static"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
        };
        let mut out = install();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            let _ = Command::new("apt-get").arg("update").output();
            out = install();
        }
        assert!(
            p.exists() && is_static_elf(p),
            "a static {BUSYBOX} is needed to build the test root filesystem and \
             `apt-get install busybox-static` did not provide one: {out:?}"
        );
    }
    p
}

/// A tiny root filesystem in a temp dir under /tmp: `root` is the root filesystem itself.
struct Template {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ws: PathBuf,
    state: PathBuf,
}

fn template() -> Template {
    require_root();
    let bb = busybox();
    let dir = tempfile::Builder::new()
        .prefix("stockade-rootfs-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path().join("rootfs");
    for d in ["bin", "etc", "home", "dev", "proc", "tmp", "var/tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "ls", "stat", "id", "touch", "test"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/os-release-from-template"),
        TEMPLATE_OS_RELEASE,
    )
    .unwrap();
    // The template's own identity file: replaced inside by Stockade's generated one.
    std::fs::write(root.join("etc/passwd"), "templateuser:x:0:0::/:/bin/sh\n").unwrap();
    let ws = dir.path().join("ws");
    let state = dir.path().join("state");
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&state).unwrap();
    Template {
        _dir: dir,
        root,
        ws,
        state,
    }
}

/// `stockade run --workspace WS FLAGS -- /bin/sh -c SCRIPT`.
fn run(t: &Template, flags: &[&str], script: &str) -> Output {
    Command::new(bin())
        .arg("--state-dir")
        .arg(&t.state)
        .arg("run")
        .arg("--workspace")
        .arg(&t.ws)
        .args(["--timeout", "120s"])
        .args(flags)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap()
}

fn with_rootfs(t: &Template, script: &str) -> Output {
    run(t, &["--rootfs", t.root.to_str().unwrap()], script)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{o:?}\n{}", text(&o.stderr));
    text(&o.stdout)
}

/// Every entry under `dir`: type, mode, owner, and contents or link target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                format!("file {:x?}", std::fs::read(&p).unwrap())
            };
            let line = format!("{what} {:o} {}:{}", m.mode(), m.uid(), m.gid());
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), line);
        }
    }
    out
}

/// A file created for one test and removed afterwards, even when the test fails.
struct HostFile(PathBuf);

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("stockade-rootfs-{tag}-{}-{nanos}", std::process::id())
}

#[test]
fn the_template_is_the_root_and_the_host_system_is_not_there() {
    let t = template();
    // A canary in a host system directory that the default root binds (/usr).
    std::fs::create_dir_all("/usr/local/share").unwrap();
    let canary = HostFile(PathBuf::from("/usr/local/share").join(unique("canary")));
    std::fs::write(&canary.0, "host canary\n").unwrap();
    let c = canary.0.display();

    let out = with_rootfs(
        &t,
        &format!(
            "cat /etc/os-release-from-template; cat {c}; echo \"canary=$?\"; \
             cat /etc/os-release; echo \"os=$?\"; test -e /usr/bin; echo \"usr=$?\""
        ),
    );
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    assert!(stdout.starts_with(TEMPLATE_OS_RELEASE), "{stdout}");
    assert!(
        stdout.contains("canary=1\n") && stdout.contains("os=1\n") && stdout.contains("usr=1\n"),
        "{stdout}"
    );
    // ENOENT, exactly: not EACCES (a Landlock or permission wall), the file is not there.
    assert!(
        stderr.contains(&format!("cat: can't open '{c}': {ENOENT_TEXT}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("cat: can't open '/etc/os-release': {ENOENT_TEXT}")),
        "{stderr}"
    );

    // Control, same probes without --rootfs: the host's view, canary and all; no template file.
    let out = run(
        &t,
        &[],
        &format!(
            "cat {c}; cat /etc/os-release >/dev/null; echo \"os=$?\"; \
             cat /etc/os-release-from-template; echo \"tmpl=$?\""
        ),
    );
    let stdout = ok(&out);
    assert!(stdout.starts_with("host canary\n"), "{stdout}");
    assert!(
        stdout.contains("os=0\n") && stdout.contains("tmpl=1\n"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains(ENOENT_TEXT), "{out:?}");
}

#[test]
fn root_owned_files_stay_root_and_identity_files_are_stockades() {
    let t = template();
    // The template's /etc/hosts is a symlink to a host file: setup must neither follow it (that
    // would write the host file) nor show the host file inside.
    let host_file = HostFile(PathBuf::from("/tmp").join(unique("hosts-target")));
    std::fs::write(&host_file.0, "HOST FILE, NOT FOR THE SANDBOX\n").unwrap();
    std::os::unix::fs::symlink(&host_file.0, t.root.join("etc/hosts")).unwrap();

    let out = with_rootfs(
        &t,
        "stat -c '%u:%g %n' /bin/busybox /etc; id -u; id -g; cat /etc/passwd /etc/hosts; \
         echo \"HOME=$HOME USER=$USER\"",
    );
    let stdout = ok(&out);
    assert!(stdout.contains("0:0 /bin/busybox\n0:0 /etc\n"), "{stdout}");
    assert!(stdout.contains("\n1000\n1000\n"), "{stdout}");
    assert!(
        stdout.contains("sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("templateuser"), "{stdout}");
    assert!(
        stdout.contains("127.0.0.1 localhost stockade\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("HOST FILE"), "{stdout}");
    assert!(
        stdout.contains("HOME=/home/sandbox USER=sandbox\n"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&host_file.0).unwrap(),
        "HOST FILE, NOT FOR THE SANDBOX\n"
    );
    assert_eq!(
        std::fs::read_link(t.root.join("etc/hosts")).unwrap(),
        host_file.0
    );
    assert_eq!(
        std::fs::read_to_string(t.root.join("etc/passwd")).unwrap(),
        "templateuser:x:0:0::/:/bin/sh\n"
    );
}

#[test]
fn writes_never_reach_the_root_filesystem_on_the_host() {
    let t = template();
    let before = snapshot(&t.root);
    let out = with_rootfs(
        &t,
        "echo changed > /etc/os-release-from-template; echo \"file=$?\"; \
         touch /new-at-top; echo \"top=$?\"; touch /var/tmp/x; echo \"vartmp=$?\"; \
         echo t > /tmp/t && cat /tmp/t; echo h > \"$HOME/h\" && cat \"$HOME/h\"; \
         echo w > ./written-in-ws && cat ./written-in-ws; cat /etc/os-release-from-template",
    );
    let stdout = ok(&out);
    let stderr = text(&out.stderr);
    // The root is read-only (EROFS, exactly), ...
    assert!(
        stdout.contains("file=1\n") && stdout.contains("top=1\n") && stdout.contains("vartmp=1\n"),
        "{stdout}"
    );
    assert_eq!(stderr.matches(EROFS_TEXT).count(), 3, "{stderr}");
    // ... while /tmp, HOME and the workspace take writes (the control for the same shell).
    assert!(stdout.contains("t\nh\nw\n"), "{stdout}");
    assert!(stdout.ends_with(TEMPLATE_OS_RELEASE), "{stdout}");
    // Nothing changed on the host: not the file, not the generated /etc files, no new entry.
    assert_eq!(snapshot(&t.root), before);
    assert_eq!(
        std::fs::read_to_string(t.ws.join("written-in-ws")).unwrap(),
        "w\n"
    );
}

#[test]
fn with_secrets_the_root_filesystems_own_ca_bundle_gets_the_sandbox_ca() {
    let t = template();
    std::fs::create_dir_all(t.root.join("etc/ssl/certs")).unwrap();
    let bundle = t.root.join("etc/ssl/certs/ca-certificates.crt");
    std::fs::write(&bundle, "TEMPLATE ROOTS\n").unwrap();
    let script = "cat /etc/ssl/certs/ca-certificates.crt; echo @@sep@@; \
                  cat /etc/ssl/certs/stockade-sandbox-ca.pem";
    let root = t.root.to_str().unwrap();
    let secret = [
        "--rootfs",
        root,
        "--net",
        "allowlist",
        "--allow-net",
        "api.example.test",
        "--secret",
        "ROOTFS_TEST_KEY=env:STOCKADE_ROOTFS_TEST_KEY",
        "--secret-host",
        "ROOTFS_TEST_KEY=api.example.test",
    ];
    let out = Command::new(bin())
        .arg("--state-dir")
        .arg(&t.state)
        .arg("run")
        .arg("--workspace")
        .arg(&t.ws)
        .args(secret)
        .args(["--", "/bin/sh", "-c", script])
        .env("STOCKADE_ROOTFS_TEST_KEY", "not-a-real-key")
        .output()
        .unwrap();
    let stdout = ok(&out);
    let (inside, ca) = stdout.split_once("@@sep@@\n").unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----\n"), "{stdout}");
    assert_eq!(
        inside,
        format!("TEMPLATE ROOTS\n# Stockade: this sandbox's secret gateway CA\n{ca}"),
        "the template's own roots, then the sandbox CA"
    );
    assert_eq!(
        std::fs::read_to_string(&bundle).unwrap(),
        "TEMPLATE ROOTS\n"
    );
    // Control: without secrets the bundle is the template's, untouched.
    let out = with_rootfs(&t, "cat /etc/ssl/certs/ca-certificates.crt");
    assert_eq!(ok(&out), "TEMPLATE ROOTS\n");
}

#[test]
fn a_command_missing_from_the_root_filesystem_is_127() {
    let t = template();
    let bin = bin();
    let st = |flags: &[&str], cmd: &str| {
        Command::new(bin)
            .arg("--state-dir")
            .arg(&t.state)
            .args(["run", "--workspace"])
            .arg(&t.ws)
            .args(flags)
            .args(["--", cmd, "-c", "pass"])
            .output()
            .unwrap()
    };
    let root = t.root.to_str().unwrap();
    let out = st(&["--rootfs", root], "/usr/bin/python3");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(text(&out.stderr).contains("not found"), "{out:?}");
    // Control: the same command exists on the host's default root.
    let out = st(&[], "/usr/bin/python3");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Runs `true` on `rootfs` and expects one error line with `needle`, exit 125, and in the audit
/// trail a `sandbox.destroyed` with reason `error`, the same message, and a clean teardown.
fn refused(t: &Template, rootfs: &Path, needle: &str) {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("--state-dir")
        .arg(state.path())
        .arg("run")
        .arg("--workspace")
        .arg(&t.ws)
        .arg("--rootfs")
        .arg(rootfs)
        .args(["--", "/bin/sh", "-c", "true"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(stderr.contains(needle), "want {needle:?} in: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear error: {stderr}");
    let sandboxes: Vec<PathBuf> = std::fs::read_dir(state.path().join("sandboxes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let events = std::fs::read_to_string(sandboxes[0].join("events.jsonl")).unwrap();
    let destroyed: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "sandbox.destroyed")
        .collect();
    assert_eq!(destroyed.len(), 1, "{events}");
    let d = &destroyed[0];
    assert_eq!(d["reason"], "error", "{d}");
    assert_eq!(d["clean"], true, "{d}");
    assert!(d["error"].as_str().unwrap().contains(needle), "{d}");
}

#[test]
fn a_root_filesystem_others_could_alter_is_refused() {
    let t = template();
    let perms = |m: u32| {
        std::fs::set_permissions(&t.root, std::fs::Permissions::from_mode(m)).unwrap();
    };
    perms(0o757);
    let want = format!(
        "refusing the root filesystem {}: it is writable by others (mode 0757); a root \
         filesystem the sandbox user could alter on the host is refused",
        t.root.display()
    );
    refused(&t, &t.root, &want);
    perms(0o755);
    std::os::unix::fs::chown(&t.root, Some(4242), None).unwrap();
    refused(&t, &t.root, "it is not owned by root");
    std::os::unix::fs::chown(&t.root, Some(0), None).unwrap();
    // Control: the same directory, owned by root and not writable by others, is accepted.
    assert_eq!(ok(&with_rootfs(&t, "echo fine")), "fine\n");

    // A parent others can write to (no sticky bit) lets anyone swap the root filesystem.
    let parent = t.root.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&t, &t.root, "writable by others without the sticky bit");
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Inside the writable workspace, the sandbox could change its own root filesystem.
    refused(&t, &t.ws, "it overlaps the workspace");
    refused(&t, &t.root.join("etc/passwd"), "it is not a directory");
    refused(&t, &t.root.join("missing"), ENOENT_TEXT);
}

#[test]
fn a_symlink_in_the_way_is_refused_and_not_followed() {
    let t = template();
    // /home in the template points at a host directory: HOME would be created and mounted there.
    let host_dir = tempfile::Builder::new()
        .prefix("stockade-rootfs-host-home-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::remove_dir(t.root.join("home")).unwrap();
    std::os::unix::fs::symlink(host_dir.path(), t.root.join("home")).unwrap();
    refused(
        &t,
        &t.root,
        "root filesystem: a symlink is in the way at /home",
    );
    assert_eq!(
        std::fs::read_dir(host_dir.path()).unwrap().count(),
        0,
        "nothing may be created through the root filesystem's symlink"
    );
}

/// An ordinary user's sandbox cannot map the root filesystem's root-owned files: refused, even
/// with `--allow-weaker-isolation`, while the same user's run without `--rootfs` works.
#[test]
fn only_a_root_launcher_may_use_a_root_filesystem() {
    const USER: &str = "stockade-e2e";
    let t = template();
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, USER]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let o = Command::new("useradd")
            .args(["-M", "-r", USER])
            .output()
            .unwrap();
        assert!(o.status.success() || id("-u").is_some(), "useradd: {o:?}");
    }
    let (uid, gid) = (id("-u").unwrap(), id("-g").unwrap());
    // The user needs its own copy of the binary, workspace and state dir.
    let dir = t.root.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.join("stockade");
    std::fs::copy(bin(), &binary).unwrap();
    for p in [&t.ws, &t.state] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let as_user = |extra: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", USER, "--regid", USER, "--init-groups"])
            .arg(&binary)
            .arg("--state-dir")
            .arg(&t.state)
            .arg("run")
            .arg("--workspace")
            .arg(&t.ws)
            .arg("--allow-weaker-isolation")
            .args(extra)
            .args(["--", "/bin/sh", "-c", "echo ran"])
            .current_dir(&t.ws)
            .output()
            .unwrap()
    };
    let out = as_user(&["--rootfs", t.root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("a directory root filesystem needs stockade to run as root"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    // Control: the same user, same flags, no root filesystem.
    let out = as_user(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "ran\n");
}

#[test]
fn relative_and_bad_paths_are_refused_with_their_place() {
    let t = template();
    let policy = t.ws.join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[filesystem]\nrootfs = \"srv/rootfs\"\n",
    )
    .unwrap();
    let want = format!(
        "{}:3:10: filesystem.rootfs: root filesystem path \"srv/rootfs\" must be absolute \
         (start with /)",
        policy.display()
    );
    for args in [
        vec!["policy", "check", policy.to_str().unwrap()],
        vec![
            "run",
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "true",
        ],
    ] {
        let out = Command::new(bin())
            .arg("--state-dir")
            .arg(&t.state)
            .args(&args)
            .current_dir(&t.ws)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(text(&out.stderr).contains(&want), "{args:?}: {out:?}");
    }
    let out = run(&t, &["--rootfs", "rootfs"], "true");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "stockade: --rootfs: root filesystem path \"rootfs\" must be absolute (start with /)\n"
    );
    let out = run(&t, &["--rootfs", "/"], "true");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("whole host"), "{out:?}");
}
