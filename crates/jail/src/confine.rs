//! The last steps before the sandbox runs untrusted code: drop identity and capabilities, then
//! raise the two in-kernel walls (Landlock, seccomp). Runs in the sandbox's PID 1; everything it
//! sets is inherited by every process started inside.
//!
//! Order: Landlock rules are opened while still privileged (paths may be unreadable afterwards);
//! groups, gid, uid; bounding/ambient/effective capabilities; `no_new_privs`; non-dumpable (so the
//! command, running as the same uid, cannot read PID 1's memory or descriptors through /proc);
//! Landlock `restrict_self`; seccomp last, because its filter denies syscalls the earlier steps use.

use crate::plan::LandlockPlan;
use crate::seccomp::SeccompProgram;
use crate::sys;
use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// The newest ABI this build asks for; the kernel's own ABI is reported separately.
const WANT: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        source: io::Error,
    },
    #[error("landlock: {0}")]
    Landlock(String),
    #[error(
        "landlock is required by the policy but this kernel cannot enforce it ({0}); \
         use --allow-weaker-isolation to run without it"
    )]
    LandlockUnavailable(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

fn os(step: &'static str) -> impl FnOnce(io::Error) -> ConfineError {
    move |source| ConfineError::Os { step, source }
}

/// What was actually enforced, for the audit record and the `--verbose` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    /// Landlock ABI of the running kernel (0 when unsupported).
    pub landlock_kernel_abi: i32,
    /// "full", "partial" or "none".
    pub landlock: String,
    pub seccomp: String,
    pub no_new_privs: bool,
    pub capabilities_dropped: bool,
    pub uid: u32,
    pub gid: u32,
}

/// The kernel's Landlock ABI version (0 when Landlock is unavailable).
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a NULL attribute pointer, size 0 and the VERSION flag, the kernel only returns
    // the ABI number; no memory is read or written and no descriptor is created.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 { 0 } else { r as i32 }
}

/// Builds the Landlock ruleset while the paths are still reachable. `None` when disabled.
pub fn prepare_landlock(plan: &LandlockPlan) -> Result<Option<RulesetCreated>, ConfineError> {
    if !plan.enabled {
        return Ok(None);
    }
    let ll = |e: &dyn std::fmt::Display| ConfineError::Landlock(e.to_string());
    let all = AccessFs::from_all(WANT);
    let read = AccessFs::from_read(WANT);
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let device = file_rw | AccessFs::IoctlDev;
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(|e| ll(&e))?
        .scope(Scope::from_all(WANT))
        .map_err(|e| ll(&e))?
        .create()
        .map_err(|e| ll(&e))?
        // Denials by the command (a later exec than the one that built the domain) are reported
        // to the kernel's audit log, where the supervisor turns them into violation events.
        .log_new_exec(true)
        .map_err(|e| ll(&e))?;
    let groups: [(&Vec<std::path::PathBuf>, landlock::BitFlags<AccessFs>); 5] = [
        (&plan.read_exec, read),
        (&plan.read_write, all),
        (&plan.devices, device),
        (&plan.read_write_files, read | file_rw),
        (&plan.list_only, AccessFs::ReadDir.into()),
    ];
    for (paths, access) in groups {
        for p in paths {
            let fd = match PathFd::new(p) {
                Ok(fd) => fd,
                Err(_) if !Path::new(p).exists() => continue,
                Err(e) => return Err(ll(&e)),
            };
            rs = rs
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| ll(&e))?;
        }
    }
    Ok(Some(rs))
}

/// Drops to the sandbox identity with no capabilities, sets no_new_privs and non-dumpable.
pub fn drop_privileges(uid: u32, gid: u32, may_setgroups: bool) -> Result<(), ConfineError> {
    if may_setgroups {
        sys::clear_groups().map_err(os("setgroups"))?;
    }
    sys::drop_bounding_set().map_err(os("dropping the capability bounding set"))?;
    sys::setresgid(gid).map_err(os("setresgid"))?;
    sys::setresuid(uid).map_err(os("setresuid"))?;
    sys::clear_capabilities().map_err(os("clearing capabilities"))?;
    sys::set_no_new_privs().map_err(os("no_new_privs"))?;
    sys::set_dumpable(false).map_err(os("making PID 1 non-dumpable"))?;
    Ok(())
}

