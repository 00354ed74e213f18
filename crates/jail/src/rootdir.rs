//! A directory root filesystem (`plan.rootfs`, e.g. from `debootstrap` or an unpacked OCI
//! image): vetting it, and laying Stockade's own files and mount points over it without ever
//! following its symlinks.
//!
//! Vetting is done on the directory actually opened: it must be a directory owned by root and
//! not writable by others, no directory above it may let others swap it (writable without the
//! sticky bit), and no writable bind of the same sandbox may reach into it or contain it, so
//! neither the sandbox user nor the sandbox itself can alter it on the host. Only a root
//! launcher may use one: ids of its files are left as they are, so root-owned files appear
//! owned by root inside through the launcher's `0 0 1` mapping (like the host's /usr in the
//! default root); other owners appear as the overflow id.
//!
//! While the root is built (before the pivot), a symlink of the root filesystem would resolve
//! in the host's view: `/etc -> /root/.ssh` would make setup write on the host as root. So in a
//! strict [`Tree`] every existing component on the way to something Stockade creates must be a
//! real directory, and a symlink where Stockade puts a file is removed from the overlay first.
//! The root filesystem itself is never written: the overlay's upper layer takes every change.

use crate::plan::{RootOp, SandboxPlan, WorkspaceKind};
use crate::rootfs::{SetupError, err, set_bind_attrs};
use crate::sys;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

fn refuse(what: &'static str, path: &Path, why: String) -> SetupError {
    SetupError {
        what,
        path: path.display().to_string(),
        source: io::Error::new(io::ErrorKind::PermissionDenied, why),
    }
}

