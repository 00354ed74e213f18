//! [`Cgroup`]: one sandbox's cgroup across controllers and versions: create (fail closed), join,
//! stats, destroy (kill, remove, verify).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::discovery::{Layout, Placed};
use super::fsops::{CgroupFs, KILL_DEADLINE, kill_until_empty, rmdir_retry, swap_active};
use super::plan::{HostFacts, apply, cpu_quota_us, needed};
use super::{CgroupError, CleanupReport, Controller, Limits, PARENT_DIR, Stats, Version, v1, v2};

/// One directory of the sandbox: a v1 hierarchy, or the single v2 directory.
#[derive(Debug)]
pub(crate) struct Dir {
    pub(crate) version: Version,
    /// Controllers whose limits live in this directory.
    pub(crate) controllers: Vec<Controller>,
    /// v1 only: this hierarchy carries cpuacct (CPU usage stats).
    pub(crate) cpuacct: bool,
    pub(crate) leaf: PathBuf,
}

/// One sandbox's cgroup across controllers.
#[derive(Debug)]
pub struct Cgroup {
    name: String,
    /// The leaves. The `stockade` parents are shared with other sandboxes and never removed.
    dirs: Vec<Dir>,
    enforced: Vec<(Controller, Version)>,
    notes: Vec<String>,
    fs: Arc<dyn CgroupFs>,
}

/// Checks the sandbox name is one safe path component: 1-64 of `[A-Za-z0-9_.-]`, no `..`.
pub fn validate_name(name: &str) -> Result<(), CgroupError> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 64 {
        return bad("longer than 64 characters");
    }
    if name.contains("..") {
        return bad("contains '..'");
    }
    if name == "." {
        return bad("is '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("contains a character outside [A-Za-z0-9_.-] (such as '/' or NUL)");
    }
    Ok(())
}

