//! Long-lived sandboxes for `stockade serve`: create once, run many processes, move files, destroy.
//!
//! A [`Session`] is the same container-level sandbox as a one-shot run (same plan, launcher,
//! agent, gateway, audit trail, cgroup, verified teardown) whose agent, after `Go`, serves
//! requests until it is stopped instead of running one command:
//!
//! - [`Session::exec`] starts a process; the agent passes the supervisor its ends of the
//!   process's stdio (pipes, or a PTY master) over the control socket, so output never crosses
//!   the control channel. Output is read here, counted against the policy's output cap per
//!   process, and fanned out to subscribers ([`ExecHandle::subscribe`]).
//! - [`Session::fs`] runs a file operation through the agent, inside the sandbox, under the
//!   sandbox's own uid, mount namespace, Landlock and seccomp: the host never opens a path built
//!   from request input. Reads and writes go through a descriptor the agent opened inside
//!   ([`FsResult::Opened`]), checked here to be a regular file.
//! - [`Session::destroy`] stops everything, verifies the teardown and writes `sandbox.destroyed`.
//!
//! The control loop is one thread per session (blocking frames, as in the one-shot path); the
//! public methods are async and meant to be called from a tokio runtime, except
//! [`Session::start`] and [`Session::destroy`], which block (use `spawn_blocking`).

pub use stockade_agent::protocol::{
    Entry, EntryKind, FsOp, FsReply, PtySize, Termination, WatchEvent, WatchOp,
};

use crate::audit::{self, Audit, AuditOptions};
use crate::container::{Ctx, LaunchGuard, host_facts, random_u64, resolve_workspace};
use crate::error::RunError;
use crate::plan::{self, Extras};
use crate::spawn::{Launched, spawn_launcher};
use bytes::Bytes;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use stockade_agent::protocol::{AgentMsg, ExecRequest, FdFrameReader, SupervisorMsg, write_frame};
use stockade_audit::{DestroyReason, EventKind, Limit};
use stockade_jail::cgroup::{self, Cgroup, Layout, Limits};
use stockade_jail::seccomp::SeccompProgram;
use stockade_policy::{Policy, WorkspaceMode};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// How a session sandbox is made, beyond its policy.
#[derive(Default)]
pub struct SessionOptions {
    /// Where a relative workspace path is resolved from (else the current directory).
    pub base_dir: Option<PathBuf>,
    /// The audit trail; None only when the policy turned auditing off.
    pub audit: Option<AuditOptions>,
    /// Login name inside, with home `/home/<user>` (E2B clients expect `user`); default
    /// `sandbox` with home `/home/sandbox`. Must match `[a-z_][a-z0-9_-]{0,31}`.
    pub user: Option<String>,
    /// Variables added to every process's environment, after the policy's.
    pub env: Vec<(String, String)>,
}

/// Why a request to a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The sandbox has ended (destroyed, expired, or its agent is gone).
    #[error("the sandbox has ended")]
    Gone,
    /// The process could not be started: 127 not found, 126 not executable, 125 otherwise.
    #[error("{message}")]
    ExecRefused { code: i32, message: String },
    /// A file operation failed inside the sandbox with this errno.
    #[error("{message}")]
    Fs { errno: i32, message: String },
    /// The request itself is wrong (empty argv, relative path, NUL byte, no such process...).
    #[error("{0}")]
    Invalid(String),
    /// The agent answered with something that breaks the protocol (treated as hostile).
    #[error("protocol: {0}")]
    Protocol(String),
}

/// One process to start.
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// Added to the sandbox's environment for this process (later wins).
    pub env: Vec<(String, String)>,
    /// Absolute path inside; default the sandbox's home.
    pub cwd: Option<String>,
    /// Keep a stdin pipe open for [`ExecHandle::write_stdin`] (else stdin is /dev/null).
    pub stdin: bool,
    pub pty: Option<PtySize>,
    /// Killed (SIGKILL to its process group) after this long; None: the policy's `limits.timeout`.
    pub timeout: Option<Duration>,
    /// A client's name for the process (E2B `tag`), to find it again.
    pub tag: Option<String>,
}

/// Output and the end of one process, in order.
#[derive(Clone, Debug)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Output of a process on a PTY (one stream).
    Pty(Bytes),
    Exited(ExecOutcome),
}

/// Why a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecEnd {
    Exited,
    /// Its `timeout` passed: killed.
    Timeout,
    /// Its output passed the policy's `max_output`: killed.
    Output,
    /// The sandbox ended first.
    SandboxEnded,
}

#[derive(Clone, Debug)]
pub struct ExecOutcome {
    /// None when the sandbox ended before the agent reported it.
    pub termination: Option<Termination>,
    /// Shell convention: the exit code, or 128 + the signal.
    pub exit_code: i32,
    pub end: ExecEnd,
    pub output_bytes: u64,
    pub duration: Duration,
}

/// Resource use of the whole sandbox, from its cgroup.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// What destroying a session found.
#[derive(Clone, Debug)]
pub struct DestroyReport {
    /// Things teardown could not remove (empty when clean).
    pub leftovers: Vec<String>,
    pub duration: Duration,
}

/// What a server stores to find a session's remains after it crashed (see [`recover`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RecoveryRecord {
    pub id: String,
    pub launcher_pid: i32,
    /// The launcher's start time (field 22 of /proc/PID/stat), so a reused pid is not mistaken.
    pub launcher_starttime: u64,
    pub cgroup_dirs: Vec<PathBuf>,
    pub audit_log: Option<PathBuf>,
}

/// What [`recover`] did with one lost session.
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    /// The launcher was still alive and was killed.
    pub killed: bool,
    pub leftovers: Vec<String>,
}

/// Replies the agent owes a caller, by request id.
enum Reply {
    Started(Arc<ExecInner>),
    Refused { code: i32, message: String },
    Fs(FsReply, Option<OwnedFd>),
}

struct State {
    alive: bool,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Running processes by request id.
    execs: HashMap<u64, Arc<ExecInner>>,
    watches: HashMap<u64, mpsc::Sender<WatchEvent>>,
}

/// Everything torn down at the end, taken once by `destroy`.
struct Teardown {
    child: std::process::Child,
    liveness: OwnedFd,
    git: Option<crate::git::GitGuard>,
    violations: Option<crate::kmsg::Watch>,
    reader: std::thread::JoinHandle<()>,
    reader_thread: std::thread::ThreadId,
}

/// How the agent ended (from its `Exited` frame), for the destroy record.
#[derive(Default)]
struct AgentEnd {
    scratch_full: bool,
}

struct Inner {
    id: String,
    user: String,
    home: String,
    started_at: SystemTime,
    started: Instant,
    audit_log: Option<PathBuf>,
    audit: Option<Arc<Audit>>,
    ctrl: Mutex<UnixStream>,
    state: Mutex<State>,
    next_req: AtomicU64,
    next_exec: AtomicU64,
    /// The environment every process starts from (policy, secrets' placeholders, options).
    env: Vec<(String, String)>,
    max_output: u64,
    default_timeout: Duration,
    disk: stockade_policy::ByteSize,
    /// The sandbox's cgroup (read for usage; removed by `destroy`).
    cgroup: Mutex<Option<Cgroup>>,
    teardown: Mutex<Option<Teardown>>,
    /// Signalled by the reader thread when the agent has ended.
    ended: (Mutex<Option<AgentEnd>>, std::sync::Condvar),
    report: OnceLock<DestroyReport>,
    destroying: Mutex<()>,
    recovery: RecoveryRecord,
}

