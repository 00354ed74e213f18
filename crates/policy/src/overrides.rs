//! Command-line overrides: flags win over the file, then the whole policy is validated again.
//! Errors in a value a flag set name that flag (`--memory: ...`).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{PolicyError, PolicyErrors};
use crate::model::{Level, Mount, NetworkMode, Policy, Trust, WorkspaceMode};
use crate::size::ByteSize;

/// Values given on the command line. `None`/empty means "keep the policy's value".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `level` (`--level container|gvisor|microvm`).
    pub level: Option<Level>,
    /// `trust` (`--trust trusted|internal|untrusted`).
    pub trust: Option<Trust>,
    /// `security.allow_emulated` (`--allow-emulated` sets `Some(true)`).
    pub allow_emulated: Option<bool>,
    /// `security.allow_gvisor_for_untrusted` (`--allow-gvisor-for-untrusted` sets `Some(true)`).
    pub allow_gvisor_for_untrusted: Option<bool>,
    pub workspace: Option<PathBuf>,
    pub workspace_mode: Option<WorkspaceMode>,
    pub allow_system_path: Option<bool>,
    pub protect_git: Option<bool>,
    /// Set or replace variables in `process.env`.
    pub env: Vec<(String, String)>,
    /// Added to `process.env_pass` (duplicates ignored).
    pub env_pass: Vec<String>,
    pub memory: Option<ByteSize>,
    pub swap: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub timeout: Option<Duration>,
    pub disk: Option<ByteSize>,
    pub max_output: Option<ByteSize>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `filesystem.rootfs` (`--rootfs DIR`): a directory root filesystem.
    pub rootfs: Option<PathBuf>,
    /// Added to `filesystem.mounts`; a flag mount replaces a file mount with the same target.
    pub mounts: Vec<Mount>,
    pub allow_weaker_isolation: Option<bool>,
    pub seccomp: Option<bool>,
    pub landlock: Option<bool>,
    /// `audit.enabled` (`--no-audit` sets `Some(false)`).
    pub audit: Option<bool>,
    /// Added to `audit.redact_env` (duplicates ignored).
    pub redact_env: Vec<String>,
    /// Added to `audit.sensitive`.
    pub sensitive: Vec<PathBuf>,
    /// `network.mode` (`--net none|allowlist|open`).
    pub net: Option<NetworkMode>,
    /// Added to `network.allow` (`--allow-net NAME[:PORT]`, repeatable; duplicates ignored).
    pub allow_net: Vec<String>,
    /// `network.allow_open` (`--allow-open-network` sets `Some(true)`).
    pub allow_open_network: Option<bool>,
    /// `--secret NAME=env:VAR` / `--secret NAME=file:PATH`: sets where secret NAME comes from.
    pub secrets: Vec<(String, SecretSource)>,
    /// `--secret-host NAME=HOST`: adds HOST to secret NAME's hosts.
    pub secret_hosts: Vec<(String, String)>,
}

/// Where a secret's value comes from, as a flag gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// Parses `NAME=env:VAR` or `NAME=file:PATH`.
    pub fn parse_flag(s: &str) -> Result<(String, SecretSource), String> {
        let (name, src) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=env:VAR or NAME=file:PATH"))?;
        let source = if let Some(v) = src.strip_prefix("env:") {
            SecretSource::Env(v.to_string())
        } else if let Some(p) = src.strip_prefix("file:") {
            SecretSource::File(PathBuf::from(p))
        } else {
            return Err(format!(
                "{s:?}: the source must be env:VAR or file:PATH (the value itself is never \
                 given on the command line)"
            ));
        };
        Ok((name.to_string(), source))
    }
}

