//! Policy → launch plan, the pure half of starting a container-level sandbox.
//!
//! [`HostFacts`] is everything read from the host (ids, environment, which system dirs are
//! symlinks); [`build`] turns a validated policy and those facts into a [`SandboxPlan`] without
//! touching the system, so every decision here is unit-tested without root.

use std::path::{Path, PathBuf};
use stockade_jail::plan::{
    Bind, IdMap, LandlockPlan, Rlimit, RootOp, SandboxPlan, WorkspaceKind, WorkspacePlan,
};
use stockade_policy::{MountMode, Policy, WorkspaceMode};

/// The PATH every sandbox starts with (the host's PATH names host directories that may not exist inside).
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// HOME inside: a private tmpfs directory.
pub const SANDBOX_HOME: &str = "/home/sandbox";
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

fn passwd(uid: u32, gid: u32) -> String {
    format!(
        "root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{gid}:sandbox:{SANDBOX_HOME}:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
}

fn group(gid: u32) -> String {
    format!("root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n")
}

/// The environment of every process inside: a fixed PATH and HOME, the default pass-through
/// names, the policy's `env_pass`, then its `env` (later wins).
pub fn environment(policy: &Policy, host_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), SANDBOX_HOME.into()),
        ("USER".into(), "sandbox".into()),
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

/// Builds the launch plan. The policy must already be validated.
pub fn build(policy: &Policy, argv: &[String], host: &HostFacts, extras: Extras) -> SandboxPlan {
    let p = &policy.process;
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
    for (dir, link) in &host.system_links {
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
    for f in ETC_FILES
        .iter()
        .copied()
        .chain(policy.filesystem.etc_extra.iter().map(String::as_str))
    {
        ops.push(RootOp::CopyFile {
            source: Path::new("/etc").join(f),
            path: Path::new("/etc").join(f),
        });
    }
    for d in ETC_DIRS {
        let path = format!("/etc/{d}");
        match (&extras.trust, *d) {
            (Some(t), "ssl/certs") => trust_ops(t, &mut ops),
            _ => ops.push(bind(&path, &path, false, true)),
        }
    }
    ops.push(RootOp::File {
        path: "/etc/passwd".into(),
        contents: passwd(p.uid, p.gid),
        mode: 0o644,
    });
    ops.push(RootOp::File {
        path: "/etc/group".into(),
        contents: group(p.gid),
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
    ops.push(RootOp::Symlink {
        path: "/var/tmp".into(),
        target: "/tmp".into(),
    });
    ops.push(RootOp::Dir {
        path: "/run".into(),
        mode: 0o755,
    });
    read_exec.push("/etc".into());

    let mut read_write = vec![
        PathBuf::from("/tmp"),
        PathBuf::from(SANDBOX_HOME),
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
        home: PathBuf::from(SANDBOX_HOME),
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
            let mut env = environment(policy, &host.env);
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
}
