//! File tracking of an `rw` workspace: a snapshot (path → size, mtime, inode) taken before the
//! command starts and one after it ends; the difference is the run's `file.changed` events.
//! (Overlay workspaces are reported by the agent from the overlay's upper layer instead.)
//!
//! Bounded: at most [`MAX_ENTRIES`] paths are tracked; past that the report says it is partial.
//! Only the host's view is read: nothing from inside the sandbox is trusted here but the tree.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use stockade_agent::protocol::{Change, ChangeKind};

pub const MAX_ENTRIES: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dir: bool,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    entries: HashMap<PathBuf, Entry>,
    pub truncated: bool,
}

/// Walks `root` (not following symlinks, not crossing filesystems).
pub fn snapshot(root: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return snap;
    };
    let dev = top.dev();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            if snap.entries.len() >= MAX_ENTRIES {
                snap.truncated = true;
                return snap;
            }
            let Ok(m) = e.metadata() else { continue };
            let r = rel.join(e.file_name());
            let dir = m.is_dir();
            snap.entries.insert(
                r.clone(),
                Entry {
                    size: if dir { 0 } else { m.len() },
                    mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                    ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
                    ino: m.ino(),
                    dir,
                },
            );
            if dir && m.dev() == dev {
                stack.push(r);
            }
        }
    }
    snap
}

/// What changed from `before` to `after`, sorted by path. A directory whose only change is its
/// listing is not reported (its entries are).
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    for (p, a) in &after.entries {
        let kind = match before.entries.get(p) {
            None => Some(ChangeKind::Created),
            Some(b) if b.ino != a.ino || b.dir != a.dir => Some(ChangeKind::Modified),
            Some(b)
                if !a.dir
                    && (b.size != a.size
                        || b.mtime_ns != a.mtime_ns
                        || b.ctime_ns != a.ctime_ns) =>
            {
                Some(ChangeKind::Modified)
            }
            Some(_) => None,
        };
        if let Some(kind) = kind {
            out.push(Change {
                path: p.to_string_lossy().into_owned(),
                kind,
                size: a.size,
            });
        }
    }
    for p in before.entries.keys() {
        if !after.entries.contains_key(p) {
            out.push(Change {
                path: p.to_string_lossy().into_owned(),
                kind: ChangeKind::Deleted,
                size: 0,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_modified_deleted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("keep"), "k").unwrap();
        std::fs::write(d.path().join("mod"), "1").unwrap();
        std::fs::write(d.path().join("gone"), "g").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let before = snapshot(d.path());
        std::fs::write(d.path().join("mod"), "22").unwrap();
        std::fs::remove_file(d.path().join("gone")).unwrap();
        std::fs::write(d.path().join("sub/new"), "333").unwrap();
        let after = snapshot(d.path());
        let c = diff(&before, &after);
        assert_eq!(
            c,
            vec![
                Change {
                    path: "gone".into(),
                    kind: ChangeKind::Deleted,
                    size: 0
                },
                Change {
                    path: "mod".into(),
                    kind: ChangeKind::Modified,
                    size: 2
                },
                Change {
                    path: "sub/new".into(),
                    kind: ChangeKind::Created,
                    size: 3
                },
            ]
        );
        assert!(!after.truncated);
    }
}
