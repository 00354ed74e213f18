//! Directory watches of session mode ([`FsOp::Watch`](crate::protocol::FsOp::Watch)), on one
//! inotify instance owned by the agent.
//!
//! Guarantees: watch ids are assigned here, from 1 up, never reused. A watch reports changes
//! directly in its directory (and, when recursive, in every subdirectory, also those created or
//! moved in later) as [`WatchEvent::Change`] with the absolute path; [`WatchEvent::Overflow`]
//! when events were lost (the kernel's queue overflowed, or a new subdirectory could not be
//! watched because of the limit); [`WatchEvent::Gone`] once, when the watched directory itself
//! is deleted, moved away or unmounted, after which the watch no longer exists. Symlinks are
//! never followed below the watched directory. At most [`MAX_WATCHES`] kernel watches exist per
//! sandbox (a watch that would need more is refused with `ENOSPC`, and nothing of it is left).
//! The directories are opened with the sandbox's own rights (see [`crate::fsops`]).
//!
//! Event mapping (as Go's fsnotify, which E2B's envd uses): IN_CREATE and IN_MOVED_TO are
//! `create`, IN_MODIFY and IN_CLOSE_WRITE `write` (a modification right before the close is
//! reported once), IN_DELETE `remove`, IN_MOVED_FROM `rename` (of the old path), IN_ATTRIB
//! `chmod`. Tested by the unit tests below on temporary directories.

use crate::fsops::{
    FsError, check_path, fd_path, join, on_proc, open_dir, open_subdir, refuse_proc,
};
use crate::protocol::{WatchEvent, WatchOp};
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use rustix::fs::{AtFlags, Dir, FileType, OFlags};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// Most kernel watches (directories watched) per sandbox; also the most watches at once.
pub const MAX_WATCHES: usize = 1024;
const READ_BUF: usize = 64 * 1024;

fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

struct WatchState {
    root_wd: i32,
    recursive: bool,
}

/// One kernel watch: the directory's path as last known, and the watches it serves.
struct Wd {
    path: String,
    owners: BTreeSet<u64>,
}

/// Every watch of the sandbox.
pub struct Watcher {
    fd: Option<OwnedFd>,
    watches: BTreeMap<u64, WatchState>,
    wds: HashMap<i32, Wd>,
    next_id: u64,
    max_wds: usize,
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new(MAX_WATCHES)
    }
}

impl Watcher {
    /// A watcher allowing `max_wds` kernel watches (the inotify instance is made on first use).
    pub fn new(max_wds: usize) -> Watcher {
        Watcher {
            fd: None,
            watches: BTreeMap::new(),
            wds: HashMap::new(),
            next_id: 1,
            max_wds,
        }
    }

    /// The inotify descriptor to poll, once a watch was made.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Watches the directory `path` (followed if a symlink); returns the new watch's id.
    pub fn watch(&mut self, path: &str, recursive: bool) -> Result<u64, FsError> {
        check_path(path)?;
        if self.watches.len() >= MAX_WATCHES {
            return Err(FsError::with(path, libc::ENOSPC, "too many watches"));
        }
        let dir = open_dir(path, OFlags::RDONLY).map_err(|e| FsError::new(path, e))?;
        refuse_proc(&dir, path)?;
        let canon = fd_path(&dir).map_err(|e| FsError::new(path, e))?;
        if self.fd.is_none() {
            let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
                .map_err(|e| FsError::new(path, e))?;
            self.fd = Some(fd);
        }
        let id = self.next_id;
        let root_wd = self.add(&dir, &canon, id, path)?;
        self.watches.insert(id, WatchState { root_wd, recursive });
        if recursive && let Err(e) = self.add_tree(dir, &canon, id, path, None) {
            self.drop_watch(id);
            return Err(e);
        }
        self.next_id += 1;
        Ok(id)
    }

    /// Ends a watch. A watch that already ended (Gone) is fine; an id never given is not.
    pub fn unwatch(&mut self, id: u64) -> Result<(), FsError> {
        if self.watches.contains_key(&id) {
            self.drop_watch(id);
            Ok(())
        } else if id >= 1 && id < self.next_id {
            Ok(())
        } else {
            Err(FsError::with(
                &format!("watch {id}"),
                libc::ENOENT,
                "no such watch",
            ))
        }
    }

