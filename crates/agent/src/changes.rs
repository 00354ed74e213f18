//! The change report of an `overlay` workspace: what the sandbox created, modified and deleted,
//! read from the overlay's upper layer against its lower layer (the untouched host directory).
//!
//! Overlayfs records a deletion as a whiteout (a character device 0:0) and a replaced directory
//! as an "opaque" directory (xattr `user.overlay.opaque` or `trusted.overlay.opaque` = "y").
//! Both layers are reached through descriptors the agent opened before the pivot, so the walk
//! needs no path into the host. Paths come from the sandbox and are reported relative, never
//! used to open anything on the host.

use crate::protocol::{Change, ChangeKind};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Walks `upper` against `lower`; at most `limit` entries are reported.
pub fn overlay_changes(upper: &Path, lower: &Path, limit: usize) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    walk(upper, lower, Path::new(""), &mut out, limit)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn is_opaque(p: &Path) -> bool {
    ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|name| get_xattr(p, name).as_deref() == Some(b"y"))
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = stockade_jail::sys::cstr(p).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 8];
    // SAFETY: both strings are NUL-terminated and live for the call; the buffer pointer and its
    // length describe `buf`, which the kernel writes at most `len` bytes into.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        None
    } else {
        Some(buf[..r as usize].to_vec())
    }
}

fn push(out: &mut Vec<Change>, rel: &Path, kind: ChangeKind, size: u64, limit: usize) {
    if out.len() < limit {
        out.push(Change {
            path: rel.to_string_lossy().into_owned(),
            kind,
            size,
        });
    }
}

fn walk(
    upper: &Path,
    lower: &Path,
    rel: &Path,
    out: &mut Vec<Change>,
    limit: usize,
) -> io::Result<()> {
    for entry in fs::read_dir(upper.join(rel))? {
        if out.len() >= limit {
            return Ok(());
        }
        let entry = entry?;
        let name = entry.file_name();
        let r: PathBuf = rel.join(&name);
        let meta = entry.metadata()?;
        let in_lower = fs::symlink_metadata(lower.join(&r)).ok();
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            if let Some(lm) = in_lower {
                if lm.is_dir() {
                    deleted_tree(lower, &r, out, limit)?;
                }
                push(out, &r, ChangeKind::Deleted, 0, limit);
            }
            continue;
        }
        if ft.is_dir() {
            match in_lower {
                Some(lm) if lm.is_dir() => {
                    if is_opaque(&upper.join(&r)) {
                        // Everything the lower had here is gone unless the upper has it again.
                        for le in fs::read_dir(lower.join(&r))? {
                            let le = le?;
                            let lr = r.join(le.file_name());
                            if fs::symlink_metadata(upper.join(&lr)).is_err() {
                                if le.file_type()?.is_dir() {
                                    deleted_tree(lower, &lr, out, limit)?;
                                }
                                push(out, &lr, ChangeKind::Deleted, 0, limit);
                            }
                        }
                    }
                    walk(upper, lower, &r, out, limit)?;
                }
                Some(_) => {
                    push(out, &r, ChangeKind::Modified, 0, limit);
                    created_tree(upper, &r, out, limit)?;
                }
                None => {
                    push(out, &r, ChangeKind::Created, 0, limit);
                    created_tree(upper, &r, out, limit)?;
                }
            }
            continue;
        }
        let kind = if in_lower.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Created
        };
        push(out, &r, kind, meta.len(), limit);
    }
    Ok(())
}

fn created_tree(upper: &Path, rel: &Path, out: &mut Vec<Change>, limit: usize) -> io::Result<()> {
    for entry in fs::read_dir(upper.join(rel))? {
        let entry = entry?;
        let r = rel.join(entry.file_name());
        let meta = entry.metadata()?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            continue;
        }
        push(
            out,
            &r,
            ChangeKind::Created,
            if meta.is_dir() { 0 } else { meta.len() },
            limit,
        );
        if meta.is_dir() {
            created_tree(upper, &r, out, limit)?;
        }
    }
    Ok(())
}

fn deleted_tree(lower: &Path, rel: &Path, out: &mut Vec<Change>, limit: usize) -> io::Result<()> {
    for entry in fs::read_dir(lower.join(rel))? {
        let entry = entry?;
        let r = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            deleted_tree(lower, &r, out, limit)?;
        }
        push(out, &r, ChangeKind::Deleted, 0, limit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_modified_from_plain_dirs() {
        let up = tempfile::tempdir().unwrap();
        let low = tempfile::tempdir().unwrap();
        fs::write(low.path().join("a"), "1").unwrap();
        fs::write(up.path().join("a"), "22").unwrap();
        fs::create_dir(up.path().join("d")).unwrap();
        fs::write(up.path().join("d/n"), "333").unwrap();
        let c = overlay_changes(up.path(), low.path(), 100).unwrap();
        assert_eq!(
            c,
            vec![
                Change {
                    path: "a".into(),
                    kind: ChangeKind::Modified,
                    size: 2
                },
                Change {
                    path: "d".into(),
                    kind: ChangeKind::Created,
                    size: 0
                },
                Change {
                    path: "d/n".into(),
                    kind: ChangeKind::Created,
                    size: 3
                },
            ]
        );
        assert_eq!(overlay_changes(up.path(), low.path(), 1).unwrap().len(), 1);
    }
}
