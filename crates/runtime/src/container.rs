//! The one-shot container-level run: create, exec once, stream, destroy, report.
//!
//! The supervisor never forks itself to build the sandbox: it starts the launcher by re-exec
//! (`spawn.rs`), hands it the plan, relays stdio, enforces the wall-clock timeout and the output
//! cap, and afterwards verifies the teardown (launcher reaped, cgroup gone) instead of assuming it.

use crate::audit::{self, Audit};
use crate::error::RunError;
use crate::plan::{self, Extras, HostFacts};
use crate::relay::{self, Event};
use crate::spawn::Launched;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stockade_agent::protocol::{AgentMsg, Change, SupervisorMsg, Termination, write_frame};
use stockade_audit::{DestroyReason, EventKind, Limit};
use stockade_jail::cgroup::{self, Cgroup, Layout, Limits};
use stockade_jail::confine::Enforced;
use stockade_jail::seccomp::SeccompProgram;
use stockade_policy::{ByteSize, Policy, WorkspaceMode, format_duration};

/// How long a sandbox may take to get ready (boot, confinement) before its command starts; the
/// policy's timeout counts from then.
pub const SETUP_LIMIT: Duration = Duration::from_secs(120);

/// Why the run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    Exited,
    Timeout,
    Memory,
    Output,
    Disk,
    /// The sandbox ended without a status after the pids limit refused process creations: at
    /// the gvisor level runsc itself cannot create a thread past it and ends the whole sandbox.
    Pids,
    Signal(i32),
}

/// The outcome of a run that got as far as starting the command.
#[derive(Debug)]
pub struct RunReport {
    pub id: String,
    /// The exit status stockade should exit with.
    pub exit_code: i32,
    pub termination: Option<Termination>,
    pub reason: EndReason,
    /// One-line messages for the user (limits hit, weakenings, leftovers).
    pub notices: Vec<String>,
    pub enforced: Option<Enforced>,
    pub changes: Option<Vec<Change>>,
    /// Things teardown could not remove (empty when clean).
    pub leftovers: Vec<String>,
    pub duration: Duration,
    /// The sandbox's audit log, when auditing is on.
    pub audit_log: Option<PathBuf>,
}

#[derive(Default)]
pub struct RunOptions {
    /// Where the policy file was, to resolve a relative workspace against (else the current dir).
    pub base_dir: Option<PathBuf>,
    /// The audit trail; None only when the policy turned auditing off.
    pub audit: Option<audit::AuditOptions>,
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        u64::from(std::process::id()) ^ (Instant::now().elapsed().as_nanos() as u64)
    }
}

