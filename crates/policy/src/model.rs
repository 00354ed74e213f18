//! The policy data model: plain types with serde derives and the documented defaults.
//!
//! Every struct is `deny_unknown_fields` and `default`, so a JSON or TOML document may name any
//! subset of keys. The TOML front door ([`crate::Policy::from_toml`]) does not go through these
//! derives for the top level; it walks the spanned document itself (see `spans.rs`) so that every
//! error carries a line and column. The derives serve JSON, the canonical digest and nested values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::size::ByteSize;

/// The complete sandbox policy. See the crate docs for the file format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Format version; only `1` is accepted.
    pub version: u32,
    /// Isolation level (backend).
    pub level: Level,
    pub workspace: Workspace,
    pub filesystem: Filesystem,
    pub process: Process,
    pub limits: Limits,
    pub security: Security,
    pub network: Network,
    pub audit: Audit,
    /// Secrets the egress gateway injects, by the environment variable that holds the
    /// placeholder inside (issue 6). The policy says where each value comes from, never the value.
    /// Left out of the serialized form when empty, so policies without secrets keep their digest.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Secret>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            version: 1,
            level: Level::Container,
            workspace: Workspace::default(),
            filesystem: Filesystem::default(),
            process: Process::default(),
            limits: Limits::default(),
            security: Security::default(),
            network: Network::default(),
            audit: Audit::default(),
            secrets: BTreeMap::new(),
        }
    }
}

/// Isolation level. Only `Container` is implemented; the others parse and fail validation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Container,
    Gvisor,
    Microvm,
}

impl Level {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Container => "container",
            Level::Gvisor => "gvisor",
            Level::Microvm => "microvm",
        }
    }
}

/// The workspace: the one writable host directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workspace {
    /// Host directory as written; `None` means the caller's current directory. Relative paths
    /// are kept as given and resolved by the caller (see [`Workspace::resolve`]).
    pub path: Option<PathBuf>,
    pub mode: WorkspaceMode,
    /// Keep `.git/hooks` and `.git/config` read-only inside a writable workspace.
    pub protect_git: bool,
    /// Allow `/`, the home directory, `/etc`, `/usr`, ... as the workspace.
    pub allow_system_path: bool,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            path: None,
            mode: WorkspaceMode::Rw,
            protect_git: true,
            allow_system_path: false,
        }
    }
}

impl Workspace {
    /// The workspace directory for a caller whose base directory (current directory, or the
    /// directory holding the policy file) is `base`. Purely lexical: `.` components are dropped,
    /// nothing is looked up on disk, `..` is kept for the caller's canonicalisation.
    pub fn resolve(&self, base: &std::path::Path) -> PathBuf {
        let joined = match &self.path {
            None => base.to_path_buf(),
            Some(p) => base.join(p),
        };
        joined.components().collect()
    }
}

/// How the workspace appears inside the sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// Writable bind of the host directory.
    #[default]
    Rw,
    /// Read-only bind.
    Ro,
    /// Writes go to a throwaway upper layer and are listed at the end.
    Overlay,
    /// An empty tmpfs; the host directory is not mounted at all.
    Tmp,
}

impl WorkspaceMode {
    /// The name used in policy files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceMode::Rw => "rw",
            WorkspaceMode::Ro => "ro",
            WorkspaceMode::Overlay => "overlay",
            WorkspaceMode::Tmp => "tmp",
        }
    }
}

/// The root filesystem, extra host paths and /etc entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filesystem {
    /// A directory root filesystem (absolute host path, e.g. from `debootstrap` or an unpacked
    /// OCI image): the read-only lower layer of the sandbox's root, instead of the host's
    /// /usr, /bin, /lib and curated /etc. `None`: the host's system directories, read-only.
    /// Left out of the serialized form when unset, so policies without it keep their digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    /// Names relative to `/etc` added to the curated `/etc`.
    pub etc_extra: Vec<String>,
}

/// One extra bind mount.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute host path.
    pub host: PathBuf,
    /// Absolute path inside the sandbox; `None` means the same as `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub mode: MountMode,
}

impl Mount {
    /// The path inside the sandbox.
    pub fn target(&self) -> &std::path::Path {
        self.path.as_deref().unwrap_or(&self.host)
    }
}

/// Access mode of an extra mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    #[default]
    Ro,
    Rw,
}