    /// Adds a kernel watch on `dir` for watch `owner`; refuses a new one past the limit.
    fn add(&mut self, dir: &OwnedFd, path: &str, owner: u64, shown: &str) -> Result<i32, FsError> {
        let Some(ino) = self.fd.as_ref() else {
            return Err(FsError::errno(shown, libc::EBADF));
        };
        // The directory as opened (its descriptor), so no path is resolved a second time.
        let link = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let wd =
            inotify::add_watch(ino, link.as_str(), mask()).map_err(|e| FsError::new(shown, e))?;
        if !self.wds.contains_key(&wd) && self.wds.len() >= self.max_wds {
            let _ = inotify::remove_watch(ino, wd);
            return Err(FsError::with(
                shown,
                libc::ENOSPC,
                &format!("more than {} directories watched", self.max_wds),
            ));
        }
        let w = self.wds.entry(wd).or_insert_with(|| Wd {
            path: path.to_string(),
            owners: BTreeSet::new(),
        });
        w.path = path.to_string();
        w.owners.insert(owner);
        Ok(wd)
    }

    /// Watches every directory below `dir` (not following symlinks). With `events`, reports a
    /// `create` for each entry found (a directory just created may have filled before its watch).
    fn add_tree(
        &mut self,
        dir: OwnedFd,
        path: &str,
        owner: u64,
        shown: &str,
        mut events: Option<&mut Vec<(u64, WatchEvent)>>,
    ) -> Result<(), FsError> {
        let mut stack: Vec<(Rc<OwnedFd>, CString, String)> = Vec::new();
        let mut pending = vec![(Rc::new(dir), path.to_string())];
        loop {
            // Read the directory just watched; queue its subdirectories.
            if let Some((fd, p)) = pending.pop() {
                let Ok(mut d) = Dir::read_from(&*fd) else {
                    continue;
                };
                while let Some(Ok(ent)) = d.read() {
                    let n = ent.file_name();
                    if n == c"." || n == c".." {
                        continue;
                    }
                    let child = join(&p, n.to_bytes());
                    let is_dir = match ent.file_type() {
                        FileType::Directory => true,
                        FileType::Unknown => rustix::fs::statat(&*fd, n, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_dir()),
                        _ => false,
                    };
                    if let Some(ev) = events.as_deref_mut() {
                        ev.push((
                            owner,
                            WatchEvent::Change {
                                op: WatchOp::Create,
                                path: child.clone(),
                            },
                        ));
                    }
                    if is_dir {
                        stack.push((fd.clone(), n.to_owned(), child));
                    }
                }
                continue;
            }
            let Some((parent, name, p)) = stack.pop() else {
                return Ok(());
            };
            // Vanished, unreadable (inotify needs read access) or procfs: not watched.
            let Ok(fd) = open_subdir(&*parent, &name) else {
                continue;
            };
            if on_proc(&fd) {
                continue;
            }
            match self.add(&fd, &p, owner, shown) {
                Ok(_) => pending.push((Rc::new(fd), p)),
                Err(e) if e.errno == libc::ENOSPC => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Removes a watch and the kernel watches only it used.
    fn drop_watch(&mut self, id: u64) {
        self.watches.remove(&id);
        let mut gone = Vec::new();
        for (wd, w) in self.wds.iter_mut() {
            if w.owners.remove(&id) && w.owners.is_empty() {
                gone.push(*wd);
            }
        }
        for wd in gone {
            self.wds.remove(&wd);
            if let Some(ino) = self.fd.as_ref() {
                let _ = inotify::remove_watch(ino, wd);
            }
        }
    }

    /// Stops watching, for `owner`, the directories at `path` and below (moved away).
    fn drop_subtree(&mut self, owner: u64, path: &str) {
        let prefix = format!("{path}/");
        let mut gone = Vec::new();
        for (wd, w) in self.wds.iter_mut() {
            let below = w.path == path || w.path.starts_with(&prefix);
            let is_root = self.watches.get(&owner).is_some_and(|s| s.root_wd == *wd);
            if below && !is_root && w.owners.remove(&owner) && w.owners.is_empty() {
                gone.push(*wd);
            }
        }
        for wd in gone {
            self.wds.remove(&wd);
            if let Some(ino) = self.fd.as_ref() {
                let _ = inotify::remove_watch(ino, wd);
            }
        }
    }

    /// The watches whose root is `wd`.
    fn roots(&self, wd: i32) -> Vec<u64> {
        self.watches
            .iter()
            .filter(|(_, s)| s.root_wd == wd)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Reads what the kernel has queued (one buffer's worth, so a flood cannot hold the loop)
    /// and returns the events for each watch, in order.
    pub fn read_events(&mut self) -> Vec<(u64, WatchEvent)> {
        let mut raw = Vec::new();
        if let Some(fd) = self.fd.as_ref() {
            let mut buf = vec![MaybeUninit::<u8>::uninit(); READ_BUF];
            let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
            while let Ok(ev) = reader.next() {
                raw.push((
                    ev.wd(),
                    ev.events(),
                    ev.file_name().map(|n| n.to_bytes().to_vec()),
                ));
                if reader.is_buffer_empty() {
                    break;
                }
            }
        }
        let mut out = Vec::new();
        for (wd, mask, name) in raw {
            self.handle(wd, mask, name.as_deref(), &mut out);
        }
        out
    }

    fn handle(
        &mut self,
        wd: i32,
        mask: ReadFlags,
        name: Option<&[u8]>,
        out: &mut Vec<(u64, WatchEvent)>,
    ) {
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            for id in self.watches.keys() {
                push(out, *id, WatchEvent::Overflow);
            }
            return;
        }
        let Some(w) = self.wds.get(&wd) else {
            return;
        };
        let base = w.path.clone();
        let owners: Vec<u64> = w.owners.iter().copied().collect();
        if mask.intersects(
            ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::UNMOUNT,
        ) {
            // The directory itself went away. For a watch's root, that ends the watch; below
            // it, its parent's event said so already.
            for id in self.roots(wd) {
                push(out, id, WatchEvent::Gone);
                self.drop_watch(id);
            }
            if mask.contains(ReadFlags::IGNORED) {
                self.wds.remove(&wd);
            }
            return;
        }
        let path = match name {
            Some(n) => join(&base, n),
            None => base,
        };
        let op = if mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
            WatchOp::Create
        } else if mask.intersects(ReadFlags::MODIFY | ReadFlags::CLOSE_WRITE) {
            WatchOp::Write
        } else if mask.contains(ReadFlags::DELETE) {
            WatchOp::Remove
        } else if mask.contains(ReadFlags::MOVED_FROM) {
            WatchOp::Rename
        } else if mask.contains(ReadFlags::ATTRIB) {
            WatchOp::Chmod
        } else {
            return;
        };
        for id in &owners {
            push(
                out,
                *id,
                WatchEvent::Change {
                    op,
                    path: path.clone(),
                },
            );
        }
        if !mask.contains(ReadFlags::ISDIR) || name.is_none() {
            return;
        }
        let recursive: Vec<u64> = owners
            .into_iter()
            .filter(|id| self.watches.get(id).is_some_and(|s| s.recursive))
            .collect();
        for id in recursive {
            if mask.contains(ReadFlags::MOVED_FROM) {
                // Moved away (if it was moved within the tree, MOVED_TO watches it again).
                self.drop_subtree(id, &path);
            } else if mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                self.watch_new_dir(id, &path, mask.contains(ReadFlags::CREATE), out);
            }
        }
    }

    /// A directory appeared under recursive watch `id`: watch it and everything below.
    fn watch_new_dir(
        &mut self,
        id: u64,
        path: &str,
        created: bool,
        out: &mut Vec<(u64, WatchEvent)>,
    ) {
        let Ok(fd) = open_dir(path, OFlags::RDONLY | OFlags::NOFOLLOW) else {
            return; // gone again, or not a directory any more
        };
        if on_proc(&fd) {
            return;
        }
        let result = match self.add(&fd, path, id, path) {
            Ok(_) if created => self.add_tree(fd, path, id, path, Some(out)),
            Ok(_) => self.add_tree(fd, path, id, path, None),
            Err(e) => Err(e),
        };
        if let Err(e) = result
            && e.errno == libc::ENOSPC
        {
            // Past the limit: what happens below there is not seen.
            push(out, id, WatchEvent::Overflow);
        }
    }
}

/// Appends an event unless it repeats the one just before (IN_MODIFY then IN_CLOSE_WRITE).
fn push(out: &mut Vec<(u64, WatchEvent)>, id: u64, ev: WatchEvent) {
    if out.last().is_some_and(|(i, e)| *i == id && *e == ev) {
        return;
    }
    out.push((id, ev));
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
