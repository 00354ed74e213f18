//! The launch plan: everything the launcher needs to build one container-level sandbox, fully
//! resolved by the supervisor (pure code in `stockade-runtime`) and sent to the launcher as JSON.
//!
//! The plan is data: building it does no syscalls, so its content is unit-tested without root.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One uid or gid mapping line: `inside outside count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How a host path appears inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path (absolute).
    pub source: PathBuf,
    /// Path inside the sandbox (absolute).
    pub target: PathBuf,
    pub writable: bool,
    /// Skip silently when the source does not exist (used for optional system dirs like /lib64).
    pub optional: bool,
    /// Map host root-owned files to the sandbox user (root launcher only; see `launch.rs`).
    pub idmap: bool,
    /// Character devices (the /dev nodes) keep device access; everything else is `nodev`.
    pub device: bool,
}

/// A step that builds the new root, in order. Targets are absolute paths inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootOp {
    Dir {
        path: PathBuf,
        mode: u32,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    /// A file with the given contents (generated, e.g. /etc/passwd).
    File {
        path: PathBuf,
        contents: String,
        mode: u32,
    },
    /// The root filesystem's own file at `path` (a regular file; none when missing or a
    /// symlink) followed by `contents`: e.g. its CA bundle plus the sandbox CA. Only with a
    /// directory root filesystem.
    Append {
        path: PathBuf,
        contents: String,
        mode: u32,
    },
    /// A copy of a small host file, read during setup (missing sources are skipped).
    CopyFile {
        source: PathBuf,
        path: PathBuf,
    },
    Bind(Bind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkspaceKind {
    Rw,
    Ro,
    Overlay,
    Tmp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspacePlan {
    /// Host directory (canonical); unused for `Tmp`.
    pub host: PathBuf,
    /// Path inside (the same absolute path as on the host).
    pub target: PathBuf,
    pub kind: WorkspaceKind,
    /// Relative paths inside the workspace made mount points of themselves first, still
    /// writable, so they cannot be renamed or removed (`.git`, so the read-only paths under it
    /// cannot be carried away with it).
    #[serde(default)]
    pub pin: Vec<PathBuf>,
    /// Relative paths inside the workspace made read-only (`.git/hooks`, `.git/config`, ...);
    /// missing ones are skipped.
    pub protect: Vec<PathBuf>,
    pub idmap: bool,
}

/// Landlock second wall, expressed on paths inside the sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    pub enabled: bool,
    /// Fail the launch when the kernel cannot enforce it (unless weaker isolation is allowed).
    pub required: bool,
    /// Read and execute.
    pub read_exec: Vec<PathBuf>,
    /// Full read-write (create, remove, execute...).
    pub read_write: Vec<PathBuf>,
    /// Device nodes: read, write, ioctl.
    pub devices: Vec<PathBuf>,
    /// Read and write existing files, no create (e.g. /proc).
    pub read_write_files: Vec<PathBuf>,
    /// List only (e.g. "/" itself).
    pub list_only: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rlimit {
    NoFile(u64),
    Core(u64),
}

/// Everything the launcher needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxPlan {
    pub id: String,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    /// Host uid the sandbox's files are idmapped to (root launcher only).
    pub idmap_host_uid: Option<u32>,
    /// The sandbox's ids inside.
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// Size of the one tmpfs that backs /tmp, HOME, /dev/shm and an overlay's upper layer: the
    /// disk budget.
    pub scratch_bytes: u64,
    pub home: PathBuf,
    /// A directory root filesystem (host path): the read-only lower layer of an overlay that is
    /// the sandbox's root (upper layer on the scratch tmpfs, sealed read-only after setup), in
    /// place of a small tmpfs root. `root_ops` then add to it; the root filesystem's own
    /// symlinks are never followed while they do (see `rootfs::build`).
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    pub root_ops: Vec<RootOp>,
    pub workspace: WorkspacePlan,
    pub cwd: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub rlimits: Vec<Rlimit>,
    /// cgroup.procs files to put the sandbox's PID 1 into (written by the launcher before it runs).
    pub cgroup_procs: Vec<PathBuf>,
    /// cgroup directories, removed by the launcher if the supervisor dies.
    pub cgroup_dirs: Vec<PathBuf>,
    pub landlock: LandlockPlan,
    /// Compiled seccomp program (see `seccomp::SeccompProgram::to_bytes`), or None when disabled.
    pub seccomp: Option<Vec<u8>>,
    /// Network mode allowlist: the agent serves DNS and hands connections to the gateway.
    #[serde(default)]
    pub egress: bool,
    /// Session mode (`stockade serve`): after `Go` the agent runs requests until `Stop` instead
    /// of `argv` once.
    #[serde(default)]
    pub session: bool,
    /// The stronger levels: what `__vmm` needs to start the backend (gVisor or a microVM) that
    /// this plan then runs in. None for the container level. Removed before the plan goes inside.
    #[serde(default)]
    pub backend: Option<BackendSpec>,
    /// Set in a microVM guest's plan: the guest kernel's RAM is the sandbox's memory limit less
    /// QEMU's share, so the guest kernel's own OOM kills during the run are the memory limit
    /// (the host's cgroup is not reached), and the agent reports them.
    #[serde(default)]
    pub vm_guest: bool,
}

/// Which runtime carries a sandbox above the container level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendLevel {
    Gvisor,
    Microvm,
}

/// How a microVM's CPU is provided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    /// QEMU's TCG software emulation (no hardware virtualization): same walls, much slower.
    Tcg,
}

/// Everything `__vmm` needs besides the plan itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub level: BackendLevel,
    /// The static guest binary (`stockade-guest`), the only binary of ours inside.
    pub guest_bin: PathBuf,
    /// A fresh host directory for this sandbox's backend files (OCI bundle, VM view); removed at the end.
    pub work_dir: PathBuf,
    /// Guest memory (microvm) in bytes.
    pub memory: u64,
    /// vCPUs (microvm).
    pub cpus: u32,
    /// microvm only.
    pub accel: Option<Accel>,
    /// gvisor only: the runsc binary and the platform that works here.
    pub runsc: Option<PathBuf>,
    pub platform: Option<String>,
}
