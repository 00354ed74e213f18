//! Builds the sandbox's root filesystem inside its fresh mount namespace and pivots into it.
//!
//! Runs in the sandbox's PID 1 before it drops privileges, as root of the sandbox's own user
//! namespace (no privilege over the host). Order matters and is fixed here:
//!
//! 1. make every inherited mount private, so nothing propagates back to the host;
//! 2. open every bind source as a detached mount tree (`open_tree`) *before* anything is mounted,
//!    so a workspace under the host's /tmp is captured before /tmp is covered, and a path swapped
//!    afterwards cannot redirect the bind;
//! 3. mount the new root (a small tmpfs) on /tmp of this namespace and lay out the plan's steps;
//!    with a directory root filesystem (`plan.rootfs`), the new root is instead an overlay whose
//!    read-only lower layer is that directory and whose upper layer is on the scratch tmpfs, and
//!    the steps add to it without ever following the root filesystem's own symlinks (they would
//!    resolve in the host's view here, before the pivot);
//! 4. one "scratch" tmpfs, sized to the disk budget, backs /tmp, HOME, /dev/shm and an overlay's
//!    upper layer, so the sandbox's ephemeral writes share one hard cap;
//! 5. a fresh /proc (its own PID namespace) with /proc/sys and other knobs read-only and kernel
//!    internals masked, mounted while the host's /proc is still visible (the kernel requires a
//!    fully visible proc to allow a new one in a user namespace);
//! 6. the workspace (rw, ro, overlay or tmp) with `.git` pinned and what git reads settings
//!    and commands from (`hooks`, `config`, `commondir`, ...) read-only;
//! 7. the root itself is made read-only, `pivot_root`, and the old root is detached.
//!
//! A directory root filesystem is vetted on the directory actually opened: see [`crate::rootdir`].
//!
//! Nothing here is visible outside: the mounts die with the namespace, which dies with the
//! sandbox's last process. There is no host-side temp directory to clean up.

use crate::plan::{Bind, RootOp, SandboxPlan, WorkspaceKind};
use crate::rootdir::{Tree, Want, open_rootfs};
use crate::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Where the new root is assembled inside the private mount namespace.
const STAGING: &str = "/tmp";
/// Hidden mount points inside the staging root, removed before the pivot.
const HIDDEN: &str = ".stockade";
/// With a directory root filesystem: where the overlay that becomes the root is mounted, in the
/// staging tmpfs (which is left behind with the old root).
const OVERLAY_ROOT: &str = "root";

/// A setup step that failed: what was being done, on which path, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SetupError {
    pub what: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