impl MountMode {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            MountMode::Ro => "ro",
            MountMode::Rw => "rw",
        }
    }
}

/// The sandboxed process's identity and environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Process {
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// Extra variables set inside.
    pub env: BTreeMap<String, String>,
    /// Names of host variables passed through.
    pub env_pass: Vec<String>,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            uid: 1000,
            gid: 1000,
            hostname: "stockade".to_string(),
            env: BTreeMap::new(),
            env_pass: Vec::new(),
        }
    }
}

/// Resource limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub memory: ByteSize,
    pub swap: ByteSize,
    pub cpus: f64,
    pub pids: u64,
    #[serde(with = "crate::duration::humane")]
    pub timeout: Duration,
    pub disk: ByteSize,
    pub max_output: ByteSize,
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::gib(1),
            swap: ByteSize(0),
            cpus: 1.0,
            pids: 256,
            timeout: Duration::from_secs(600),
            disk: ByteSize::gib(1),
            max_output: ByteSize::mib(16),
            open_files: 1024,
        }
    }
}

/// Kernel walls. Turning one off needs `allow_weaker_isolation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    pub seccomp: bool,
    pub landlock: bool,
    pub allow_weaker_isolation: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            seccomp: true,
            landlock: true,
            allow_weaker_isolation: false,
        }
    }
}

/// Network policy: what the egress gateway lets out. Entries are kept as written; validation
/// checks their syntax (the gateway's grammar or stricter) and that they agree with the mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub mode: NetworkMode,
    /// Names and patterns the sandbox may reach (`"api.github.com"`, `"*.pypi.org"`,
    /// `"example.com:8443"`); without a port, 443 and 80.
    pub allow: Vec<String>,
    /// Names and patterns refused even when `allow` matches (deny wins); without a port, on
    /// every port.
    pub deny: Vec<String>,
    /// CIDRs (`"127.0.0.0/8"`, `"fd00::/8"`) a name may resolve to and still be dialled;
    /// private, loopback, link-local, CGNAT, ULA and metadata addresses are refused otherwise.
    pub allow_private: Vec<String>,
    /// Accept `mode = "open"` (`--allow-open-network`).
    pub allow_open: bool,
    /// Static names the gateway resolves itself: name → IP address.
    pub hosts: BTreeMap<String, String>,
}

/// Network mode. The policy accepts all three; the runtime refuses `Allowlist` and `Open` until
/// the egress gateway is wired in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    None,
    Allowlist,
    Open,
}

impl NetworkMode {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Open => "open",
        }
    }
}

/// What the audit trail records and hides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Write the audit trail (JSONL sinks; OTLP when configured). `false` is allowed, but the
    /// runtime prints a notice.
    pub enabled: bool,
    /// Names of environment variables whose values are replaced by `[REDACTED]` in every sink.
    pub redact_env: Vec<String>,
    /// Paths whose reads are recorded as `file.read` events (where the host allows fanotify).
    /// Relative paths are inside the workspace; absolute ones must be the workspace or under it,
    /// or under a `filesystem.mounts` target (checked by the runtime, which knows the workspace).
    pub sensitive: Vec<PathBuf>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            redact_env: Vec::new(),
            sensitive: Vec::new(),
        }
    }
}

/// One secret: where its value comes from, the hosts where the real value may appear, and the
/// places of a request where the gateway may substitute it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secret {
    /// The name of a variable in stockade's own environment holding the value.
    pub from_env: Option<String>,
    /// An absolute path of a file holding the value (one trailing newline is dropped).
    pub from_file: Option<PathBuf>,
    /// Exact host names (each in the network allowlist) where the value may be sent.
    pub hosts: Vec<String>,
    /// Where in a request the placeholder may be replaced: headers (default), the URL query,
    /// request bodies.
    #[serde(rename = "in")]
    pub places: Vec<SecretPlace>,
}

impl Default for Secret {
    fn default() -> Self {
        Secret {
            from_env: None,
            from_file: None,
            hosts: Vec::new(),
            places: vec![SecretPlace::Header],
        }
    }
}

/// A place in a request where a placeholder may be replaced by its secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretPlace {
    Header,
    Query,
    Body,
}

impl SecretPlace {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretPlace::Header => "header",
            SecretPlace::Query => "query",
            SecretPlace::Body => "body",
        }
    }
}
