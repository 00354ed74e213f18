//! Where each controller lives for the calling process: parsed from /proc/self/mountinfo and
//! /proc/self/cgroup, with every path placed under an injectable filesystem prefix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::fsops::{CgroupFs, RealFs, read_trimmed};
use super::{CgroupError, Controller, Version};

/// v1 controller names we recognise in mount options (everything else is a mount flag).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Where one controller is, for the caller.
#[derive(Clone, Debug)]
pub(crate) struct Placed {
    pub(crate) version: Version,
    /// The hierarchy's mount point (under the prefix).
    pub(crate) mount: PathBuf,
    /// The caller's own cgroup directory in that hierarchy.
    pub(crate) own: PathBuf,
}

/// Where each controller lives for the calling process (discovered from mountinfo + /proc/self/cgroup).
#[derive(Clone)]
pub struct Layout {
    pub(crate) placed: BTreeMap<Controller, Placed>,
    /// v1 cpuacct hierarchy (caller's cgroup), used only for CPU usage stats.
    pub(crate) cpuacct: Option<Placed>,
    /// The cgroup2 mount, if any.
    pub(crate) v2: Option<Placed>,
    /// Controllers the cgroup2 root offers (its cgroup.controllers).
    pub(crate) v2_available: Vec<String>,
    pub(crate) v1_mounted: bool,
    /// Hierarchies that could not be used, with why (shown in `summary`).
    pub(crate) problems: Vec<String>,
    /// Where the host's swap list is read from (/proc/swaps unless injected).
    pub(crate) swaps_path: PathBuf,
    pub(crate) fs: Arc<dyn CgroupFs>,
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout")
            .field("placed", &self.placed)
            .field("cpuacct", &self.cpuacct)
            .field("v2", &self.v2)
            .field("v2_available", &self.v2_available)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

struct Mount {
    root: String,
    mount_point: String,
    fstype: String,
    super_opts: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let err = |reason| CgroupError::Parse {
            file: PathBuf::from("/proc/self/mountinfo"),
            line: line.to_string(),
            reason,
        };
        let (pre, post) = line
            .split_once(" - ")
            .ok_or_else(|| err("no ' - ' separator"))?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            return Err(err("too few fields"));
        }
        out.push(Mount {
            root: unescape(pre[3]),
            mount_point: unescape(pre[4]),
            fstype: post[0].to_string(),
            super_opts: post[2].split(',').map(str::to_string).collect(),
        });
    }
    Ok(out)
}

/// Undoes mountinfo's octal escapes (`\040` for space and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| {
                let d = &b[i + 1..i + 4];
                d.iter().all(|c| (b'0'..=b'7').contains(c)).then(|| {
                    u8::try_from(
                        u32::from(d[0] - b'0') * 64
                            + u32::from(d[1] - b'0') * 8
                            + u32::from(d[2] - b'0'),
                    )
                    .ok()
                })
            })
            .flatten()
            .flatten();
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// /proc/self/cgroup: (hierarchy controllers, path). v2 has an empty controller list.
fn parse_proc_cgroup(text: &str) -> Result<Vec<(Vec<String>, String)>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            return Err(CgroupError::Parse {
                file: PathBuf::from("/proc/self/cgroup"),
                line: line.to_string(),
                reason: "expected id:controllers:path",
            });
        };
        let ctrls = ctrls
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        out.push((ctrls, path.to_string()));
    }
    Ok(out)
}

/// `prefix` + absolute `p`.
fn under(prefix: &Path, p: &str) -> PathBuf {
    prefix.join(p.trim_start_matches('/'))
}

/// The caller's cgroup directory: mount point + (cgroup path relative to the mount's root).
fn own_dir(prefix: &Path, m: &Mount, cg_path: &str) -> Result<Placed, String> {
    let root = m.root.trim_end_matches('/');
    let rel = cg_path
        .strip_prefix(root)
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(|| format!("cgroup {cg_path} is outside mount root {}", m.root))?;
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "cgroup path {cg_path} leaves the visible hierarchy (cgroup namespace?)"
        ));
    }
    let version = if m.fstype == "cgroup2" {
        Version::V2
    } else {
        Version::V1
    };
    let mount = under(prefix, &m.mount_point);
    Ok(Placed {
        version,
        own: mount.join(rel),
        mount,
    })
}

impl Layout {
    /// Discovers the caller's layout from /proc/self/mountinfo and /proc/self/cgroup.
    pub fn discover() -> Result<Layout, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| CgroupError::Read {
                file: p.into(),
                source,
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let cgroup = read("/proc/self/cgroup")?;
        Self::from_sources(&mountinfo, &cgroup, Path::new("/"))
            .map(|l| l.with_swaps_path(PathBuf::from("/proc/swaps")))
    }