pub(crate) fn err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SetupError + 'a {
    move |source| SetupError {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Descriptors opened by the privileged launcher before the sandbox's user namespace existed.
#[derive(Default)]
pub struct PreOpened {
    /// The workspace tree, idmapped so host-root files belong to the sandbox user.
    pub workspace: Option<OwnedFd>,
    /// Idmapped trees for writable extra binds, by target.
    pub binds: Vec<(PathBuf, OwnedFd)>,
}

/// What survives the pivot for the agent: handles on an overlay's layers for the change report.
pub struct BuiltRoot {
    pub overlay_upper: Option<OwnedFd>,
    pub overlay_lower: Option<OwnedFd>,
}

/// Joins `root` and an absolute in-sandbox path.
pub fn inside(root: &Path, p: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in p.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

fn mkdir_p(p: &Path, mode: u32) -> Result<(), SetupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .map_err(err("creating directory", p))
}

fn touch(p: &Path) -> Result<(), SetupError> {
    if let Some(parent) = p.parent() {
        mkdir_p(parent, 0o755)?;
    }
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(drop)
        .map_err(err("creating file", p))
}

fn write_file(p: &Path, contents: &[u8], mode: u32) -> Result<(), SetupError> {
    if let Some(parent) = p.parent() {
        mkdir_p(parent, 0o755)?;
    }
    fs::write(p, contents).map_err(err("writing", p))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(err("chmod", p))
}

fn tmpfs(target: &Path, opts: &str, flags: libc::c_ulong) -> Result<(), SetupError> {
    let data = CString::new(opts).map_err(|_| SetupError {
        what: "mounting tmpfs on",
        path: target.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in options"),
    })?;
    sys::mount(
        Some(c"tmpfs"),
        target,
        Some(c"tmpfs"),
        flags | libc::MS_NOSUID | libc::MS_NODEV,
        Some(&data),
    )
    .map_err(err("mounting tmpfs on", target))
}

/// Opens a bind source as a detached tree with the right attributes.
fn open_bind(b: &Bind) -> Result<Option<OwnedFd>, SetupError> {
    let fd = match sys::open_tree_clone(&b.source, true) {
        Ok(fd) => fd,
        Err(e) if b.optional && e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(err("opening bind source", &b.source)(e)),
    };
    set_bind_attrs(&fd, b.writable, b.device, &b.source)?;
    Ok(Some(fd))
}

pub(crate) fn set_bind_attrs(
    fd: &OwnedFd,
    writable: bool,
    device: bool,
    what: &Path,
) -> Result<(), SetupError> {
    let mut set = MOUNT_ATTR_NOSUID;
    if !writable {
        set |= MOUNT_ATTR_RDONLY;
    }
    if !device {
        set |= MOUNT_ATTR_NODEV;
    }
    sys::mount_setattr_fd(fd, set, 0, true).map_err(err("restricting bind of", what))
}

fn attach(fd: &OwnedFd, target: &Path, is_dir: bool) -> Result<(), SetupError> {
    if is_dir {
        mkdir_p(target, 0o755)?
    } else {
        touch(target)?
    }
    sys::move_mount_fd(fd, target).map_err(err("attaching bind at", target))
}

fn is_dir_fd(fd: &OwnedFd) -> bool {
    // SAFETY: `st` is a valid out-pointer; `fd` is a live descriptor borrowed for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above; fstat writes only into `st`.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    r == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
}

enum Staged {
    Op(RootOp),
    Bind(Bind, OwnedFd),
    Copy(PathBuf, Vec<u8>),
    Link(PathBuf, PathBuf),
}

/// Builds the root described by `plan` and pivots into it. On return the process's root and
/// working directory are the sandbox's.
pub fn build(plan: &SandboxPlan, mut pre: PreOpened) -> Result<BuiltRoot, SetupError> {
    let slash = Path::new("/");
    sys::mount(None, slash, None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(err("making private", slash))?;

    // Phase 1: capture every host source before anything is covered.
    let mut staged = Vec::with_capacity(plan.root_ops.len());
    for op in &plan.root_ops {
        match op {
            RootOp::Bind(b) => {
                let pos = pre.binds.iter().position(|(t, _)| *t == b.target);
                let fd = match pos {
                    Some(i) => Some(pre.binds.swap_remove(i).1),
                    None => open_bind(b)?,
                };
                if let Some(fd) = fd {
                    staged.push(Staged::Bind(b.clone(), fd));
                }
            }
            RootOp::CopyFile { source, path } => match fs::symlink_metadata(source) {
                Ok(m) if m.file_type().is_symlink() => {
                    let t = fs::read_link(source).map_err(err("reading link", source))?;
                    staged.push(Staged::Link(path.clone(), t));
                }
                Ok(m) if m.is_file() => {
                    let data = fs::read(source).map_err(err("reading", source))?;
                    staged.push(Staged::Copy(path.clone(), data));
                }
                _ => {}
            },
            other => staged.push(Staged::Op(other.clone())),
        }
    }
    let rootfs_tree = match &plan.rootfs {
        Some(dir) => Some(open_rootfs(plan, dir)?),
        None => None,
    };
    let ws = &plan.workspace;
    let ws_tree = match ws.kind {
        WorkspaceKind::Tmp => None,
        _ => Some(match pre.workspace.take() {
            Some(fd) => {
                set_bind_attrs(&fd, ws.kind == WorkspaceKind::Rw, false, &ws.host)?;
                fd
            }
            None => {
                let fd = sys::open_tree_clone(&ws.host, true)
                    .map_err(err("opening workspace", &ws.host))?;
                set_bind_attrs(&fd, ws.kind == WorkspaceKind::Rw, false, &ws.host)?;
                fd
            }
        }),
    };

    // Phase 2: the new root: the staging tmpfs itself, or an overlay on the root filesystem.
    let base = Path::new(STAGING);
    tmpfs(base, "size=4m,mode=0755", 0)?;
    let hidden = base.join(HIDDEN);
    let (root, early_scratch) = match rootfs_tree {
        None => (base.to_path_buf(), None),
        Some(lower) => {
            // The overlay's upper layer lives on the scratch tmpfs, so scratch comes first here.
            let scratch = make_scratch(&hidden, plan.scratch_bytes)?;
            let root = base.join(OVERLAY_ROOT);
            mount_root_overlay(lower, &hidden, &scratch, &root)?;
            (root, Some(scratch))
        }
    };
    let root = root.as_path();
    let tree = Tree {
        root,
        strict: plan.rootfs.is_some(),
    };
    for s in staged {
        match s {
            Staged::Op(RootOp::Dir { path, mode }) => {
                let p = inside(root, &path);
                tree.guard(&p, Want::Dir)?;
                mkdir_p(&p, mode)?
            }
            Staged::Op(RootOp::Symlink { path, target }) | Staged::Link(path, target) => {
                let p = inside(root, &path);
                tree.guard(&p, Want::Link)?;
                if let Some(parent) = p.parent() {
                    mkdir_p(parent, 0o755)?;
                }
                std::os::unix::fs::symlink(&target, &p).map_err(err("creating symlink", &p))?;
            }
            Staged::Op(RootOp::File {
                path,
                contents,
                mode,
            }) => {
                let p = inside(root, &path);
                tree.guard(&p, Want::File)?;
                write_file(&p, contents.as_bytes(), mode)?
            }
            Staged::Op(RootOp::Append {
                path,
                contents,
                mode,
            }) => {
                let p = inside(root, &path);
                tree.guard(&p, Want::File)?;
                let mut data = read_small(&p)?;
                if !data.is_empty() && !data.ends_with(b"\n") {
                    data.push(b'\n');
                }
                data.extend_from_slice(contents.as_bytes());
                write_file(&p, &data, mode)?
            }
            Staged::Copy(path, data) => {
                let p = inside(root, &path);
                tree.guard(&p, Want::File)?;
                write_file(&p, &data, 0o644)?
            }
            Staged::Bind(b, fd) => {
                let p = inside(root, &b.target);
                let is_dir = is_dir_fd(&fd);
                tree.guard(&p, if is_dir { Want::Dir } else { Want::File })?;
                attach(&fd, &p, is_dir)?
            }
            Staged::Op(RootOp::Bind(_) | RootOp::CopyFile { .. }) => {}
        }
    }

    // Phase 3: scratch (the disk budget), /tmp, HOME, /dev, /proc.
    let scratch = match early_scratch {
        Some(s) => s,
        None => make_scratch(&hidden, plan.scratch_bytes)?,
    };
    chown(&scratch.join("home"), plan.uid, plan.gid)?;
    chown(&scratch.join("ws"), plan.uid, plan.gid)?;
    let home = inside(root, &plan.home);
    for (src, dst) in [("tmp", root.join("tmp")), ("home", home)] {
        tree.guard(&dst, Want::Dir)?;
        bind_path(&scratch.join(src), &dst)?;
    }
    tree.guard(&root.join("dev"), Want::Dir)?;
    build_dev(root, &scratch)?;
    tree.guard(&root.join("proc"), Want::Dir)?;
    build_proc(root)?;

    // Phase 4: the workspace.
    let target = inside(root, &ws.target);
    tree.guard(&target, Want::Dir)?;
    let mut built = BuiltRoot {
        overlay_upper: None,
        overlay_lower: None,
    };
    match (ws.kind, ws_tree) {
        (WorkspaceKind::Tmp, _) => bind_path(&scratch.join("ws"), &target)?,
        (WorkspaceKind::Overlay, Some(tree)) => {
            let lower = hidden.join("lower");
            attach(&tree, &lower, true)?;
            // The overlay's root takes the upper directory's owner and mode: copy the lower's
            // (ids that are not mapped here read as the overflow id and are left as they are).
            overlay(
                &lower,
                &scratch.join("upper"),
                &scratch.join("work"),
                &target,
            )?;
            built.overlay_upper = Some(open_path(&scratch.join("upper"))?);
            built.overlay_lower = Some(open_path(&lower)?);
            sys::umount2(&lower, libc::MNT_DETACH).map_err(err("detaching", &lower))?;
        }
        (_, Some(tree)) => attach(&tree, &target, true)?,
        (_, None) => {}
    }
    if ws.kind == WorkspaceKind::Rw {
        for rel in &ws.pin {
            pin(&target, rel)?;
        }
        for rel in &ws.protect {
            protect(&target, rel)?;
        }
    }

    // Phase 5: hide the staging mounts, seal the root (an overlay root too: writes go to the
    // usual writable places only), pivot.
    sys::umount2(&scratch, libc::MNT_DETACH).map_err(err("detaching", &scratch))?;
    fs::remove_dir_all(&hidden).map_err(err("removing", &hidden))?;
    sys::mount_setattr_path(
        root,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        false,
    )
    .map_err(err("sealing root", root))?;
    std::env::set_current_dir(root).map_err(err("entering", root))?;
    sys::pivot_root_here().map_err(err("pivot_root into", root))?;
    sys::umount2(Path::new("."), libc::MNT_DETACH).map_err(err("detaching old root", slash))?;
    std::env::set_current_dir(slash).map_err(err("entering", slash))?;
    Ok(built)
}

/// The scratch tmpfs (the disk budget) under `hidden`, with its usual directories.
fn make_scratch(hidden: &Path, bytes: u64) -> Result<PathBuf, SetupError> {
    let scratch = hidden.join("scratch");
    mkdir_p(&scratch, 0o700)?;
    tmpfs(&scratch, &format!("size={},mode=0755", bytes.max(4096)), 0)?;
    for d in [
        "tmp",
        "home",
        "shm",
        "upper",
        "work",
        "ws",
        "root-upper",
        "root-work",
    ] {
        mkdir_p(&scratch.join(d), 0o755)?;
    }
    for d in ["tmp", "shm"] {
        fs::set_permissions(scratch.join(d), fs::Permissions::from_mode(0o1777))
            .map_err(err("chmod", &scratch))?;
    }
    Ok(scratch)
}

/// Mounts an overlay of `lower` (a directory already attached here) on `target`. The overlay's
/// root takes the upper directory's owner and mode, so the lower's are copied to it first (ids
/// that are not mapped here read as the overflow id and are left as they are).
fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::MetadataExt;
    const OVERFLOW: u32 = 65534;
    let lm = fs::metadata(lower).map_err(err("inspecting", lower))?;
    let uid = (lm.uid() != OVERFLOW).then_some(lm.uid());
    let gid = (lm.gid() != OVERFLOW).then_some(lm.gid());
    std::os::unix::fs::chown(upper, uid, gid).map_err(err("chown", upper))?;
    fs::set_permissions(upper, fs::Permissions::from_mode(lm.mode() & 0o7777))
        .map_err(err("chmod", upper))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = CString::new(opts).map_err(|_| SetupError {
        what: "mounting overlay on",
        path: target.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
    })?;
    mkdir_p(target, 0o755)?;
    sys::mount(
        Some(c"overlay"),
        target,
        Some(c"overlay"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&data),
    )
    .map_err(err("mounting overlay on", target))
}

/// The root overlay: `lower` (the root filesystem's detached tree) attached under `hidden` only
/// long enough to be named as the lower layer, the upper layer on the scratch tmpfs.
fn mount_root_overlay(
    lower: OwnedFd,
    hidden: &Path,
    scratch: &Path,
    root: &Path,
) -> Result<(), SetupError> {
    let at = hidden.join("rootfs");
    attach(&lower, &at, true)?;
    drop(lower);
    overlay(
        &at,
        &scratch.join("root-upper"),
        &scratch.join("root-work"),
        root,
    )?;
    sys::umount2(&at, libc::MNT_DETACH).map_err(err("detaching", &at))
}

/// Most bytes of a root filesystem's file that setup reads back (its CA bundle: ~220 KiB).
const READ_LIMIT: u64 = 16 << 20;

/// A regular file's contents (empty when missing), refusing more than [`READ_LIMIT`] bytes.
/// Callers have made sure no symlink leads there (see `Tree::guard`).
fn read_small(p: &Path) -> Result<Vec<u8>, SetupError> {
    use std::io::Read;
    let f = match fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err("reading", p)(e)),
    };
    let mut data = Vec::new();
    f.take(READ_LIMIT + 1)
        .read_to_end(&mut data)
        .map_err(err("reading", p))?;
    if data.len() as u64 > READ_LIMIT {
        return Err(err("reading", p)(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than 16 MiB",
        )));
    }
    Ok(data)
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), SetupError> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(err("chown", p))
}