/// A running session sandbox. Cheap to clone; every clone is the same sandbox. When the last
/// clone is dropped without [`Session::destroy`], the sandbox is destroyed then (reason `error`).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// One process started in a session. Cheap to clone.
#[derive(Clone)]
pub struct ExecHandle {
    inner: Arc<ExecInner>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
    Pty,
}

struct ExecInner {
    exec_id: String,
    req: u64,
    pid: i32,
    spec: ExecSpec,
    started: Instant,
    events: broadcast::Sender<ExecEvent>,
    /// The receiver made with the channel, handed to the first subscriber, so output sent
    /// before anyone subscribed is not lost.
    first: Mutex<Option<broadcast::Receiver<ExecEvent>>>,
    stdin: tokio::sync::Mutex<Option<OwnedFd>>,
    /// The PTY master (for resize), when on a PTY.
    pty: Option<OwnedFd>,
    outputs: Mutex<Vec<(Stream, OwnedFd)>>,
    /// Set by the reader thread: Some(Some(t)) the agent reported the end, Some(None) the
    /// sandbox ended first.
    term: watch::Sender<Option<Option<Termination>>>,
    outcome: watch::Sender<Option<ExecOutcome>>,
    session: Weak<Inner>,
}

/// A directory watch; dropping it removes the watch.
pub struct WatchHandle {
    pub id: u64,
    pub events: mpsc::Receiver<WatchEvent>,
    session: Weak<Inner>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Some(s) = self.session.upgrade() {
            if let Ok(mut st) = s.state.lock() {
                st.watches.remove(&self.id);
            }
            let req = s.next_req.fetch_add(1, Ordering::SeqCst);
            // The reply (Unwatched) finds no pending entry and is dropped.
            let _ = s.send(&SupervisorMsg::Fs {
                id: req,
                op: FsOp::Unwatch { watch: self.id },
            });
        }
    }
}

/// Output chunks carried per read.
const CHUNK: usize = 64 * 1024;
/// Subscribers further behind than this many chunks lose output (`Lagged`).
const FANOUT: usize = 4096;
/// How long after a process ended its output may still drain (its children may hold the pipes).
const DRAIN: Duration = Duration::from_secs(1);
/// How long the agent has to answer a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per watch before they are dropped (and an `Overflow` is sent).
const WATCH_QUEUE: usize = 1024;