    /// Same from given file contents and a filesystem prefix, for tests against a fake cgroupfs
    /// tree in a temp dir. The swap list is read from `<fs_prefix>/proc/swaps` (see
    /// [`Layout::with_swaps_path`]).
    pub fn from_sources(
        mountinfo: &str,
        proc_self_cgroup: &str,
        fs_prefix: &Path,
    ) -> Result<Layout, CgroupError> {
        let mounts = parse_mountinfo(mountinfo)?;
        let cgroups = parse_proc_cgroup(proc_self_cgroup)?;
        let mut layout = Layout {
            placed: BTreeMap::new(),
            cpuacct: None,
            v2: None,
            v2_available: Vec::new(),
            v1_mounted: false,
            problems: Vec::new(),
            swaps_path: fs_prefix.join("proc/swaps"),
            fs: Arc::new(RealFs),
        };
        // v1 hierarchies, one per controller set.
        for (ctrls, path) in cgroups.iter().filter(|(c, _)| !c.is_empty()) {
            let wanted: Vec<&str> = ctrls
                .iter()
                .map(String::as_str)
                .filter(|c| V1_CONTROLLERS.contains(c))
                .collect();
            if wanted.is_empty() {
                continue; // name=systemd and friends
            }
            let candidates = mounts.iter().filter(|m| {
                m.fstype == "cgroup" && wanted.iter().all(|c| m.super_opts.iter().any(|o| o == c))
            });
            let mut found = None;
            let mut why = format!("v1 hierarchy {} is not mounted", ctrls.join(","));
            for m in candidates {
                match own_dir(fs_prefix, m, path) {
                    Ok(p) => {
                        found = Some(p);
                        break;
                    }
                    Err(e) => why = e,
                }
            }
            let Some(placed) = found else {
                layout.problems.push(why);
                continue;
            };
            layout.v1_mounted = true;
            for c in &wanted {
                let slot = match *c {
                    "memory" => Controller::Memory,
                    "cpu" => Controller::Cpu,
                    "pids" => Controller::Pids,
                    "cpuacct" => {
                        layout.cpuacct = Some(placed.clone());
                        continue;
                    }
                    _ => continue,
                };
                layout.placed.insert(slot, placed.clone());
            }
        }
        // The unified hierarchy.
        if let Some((_, path)) = cgroups.iter().find(|(c, _)| c.is_empty()) {
            let mut why = "no cgroup2 mount".to_string();
            for m in mounts.iter().filter(|m| m.fstype == "cgroup2") {
                match own_dir(fs_prefix, m, path) {
                    Ok(p) => {
                        layout.v2 = Some(p);
                        break;
                    }
                    Err(e) => why = e,
                }
            }
            match &layout.v2 {
                Some(v2) => {
                    layout.v2_available = read_trimmed(&v2.mount.join("cgroup.controllers"))
                        .map(|s| s.split_whitespace().map(str::to_string).collect())
                        .unwrap_or_default();
                }
                None if mounts.iter().any(|m| m.fstype == "cgroup2") => layout.problems.push(why),
                None => {}
            }
        }
        if let Some(v2) = layout.v2.clone() {
            for c in Controller::ALL {
                if !layout.placed.contains_key(&c)
                    && layout.v2_available.iter().any(|a| a == c.name())
                {
                    layout.placed.insert(c, v2.clone());
                }
            }
        }
        Ok(layout)
    }

    /// Reads the host swap list from `path` instead (tests inject a fake /proc/swaps).
    pub fn with_swaps_path(mut self, path: PathBuf) -> Layout {
        self.swaps_path = path;
        self
    }

    /// Replaces the mkdir/rmdir seam (unit tests simulate the kernel populating directories).
    #[cfg(test)]
    pub(crate) fn with_fs(mut self, fs: Arc<dyn CgroupFs>) -> Layout {
        self.fs = fs;
        self
    }

    /// Where the caller's own cgroup for `c` is, and in which version.
    pub fn controller(&self, c: Controller) -> Option<(Version, &Path)> {
        self.placed.get(&c).map(|p| (p.version, p.own.as_path()))
    }

    /// One line for logs and `doctor`, e.g. `hybrid: memory=v1 cpu=v1 pids=v1 (cgroup2 has: hugetlb)`.
    pub fn summary(&self) -> String {
        let mode = match (self.v1_mounted, self.v2.is_some()) {
            (true, true) => "hybrid",
            (true, false) => "v1",
            (false, true) => "v2",
            (false, false) => "none",
        };
        let mut s = mode.to_string();
        s.push(':');
        for c in Controller::ALL {
            let v = match self.placed.get(&c).map(|p| p.version) {
                Some(Version::V1) => "v1",
                Some(Version::V2) => "v2",
                None => "none",
            };
            s.push_str(&format!(" {}={v}", c.name()));
        }
        if self.v2.is_some() {
            let has = if self.v2_available.is_empty() {
                "nothing".to_string()
            } else {
                self.v2_available.join(" ")
            };
            s.push_str(&format!(" (cgroup2 has: {has})"));
        }
        for p in &self.problems {
            s.push_str(&format!("; {p}"));
        }
        s
    }
}