/// Raises Landlock and seccomp. `allow_weaker` permits running when Landlock is unavailable.
pub fn restrict(
    ruleset: Option<RulesetCreated>,
    required: bool,
    allow_weaker: bool,
    seccomp: Option<&SeccompProgram>,
) -> Result<Enforced, ConfineError> {
    let mut out = Enforced {
        landlock_kernel_abi: landlock_abi(),
        landlock: "none".into(),
        ..Enforced::default()
    };
    if let Some(rs) = ruleset {
        let status = rs
            .restrict_self()
            .map_err(|e| ConfineError::Landlock(e.to_string()))?;
        out.landlock = match status.ruleset {
            RulesetStatus::FullyEnforced => "full",
            RulesetStatus::PartiallyEnforced => "partial",
            RulesetStatus::NotEnforced => "none",
        }
        .into();
        if out.landlock == "none" && required && !allow_weaker {
            let why = match status.landlock {
                LandlockStatus::NotEnabled => "not enabled at boot".to_string(),
                LandlockStatus::NotImplemented => "not built into this kernel".to_string(),
                LandlockStatus::Available { .. } => "ruleset not enforced".to_string(),
            };
            return Err(ConfineError::LandlockUnavailable(why));
        }
    }
    if let Some(p) = seccomp {
        p.apply()
            .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
        out.seccomp = p.describe();
    } else {
        out.seccomp = "off".into();
    }
    out.no_new_privs = true;
    out.capabilities_dropped = sys::effective_caps_zero().unwrap_or(false);
    // SAFETY: getuid/getgid take no arguments and cannot fail.
    out.uid = unsafe { libc::getuid() };
    // SAFETY: as above.
    out.gid = unsafe { libc::getgid() };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::Command;

    /// Runs python3 reading `target` under `ruleset` (or none); returns the errno it reports, 0 on success.
    fn read_errno(target: &Path, ruleset: Option<OwnedFd>) -> i32 {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-c").arg(
            "import sys\ntry:\n open(sys.argv[1]).read(); print(0)\nexcept OSError as e:\n print(e.errno)",
        );
        cmd.arg(target);
        if let Some(fd) = ruleset {
            let raw = fd.as_raw_fd();
            // SAFETY: between fork and exec the child only makes two raw syscalls (prctl and
            // landlock_restrict_self) on an inherited descriptor number; no allocation, no locks.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
                        || libc::syscall(libc::SYS_landlock_restrict_self, raw, 0) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd
                .output()
                .expect("python3 must run (apt-get install python3)");
            drop(fd);
            return parse(&out);
        }
        let out = cmd
            .output()
            .expect("python3 must run (apt-get install python3)");
        parse(&out)
    }

    fn parse(out: &std::process::Output) -> i32 {
        assert!(out.status.success(), "probe failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("errno number")
    }

    #[test]
    fn landlock_plan_denies_paths_outside_its_rules() {
        assert!(
            landlock_abi() > 0,
            "this test needs a kernel with Landlock (lsm=...,landlock)"
        );
        let allowed = tempfile::tempdir().unwrap();
        let denied = tempfile::tempdir().unwrap();
        std::fs::write(allowed.path().join("a"), "a").unwrap();
        std::fs::write(denied.path().join("b"), "b").unwrap();
        let plan = LandlockPlan {
            enabled: true,
            required: true,
            read_exec: ["/usr", "/etc", "/bin", "/lib", "/lib64", "/proc", "/dev"]
                .iter()
                .map(PathBuf::from)
                .chain([allowed.path().to_path_buf()])
                .collect(),
            ..LandlockPlan::default()
        };
        let make = || Option::<OwnedFd>::from(prepare_landlock(&plan).unwrap().unwrap());
        // The wall: a file outside every rule is refused with EACCES.
        assert_eq!(read_errno(&denied.path().join("b"), make()), libc::EACCES);
        // The same ruleset lets the allowed file through...
        assert_eq!(read_errno(&allowed.path().join("a"), make()), 0);
        // ...and without the ruleset the denied file is readable: the denial is Landlock's.
        assert_eq!(read_errno(&denied.path().join("b"), None), 0);
    }

    #[test]
    fn disabled_plan_builds_no_ruleset() {
        assert!(
            prepare_landlock(&LandlockPlan::default())
                .unwrap()
                .is_none()
        );
    }
}