fn open_path(p: &Path) -> Result<OwnedFd, SetupError> {
    fs::File::open(p)
        .map(OwnedFd::from)
        .map_err(err("opening", p))
}

/// Plain recursive bind of a path already inside this namespace.
fn bind_path(src: &Path, dst: &Path) -> Result<(), SetupError> {
    let fd = sys::open_tree_clone(src, true).map_err(err("opening", src))?;
    set_bind_attrs(&fd, true, false, src)?;
    attach(&fd, dst, true)
}

/// Makes the directory `root/rel` a mount point of itself, still writable: it can then be
/// neither renamed nor removed (EBUSY), so what is protected under it stays where git looks.
/// Missing: skipped. A regular file there (a worktree's `gitdir:` pointer) is made read-only
/// instead; a symlink is refused.
fn pin(ws: &Path, rel: &Path) -> Result<(), SetupError> {
    let p = ws.join(rel);
    let meta = match fs::symlink_metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("inspecting", &p)(e)),
    };
    if !meta.is_dir() {
        return protect(ws, rel);
    }
    let fd = sys::open_tree_clone(&p, true).map_err(err("opening", &p))?;
    set_bind_attrs(&fd, true, false, &p)?;
    sys::move_mount_fd(&fd, &p).map_err(err("pinning", &p))
}

