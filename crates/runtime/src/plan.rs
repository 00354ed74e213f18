//! Policy → launch plan, the pure half of starting a container-level sandbox.
//!
//! [`HostFacts`] is everything read from the host (ids, environment, which system dirs are
//! symlinks); [`build`] turns a validated policy and those facts into a [`SandboxPlan`] without
//! touching the system, so every decision here is unit-tested without root.
//!
//! Two roots: by default a small tmpfs with the host's system directories bound read-only and a
//! curated /etc; with `filesystem.rootfs`, that directory is the read-only lower layer of an
//! overlay root (the host's /usr, /bin, /lib and /etc are not bound at all), and only what the
//! sandbox needs from Stockade is added on top: /proc, /dev, /tmp, HOME, the workspace, the
//! mounts, and generated /etc/passwd, group, hostname, hosts and resolv.conf (the root
//! filesystem's own are replaced, not trusted). Either root is sealed read-only: the sandbox
//! writes to /tmp, HOME, /dev/shm, the workspace and rw mounts, as by default.

use std::path::{Path, PathBuf};
use stockade_jail::plan::{
    Bind, IdMap, LandlockPlan, Rlimit, RootOp, SandboxPlan, WorkspaceKind, WorkspacePlan,
};
use stockade_policy::{MountMode, Policy, WorkspaceMode};

/// The PATH every sandbox starts with (the host's PATH names host directories that may not exist inside).
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// HOME inside: a private tmpfs directory (for the default login name, [`SANDBOX_USER`]).
pub const SANDBOX_HOME: &str = "/home/sandbox";
/// The default login name inside.
pub const SANDBOX_USER: &str = "sandbox";
/// Host uids that root-launched sandboxes run as (outside their user namespace): one per sandbox,
/// picked from this otherwise unused range, so a sandbox owns no host file.
pub const HOST_UID_BASE: u32 = 0x7000_0000;
pub const HOST_UID_SPAN: u32 = 0x0010_0000;

/// Host variables passed through by default (by name; values are the host's when set).
pub const PASSED_BY_DEFAULT: &[&str] = &["LANG", "TERM", "TZ"];

/// /etc files copied in (small, not secret). Missing ones are skipped.
pub const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "inputrc",
    "bash.bashrc",
    "profile",
    "localtime",
    "timezone",
    "locale.alias",
    "debian_version",
    "os-release",
    "issue",
    "shells",
    "magic",
    "magic.mime",
    "networks",
    "ethertypes",
    "xattr.conf",
    "papersize",
    "mailcap",
];
/// /etc directories bound read-only (no secrets in them on a normal install). Missing ones are skipped.
pub const ETC_DIRS: &[&str] = &[
    "ld.so.conf.d",
    "ssl/certs",
    "ca-certificates",
    "alternatives",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
    "perl",
    "terminfo",
    "profile.d",
    "fonts",
    "bash_completion.d",
];
/// System directories of the host, bound read-only (or recreated as the same symlink).
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// Paths under the workspace made read-only by `workspace.protect_git` (missing ones are
/// skipped; `.git/hooks` and `.git/info` are created on the host first when missing, see
/// `container::prepare_git`). `.git` is in the list for the case where it is a `gitdir:` file.
pub const GIT_PROTECTED: &[&str] = &[
    ".git/hooks",
    ".git/config",
    ".git/config.worktree",
    ".git/commondir",
    ".git/info",
];

/// What the plan needs to know about the host.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub euid: u32,
    pub egid: u32,
    /// Host environment (only names the policy passes are read).
    pub env: Vec<(String, String)>,
    /// For each of [`SYSTEM_DIRS`]: `Some(target)` when it is a symlink on the host, `None` when a
    /// real directory, absent when it does not exist.
    pub system_links: Vec<(PathBuf, Option<PathBuf>)>,
    /// Canonical workspace directory.
    pub workspace: PathBuf,
    /// Random value picking this sandbox's host uid (root only).
    pub nonce: u32,
}

/// Things the runtime adds that are not policy: identity, cgroup files, compiled seccomp.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub id: String,
    pub cgroup_procs: Vec<PathBuf>,
    pub cgroup_dirs: Vec<PathBuf>,
    pub seccomp: Option<Vec<u8>>,
    /// Variables the runtime adds (secret placeholders, CA bundle paths).
    pub env: Vec<(String, String)>,
    /// The sandbox CA to trust (with secrets): /etc/ssl/certs is rebuilt around it.
    pub trust: Option<crate::secrets::Trust>,
}

