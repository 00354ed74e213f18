//! File-level helpers shared by v1 and v2: the mkdir/rmdir seam (so unit tests can stand in for
//! the kernel populating a new cgroup directory), control-file reads and writes, the kill loop and
//! bounded rmdir.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// How long `destroy` keeps killing and retrying rmdir before reporting leftovers.
pub(crate) const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// The operations whose effect differs between cgroupfs and a plain directory: on cgroupfs the
/// kernel fills a new directory with control files, rmdir ignores them, and some writes have
/// side effects (`+memory` to subtree_control adds a word, a pid to cgroup.procs moves a process).
/// Reads go straight to the files.
pub(crate) trait CgroupFs: Send + Sync + fmt::Debug {
    fn mkdir(&self, dir: &Path) -> io::Result<()>;
    fn rmdir(&self, dir: &Path) -> io::Result<()>;
    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        write_file(file, value)
    }
}

/// The real kernel: plain mkdir(2)/rmdir(2).
#[derive(Debug)]
pub(crate) struct RealFs;

impl CgroupFs for RealFs {
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)
    }
    fn rmdir(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir(dir)
    }
}

/// Reads a control file, trimmed.
pub(crate) fn read_trimmed(file: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(file)?.trim().to_string())
}

/// Writes `value` to an existing control file in one write. Never creates the file: a missing
/// control file means the controller is not there, which must fail rather than be faked.
pub(crate) fn write_file(file: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(file)?;
    f.write_all(value.as_bytes())
}

/// Value of `key` in a flat-keyed file ("key value" per line), if present and numeric.
pub(crate) fn read_keyed(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    keyed_value(&text, key)
}

/// Parses a flat-keyed text for `key`.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// A single-number file ("max" reads as None).
pub(crate) fn read_u64(file: &Path) -> Option<u64> {
    read_trimmed(file).ok()?.parse().ok()
}

/// Whether the host has any active swap, from /proc/swaps contents. Unreadable (other than
/// absent, which means CONFIG_SWAP=n) counts as active: the caller then fails closed.
pub(crate) fn swap_active(swaps_path: &Path) -> bool {
    match fs::read_to_string(swaps_path) {
        Ok(text) => text.lines().skip(1).any(|l| !l.trim().is_empty()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

/// Pids listed in a cgroup.procs file; a missing file (directory gone) lists none.
pub(crate) fn list_pids(procs: &Path) -> io::Result<Vec<i32>> {
    match fs::read_to_string(procs) {
        Ok(text) => Ok(text
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One SIGKILL pass over the pids in `procs`. A pidfd is opened for each listed pid, then the file
/// is read again and only processes still listed are signalled: a pid that exited and was reused by
/// an unrelated process between the two reads is never signalled (its pidfd refers to the old one).
/// Returns how many processes were still listed.
pub(crate) fn kill_pass(procs: &Path) -> io::Result<usize> {
    let first = list_pids(procs)?;
    if first.is_empty() {
        return Ok(0);
    }
    let fds: Vec<_> = first
        .iter()
        .filter_map(|&p| {
            let pid = Pid::from_raw(p)?;
            pidfd_open(pid, PidfdFlags::empty()).ok().map(|fd| (p, fd))
        })
        .collect();
    let still = list_pids(procs)?;
    for (p, fd) in &fds {
        if still.contains(p) {
            // ESRCH (already exited) is the outcome we want anyway.
            let _ = pidfd_send_signal(fd, Signal::KILL);
        }
    }
    Ok(still.len())
}

/// Kills everything listed in the given cgroup.procs files until all are empty or the deadline
/// passes. Returns the files that still list processes (with why).
pub(crate) fn kill_until_empty(procs_files: &[&Path], deadline: Instant) -> Vec<String> {
    loop {
        let mut busy = Vec::new();
        for procs in procs_files {
            match kill_pass(procs) {
                Ok(0) => {}
                Ok(n) => busy.push(format!("{}: {n} processes still present", procs.display())),
                Err(e) => busy.push(format!("{}: cannot read: {e}", procs.display())),
            }
        }
        if busy.is_empty() || Instant::now() >= deadline {
            return busy;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// rmdir with retries on EBUSY (a killed task can take a moment to leave the cgroup). A directory
/// that is already gone counts as removed.
pub(crate) fn rmdir_retry(fs: &dyn CgroupFs, dir: &Path, deadline: Instant) -> io::Result<()> {
    loop {
        match fs.rmdir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}