/// The flag the CLI is expected to offer for each policy key (used to name flags in errors).
pub const FLAGS: &[(&str, &str)] = &[
    ("level", "--level"),
    ("trust", "--trust"),
    ("security.allow_emulated", "--allow-emulated"),
    (
        "security.allow_gvisor_for_untrusted",
        "--allow-gvisor-for-untrusted",
    ),
    ("workspace.path", "--workspace"),
    ("workspace.mode", "--workspace-mode"),
    ("workspace.allow_system_path", "--allow-system-path"),
    ("workspace.protect_git", "--protect-git"),
    ("process.env", "--env"),
    ("process.env_pass", "--env-pass"),
    ("limits.memory", "--memory"),
    ("limits.swap", "--swap"),
    ("limits.cpus", "--cpus"),
    ("limits.pids", "--pids"),
    ("limits.timeout", "--timeout"),
    ("limits.disk", "--disk"),
    ("limits.max_output", "--max-output"),
    ("process.uid", "--uid"),
    ("process.gid", "--gid"),
    ("filesystem.rootfs", "--rootfs"),
    ("filesystem.mounts", "--mount"),
    (
        "security.allow_weaker_isolation",
        "--allow-weaker-isolation",
    ),
    ("security.seccomp", "--seccomp"),
    ("security.landlock", "--landlock"),
    ("audit.enabled", "--no-audit"),
    ("audit.redact_env", "--redact-env"),
    ("audit.sensitive", "--sensitive"),
    ("network.mode", "--net"),
    ("network.allow", "--allow-net"),
    ("network.allow_open", "--allow-open-network"),
];

fn flag(key: &str) -> &'static str {
    FLAGS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("--?", |(_, f)| f)
}

