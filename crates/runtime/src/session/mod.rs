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
use crate::spawn::Launched;
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
use stockade_jail::cgroup::Cgroup;
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
    /// A microVM's guest kernel OOM-killed during the session (its RAM is the memory limit).
    guest_oom: bool,
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
    /// Above the container level descriptors cross a tunnel: an exec's PTY arrives as a socket
    /// and an opened file as a pipe (see `stockade_agent::tunnel`).
    tunneled: bool,
    level: crate::levels::Resolved,
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
        let user_name = match &opts.user {
            Some(u) => plan::UserName::parse(u)?,
            None => plan::UserName::default(),
        };
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
        // The level the trust asks for, or a refusal that says why and what would make it possible.
        let resolved = crate::levels::resolve_here(policy).map_err(RunError::Unsupported)?;
        let container = resolved.level == stockade_policy::Level::Container;
        if container && policy.security.landlock && stockade_jail::confine::landlock_abi() == 0 {
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
        let launched = crate::backend::spawn(&resolved, allow_weaker)
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
        let cg = match crate::container::make_cgroup(policy, &id, &mut weakenings) {
            Ok(cg) => cg,
            Err(e) => return Err(fail(&audit, e)),
        };
        // Any error from here removes the cgroup too.
        let cleanup = |cg: Option<Cgroup>, audit: &Option<Arc<Audit>>, e: RunError| -> RunError {
            if let Some(cg) = cg {
                let _ = cg.destroy();
            }
            // A killed __vmm leaves its backend's state (runsc's container, the work dir).
            crate::backend::cleanup_after(&id);
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
        let mut plan = plan::build_as(
            policy,
            &[],
            &host_facts(workspace.clone()),
            extras,
            &user_name,
        );
        plan.session = true;
        plan.backend = match crate::backend::spec(&resolved, policy, &id) {
            Ok(b) => b,
            Err(e) => return Err(cleanup(cg, &audit, e)),
        };
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
                resolved: &resolved,
            };
            a.emit(None, audit::created(&ctx, &enforced));
            if let (Some(uid), true) = (plan.idmap_host_uid, container) {
                violations = a.watch_violations(uid, "session");
            }
            // The start is on record before anyone is told the sandbox exists: each event is one
            // write(2) to the log (so a killed server loses none); the log is fdatasync'ed when
            // the sandbox is destroyed, not here, which keeps a disk flush off the create path.
            if let Some(e) = a.take_error() {
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
            user: user_name.as_str().to_string(),
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
            tunneled: !container,
            level: resolved.clone(),
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
    /// The isolation level it runs at.
    pub fn level(&self) -> &crate::levels::Resolved {
        &self.inner.level
    }

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
                // agent claims, so reading it ends and writing it cannot reach a device. Through
                // a tunnel it is the host end of a pipe the tunnel made (the file stays inside).
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| SessionError::Protocol(format!("fstat: {e}")))?;
                // Written: a socket whose other direction brings the outcome (see
                // `finish_write`); read: a pipe.
                let want = match (self.inner.tunneled, write) {
                    (false, _) => rustix::fs::FileType::RegularFile,
                    (true, true) => rustix::fs::FileType::Socket,
                    (true, false) => rustix::fs::FileType::Fifo,
                };
                if rustix::fs::FileType::from_raw_mode(st.st_mode) != want {
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

    /// Ends a write through a descriptor from [`Session::open_write`] and says whether every
    /// byte reached the file: Ok, or [`SessionError::Fs`] with the errno the write (or close)
    /// got inside (ENOSPC for a full disk). Call it after the last write, and also after a
    /// write failed: above the container level the file is written behind a tunnel, where a
    /// failure inside reaches this side only as a broken pipe, and this is where its real
    /// errno comes from. At the container level the descriptor is the file itself and its
    /// writes failed or succeeded already: it is just closed.
    pub async fn finish_write(&self, file: std::fs::File) -> Result<(), SessionError> {
        if !self.inner.tunneled {
            drop(file);
            return Ok(());
        }
        tokio::task::spawn_blocking(move || write_outcome(file))
            .await
            .map_err(|e| SessionError::Protocol(format!("waiting for the write's outcome: {e}")))?
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

    /// Stops every process of the sandbox and waits (at most 3 s) until its agent reports them
    /// all killed and reaped (blocking). The sandbox can do nothing more; [`Session::destroy`]
    /// still has to tear it down and close its trail. True when the agent confirmed the end.
    pub fn stop(&self) -> bool {
        let inner = &self.inner;
        if inner.state.lock().map(|s| s.alive).unwrap_or(false) {
            let _ = inner.send(&SupervisorMsg::Stop);
        }
        let (lock, cv) = &inner.ended;
        let deadline = Instant::now() + Duration::from_secs(3);
        let Ok(mut g) = lock.lock() else {
            return false;
        };
        while g.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match cv.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(_) => return false,
            };
        }
        true
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
                oom = cg.stats().oom_kills > 0 || end.as_ref().is_some_and(|e| e.guest_oom);
                leftovers = cg.destroy().leftovers;
            }
            if self.tunneled {
                leftovers.extend(crate::backend::cleanup_after(&self.id));
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
                match ExecInner::from_started(&placeholder, pid, fds, got, s.tunneled) {
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
            AgentMsg::Exited {
                scratch_full,
                guest_oom,
                ..
            } => {
                end.scratch_full = scratch_full;
                end.guest_oom = guest_oom;
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

mod exec;
mod recover;
pub use recover::recover;

/// The other direction of a tunneled file written through the API (the tunnel's `SinkFile`):
/// after this side shuts down its writing, the guest answers nothing (all written and closed)
/// or the 4-byte big-endian errno of what failed, then ends. From inside, so checked: anything
/// else is a protocol error, and no answer within 30 s is one too.
fn write_outcome(file: std::fs::File) -> Result<(), SessionError> {
    use std::io::Read;
    let mut sock = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(file));
    // The peer may be gone already (it ended after a failure): nothing to shut down then.
    let _ = sock.shutdown(std::net::Shutdown::Write);
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| SessionError::Protocol(format!("the write's outcome: {e}")))?;
    let mut got = [0u8; 8];
    let mut n = 0;
    loop {
        if n == got.len() {
            return Err(SessionError::Protocol(
                "the write's outcome is longer than an errno".into(),
            ));
        }
        match sock.read(&mut got[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The guest's side closed with our last bytes unread (after a failure): what it
            // sent before is all there is.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(SessionError::Protocol(
                    "no outcome for a written file within 30 s".into(),
                ));
            }
            Err(e) => return Err(SessionError::Protocol(format!("the write's outcome: {e}"))),
        }
    }
    match n {
        0 => Ok(()),
        4 => {
            let errno = i32::from_be_bytes([got[0], got[1], got[2], got[3]]);
            if !(1..4096).contains(&errno) {
                return Err(SessionError::Protocol(format!(
                    "the write's outcome is not an errno ({errno})"
                )));
            }
            Err(SessionError::Fs {
                errno,
                message: format!(
                    "writing the file inside: {}",
                    std::io::Error::from_raw_os_error(errno)
                ),
            })
        }
        _ => Err(SessionError::Protocol(
            "the write's outcome is not an errno".into(),
        )),
    }
}