/// Creates a `stockade` parent; one that exists already is fine (parents persist and are shared
/// by concurrent sandboxes).
fn mkdir_parent(fs: &dyn CgroupFs, c: Controller, dir: &Path) -> Result<(), CgroupError> {
    match fs.mkdir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            controller: c,
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn mkdir_leaf(fs: &dyn CgroupFs, c: Controller, dir: &Path) -> Result<(), CgroupError> {
    match fs.mkdir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CgroupError::NameInUse {
            controller: c,
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(CgroupError::Create {
            controller: c,
            path: dir.to_path_buf(),
            source,
        }),
    }
}

impl Cgroup {
    /// Creates `<caller's cgroup>/stockade/<name>` for every controller a limit needs (v1: per
    /// hierarchy; v2: one directory, enabling controllers in `cgroup.subtree_control` of the parents
    /// it creates or finds), writes the limits and reads each back. A `stockade` parent that
    /// already exists (another sandbox's, or left by an earlier one) is used as is. Fails closed:
    /// a limit that cannot be applied is an error naming the controller and reason, and the leaves
    /// created are removed (the parents stay, as after [`Cgroup::destroy`]).
    pub fn create(layout: &Layout, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        validate_name(name)?;
        if let Some(cpus) = limits.cpus {
            cpu_quota_us(cpus)?;
        }
        let mut cg = Cgroup {
            name: name.to_string(),
            dirs: Vec::new(),
            enforced: Vec::new(),
            notes: Vec::new(),
            fs: Arc::clone(&layout.fs),
        };
        match cg.build(layout, limits) {
            Ok(()) => Ok(cg),
            Err(e) => {
                // Best effort: the error is what the caller needs; leftovers cannot be reported
                // better than by the error itself and a later sweep_stale.
                let _ = cg.destroy_inner();
                Err(e)
            }
        }
    }

    fn build(&mut self, layout: &Layout, limits: &Limits) -> Result<(), CgroupError> {
        let needed = needed(limits);
        let mut v2_needed = Vec::new();
        for &c in &needed {
            let placed =
                layout
                    .placed
                    .get(&c)
                    .ok_or_else(|| CgroupError::ControllerUnavailable {
                        controller: c,
                        reason: format!("not on any mounted hierarchy ({})", layout.summary()),
                    })?;
            match placed.version {
                Version::V2 => v2_needed.push(c),
                Version::V1 => {
                    if c == Controller::Memory
                        && limits.swap_bytes.is_some()
                        && limits.memory_bytes.is_none()
                    {
                        return Err(CgroupError::SwapNeedsMemoryLimit);
                    }
                    self.add_v1(c, placed)?;
                }
            }
        }
        // cpuacct for CPU usage stats when it is a separate v1 hierarchy: best effort, no limit there.
        if let (Some(acct), true) = (&layout.cpuacct, needed.contains(&Controller::Cpu)) {
            let leaf = acct.own.join(PARENT_DIR).join(&self.name);
            if let Some(d) = self.dirs.iter_mut().find(|d| d.leaf == leaf) {
                d.cpuacct = true;
            } else if let Err(e) = self.add_v1_dir(Controller::Cpu, acct, true) {
                self.notes.push(format!("cpu usage stats unavailable: {e}"));
            }
        }
        if !v2_needed.is_empty() {
            let v2mount = layout
                .v2
                .as_ref()
                .ok_or_else(|| CgroupError::ControllerUnavailable {
                    controller: v2_needed[0],
                    reason: "no cgroup2 mount".into(),
                })?;
            self.add_v2(v2mount, &v2_needed)?;
        }
        let swap_active = swap_active(&layout.swaps_path);
        for d in &self.dirs {
            for &c in &d.controllers {
                let facts = HostFacts {
                    dir: &d.leaf,
                    swap_active,
                };
                let plan = match d.version {
                    Version::V1 => v1::plan(c, limits, &facts)?,
                    Version::V2 => v2::plan(c, limits, &facts)?,
                };
                apply(&*self.fs, &d.leaf, &plan.writes)?;
                self.notes.extend(plan.notes);
                self.enforced.push((c, d.version));
            }
        }
        self.enforced.sort();
        Ok(())
    }

    fn add_v1(&mut self, c: Controller, placed: &Placed) -> Result<(), CgroupError> {
        // Co-mounted controllers (e.g. cpu,cpuacct or memory,pids) share one directory.
        let leaf = placed.own.join(PARENT_DIR).join(&self.name);
        if let Some(d) = self.dirs.iter_mut().find(|d| d.leaf == leaf) {
            d.controllers.push(c);
            return Ok(());
        }
        self.add_v1_dir(c, placed, false)
    }

    fn add_v1_dir(
        &mut self,
        c: Controller,
        placed: &Placed,
        cpuacct_only: bool,
    ) -> Result<(), CgroupError> {
        let parent = placed.own.join(PARENT_DIR);
        mkdir_parent(&*self.fs, c, &parent)?;
        let leaf = parent.join(&self.name);
        mkdir_leaf(&*self.fs, c, &leaf)?;
        let controllers = if cpuacct_only { Vec::new() } else { vec![c] };
        self.dirs.push(Dir {
            version: Version::V1,
            controllers,
            cpuacct: cpuacct_only,
            leaf,
        });
        Ok(())
    }

    fn add_v2(&mut self, v2mount: &Placed, needed: &[Controller]) -> Result<(), CgroupError> {
        let placement = v2::place(&v2mount.own, &v2mount.mount, needed)?;
        if placement.enable_in_base {
            v2::enable(&*self.fs, &placement.base, needed)?;
        }
        let parent = placement.base.join(PARENT_DIR);
        match self.fs.mkdir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if placement.sibling && v2::sibling_refused(&e) => {
                return Err(CgroupError::NoInternalProcesses {
                    cgroup: v2mount.own.clone(),
                    reason: format!("creating the sibling {} failed: {e}", parent.display()),
                });
            }
            Err(source) => {
                return Err(CgroupError::Create {
                    controller: needed[0],
                    path: parent,
                    source,
                });
            }
        }
        v2::enable(&*self.fs, &parent, needed)?;
        let leaf = parent.join(&self.name);
        mkdir_leaf(&*self.fs, needed[0], &leaf)?;
        if placement.sibling {
            self.notes.push(format!(
                "cgroup v2: {} holds processes, so sandboxes are placed beside it in {}",
                v2mount.own.display(),
                parent.display()
            ));
        }
        self.dirs.push(Dir {
            version: Version::V2,
            controllers: needed.to_vec(),
            cpuacct: false,
            leaf,
        });
        Ok(())
    }

    /// The sandbox name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cgroup.procs files a launcher writes a child's pid into (all hierarchies).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.leaf.join("cgroup.procs"))
            .collect()
    }

    /// Moves `pid` (the whole thread group) into every directory of the sandbox. On error the
    /// process may be in some hierarchies and not others: the caller must kill it.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let file = d.leaf.join("cgroup.procs");
            self.fs
                .write(&file, &pid.to_string())
                .map_err(|source| CgroupError::AddPid {
                    controller: d.controllers.first().copied().unwrap_or(Controller::Cpu),
                    file,
                    pid,
                    source,
                })?;
        }
        Ok(())
    }

    fn dir_for(&self, c: Controller) -> Option<&Dir> {
        self.dirs.iter().find(|d| d.controllers.contains(&c))
    }

    /// Peak memory, OOM kills, forks refused by the pids limit, CPU time, current pids. Fields
    /// whose controller is not in use (or whose file this kernel lacks) are None / 0.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        if let Some(d) = self.dir_for(Controller::Memory) {
            let (peak, ooms) = match d.version {
                Version::V1 => (v1::memory_peak(&d.leaf), v1::oom_kills(&d.leaf)),
                Version::V2 => (v2::memory_peak(&d.leaf), v2::oom_kills(&d.leaf)),
            };
            s.memory_peak = peak;
            s.oom_kills = ooms;
            s.memory_current = super::fsops::read_u64(&d.leaf.join(match d.version {
                Version::V1 => "memory.usage_in_bytes",
                Version::V2 => "memory.current",
            }));
        }
        if let Some(d) = self.dir_for(Controller::Pids) {
            s.pids_max_hits = match d.version {
                Version::V1 => v1::pids_max_hits(&d.leaf),
                Version::V2 => v2::pids_max_hits(&d.leaf),
            };
            s.pids_current = super::fsops::read_u64(&d.leaf.join("pids.current"));
        }
        s.cpu_usage_ns = match self.dirs.iter().find(|d| d.version == Version::V2) {
            Some(d) => v2::cpu_usage_ns(&d.leaf),
            None => self
                .dirs
                .iter()
                .find(|d| d.cpuacct)
                .and_then(|d| v1::cpu_usage_ns(&d.leaf)),
        };
        s
    }

    /// Controllers whose limits are in force, with the version that enforces them.
    pub fn enforced(&self) -> Vec<(Controller, Version)> {
        self.enforced.clone()
    }

    /// Facts for the audit record that are not a controller, e.g. why a swap limit is moot.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Every leaf directory of the sandbox.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.leaf.clone()).collect()
    }

    /// Kills every process in the cgroup (v2: cgroup.kill when present; then a SIGKILL loop over
    /// cgroup.procs of every hierarchy until empty, bounded by a deadline), removes the leaf
    /// directories, and verifies they are gone. Reports what could not be removed. The shared
    /// `stockade` parents stay (as empty directories): removing them would race a concurrent
    /// sandbox's mkdir of its leaf under the same parent.
    pub fn destroy(mut self) -> CleanupReport {
        self.destroy_inner()
    }

    fn destroy_inner(&mut self) -> CleanupReport {
        let deadline = Instant::now() + KILL_DEADLINE;
        let mut leftovers = Vec::new();
        for d in self.dirs.iter().filter(|d| d.version == Version::V2) {
            let kill = d.leaf.join("cgroup.kill");
            if kill.exists() {
                // Falls back to the SIGKILL loop below if refused.
                let _ = self.fs.write(&kill, "1");
            }
        }
        let procs = self.procs_files();
        let procs: Vec<&Path> = procs.iter().map(PathBuf::as_path).collect();
        leftovers.extend(kill_until_empty(&procs, deadline));
        for d in &self.dirs {
            if let Err(e) = rmdir_retry(&*self.fs, &d.leaf, deadline) {
                leftovers.push(format!("{}: rmdir: {e}", d.leaf.display()));
            }
        }
        // The `stockade` parents stay: removing them races a concurrent sandbox's mkdir of its
        // leaf under the same parent. They are empty directories and cost nothing.
        for d in &self.dirs {
            if d.leaf.exists() {
                leftovers.push(format!("{}: still exists", d.leaf.display()));
            }
        }
        self.dirs.clear();
        CleanupReport { leftovers }
    }
}