/// The login name inside a sandbox, with home `/home/<name>`: `[a-z_][a-z0-9_-]{0,31}` and not a
/// name the generated /etc/passwd or /etc/group already holds. Default [`SANDBOX_USER`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserName(String);

impl Default for UserName {
    fn default() -> Self {
        UserName(SANDBOX_USER.to_string())
    }
}

impl UserName {
    /// Checks a requested login name (e.g. `SessionOptions::user`).
    pub fn parse(name: &str) -> Result<UserName, crate::error::RunError> {
        let b = name.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || *c == b'_');
        let rest_ok = b
            .iter()
            .skip(1)
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        if !(first_ok && rest_ok && b.len() <= 32) {
            return Err(crate::error::RunError::Usage(format!(
                "user name {name:?} is not valid: use 1 to 32 characters, lowercase letters, \
                 digits, '_' or '-', starting with a letter or '_' (e.g. \"user\")"
            )));
        }
        if ["root", "nobody", "nogroup"].contains(&name) {
            return Err(crate::error::RunError::Usage(format!(
                "user name {name:?} is reserved inside the sandbox (the command never runs as \
                 root there); pick another, e.g. \"user\""
            )));
        }
        Ok(UserName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/home/<name>`.
    pub fn home(&self) -> PathBuf {
        Path::new("/home").join(&self.0)
    }
}

fn bind(source: &str, target: &str, writable: bool, optional: bool) -> RootOp {
    RootOp::Bind(Bind {
        source: PathBuf::from(source),
        target: PathBuf::from(target),
        writable,
        optional,
        idmap: false,
        device: false,
    })
}

/// /etc/ssl/certs as on the host (links recreated, files copied, directories bound), but with
/// the bundle replaced by the host's bundle plus the sandbox CA, and the CA alone beside it.
fn trust_ops(t: &crate::secrets::Trust, ops: &mut Vec<RootOp>) {
    use crate::secrets::Entry;
    let dir = Path::new("/etc/ssl/certs");
    ops.push(RootOp::Dir {
        path: "/etc/ssl".into(),
        mode: 0o755,
    });
    ops.push(RootOp::Dir {
        path: dir.into(),
        mode: 0o755,
    });
    for (name, e) in &t.entries {
        let path = dir.join(name);
        ops.push(match e {
            Entry::Link(target) => RootOp::Symlink {
                path,
                target: target.clone(),
            },
            Entry::File => RootOp::CopyFile {
                source: path.clone(),
                path,
            },
            Entry::Dir => {
                let p = path.display().to_string();
                bind(&p, &p, false, true)
            }
        });
    }
    ops.push(RootOp::File {
        path: crate::secrets::BUNDLE.into(),
        contents: t.bundle.clone(),
        mode: 0o644,
    });
    ops.push(RootOp::File {
        path: crate::secrets::CA_FILE.into(),
        contents: t.ca_pem.clone(),
        mode: 0o644,
    });
}

fn passwd(uid: u32, gid: u32, user: &UserName) -> String {
    let (name, home) = (user.as_str(), user.home());
    format!(
        "root:x:0:0:root:/root:/bin/sh\n{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        home = home.display()
    )
}

fn group(gid: u32, user: &UserName) -> String {
    format!(
        "root:x:0:\n{name}:x:{gid}:\nnogroup:x:65534:\n",
        name = user.as_str()
    )
}

/// The environment of every process inside: a fixed PATH and HOME, the default pass-through
/// names, the policy's `env_pass`, then its `env` (later wins).
pub fn environment(policy: &Policy, host_env: &[(String, String)]) -> Vec<(String, String)> {
    environment_of(policy, host_env, &UserName::default())
}

/// [`environment`] for login name `user` (HOME and USER follow it).
pub fn environment_of(
    policy: &Policy,
    host_env: &[(String, String)],
    user: &UserName,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), user.home().display().to_string()),
        ("USER".into(), user.as_str().into()),
    ];
    let mut set = |k: &str, v: &str| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    };
    let host = |k: &str| {
        host_env
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
    };
    for k in PASSED_BY_DEFAULT
        .iter()
        .copied()
        .chain(policy.process.env_pass.iter().map(String::as_str))
    {
        if let Some(v) = host(k) {
            set(k, &v);
        }
    }
    if host("LANG").is_none() {
        set("LANG", "C.UTF-8");
    }
    for (k, v) in &policy.process.env {
        set(k, v);
    }
    env
}

/// Builds the launch plan for the default login name. The policy must already be validated.
/// The host's [`SYSTEM_DIRS`] as [`HostFacts::system_links`] wants them: each real directory
/// (None), each symlink with its target; missing ones (and unreadable links) left out.
pub fn system_links() -> Vec<(PathBuf, Option<PathBuf>)> {
    SYSTEM_DIRS
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
        .collect()
}

pub fn build(policy: &Policy, argv: &[String], host: &HostFacts, extras: Extras) -> SandboxPlan {
    build_as(policy, argv, host, extras, &UserName::default())
}

/// Builds the launch plan with login name `user` inside: /etc/passwd and /etc/group name it,
/// HOME (a private tmpfs at `/home/<user>`: `plan.home`, Landlock read-write) and USER follow
/// it. The policy must already be validated.
pub fn build_as(
    policy: &Policy,
    argv: &[String],
    host: &HostFacts,
    extras: Extras,
    user: &UserName,
) -> SandboxPlan {
    let p = &policy.process;
    let rootfs = policy.filesystem.rootfs.clone();
    let home = user.home();
    let root = host.euid == 0;
    let host_uid = HOST_UID_BASE + host.nonce % HOST_UID_SPAN;
    let (uid_map, gid_map, idmap_host_uid) = if root {
        (
            vec![
                IdMap {
                    inside: 0,
                    outside: 0,
                    count: 1,
                },
                IdMap {
                    inside: p.uid,
                    outside: host_uid,
                    count: 1,
                },
            ],
            vec![
                IdMap {
                    inside: 0,
                    outside: 0,
                    count: 1,
                },
                IdMap {
                    inside: p.gid,
                    outside: host_uid,
                    count: 1,
                },
            ],
            Some(host_uid),
        )
    } else {
        (
            vec![IdMap {
                inside: p.uid,
                outside: host.euid,
                count: 1,
            }],
            vec![IdMap {
                inside: p.gid,
                outside: host.egid,
                count: 1,
            }],
            None,
        )
    };

    let mut ops = Vec::new();
    let mut read_exec = Vec::new();
    // A root filesystem brings its own system directories and /etc: none of the host's.
    let host_system: &[(PathBuf, Option<PathBuf>)] = if rootfs.is_some() {
        &[]
    } else {
        &host.system_links
    };
    for (dir, link) in host_system {
        match link {
            Some(t) => ops.push(RootOp::Symlink {
                path: dir.clone(),
                target: t.clone(),
            }),
            None => {
                ops.push(RootOp::Bind(Bind {
                    source: dir.clone(),
                    target: dir.clone(),
                    writable: false,
                    optional: true,
                    idmap: false,
                    device: false,
                }));
                read_exec.push(dir.clone());
            }
        }
    }
    ops.push(RootOp::Dir {
        path: "/etc".into(),
        mode: 0o755,
    });
    let (etc_files, etc_dirs): (&[&str], &[&str]) = if rootfs.is_some() {
        (&[], &[])
    } else {
        (ETC_FILES, ETC_DIRS)
    };
    for f in etc_files
        .iter()
        .copied()
        .chain(policy.filesystem.etc_extra.iter().map(String::as_str))
    {
        ops.push(RootOp::CopyFile {
            source: Path::new("/etc").join(f),
            path: Path::new("/etc").join(f),
        });
    }
    for d in etc_dirs {
        let path = format!("/etc/{d}");
        match (&extras.trust, *d) {
            (Some(t), "ssl/certs") => trust_ops(t, &mut ops),
            _ => ops.push(bind(&path, &path, false, true)),
        }
    }
    if let (Some(t), Some(_)) = (&extras.trust, &rootfs) {
        // The root filesystem's /etc/ssl/certs stays; its own bundle file gets the sandbox CA
        // appended (what SSL_CERT_FILE and friends name), with the CA alone beside it.
        ops.push(RootOp::Dir {
            path: "/etc/ssl/certs".into(),
            mode: 0o755,
        });
        ops.push(RootOp::Append {
            path: crate::secrets::BUNDLE.into(),
            contents: format!("{}{}", crate::secrets::CA_MARKER, t.ca_pem),
            mode: 0o644,
        });
        ops.push(RootOp::File {
            path: crate::secrets::CA_FILE.into(),
            contents: t.ca_pem.clone(),
            mode: 0o644,
        });
    }
    ops.push(RootOp::File {
        path: "/etc/passwd".into(),
        contents: passwd(p.uid, p.gid, user),
        mode: 0o644,
    });
    ops.push(RootOp::File {
        path: "/etc/group".into(),
        contents: group(p.gid, user),
        mode: 0o644,
    });
    ops.push(RootOp::File {
        path: "/etc/hostname".into(),
        contents: format!("{}\n", p.hostname),
        mode: 0o644,
    });
    ops.push(RootOp::File {
        path: "/etc/hosts".into(),
        contents: format!(
            "127.0.0.1 localhost {h}\n::1 localhost ip6-localhost {h}\n",
            h = p.hostname
        ),
        mode: 0o644,
    });
    let egress = matches!(
        policy.network.mode,
        stockade_policy::NetworkMode::Allowlist | stockade_policy::NetworkMode::Open
    );
    ops.push(RootOp::File {
        path: "/etc/resolv.conf".into(),
        contents: if egress {
            "# stockade: names resolve through the egress gateway (allowlist)\nnameserver 127.0.0.53\n".into()
        } else {
            "# stockade: no network (loopback only)\n".into()
        },
        mode: 0o644,
    });
    ops.push(RootOp::Dir {
        path: "/var".into(),
        mode: 0o755,
    });
    if rootfs.is_none() {
        // A root filesystem keeps its own /var/tmp (read-only, like the rest of its tree).
        ops.push(RootOp::Symlink {
            path: "/var/tmp".into(),
            target: "/tmp".into(),
        });
    }
    ops.push(RootOp::Dir {
        path: "/run".into(),
        mode: 0o755,
    });
    if rootfs.is_some() {
        // Read and execute on the whole view: the root filesystem's programs may live anywhere
        // in it (/opt, /app, ...). Writes stay limited to the paths listed below.
        read_exec.push("/".into());
    } else {
        read_exec.push("/etc".into());
    }

    let mut read_write = vec![
        PathBuf::from("/tmp"),
        home.clone(),
        PathBuf::from("/dev/shm"),
    ];
    for m in &policy.filesystem.mounts {
        let writable = m.mode == MountMode::Rw;
        ops.push(RootOp::Bind(Bind {
            source: m.host.clone(),
            target: m.target().to_path_buf(),
            writable,
            optional: false,
            idmap: root && writable,
            device: false,
        }));
        if writable {
            read_write.push(m.target().to_path_buf())
        } else {
            read_exec.push(m.target().to_path_buf())
        }
    }

    let ws = &host.workspace;
    let kind = match policy.workspace.mode {
        WorkspaceMode::Rw => WorkspaceKind::Rw,
        WorkspaceMode::Ro => WorkspaceKind::Ro,
        WorkspaceMode::Overlay => WorkspaceKind::Overlay,
        WorkspaceMode::Tmp => WorkspaceKind::Tmp,
    };
    if kind == WorkspaceKind::Ro {
        read_exec.push(ws.clone())
    } else {
        read_write.push(ws.clone())
    }
    // Everything git reads settings or commands from, at the workspace's top: the hooks, the
    // config files, `commondir` (which would move both elsewhere), `info`, and `.git` itself when
    // it is a `gitdir:` file. `.git` the directory is pinned so none of it can be renamed away.
    let (pin, protect) = if policy.workspace.protect_git {
        (
            vec![PathBuf::from(".git")],
            GIT_PROTECTED.iter().map(PathBuf::from).collect(),
        )
    } else {
        (vec![], vec![])
    };

    let landlock = LandlockPlan {
        enabled: policy.security.landlock,
        required: policy.security.landlock,
        read_exec,
        read_write,
        devices: [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty",
            "/dev/pts",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
        read_write_files: vec![PathBuf::from("/proc")],
        list_only: vec![
            PathBuf::from("/"),
            PathBuf::from("/dev"),
            PathBuf::from("/home"),
            PathBuf::from("/var"),
        ],
    };
    let l = &policy.limits;
    SandboxPlan {
        id: extras.id,
        uid_map,
        gid_map,
        idmap_host_uid,
        uid: p.uid,
        gid: p.gid,
        hostname: p.hostname.clone(),
        scratch_bytes: l.disk.0,
        home,
        rootfs,
        root_ops: ops,
        workspace: WorkspacePlan {
            host: ws.clone(),
            target: ws.clone(),
            kind,
            pin,
            protect,
            idmap: root
                && matches!(
                    kind,
                    WorkspaceKind::Rw | WorkspaceKind::Ro | WorkspaceKind::Overlay
                ),
        },
        cwd: ws.clone(),
        argv: argv.to_vec(),
        env: {
            let mut env = environment_of(policy, &host.env, user);
            for (k, v) in &extras.env {
                env.retain(|(ek, _)| ek != k);
                env.push((k.clone(), v.clone()));
            }
            if egress {
                // For tools that prefer a proxy; enforcement never depends on them.
                let proxy = format!("http://{}", stockade_agent::net::PROXY_ADDR);
                for k in [
                    "HTTP_PROXY",
                    "HTTPS_PROXY",
                    "ALL_PROXY",
                    "http_proxy",
                    "https_proxy",
                    "all_proxy",
                ] {
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.to_string(), proxy.clone()));
                }
                for k in ["NO_PROXY", "no_proxy"] {
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
                }
            }
            env
        },
        // No RLIMIT_FSIZE: one file may use the whole budget, and reaching the budget must end in
        // ENOSPC (tmpfs) or the watcher's named stop, never a silent SIGXFSZ.
        rlimits: vec![Rlimit::NoFile(l.open_files), Rlimit::Core(0)],
        cgroup_procs: extras.cgroup_procs,
        cgroup_dirs: extras.cgroup_dirs,
        landlock,
        seccomp: extras.seccomp,
        egress,
        session: false,
        backend: None,
        vm_guest: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(euid: u32) -> HostFacts {
        HostFacts {
            euid,
            egid: euid,
            env: vec![
                ("TERM".into(), "xterm".into()),
                ("SECRET".into(), "canary".into()),
                ("PATH".into(), "/root/.pyenv/shims:/usr/bin".into()),
            ],
            system_links: vec![
                ("/usr".into(), None),
                ("/bin".into(), Some("usr/bin".into())),
            ],
            workspace: "/work/proj".into(),
            nonce: 7,
        }
    }

    #[test]
    fn environment_is_curated() {
        let mut p = Policy::default();
        let env = environment(&p, &facts(0).env);
        assert!(
            env.iter().all(|(k, _)| k != "SECRET"),
            "host variables must not leak: {env:?}"
        );
        assert!(env.contains(&("PATH".into(), SANDBOX_PATH.into())));
        assert!(env.contains(&("TERM".into(), "xterm".into())));
        assert!(env.contains(&("HOME".into(), SANDBOX_HOME.into())));
        p.process.env_pass.push("SECRET".into());
        p.process.env.insert("TERM".into(), "dumb".into());
        let env = environment(&p, &facts(0).env);
        assert!(env.contains(&("SECRET".into(), "canary".into())));
        assert!(env.contains(&("TERM".into(), "dumb".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "TERM").count(), 1);
    }

    #[test]
    fn root_maps_to_an_unprivileged_host_uid_and_idmaps_the_workspace() {
        let plan = build(
            &Policy::default(),
            &["true".into()],
            &facts(0),
            Extras::default(),
        );
        assert_eq!(
            plan.uid_map[1],
            IdMap {
                inside: 1000,
                outside: HOST_UID_BASE + 7,
                count: 1
            }
        );
        assert_eq!(plan.idmap_host_uid, Some(HOST_UID_BASE + 7));
        assert!(plan.workspace.idmap);
        let user = build(
            &Policy::default(),
            &["true".into()],
            &facts(1234),
            Extras::default(),
        );
        assert_eq!(
            user.uid_map,
            vec![IdMap {
                inside: 1000,
                outside: 1234,
                count: 1
            }]
        );
        assert!(!user.workspace.idmap && user.idmap_host_uid.is_none());
    }

    #[test]
    fn no_secret_etc_entries_and_system_dirs_read_only() {
        let plan = build(
            &Policy::default(),
            &["true".into()],
            &facts(0),
            Extras::default(),
        );
        for op in &plan.root_ops {
            let path = match op {
                RootOp::Bind(b) => {
                    assert!(!b.writable, "system binds are read-only: {b:?}");
                    b.target.clone()
                }
                RootOp::CopyFile { path, .. } | RootOp::File { path, .. } => path.clone(),
                _ => continue,
            };
            let s = path.to_string_lossy();
            for bad in [
                "shadow",
                "gshadow",
                "sudoers",
                "ssh",
                "ssl/private",
                "machine-id",
            ] {
                assert!(!s.contains(bad), "{s} must not be exposed");
            }
        }
        assert!(plan.root_ops.contains(&RootOp::Symlink {
            path: "/bin".into(),
            target: "usr/bin".into()
        }));
        assert!(
            plan.workspace
                .protect
                .contains(&PathBuf::from(".git/hooks"))
        );
        assert_eq!(plan.cwd, PathBuf::from("/work/proj"));
    }

    fn file_op<'a>(plan: &'a SandboxPlan, path: &str) -> Option<&'a str> {
        plan.root_ops.iter().find_map(|op| match op {
            RootOp::File {
                path: p, contents, ..
            } if p == Path::new(path) => Some(contents.as_str()),
            _ => None,
        })
    }

    fn rootfs_policy() -> Policy {
        let mut p = Policy::default();
        p.filesystem.rootfs = Some("/srv/rootfs/debian".into());
        p
    }

    #[test]
    fn default_root_has_no_rootfs_and_binds_the_host_system_dirs() {
        let plan = build(
            &Policy::default(),
            &["true".into()],
            &facts(0),
            Extras::default(),
        );
        assert_eq!(plan.rootfs, None);
        assert!(plan.root_ops.iter().any(
            |op| matches!(op, RootOp::Bind(b) if b.source == Path::new("/usr") && !b.writable)
        ));
        assert!(plan.root_ops.contains(&RootOp::Symlink {
            path: "/var/tmp".into(),
            target: "/tmp".into()
        }));
        assert!(plan.landlock.read_exec.contains(&PathBuf::from("/usr")));
        assert!(!plan.landlock.read_exec.contains(&PathBuf::from("/")));
    }

    #[test]
    fn rootfs_replaces_the_host_system_dirs_and_etc() {
        let mut policy = rootfs_policy();
        policy.filesystem.etc_extra.push("gitconfig".into());
        policy.filesystem.mounts.push(stockade_policy::Mount {
            host: "/opt/data".into(),
            path: Some("/data".into()),
            mode: MountMode::Ro,
        });
        let plan = build(&policy, &["true".into()], &facts(0), Extras::default());
        assert_eq!(plan.rootfs, Some(PathBuf::from("/srv/rootfs/debian")));
        // Nothing of the host's system: no /usr bind, no /bin link, no curated /etc copies or
        // binds; only the explicit etc_extra entry and the policy's mount come from the host.
        let from_host: Vec<&Path> = plan
            .root_ops
            .iter()
            .filter_map(|op| match op {
                RootOp::Bind(b) => Some(b.source.as_path()),
                RootOp::CopyFile { source, .. } => Some(source.as_path()),
                _ => None,
            })
            .collect();
        assert_eq!(
            from_host,
            [Path::new("/etc/gitconfig"), Path::new("/opt/data")]
        );
        assert!(
            !plan
                .root_ops
                .iter()
                .any(|op| matches!(op, RootOp::Symlink { .. })),
            "a root filesystem keeps its own links (/bin, /var/tmp): {:?}",
            plan.root_ops
        );
        // Stockade's own identity and network files replace the root filesystem's.
        assert!(
            file_op(&plan, "/etc/passwd")
                .unwrap()
                .contains("sandbox:x:1000:1000:")
        );
        assert!(
            file_op(&plan, "/etc/group")
                .unwrap()
                .contains("sandbox:x:1000:")
        );
        assert_eq!(file_op(&plan, "/etc/hostname"), Some("stockade\n"));
        assert!(
            file_op(&plan, "/etc/hosts")
                .unwrap()
                .contains("127.0.0.1 localhost")
        );
        assert!(file_op(&plan, "/etc/resolv.conf").is_some());
        // Landlock: read and execute on the whole view, writes only where they were before.
        assert_eq!(
            plan.landlock.read_exec,
            [PathBuf::from("/"), PathBuf::from("/data")]
        );
        assert_eq!(
            plan.landlock.read_write,
            ["/tmp", SANDBOX_HOME, "/dev/shm", "/work/proj"]
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        assert_eq!(plan.home, PathBuf::from(SANDBOX_HOME));
    }

    #[test]
    fn rootfs_with_secrets_rewrites_only_the_bundle() {
        let trust = crate::secrets::Trust {
            entries: vec![("abc.pem".into(), crate::secrets::Entry::File)],
            bundle: "HOST ROOTS\nSANDBOX CA\n".into(),
            ca_pem: "SANDBOX CA\n".into(),
        };
        let extras = Extras {
            trust: Some(trust),
            ..Extras::default()
        };
        let plan = build(&rootfs_policy(), &["true".into()], &facts(0), extras);
        assert!(plan.root_ops.contains(&RootOp::Append {
            path: crate::secrets::BUNDLE.into(),
            contents: format!("{}SANDBOX CA\n", crate::secrets::CA_MARKER),
            mode: 0o644,
        }));
        assert_eq!(
            file_op(&plan, crate::secrets::BUNDLE),
            None,
            "the host's bundle is not used"
        );
        assert_eq!(
            file_op(&plan, crate::secrets::CA_FILE),
            Some("SANDBOX CA\n")
        );
        // The host's /etc/ssl/certs entries are not copied into the root filesystem.
        assert!(!plan.root_ops.iter().any(|op| matches!(
            op,
            RootOp::CopyFile { path, .. } if path.starts_with("/etc/ssl")
        )));
    }

    #[test]
    fn user_name_sets_passwd_group_home_env_and_landlock() {
        let user = UserName::parse("user").unwrap();
        let plan = build_as(&Policy::default(), &[], &facts(0), Extras::default(), &user);
        assert_eq!(plan.home, PathBuf::from("/home/user"));
        let passwd = file_op(&plan, "/etc/passwd").unwrap();
        assert!(
            passwd.contains("\nuser:x:1000:1000:user:/home/user:/bin/sh\n"),
            "{passwd}"
        );
        assert!(!passwd.contains("sandbox"), "{passwd}");
        let group = file_op(&plan, "/etc/group").unwrap();
        assert!(group.contains("\nuser:x:1000:\n") && !group.contains("sandbox"));
        assert!(plan.env.contains(&("HOME".into(), "/home/user".into())));
        assert!(plan.env.contains(&("USER".into(), "user".into())));
        assert!(
            plan.landlock
                .read_write
                .contains(&PathBuf::from("/home/user"))
        );
        assert!(
            !plan
                .landlock
                .read_write
                .contains(&PathBuf::from(SANDBOX_HOME))
        );
        // The policy's own env still wins over the defaults.
        let mut p = Policy::default();
        p.process.env.insert("HOME".into(), "/elsewhere".into());
        let plan = build_as(&p, &[], &facts(0), Extras::default(), &user);
        assert_eq!(
            plan.env
                .iter()
                .filter(|(k, _)| k == "HOME")
                .collect::<Vec<_>>(),
            [&("HOME".to_string(), "/elsewhere".to_string())]
        );
        // The default is what `build` uses.
        let d = build(&Policy::default(), &[], &facts(0), Extras::default());
        assert_eq!(d.home, UserName::default().home());
        assert_eq!(UserName::default().as_str(), SANDBOX_USER);
    }

    #[test]
    fn user_names_are_checked() {
        let long = "a".repeat(32);
        for good in ["user", "_x", "a-b_1", "u0", long.as_str()] {
            assert_eq!(UserName::parse(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(33);
        for bad in [
            "",
            "User",
            "1abc",
            "-a",
            "a b",
            "a/b",
            "../etc",
            "a:b",
            "a\nroot",
            "é",
            too_long.as_str(),
        ] {
            let e = UserName::parse(bad).unwrap_err().to_string();
            assert!(e.contains("is not valid"), "{bad:?}: {e}");
        }
        for reserved in ["root", "nobody", "nogroup"] {
            let e = UserName::parse(reserved).unwrap_err().to_string();
            assert!(e.contains("reserved"), "{reserved}: {e}");
        }
    }
}