/// Resolves and checks the workspace directory.
pub fn resolve_workspace(policy: &Policy, base: &Path) -> Result<PathBuf, RunError> {
    let lexical = policy.workspace.resolve(base);
    let canon = std::fs::canonicalize(&lexical)
        .map_err(|e| RunError::Workspace(format!("{}: {e}", lexical.display())))?;
    if !canon.is_dir() {
        return Err(RunError::Workspace(format!(
            "{} is not a directory",
            canon.display()
        )));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .and_then(|h| std::fs::canonicalize(h).ok());
    stockade_policy::check_workspace_dir(policy, &canon, home.as_deref())
        .map_err(RunError::Workspace)?;
    Ok(canon)
}

pub(crate) fn host_facts(workspace: PathBuf) -> HostFacts {
    HostFacts {
        // SAFETY: geteuid/getegid take no arguments and cannot fail.
        euid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        egid: unsafe { libc::getegid() },
        env: std::env::vars().collect(),
        system_links: plan::system_links(),
        workspace,
        nonce: random_u64() as u32,
    }
}

/// The sandbox's cgroup with the policy's limits (stale ones of dead sandboxes swept first).
/// Without a writable cgroup: an error, or with weaker isolation allowed, None and a notice.
pub(crate) fn make_cgroup(
    policy: &Policy,
    id: &str,
    notices: &mut Vec<String>,
) -> Result<Option<Cgroup>, RunError> {
    let limits = Limits {
        memory_bytes: Some(policy.limits.memory.0),
        swap_bytes: Some(policy.limits.swap.0),
        cpus: Some(policy.limits.cpus),
        pids: Some(policy.limits.pids),
    };
    match Layout::discover().and_then(|layout| {
        cgroup::sweep_stale(&layout, Duration::from_secs(60));
        Cgroup::create(&layout, id, &limits)
    }) {
        Ok(cg) => Ok(Some(cg)),
        Err(e) if policy.security.allow_weaker_isolation => {
            notices.push(format!(
                "weaker isolation: no cgroup limits (memory, cpu, pids): {e}"
            ));
            Ok(None)
        }
        Err(e) => Err(RunError::Unsupported(format!(
            "{e}; the memory, cpu and pids limits need a writable cgroup (use --allow-weaker-isolation to run without them)"
        ))),
    }
}

/// Runs `argv` in a fresh container-level sandbox under `policy` (already validated).
pub fn run(policy: &Policy, argv: &[String], mut opts: RunOptions) -> Result<RunReport, RunError> {
    if argv.is_empty() {
        return Err(RunError::Usage(
            "no command given: stockade run [OPTIONS] -- CMD [ARGS]".into(),
        ));
    }
    let started = Instant::now();
    let allow_weaker = policy.security.allow_weaker_isolation;
    let mut notices = Vec::new();
    let base = match &opts.base_dir {
        Some(b) => b.clone(),
        None => std::env::current_dir()
            .map_err(|e| RunError::Workspace(format!("current directory: {e}")))?,
    };
    // Fail closed: only the loopback-only network exists at this level so far.
    if policy.network.mode == stockade_policy::NetworkMode::Open {
        // Allowed by the policy only with allow_open (--allow-open-network); said, and recorded.
        notices.push(
            "weaker isolation: network open: every name is reachable through the egress gateway (audited; private addresses still refused)".into(),
        );
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 && (policy.process.uid == 0 || policy.process.gid == 0) {
        return Err(RunError::Usage(
            "process.uid/gid 0 inside is not supported when stockade runs as root (inside id 0 is \
             reserved for building the sandbox; the command runs as an unused host uid); pick another \
             id, e.g. --uid 1000"
                .into(),
        ));
    }
    let workspace = resolve_workspace(policy, &base)?;
    stockade_policy::check_sensitive_paths(policy, &workspace).map_err(RunError::Usage)?;
    // The level the trust asks for, or a refusal that says why and what would make it possible.
    let resolved = crate::levels::resolve_here(policy).map_err(RunError::Unsupported)?;
    let container = resolved.level == stockade_policy::Level::Container;
    // Above the container level Landlock is the guest kernel's (microvm) or not applicable (gvisor).
    if container && policy.security.landlock && stockade_jail::confine::landlock_abi() == 0 {
        if !allow_weaker {
            return Err(RunError::Unsupported(
                "landlock: this kernel does not offer Landlock; use --allow-weaker-isolation to run without it".into(),
            ));
        }
        notices.push(
            "weaker isolation: Landlock unavailable on this kernel, running without it".into(),
        );
    }
    if !policy.security.landlock {
        notices.push("weaker isolation: Landlock disabled by policy".into());
    }
    // The launcher starts now and waits for its plan on a pipe: its exec and start-up overlap
    // with the seccomp compile, the audit log and the cgroup set-up below. Any failure before the
    // plan is sent drops the pipes, and the launcher exits without building anything.
    let launched = crate::backend::spawn(&resolved, allow_weaker)
        .map_err(|e| RunError::Launch(format!("starting the launcher: {e}")))?;
    let mut launched = LaunchGuard(Some(launched));
    let seccomp = if policy.security.seccomp {
        Some(
            SeccompProgram::compile_default()
                .map_err(|e| RunError::Unsupported(e.to_string()))?
                .to_bytes(),
        )
    } else {
        notices.push("weaker isolation: seccomp disabled by policy".into());
        None
    };
    let id = format!("{:016x}", random_u64());
    let sandbox_span =
        tracing::info_span!("sandbox", sandbox_id = %id, level = resolved.level.as_str());
    let _in_sandbox = sandbox_span.enter();
    let audit = match opts.audit.as_mut() {
        Some(a) => Some(Audit::open(a, &id, policy).map_err(RunError::Audit)?),
        None => {
            notices.push("audit trail disabled by policy: nothing of this run is recorded".into());
            None
        }
    };
    tracing::debug!("phase: checks done");
    let cg = make_cgroup(policy, &id, &mut notices)?;
    let secrets = crate::secrets::prepare(policy, &id)?;
    let extras = Extras {
        id: id.clone(),
        cgroup_procs: cg.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
        cgroup_dirs: cg.as_ref().map(Cgroup::paths).unwrap_or_default(),
        seccomp,
        env: secrets.as_ref().map(|s| s.env.clone()).unwrap_or_default(),
        trust: secrets.as_ref().map(|s| s.trust.clone()),
    };
    tracing::debug!("phase: cgroup created");
    let git = (policy.workspace.protect_git && policy.workspace.mode == WorkspaceMode::Rw)
        .then(|| crate::git::prepare(&workspace))
        .flatten();
    let mut plan = plan::build(policy, argv, &host_facts(workspace.clone()), extras);
    plan.backend = match crate::backend::spec(&resolved, policy, &id) {
        Ok(b) => b,
        Err(e) => {
            if let Some(cg) = cg {
                let _ = cg.destroy();
            }
            return Err(e);
        }
    };
    let weakenings: Vec<String> = notices
        .iter()
        .filter(|n| n.starts_with("weaker isolation"))
        .cloned()
        .collect();
    let ctx = Ctx {
        policy,
        plan: &plan,
        cg: cg.as_ref(),
        workspace: &workspace,
        audit: audit.as_ref(),
        weakenings,
        git: git.as_ref(),
        interceptor: secrets.as_ref().map(|s| s.interceptor.clone()),
        resolved: &resolved,
    };
    let result = match launched.0.take() {
        Some(l) => supervise(&ctx, l),
        None => Err(RunError::Launch("launcher already consumed".into())),
    };
    tracing::debug!("phase: supervision done");
    let mut leftovers = match cg {
        Some(cg) => cg.destroy().leftovers,
        None => Vec::new(),
    };
    if plan.backend.is_some() {
        leftovers.extend(crate::backend::cleanup_after(&id));
    }
    tracing::debug!("phase: cgroup destroyed");
    if let Some(a) = &audit {
        let (reason, error) = match &result {
            Ok(r) => (
                match r.reason {
                    EndReason::Exited => DestroyReason::Exit,
                    EndReason::Timeout => DestroyReason::Timeout,
                    EndReason::Signal(_) => DestroyReason::Killed,
                    EndReason::Memory | EndReason::Output | EndReason::Disk | EndReason::Pids => {
                        DestroyReason::Limit
                    }
                },
                None,
            ),
            Err(RunError::Exec { .. }) => (DestroyReason::Exit, None),
            Err(e) => (DestroyReason::Error, Some(e.to_string())),
        };
        a.emit(
            None,
            EventKind::SandboxDestroyed {
                reason,
                clean: leftovers.is_empty(),
                leftovers: leftovers.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
                error,
            },
        );
        // The result is reported to the caller only once every event of the run is on disk.
        if let Err(e) = a.finish() {
            return Err(RunError::Audit(e));
        }
        // `sandbox.destroyed` is on disk: the supervisor record has served its purpose.
        let _ = std::fs::remove_file(a.log_path().with_file_name("supervisor"));
    }
    tracing::debug!("phase: audit synced");
    let mut report = result?;
    report.id = id;
    notices.append(&mut report.notices);
    report.notices = notices;
    for l in &leftovers {
        report
            .notices
            .push(format!("cleanup: could not remove {l}"));
    }
    report.leftovers = leftovers;
    report.duration = started.elapsed();
    report.audit_log = audit.as_ref().map(|a| a.log_path().to_path_buf());
    Ok(report)
}

pub(crate) struct Ctx<'a> {
    pub(crate) policy: &'a Policy,
    pub(crate) plan: &'a stockade_jail::plan::SandboxPlan,
    pub(crate) cg: Option<&'a Cgroup>,
    pub(crate) workspace: &'a Path,
    pub(crate) audit: Option<&'a Audit>,
    pub(crate) weakenings: Vec<String>,
    pub(crate) git: Option<&'a crate::git::GitGuard>,
    /// The secret-injecting TLS interceptor, when the policy has secrets.
    pub(crate) interceptor: Option<std::sync::Arc<stockade_gateway::intercept::Interceptor>>,
    /// The isolation level this sandbox runs at.
    pub(crate) resolved: &'a crate::levels::Resolved,
}

fn human(b: ByteSize) -> String {
    b.to_string()
}

/// Kills and reaps a launcher that never got its plan (any early error path).
pub(crate) struct LaunchGuard(pub(crate) Option<Launched>);

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if let Some(mut l) = self.0.take() {
            let _ = l.child.kill();
            let _ = l.child.wait();
        }
    }
}

