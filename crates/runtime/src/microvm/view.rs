//! The view: the one host directory a microVM sees (QEMU shares it over virtio-9p as the
//! guest's `/host`), holding exactly the host paths the plan reads, each bind-mounted at its
//! own path; and the guest plan that reads them from there.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use stockade_jail::plan::{RootOp, SandboxPlan, WorkspaceKind};
use stockade_jail::sys;

/// Where the guest mounts the share (`stockade_agent::guest_boot::HOST_MOUNT`).
pub const GUEST_HOST_DIR: &str = "/host";

/// Builds `view_dir` for `plan` and returns the guest plan.
///
/// Called by `__vmm` (root) in its own private mount namespace (it did `unshare(CLONE_NEWNS)`
/// and made `/` `MS_REC|MS_PRIVATE`), before QEMU starts as `qemu_uid`: every host path the
/// plan reads (its binds' sources, the workspace's host directory, `rootfs`) is bind-mounted
/// under `view_dir` at the same path, read-only (and nosuid, nodev) unless the plan writes to
/// it; writable ones (a `rw` workspace, writable binds) are idmapped `0 → qemu_uid`, so QEMU
/// (running as `qemu_uid`) sees root-owned files as its own and its new files land root-owned
/// on disk. `CopyFile`s become `File`s read here. Nothing else of the host is in the view.
///
/// The guest plan: sources under `/host`, no idmapping (the view did it), no cgroups (the host
/// holds them), no backend. Device binds keep their `/dev` sources: the guest's own devtmpfs.
pub fn build_view(
    plan: &SandboxPlan,
    view_dir: &Path,
    qemu_uid: u32,
) -> Result<SandboxPlan, String> {
    let mut guest = plan.clone();
    // Host path -> writable (a path both read and written is writable).
    let mut want: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let mut add = |p: &Path, w: bool| -> Result<PathBuf, String> {
        let p = checked(p)?;
        let e = want.entry(p.clone()).or_insert(false);
        *e |= w;
        Ok(in_guest(&p))
    };
    let mut ops = Vec::with_capacity(plan.root_ops.len());
    for op in &plan.root_ops {
        match op {
            RootOp::Bind(b) if b.device => ops.push(RootOp::Bind(b.clone())),
            RootOp::Bind(b) => {
                if b.optional && fs::symlink_metadata(&b.source).is_err() {
                    // Skipped inside too: its source is not in the view.
                    let mut b = b.clone();
                    b.source = in_guest(&checked(&b.source)?);
                    b.idmap = false;
                    ops.push(RootOp::Bind(b));
                    continue;
                }
                let mut g = b.clone();
                g.source = add(&b.source, b.writable)?;
                g.idmap = false;
                ops.push(RootOp::Bind(g));
            }
            RootOp::CopyFile { source, path } => match fs::read(source) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(contents) => {
                        let mode = fs::metadata(source)
                            .map(|m| m.permissions().mode() & 0o777)
                            .unwrap_or(0o644);
                        ops.push(RootOp::File {
                            path: path.clone(),
                            contents,
                            mode,
                        });
                    }
                    // Not text: the guest copies it from the view.
                    Err(_) => ops.push(RootOp::CopyFile {
                        source: add(source, false)?,
                        path: path.clone(),
                    }),
                },
                // Missing sources are skipped (as the launcher does).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("microvm view: reading {}: {e}", source.display())),
            },
            other => ops.push(other.clone()),
        }
    }
    guest.root_ops = ops;
    if plan.workspace.kind != WorkspaceKind::Tmp {
        guest.workspace.host = add(
            &plan.workspace.host,
            plan.workspace.kind == WorkspaceKind::Rw,
        )?;
    }
    guest.workspace.idmap = false;
    if let Some(r) = &plan.rootfs {
        guest.rootfs = Some(add(r, false)?);
    }
    guest.cgroup_procs.clear();
    guest.cgroup_dirs.clear();
    guest.backend = None;
    guest.vm_guest = true;

    // The view itself: a private tmpfs, so its mount points never touch the host's disk and
    // nothing but the binds below is in it.
    fs::create_dir_all(view_dir)
        .map_err(|e| format!("microvm view: creating {}: {e}", view_dir.display()))?;
    sys::mount(
        Some(c"stockade-view"),
        view_dir,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"mode=0755,size=1m"),
    )
    .map_err(|e| {
        format!(
            "microvm view: mounting a tmpfs on {}: {e}",
            view_dir.display()
        )
    })?;
    let mut userns = None;
    // Parents before children (BTreeMap order), so a nested bind lands on top of its parent's.
    for (host, writable) in &want {
        let fd = match sys::open_tree_clone(host, true) {
            Ok(fd) => fd,
            Err(e) => return Err(format!("microvm view: opening {}: {e}", host.display())),
        };
        let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;
        if !writable {
            set |= sys::MOUNT_ATTR_RDONLY;
        }
        sys::mount_setattr_fd(&fd, set, 0, true)
            .map_err(|e| format!("microvm view: restricting {}: {e}", host.display()))?;
        if *writable {
            if userns.is_none() {
                userns = Some(idmap_userns(qemu_uid)?);
            }
            if let Some(ns) = &userns {
                sys::mount_setattr_idmap(&fd, ns).map_err(|e| {
                    format!(
                        "microvm view: idmapping {} (its filesystem must support idmapped mounts): {e}",
                        host.display()
                    )
                })?;
            }
        }
        let target = view_dir.join(host.strip_prefix("/").unwrap_or(host));
        mount_point(
            view_dir,
            &target,
            fs::metadata(host).map(|m| m.is_dir()).unwrap_or(true),
        )?;
        sys::move_mount_fd(&fd, &target)
            .map_err(|e| format!("microvm view: mounting {} in the view: {e}", host.display()))?;
    }
    // Sealed: nothing can add to the view's own directories.
    sys::mount_setattr_path(view_dir, sys::MOUNT_ATTR_RDONLY, false)
        .map_err(|e| format!("microvm view: sealing {}: {e}", view_dir.display()))?;
    Ok(guest)
}

