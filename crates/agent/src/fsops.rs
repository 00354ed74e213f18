//! File operations of session mode ([`FsOp`]), as plain functions over absolute paths.
//!
//! They run inside the sandbox, in the agent (PID 1), under the sandbox's own confinement: its
//! uid, mount namespace, Landlock domain and seccomp filter. Whatever a path names, the kernel
//! decides with exactly the rights a process of the sandbox has; `..` and symlinks resolve
//! normally, since the sandbox's namespace is the boundary. The only data that crosses is
//! metadata and, for [`FsOp::Open`], a descriptor of a regular file: file contents never pass
//! through the agent.
//!
//! Guarantees:
//! - A path must be absolute and free of NUL bytes (else `EINVAL`). Every path is resolved with
//!   `RESOLVE_NO_MAGICLINKS`: the agent's own `/proc/self/fd/*`, `cwd`, `root` and `exe` links
//!   (which would reach the agent's descriptors, not the sandbox's files) are never followed
//!   (`ELOOP`), and nothing on procfs is served (`EACCES`): the agent's `/proc/self` is not a
//!   sandbox process's.
//! - `Stat` and `Remove` never follow a final symlink; `List` and `Remove` never follow one when
//!   descending. `Remove` checks each directory it climbs back to is the one it came down from
//!   (a tree renamed under it ends the removal with `EBUSY`, it never strays).
//! - `Open` hands out regular files only (FIFOs, devices and sockets are refused with `EINVAL`
//!   before anything is read or written; opens are non-blocking, so a FIFO cannot hang the agent).
//! - Errors carry the errno inside and a message naming the path: `/x/y: No such file or directory`.
//! - Paths in replies are canonical (the parent as the kernel resolved it, then the name);
//!   names that are not UTF-8 are shown lossily.
//!
//! Limits: `List` returns at most [`MAX_LIST_ENTRIES`] entries in path order (component-wise:
//! a directory's entries right after it) and descends at most [`MAX_LIST_DEPTH`] levels. A
//! long operation (removing a huge tree) holds the agent's loop until it ends.
//! Tested by the unit tests in `fsops_tests.rs` on temporary directories (no root needed).

use crate::protocol::{Entry, EntryKind, FsOp, FsReply, MAX_LIST_ENTRIES};
use crate::watch::Watcher;
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::collections::BinaryHeap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Deepest `List` descends (deeper requests are served to this depth).
pub const MAX_LIST_DEPTH: u32 = 64;
/// Most directory entries one `Remove` visits (rescans included) before it gives up: a tree
/// that keeps growing under it cannot hold the agent forever.
const REMOVE_BUDGET: u64 = 20_000_000;
const RESOLVE: ResolveFlags = ResolveFlags::NO_MAGICLINKS;

