//! The OCI bundle runsc runs: `config.json` plus a small `rootfs` directory built on the host.
//!
//! The root is a fresh directory holding only what the plan lays out (its `RootOp::Dir`,
//! `Symlink`, `File`, `Append` and `CopyFile` steps) and the mount points of the binds; runsc
//! mounts it read-only. Every other path comes from an OCI mount: the plan's binds (read-only
//! unless writable), /proc, tmpfs for /tmp, HOME and /dev/shm (each sized to the plan's scratch
//! budget; gVisor keeps tmpfs in the sandbox's memory, so the memory limit caps them together),
//! the workspace per kind, and read-only binds over the workspace's protected paths. runsc brings
//! its own /dev (devtmpfs with null, zero, full, random, urandom, tty, ptmx, devpts) and /sys.
//!
//! runsc creates a missing mount point through its gofer, on the host: in this root (ours) that
//! is harmless, but under a bind it would write into the host directory. So every mount point is
//! created here first, and a mount point that would have to be created inside another bind's host
//! directory is refused. Nothing here follows a symlink: each component on the way to something
//! created must be a real directory of this root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use stockade_jail::plan::{LandlockPlan, RootOp, SandboxPlan, WorkspaceKind};

/// Where the guest binary appears inside.
pub const GUEST_PATH: &str = "/.stockade/stockade-guest";
/// The container init's argv (the guest shim's gVisor entry).
pub const GUEST_ARGS: [&str; 3] = [GUEST_PATH, "__guest", "gvisor"];
/// Capabilities the agent needs before it drops to the sandbox user: its ids and groups, the
/// bounding set, the DNS (53) and per-name (80/443) ports of the egress bridge; and CAP_KILL,
/// the only one the guest shim (the init, root) keeps after starting the agent, so that its
/// kill(-1) at the end reaches the sandbox user's processes. (runsc brings loopback up itself;
/// the hostname is set from the bundle.)
pub const CAPABILITIES: [&str; 5] = [
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
];

/// One OCI mount, in the order runsc applies them.
struct Mount {
    destination: PathBuf,
    kind: &'static str,
    source: PathBuf,
    options: Vec<String>,
}

impl Mount {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "destination": self.destination,
            "type": self.kind,
            "source": self.source,
            "options": self.options,
        })
    }
}

fn bind(source: &Path, destination: &Path, writable: bool, device: bool) -> Mount {
    let mut options = vec![
        "rbind".to_string(),
        if writable { "rw" } else { "ro" }.to_string(),
        "nosuid".to_string(),
    ];
    if !device {
        options.push("nodev".into());
    }
    Mount {
        destination: destination.to_path_buf(),
        kind: "bind",
        source: source.to_path_buf(),
        options,
    }
}

fn tmpfs(destination: &Path, bytes: u64, mode: &str, owner: Option<(u32, u32)>) -> Mount {
    let mut options = vec![
        format!("size={}", bytes.max(4096)),
        format!("mode={mode}"),
        "nosuid".to_string(),
        "nodev".to_string(),
    ];
    if let Some((u, g)) = owner {
        options.push(format!("uid={u}"));
        options.push(format!("gid={g}"));
    }
    Mount {
        destination: destination.to_path_buf(),
        kind: "tmpfs",
        source: "tmpfs".into(),
        options,
    }
}

/// The bundle's root directory and the mounts laid over it so far.
struct Layout {
    root: PathBuf,
    mounts: Vec<Mount>,
}

#[derive(Clone, Copy, PartialEq)]
enum Want {
    Dir,
    File,
}

