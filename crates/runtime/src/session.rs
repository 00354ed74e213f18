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

use crate::audit::AuditOptions;
use crate::error::RunError;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stockade_audit::{DestroyReason, EventKind};
use stockade_policy::Policy;
use tokio::sync::{broadcast, mpsc};

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

/// A running session sandbox. Cheap to clone; every clone is the same sandbox.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    user: String,
    home: String,
    started_at: SystemTime,
    audit_log: Option<PathBuf>,
}

/// One process started in a session. Cheap to clone.
#[derive(Clone)]
pub struct ExecHandle {
    inner: Arc<ExecInner>,
}

struct ExecInner {
    exec_id: String,
    pid: i32,
    spec: ExecSpec,
    events: broadcast::Sender<ExecEvent>,
}

/// A directory watch; dropping it removes the watch.
pub struct WatchHandle {
    pub id: u64,
    pub events: mpsc::Receiver<WatchEvent>,
}

const NOT_YET: &str = "session sandboxes: not implemented yet";

impl Session {
    /// Builds the sandbox and waits until its agent serves requests (blocking: call it from
    /// `spawn_blocking`). Records `sandbox.created`.
    pub fn start(policy: &Policy, opts: SessionOptions) -> Result<Session, RunError> {
        let _ = (policy, opts);
        Err(RunError::Launch(NOT_YET.into()))
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
        false
    }

    /// What to store so that [`recover`] can clean up after a crash.
    pub fn recovery_record(&self) -> RecoveryRecord {
        RecoveryRecord {
            id: self.inner.id.clone(),
            launcher_pid: 0,
            launcher_starttime: 0,
            cgroup_dirs: Vec::new(),
            audit_log: self.inner.audit_log.clone(),
        }
    }

    /// Starts a process; returns once it runs (or was refused). Records `exec.started`, and
    /// `exec.exited` when it ends.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecHandle, SessionError> {
        let _ = spec;
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// Processes started through [`Session::exec`] that have not ended.
    pub fn running(&self) -> Vec<ExecHandle> {
        Vec::new()
    }

    /// A file operation other than `Open`/`Watch`/`Unwatch` (use [`Session::open_read`],
    /// [`Session::open_write`], [`Session::watch`]). `FsReply::Failed` comes back as
    /// [`SessionError::Fs`].
    pub async fn fs(&self, op: FsOp) -> Result<FsReply, SessionError> {
        let _ = op;
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// Opens a regular file inside for reading: its entry and a descriptor to read it through.
    pub async fn open_read(&self, path: &str) -> Result<(Entry, std::fs::File), SessionError> {
        let _ = path;
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// Creates or truncates a regular file inside (missing parents created) and returns a
    /// descriptor to write it through. Records `file.changed` once the caller reports the
    /// write with [`Session::record_file_written`].
    pub async fn open_write(&self, path: &str) -> Result<std::fs::File, SessionError> {
        let _ = path;
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// Records a file written through the API (`file.changed`, by "api").
    pub fn record_file_written(&self, path: &str, size: u64, created: bool) {
        let _ = (path, size, created);
    }

    /// Watches a directory inside.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchHandle, SessionError> {
        let _ = (path, recursive);
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// CPU, memory and process count from the sandbox's cgroup.
    pub fn usage(&self) -> Usage {
        Usage::default()
    }

    /// Records an event of the sandbox that happened outside it (e.g. the API extended its TTL).
    pub fn record(&self, kind: EventKind) {
        let _ = kind;
    }

    /// Stops every process, tears the sandbox down, verifies it, records `sandbox.destroyed`
    /// and syncs the trail (blocking). Idempotent: later calls return the first report.
    pub fn destroy(&self, reason: DestroyReason) -> DestroyReport {
        let _ = reason;
        DestroyReport {
            leftovers: Vec::new(),
            duration: Duration::ZERO,
        }
    }
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

    pub fn spec(&self) -> &ExecSpec {
        &self.inner.spec
    }

    /// Output and the end from now on. Subscribe before awaiting anything else after
    /// [`Session::exec`] to see all of it; a receiver that falls more than 4096 chunks behind
    /// gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<ExecEvent> {
        self.inner.events.subscribe()
    }

    /// The outcome, once it ended.
    pub fn outcome(&self) -> Option<ExecOutcome> {
        None
    }

    /// Waits for the end.
    pub async fn wait(&self) -> ExecOutcome {
        ExecOutcome {
            termination: None,
            exit_code: 128 + 9,
            end: ExecEnd::SandboxEnded,
            output_bytes: 0,
            duration: Duration::ZERO,
        }
    }

    /// Writes to its stdin (pipe or PTY). Fails with Invalid when it has no stdin or it is closed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), SessionError> {
        let _ = data;
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// Closes its stdin (EOF); for a PTY, sends EOT.
    pub fn close_stdin(&self) {}

    /// Sends a signal to its process group.
    pub fn signal(&self, signal: i32) -> Result<(), SessionError> {
        let _ = signal;
        Err(SessionError::Invalid(NOT_YET.into()))
    }

    /// Resizes its PTY (Invalid when it has none).
    pub fn resize(&self, size: PtySize) -> Result<(), SessionError> {
        let _ = size;
        Err(SessionError::Invalid(NOT_YET.into()))
    }
}

/// Cleans up after a session whose server died (blocking): kills its launcher if it is still
/// the same process, removes its cgroups, and appends `sandbox.destroyed` (reason `error`,
/// "supervisor lost") to its audit log when that event is missing.
pub fn recover(record: &RecoveryRecord) -> RecoveryReport {
    let _ = record;
    RecoveryReport {
        killed: false,
        leftovers: Vec::new(),
    }
}