/// Set by the gvisor level's agent: runsc 2022 has no openat2 (ENOSYS). There, and only there,
/// a plain openat replaces it: magic links cannot lead out of a gVisor sandbox (its /proc shows
/// only the sandbox's own processes), and what is opened is still checked not to be on /proc.
static OPENAT_FALLBACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets file operations use openat where openat2 does not exist (gvisor level only).
pub fn allow_openat_fallback() {
    OPENAT_FALLBACK.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// openat2 with [`RESOLVE`], or (gvisor level, ENOSYS) openat refusing results on /proc.
fn open2(
    dir: impl AsFd,
    path: impl rustix::path::Arg + Copy,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    match rustix::fs::openat2(&dir, path, flags, mode, RESOLVE) {
        Err(Errno::NOSYS) if OPENAT_FALLBACK.load(std::sync::atomic::Ordering::Relaxed) => {
            let fd = rustix::fs::openat(&dir, path, flags, mode)?;
            const PROC_SUPER_MAGIC: i64 = 0x9fa0;
            match rustix::fs::fstatfs(&fd) {
                Ok(st) if st.f_type != PROC_SUPER_MAGIC => Ok(fd),
                Ok(_) => Err(Errno::XDEV),
                Err(e) => Err(e),
            }
        }
        r => r,
    }
}

/// A failed operation: the errno inside and a message naming the path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

impl FsError {
    /// `path: <strerror>`.
    pub fn new(path: &str, e: Errno) -> FsError {
        FsError::errno(path, e.raw_os_error())
    }

    pub fn errno(path: &str, errno: i32) -> FsError {
        FsError {
            errno,
            message: format!("{path}: {}", strerror(errno)),
        }
    }

    /// `path: why`.
    pub fn with(path: &str, errno: i32, why: &str) -> FsError {
        FsError {
            errno,
            message: format!("{path}: {why}"),
        }
    }
}

impl From<FsError> for FsReply {
    fn from(e: FsError) -> FsReply {
        FsReply::Failed {
            errno: e.errno,
            message: e.message,
        }
    }
}

/// The error text without std's " (os error N)" suffix.
fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Runs one operation. `Open` returns the descriptor to attach to the reply.
pub fn run(op: &FsOp, watcher: &mut Watcher) -> (FsReply, Option<OwnedFd>) {
    let reply = match op {
        FsOp::Stat { path } => stat(path).map(|entry| FsReply::Entry { entry }),
        FsOp::List { path, depth } => list(path, *depth, MAX_LIST_ENTRIES)
            .map(|(entries, truncated)| FsReply::List { entries, truncated }),
        FsOp::Mkdir { path } => {
            mkdir(path).map(|(created, entry)| FsReply::Mkdir { created, entry })
        }
        FsOp::Move { from, to } => rename(from, to).map(|entry| FsReply::Moved { entry }),
        FsOp::Remove { path } => remove(path).map(|()| FsReply::Removed),
        FsOp::Open { path, write } => {
            return match open(path, *write) {
                Ok((fd, entry)) => (FsReply::Opened { entry }, Some(fd)),
                Err(e) => (e.into(), None),
            };
        }
        FsOp::Watch { path, recursive } => watcher
            .watch(path, *recursive)
            .map(|watch| FsReply::Watching { watch }),
        FsOp::Unwatch { watch } => watcher.unwatch(*watch).map(|()| FsReply::Unwatched),
    };
    (reply.unwrap_or_else(FsReply::from), None)
}

/// Refuses relative paths and NUL bytes.
pub fn check_path(path: &str) -> Result<(), FsError> {
    if path.contains('\0') {
        return Err(FsError::with(
            &path.replace('\0', "\\0"),
            libc::EINVAL,
            "path contains a NUL byte",
        ));
    }
    if !path.starts_with('/') {
        return Err(FsError::with(path, libc::EINVAL, "path must be absolute"));
    }
    Ok(())
}

/// `base/name` (base is absolute).
pub(crate) fn join(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// Splits an absolute path into its parent and last component (None for the root).
fn split(path: &str) -> (&str, Option<&str>) {
    let t = path.trim_end_matches('/');
    match t.rfind('/') {
        None => ("/", None),
        Some(i) => (if i == 0 { "/" } else { &t[..i] }, Some(&t[i + 1..])),
    }
}

fn cstring(path: &str, s: &str) -> Result<CString, FsError> {
    CString::new(s).map_err(|_| FsError::with(path, libc::EINVAL, "path contains a NUL byte"))
}

/// Opens a directory by absolute path (symlinks followed, magic links refused).
pub(crate) fn open_dir(path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    open2(
        CWD,
        path,
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the subdirectory `name` of `dir` without following a symlink there.
pub(crate) fn open_subdir(dir: impl AsFd, name: &CStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether `fd` lies on procfs.
pub(crate) fn on_proc(fd: impl AsFd) -> bool {
    rustix::fs::fstatfs(fd)
        .map(|s| s.f_type == libc::PROC_SUPER_MAGIC)
        .unwrap_or(true)
}

pub(crate) fn refuse_proc(fd: impl AsFd, path: &str) -> Result<(), FsError> {
    if on_proc(fd) {
        return Err(FsError::with(
            path,
            libc::EACCES,
            "file operations under /proc are not served",
        ));
    }
    Ok(())
}

/// The path the kernel resolved `fd` to (inside the sandbox: the agent's root is its root).
pub(crate) fn fd_path(fd: impl AsFd) -> Result<String, Errno> {
    let link = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let s = rustix::fs::readlinkat(CWD, link.as_str(), Vec::new())?;
    let s = String::from_utf8_lossy(s.as_bytes()).into_owned();
    if s.ends_with(" (deleted)") || !s.starts_with('/') {
        return Err(Errno::NOENT);
    }
    Ok(s)
}

/// An absolute path resolved to its parent directory and last component.
struct Target {
    /// The parent (O_PATH), or the root itself when `name` is None.
    parent: OwnedFd,
    name: Option<CString>,
    /// Canonical path of the target.
    path: String,
}

impl Target {
    fn name(&self) -> &CStr {
        self.name.as_deref().unwrap_or(c".")
    }
}

/// Resolves everything but the last component (which is neither followed nor required to
/// exist). A last component `.` or `..` is resolved too.
fn resolve(path: &str) -> Result<Target, FsError> {
    check_path(path)?;
    let (parent, last) = split(path);
    let Some(last) = last.filter(|l| *l != "." && *l != "..") else {
        // "/", "/a/.", "/a/..": the directory itself, then its canonical parent and name.
        let fd = open_dir(path, OFlags::PATH).map_err(|e| FsError::new(path, e))?;
        refuse_proc(&fd, path)?;
        let canon = fd_path(&fd).map_err(|e| FsError::new(path, e))?;
        return match split(&canon) {
            (_, None) => Ok(Target {
                parent: fd,
                name: None,
                path: canon,
            }),
            (p, Some(n)) => {
                let parent = open_dir(p, OFlags::PATH).map_err(|e| FsError::new(path, e))?;
                Ok(Target {
                    parent,
                    name: Some(cstring(path, n)?),
                    path: canon.clone(),
                })
            }
        };
    };
    let fd = open_dir(parent, OFlags::PATH).map_err(|e| FsError::new(path, e))?;
    refuse_proc(&fd, path)?;
    let canon = fd_path(&fd).map_err(|e| FsError::new(path, e))?;
    Ok(Target {
        parent: fd,
        name: Some(cstring(path, last)?),
        path: join(&canon, last.as_bytes()),
    })
}

fn kind_of(mode: u32) -> EntryKind {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn entry_from(st: &Stat, path: String, symlink_target: Option<String>) -> Entry {
    let name = match split(&path) {
        (_, Some(n)) => n.to_string(),
        (_, None) => "/".to_string(),
    };
    Entry {
        name,
        path,
        kind: kind_of(st.st_mode),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        symlink_target,
    }
}

/// lstat of `name` in `dir`, as an entry at `path`.
fn entry_at(dir: impl AsFd, name: &CStr, path: String) -> Result<Entry, Errno> {
    let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let target = if kind_of(st.st_mode) == EntryKind::Symlink {
        rustix::fs::readlinkat(&dir, name, Vec::new())
            .ok()
            .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
    } else {
        None
    };
    Ok(entry_from(&st, path, target))
}

/// `Stat`: lstat (a final symlink is described, not followed).
pub fn stat(path: &str) -> Result<Entry, FsError> {
    let t = resolve(path)?;
    entry_at(&t.parent, t.name(), t.path.clone()).map_err(|e| FsError::new(path, e))
}

/// The `keep` smallest names of a directory (not `.`/`..`), largest first (pop gives the next).
fn sorted_names(dir: impl AsFd, keep: usize) -> Result<Vec<CString>, Errno> {
    let mut heap: BinaryHeap<CString> = BinaryHeap::new();
    let mut d = Dir::read_from(dir)?;
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name();
        if n == c"." || n == c".." {
            continue;
        }
        heap.push(n.to_owned());
        if heap.len() > keep {
            heap.pop();
        }
    }
    let mut v = heap.into_sorted_vec();
    v.reverse();
    Ok(v)
}

/// `List`: entries under `path` (followed if a symlink), `depth` levels down, in path order;
/// at most `limit` of them, and whether there were more.
pub fn list(path: &str, depth: u32, limit: usize) -> Result<(Vec<Entry>, bool), FsError> {
    check_path(path)?;
    if depth == 0 {
        return Err(FsError::with(
            path,
            libc::EINVAL,
            "depth must be at least 1",
        ));
    }
    let depth = depth.min(MAX_LIST_DEPTH);
    let root = open_dir(path, OFlags::RDONLY).map_err(|e| FsError::new(path, e))?;
    refuse_proc(&root, path)?;
    let canon = fd_path(&root).map_err(|e| FsError::new(path, e))?;
    struct Frame {
        dir: OwnedFd,
        path: String,
        level: u32,
        names: Vec<CString>,
    }
    let names = sorted_names(&root, limit.saturating_add(1)).map_err(|e| FsError::new(path, e))?;
    let mut stack = vec![Frame {
        dir: root,
        path: canon,
        level: 1,
        names,
    }];
    let mut out = Vec::new();
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            stack.pop();
            continue;
        };
        if out.len() >= limit {
            return Ok((out, true));
        }
        let p = join(&top.path, name.as_bytes());
        let entry = match entry_at(&top.dir, &name, p.clone()) {
            Ok(e) => e,
            Err(Errno::NOENT) => continue, // removed while we listed
            Err(e) => return Err(FsError::new(&p, e)),
        };
        let descend = entry.kind == EntryKind::Dir && top.level < depth;
        let level = top.level + 1;
        out.push(entry);
        if !descend {
            continue;
        }
        // An unreadable, vanished or procfs subdirectory is listed but not entered.
        let Ok(sub) = open_subdir(&top.dir, &name) else {
            continue;
        };
        if on_proc(&sub) {
            continue;
        }
        let keep = limit.saturating_sub(out.len()).saturating_add(1);
        let Ok(names) = sorted_names(&sub, keep) else {
            continue;
        };
        stack.push(Frame {
            dir: sub,
            path: p,
            level,
            names,
        });
    }
    Ok((out, false))
}

/// Directories a walk created, deepest last, to take back if the operation then fails.
#[derive(Default)]
struct Created(Vec<String>);

impl Created {
    /// Removes them again (only while empty: nothing else is ever removed).
    fn undo(self) {
        for p in self.0.iter().rev() {
            let _ = rustix::fs::unlinkat(CWD, p.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

/// `mkdir -p`: creates `path` and its missing parents (0755 before the umask); returns the
/// directory (O_PATH), whether the last component was created, and what was created. A
/// non-directory in the way is ENOTDIR, or EEXIST at the last component when `asked` (the
/// directory itself was asked for, not as a parent).
fn mkdir_all(path: &str, asked: bool) -> Result<(OwnedFd, bool, Created), FsError> {
    check_path(path)?;
    let mut cur = open_dir("/", OFlags::PATH).map_err(|e| FsError::new("/", e))?;
    let mut shown = String::new();
    let mut created = Created::default();
    let mut last_created = false;
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        shown.push('/');
        shown.push_str(c);
        let fail = |created: Created, e: FsError| {
            created.undo();
            Err(e)
        };
        let name = match cstring(path, c) {
            Ok(n) => n,
            Err(e) => return fail(created, e),
        };
        last_created = match rustix::fs::mkdirat(&cur, &name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {
                let canon = fd_path(&cur).unwrap_or_default();
                created.0.push(join(&canon, name.as_bytes()));
                true
            }
            Err(Errno::EXIST) => false,
            Err(e) => return fail(created, FsError::new(&shown, e)),
        };
        // A symlink to a directory is followed, as `mkdir -p` does; anything else in the way
        // is an error: ENOTDIR for a parent, EEXIST for the directory asked for.
        cur = match open2(
            &cur,
            &name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOTDIR) if last && asked => {
                return fail(created, FsError::errno(&shown, libc::EEXIST));
            }
            Err(e) => return fail(created, FsError::new(&shown, e)),
        };
        if let Err(e) = refuse_proc(&cur, &shown) {
            return fail(created, e);
        }
    }
    Ok((cur, last_created, created))
}

/// `Mkdir`: creates the directory and its missing parents; `created` is false when it
/// already existed as a directory.
pub fn mkdir(path: &str) -> Result<(bool, Entry), FsError> {
    let (fd, created, _) = mkdir_all(path, true)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| FsError::new(path, e))?;
    let canon = fd_path(&fd).map_err(|e| FsError::new(path, e))?;
    Ok((created, entry_from(&st, canon, None)))
}

/// `Move`: rename(2) of `from` to `to` (replacing what rename replaces), creating the missing
/// parents of `to` (taken back if the rename fails). Replies with the destination's entry.
pub fn rename(from: &str, to: &str) -> Result<Entry, FsError> {
    check_path(to)?;
    let src = resolve(from)?;
    let Some(sname) = src.name.as_deref() else {
        return Err(FsError::errno(from, libc::EBUSY));
    };
    rustix::fs::statat(&src.parent, sname, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FsError::new(from, e))?;
    let (parent, last) = split(to);
    let last = last.unwrap_or(".");
    let (pfd, _, created) = mkdir_all(parent, false)?;
    let lname = cstring(to, last)?;
    if let Err(e) = rustix::fs::renameat(&src.parent, sname, &pfd, &lname) {
        created.undo();
        return Err(FsError::with(
            &format!("{from} -> {to}"),
            e.raw_os_error(),
            &strerror(e.raw_os_error()),
        ));
    }
    let canon = fd_path(&pfd).map_err(|e| FsError::new(to, e))?;
    entry_at(&pfd, &lname, join(&canon, last.as_bytes())).map_err(|e| FsError::new(to, e))
}

/// `Remove`: unlinks a file or symlink (never its target), or removes a directory and
/// everything under it without following any symlink.
pub fn remove(path: &str) -> Result<(), FsError> {
    let t = resolve(path)?;
    let Some(name) = t.name.as_deref() else {
        return Err(FsError::with(path, libc::EBUSY, "refusing to remove /"));
    };
    let st = rustix::fs::statat(&t.parent, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FsError::new(path, e))?;
    if kind_of(st.st_mode) == EntryKind::Dir {
        remove_tree(&t.parent, name, path)
    } else {
        rustix::fs::unlinkat(&t.parent, name, AtFlags::empty()).map_err(|e| FsError::new(path, e))
    }
}

fn identity(fd: impl AsFd) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Removes the directory `name` of `top` and its contents, holding one directory open at a time
/// (no recursion: the depth of the tree costs neither stack nor descriptors).
fn remove_tree(top: &OwnedFd, name: &CStr, shown: &str) -> Result<(), FsError> {
    // The directories from `name` down to the current one: their names and identities.
    let mut stack: Vec<(CString, (u64, u64))> = Vec::new();
    let at = |stack: &[(CString, (u64, u64))], leaf: Option<&CStr>| {
        let mut p = shown.trim_end_matches('/').to_string();
        for (n, _) in stack.iter().skip(1) {
            p = join(&p, n.as_bytes());
        }
        if let Some(l) = leaf {
            p = join(&p, l.to_bytes());
        }
        p
    };
    let mut cur = open_subdir(top, name).map_err(|e| FsError::new(shown, e))?;
    refuse_proc(&cur, shown)?;
    stack.push((
        name.to_owned(),
        identity(&cur).map_err(|e| FsError::new(shown, e))?,
    ));
    let mut budget = REMOVE_BUDGET;
    loop {
        // Unlink what is not a directory; stop at the first subdirectory and go down into it.
        let mut sub = None;
        let mut dir = Dir::read_from(&cur).map_err(|e| FsError::new(&at(&stack, None), e))?;
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(|e| FsError::new(&at(&stack, None), e))?;
            let n = ent.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return Err(FsError::with(
                    shown,
                    libc::EBUSY,
                    "gave up: entries keep appearing while it is being removed",
                ));
            }
            let is_dir = match ent.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&cur, n, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| kind_of(st.st_mode) == EntryKind::Dir),
                _ => false,
            };
            if is_dir {
                sub = Some(n.to_owned());
                break;
            }
            match rustix::fs::unlinkat(&cur, n, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(FsError::new(&at(&stack, Some(n)), e)),
            }
        }
        drop(dir);
        if let Some(n) = sub {
            match open_subdir(&cur, &n) {
                Ok(fd) => {
                    refuse_proc(&fd, &at(&stack, Some(&n)))?;
                    let id = identity(&fd).map_err(|e| FsError::new(&at(&stack, Some(&n)), e))?;
                    stack.push((n, id));
                    cur = fd;
                }
                // Gone or replaced by a non-directory since: the next scan sees what it is now.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(FsError::new(&at(&stack, Some(&n)), e)),
            }
            continue;
        }
        // `cur` is empty: remove it from its parent, then carry on in the parent.
        let here = at(&stack, None);
        let Some((done, _)) = stack.pop() else {
            return Ok(());
        };
        let Some((_, parent_id)) = stack.last() else {
            return rustix::fs::unlinkat(top, &done, AtFlags::REMOVEDIR)
                .map_err(|e| FsError::new(&here, e));
        };
        let parent = rustix::fs::openat(
            &cur,
            c"..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::new(&here, e))?;
        if identity(&parent).ok() != Some(*parent_id) {
            return Err(FsError::with(
                &here,
                libc::EBUSY,
                "moved while it was being removed; stopped",
            ));
        }
        rustix::fs::unlinkat(&parent, &done, AtFlags::REMOVEDIR)
            .map_err(|e| FsError::new(&here, e))?;
        cur = parent;
    }
}

/// `Open`: a regular file for reading, or for writing (created 0644 with missing parents
/// 0755, truncated). The descriptor is blocking, close-on-exec, and never a FIFO, device or
/// socket; it never becomes the agent's controlling terminal.
pub fn open(path: &str, write: bool) -> Result<(OwnedFd, Entry), FsError> {
    let (parent, name, canon, created) = if write {
        check_path(path)?;
        let (p, last) = split(path);
        let Some(last) = last.filter(|l| *l != "." && *l != ".." && !path.ends_with('/')) else {
            return Err(FsError::errno(path, libc::EISDIR));
        };
        let (pfd, _, created) = mkdir_all(p, false)?;
        let canon = fd_path(&pfd).map_err(|e| FsError::new(path, e))?;
        (
            pfd,
            cstring(path, last)?,
            join(&canon, last.as_bytes()),
            created,
        )
    } else {
        let t = resolve(path)?;
        let name = t.name().to_owned();
        (t.parent, name, t.path, Created::default())
    };
    // Something that is there and not a regular file is refused before the open (which would
    // truncate it, or fail with ENXIO for a socket or a FIFO nobody reads); the fstat below
    // closes the race.
    let there = open2(
        &parent,
        &name,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    );
    if let Ok(st) = there.and_then(rustix::fs::fstat)
        && kind_of(st.st_mode) != EntryKind::File
    {
        created.undo();
        return Err(FsError::with(path, libc::EINVAL, "not a regular file"));
    }
    let flags = OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let flags = if write {
        flags | OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC
    } else {
        flags | OFlags::RDONLY
    };
    // openat2 takes a mode only with O_CREAT.
    let mode = Mode::from_raw_mode(if write { 0o644 } else { 0 });
    let fd = match open2(&parent, &name, flags, mode) {
        Ok(fd) => fd,
        Err(e) => {
            created.undo();
            return Err(FsError::new(path, e));
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| FsError::new(path, e))?;
    if kind_of(st.st_mode) != EntryKind::File {
        return Err(FsError::with(path, libc::EINVAL, "not a regular file"));
    }
    refuse_proc(&fd, path)?;
    let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| FsError::new(path, e))?;
    rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| FsError::new(path, e))?;
    Ok((fd, entry_from(&st, canon, None)))
}

#[cfg(test)]
#[path = "fsops_tests.rs"]
mod tests;