/// Does issue key `issue` fall under key path `set` (equal, or a child `set.x` / `set[i]`)?
fn under(issue: &str, set: &str) -> bool {
    issue
        .strip_prefix(set)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

impl Policy {
    /// Apply command-line overrides on top (flags win), then validate again. On error the
    /// policy is left unchanged. Problems with values set by a flag name the flag; any other
    /// problem is reported against `policy` with its key.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), PolicyErrors> {
        let mut p = self.clone();
        let mut set: Vec<(String, &'static str)> = Vec::new();
        let mut one = |key: &str| set.push((key.to_string(), flag(key)));

        macro_rules! take {
            ($src:expr, $dst:expr, $key:literal) => {
                if let Some(v) = &$src {
                    $dst = v.clone();
                    one($key);
                }
            };
        }
        if let Some(l) = o.level {
            p.level = Some(l);
            one("level");
        }
        if let Some(t) = o.trust {
            p.trust = Some(t);
            one("trust");
        }
        take!(
            o.allow_emulated,
            p.security.allow_emulated,
            "security.allow_emulated"
        );
        take!(
            o.allow_gvisor_for_untrusted,
            p.security.allow_gvisor_for_untrusted,
            "security.allow_gvisor_for_untrusted"
        );
        if let Some(w) = &o.workspace {
            p.workspace.path = Some(w.clone());
            one("workspace.path");
        }
        take!(o.workspace_mode, p.workspace.mode, "workspace.mode");
        take!(
            o.allow_system_path,
            p.workspace.allow_system_path,
            "workspace.allow_system_path"
        );
        take!(
            o.protect_git,
            p.workspace.protect_git,
            "workspace.protect_git"
        );
        if let Some(r) = &o.rootfs {
            p.filesystem.rootfs = Some(r.clone());
            one("filesystem.rootfs");
        }
        take!(o.memory, p.limits.memory, "limits.memory");
        take!(o.swap, p.limits.swap, "limits.swap");
        take!(o.cpus, p.limits.cpus, "limits.cpus");
        take!(o.pids, p.limits.pids, "limits.pids");
        take!(o.timeout, p.limits.timeout, "limits.timeout");
        take!(o.disk, p.limits.disk, "limits.disk");
        take!(o.max_output, p.limits.max_output, "limits.max_output");
        take!(o.uid, p.process.uid, "process.uid");
        take!(o.gid, p.process.gid, "process.gid");
        take!(
            o.allow_weaker_isolation,
            p.security.allow_weaker_isolation,
            "security.allow_weaker_isolation"
        );
        take!(o.seccomp, p.security.seccomp, "security.seccomp");
        take!(o.landlock, p.security.landlock, "security.landlock");
        take!(o.audit, p.audit.enabled, "audit.enabled");
        take!(o.net, p.network.mode, "network.mode");
        take!(
            o.allow_open_network,
            p.network.allow_open,
            "network.allow_open"
        );

        for (k, v) in &o.env {
            p.process.env.insert(k.clone(), v.clone());
            set.push((format!("process.env.{k}"), "--env"));
        }
        for name in &o.env_pass {
            if !p.process.env_pass.contains(name) {
                p.process.env_pass.push(name.clone());
                set.push((
                    format!("process.env_pass[{}]", p.process.env_pass.len() - 1),
                    "--env-pass",
                ));
            }
        }
        for name in &o.redact_env {
            if !p.audit.redact_env.contains(name) {
                p.audit.redact_env.push(name.clone());
                set.push((
                    format!("audit.redact_env[{}]", p.audit.redact_env.len() - 1),
                    "--redact-env",
                ));
            }
        }
        for path in &o.sensitive {
            p.audit.sensitive.push(path.clone());
            set.push((
                format!("audit.sensitive[{}]", p.audit.sensitive.len() - 1),
                "--sensitive",
            ));
        }
        // A problem with the list as a whole (not one entry) is the flag's when it added to it.
        let mut whole: Vec<(&str, &'static str)> = Vec::new();
        for name in &o.allow_net {
            if !p.network.allow.contains(name) {
                p.network.allow.push(name.clone());
                set.push((
                    format!("network.allow[{}]", p.network.allow.len() - 1),
                    "--allow-net",
                ));
                whole.push(("network.allow", "--allow-net"));
            }
        }
        // A stated level too weak for a trust level given on the command line: the flag's.
        if o.trust.is_some() {
            whole.push(("level", "--trust"));
        }
        if o.net.is_some() {
            for key in [
                "network.allow",
                "network.deny",
                "network.allow_private",
                "network.hosts",
            ] {
                whole.push((key, "--net"));
            }
        }
        for (name, src) in &o.secrets {
            let s = p.secrets.entry(name.clone()).or_default();
            match src {
                SecretSource::Env(v) => {
                    s.from_env = Some(v.clone());
                    s.from_file = None;
                }
                SecretSource::File(f) => {
                    s.from_file = Some(f.clone());
                    s.from_env = None;
                }
            }
            set.push((format!("secrets.{name}"), "--secret"));
        }
        for (name, host) in &o.secret_hosts {
            let s = p.secrets.entry(name.clone()).or_default();
            if !s.hosts.contains(host) {
                s.hosts.push(host.clone());
                set.push((
                    format!("secrets.{name}.hosts[{}]", s.hosts.len() - 1),
                    "--secret-host",
                ));
            }
        }
        if !o.mounts.is_empty() {
            p.filesystem
                .mounts
                .retain(|m| !o.mounts.iter().any(|f| f.target() == m.target()));
            let first = p.filesystem.mounts.len();
            p.filesystem.mounts.extend(o.mounts.iter().cloned());
            for i in first..p.filesystem.mounts.len() {
                set.push((format!("filesystem.mounts[{i}]"), "--mount"));
            }
        }

        let issues = crate::validate::issues(&p);
        if issues.is_empty() {
            *self = p;
            return Ok(());
        }
        let errors = issues
            .into_iter()
            .map(|i| {
                // The most specific key a flag set (`secrets.K.hosts[0]` over `secrets.K`).
                let origin = set
                    .iter()
                    .filter(|(k, _)| under(&i.key, k))
                    .max_by_key(|(k, _)| k.len())
                    .map(|(_, f)| *f)
                    .or_else(|| whole.iter().find(|(k, _)| i.key == *k).map(|(_, f)| *f))
                    .unwrap_or("policy");
                PolicyError {
                    origin: origin.to_string(),
                    line: None,
                    column: None,
                    key: Some(i.key),
                    message: i.message,
                }
            })
            .collect();
        Err(PolicyErrors(errors))
    }
}
