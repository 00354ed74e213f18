//! A fake cgroupfs: plain files and directories in a temp dir, with a mkdir that populates the new
//! directory the way the kernel would, a subtree_control that adds words, and a cgroup.procs that
//! records joins instead of writing (so destroy never signals a real pid from a unit test).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cgroup::fsops::{CgroupFs, write_file};

pub(super) type Template = dyn Fn(&Path) -> Vec<(&'static str, String)> + Send + Sync;

pub(super) struct FakeFs {
    template: Box<Template>,
    /// (file, value) for every write, in order.
    pub(super) writes: Mutex<Vec<(PathBuf, String)>>,
    /// Writes to files with this name succeed but change nothing (a kernel that ignores a value).
    pub(super) ignore_writes_to: Option<&'static str>,
    /// Writes to files with this name fail with this errno.
    pub(super) fail_writes_to: Option<(&'static str, i32)>,
}

impl fmt::Debug for FakeFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeFs").finish_non_exhaustive()
    }
}

impl FakeFs {
    pub(super) fn with(
        template: Box<Template>,
        ignore_writes_to: Option<&'static str>,
        fail_writes_to: Option<(&'static str, i32)>,
    ) -> Arc<FakeFs> {
        Arc::new(FakeFs {
            template,
            writes: Mutex::new(Vec::new()),
            ignore_writes_to,
            fail_writes_to,
        })
    }
    pub(super) fn new(template: Box<Template>) -> Arc<FakeFs> {
        Self::with(template, None, None)
    }
    pub(super) fn ignoring(template: Box<Template>, file: &'static str) -> Arc<FakeFs> {
        Self::with(template, Some(file), None)
    }
    /// Writes made to files called `name`.
    pub(super) fn writes_to(&self, name: &str) -> Vec<(PathBuf, String)> {
        let all = self.writes.lock().map(|g| g.clone()).unwrap_or_default();
        all.into_iter()
            .filter(|(f, _)| f.file_name().is_some_and(|n| n == name))
            .collect()
    }
}

impl CgroupFs for FakeFs {
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)?;
        for (name, content) in (self.template)(dir) {
            fs::write(dir.join(name), content)?;
        }
        Ok(())
    }

    fn rmdir(&self, dir: &Path) -> io::Result<()> {
        let mut files = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            files.push(e.path());
        }
        for f in files {
            fs::remove_file(f)?;
        }
        fs::remove_dir(dir)
    }

    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Ok(mut w) = self.writes.lock() {
            w.push((file.to_path_buf(), value.to_string()));
        }
        if let Some((_, errno)) = self.fail_writes_to.filter(|(f, _)| *f == name) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if Some(name) == self.ignore_writes_to {
            return fs::metadata(file).map(|_| ());
        }
        match name {
            // Recorded above; never written, so destroy cannot signal a real pid.
            "cgroup.procs" => fs::metadata(file).map(|_| ()),
            "cgroup.subtree_control" => {
                let mut set: BTreeSet<String> = fs::read_to_string(file)?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                for w in value.split_whitespace() {
                    match (w.strip_prefix('+'), w.strip_prefix('-')) {
                        (Some(c), _) => set.insert(c.to_string()),
                        (_, Some(c)) => set.remove(c),
                        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
                    };
                }
                write_file(file, &set.into_iter().collect::<Vec<_>>().join(" "))
            }
            _ => write_file(file, value),
        }
    }
}

/// Writes `content` to `root/rel`, creating parent directories.
pub(super) fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, content).unwrap();
}

pub(super) fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap().trim().to_string()
}

pub(super) const NO_SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
pub(super) const SOME_SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swapfile                               file\t\t1048572\t\t0\t\t-2\n";

pub(super) const UNLIMITED: &str = "9223372036854771712";

/// Files the kernel puts in a new v1 memory cgroup (`memsw`: swap accounting on).
pub(super) fn v1_memory_files(memsw: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("cgroup.procs", String::new()),
        ("tasks", String::new()),
        ("memory.limit_in_bytes", UNLIMITED.into()),
        ("memory.max_usage_in_bytes", "0".into()),
        ("memory.failcnt", "0".into()),
        (
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n".into(),
        ),
        ("memory.swappiness", "60".into()),
    ];
    if memsw {
        v.push(("memory.memsw.limit_in_bytes", UNLIMITED.into()));
    }
    v
}

pub(super) fn v1_cpu_files() -> Vec<(&'static str, String)> {
    vec![
        ("cgroup.procs", String::new()),
        ("cpu.cfs_period_us", "100000".into()),
        ("cpu.cfs_quota_us", "-1".into()),
        ("cpuacct.usage", "0".into()),
    ]
}

pub(super) fn v1_pids_files() -> Vec<(&'static str, String)> {
    vec![
        ("cgroup.procs", String::new()),
        ("pids.max", "max".into()),
        ("pids.current", "0".into()),
        ("pids.events", "max 0\n".into()),
    ]
}

/// Files of a new non-root v2 cgroup; cgroup.controllers mirrors the parent's subtree_control.
pub(super) fn v2_files(dir: &Path, swap_max: bool) -> Vec<(&'static str, String)> {
    let parent_subtree = dir
        .parent()
        .and_then(|p| fs::read_to_string(p.join("cgroup.subtree_control")).ok())
        .unwrap_or_default();
    let mut v = vec![
        ("cgroup.controllers", parent_subtree.trim().to_string()),
        ("cgroup.subtree_control", String::new()),
        ("cgroup.procs", String::new()),
        ("cgroup.type", "domain".into()),
        ("cgroup.kill", String::new()),
        ("memory.max", "max".into()),
        ("memory.peak", "0".into()),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n".into(),
        ),
        ("cpu.max", "max 100000".into()),
        (
            "cpu.stat",
            "usage_usec 0\nuser_usec 0\nsystem_usec 0\n".into(),
        ),
        ("pids.max", "max".into()),
        ("pids.current", "0".into()),
        ("pids.events", "max 0\n".into()),
    ];
    if swap_max {
        v.push(("memory.swap.max", "max".into()));
    }
    v
}