fn valid_user(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn seccomp_program() -> Result<Vec<u8>, RunError> {
    static PROGRAM: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            SeccompProgram::compile_default()
                .map(|p| p.to_bytes())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(RunError::Unsupported)
}

/// The process's start time (field 22 of /proc/PID/stat).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Session {
    /// Builds the sandbox and waits until its agent serves requests (blocking: call it from
    /// `spawn_blocking`). Records `sandbox.created`. Every failure path removes what was made.
    pub fn start(policy: &Policy, mut opts: SessionOptions) -> Result<Session, RunError> {
        let started = Instant::now();
        let allow_weaker = policy.security.allow_weaker_isolation;
        let mut weakenings = Vec::new();
        let user = opts.user.clone().unwrap_or_else(|| "sandbox".into());
        if !valid_user(&user) {
            return Err(RunError::Usage(format!(
                "user {user:?}: a login name is 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'"
            )));
        }
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 && (policy.process.uid == 0 || policy.process.gid == 0) {
            return Err(RunError::Usage(
                "process.uid/gid 0 inside is not supported when stockade runs as root; pick another id"
                    .into(),
            ));
        }
        if policy.network.mode == stockade_policy::NetworkMode::Open {
            weakenings.push(
                "weaker isolation: network open: every name is reachable through the egress gateway"
                    .to_string(),
            );
        }
        let workspace = if policy.workspace.mode == WorkspaceMode::Tmp {
            // Nothing of the host is mounted: the path is only where the tmpfs appears inside.
            let p = policy
                .workspace
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("/workspace"));
            if !p.is_absolute() || p.components().any(|c| c.as_os_str() == "..") {
                return Err(RunError::Workspace(format!(
                    "{}: a tmp workspace needs an absolute path without '..'",
                    p.display()
                )));
            }
            p
        } else {
            let base = match &opts.base_dir {
                Some(b) => b.clone(),
                None => std::env::current_dir()
                    .map_err(|e| RunError::Workspace(format!("current directory: {e}")))?,
            };
            let ws = resolve_workspace(policy, &base)?;
            stockade_policy::check_sensitive_paths(policy, &ws).map_err(RunError::Usage)?;
            ws
        };
        if policy.security.landlock && stockade_jail::confine::landlock_abi() == 0 {
            if !allow_weaker {
                return Err(RunError::Unsupported(
                    "landlock: this kernel does not offer Landlock".into(),
                ));
            }
            weakenings.push("weaker isolation: Landlock unavailable on this kernel".into());
        }
        if !policy.security.landlock {
            weakenings.push("weaker isolation: Landlock disabled by policy".into());
        }
        let launched = spawn_launcher(allow_weaker)
            .map_err(|e| RunError::Launch(format!("starting the launcher: {e}")))?;
        let mut launched = LaunchGuard(Some(launched));
        let seccomp = if policy.security.seccomp {
            Some(seccomp_program()?)
        } else {
            weakenings.push("weaker isolation: seccomp disabled by policy".into());
            None
        };
        let id = format!("{:016x}", random_u64());
        let audit = match opts.audit.as_mut() {
            Some(a) => Some(Arc::new(
                Audit::open(a, &id, policy).map_err(RunError::Audit)?,
            )),
            None => None,
        };
        // From here on a failure must close the trail it opened.
        let fail = |audit: &Option<Arc<Audit>>, e: RunError| -> RunError {
            if let Some(a) = audit {
                a.emit(
                    None,
                    EventKind::SandboxDestroyed {
                        reason: DestroyReason::Error,
                        clean: true,
                        leftovers: Vec::new(),
                        duration_ms: started.elapsed().as_millis() as u64,
                        error: Some(e.to_string()),
                    },
                );
                let _ = a.finish();
                let _ = std::fs::remove_file(a.log_path().with_file_name("supervisor"));
            }
            e
        };
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
                weakenings.push(format!(
                    "weaker isolation: no cgroup limits (memory, cpu, pids): {e}"
                ));
                None
            }
            Err(e) => {
                return Err(fail(
                    &audit,
                    RunError::Unsupported(format!(
                        "{e}; the memory, cpu and pids limits need a writable cgroup"
                    )),
                ));
            }
        };
        // Any error from here removes the cgroup too.
        let cleanup = |cg: Option<Cgroup>, audit: &Option<Arc<Audit>>, e: RunError| -> RunError {
            if let Some(cg) = cg {
                let _ = cg.destroy();
            }
            fail(audit, e)
        };
        let secrets = match crate::secrets::prepare(policy, &id) {
            Ok(s) => s,
            Err(e) => return Err(cleanup(cg, &audit, e)),
        };
        let mut env: Vec<(String, String)> =
            secrets.as_ref().map(|s| s.env.clone()).unwrap_or_default();
        for (k, v) in &opts.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(cleanup(
                    cg,
                    &audit,
                    RunError::Usage(format!("environment variable {k:?}: invalid name or value")),
                ));
            }
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let extras = Extras {
            id: id.clone(),
            cgroup_procs: cg.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
            cgroup_dirs: cg.as_ref().map(Cgroup::paths).unwrap_or_default(),
            seccomp,
            env,
            trust: secrets.as_ref().map(|s| s.trust.clone()),
        };
        let git = (policy.workspace.protect_git && policy.workspace.mode == WorkspaceMode::Rw)
            .then(|| crate::git::prepare(&workspace))
            .flatten();
        let mut plan = plan::build(policy, &[], &host_facts(workspace.clone()), extras);
        plan.session = true;
        let home = plan.home.display().to_string();
        let body = match serde_json::to_vec(&plan) {
            Ok(b) => b,
            Err(e) => return Err(cleanup(cg, &audit, RunError::Launch(e.to_string()))),
        };
        let Some(Launched {
            mut child,
            ctrl,
            plan: mut plan_pipe,
            liveness,
            stdin,
            stdout,
            stderr,
        }) = launched.0.take()
        else {
            return Err(cleanup(
                cg,
                &audit,
                RunError::Launch("launcher already consumed".into()),
            ));
        };
        // PID 1's own stdio carries nothing in session mode (each process gets its own pipes).
        drop((stdin, stdout, stderr));
        let wrote = plan_pipe.write_all(&body);
        drop(plan_pipe);
        let kill_child = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        if let Err(e) = wrote {
            kill_child(&mut child);
            return Err(cleanup(
                cg,
                &audit,
                RunError::Launch(format!("sending the plan: {e}")),
            ));
        }
        let ctrl_read = match ctrl.try_clone() {
            Ok(c) => c,
            Err(e) => {
                kill_child(&mut child);
                return Err(cleanup(cg, &audit, RunError::Launch(e.to_string())));
            }
        };
        // Wait for Ready on the control socket (bounded), before the reader thread takes over.
        let _ = ctrl_read.set_read_timeout(Some(REPLY_TIMEOUT));
        let timeout_handle = ctrl_read.try_clone();
        let mut reader = FdFrameReader::new(ctrl_read);
        let enforced = match reader.next_frame::<AgentMsg>() {
            Ok(Some(AgentMsg::Ready { enforced })) => enforced,
            Ok(Some(AgentMsg::SetupFailed { message })) => {
                kill_child(&mut child);
                return Err(cleanup(cg, &audit, RunError::Setup(message)));
            }
            Ok(other) => {
                kill_child(&mut child);
                return Err(cleanup(
                    cg,
                    &audit,
                    RunError::Setup(format!(
                        "the sandbox did not start: {}",
                        match other {
                            None => "its agent ended".to_string(),
                            Some(m) => format!("unexpected {m:?}"),
                        }
                    )),
                ));
            }
            Err(e) => {
                kill_child(&mut child);
                return Err(cleanup(
                    cg,
                    &audit,
                    RunError::Setup(format!("waiting for the sandbox to start: {e}")),
                ));
            }
        };
        // The socket (shared by both handles) blocks again: the reader thread waits for frames.
        match timeout_handle.and_then(|h| h.set_read_timeout(None)) {
            Ok(()) => {}
            Err(e) => {
                kill_child(&mut child);
                return Err(cleanup(cg, &audit, RunError::Launch(e.to_string())));
            }
        }
        let mut violations = None;
        if let Some(a) = &audit {
            let ctx = Ctx {
                policy,
                plan: &plan,
                cg: cg.as_ref(),
                workspace: &workspace,
                audit: Some(a),
                weakenings: weakenings.clone(),
                git: git.as_ref(),
                interceptor: secrets.as_ref().map(|s| s.interceptor.clone()),
            };
            a.emit(None, audit::created(&ctx, &enforced));
            if let Some(uid) = plan.idmap_host_uid {
                violations = a.watch_violations(uid, "session");
            }
            // The start is durable before anyone is told the sandbox exists.
            if let Err(e) = a.finish() {
                kill_child(&mut child);
                return Err(cleanup(cg, &audit, RunError::Audit(e)));
            }
        }
        let egress = match policy.network.mode {
            stockade_policy::NetworkMode::Allowlist | stockade_policy::NetworkMode::Open => {
                match crate::egress::Egress::from_policy(
                    policy,
                    secrets.as_ref().map(|s| s.interceptor.clone()),
                ) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        kill_child(&mut child);
                        return Err(cleanup(cg, &audit, RunError::Usage(e)));
                    }
                }
            }
            _ => None,
        };
        let mut ctrl_w = ctrl;
        if write_frame(&mut ctrl_w, &SupervisorMsg::Go).is_err() {
            kill_child(&mut child);
            return Err(cleanup(
                cg,
                &audit,
                RunError::Setup("the sandbox's agent went away at start".into()),
            ));
        }
        let launcher_pid = child.id() as i32;
        let recovery = RecoveryRecord {
            id: id.clone(),
            launcher_pid,
            launcher_starttime: start_time(launcher_pid).unwrap_or(0),
            cgroup_dirs: cg.as_ref().map(Cgroup::paths).unwrap_or_default(),
            audit_log: audit.as_ref().map(|a| a.log_path().to_path_buf()),
        };
        let inner = Arc::new(Inner {
            id: id.clone(),
            user,
            home,
            started_at: SystemTime::now(),
            started,
            audit_log: audit.as_ref().map(|a| a.log_path().to_path_buf()),
            audit: audit.clone(),
            ctrl: Mutex::new(ctrl_w),
            state: Mutex::new(State {
                alive: true,
                pending: HashMap::new(),
                execs: HashMap::new(),
                watches: HashMap::new(),
            }),
            next_req: AtomicU64::new(1),
            next_exec: AtomicU64::new(1),
            env: plan.env.clone(),
            max_output: policy.limits.max_output.0,
            default_timeout: policy.limits.timeout,
            disk: policy.limits.disk,
            cgroup: Mutex::new(cg),
            teardown: Mutex::new(None),
            ended: (Mutex::new(None), std::sync::Condvar::new()),
            report: OnceLock::new(),
            destroying: Mutex::new(()),
            recovery,
        });
        let weak = Arc::downgrade(&inner);
        let emitter = audit.as_ref().map(|a| a.emitter());
        let handle = std::thread::Builder::new()
            .name(format!("sbx-{}", &id[..8]))
            .spawn(move || read_loop(reader, weak, egress, emitter))
            .map_err(|e| RunError::Launch(format!("starting the control thread: {e}")));
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                kill_child(&mut child);
                let cg = inner.cgroup.lock().ok().and_then(|mut g| g.take());
                if let Some(cg) = cg {
                    let _ = cg.destroy();
                }
                // Nothing is left to tear down; the trail is closed here.
                let _ = inner.report.set(DestroyReport {
                    leftovers: Vec::new(),
                    duration: started.elapsed(),
                });
                return Err(fail(&audit, e));
            }
        };
        if let Ok(mut t) = inner.teardown.lock() {
            *t = Some(Teardown {
                child,
                liveness,
                git,
                violations,
                reader_thread: handle.thread().id(),
                reader: handle,
            });
        }
        tracing::debug!(sandbox_id = %id, ms = started.elapsed().as_millis() as u64, "session started");
        Ok(Session { inner })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Login name inside.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Home directory inside (the default cwd).
    pub fn home(&self) -> &str {
        &self.inner.home
    }

    pub fn started_at(&self) -> SystemTime {
        self.inner.started_at
    }

    pub fn audit_log(&self) -> Option<PathBuf> {
        self.inner.audit_log.clone()
    }

    /// False once the sandbox has ended (destroyed, or its agent is gone).
    pub fn is_alive(&self) -> bool {
        self.inner.state.lock().map(|s| s.alive).unwrap_or(false)
    }

    /// What to store so that [`recover`] can clean up after a crash.
    pub fn recovery_record(&self) -> RecoveryRecord {
        self.inner.recovery.clone()
    }

    /// Starts a process; returns once it runs (or was refused). Records `exec.started`, and
    /// `exec.exited` when it ends.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecHandle, SessionError> {
        let inner = &self.inner;
        if spec.argv.is_empty() {
            return Err(SessionError::Invalid("no command given".into()));
        }
        if spec.argv.iter().any(|a| a.contains('\0')) {
            return Err(SessionError::Invalid(
                "an argument contains a NUL byte".into(),
            ));
        }
        let cwd = spec.cwd.clone().unwrap_or_else(|| inner.home.clone());
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return Err(SessionError::Invalid(format!(
                "cwd {cwd:?}: must be an absolute path inside the sandbox"
            )));
        }
        let mut env = inner.env.clone();
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(SessionError::Invalid(format!(
                    "environment variable {k:?}: invalid name or value"
                )));
            }
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        if spec.pty.is_some() && !env.iter().any(|(k, _)| k == "TERM") {
            env.push(("TERM".into(), "xterm-256color".into()));
        }
        let req = inner.next_req.fetch_add(1, Ordering::SeqCst);
        let exec_id = format!("e{}", inner.next_exec.fetch_add(1, Ordering::SeqCst));
        let rx = inner.expect_reply(req)?;
        // Register what the reader thread needs to build the handle when the agent answers.
        if let Ok(mut st) = inner.state.lock() {
            st.execs.insert(
                req,
                Arc::new(ExecInner::placeholder(
                    exec_id.clone(),
                    req,
                    spec.clone(),
                    cwd.clone(),
                    Arc::downgrade(inner),
                )),
            );
        }
        if let Some(a) = &inner.audit {
            a.emit(
                Some(&exec_id),
                EventKind::ExecStarted {
                    argv: spec.argv.clone(),
                    cwd: cwd.clone(),
                    env_names: env.iter().map(|(k, _)| k.clone()).collect(),
                },
            );
        }
        let msg = SupervisorMsg::Exec(ExecRequest {
            id: req,
            argv: spec.argv.clone(),
            env,
            cwd,
            stdin: spec.stdin,
            pty: spec.pty,
        });
        if inner.send(&msg).is_err() {
            inner.forget(req);
            return Err(SessionError::Gone);
        }
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                inner.forget(req);
                return Err(SessionError::Gone);
            }
            Err(_) => {
                inner.forget(req);
                return Err(SessionError::Protocol(
                    "the agent did not answer an exec request in 30 s".into(),
                ));
            }
        };
        match reply {
            Reply::Started(x) => {
                let h = ExecHandle { inner: x };
                h.start_relay()?;
                Ok(h)
            }
            Reply::Refused { code, message } => {
                if let Some(a) = &inner.audit {
                    a.emit(
                        Some(&exec_id),
                        EventKind::ExecExited {
                            exit_code: Some(code),
                            signal: None,
                            duration_ms: 0,
                            cpu_time_ms: None,
                            peak_memory_bytes: None,
                            output_bytes: 0,
                            limit: None,
                        },
                    );
                }
                Err(SessionError::ExecRefused { code, message })
            }
            Reply::Fs(..) => Err(SessionError::Protocol("fs reply to an exec request".into())),
        }
    }

    /// Processes started through [`Session::exec`] that have not ended.
    pub fn running(&self) -> Vec<ExecHandle> {
        let Ok(st) = self.inner.state.lock() else {
            return Vec::new();
        };
        let mut v: Vec<ExecHandle> = st
            .execs
            .values()
            .filter(|x| x.pid > 0 && x.outcome.borrow().is_none())
            .map(|x| ExecHandle { inner: x.clone() })
            .collect();
        v.sort_by_key(|h| h.inner.req);
        v
    }

    async fn request(&self, op: FsOp) -> Result<(FsReply, Option<OwnedFd>), SessionError> {
        let inner = &self.inner;
        let req = inner.next_req.fetch_add(1, Ordering::SeqCst);
        let rx = inner.expect_reply(req)?;
        if inner.send(&SupervisorMsg::Fs { id: req, op }).is_err() {
            inner.forget(req);
            return Err(SessionError::Gone);
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(Reply::Fs(FsReply::Failed { errno, message }, _))) => {
                Err(SessionError::Fs { errno, message })
            }
            Ok(Ok(Reply::Fs(r, fd))) => Ok((r, fd)),
            Ok(Ok(_)) => Err(SessionError::Protocol(
                "exec reply to a file request".into(),
            )),
            Ok(Err(_)) => Err(SessionError::Gone),
            Err(_) => {
                inner.forget(req);
                Err(SessionError::Protocol(
                    "the agent did not answer a file request in 30 s".into(),
                ))
            }
        }
    }

    /// A file operation other than `Open`/`Watch`/`Unwatch` (use [`Session::open_read`],
    /// [`Session::open_write`], [`Session::watch`]). `FsReply::Failed` comes back as
    /// [`SessionError::Fs`].
    pub async fn fs(&self, op: FsOp) -> Result<FsReply, SessionError> {
        check_op(&op)?;
        if matches!(
            op,
            FsOp::Open { .. } | FsOp::Watch { .. } | FsOp::Unwatch { .. }
        ) {
            return Err(SessionError::Invalid(
                "use open_read, open_write or watch for this operation".into(),
            ));
        }
        let (r, _) = self.request(op).await?;
        Ok(r)
    }

    async fn open(&self, path: &str, write: bool) -> Result<(Entry, std::fs::File), SessionError> {
        let op = FsOp::Open {
            path: path.to_string(),
            write,
        };
        check_op(&op)?;
        match self.request(op).await? {
            (FsReply::Opened { entry }, Some(fd)) => {
                // The descriptor comes from inside: it must be a regular file, whatever the
                // agent claims, so reading it ends and writing it cannot reach a device.
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| SessionError::Protocol(format!("fstat: {e}")))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    != rustix::fs::FileType::RegularFile
                {
                    return Err(SessionError::Protocol(
                        "the agent handed over something other than a regular file".into(),
                    ));
                }
                Ok((entry, std::fs::File::from(fd)))
            }
            (FsReply::Opened { .. }, None) => Err(SessionError::Protocol(
                "an opened file came without its descriptor".into(),
            )),
            _ => Err(SessionError::Protocol("unexpected reply to open".into())),
        }
    }

    /// Opens a regular file inside for reading: its entry and a descriptor to read it through.
    pub async fn open_read(&self, path: &str) -> Result<(Entry, std::fs::File), SessionError> {
        self.open(path, false).await
    }

    /// Creates or truncates a regular file inside (missing parents created) and returns a
    /// descriptor to write it through. Report the write with [`Session::record_file_written`].
    pub async fn open_write(&self, path: &str) -> Result<std::fs::File, SessionError> {
        self.open(path, true).await.map(|(_, f)| f)
    }

    /// Records a file written through the API (`file.changed`).
    pub fn record_file_written(&self, path: &str, size: u64, created: bool) {
        self.record(EventKind::FileChanged {
            path: path.to_string(),
            change: if created {
                stockade_audit::Change::Created
            } else {
                stockade_audit::Change::Modified
            },
            size,
        });
    }

    /// Watches a directory inside.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchHandle, SessionError> {
        let op = FsOp::Watch {
            path: path.to_string(),
            recursive,
        };
        check_op(&op)?;
        // Registered before the request, so no event can arrive before its queue exists: the
        // agent numbers watches itself, so the queue is keyed once the reply names it.
        let (r, _) = self.request(op).await?;
        let FsReply::Watching { watch } = r else {
            return Err(SessionError::Protocol("unexpected reply to watch".into()));
        };
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        if let Ok(mut st) = self.inner.state.lock() {
            st.watches.insert(watch, tx);
        }
        Ok(WatchHandle {
            id: watch,
            events: rx,
            session: Arc::downgrade(&self.inner),
        })
    }

    /// CPU, memory and process count from the sandbox's cgroup.
    pub fn usage(&self) -> Usage {
        let stats = self
            .inner
            .cgroup
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(Cgroup::stats));
        match stats {
            Some(s) => Usage {
                cpu_ns: s.cpu_usage_ns,
                memory_bytes: s.memory_current,
                memory_peak_bytes: s.memory_peak,
                pids: s.pids_current,
            },
            None => Usage::default(),
        }
    }

    /// Records an event of the sandbox that happened outside it (e.g. the API extended its TTL).
    pub fn record(&self, kind: EventKind) {
        if let Some(a) = &self.inner.audit {
            a.emit(None, kind);
        }
    }

    /// Stops every process, tears the sandbox down, verifies it, records `sandbox.destroyed`
    /// and syncs the trail (blocking). Idempotent: later calls return the first report.
    pub fn destroy(&self, reason: DestroyReason) -> DestroyReport {
        self.inner.destroy(reason)
    }
}

