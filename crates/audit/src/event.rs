//! The audit event schema, version [`SCHEMA_VERSION`]. One JSON object per line; every event has
//! `schema_version`, `seq` (monotonic per sandbox, from 1), `at` (UTC, RFC 3339 with
//! microseconds), `sandbox_id`, `exec_id` where it applies, and `type` with its own fields.
//! Documented with an example trace in docs/audit.md; changing a field's meaning bumps the version.

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema_version: u32,
    pub seq: u64,
    pub at: String,
    pub sandbox_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A cgroup controller actually enforcing a limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupEnforced {
    pub controller: String,
    pub version: String,
}

/// What was actually in force for a sandbox (not what was asked for).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// The isolation level actually used: `container`, `gvisor` or `microvm`.
    pub level: String,
    /// microvm only: `kvm` or `tcg` (QEMU's software emulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// gvisor only: the runsc platform (e.g. `ptrace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub namespaces: Vec<String>,
    pub seccomp: String,
    pub landlock: String,
    pub landlock_abi: i32,
    pub cgroups: Vec<CgroupEnforced>,
    pub no_new_privs: bool,
    pub capabilities_dropped: bool,
    pub uid: u32,
    pub gid: u32,
    /// Protections the policy asked for that were not given (allowed by allow_weaker_isolation).
    pub weakenings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestroyReason {
    Exit,
    Timeout,
    Limit,
    Killed,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Memory,
    Pids,
    Timeout,
    Output,
    Disk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A syscall the seccomp filter denied (observed through the kernel's audit records).
    Syscall,
    /// An access Landlock denied (observed through the kernel's audit records).
    Landlock,
    /// A write attempt outside the workspace seen by the file tracker.
    WriteOutsideWorkspace,
    /// Something `workspace.protect_git` guards against that the sandbox did anyway (a path git
    /// would follow that could not be made read-only ahead), undone after the run.
    GitProtection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Modified,
    Deleted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Denied,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    #[serde(rename = "sandbox.created")]
    SandboxCreated {
        policy_digest: String,
        workspace: String,
        workspace_mode: String,
        enforced: Enforcement,
    },
    #[serde(rename = "sandbox.destroyed")]
    SandboxDestroyed {
        reason: DestroyReason,
        /// True when every process, mount and cgroup was verified gone.
        clean: bool,
        leftovers: Vec<String>,
        duration_ms: u64,
        /// Why the sandbox could not be built or supervised (reason = error).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    #[serde(rename = "exec.started")]
    ExecStarted {
        argv: Vec<String>,
        cwd: String,
        /// Names only: values never enter the audit trail.
        env_names: Vec<String>,
    },
    #[serde(rename = "exec.exited")]
    ExecExited {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_time_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peak_memory_bytes: Option<u64>,
        output_bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<Limit>,
    },
    #[serde(rename = "limit.hit")]
    LimitHit {
        limit: Limit,
        value: String,
        detail: String,
    },
    #[serde(rename = "violation")]
    Violation {
        kind: ViolationKind,
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        syscall: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<i32>,
    },
    #[serde(rename = "file.changed")]
    FileChanged {
        path: String,
        change: Change,
        size: u64,
    },
    #[serde(rename = "file.read")]
    FileRead { path: String },
    #[serde(rename = "net.dns")]
    NetDns {
        name: String,
        qtype: String,
        decision: Decision,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        answers: Vec<String>,
    },
    #[serde(rename = "net.connect")]
    NetConnect {
        name: String,
        port: u16,
        decision: Decision,
        reason: String,
        bytes_out: u64,
        bytes_in: u64,
        duration_ms: u64,
    },
    #[serde(rename = "secret.used")]
    SecretUsed {
        name: String,
        host: String,
        /// Placeholders replaced on one connection.
        count: u64,
    },
    #[serde(rename = "secret.refused")]
    SecretRefused {
        name: String,
        destination: String,
        reason: String,
    },
}

impl EventKind {
    /// The `type` string of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::SandboxCreated { .. } => "sandbox.created",
            EventKind::SandboxDestroyed { .. } => "sandbox.destroyed",
            EventKind::ExecStarted { .. } => "exec.started",
            EventKind::ExecExited { .. } => "exec.exited",
            EventKind::LimitHit { .. } => "limit.hit",
            EventKind::Violation { .. } => "violation",
            EventKind::FileChanged { .. } => "file.changed",
            EventKind::FileRead { .. } => "file.read",
            EventKind::NetDns { .. } => "net.dns",
            EventKind::NetConnect { .. } => "net.connect",
            EventKind::SecretUsed { .. } => "secret.used",
            EventKind::SecretRefused { .. } => "secret.refused",
        }
    }
}

/// RFC 3339 UTC timestamp with microseconds, e.g. `2026-11-27T16:20:00.123456Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}