/// Owner and mode rules for the root filesystem directory itself.
fn vet_rootfs_meta(dir: &Path, m: &fs::Metadata) -> Result<(), SetupError> {
    use std::os::unix::fs::MetadataExt;
    const WHAT: &str = "refusing the root filesystem";
    if !m.is_dir() {
        return Err(refuse(WHAT, dir, "it is not a directory".into()));
    }
    if m.uid() != 0 {
        return Err(refuse(
            WHAT,
            dir,
            "it is not owned by root; a root filesystem must be owned by root and not writable \
             by others (chown root: it)"
                .into(),
        ));
    }
    if m.mode() & 0o002 != 0 {
        return Err(refuse(
            WHAT,
            dir,
            format!(
                "it is writable by others (mode {:04o}); a root filesystem the sandbox user could \
                 alter on the host is refused (chmod o-w it)",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Checks that `dir` can be a directory root filesystem and returns its canonical path: it
/// exists, is a directory owned by root and not writable by others, and no directory above it
/// is writable by others without the sticky bit (anyone could swap it there). For callers that
/// vet a root filesystem ahead of time (e.g. when a template is added); a sandbox's PID 1 repeats
/// these checks and vets the directory it actually opens.
pub fn check_rootfs(dir: &Path) -> Result<PathBuf, SetupError> {
    use std::os::unix::fs::MetadataExt;
    let canon = fs::canonicalize(dir).map_err(err("opening the root filesystem", dir))?;
    let m = fs::metadata(&canon).map_err(err("opening the root filesystem", &canon))?;
    vet_rootfs_meta(&canon, &m)?;
    for up in canon.ancestors().skip(1) {
        let am = fs::metadata(up).map_err(err("inspecting", up))?;
        if am.mode() & 0o002 != 0 && am.mode() & libc::S_ISVTX == 0 {
            return Err(refuse(
                "refusing the root filesystem",
                &canon,
                format!(
                    "{} above it is writable by others without the sticky bit (mode {:04o}), so \
                     anyone could replace the root filesystem; move it or chmod o-w {}",
                    up.display(),
                    am.mode() & 0o7777,
                    up.display()
                ),
            ));
        }
    }
    Ok(canon)
}

/// Opens the plan's root filesystem as a detached, read-only tree after vetting it: see
/// [`check_rootfs`], plus the tree itself (what the overlay will use) and that no writable bind
/// of this sandbox reaches into it or contains it.
pub(crate) fn open_rootfs(plan: &SandboxPlan, dir: &Path) -> Result<OwnedFd, SetupError> {
    if plan.idmap_host_uid.is_none() {
        return Err(refuse(
            "refusing the root filesystem",
            dir,
            "a directory root filesystem needs stockade to run as root (an ordinary user's \
             sandbox cannot map the root filesystem's root-owned files)"
                .into(),
        ));
    }
    let canon = check_rootfs(dir)?;
    let mut writable: Vec<(&str, &Path)> = Vec::new();
    if plan.workspace.kind == WorkspaceKind::Rw {
        writable.push(("workspace", &plan.workspace.host));
    }
    for op in &plan.root_ops {
        if let RootOp::Bind(b) = op
            && b.writable
        {
            writable.push(("writable mount", &b.source));
        }
    }
    for (what, p) in writable {
        let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if p.starts_with(&canon) || canon.starts_with(&p) {
            return Err(refuse(
                "refusing the root filesystem",
                &canon,
                format!(
                    "it overlaps the {what} {}, through which the sandbox could change its own \
                     root filesystem on the host",
                    p.display()
                ),
            ));
        }
    }
    let fd =
        sys::open_tree_clone(&canon, false).map_err(err("opening the root filesystem", &canon))?;
    let f = fs::File::from(fd);
    let m = f
        .metadata()
        .map_err(err("inspecting the root filesystem", &canon))?;
    vet_rootfs_meta(&canon, &m)?;
    let fd = OwnedFd::from(f);
    set_bind_attrs(&fd, false, false, &canon)?;
    Ok(fd)
}

/// What is about to be created at a path inside the root.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Dir,
    File,
    Link,
}

/// The root being laid out, and whether it holds someone else's files (a directory root
/// filesystem) whose symlinks must not be followed while it is built: before the pivot they
/// would resolve in the host's view, so `/etc -> /root/.ssh` in a root filesystem would make
/// setup write on the host.
pub(crate) struct Tree<'a> {
    pub(crate) root: &'a Path,
    pub(crate) strict: bool,
}

impl Tree<'_> {
    /// In a strict tree, makes `p` (under the root) safe to create as `want`: every existing
    /// component on the way must be a real directory (a symlink is refused), and a symlink at
    /// `p` itself is removed (from the overlay: the root filesystem is untouched), as is a file
    /// or an empty directory where a symlink goes. Missing components are left to be created.
    pub(crate) fn guard(&self, p: &Path, want: Want) -> Result<(), SetupError> {
        if !self.strict {
            return Ok(());
        }
        let rel = p.strip_prefix(self.root).unwrap_or(p);
        let parts: Vec<Component> = rel
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let shown = |cur: &Path| Path::new("/").join(cur.strip_prefix(self.root).unwrap_or(cur));
        let mut cur = self.root.to_path_buf();
        for (i, c) in parts.iter().enumerate() {
            cur.push(c);
            let last = i + 1 == parts.len();
            let m = match fs::symlink_metadata(&cur) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(err("inspecting", &cur)(e)),
            };
            let ft = m.file_type();
            if ft.is_symlink() {
                if !last {
                    return Err(SetupError {
                        what: "root filesystem: a symlink is in the way at",
                        path: shown(&cur).display().to_string(),
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "stockade builds {} and does not follow the root filesystem's \
                                 links while doing so; make it a directory",
                                shown(p).display()
                            ),
                        ),
                    });
                }
                return fs::remove_file(&cur).map_err(err("replacing symlink", &cur));
            }
            if !last {
                if !ft.is_dir() {
                    return Err(SetupError {
                        what: "root filesystem: not a directory:",
                        path: shown(&cur).display().to_string(),
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("stockade needs it to build {}", shown(p).display()),
                        ),
                    });
                }
                continue;
            }
            return match (want, ft.is_dir()) {
                (Want::Dir, true) | (Want::File, false) => Ok(()),
                (Want::Link, true) => fs::remove_dir(&cur).map_err(err("replacing", &cur)),
                (Want::Link, false) => fs::remove_file(&cur).map_err(err("replacing", &cur)),
                (Want::Dir, false) | (Want::File, true) => Err(SetupError {
                    what: "root filesystem: in the way at",
                    path: shown(&cur).display().to_string(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "stockade needs a {} there",
                            if want == Want::Dir {
                                "directory"
                            } else {
                                "file"
                            }
                        ),
                    ),
                }),
            };
        }
        Ok(())
    }
}