/// Makes `root/rel` read-only in place. A symlink there is refused: following it could protect
/// the wrong file and leave the real one writable.
fn protect(ws: &Path, rel: &Path) -> Result<(), SetupError> {
    let p = ws.join(rel);
    let meta = match fs::symlink_metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("inspecting", &p)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(SetupError {
            what: "refusing to protect",
            path: rel.display().to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symlink (set workspace.protect_git = false to allow)",
            ),
        });
    }
    let fd = sys::open_tree_clone(&p, true).map_err(err("opening", &p))?;
    set_bind_attrs(&fd, false, false, &p)?;
    sys::move_mount_fd(&fd, &p).map_err(err("protecting", &p))
}

/// A minimal /dev: a few host device nodes, a private devpts, /dev/shm from the scratch budget.
fn build_dev(root: &Path, scratch: &Path) -> Result<(), SetupError> {
    let dev = root.join("dev");
    mkdir_p(&dev, 0o755)?;
    tmpfs(&dev, "size=64k,mode=0755", libc::MS_NOEXEC)?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let src = Path::new("/dev").join(node);
        let fd = sys::open_tree_clone(&src, false).map_err(err("opening device", &src))?;
        sys::mount_setattr_fd(&fd, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0, false)
            .map_err(err("restricting", &src))?;
        attach(&fd, &dev.join(node), false)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts, 0o755)?;
    sys::mount(
        Some(c"devpts"),
        &pts,
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(err("mounting devpts on", &pts))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(to, &p).map_err(err("creating symlink", &p))?;
    }
    bind_path(&scratch.join("shm"), &dev.join("shm"))?;
    sys::mount_setattr_path(&dev, MOUNT_ATTR_RDONLY, false).map_err(err("sealing", &dev))
}

