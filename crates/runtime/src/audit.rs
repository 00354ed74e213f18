//! The runtime's side of the audit trail: one [`Audit`] per sandbox wraps its [`Recorder`]
//! (shared with the violation watcher), builds the events from what the supervisor saw, and
//! remembers the first write failure so the run can report it instead of losing it silently.

use crate::container::Ctx;
use crate::levels::Resolved;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stockade_agent::protocol::{Change, ChangeKind};
use stockade_audit::{
    CgroupEnforced, Enforcement, EventKind, Observer, Recorder, Redactor, StateDir,
};
use stockade_jail::confine::Enforced;
use stockade_jail::plan::Accel;
use stockade_jail::plan::SandboxPlan;
use stockade_policy::{Level, Policy};

/// How the caller wants the trail kept.
pub struct AuditOptions {
    pub state: StateDir,
    /// Extra consumers of every (redacted) event, e.g. the OTLP exporter.
    pub observers: Vec<Observer>,
}

/// A handle other threads use to record events into a sandbox's trail.
#[derive(Clone)]
pub struct Emitter(Arc<Mutex<Recorder>>);

impl Emitter {
    pub fn emit(&self, exec_id: Option<&str>, kind: EventKind) {
        if let Ok(mut r) = self.0.lock() {
            let _ = r.emit(exec_id, kind);
        }
    }
}

pub struct Audit {
    rec: Arc<Mutex<Recorder>>,
    log: PathBuf,
    error: Mutex<Option<String>>,
}

/// Secret values to keep out of every sink: the values of the variables the policy names.
pub fn redaction(policy: &Policy, host_env: &[(String, String)]) -> Redactor {
    let names = &policy.audit.redact_env;
    let mut values = Vec::new();
    for n in names {
        if let Some(v) = policy.process.env.get(n) {
            values.push(v.clone());
        }
        if let Some((_, v)) = host_env.iter().find(|(k, _)| k == n) {
            values.push(v.clone());
        }
    }
    Redactor::new(values)
}

impl Audit {
    pub fn open(opts: &mut AuditOptions, id: &str, policy: &Policy) -> Result<Audit, String> {
        let host_env: Vec<(String, String)> = std::env::vars().collect();
        let mut rec = Recorder::open(&opts.state, id, redaction(policy, &host_env)).map_err(|e| {
            format!(
                "cannot write the audit log under {}: {e}; pick another --state-dir (or set audit.enabled = false)",
                opts.state.0.display()
            )
        })?;
        for o in opts.observers.drain(..) {
            rec.add_observer(o);
        }
        let log = opts.state.sandbox_log(id);
        // Who keeps this sandbox: `stockade ls` tells a killed supervisor from a running one.
        if let (Some(dir), Some(start)) = (log.parent(), self_start_time()) {
            let _ = std::fs::write(
                dir.join("supervisor"),
                format!("{} {start}\n", std::process::id()),
            );
        }
        Ok(Audit {
            log,
            rec: Arc::new(Mutex::new(rec)),
            error: Mutex::new(None),
        })
    }