/// An absolute, normalized host path (no `..`): the view and the guest plan use it as given.
fn checked(p: &Path) -> Result<PathBuf, String> {
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "microvm view: {} is not an absolute normalized path",
            p.display()
        ));
    }
    Ok(p.components().collect())
}

/// The guest's path of a host path: `/host/<path>`.
fn in_guest(p: &Path) -> PathBuf {
    Path::new(GUEST_HOST_DIR).join(p.strip_prefix("/").unwrap_or(p))
}

/// Creates the mount point `target` under `view` (a directory or an empty file), with its
/// missing parents. A target inside an already mounted bind exists (it is the host path).
fn mount_point(view: &Path, target: &Path, dir: bool) -> Result<(), String> {
    let e = |e: io::Error| format!("microvm view: mount point {}: {e}", target.display());
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let parent = target.parent().unwrap_or(view);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(e)?;
    if dir {
        fs::DirBuilder::new().mode(0o755).create(target).map_err(e)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop)
            .map_err(e)
    }
}

/// A user namespace whose only mapping is `0 → host_uid` (uid and gid): the idmapping of the
/// writable binds (as `stockade_jail::launch` does for the container level).
fn idmap_userns(host_uid: u32) -> Result<OwnedFd, String> {
    let map = format!("0 {host_uid} 1\n");
    idmap_userns_with(&map, &map)
}

/// A user namespace with these uid and gid maps (`inside outside count` lines), to idmap mounts
/// with: a file owned by `outside` on disk appears owned by `inside` through the mount.
pub fn idmap_userns_with(uid_map: &str, gid_map: &str) -> Result<OwnedFd, String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element out-array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!(
            "microvm view: pipe: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: a fork-like clone (no new stack) into a new user namespace. `__vmm` may have
    // threads, so the child runs nothing but raw syscalls (close, read, _exit), which take no
    // locks, and never returns into Rust code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!(
            "microvm view: creating the idmap namespace: {}",
            io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: raw syscalls only: close our copy of the write end (so the read sees EOF when
        // the parent drops its own), a one-byte read into a stack buffer, _exit.
        unsafe {
            libc::close(std::os::fd::AsRawFd::as_raw_fd(&w));
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&r),
                b.as_mut_ptr().cast(),
                1,
            );
            libc::_exit(0);
        }
    }
    let pid = pid as libc::pid_t;
    drop(r);
    let result = (|| -> io::Result<OwnedFd> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        fs::write(dir.join("uid_map"), uid_map)?;
        fs::write(dir.join("setgroups"), "deny")?;
        fs::write(dir.join("gid_map"), gid_map)?;
        fs::File::open(dir.join("ns/user")).map(OwnedFd::from)
    })();
    drop(w);
    let _ = sys::waitpid(pid, 0);
    result.map_err(|e| format!("microvm view: setting up the idmap namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_under_host() {
        assert_eq!(
            in_guest(Path::new("/usr/lib")),
            PathBuf::from("/host/usr/lib")
        );
        assert_eq!(
            checked(Path::new("/a/./b/")).unwrap(),
            PathBuf::from("/a/b")
        );
        assert!(checked(Path::new("/a/../etc")).is_err());
        assert!(checked(Path::new("rel")).is_err());
    }
}
