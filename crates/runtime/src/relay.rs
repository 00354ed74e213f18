//! Threads that move bytes and events for one run: stdin in, stdout/stderr out (counted against
//! the output cap), control frames from the agent, termination signals, the rw-workspace disk watch.
//! Each sends [`Event`]s to the supervisor's loop; none decides anything itself.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};
use stockade_agent::protocol::AgentMsg;

#[derive(Debug)]
pub enum Event {
    Agent(AgentMsg),
    /// A connection the agent handed over, with its socket.
    Handoff(AgentMsg, std::os::fd::OwnedFd),
    ControlClosed,
    OutputLimit,
    DiskLimit,
    Signal(i32),
}

/// Bytes of stdout+stderr still allowed, shared by both relays.
#[derive(Clone)]
pub struct OutputBudget {
    used: Arc<AtomicU64>,
    max: u64,
}

impl OutputBudget {
    pub fn new(max: u64) -> Self {
        OutputBudget {
            used: Arc::new(AtomicU64::new(0)),
            max,
        }
    }
    /// Bytes passed through (at most the cap).
    pub fn written(&self) -> u64 {
        self.used.load(Ordering::SeqCst).min(self.max)
    }
    /// Reserves `n` bytes; returns how many may be written (less than `n` once the cap is reached).
    fn take(&self, n: u64) -> u64 {
        let before = self.used.fetch_add(n, Ordering::SeqCst);
        self.max.saturating_sub(before).min(n)
    }
}

pub fn control_reader(ctrl: UnixStream, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut r = stockade_agent::protocol::FdFrameReader::new(ctrl);
        loop {
            match r.next_frame::<AgentMsg>() {
                Ok(Some(m)) => {
                    let last = matches!(
                        m,
                        AgentMsg::Exited { .. }
                            | AgentMsg::SetupFailed { .. }
                            | AgentMsg::ExecFailed { .. }
                    );
                    let ev = match m {
                        AgentMsg::Connect { .. } | AgentMsg::Proxy => match r.take_fd() {
                            Some(fd) => Event::Handoff(m, fd),
                            None => continue, // a hand-off without its socket: nothing to serve
                        },
                        other => Event::Agent(other),
                    };
                    if tx.send(ev).is_err() || last {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = tx.send(Event::ControlClosed);
                    return;
                }
            }
        }
    });
}

pub fn output<W: Write + Send + 'static>(
    mut from: std::fs::File,
    mut to: W,
    budget: OutputBudget,
    tx: Sender<Event>,
) -> Done {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _done = done_tx; // dropped when this thread ends: the receiver then sees it at once
        let mut buf = vec![0u8; 64 * 1024];
        let mut over = false;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if over {
                continue; // drain so the writer is not blocked while it is being stopped
            }
            let allowed = budget.take(n as u64) as usize;
            if allowed > 0
                && to
                    .write_all(&buf[..allowed])
                    .and_then(|()| to.flush())
                    .is_err()
            {
                // Our own stdout is gone: keep draining, nothing more to show.
                over = true;
            }
            if allowed < n {
                over = true;
                let _ = tx.send(Event::OutputLimit);
            }
        }
    });
    Done(done)
}

/// Completion of a relay thread.
pub struct Done(std::sync::mpsc::Receiver<()>);

