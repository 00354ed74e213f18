//! The one-shot container-level run: create, exec once, stream, destroy, report.
//!
//! The supervisor never forks itself to build the sandbox: it starts the launcher by re-exec
//! (`spawn.rs`), hands it the plan, relays stdio, enforces the wall-clock timeout and the output
//! cap, and afterwards verifies the teardown (launcher reaped, cgroup gone) instead of assuming it.

use crate::error::RunError;
use crate::plan::{self, Extras, HostFacts};
use crate::relay::{self, Event};
use crate::spawn::{Launched, spawn_launcher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stockade_agent::protocol::{AgentMsg, Change, SupervisorMsg, Termination, write_frame};
use stockade_jail::cgroup::{self, Cgroup, Layout, Limits};
use stockade_jail::confine::Enforced;
use stockade_jail::seccomp::SeccompProgram;
use stockade_policy::{ByteSize, Policy, WorkspaceMode, format_duration};

/// Why the run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    Exited,
    Timeout,
    Memory,
    Output,
    Disk,
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
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Where the policy file was, to resolve a relative workspace against (else the current dir).
    pub base_dir: Option<PathBuf>,
}

fn random_u64() -> u64 {
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
    if policy.workspace.mode == WorkspaceMode::Tmp {
        return Ok(canon);
    }
    Ok(canon)
}

fn host_facts(workspace: PathBuf) -> HostFacts {
    let system_links = plan::SYSTEM_DIRS
        .iter()
        .filter_map(|d| {
            let p = PathBuf::from(d);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    std::fs::read_link(&p).ok().map(|t| (p, Some(t)))
                }
                Ok(m) if m.is_dir() => Some((p, None)),
                _ => None,
            }
        })
        .collect();
    HostFacts {
        // SAFETY: geteuid/getegid take no arguments and cannot fail.
        euid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        egid: unsafe { libc::getegid() },
        env: std::env::vars().collect(),
        system_links,
        workspace,
        nonce: random_u64() as u32,
    }
}

/// Runs `argv` in a fresh container-level sandbox under `policy` (already validated).
pub fn run(policy: &Policy, argv: &[String], opts: &RunOptions) -> Result<RunReport, RunError> {
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
    let workspace = resolve_workspace(policy, &base)?;
    if policy.security.landlock && stockade_jail::confine::landlock_abi() == 0 {
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
    let limits = Limits {
        memory_bytes: Some(policy.limits.memory.0),
        swap_bytes: Some(policy.limits.swap.0),
        cpus: Some(policy.limits.cpus),
        pids: Some(policy.limits.pids),
    };
    let cg = match Layout::discover().and_then(|layout| {
        cgroup::sweep_stale(&layout, Duration::from_secs(60));
        Cgroup::create(&layout, &id, &limits)
    }) {
        Ok(cg) => Some(cg),
        Err(e) if allow_weaker => {
            notices.push(format!(
                "weaker isolation: no cgroup limits (memory, cpu, pids): {e}"
            ));
            None
        }
        Err(e) => {
            return Err(RunError::Unsupported(format!(
                "{e}; the memory, cpu and pids limits need a writable cgroup (use --allow-weaker-isolation to run without them)"
            )));
        }
    };
    let extras = Extras {
        id: id.clone(),
        cgroup_procs: cg.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
        cgroup_dirs: cg.as_ref().map(Cgroup::paths).unwrap_or_default(),
        seccomp,
    };
    let plan = plan::build(policy, argv, &host_facts(workspace.clone()), extras);
    let result = supervise(policy, &plan, allow_weaker, cg.as_ref(), &workspace);
    let leftovers = match cg {
        Some(cg) => cg.destroy().leftovers,
        None => Vec::new(),
    };
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
    Ok(report)
}

fn human(b: ByteSize) -> String {
    b.to_string()
}

fn supervise(
    policy: &Policy,
    plan: &stockade_jail::plan::SandboxPlan,
    allow_weaker: bool,
    cg: Option<&Cgroup>,
    workspace: &Path,
) -> Result<RunReport, RunError> {
    let Launched {
        mut child,
        mut ctrl,
        plan: mut plan_pipe,
        liveness,
        stdin,
        stdout,
        stderr,
    } = spawn_launcher(allow_weaker)
        .map_err(|e| RunError::Launch(format!("starting the launcher: {e}")))?;
    let body = serde_json::to_vec(plan).map_err(|e| RunError::Launch(e.to_string()))?;
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
    let watch = (policy.workspace.mode == WorkspaceMode::Rw)
        .then(|| relay::disk_watch(workspace.to_path_buf(), policy.limits.disk.0, tx.clone()));
    drop(tx);

    let deadline = Instant::now() + policy.limits.timeout;
    let mut reason = EndReason::Exited;
    let mut enforced = None;
    let mut stopping: Option<Instant> = None;
    let mut notices = Vec::new();
    let mut outcome: Option<(Option<Termination>, Option<Vec<Change>>)> = None;
    let stop = |ctrl: &mut std::os::unix::net::UnixStream, stopping: &mut Option<Instant>| {
        if stopping.is_none() {
            let _ = write_frame(ctrl, &SupervisorMsg::Stop);
            *stopping = Some(Instant::now());
        }
    };
    let mut setup_error = None;
    while outcome.is_none() {
        let now = Instant::now();
        let wait_until = match stopping {
            Some(s) => s + Duration::from_secs(3),
            None => deadline,
        };
        let ev = rx.recv_timeout(wait_until.saturating_duration_since(now));
        match ev {
            Ok(Event::Agent(AgentMsg::Started { enforced: e, .. })) => enforced = Some(e),
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
            })) => {
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
                } else {
                    reason = EndReason::Timeout;
                    stop(&mut ctrl, &mut stopping);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => outcome = Some((None, None)),
        }
    }
    if let Some(w) = watch {
        w.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // Reap the launcher before letting go of the liveness pipe: its EOF means "supervisor died,
    // clean up", which must not race our own reading of the cgroup's statistics.
    drop(ctrl);
    let _ = child.wait();
    drop(liveness);
    // Every process of the sandbox is gone (PID 1 ended), so the pipes reach EOF; bounded anyway.
    relay::join_bounded(out_t, Duration::from_secs(2));
    relay::join_bounded(err_t, Duration::from_secs(2));
    if let Some(e) = setup_error {
        return Err(e);
    }
    let (termination, changes) = outcome.unwrap_or((None, None));
    let stats = cg.map(Cgroup::stats);
    if let Some(s) = &stats {
        if s.oom_kills > 0 && matches!(termination, Some(Termination::Signaled(9)) | None) {
            reason = EndReason::Memory;
        }
        if s.pids_max_hits > 0 {
            notices.push(format!(
                "limit: pids limit {} reached ({} process creations refused)",
                policy.limits.pids, s.pids_max_hits
            ));
        }
    }
    let l = &policy.limits;
    match &reason {
        EndReason::Timeout => notices.push(format!(
            "killed: timeout {} reached",
            format_duration(l.timeout)
        )),
        EndReason::Memory => {
            notices.push(format!("killed: memory limit {} reached", human(l.memory)))
        }
        EndReason::Output => notices.push(format!(
            "stopped: output limit {} reached",
            human(l.max_output)
        )),
        EndReason::Disk => notices.push(format!(
            "stopped: disk limit {} reached (workspace growth)",
            human(l.disk)
        )),
        EndReason::Signal(n) => notices.push(format!("stopped: stockade received signal {n}")),
        EndReason::Exited => {}
    }
    let exit_code = match (&reason, termination) {
        (EndReason::Signal(n), _) => 128 + n,
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
    })
}