fn supervise(ctx: &Ctx<'_>, launched: Launched) -> Result<RunReport, RunError> {
    let Ctx {
        policy,
        plan,
        cg,
        workspace,
        audit,
        ..
    } = *ctx;
    let exec_id = "e1";
    // The rw workspace's "before" picture is taken while the launcher starts, and the plan (which
    // the launcher waits for) is sent only once it is complete, so the command cannot run first.
    let before = (audit.is_some() && policy.workspace.mode == WorkspaceMode::Rw).then(|| {
        let ws = workspace.to_path_buf();
        std::thread::spawn(move || crate::track::snapshot(&ws))
    });
    let Launched {
        mut child,
        mut ctrl,
        plan: mut plan_pipe,
        liveness,
        stdin,
        stdout,
        stderr,
    } = launched;
    let body = serde_json::to_vec(plan).map_err(|e| RunError::Launch(e.to_string()))?;
    tracing::debug!("phase: launcher spawned");
    let before = before.and_then(|h| h.join().ok());
    tracing::debug!("phase: workspace snapshot taken");
    let mut notices = Vec::new();
    // Marks are placed before the plan is sent, so the command cannot read first.
    let container = plan.backend.is_none();
    let reads = match (audit, plan.idmap_host_uid) {
        (Some(_), _) if !container && !policy.audit.sensitive.is_empty() => {
            notices.push(format!(
                "audit: file.read events are not available at the {} level (the opener is inside the backend)",
                ctx.resolved.level.as_str()
            ));
            None
        }
        (Some(a), Some(uid)) if !policy.audit.sensitive.is_empty() => {
            match a.watch_reads(workspace, &policy.audit.sensitive, uid, exec_id) {
                Ok(w) => Some(w),
                Err(e) => {
                    notices.push(format!("audit: file.read events unavailable: {e}"));
                    None
                }
            }
        }
        (Some(_), None) if !policy.audit.sensitive.is_empty() => {
            notices.push("audit: file.read events need stockade to run as root (fanotify)".into());
            None
        }
        _ => None,
    };
    let wrote = plan_pipe.write_all(&body);
    drop(plan_pipe);
    if let Err(e) = wrote {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RunError::Launch(format!("sending the plan: {e}")));
    }

    let (tx, rx) = mpsc::channel::<Event>();
    let max_output = policy.limits.max_output.0;
    let counter = relay::OutputBudget::new(max_output);
    relay::control_reader(
        ctrl.try_clone()
            .map_err(|e| RunError::Launch(e.to_string()))?,
        tx.clone(),
    );
    let out_t = relay::output(stdout, std::io::stdout(), counter.clone(), tx.clone());
    let err_t = relay::output(stderr, std::io::stderr(), counter.clone(), tx.clone());
    relay::input(stdin);
    relay::signals(tx.clone());
    let watch = (policy.workspace.mode == WorkspaceMode::Rw).then(|| {
        relay::disk_watch(
            workspace.to_path_buf(),
            policy.limits.disk.0,
            tx.clone(),
            ctx.cg.map(Cgroup::procs_files).unwrap_or_default(),
        )
    });
    drop(tx);

    let egress = match policy.network.mode {
        stockade_policy::NetworkMode::Allowlist | stockade_policy::NetworkMode::Open => Some(
            crate::egress::Egress::from_policy(policy, ctx.interceptor.clone())
                .map_err(RunError::Usage)?,
        ),
        _ => None,
    };
    let emitter = audit.map(Audit::emitter);
    // The timeout is the command's: it runs from the agent's Ready (a microVM under emulation
    // takes seconds to boot, which no command timeout should include). Until then the setup
    // has its own bound, so a backend that never gets ready cannot hold the run forever.
    let mut deadline = Instant::now() + SETUP_LIMIT;
    let mut ready = false;
    let mut reason = EndReason::Exited;
    let mut scratch_full = false;
    // A microVM's guest kernel OOM-killed (its RAM is the memory limit less QEMU's share).
    let mut guest_oom = false;
    let mut enforced = None;
    let mut stopping: Option<Instant> = None;
    let mut outcome: Option<(Option<Termination>, Option<Vec<Change>>)> = None;
    let stop = |ctrl: &mut std::os::unix::net::UnixStream, stopping: &mut Option<Instant>| {
        if stopping.is_none() {
            let _ = write_frame(ctrl, &SupervisorMsg::Stop);
            *stopping = Some(Instant::now());
        }
    };
    let mut setup_error = None;
    let mut exec_started: Option<Instant> = None;
    let mut exec_span: Option<tracing::span::EnteredSpan> = None;
    let mut violations: Option<crate::kmsg::Watch> = None;
    while outcome.is_none() {
        let now = Instant::now();
        let wait_until = match stopping {
            Some(s) => s + Duration::from_secs(3),
            None => deadline,
        };
        let ev = rx.recv_timeout(wait_until.saturating_duration_since(now));
        match ev {
            Ok(Event::Agent(AgentMsg::Started { .. })) => tracing::debug!("phase: command started"),
            Ok(Event::Agent(AgentMsg::DnsQuery { token, name, qtype })) => {
                let (allowed, ports) = match &egress {
                    Some(e) => e.dns(&name, &qtype, emitter.as_ref(), exec_id),
                    None => (false, Vec::new()),
                };
                let _ = write_frame(
                    &mut ctrl,
                    &SupervisorMsg::DnsReply {
                        token,
                        allowed,
                        ports,
                    },
                );
            }
            Ok(Event::Agent(AgentMsg::DnsMalformed { code })) => {
                if let Some(e) = &egress {
                    e.dns_malformed(&code, emitter.as_ref(), exec_id);
                }
            }
            Ok(Event::Handoff(msg, fd)) => {
                if let Some(e) = &egress {
                    let target = match msg {
                        AgentMsg::Connect { name, port } => Some((name, port)),
                        _ => None,
                    };
                    e.serve(fd, target, emitter.clone(), exec_id.to_string());
                }
            }
            Ok(Event::Agent(AgentMsg::Connect { .. } | AgentMsg::Proxy)) => {}
            // Session frames from a one-shot agent: not asked for, ignored.
            Ok(Event::Agent(
                AgentMsg::ExecStarted { .. }
                | AgentMsg::ExecRefused { .. }
                | AgentMsg::ExecExited { .. }
                | AgentMsg::FsDone { .. }
                | AgentMsg::FsEvent { .. },
            )) => {}
            Ok(Event::Agent(AgentMsg::Ready { enforced: e })) => {
                exec_started = Some(Instant::now());
                ready = true;
                deadline = Instant::now() + policy.limits.timeout;
                if let Some(a) = audit {
                    a.emit(None, audit::created(ctx, &e));
                }
                exec_span = Some(tracing::info_span!("exec", exec_id).entered());
                if let Some(a) = audit {
                    a.emit(Some(exec_id), audit::exec_started(plan));
                    if let (Some(uid), true) = (plan.idmap_host_uid, container) {
                        violations = a.watch_violations(uid, exec_id);
                    }
                }
                enforced = Some(e);
                // The start is on record (and the violation watcher in place): let it run.
                if write_frame(&mut ctrl, &SupervisorMsg::Go).is_err() {
                    outcome = Some((None, None));
                }
            }
            Ok(Event::Agent(AgentMsg::SetupFailed { message })) => {
                setup_error = Some(RunError::Setup(message));
                outcome = Some((None, None));
            }
            Ok(Event::Agent(AgentMsg::ExecFailed { code, message })) => {
                setup_error = Some(RunError::Exec { code, message });
                outcome = Some((None, None));
            }
            Ok(Event::Agent(AgentMsg::Exited {
                termination,
                changes,
                changes_error,
                scratch_full: full,
                guest_oom: oom,
            })) => {
                scratch_full = full;
                guest_oom = oom;
                if let Some(e) = changes_error {
                    notices.push(format!("overlay: could not list changes: {e}"));
                }
                outcome = Some((Some(termination), changes));
            }
            Ok(Event::ControlClosed) => outcome = Some((None, None)),
            Ok(Event::OutputLimit) => {
                if reason == EndReason::Exited {
                    reason = EndReason::Output;
                }
                stop(&mut ctrl, &mut stopping);
            }
            Ok(Event::DiskLimit) => {
                if reason == EndReason::Exited {
                    reason = EndReason::Disk;
                }
                stop(&mut ctrl, &mut stopping);
            }
            Ok(Event::Signal(n)) => {
                if reason == EndReason::Exited {
                    reason = EndReason::Signal(n);
                }
                stop(&mut ctrl, &mut stopping);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if stopping.is_some() {
                    // The agent did not answer: kill the launcher; PID 1 dies with it (PDEATHSIG).
                    let _ = child.kill();
                    outcome = Some((None, None));
                } else if !ready {
                    // Nothing untrusted has run (the command starts only after Ready).
                    let _ = child.kill();
                    setup_error = Some(RunError::Setup(format!(
                        "the sandbox was not ready within {} s",
                        SETUP_LIMIT.as_secs()
                    )));
                    outcome = Some((None, None));
                } else {
                    reason = EndReason::Timeout;
                    stop(&mut ctrl, &mut stopping);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => outcome = Some((None, None)),
        }
    }
    if let Some(w) = &watch {
        w.stop();
    }
    // Reap the launcher before letting go of the liveness pipe: its EOF means "supervisor died,
    // clean up", which must not race our own reading of the cgroup's statistics.
    tracing::debug!("phase: command ended");
    drop(ctrl);
    let _ = child.wait();
    tracing::debug!("phase: launcher reaped");
    drop(liveness);
    // Every process of the sandbox is gone (PID 1 ended), so the pipes reach EOF; bounded anyway.
    relay::join_bounded(out_t, Duration::from_secs(2));
    relay::join_bounded(err_t, Duration::from_secs(2));
    if let Some(v) = violations.take() {
        v.finish();
    }
    if let Some(n) = egress
        .as_ref()
        .map(crate::egress::Egress::dns_suppressed)
        .filter(|n| *n > 0)
    {
        notices.push(format!(
            "audit: {n} DNS questions past the first {} were answered but not recorded",
            crate::egress::MAX_DNS_EVENTS
        ));
    }
    if let Some(r) = reads {
        r.finish();
    }
    if let Some(e) = setup_error {
        return Err(e);
    }
    let (termination, changes) = outcome.unwrap_or((None, None));
    let stats = cg.map(Cgroup::stats);
    if let Some(s) = &stats {
        if (s.oom_kills > 0 || guest_oom)
            && matches!(termination, Some(Termination::Signaled(9)) | None)
        {
            reason = EndReason::Memory;
        }
        if s.pids_max_hits > 0 && termination.is_none() && reason == EndReason::Exited {
            // No status, and the pids limit refused process creations: the limit ended the
            // sandbox (at gvisor, runsc past pids.max), not a broken setup.
            reason = EndReason::Pids;
        }
        if s.pids_max_hits > 0 {
            notices.push(format!(
                "limit: pids limit {} reached ({} process creations refused)",
                policy.limits.pids, s.pids_max_hits
            ));
        }
    }
    let l = &policy.limits;
    let limit_hit = match &reason {
        EndReason::Timeout => Some((
            Limit::Timeout,
            format_duration(l.timeout),
            format!("killed: timeout {} reached", format_duration(l.timeout)),
        )),
        EndReason::Memory => Some((
            Limit::Memory,
            human(l.memory),
            format!("killed: memory limit {} reached", human(l.memory)),
        )),
        EndReason::Output => Some((
            Limit::Output,
            human(l.max_output),
            format!("stopped: output limit {} reached", human(l.max_output)),
        )),
        EndReason::Disk => Some((
            Limit::Disk,
            human(l.disk),
            format!(
                "stopped: disk limit {} reached (workspace growth)",
                human(l.disk)
            ),
        )),
        EndReason::Pids => Some((
            Limit::Pids,
            l.pids.to_string(),
            format!(
                "killed: pids limit {} reached: the sandbox could not create a process or \
                 thread it needed and ended ({} process creations refused)",
                l.pids,
                stats.as_ref().map_or(0, |s| s.pids_max_hits)
            ),
        )),
        EndReason::Signal(_) | EndReason::Exited => None,
    };
    if let EndReason::Signal(n) = &reason {
        notices.push(format!("stopped: stockade received signal {n}"));
    }
    // Disk budget hits that did not stop the command: recorded, not hidden.
    let mut disk_hits = Vec::new();
    if scratch_full {
        disk_hits.push(format!(
            "disk limit {} reached in the scratch space (/tmp, HOME, /dev/shm): writes there \
             failed with ENOSPC",
            human(l.disk)
        ));
    }
    if reason != EndReason::Disk
        && let Some(over) = watch.as_ref().and_then(relay::DiskWatch::over)
    {
        disk_hits.push(format!(
            "disk limit {} exceeded by {} in the workspace: written between two checks \
             (the budget of a writable workspace is watched, not enforced by the kernel)",
            human(l.disk),
            human(ByteSize(over))
        ));
    }
    notices.extend(disk_hits.iter().map(|d| format!("limit: {d}")));
    if let Some((_, _, msg)) = &limit_hit {
        notices.push(msg.clone());
    }
    // Undone whether or not the trail is kept.
    let git_undone = ctx.git.map(crate::git::GitGuard::undo).unwrap_or_default();
    for d in &git_undone {
        notices.push(format!("violation: {d}"));
    }
    if let Some(a) = audit {
        // (When the pids limit ended the run, its one limit.hit is `limit_hit`'s, below.)
        if let Some(s) = stats
            .as_ref()
            .filter(|s| s.pids_max_hits > 0 && reason != EndReason::Pids)
        {
            a.emit(
                Some(exec_id),
                EventKind::LimitHit {
                    limit: Limit::Pids,
                    value: l.pids.to_string(),
                    detail: format!("{} process creations refused", s.pids_max_hits),
                },
            );
        }
        for detail in &disk_hits {
            a.emit(
                Some(exec_id),
                EventKind::LimitHit {
                    limit: Limit::Disk,
                    value: human(l.disk),
                    detail: detail.clone(),
                },
            );
        }
        if let Some((limit, value, detail)) = &limit_hit {
            a.emit(
                Some(exec_id),
                EventKind::LimitHit {
                    limit: *limit,
                    value: value.clone(),
                    detail: detail.clone(),
                },
            );
        }
        for detail in git_undone.iter().cloned() {
            a.emit(
                Some(exec_id),
                EventKind::Violation {
                    kind: stockade_audit::ViolationKind::GitProtection,
                    detail,
                    syscall: None,
                    path: Some(".git/commondir".into()),
                    errno: None,
                },
            );
        }
        let tracked = match (&changes, before) {
            (Some(c), _) => c.clone(),
            (None, Some(b)) => {
                let after = crate::track::snapshot(workspace);
                if b.truncated || after.truncated {
                    notices.push(format!(
                        "audit: workspace has more than {} entries; file tracking is partial",
                        crate::track::MAX_ENTRIES
                    ));
                }
                crate::track::diff(&b, &after)
            }
            (None, None) => Vec::new(),
        };
        for c in &tracked {
            a.emit(Some(exec_id), audit::file_changed(c));
        }
        if exec_started.is_some() {
            a.emit(
                Some(exec_id),
                EventKind::ExecExited {
                    exit_code: match termination {
                        Some(Termination::Exited(c)) => Some(c),
                        _ => None,
                    },
                    signal: match termination {
                        Some(Termination::Signaled(s)) => Some(s),
                        None => Some(libc::SIGKILL),
                        _ => None,
                    },
                    duration_ms: exec_started.map_or(0, |t| t.elapsed().as_millis() as u64),
                    cpu_time_ms: stats
                        .as_ref()
                        .and_then(|s| s.cpu_usage_ns)
                        .map(|n| n / 1_000_000),
                    peak_memory_bytes: stats.as_ref().and_then(|s| s.memory_peak),
                    output_bytes: counter.written(),
                    limit: limit_hit.as_ref().map(|(l, _, _)| *l),
                },
            );
        }
        if let Some(e) = a.take_error() {
            notices.push(format!("audit: {e}"));
        }
    }
    drop(exec_span);
    let exit_code = match (&reason, termination) {
        (EndReason::Signal(n), _) => 128 + n,
        // Output cut or disk budget passed: never report success, even if the command got to
        // exit on its own before the stop reached it.
        (EndReason::Output | EndReason::Disk, Some(Termination::Exited(_))) => 128 + libc::SIGKILL,
        (_, Some(t)) => t.shell_code(),
        (EndReason::Exited, None) => {
            return Err(RunError::Setup(
                "the sandbox ended without reporting the command's status".into(),
            ));
        }
        (_, None) => 128 + libc::SIGKILL,
    };
    Ok(RunReport {
        id: String::new(),
        exit_code,
        termination,
        reason,
        notices,
        enforced,
        changes,
        leftovers: Vec::new(),
        duration: Duration::ZERO,
        audit_log: None,
    })
}