/// Copies our stdin into the sandbox until EOF; detached (a terminal read may never return).
pub fn input(mut to: std::fs::File) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Turns SIGINT, SIGTERM and SIGHUP into events. The signals are blocked in this thread's parent
/// (the caller blocks them before spawning any thread; see `block_termination_signals`).
pub fn signals(tx: Sender<Event>) {
    std::thread::spawn(move || {
        loop {
            let set = termination_set();
            let mut sig = 0;
            // SAFETY: `set` and `sig` are valid for the call; sigwait only reads/writes them.
            let r = unsafe { libc::sigwait(&set, &mut sig) };
            if r == 0 && tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t on this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Blocks SIGINT/SIGTERM/SIGHUP in the calling thread (and the threads it starts afterwards), so
/// only the signal thread receives them. Call at the start of `main`, before any thread exists.
pub fn block_termination_signals() {
    let set = termination_set();
    // SAFETY: `set` is initialised; pthread_sigmask only reads it.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Bytes allocated under `root`, walked through directory descriptors opened with `O_NOFOLLOW`
/// relative to their parent: the sandbox writes this tree while it is walked, and a directory
/// swapped for a symlink must not lead the walk out of the workspace. Bounded to
/// [`crate::track::MAX_ENTRIES`] entries per walk.
pub fn usage(root: &std::path::Path) -> u64 {
    use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, openat, statat};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(top) = openat(rustix::fs::CWD, root, flags, Mode::empty()) else {
        return 0;
    };
    let Ok(st) = rustix::fs::fstat(&top) else {
        return 0;
    };
    let dev = st.st_dev;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![top];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = Dir::read_from(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            seen += 1;
            if seen > crate::track::MAX_ENTRIES {
                return total;
            }
            let Ok(st) = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory
                && st.st_dev == dev
                && let Ok(sub) = openat(&dir, name, flags, Mode::empty())
            {
                stack.push(sub);
            }
        }
    }
    total
}

/// The shortest pause between two checks of the disk watcher.
const DISK_CHECK: Duration = Duration::from_millis(100);

/// Watches the growth of a writable workspace against the disk budget (the fallback when no
/// filesystem project quota is available).
///
/// Growth counts the tree (by name) plus the files the sandbox's processes hold open on the
/// workspace's filesystem after unlinking them (`procs`: the sandbox's cgroup.procs files), which
/// no walk by name would see. The two are paced apart, each by its own cost, so a large
/// workspace or a sandbox with many descriptors costs a bounded share of one core (at most a
/// sixth for the walk, an eleventh for the scan) and the cheap one is never held back by the
/// other: at the gvisor level the scan reads the descriptor tables of runsc and of one ptrace
/// stub per task of the sandbox (hundreds of descriptors each, tens of milliseconds a scan, more
/// under load), and pacing the walk by it left a burst into a named file unseen for seconds.
/// The walk runs every 100 ms, or 5 times its cost when that is longer, so a burst faster than
/// that can land before it is seen: [`DiskWatch::over`] tells, after the run, by how much the
/// final state is over.
pub fn disk_watch(root: PathBuf, budget: u64, tx: Sender<Event>, procs: Vec<PathBuf>) -> DiskWatch {
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let baseline = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let (r, p, b) = (root.clone(), procs, baseline.clone());
    std::thread::spawn(move || {
        let baseline = usage(&r);
        b.store(baseline, Ordering::SeqCst);
        let walk = || usage(&r);
        let scan = || unlinked_open(&r, &p);
        if watch(baseline, budget, &done, walk, scan) {
            let _ = tx.send(Event::DiskLimit);
        }
    });
    DiskWatch {
        stop,
        root,
        baseline,
        budget,
    }
}

/// The watcher's loop: true once `walk() + scan()` (the last scan's value) is `budget` past
/// `baseline`, false when `done` is set first. `walk` runs every [`DISK_CHECK`] or 5 times its
/// cost; `scan` when due, every [`DISK_CHECK`] or 10 times its cost.
fn watch(
    baseline: u64,
    budget: u64,
    done: &AtomicBool,
    mut walk: impl FnMut() -> u64,
    mut scan: impl FnMut() -> u64,
) -> bool {
    let mut hidden = 0u64;
    let mut next_scan = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let t = Instant::now();
        if t >= next_scan {
            hidden = scan();
            next_scan = Instant::now() + (t.elapsed() * 10).max(DISK_CHECK);
        }
        let w = Instant::now();
        if walk().saturating_add(hidden).saturating_sub(baseline) >= budget {
            return true;
        }
        std::thread::sleep((w.elapsed() * 5).max(DISK_CHECK));
    }
    false
}

/// The workspace disk watcher of one run.
pub struct DiskWatch {
    stop: Arc<AtomicBool>,
    root: PathBuf,
    /// The tree's size before the command ran (u64::MAX until the first walk is done).
    baseline: Arc<std::sync::atomic::AtomicU64>,
    budget: u64,
}

impl DiskWatch {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// After the run: how much the workspace grew past the budget (None: within it).
    pub fn over(&self) -> Option<u64> {
        let baseline = self.baseline.load(Ordering::SeqCst);
        if baseline == u64::MAX {
            return None;
        }
        let grown = usage(&self.root).saturating_sub(baseline);
        (grown >= self.budget).then(|| grown - self.budget)
    }
}

/// Bytes of regular files on `root`'s filesystem that the processes listed in `procs` hold open
/// after they were unlinked (each inode once). `procs` are the cgroup.procs files of the
/// sandbox's hierarchies, which list the same processes: each is scanned once.
pub fn unlinked_open(root: &std::path::Path, procs: &[PathBuf]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(root).map(|m| m.dev()) else {
        return 0;
    };
    let pids: std::collections::BTreeSet<u32> = procs
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|list| {
            list.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat through the magic link: the open file itself, wherever it is.
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if m.is_file() && m.nlink() == 0 && m.dev() == dev && seen.insert(m.ino()) {
                total = total.saturating_add(m.blocks().saturating_mul(512));
            }
        }
    }
    total
}

/// Waits until the relay has drained its pipe (EOF), at most `limit`.
pub fn join_bounded(d: Done, limit: Duration) {
    let _ = d.0.recv_timeout(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlinked_open_files_are_counted_once() {
        let ws = tempfile::tempdir().unwrap();
        let p = ws.path().join("gone");
        let mut f = std::fs::File::create(&p).unwrap();
        std::io::Write::write_all(&mut f, &vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let _again = std::fs::File::open(&p).unwrap(); // a second descriptor, same inode
        let procs = ws.path().join("procs");
        std::fs::write(&procs, format!("{}\n", std::process::id())).unwrap();
        // Control: while it has a name, the walk counts it and this does not.
        assert_eq!(unlinked_open(ws.path(), std::slice::from_ref(&procs)), 0);
        std::fs::remove_file(&p).unwrap();
        let n = unlinked_open(ws.path(), &[procs]);
        assert!((1 << 20..2 << 20).contains(&n), "{n}");
        assert!(usage(ws.path()) < 1 << 20);
    }

    #[test]
    fn a_slow_scan_does_not_hold_back_the_walk() {
        // The scan takes 300 ms (as reading runsc's descriptor tables can); the workspace grows
        // past the budget at 0.5 s. Paced together (5 times walk + scan), the next check would
        // come about 1.6 s later; paced apart, the walk sees it within its 100 ms.
        let grown = Arc::new(AtomicU64::new(0));
        let g = grown.clone();
        let at = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            g.store(1 << 20, Ordering::SeqCst);
            Instant::now()
        });
        let done = AtomicBool::new(false);
        let slow_scan = || {
            std::thread::sleep(Duration::from_millis(300));
            0
        };
        let over = watch(
            0,
            1 << 20,
            &done,
            || grown.load(Ordering::SeqCst),
            slow_scan,
        );
        let seen = at.join().unwrap().elapsed();
        assert!(over);
        assert!(
            seen < Duration::from_millis(800),
            "seen {seen:?} after the growth"
        );
        // Control: what only the scan sees counts too, from the first check.
        let t = Instant::now();
        assert!(watch(0, 1 << 20, &done, || 0, || 1 << 20));
        assert!(t.elapsed() < Duration::from_millis(100));
        // Stopped before the budget is reached: false.
        let done = AtomicBool::new(true);
        assert!(!watch(0, 1 << 20, &done, || 0, || 0));
    }

    #[test]
    fn usage_counts_the_tree_and_never_follows_a_symlink_out() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![1u8; 4 << 20]).unwrap();
        std::fs::create_dir(ws.path().join("d")).unwrap();
        std::fs::write(ws.path().join("d/f"), vec![1u8; 64 << 10]).unwrap();
        let before = usage(ws.path());
        assert!(before >= 64 << 10, "{before}");
        std::os::unix::fs::symlink(outside.path(), ws.path().join("link")).unwrap();
        let after = usage(ws.path());
        assert!(after < 1 << 20, "the walk followed a symlink out: {after}");
        // Control: walking the outside tree itself does count the 4 MiB.
        assert!(usage(outside.path()) >= 4 << 20);
    }
}