fn io_err(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> String {
    let msg = format!("{what} {}", p.display());
    move |e| format!("{msg}: {e}")
}

impl Layout {
    /// The host path of `p` (absolute, inside) in this root, after checking that `p` is not
    /// under a mount (where runsc, not this root, provides it).
    fn host(&self, p: &Path) -> Result<PathBuf, String> {
        let mut out = self.root.clone();
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(format!("{}: not a normal absolute path", p.display()));
                }
            }
        }
        Ok(out)
    }

    /// The deepest mount already laid at or above `p`.
    fn covering(&self, p: &Path) -> Option<&Mount> {
        self.mounts
            .iter()
            .filter(|m| p.starts_with(&m.destination))
            .max_by_key(|m| m.destination.components().count())
    }

    /// Creates the real directories on the way to `p` in this root (never through a symlink)
    /// and returns `p`'s host path.
    fn parents(&self, p: &Path) -> Result<PathBuf, String> {
        let host = self.host(p)?;
        let mut cur = self.root.clone();
        let rel = host
            .strip_prefix(&self.root)
            .map_err(|_| format!("{}: outside the bundle root", p.display()))?
            .to_path_buf();
        let n = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            if i + 1 == n {
                break;
            }
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "{}: {} on the way is not a directory (a symlink is never followed)",
                        p.display(),
                        cur.display()
                    ));
                }
                Err(_) => fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&cur)
                    .map_err(io_err("creating", &cur))?,
            }
        }
        Ok(host)
    }

    /// Makes `p` exist in this root as `want` (a mount point or a step's target).
    fn ensure(&self, p: &Path, want: Want, mode: u32) -> Result<PathBuf, String> {
        let host = self.parents(p)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if want == Want::Dir && m.is_dir() => {
                fs::set_permissions(&host, fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &host))?;
            }
            Ok(m) if want == Want::File && m.is_file() => {}
            Ok(_) => {
                return Err(format!(
                    "{}: already exists in the sandbox root as something else",
                    p.display()
                ));
            }
            Err(_) if want == Want::Dir => fs::DirBuilder::new()
                .mode(mode)
                .create(&host)
                .map_err(io_err("creating", &host))?,
            Err(_) => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&host)
                    .map_err(io_err("creating", &host))?;
            }
        }
        Ok(host)
    }

    /// A mount point for a new mount at `dest`: in this root when no mount covers it yet; under
    /// a tmpfs runsc creates it in the sandbox's memory; under a bind it must already exist on
    /// the host (runsc would otherwise create it there).
    fn mount_point(&self, dest: &Path, want: Want) -> Result<(), String> {
        match self.covering(dest) {
            None => self.ensure(dest, want, 0o755).map(drop),
            Some(m) if m.kind == "bind" => {
                let rel = dest
                    .strip_prefix(&m.destination)
                    .map_err(|_| format!("{}: bad mount nesting", dest.display()))?;
                let host = m.source.join(rel);
                let ok = match fs::metadata(&host) {
                    Ok(md) => md.is_dir() == (want == Want::Dir),
                    Err(_) => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "the mount point {} would have to be created inside the host directory \
                         {} (bound at {}); create it there first or mount elsewhere",
                        dest.display(),
                        m.source.display(),
                        m.destination.display()
                    ))
                }
            }
            Some(_) => Ok(()),
        }
    }

    /// `p` with the symlinks of this root (made from the plan's steps, never a template's)
    /// resolved lexically inside the root, up to the first mount or missing component: where
    /// runsc will put a mount at `p`. E.g. a workspace under /var/tmp lands on the /tmp tmpfs.
    fn resolve(&self, p: &Path) -> Result<PathBuf, String> {
        let mut todo: Vec<PathBuf> = Vec::new();
        let mut rest: Vec<std::ffi::OsString> = Vec::new();
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => rest.push(n.to_os_string()),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(format!("{}: not a normal absolute path", p.display()));
                }
            }
        }
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(n) = rest.pop() {
            if n == ".." {
                cur.pop();
                continue;
            }
            if n == "." {
                continue;
            }
            let next = cur.join(&n);
            if self.covering(&next).is_some() {
                cur = next;
                break;
            }
            match fs::symlink_metadata(self.host(&next)?) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > 40 {
                        return Err(format!("{}: too many levels of symlinks", p.display()));
                    }
                    let t = fs::read_link(self.host(&next)?)
                        .map_err(|e| format!("{}: {e}", next.display()))?;
                    if t.is_absolute() {
                        cur = PathBuf::from("/");
                    }
                    for c in t.components().rev() {
                        match c {
                            Component::Normal(x) => rest.push(x.to_os_string()),
                            Component::ParentDir => rest.push("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(_) => cur = next,
                Err(_) => {
                    cur = next;
                    break;
                }
            }
        }
        while let Some(n) = rest.pop() {
            todo.push(PathBuf::from(n));
        }
        for t in todo {
            cur.push(t);
        }
        Ok(cur)
    }

    fn push(&mut self, mut m: Mount, want: Want) -> Result<(), String> {
        m.destination = self.resolve(&m.destination)?;
        self.mount_point(&m.destination, want)?;
        self.mounts.push(m);
        Ok(())
    }

    /// Writes `contents` at `p` in this root (an existing file is replaced, never followed).
    fn write(&self, p: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
        if self.covering(p).is_some() {
            return Err(format!(
                "{}: a generated file under a mount is not supported here",
                p.display()
            ));
        }
        let host = self.parents(p)?;
        if let Ok(m) = fs::symlink_metadata(&host) {
            if m.is_dir() {
                return Err(format!("{}: is a directory", p.display()));
            }
            fs::remove_file(&host).map_err(io_err("replacing", &host))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&host)
            .map_err(io_err("creating", &host))?;
        f.write_all(contents).map_err(io_err("writing", &host))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &host))
    }

    /// The current contents of `p` in this root (empty when missing or not a regular file).
    fn read(&self, p: &Path) -> Result<Vec<u8>, String> {
        let host = self.host(p)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_file() => fs::read(&host).map_err(io_err("reading", &host)),
            _ => Ok(Vec::new()),
        }
    }
}

