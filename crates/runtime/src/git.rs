//! Host-side half of `workspace.protect_git`. Inside, `.git` is pinned and what git reads
//! settings and commands from is read-only (see the jail's rootfs); but a bind needs something to
//! bind, so a path that does not exist cannot be protected that way:
//!
//! - `.git/hooks` and `.git/info` (which `git init` normally makes) are created here, empty,
//!   before the sandbox starts, so they exist to be made read-only;
//! - `.git/commondir` cannot be created ahead (its presence changes what git does), so it is
//!   checked after the run: one the sandbox created is removed before anything on the host can
//!   use it, and recorded as a violation. While the sandbox runs, a git command run on the host
//!   in this workspace could still follow it: that window is documented (docs/audit.md).
//!
//! Every operation goes through a descriptor of `.git` opened without following symlinks.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What was there before the run.
pub struct GitGuard {
    git: OwnedFd,
    commondir_existed: bool,
}

fn open_dir_nofollow(dirfd: libc::c_int, name: &CStr) -> Option<OwnedFd> {
    // SAFETY: `name` is a valid C string; the result is checked before use.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a new descriptor owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn exists_nofollow(dir: &OwnedFd, name: &CStr) -> bool {
    // SAFETY: `st` is a valid out-pointer for the call; `name` is a valid C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
    }
}

/// Before the run: `.git/hooks` and `.git/info` made when missing (owned like `.git`), and
/// whether `.git/commondir` exists. None when the workspace has no `.git` directory.
pub fn prepare(workspace: &Path) -> Option<GitGuard> {
    let ws = std::fs::File::open(workspace).ok()?;
    let git = open_dir_nofollow(ws.as_raw_fd(), c".git")?;
    // SAFETY: `st` is a valid out-pointer; `git` is a live descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let have_st = unsafe { libc::fstat(git.as_raw_fd(), &mut st) } == 0;
    for name in [c"hooks", c"info"] {
        if exists_nofollow(&git, name) {
            continue;
        }
        // SAFETY: `name` is a valid C string; `git` a live directory descriptor.
        if unsafe { libc::mkdirat(git.as_raw_fd(), name.as_ptr(), 0o755) } == 0 && have_st {
            // SAFETY: as above; AT_SYMLINK_NOFOLLOW: the directory we just made.
            unsafe {
                libc::fchownat(
                    git.as_raw_fd(),
                    name.as_ptr(),
                    st.st_uid,
                    st.st_gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
        }
    }
    let commondir_existed = exists_nofollow(&git, c"commondir");
    Some(GitGuard {
        git,
        commondir_existed,
    })
}

impl GitGuard {
    /// After the run (every process of the sandbox is gone): what it planted and was undone.
    pub fn undo(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.commondir_existed && exists_nofollow(&self.git, c"commondir") {
            // SAFETY: `git` is a live directory descriptor; unlinkat does not follow the name.
            let r = unsafe { libc::unlinkat(self.git.as_raw_fd(), c"commondir".as_ptr(), 0) };
            out.push(if r == 0 {
                "the sandbox created .git/commondir (it would point git's config and hooks \
                 elsewhere); removed after the run"
                    .to_string()
            } else {
                format!(
                    "the sandbox created .git/commondir (it would point git's config and hooks \
                     elsewhere) and removing it failed: {}; remove it before running git here",
                    std::io::Error::last_os_error()
                )
            });
        }
        out
    }
}