fn check_path(p: &str) -> Result<(), SessionError> {
    if !p.starts_with('/') {
        return Err(SessionError::Invalid(format!(
            "{p:?}: paths must be absolute inside the sandbox"
        )));
    }
    if p.contains('\0') {
        return Err(SessionError::Invalid("a path contains a NUL byte".into()));
    }
    if p.len() > 4096 {
        return Err(SessionError::Invalid(
            "a path is longer than 4096 bytes".into(),
        ));
    }
    Ok(())
}

fn check_op(op: &FsOp) -> Result<(), SessionError> {
    match op {
        FsOp::Stat { path }
        | FsOp::List { path, .. }
        | FsOp::Mkdir { path }
        | FsOp::Remove { path }
        | FsOp::Open { path, .. }
        | FsOp::Watch { path, .. } => check_path(path),
        FsOp::Move { from, to } => check_path(from).and_then(|()| check_path(to)),
        FsOp::Unwatch { .. } => Ok(()),
    }
}

impl Inner {
    fn send(&self, msg: &SupervisorMsg) -> std::io::Result<()> {
        let mut c = self
            .ctrl
            .lock()
            .map_err(|_| std::io::Error::other("control socket poisoned"))?;
        write_frame(&mut *c, msg)
    }

    fn expect_reply(&self, req: u64) -> Result<oneshot::Receiver<Reply>, SessionError> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().map_err(|_| SessionError::Gone)?;
        if !st.alive {
            return Err(SessionError::Gone);
        }
        st.pending.insert(req, tx);
        Ok(rx)
    }

    fn forget(&self, req: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.pending.remove(&req);
            st.execs.remove(&req);
        }
    }

    fn destroy(&self, reason: DestroyReason) -> DestroyReport {
        let _one = self.destroying.lock();
        if let Some(r) = self.report.get() {
            return r.clone();
        }
        let alive = self.state.lock().map(|s| s.alive).unwrap_or(false);
        if alive {
            let _ = self.send(&SupervisorMsg::Stop);
        }
        let td = self.teardown.lock().ok().and_then(|mut t| t.take());
        // Wait (bounded) for the agent's own end: it kills every process and reports.
        let end = {
            let (lock, cv) = &self.ended;
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut g = lock.lock().ok();
            while let Some(guard) = g.as_ref() {
                if guard.is_some() || Instant::now() >= deadline {
                    break;
                }
                g = g.and_then(|guard| {
                    cv.wait_timeout(guard, deadline.saturating_duration_since(Instant::now()))
                        .ok()
                        .map(|(g, _)| g)
                });
            }
            g.and_then(|mut g| g.take())
        };
        let mut leftovers = Vec::new();
        let mut oom = false;
        if let Some(mut td) = td {
            if end.is_none() {
                // The agent did not answer: kill the launcher; PID 1 dies with it (PDEATHSIG).
                let _ = td.child.kill();
            }
            let _ = td.child.wait();
            drop(td.liveness);
            if let Ok(c) = self.ctrl.lock() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            // The last handle may be dropped on the reader thread itself: never join oneself.
            if td.reader_thread != std::thread::current().id() {
                let _ = td.reader.join();
            }
            if let Some(v) = td.violations.take() {
                v.finish();
            }
            let undone = td
                .git
                .as_ref()
                .map(crate::git::GitGuard::undo)
                .unwrap_or_default();
            for detail in undone {
                self.emit_violation(detail);
            }
            let cg = self.cgroup.lock().ok().and_then(|mut g| g.take());
            if let Some(cg) = cg {
                oom = cg.stats().oom_kills > 0;
                leftovers = cg.destroy().leftovers;
            }
        }
        if let Some(a) = &self.audit {
            if end.as_ref().is_some_and(|e| e.scratch_full) {
                a.emit(
                    None,
                    EventKind::LimitHit {
                        limit: Limit::Disk,
                        value: self.disk.to_string(),
                        detail: "the scratch space (/tmp, HOME, /dev/shm) was full: writes there failed with ENOSPC".into(),
                    },
                );
            }
            if oom {
                a.emit(
                    None,
                    EventKind::LimitHit {
                        limit: Limit::Memory,
                        value: String::new(),
                        detail: "the memory limit was reached: the kernel killed a process of the sandbox".into(),
                    },
                );
            }
            a.emit(
                None,
                EventKind::SandboxDestroyed {
                    reason,
                    clean: leftovers.is_empty(),
                    leftovers: leftovers.clone(),
                    duration_ms: self.started.elapsed().as_millis() as u64,
                    error: None,
                },
            );
            if a.finish().is_ok() {
                let _ = std::fs::remove_file(a.log_path().with_file_name("supervisor"));
            }
        }
        let report = DestroyReport {
            leftovers,
            duration: self.started.elapsed(),
        };
        let _ = self.report.set(report.clone());
        report
    }

    fn emit_violation(&self, detail: String) {
        if let Some(a) = &self.audit {
            a.emit(
                None,
                EventKind::Violation {
                    kind: stockade_audit::ViolationKind::GitProtection,
                    detail,
                    syscall: None,
                    path: Some(".git/commondir".into()),
                    errno: None,
                },
            );
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.report.get().is_none() {
            let _ = self.destroy(DestroyReason::Error);
        }
    }
}

