//! The runtime's side of the audit trail: one [`Audit`] per sandbox wraps its [`Recorder`]
//! (shared with the violation watcher), builds the events from what the supervisor saw, and
//! remembers the first write failure so the run can report it instead of losing it silently.

use crate::container::Ctx;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stockade_agent::protocol::{Change, ChangeKind};
use stockade_audit::{
    CgroupEnforced, Enforcement, EventKind, Observer, Recorder, Redactor, StateDir,
};
use stockade_jail::confine::Enforced;
use stockade_jail::plan::SandboxPlan;
use stockade_policy::Policy;

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

/// `sandbox.created` with what was actually enforced.
pub(crate) fn created(ctx: &Ctx<'_>, e: &Enforced) -> EventKind {
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
            level: "container".into(),
            namespaces: ["user", "mount", "pid", "net", "ipc", "uts", "cgroup"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
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