    pub fn emitter(&self) -> Emitter {
        Emitter(self.rec.clone())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Records an event; a failure is remembered and reported at the end of the run.
    pub fn emit(&self, exec_id: Option<&str>, kind: EventKind) {
        // The tracing view of the same event, inside the current sandbox/exec span.
        tracing::info!(target: "stockade::audit", event = kind.type_name(), exec_id = exec_id.unwrap_or(""));
        let r = match self.rec.lock() {
            Ok(mut r) => r.emit(exec_id, kind).map(drop).map_err(|e| e.to_string()),
            Err(_) => Err("recorder poisoned".to_string()),
        };
        if let Err(e) = r
            && let Ok(mut slot) = self.error.lock()
        {
            slot.get_or_insert(e);
        }
    }

    pub fn take_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    pub fn watch_reads(
        &self,
        workspace: &Path,
        sensitive: &[PathBuf],
        host_uid: u32,
        exec_id: &str,
    ) -> Result<crate::reads::Watch, String> {
        crate::reads::watch(
            workspace,
            sensitive,
            host_uid,
            self.rec.clone(),
            exec_id.to_string(),
        )
    }

    pub fn watch_violations(&self, host_uid: u32, exec_id: &str) -> Option<crate::kmsg::Watch> {
        crate::kmsg::watch(host_uid, self.rec.clone(), exec_id.to_string())
    }

    /// Makes every event durable; call before the result goes to the caller.
    pub fn finish(&self) -> Result<(), String> {
        if let Some(e) = self.take_error() {
            return Err(format!("writing {}: {e}", self.log.display()));
        }
        match self.rec.lock() {
            Ok(r) => r
                .sync()
                .map_err(|e| format!("syncing {}: {e}", self.log.display())),
            Err(_) => Err("recorder poisoned".into()),
        }
    }
}

/// The level part of `sandbox.created`: the level actually used, its accelerator (microvm) or
/// runsc platform (gvisor), and the namespaces the sandboxed code is in.
fn level_fields(r: &Resolved) -> (String, Option<String>, Option<String>, Vec<String>) {
    let namespaces: &[&str] = match r.level {
        // The OCI bundle's namespaces, inside gVisor's user-space kernel (no nested jail there).
        Level::Gvisor => &["pid", "mount", "net", "ipc", "uts"],
        // container: the jail's; microvm: the same jail, inside the guest kernel.
        Level::Container | Level::Microvm => {
            &["user", "mount", "pid", "net", "ipc", "uts", "cgroup"]
        }
    };
    let accel = match (r.level, r.accel) {
        (Level::Microvm, Some(Accel::Kvm)) => Some("kvm".to_string()),
        (Level::Microvm, Some(Accel::Tcg)) => Some("tcg".to_string()),
        _ => None,
    };
    let platform = r.platform.clone().filter(|_| r.level == Level::Gvisor);
    (
        r.level.as_str().to_string(),
        accel,
        platform,
        namespaces.iter().map(|s| s.to_string()).collect(),
    )
}

/// `sandbox.created` with what was actually enforced, at the level actually used
/// (`ctx.resolved`).
pub(crate) fn created(ctx: &Ctx<'_>, e: &Enforced) -> EventKind {
    let (level, accel, platform, namespaces) = level_fields(ctx.resolved);
    let cgroups = ctx
        .cg
        .map(|cg| {
            cg.enforced()
                .into_iter()
                .map(|(c, v)| CgroupEnforced {
                    controller: c.name().to_string(),
                    version: format!("{v:?}").to_lowercase(),
                })
                .collect()
        })
        .unwrap_or_default();
    EventKind::SandboxCreated {
        policy_digest: ctx.policy.digest(),
        workspace: ctx.workspace.display().to_string(),
        workspace_mode: ctx.policy.workspace.mode.as_str().to_string(),
        enforced: Enforcement {
            level,
            accel,
            platform,
            namespaces,
            seccomp: e.seccomp.clone(),
            landlock: e.landlock.clone(),
            landlock_abi: e.landlock_kernel_abi,
            cgroups,
            no_new_privs: e.no_new_privs,
            capabilities_dropped: e.capabilities_dropped,
            uid: e.uid,
            gid: e.gid,
            weakenings: ctx.weakenings.clone(),
        },
    }
}

/// `exec.started`: argv, cwd and the NAMES of the environment, never its values.
pub(crate) fn exec_started(plan: &SandboxPlan) -> EventKind {
    EventKind::ExecStarted {
        argv: plan.argv.clone(),
        cwd: plan.cwd.display().to_string(),
        env_names: plan.env.iter().map(|(k, _)| k.clone()).collect(),
    }
}

pub(crate) fn file_changed(c: &Change) -> EventKind {
    EventKind::FileChanged {
        path: c.path.clone(),
        change: match c.kind {
            ChangeKind::Created => stockade_audit::Change::Created,
            ChangeKind::Modified => stockade_audit::Change::Modified,
            ChangeKind::Deleted => stockade_audit::Change::Deleted,
        },
        size: c.size,
    }
}

/// This process's start time (field 22 of /proc/self/stat, clock ticks since boot).
fn self_start_time() -> Option<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_level_used_is_recorded() {
        let (l, a, p, ns) = level_fields(&Resolved::container());
        assert_eq!((l.as_str(), a, p), ("container", None, None));
        assert_eq!(ns, ["user", "mount", "pid", "net", "ipc", "uts", "cgroup"]);
        let vm = |accel| Resolved {
            level: Level::Microvm,
            accel: Some(accel),
            platform: None,
            why: String::new(),
        };
        let (l, a, p, ns) = level_fields(&vm(Accel::Tcg));
        assert_eq!(
            (l.as_str(), a.as_deref(), p),
            ("microvm", Some("tcg"), None)
        );
        assert!(ns.contains(&"user".to_string()));
        let (_, a, _, _) = level_fields(&vm(Accel::Kvm));
        assert_eq!(a.as_deref(), Some("kvm"));
        let (l, a, p, ns) = level_fields(&Resolved {
            level: Level::Gvisor,
            accel: None,
            platform: Some("ptrace".into()),
            why: String::new(),
        });
        assert_eq!(
            (l.as_str(), a, p.as_deref()),
            ("gvisor", None, Some("ptrace"))
        );
        assert!(!ns.contains(&"user".to_string()));
        // In the event's JSON: accel/platform only where they apply (older trails unchanged).
        let en = |level: &str, accel: Option<&str>, platform: Option<&str>| {
            serde_json::to_value(Enforcement {
                level: level.into(),
                accel: accel.map(String::from),
                platform: platform.map(String::from),
                ..Default::default()
            })
            .unwrap()
        };
        let c = en("container", None, None);
        assert!(c.get("accel").is_none() && c.get("platform").is_none());
        assert_eq!(en("microvm", Some("tcg"), None)["accel"], "tcg");
        assert_eq!(en("gvisor", None, Some("ptrace"))["platform"], "ptrace");
    }
}