/// The control thread: every frame from the agent, in order, until it ends.
fn read_loop(
    mut reader: FdFrameReader,
    session: Weak<Inner>,
    egress: Option<crate::egress::Egress>,
    emitter: Option<audit::Emitter>,
) {
    let mut end = AgentEnd::default();
    while let Ok(Some(msg)) = reader.next_frame::<AgentMsg>() {
        let Some(s) = session.upgrade() else { break };
        match msg {
            AgentMsg::DnsQuery { token, name, qtype } => {
                let (allowed, ports) = match &egress {
                    Some(e) => e.dns(&name, &qtype, emitter.as_ref(), "session"),
                    None => (false, Vec::new()),
                };
                let _ = s.send(&SupervisorMsg::DnsReply {
                    token,
                    allowed,
                    ports,
                });
            }
            AgentMsg::DnsMalformed { code } => {
                if let Some(e) = &egress {
                    e.dns_malformed(&code, emitter.as_ref(), "session");
                }
            }
            m @ (AgentMsg::Connect { .. } | AgentMsg::Proxy) => {
                let Some(fd) = reader.take_fd() else { continue };
                if let Some(e) = &egress {
                    let target = match m {
                        AgentMsg::Connect { name, port } => Some((name, port)),
                        _ => None,
                    };
                    e.serve(fd, target, emitter.clone(), "session".to_string());
                }
            }
            AgentMsg::ExecStarted { id, pid, fds } => {
                let mut got = Vec::new();
                for _ in 0..fds.min(3) {
                    if let Some(fd) = reader.take_fd() {
                        got.push(fd);
                    }
                }
                let waiting = s.state.lock().ok().and_then(|mut st| {
                    let tx = st.pending.remove(&id)?;
                    let x = st.execs.get(&id)?.clone();
                    Some((tx, x))
                });
                let Some((tx, placeholder)) = waiting else {
                    continue; // nobody asked: its descriptors are dropped here
                };
                match ExecInner::from_started(&placeholder, pid, fds, got) {
                    Ok(x) => {
                        let x = Arc::new(x);
                        if let Ok(mut st) = s.state.lock() {
                            st.execs.insert(id, x.clone());
                        }
                        if tx.send(Reply::Started(x)).is_err() {
                            // The caller gave up waiting: nobody would read its output.
                            let _ = s.send(&SupervisorMsg::Signal { id, signal: 9 });
                            if let Ok(mut st) = s.state.lock() {
                                st.execs.remove(&id);
                            }
                        }
                    }
                    Err(message) => {
                        // A malformed start: stop the process, refuse the request.
                        let _ = s.send(&SupervisorMsg::Signal { id, signal: 9 });
                        if let Ok(mut st) = s.state.lock() {
                            st.execs.remove(&id);
                        }
                        let _ = tx.send(Reply::Refused { code: 125, message });
                    }
                }
            }
            AgentMsg::ExecRefused { id, code, message } => {
                let tx = s.state.lock().ok().and_then(|mut st| {
                    st.execs.remove(&id);
                    st.pending.remove(&id)
                });
                if let Some(tx) = tx {
                    let _ = tx.send(Reply::Refused { code, message });
                }
            }
            AgentMsg::ExecExited { id, termination } => {
                let x = s
                    .state
                    .lock()
                    .ok()
                    .and_then(|st| st.execs.get(&id).cloned());
                if let Some(x) = x {
                    x.term.send_replace(Some(Some(termination)));
                }
            }
            AgentMsg::FsDone { id, reply } => {
                let fd = match &reply {
                    FsReply::Opened { .. } => reader.take_fd(),
                    _ => None,
                };
                let tx = s
                    .state
                    .lock()
                    .ok()
                    .and_then(|mut st| st.pending.remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(Reply::Fs(reply, fd));
                }
            }
            AgentMsg::FsEvent { watch, event } => {
                let tx = s
                    .state
                    .lock()
                    .ok()
                    .and_then(|st| st.watches.get(&watch).cloned());
                if let Some(tx) = tx
                    && tx.try_send(event).is_err()
                {
                    // Full: the consumer is behind; it learns it lost events.
                    let _ = tx.try_send(WatchEvent::Overflow);
                }
            }
            AgentMsg::Exited { scratch_full, .. } => {
                end.scratch_full = scratch_full;
                break;
            }
            // One-shot frames have no meaning here; a confused agent is not trusted further.
            AgentMsg::Ready { .. }
            | AgentMsg::Started { .. }
            | AgentMsg::SetupFailed { .. }
            | AgentMsg::ExecFailed { .. } => {}
        }
    }
    if let Some(s) = session.upgrade() {
        let execs: Vec<Arc<ExecInner>> = match s.state.lock() {
            Ok(mut st) => {
                st.alive = false;
                st.pending.clear(); // every waiting caller gets Gone
                st.watches.clear();
                st.execs.values().cloned().collect()
            }
            Err(_) => Vec::new(),
        };
        for x in execs {
            x.term.send_if_modified(|t| {
                if t.is_none() {
                    *t = Some(None);
                    true
                } else {
                    false
                }
            });
        }
        let (lock, cv) = &s.ended;
        if let Ok(mut g) = lock.lock() {
            *g = Some(end);
        }
        cv.notify_all();
    }
}

