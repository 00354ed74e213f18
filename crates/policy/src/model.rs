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
///
/// Serialized by hand (see the `Serialize` impl below) so that `level` and `trust` keep the
/// digests of policies written before trust levels existed.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Format version; only `1` is accepted.
    pub version: u32,
    /// Isolation level (backend) as stated. `None`: not stated — the trust level picks one
    /// (`stockade_runtime::levels::resolve`), or `container` when no trust level is stated either.
    pub level: Option<Level>,
    /// The threat model: who wrote the code that runs. `None`: not stated (the level is used as
    /// given). See [`Trust`].
    pub trust: Option<Trust>,
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
            level: None,
            trust: None,
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

impl Serialize for Policy {
    /// Fields in declaration order. `level` is written as `"container"` when it is not stated
    /// and no trust level is either (the meaning it always had, and the digest it always had);
    /// left out when a trust level picks it. `trust`, `secrets` and the new `security` keys are
    /// left out at their defaults, so the digests of older policies do not change.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Policy", 11)?;
        st.serialize_field("version", &self.version)?;
        match (self.level, self.trust) {
            (Some(l), _) => st.serialize_field("level", &l)?,
            (None, None) => st.serialize_field("level", &Level::Container)?,
            (None, Some(_)) => st.skip_field("level")?,
        }
        match self.trust {
            Some(t) => st.serialize_field("trust", &t)?,
            None => st.skip_field("trust")?,
        }
        st.serialize_field("workspace", &self.workspace)?;
        st.serialize_field("filesystem", &self.filesystem)?;
        st.serialize_field("process", &self.process)?;
        st.serialize_field("limits", &self.limits)?;
        st.serialize_field("security", &self.security)?;
        st.serialize_field("network", &self.network)?;
        st.serialize_field("audit", &self.audit)?;
        if self.secrets.is_empty() {
            st.skip_field("secrets")?;
        } else {
            st.serialize_field("secrets", &self.secrets)?;
        }
        st.end()
    }
}

/// Isolation level (backend), weakest first: the order is the strength order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Linux namespaces, seccomp, Landlock, cgroups: the host kernel is shared.
    #[default]
    Container,
    /// The system's `runsc`: a user-space kernel between the code and the host's.
    Gvisor,
    /// A VMM (QEMU `-M microvm`) with its own guest kernel.
    Microvm,
}

impl Level {
    /// Every level, weakest first.
    pub const ALL: [Level; 3] = [Level::Container, Level::Gvisor, Level::Microvm];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Container => "container",
            Level::Gvisor => "gvisor",
            Level::Microvm => "microvm",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown level {s:?}; use container, gvisor or microvm"))
    }
}

/// Who wrote the code the sandbox runs, and so which levels may run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Your own code and templates: `container` or stronger.
    Trusted,
    /// Code from inside your organisation: `gvisor` or stronger.
    Internal,
    /// Code from outside the trust boundary (e.g. generated from untrusted input): `microvm`,
    /// or `gvisor` where the operator allows it (`security.allow_gvisor_for_untrusted`).
    Untrusted,
}

impl Trust {
    /// Every trust level, most trusted first.
    pub const ALL: [Trust; 3] = [Trust::Trusted, Trust::Internal, Trust::Untrusted];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Trusted => "trusted",
            Trust::Internal => "internal",
            Trust::Untrusted => "untrusted",
        }
    }

    /// The weakest level this trust level accepts, given whether the operator accepts gVisor
    /// for untrusted code.
    pub fn minimum(self, allow_gvisor_for_untrusted: bool) -> Level {
        match self {
            Trust::Trusted => Level::Container,
            Trust::Internal => Level::Gvisor,
            Trust::Untrusted if allow_gvisor_for_untrusted => Level::Gvisor,
            Trust::Untrusted => Level::Microvm,
        }
    }
}

impl std::str::FromStr for Trust {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Trust::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown trust level {s:?}; use trusted, internal or untrusted"))
    }
}

impl Policy {
    /// The level as stated, or `container` when none is (what a policy without a trust level
    /// runs at; with a trust level, `stockade_runtime::levels::resolve` decides instead).
    pub fn stated_level(&self) -> Level {
        self.level.unwrap_or_default()
    }

    /// The weakest level this policy accepts: the stated level if any, else the trust level's
    /// minimum, else `container`.
    pub fn minimum_level(&self) -> Level {
        let by_trust = self.trust.map_or(Level::Container, |t| {
            t.minimum(self.security.allow_gvisor_for_untrusted)
        });
        self.level.map_or(by_trust, |l| l.max(by_trust))
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
    /// A microVM may run under QEMU's TCG software emulation when KVM is not usable here (same
    /// walls, much slower). Left out of the serialized form when false (digests unchanged).
    #[serde(skip_serializing_if = "is_false")]
    pub allow_emulated: bool,
    /// The operator accepts gVisor for `trust = "untrusted"` code (by default it needs a
    /// microVM). Left out of the serialized form when false (digests unchanged).
    #[serde(skip_serializing_if = "is_false")]
    pub allow_gvisor_for_untrusted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for Security {
    fn default() -> Self {
        Security {
            seccomp: true,
            landlock: true,
            allow_weaker_isolation: false,
            allow_emulated: false,
            allow_gvisor_for_untrusted: false,
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
