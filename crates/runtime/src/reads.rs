//! `file.read` events for the paths the policy marks sensitive (`audit.sensitive`), from
//! fanotify (root only). An open is attributed to this sandbox when the opener runs as the
//! sandbox's own host uid (root-launched sandboxes have one each), read from /proc while the
//! opener waits for the permission event's answer (see `stockade_jail::fanotify`); on kernels
//! without permission events, an opener that exited before it could be checked is not
//! attributed (documented limitation).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use stockade_audit::{EventKind, Recorder};
use stockade_jail::fanotify::{self, Watcher};

pub struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Watch {
    pub fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

/// Starts watching; Err with the reason when fanotify is not available to this process.
pub fn watch(
    workspace: &Path,
    sensitive: &[PathBuf],
    host_uid: u32,
    recorder: Arc<Mutex<Recorder>>,
    exec_id: String,
) -> Result<Watch, String> {
    let paths = fanotify::resolve(workspace, sensitive);
    let w = Watcher::new(&paths).map_err(|e| format!("fanotify: {e} (file.read needs root)"))?;
    let ws = workspace.to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let handle = std::thread::spawn(move || {
        loop {
            let mut pfd = libc::pollfd {
                fd: w.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on this frame for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 20) };
            for open in w.drain() {
                let uid = open.uid.or_else(|| fanotify::uid_of(open.pid));
                if uid != Some(host_uid) {
                    continue;
                }
                let path = relative(&ws, &open.path);
                if let Ok(mut r) = recorder.lock() {
                    let _ = r.emit(
                        Some(&exec_id),
                        EventKind::FileRead {
                            path: path.display().to_string(),
                        },
                    );
                }
            }
            if done.load(Ordering::SeqCst) {
                return;
            }
        }
    });
    Ok(Watch { stop, handle })
}

/// The workspace-relative name of an opened file. Through an overlay workspace the kernel names
/// the file relative to the overlay's root ("/.env"), not by its host path: such a name is taken
/// as workspace-relative when it exists there.
fn relative(ws: &Path, opened: &Path) -> PathBuf {
    if let Ok(r) = opened.strip_prefix(ws) {
        return r.to_path_buf();
    }
    match opened.strip_prefix("/") {
        Ok(r) if ws.join(r).exists() => r.to_path_buf(),
        _ => opened.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_workspace_relative_in_rw_and_overlay() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".env"), "x").unwrap();
        assert_eq!(
            relative(d.path(), &d.path().join(".env")),
            PathBuf::from(".env")
        );
        assert_eq!(
            relative(d.path(), Path::new("/.env")),
            PathBuf::from(".env")
        );
        assert_eq!(
            relative(d.path(), Path::new("/etc/hosts")),
            PathBuf::from("/etc/hosts")
        );
    }
}