fn is_type(fd: &OwnedFd, want: rustix::fs::FileType) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == want)
        .unwrap_or(false)
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

impl ExecInner {
    fn placeholder(
        exec_id: String,
        req: u64,
        mut spec: ExecSpec,
        cwd: String,
        session: Weak<Inner>,
    ) -> ExecInner {
        spec.cwd = Some(cwd);
        ExecInner {
            exec_id,
            req,
            pid: 0,
            spec,
            started: Instant::now(),
            events: broadcast::channel(1).0,
            first: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            pty: None,
            outputs: Mutex::new(Vec::new()),
            term: watch::channel(None).0,
            outcome: watch::channel(None).0,
            session,
        }
    }

    /// Checks the descriptors the agent sent against what was asked for (count and type).
    fn from_started(
        p: &ExecInner,
        pid: i32,
        claimed: u8,
        mut fds: Vec<OwnedFd>,
    ) -> Result<ExecInner, String> {
        let want = usize::from(p.spec.stdin && p.spec.pty.is_none())
            + if p.spec.pty.is_some() { 1 } else { 2 };
        if usize::from(claimed) != want || fds.len() != want || pid <= 0 {
            return Err(format!(
                "the agent sent {} descriptors for a process that needs {want}",
                fds.len()
            ));
        }
        let mut stdin = None;
        let mut pty = None;
        let mut outputs = Vec::new();
        if p.spec.stdin && p.spec.pty.is_none() {
            let fd = fds.remove(0);
            if !is_type(&fd, rustix::fs::FileType::Fifo) {
                return Err("stdin is not a pipe".into());
            }
            stdin = Some(fd);
        }
        if p.spec.pty.is_some() {
            let master = fds.remove(0);
            if !is_type(&master, rustix::fs::FileType::CharacterDevice) {
                return Err("the PTY master is not a terminal device".into());
            }
            let dup = master
                .try_clone()
                .map_err(|e| format!("duplicating the PTY master: {e}"))?;
            let rd = master
                .try_clone()
                .map_err(|e| format!("duplicating the PTY master: {e}"))?;
            stdin = Some(dup);
            outputs.push((Stream::Pty, rd));
            pty = Some(master);
        } else {
            for (k, fd) in [Stream::Stdout, Stream::Stderr].into_iter().zip(fds) {
                if !is_type(&fd, rustix::fs::FileType::Fifo) {
                    return Err("an output is not a pipe".into());
                }
                outputs.push((k, fd));
            }
        }
        for (_, fd) in &outputs {
            set_nonblocking(fd).map_err(|e| e.to_string())?;
        }
        if let Some(fd) = &stdin {
            set_nonblocking(fd).map_err(|e| e.to_string())?;
        }
        let (events, first) = broadcast::channel(FANOUT);
        Ok(ExecInner {
            exec_id: p.exec_id.clone(),
            req: p.req,
            pid,
            spec: p.spec.clone(),
            started: p.started,
            events,
            first: Mutex::new(Some(first)),
            stdin: tokio::sync::Mutex::new(stdin),
            pty,
            outputs: Mutex::new(outputs),
            term: watch::channel(None).0,
            outcome: watch::channel(None).0,
            session: p.session.clone(),
        })
    }
}

