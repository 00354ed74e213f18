//! Read notifications for sensitive files (`audit.sensitive`), through fanotify.
//!
//! fanotify needs CAP_SYS_ADMIN in the initial user namespace, so this works when stockade runs
//! as root; elsewhere [`Watcher::new`] fails and `doctor` says file.read events are unavailable.
//! Marks are inode marks: a file marked on the host is reported however the sandbox reaches it
//! (bind mount, same inode). A marked directory reports opens of its direct children only.
//! Events carry the opener's host pid; the caller attributes them to its sandbox.
//!
//! Where the kernel offers permission events (FAN_CLASS_CONTENT, FAN_OPEN_PERM), the opener
//! waits in open(2) until the event is answered (always "allow"), so its uid is read from /proc
//! while it is certainly alive: a short-lived reader (`cat .env`) is attributed exactly instead
//! of being missed once it has exited. Otherwise plain notifications (FAN_OPEN) are used and an
//! opener that exits before it is looked at cannot be attributed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const FAN_CLASS_NOTIF: u32 = 0;
const FAN_CLASS_CONTENT: u32 = 0x4;
const FAN_OPEN_PERM: u64 = 0x0001_0000;
const FAN_ALLOW: u32 = 0x01;
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
    /// Permission events: each open waits for our answer.
    perm: bool,
}

/// One open of a watched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub pid: i32,
    pub path: PathBuf,
    /// The opener's real uid, read while it waited in open(2) (permission events only).
    pub uid: Option<u32>,
}

/// The real uid of a process, from /proc.
pub fn uid_of(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Watcher {
    /// Watches opens of each path (files, or the direct children of directories): with
    /// permission events where the kernel has them, else plain notifications.
    pub fn new(paths: &[PathBuf]) -> io::Result<Watcher> {
        match Watcher::with_class(paths, true) {
            Ok(w) => Ok(w),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Watcher::with_class(paths, false),
            Err(e) => Err(e),
        }
    }

    fn with_class(paths: &[PathBuf], perm: bool) -> io::Result<Watcher> {
        let class = if perm {
            FAN_CLASS_CONTENT
        } else {
            FAN_CLASS_NOTIF
        };
        // SAFETY: fanotify_init takes integers and returns a new descriptor we own.
        let fd = unsafe {
            libc::fanotify_init(
                class | FAN_CLOEXEC | FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let w = Watcher { fd, perm };
        let open = if perm { FAN_OPEN_PERM } else { FAN_OPEN };
        for p in paths {
            let c = crate::sys::cstr(p)?;
            let mask = if p.is_dir() {
                open | FAN_EVENT_ON_CHILD
            } else {
                open
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
                let mask = u64::from_ne_bytes(rd(8, 16).try_into().unwrap_or([0; 8]));
                let fd = i32::from_ne_bytes(rd(16, 20).try_into().unwrap_or([0; 4]));
                let pid = i32::from_ne_bytes(rd(20, 24).try_into().unwrap_or([0; 4]));
                if fd >= 0 {
                    // SAFETY: the kernel gave us this descriptor with the event; we own and close it.
                    let file = unsafe { OwnedFd::from_raw_fd(fd) };
                    // The opener is blocked in open(2) until answered: it is alive now.
                    let uid = if self.perm { uid_of(pid) } else { None };
                    if self.perm && mask & FAN_OPEN_PERM != 0 {
                        self.allow(&file);
                    }
                    if let Ok(path) =
                        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                    {
                        out.push(Open { pid, path, uid });
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

impl Watcher {
    /// Answers a permission event: always allow (the watcher observes, it never refuses).
    fn allow(&self, file: &OwnedFd) {
        // struct fanotify_response { __s32 fd; __u32 response; }
        let mut resp = [0u8; 8];
        resp[..4].copy_from_slice(&file.as_raw_fd().to_ne_bytes());
        resp[4..].copy_from_slice(&FAN_ALLOW.to_ne_bytes());
        // SAFETY: writing an 8-byte response from a stack buffer to our own fanotify descriptor.
        unsafe { libc::write(self.fd.as_raw_fd(), resp.as_ptr().cast(), resp.len()) };
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
        // With permission events the open waits for our answer: open from another thread.
        let s2 = secret.clone();
        let reader = std::thread::spawn(move || std::fs::read(&s2).unwrap());
        let mut got = Vec::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.is_empty() && std::time::Instant::now() < until {
            got = w.drain();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(reader.join().unwrap(), b"K=V", "the open was allowed");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].path, secret);
        assert_eq!(got[0].pid, std::process::id() as i32);
        if w.perm {
            assert_eq!(
                got[0].uid,
                Some(0),
                "the opener's uid, read while it waited"
            );
        }
    }
}
