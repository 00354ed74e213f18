//! # stockade-policy: the sandbox policy model
//!
//! A policy says what a sandbox may see and use: the workspace, extra mounts and `/etc` entries,
//! identity and environment, resource limits, kernel walls, network mode, and what the audit
//! trail records and redacts. This crate parses it from TOML text (the caller reads the file),
//! validates it, merges command-line overrides, prints it back as commented TOML, and gives it a
//! stable digest for the audit record.
//!
//! ## What it guarantees
//!
//! - **No I/O, no syscalls, no `unsafe`.** Input is a `&str`; paths are checked lexically. What needs
//!   the host (resolving the workspace, `$HOME`) is left to the caller, with helpers
//!   ([`Workspace::resolve`], [`check_workspace_dir`]) that stay pure.
//! - **Strict parsing.** Unknown keys are errors that list the valid keys of their table; types are
//!   checked per value. Every error from a file carries the file name, 1-based line and column of
//!   the offending key or value, and the dotted key path; all problems are reported together
//!   (a TOML syntax error stops early, as nothing after it is reliable).
//! - **Fail closed.** A stated `level` weaker than the stated `trust` allows is an error (which
//!   level the host can give is the runtime's question: `stockade_runtime::levels::resolve`);
//!   turning off seccomp or Landlock is an error unless `allow_weaker_isolation`
//!   (`--allow-weaker-isolation`) is set; `network.mode = "open"` is an error unless `allow_open`
//!   (`--allow-open-network`) is set; secret `/etc` entries are refused.
//! - **Network entries are checked here, enforced elsewhere.** `allow`/`deny` names and patterns,
//!   `allow_private` CIDRs and `[network.hosts]` are validated (syntax, and agreement with the
//!   mode) with the egress gateway's grammar or a stricter one, so a valid policy never holds an
//!   entry the gateway refuses. The policy accepts modes `allowlist` and `open`; the runtime
//!   refuses them until the gateway is wired in.
//! - **One source for defaults.** [`Policy::default`] holds them; [`describe_defaults`] (for
//!   `--help`) and [`Policy::to_toml`] (for `policy show`) both read them, and
//!   `from_toml(to_toml(p)) == p`.
//! - **Stable digest.** [`Policy::digest`] is the SHA-256 of the canonical JSON serialization
//!   (fields in declaration order, maps sorted), hex-encoded.
//!
//! ## What it does not do
//!
//! It does not check that paths exist, that the host can give a limit, or that the workspace
//! (once resolved against the real current directory) is not the user's home: the runtime does,
//! with [`check_workspace_dir`]. It does not know which `/etc` entries the curated `/etc` holds.
//! Likewise it does not check that an absolute `audit.sensitive` path lies in the workspace or
//! under a mount target (the workspace is only known once resolved): the runtime does, with
//! [`check_sensitive_paths`]. Whether `filesystem.rootfs` exists, is a directory owned by root
//! and not writable by others is checked by the sandbox's launcher on the directory it opens. Whether the host allows fanotify is the runtime's question too.
//!
//! ## How it is tested
//!
//! Unit tests per module (sizes, durations, SHA-256 vectors, line/column), integration tests for
//! every validation rule with exact messages and positions, the `to_toml` round trip, overrides
//! precedence, the sample files in `policies/`, and a deterministic random-input loop (bytes and
//! mutated policies) that must never panic.

#![forbid(unsafe_code)]

mod duration;
mod error;
mod model;
mod network;
mod overrides;
mod secrets;
mod sha256;
mod show;
mod size;
mod spans;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use error::{PolicyError, PolicyErrors};
pub use model::{
    Audit, Filesystem, Level, Limits, Mount, MountMode, Network, NetworkMode, Policy, Process,
    Secret, SecretPlace, Security, Trust, Workspace, WorkspaceMode,
};
pub use overrides::{FLAGS, Overrides, SecretSource};
pub use show::describe_defaults;
pub use size::ByteSize;
pub use validate::{ETC_DENYLIST, check_sensitive_paths, check_workspace_dir, is_system_path};

/// Valid keys per table, as `(table, keys)`; `""` is the top level. For tests and tooling.
pub const SCHEMA: &[(&str, &[&str])] = &[
    ("", spans::TOP_KEYS),
    ("workspace", spans::WORKSPACE_KEYS),
    ("filesystem", spans::FILESYSTEM_KEYS),
    ("filesystem.mounts[]", spans::MOUNT_KEYS),
    ("process", spans::PROCESS_KEYS),
    ("limits", spans::LIMITS_KEYS),
    ("security", spans::SECURITY_KEYS),
    ("network", spans::NETWORK_KEYS),
    ("audit", spans::AUDIT_KEYS),
    ("secrets.*[]", spans::SECRET_KEYS),
];

impl Policy {
    /// Parse and validate a TOML policy. `origin` names the file in messages. Returns every
    /// problem found; each error from the file has the line and column of its key or value.
    pub fn from_toml(src: &str, origin: &str) -> Result<Policy, PolicyErrors> {
        let (policy, spans, mut errors) = spans::read(src, origin);
        // A value that failed to parse kept its default; do not report it twice. (A failed
        // array element is left out of the policy, so nothing can be reported about it.)
        let bad_keys: Vec<String> = errors
            .iter()
            .filter_map(|e| e.key.clone())
            .filter(|k| !k.contains('['))
            .collect();
        let syntax_error = errors.iter().any(|e| e.key.is_none());
        if !syntax_error {
            for issue in validate::issues(&policy) {
                if bad_keys.iter().any(|k| {
                    issue.key == *k
                        || issue.key.starts_with(&format!("{k}."))
                        || issue.key.starts_with(&format!("{k}["))
                }) {
                    continue;
                }
                let span = spans::find_span(&spans, &issue.key);
                errors.push(error::at_span(
                    src,
                    origin,
                    span,
                    Some(issue.key),
                    issue.message,
                ));
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyErrors(errors).sorted())
        }
    }

    /// Check every rule and report all problems (without positions: the policy is not tied to a
    /// file here; [`Policy::from_toml`] gives positions).
    pub fn validate(&self) -> Result<(), PolicyErrors> {
        let errors: Vec<PolicyError> = validate::issues(self)
            .into_iter()
            .map(|i| PolicyError {
                origin: "policy".into(),
                line: None,
                column: None,
                key: Some(i.key),
                message: i.message,
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// Hex SHA-256 of the canonical JSON serialization (struct fields in declaration order, `env`
    /// sorted by name, sizes and durations as their display strings). Equal policies have equal
    /// digests. A policy that cannot be serialized (a non-UTF-8 path, which validation rejects)
    /// is digested from its `Debug` form instead, so this never fails.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_string(self).unwrap_or_else(|_| format!("{self:?}"));
        sha256::hex(canonical.as_bytes())
    }
}