/// Registers an owned, non-blocking descriptor with the tokio reactor.
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns its descriptor for as long as the AsyncFd holds it and always
    // returns the same number from as_raw_fd, which is what `register` requires.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Reads one chunk from a non-blocking descriptor; Ok(0) at the end (EIO on a PTY is its end).
async fn read_chunk(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| {
            rustix::io::read(inner.get_ref(), &mut *buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| rustix::io::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

impl ExecHandle {
    /// `e1`, `e2`, ... per sandbox, as in the audit trail.
    pub fn exec_id(&self) -> &str {
        &self.inner.exec_id
    }

    /// The pid inside the sandbox.
    pub fn pid(&self) -> i32 {
        self.inner.pid
    }

    /// What was asked for (`cwd` filled in with the directory it ran in).
    pub fn spec(&self) -> &ExecSpec {
        &self.inner.spec
    }

    /// Output and the end. The first call gets everything from the start (its receiver was made
    /// with the process); later calls get what comes from then on. A receiver that falls more
    /// than 4096 chunks behind gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<ExecEvent> {
        match self.inner.first.lock().ok().and_then(|mut f| f.take()) {
            Some(rx) => rx,
            None => self.inner.events.subscribe(),
        }
    }

    /// The outcome, once it ended.
    pub fn outcome(&self) -> Option<ExecOutcome> {
        self.inner.outcome.borrow().clone()
    }

    /// Waits for the end.
    pub async fn wait(&self) -> ExecOutcome {
        let mut rx = self.inner.outcome.subscribe();
        loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                return o;
            }
            if rx.changed().await.is_err() {
                return ExecOutcome {
                    termination: None,
                    exit_code: 128 + libc::SIGKILL,
                    end: ExecEnd::SandboxEnded,
                    output_bytes: 0,
                    duration: self.inner.started.elapsed(),
                };
            }
        }
    }

    /// Writes to its stdin (pipe or PTY). Fails with Invalid when it has no stdin or it is closed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), SessionError> {
        let mut g = self.inner.stdin.lock().await;
        let Some(fd) = g.take() else {
            return Err(SessionError::Invalid(
                "the process has no open stdin (start it with stdin, or it was closed)".into(),
            ));
        };
        let afd = register(fd).map_err(|e| SessionError::Invalid(format!("stdin: {e}")))?;
        let r = write_all(&afd, data).await;
        *g = Some(afd.into_inner());
        r.map_err(|e| {
            if e.raw_os_error() == Some(libc::EPIPE) {
                SessionError::Invalid("the process closed its stdin".into())
            } else {
                SessionError::Invalid(format!("writing stdin: {e}"))
            }
        })
    }

    /// Closes its stdin (EOF); for a PTY, sends end-of-file (^D) instead, which the terminal
    /// turns into EOF for the reader.
    pub async fn close_stdin(&self) {
        if self.inner.pty.is_some() {
            let _ = self.write_stdin(&[4]).await;
            return;
        }
        self.inner.stdin.lock().await.take();
    }

    /// Sends a signal (1-31) to its process group.
    pub fn signal(&self, signal: i32) -> Result<(), SessionError> {
        if !(1..=31).contains(&signal) {
            return Err(SessionError::Invalid(format!(
                "signal {signal}: expected 1-31"
            )));
        }
        if self.inner.outcome.borrow().is_some() {
            return Err(SessionError::Invalid("the process has ended".into()));
        }
        let s = self.inner.session.upgrade().ok_or(SessionError::Gone)?;
        s.send(&SupervisorMsg::Signal {
            id: self.inner.req,
            signal,
        })
        .map_err(|_| SessionError::Gone)
    }

    /// Resizes its PTY (Invalid when it has none).
    pub fn resize(&self, size: PtySize) -> Result<(), SessionError> {
        let Some(m) = &self.inner.pty else {
            return Err(SessionError::Invalid("the process has no PTY".into()));
        };
        if size.rows == 0 || size.cols == 0 {
            return Err(SessionError::Invalid(
                "rows and cols must be at least 1".into(),
            ));
        }
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from the valid pointer; `m` is an open
        // PTY master owned by this handle.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(SessionError::Invalid(format!(
                "resize: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Starts the tasks that move its output and decide its end (needs a tokio runtime).
    fn start_relay(&self) -> Result<(), SessionError> {
        let x = self.inner.clone();
        let outputs = std::mem::take(&mut *x.outputs.lock().map_err(|_| SessionError::Gone)?);
        let (tx, rx) = mpsc::channel::<(Stream, Bytes)>(64);
        let mut readers = Vec::new();
        for (kind, fd) in outputs {
            let afd = register(fd)
                .map_err(|e| SessionError::Protocol(format!("output descriptor: {e}")))?;
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match read_chunk(&afd, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx
                                .send((kind, Bytes::copy_from_slice(&buf[..n])))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        drop(tx);
        tokio::spawn(relay(x, rx, readers));
        Ok(())
    }
}

/// Moves one process's output to its subscribers, enforces its timeout and output cap, and
/// records its end once the agent reported it and its output has drained (bounded).
async fn relay(
    x: Arc<ExecInner>,
    mut rx: mpsc::Receiver<(Stream, Bytes)>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) {
    let (max_output, default_timeout) = match x.session.upgrade() {
        Some(s) => (s.max_output, s.default_timeout),
        None => (0, Duration::ZERO),
    };
    let timeout = x.spec.timeout.unwrap_or(default_timeout);
    let deadline = tokio::time::Instant::from_std(x.started + timeout);
    let mut term_rx = x.term.subscribe();
    // The agent may have reported the end before this task started.
    let early = *term_rx.borrow_and_update();
    let mut used: u64 = 0;
    let mut end = ExecEnd::Exited;
    let mut over = false;
    let mut outputs_done = false;
    let mut termination: Option<Option<Termination>> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    if let Some(t) = early {
        if t.is_none() {
            end = ExecEnd::SandboxEnded;
        }
        termination = Some(t);
        drain_until = Some(tokio::time::Instant::now() + DRAIN);
    }
    let kill = |x: &ExecInner| {
        if let Some(s) = x.session.upgrade() {
            let _ = s.send(&SupervisorMsg::Signal {
                id: x.req,
                signal: libc::SIGKILL,
            });
        }
    };
    loop {
        if outputs_done && termination.is_some() {
            break;
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        tokio::select! {
            chunk = rx.recv(), if !outputs_done => match chunk {
                Some((kind, data)) => {
                    if over {
                        continue;
                    }
                    let room = max_output.saturating_sub(used);
                    let n = (data.len() as u64).min(room) as usize;
                    used += n as u64;
                    if n > 0 {
                        let d = data.slice(..n);
                        let _ = x.events.send(match kind {
                            Stream::Stdout => ExecEvent::Stdout(d),
                            Stream::Stderr => ExecEvent::Stderr(d),
                            Stream::Pty => ExecEvent::Pty(d),
                        });
                    }
                    if n < data.len() {
                        over = true;
                        if end == ExecEnd::Exited {
                            end = ExecEnd::Output;
                        }
                        kill(&x);
                    }
                }
                None => outputs_done = true,
            },
            changed = term_rx.changed(), if termination.is_none() => {
                let t = if changed.is_ok() { *term_rx.borrow_and_update() } else { Some(None) };
                if let Some(t) = t {
                    if t.is_none() && end == ExecEnd::Exited {
                        end = ExecEnd::SandboxEnded;
                    }
                    termination = Some(t);
                    drain_until = Some(tokio::time::Instant::now() + DRAIN);
                }
            },
            _ = tokio::time::sleep_until(deadline), if termination.is_none() && end == ExecEnd::Exited => {
                end = ExecEnd::Timeout;
                kill(&x);
            },
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                break;
            },
        }
    }
    for r in readers {
        r.abort();
    }
    let termination = termination.flatten();
    let exit_code = match termination {
        Some(t) => t.shell_code(),
        None => 128 + libc::SIGKILL,
    };
    let outcome = ExecOutcome {
        termination,
        exit_code,
        end,
        output_bytes: used,
        duration: x.started.elapsed(),
    };
    if let Some(s) = x.session.upgrade() {
        if let Some(a) = &s.audit {
            let l = match end {
                ExecEnd::Timeout => Some(Limit::Timeout),
                ExecEnd::Output => Some(Limit::Output),
                _ => None,
            };
            if let Some(limit) = l {
                a.emit(
                    Some(&x.exec_id),
                    EventKind::LimitHit {
                        limit,
                        value: match limit {
                            Limit::Timeout => stockade_policy::format_duration(timeout),
                            _ => stockade_policy::ByteSize(max_output).to_string(),
                        },
                        detail: match limit {
                            Limit::Timeout => "killed: the process's timeout was reached".into(),
                            _ => "killed: the process's output limit was reached".into(),
                        },
                    },
                );
            }
            a.emit(
                Some(&x.exec_id),
                EventKind::ExecExited {
                    exit_code: match termination {
                        Some(Termination::Exited(c)) => Some(c),
                        _ => None,
                    },
                    signal: match termination {
                        Some(Termination::Signaled(sig)) => Some(sig),
                        None => Some(libc::SIGKILL),
                        _ => None,
                    },
                    duration_ms: outcome.duration.as_millis() as u64,
                    cpu_time_ms: None,
                    peak_memory_bytes: None,
                    output_bytes: used,
                    limit: l,
                },
            );
        }
        if let Ok(mut st) = s.state.lock() {
            st.execs.remove(&x.req);
        }
    }
    // The end is on record before anyone hears of it.
    x.outcome.send_replace(Some(outcome.clone()));
    let _ = x.events.send(ExecEvent::Exited(outcome));
}

/// Cleans up after a session whose server died (blocking): kills its launcher if it is still
/// the same process, removes its cgroups, and appends `sandbox.destroyed` (reason `error`,
/// "supervisor lost") to its audit log when that event is missing.
pub fn recover(record: &RecoveryRecord) -> RecoveryReport {
    let mut killed = false;
    let pid = record.launcher_pid;
    if pid > 0 && start_time(pid).is_some_and(|t| t == record.launcher_starttime) {
        // SAFETY: kill with a positive pid and a valid signal number; the start time check
        // above makes sure it is still our launcher, not a reused pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        killed = true;
        let until = Instant::now() + Duration::from_secs(5);
        while start_time(pid).is_some_and(|t| t == record.launcher_starttime)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut leftovers = Vec::new();
    for dir in &record.cgroup_dirs {
        // Only directories under a stockade cgroup parent are touched (the record is ours,
        // but a damaged database must not make us remove someone else's cgroup).
        if !dir.components().any(|c| c.as_os_str() == "stockade") {
            leftovers.push(format!(
                "{}: not a stockade cgroup, left alone",
                dir.display()
            ));
            continue;
        }
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if !dir.exists() {
                break;
            }
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill with a pid read from the sandbox's own cgroup.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            if std::fs::remove_dir(dir).is_ok() || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if dir.exists() {
            leftovers.push(format!("cgroup {}", dir.display()));
        }
    }
    if let Some(log) = &record.audit_log {
        close_log(log, &record.id, &leftovers);
    }
    RecoveryReport { killed, leftovers }
}

/// Appends `sandbox.destroyed` to a log that lacks it (events written before the crash stay).
fn close_log(log: &Path, id: &str, leftovers: &[String]) {
    let Ok(parsed) = stockade_audit::reader::read_log(log) else {
        return;
    };
    if parsed
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::SandboxDestroyed { .. }))
    {
        return;
    }
    let last = parsed.events.iter().map(|e| e.seq).max().unwrap_or(0);
    let started = parsed.events.first().map(|e| e.at.clone());
    let Some(state) = log
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|p| stockade_audit::StateDir(p.to_path_buf()))
    else {
        return;
    };
    if let Ok(mut rec) = stockade_audit::Recorder::reopen(
        &state,
        id,
        last,
        stockade_audit::Redactor::new(Vec::new()),
    ) {
        let _ = rec.emit(
            None,
            EventKind::SandboxDestroyed {
                reason: DestroyReason::Error,
                clean: leftovers.is_empty(),
                leftovers: leftovers.to_vec(),
                duration_ms: 0,
                error: Some(format!(
                    "supervisor lost: the server died while the sandbox ran (started {}); cleaned up at restart",
                    started.unwrap_or_default()
                )),
            },
        );
        let _ = rec.sync();
    }
    let _ = std::fs::remove_file(log.with_file_name("supervisor"));
}