fn host_hard_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid out-pointer on this frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_max
    } else {
        1024
    }
}

/// Writes the OCI bundle for `plan` into `dir` (created; must not exist yet) with the guest
/// binary as the container init, and returns the plan as it must be sent inside: what the agent
/// still does itself (ids, hostname check, rlimits, seccomp, egress bridge, the command or
/// session), with everything the bundle already did (root, mounts, cgroups, id maps, Landlock)
/// removed.
pub fn write_bundle(
    plan: &SandboxPlan,
    dir: &Path,
    guest_bin: &Path,
) -> Result<SandboxPlan, String> {
    let args: Vec<String> = GUEST_ARGS.iter().map(|s| s.to_string()).collect();
    write_bundle_with_args(plan, dir, guest_bin, &args)
}

/// [`write_bundle`] with another container init (`args`, run as root in the built root): for
/// tests and benchmarks of the bundle itself.
pub fn write_bundle_with_args(
    plan: &SandboxPlan,
    dir: &Path,
    guest_bin: &Path,
    args: &[String],
) -> Result<SandboxPlan, String> {
    if plan.rootfs.is_some() {
        // runsc creates missing mount points through its gofer on the host and this version
        // cannot lay a writable layer over only the root: a template's directory would be
        // written to. Fail closed rather than alter the template.
        return Err("the gvisor level cannot use a directory root filesystem \
                    (filesystem.rootfs) with this runsc: it has no read-only-lower overlay for \
                    the root alone, and its gofer would create mount points inside the template; \
                    use the container or microvm level for templates"
            .into());
    }
    if plan.workspace.kind == WorkspaceKind::Overlay {
        return Err(
            "the gvisor level cannot give an overlay workspace with this runsc: its \
                    --overlay2 wraps the root or every mount, not one bind, and changes would \
                    not be reported; use workspace mode rw, ro or tmp, or the container level"
                .into(),
        );
    }
    let guest_meta = fs::metadata(guest_bin).map_err(io_err("the guest binary", guest_bin))?;
    if !guest_meta.is_file() {
        return Err(format!("{}: not a regular file", guest_bin.display()));
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating the bundle directory", dir))?;
    let root = dir.join("rootfs");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&root)
        .map_err(io_err("creating", &root))?;
    let mut lay = Layout {
        root,
        mounts: Vec::new(),
    };

    // The plan's steps, in order; binds become OCI mounts.
    for op in &plan.root_ops {
        match op {
            RootOp::Dir { path, mode } => {
                if lay.covering(path).is_none() {
                    lay.ensure(path, Want::Dir, *mode)?;
                }
            }
            RootOp::Symlink { path, target } => {
                let host = lay.parents(path)?;
                std::os::unix::fs::symlink(target, &host).map_err(io_err("symlinking", &host))?;
            }
            RootOp::File {
                path,
                contents,
                mode,
            } => lay.write(path, contents.as_bytes(), *mode)?,
            RootOp::Append {
                path,
                contents,
                mode,
            } => {
                let mut data = lay.read(path)?;
                if !data.is_empty() && !data.ends_with(b"\n") {
                    data.push(b'\n');
                }
                data.extend_from_slice(contents.as_bytes());
                lay.write(path, &data, *mode)?;
            }
            RootOp::CopyFile { source, path } => match fs::symlink_metadata(source) {
                Ok(m) if m.file_type().is_symlink() => {
                    let t = fs::read_link(source).map_err(io_err("reading link", source))?;
                    let host = lay.parents(path)?;
                    std::os::unix::fs::symlink(&t, &host).map_err(io_err("symlinking", &host))?;
                }
                Ok(m) if m.is_file() => {
                    let data = fs::read(source).map_err(io_err("reading", source))?;
                    lay.write(path, &data, 0o644)?;
                }
                _ => {}
            },
            RootOp::Bind(b) => {
                let m = match fs::metadata(&b.source) {
                    Ok(m) => m,
                    Err(_) if b.optional => continue,
                    Err(e) => return Err(format!("mount source {}: {e}", b.source.display())),
                };
                let want = if m.is_dir() { Want::Dir } else { Want::File };
                lay.push(bind(&b.source, &b.target, b.writable, b.device), want)?;
            }
        }
    }

    // /proc, scratch, the guest binary.
    lay.push(
        Mount {
            destination: "/proc".into(),
            kind: "proc",
            source: "proc".into(),
            options: vec!["nosuid".into(), "nodev".into(), "noexec".into()],
        },
        Want::Dir,
    )?;
    lay.ensure(Path::new("/dev"), Want::Dir, 0o755)?;
    // One disk budget, as at the container level (where one tmpfs backs them all): runsc gives
    // each tmpfs its own size, so the budget is split between them and their sum never exceeds it.
    let parts = if plan.workspace.kind == WorkspaceKind::Tmp {
        4
    } else {
        3
    };
    let s = (plan.scratch_bytes / parts) & !4095;
    lay.push(tmpfs(Path::new("/tmp"), s, "1777", None), Want::Dir)?;
    lay.push(
        tmpfs(&plan.home, s, "0700", Some((plan.uid, plan.gid))),
        Want::Dir,
    )?;
    // /dev is runsc's own devtmpfs, so /dev/shm is created in the sandbox's memory.
    lay.mounts
        .push(tmpfs(Path::new("/dev/shm"), s, "1777", None));
    lay.push(
        bind(guest_bin, Path::new(GUEST_PATH), false, false),
        Want::File,
    )?;

    // The workspace, then what is pinned and protected in it.
    let ws = &plan.workspace;
    match ws.kind {
        WorkspaceKind::Tmp => lay.push(
            tmpfs(&ws.target, s, "0700", Some((plan.uid, plan.gid))),
            Want::Dir,
        )?,
        WorkspaceKind::Rw | WorkspaceKind::Ro => {
            let rw = ws.kind == WorkspaceKind::Rw;
            lay.push(bind(&ws.host, &ws.target, rw, false), Want::Dir)?;
            if rw {
                // As at the container level (stockade_jail::rootfs pin/protect): a pinned
                // directory is bound over itself (rw: it can be neither renamed nor removed), a
                // pinned regular file and every protected path are read-only binds over
                // themselves, missing ones are skipped, and a symlink is refused: following it
                // would protect the wrong thing and leave the real one writable (a
                // `.git/hooks -> ../real-hooks` would take a planted hook that git on the host
                // runs).
                let refuse = |rel: &Path| {
                    format!(
                        "refusing to protect {}: it is a symlink (set workspace.protect_git = false to allow)",
                        rel.display()
                    )
                };
                for rel in &ws.pin {
                    let h = ws.host.join(rel);
                    let Ok(m) = fs::symlink_metadata(&h) else {
                        continue;
                    };
                    if m.file_type().is_symlink() {
                        return Err(refuse(rel));
                    }
                    let (writable, want) = if m.is_dir() {
                        (true, Want::Dir)
                    } else {
                        (false, Want::File)
                    };
                    lay.push(bind(&h, &ws.target.join(rel), writable, false), want)?;
                }
                for rel in &ws.protect {
                    let h = ws.host.join(rel);
                    let Ok(m) = fs::symlink_metadata(&h) else {
                        continue;
                    };
                    if m.file_type().is_symlink() {
                        return Err(refuse(rel));
                    }
                    let want = if m.is_dir() { Want::Dir } else { Want::File };
                    lay.push(bind(&h, &ws.target.join(rel), false, false), want)?;
                }
            }
        }
        WorkspaceKind::Overlay => {}
    }

    let nofile = plan
        .rlimits
        .iter()
        .find_map(|r| match r {
            stockade_jail::plan::Rlimit::NoFile(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(1024)
        .min(host_hard_nofile());
    let caps = CAPABILITIES.to_vec();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": [],
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": plan.hostname,
        "mounts": lay.mounts.iter().map(Mount::json).collect::<Vec<_>>(),
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"},
            ],
        },
    });
    let text = serde_json::to_vec_pretty(&config).map_err(|e| format!("config.json: {e}"))?;
    let cfg = dir.join("config.json");
    fs::write(&cfg, text).map_err(io_err("writing", &cfg))?;

    let mut inner = plan.clone();
    inner.uid_map.clear();
    inner.gid_map.clear();
    inner.idmap_host_uid = None;
    inner.rootfs = None;
    inner.root_ops.clear();
    inner.cgroup_procs.clear();
    inner.cgroup_dirs.clear();
    inner.workspace.host = inner.workspace.target.clone();
    inner.workspace.idmap = false;
    inner.landlock = LandlockPlan::default();
    inner.backend = None;
    Ok(inner)
}
