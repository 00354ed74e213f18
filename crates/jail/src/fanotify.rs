//! Read notifications for sensitive files (`audit.sensitive`), through fanotify.
//!
//! fanotify needs CAP_SYS_ADMIN in the initial user namespace, so this works when stockade runs
//! as root; elsewhere [`Watcher::new`] fails and `doctor` says file.read events are unavailable.
//! Marks are inode marks: a file marked on the host is reported however the sandbox reaches it
//! (bind mount, same inode). A marked directory reports opens of its direct children only.
//! Events carry the opener's host pid; the caller attributes them to its sandbox.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const FAN_CLASS_NOTIF: u32 = 0;
const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_OPEN: u64 = 0x20;
const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
/// struct fanotify_event_metadata: u32 event_len, u8 vers, u8 reserved, u16 metadata_len,
/// u64 mask, i32 fd, i32 pid.
const META_LEN: usize = 24;

pub struct Watcher {
    fd: OwnedFd,
}

/// One open of a watched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub pid: i32,
    pub path: PathBuf,
}

impl Watcher {
    /// Watches opens of each path (files, or the direct children of directories).
    pub fn new(paths: &[PathBuf]) -> io::Result<Watcher> {
        // SAFETY: fanotify_init takes integers and returns a new descriptor we own.
        let fd = unsafe {
            libc::fanotify_init(
                FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let w = Watcher { fd };
        for p in paths {
            let c = crate::sys::cstr(p)?;
            let mask = if p.is_dir() {
                FAN_OPEN | FAN_EVENT_ON_CHILD
            } else {
                FAN_OPEN
            };
            // SAFETY: `c` is a NUL-terminated path that outlives the call; the fanotify fd is ours.
            let r = unsafe {
                libc::fanotify_mark(
                    w.fd.as_raw_fd(),
                    FAN_MARK_ADD,
                    mask,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    continue; // not there (yet): nothing to read
                }
                return Err(e);
            }
        }
        Ok(w)
    }

    /// The opens reported since the last call (non-blocking).
    pub fn drain(&self) -> Vec<Open> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a stack buffer of the given length from our own descriptor.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + META_LEN <= n {
                let rd = |a: usize, b: usize| &buf[off + a..off + b];
                let event_len = u32::from_ne_bytes(rd(0, 4).try_into().unwrap_or([0; 4])) as usize;
                let fd = i32::from_ne_bytes(rd(16, 20).try_into().unwrap_or([0; 4]));
                let pid = i32::from_ne_bytes(rd(20, 24).try_into().unwrap_or([0; 4]));
                if fd >= 0 {
                    // SAFETY: the kernel gave us this descriptor with the event; we own and close it.
                    let file = unsafe { OwnedFd::from_raw_fd(fd) };
                    if let Ok(path) =
                        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                    {
                        out.push(Open { pid, path });
                    }
                }
                if event_len < META_LEN {
                    break;
                }
                off += event_len;
            }
        }
    }
}

/// The host paths to mark for `sensitive` entries relative to `workspace` (absolute ones as given).
pub fn resolve(workspace: &Path, sensitive: &[PathBuf]) -> Vec<PathBuf> {
    sensitive
        .iter()
        .map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                workspace.join(p)
            }
        })
        .collect()
}

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_an_open_of_a_marked_file_and_not_of_others() {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "fanotify needs root; run the suite as root (CI does)"
        );
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join(".env");
        let other = d.path().join("other");
        std::fs::write(&secret, "K=V").unwrap();
        std::fs::write(&other, "x").unwrap();
        let w = Watcher::new(std::slice::from_ref(&secret)).unwrap();
        let _ = std::fs::read(&other).unwrap();
        assert!(
            w.drain().is_empty(),
            "an unmarked file must not be reported"
        );
        let _ = std::fs::read(&secret).unwrap();
        let got = w.drain();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].path, secret);
        assert_eq!(got[0].pid, std::process::id() as i32);
    }
}