/// Files and directories of /proc that expose or change host kernel state.
const PROC_READONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
    "kallsyms",
];
const PROC_MASKED_DIRS: &[&str] = &["acpi", "scsi", "asound", "driver"];

fn build_proc(root: &Path) -> Result<(), SetupError> {
    let proc_ = root.join("proc");
    mkdir_p(&proc_, 0o555)?;
    sys::mount(
        Some(c"proc"),
        &proc_,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(err("mounting proc on", &proc_))?;
    for name in PROC_READONLY {
        let p = proc_.join(name);
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        let fd = sys::open_tree_clone(&p, true).map_err(err("opening", &p))?;
        sys::mount_setattr_fd(
            &fd,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            0,
            true,
        )
        .map_err(err("restricting", &p))?;
        sys::move_mount_fd(&fd, &p).map_err(err("making read-only", &p))?;
    }
    let null = root.join("dev/null");
    for name in PROC_MASKED_FILES {
        let p = proc_.join(name);
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        let fd = sys::open_tree_clone(&null, false).map_err(err("opening", &null))?;
        sys::move_mount_fd(&fd, &p).map_err(err("masking", &p))?;
    }
    for name in PROC_MASKED_DIRS {
        let p = proc_.join(name);
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        tmpfs(&p, "size=4k,mode=0555", libc::MS_RDONLY | libc::MS_NOEXEC)?;
    }
    Ok(())
}
