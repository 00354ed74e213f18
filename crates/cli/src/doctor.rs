//! `stockade doctor [--json]`: what this host supports, probed by trying rather than guessing,
//! and which isolation levels follow, each with its reason.

use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use stockade_jail::cgroup::{self, Layout};

#[derive(Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct LevelReport {
    level: &'static str,
    available: bool,
    reason: String,
}

#[derive(Serialize)]
struct Report {
    checks: Vec<Check>,
    levels: Vec<LevelReport>,
}

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Creates a user namespace in a child (the way the launcher will), returning the OS error if refused.
fn try_userns() -> Result<(), String> {
    let mut cmd = Command::new("/bin/true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: pre_exec runs in the forked child before exec and only calls unshare(2), which is
    // async-signal-safe and takes an integer.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(
                libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("probe exited with {s}")),
        Err(e) => Err(e.to_string()),
    }
}

fn userns_check() -> Check {
    let mut notes = Vec::new();
    if let Some(v) = read("/proc/sys/user/max_user_namespaces") {
        notes.push(format!("max_user_namespaces={v}"));
    }
    if let Some(v) = read("/proc/sys/kernel/unprivileged_userns_clone") {
        notes.push(format!("unprivileged_userns_clone={v}"));
    }
    if let Some(v) = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        notes.push(format!(
            "apparmor_restrict_unprivileged_userns={v}{}",
            if v == "1" {
                " (Ubuntu's AppArmor rule: unprivileged users need a profile allowing userns)"
            } else {
                ""
            }
        ));
    }
    match try_userns() {
        Ok(()) => Check {
            name: "user namespaces",
            ok: true,
            detail: format!("created one; {}", notes.join(", ")),
        },
        Err(e) => Check {
            name: "user namespaces",
            ok: false,
            detail: format!("refused: {e}; {}", notes.join(", ")),
        },
    }
}

fn seccomp_check() -> Check {
    let status = read("/proc/self/status").unwrap_or_default();
    let has = status.lines().any(|l| l.starts_with("Seccomp:"));
    let actions = read("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let compiled = stockade_jail::seccomp::SeccompProgram::compile_default();
    match (has, compiled) {
        (true, Ok(p)) => Check {
            name: "seccomp",
            ok: true,
            detail: format!("{}; kernel actions: {actions}", p.describe()),
        },
        (false, _) => Check {
            name: "seccomp",
            ok: false,
            detail: "kernel has no seccomp filter support".into(),
        },
        (_, Err(e)) => Check {
            name: "seccomp",
            ok: false,
            detail: e.to_string(),
        },
    }
}

fn landlock_check() -> Check {
    let abi = stockade_jail::confine::landlock_abi();
    Check {
        name: "landlock",
        ok: abi > 0,
        detail: if abi > 0 {
            format!(
                "ABI {abi} (stockade asks for up to 6; scoping of signals and abstract sockets needs 6)"
            )
        } else {
            "not available (kernel without CONFIG_SECURITY_LANDLOCK or not in lsm=)".into()
        },
    }
}

fn cgroup_checks() -> (Vec<Check>, bool) {
    match Layout::discover() {
        Err(e) => (
            vec![Check {
                name: "cgroups",
                ok: false,
                detail: e.to_string(),
            }],
            false,
        ),
        Ok(layout) => {
            let mut all = true;
            let mut out = vec![Check {
                name: "cgroups",
                ok: true,
                detail: layout.summary(),
            }];
            for r in cgroup::probe(&layout) {
                all &= r.writable;
                out.push(Check {
                    name: match r.controller {
                        cgroup::Controller::Memory => "cgroup memory",
                        cgroup::Controller::Cpu => "cgroup cpu",
                        cgroup::Controller::Pids => "cgroup pids",
                    },
                    ok: r.writable,
                    detail: format!(
                        "{} at {}{}",
                        r.version
                            .map_or("absent".to_string(), |v| format!("{v:?}").to_lowercase()),
                        r.path
                            .as_ref()
                            .map_or("-".to_string(), |p| p.display().to_string()),
                        r.reason
                            .as_ref()
                            .map_or(String::new(), |w| format!(": {w}"))
                    ),
                });
            }
            (out, all)
        }
    }
}

fn fs_type_and_opts(path: &Path) -> Option<(String, String)> {
    let mountinfo = read("/proc/self/mountinfo")?;
    let mut best: Option<(usize, String, String)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(mp), Some(fstype), Some(sopts)) = (f.get(4), f.get(sep + 1), f.get(sep + 3))
        else {
            continue;
        };
        if path.starts_with(mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0) {
            best = Some((
                mp.len(),
                fstype.to_string(),
                format!("{},{}", f.get(5).unwrap_or(&""), sopts),
            ));
        }
    }
    best.map(|(_, t, o)| (t, o))
}

fn misc_checks() -> Vec<Check> {
    let mut out = Vec::new();
    let filesystems = read("/proc/filesystems").unwrap_or_default();
    let overlay = filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"));
    out.push(Check {
        name: "overlayfs",
        ok: overlay,
        detail: if overlay {
            "available (workspace-mode overlay)".into()
        } else {
            "not in /proc/filesystems".into()
        },
    });
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let (fstype, opts) = fs_type_and_opts(&cwd).unwrap_or_default();
    let quota = opts.contains("prjquota") || opts.contains("pquota");
    out.push(Check {
        name: "disk budget",
        ok: true,
        detail: if quota {
            format!("{fstype} with project quota at {}: not used yet, watched budget instead", cwd.display())
        } else {
            format!(
                "tmpfs size caps for /tmp, HOME, /dev/shm, overlay layer; rw workspace growth: watched budget \
                 ({fstype} at {} has no project quota)",
                cwd.display()
            )
        },
    });
    let config = Command::new("zcat")
        .arg("/proc/config.gz")
        .stderr(Stdio::null())
        .output()
        .ok();
    let nft = Path::new("/sys/module/nf_tables").exists()
        || config.is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "CONFIG_NF_TABLES=y" || l == "CONFIG_NF_TABLES=m")
        });
    out.push(Check {
        name: "nftables",
        ok: nft,
        detail: if nft {
            "nf_tables present".into()
        } else {
            "nf_tables not seen (not needed: loopback-only network)".into()
        },
    });
    let runsc = which("runsc");
    out.push(Check {
        name: "runsc",
        ok: runsc.is_some(),
        detail: runsc.map_or("not installed (apt-get install runsc)".into(), |p| {
            p.display().to_string()
        }),
    });
    out.push(kvm_check());
    let vsock = Path::new("/dev/vhost-vsock").exists();
    out.push(Check {
        name: "vhost-vsock",
        ok: vsock,
        detail: if vsock {
            "/dev/vhost-vsock present".into()
        } else {
            "absent (a microVM would use virtio-serial)".into()
        },
    });
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let kmsg = std::fs::File::open("/dev/kmsg").is_ok();
    let netlink = audit_netlink_readable();
    let auditd = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "auditd")
        });
    out.push(Check {
        name: "violations",
        ok: root && (netlink || (kmsg && !auditd)),
        detail: match (root, netlink, kmsg, auditd) {
            (false, ..) => "violation events need stockade to run as root (per-sandbox host uid, kernel audit records)".into(),
            (true, true, ..) => "seccomp and Landlock denials read from the kernel's audit records (netlink multicast group: every record, not rate-limited)".into(),
            (true, false, true, false) => "seccomp and Landlock denials read from /dev/kmsg: the kernel rate-limits these records (about 10 per 5 s), so some can be missed".into(),
            (true, false, _, true) => "auditd is running and the audit netlink group cannot be joined: no violation events (read them from auditd's log)".into(),
            (true, false, false, false) => "neither the audit netlink group nor /dev/kmsg is readable: no violation events".into(),
        },
    });
    out.push(Check {
        name: "fanotify",
        ok: root,
        detail: if root {
            "available to root: file.read events for audit.sensitive paths".into()
        } else {
            "needs root (CAP_SYS_ADMIN): file.read events for audit.sensitive paths are unavailable"
                .into()
        },
    });
    out.push(Check {
        name: "identity",
        ok: true,
        detail: if root {
            "root: sandboxes run as an unused host uid (0x70000000+), writable host paths are idmapped".into()
        } else {
            "ordinary user: sandbox uid maps to your uid".into()
        },
    });
    out
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn kvm_check() -> Check {
    use std::os::fd::AsRawFd;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Err(e) => Check {
            name: "kvm",
            ok: false,
            detail: format!("/dev/kvm: {e}"),
        },
        Ok(f) => {
            const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
            // SAFETY: KVM_GET_API_VERSION takes no argument; `f` is an open /dev/kvm descriptor.
            let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
            Check {
                name: "kvm",
                ok: v >= 0,
                detail: format!(
                    "/dev/kvm opens, API version {v}; whether a normal guest boots is checked by the microvm level (not built yet)"
                ),
            }
        }
    }
}

pub fn run(json: bool) -> ExitCode {
    let mut checks = vec![userns_check(), seccomp_check(), landlock_check()];
    let (cg, cg_ok) = cgroup_checks();
    checks.extend(cg);
    checks.extend(misc_checks());
    let ok = |n: &str| checks.iter().any(|c| c.name == n && c.ok);
    let userns = ok("user namespaces");
    let container_ok = userns && ok("seccomp") && ok("landlock") && cg_ok;
    let mut missing = Vec::new();
    for (n, present) in [
        ("user namespaces", userns),
        ("seccomp", ok("seccomp")),
        ("landlock", ok("landlock")),
        ("writable cgroups", cg_ok),
    ] {
        if !present {
            missing.push(n);
        }
    }
    let levels = vec![
        LevelReport {
            level: "container",
            available: container_ok,
            reason: if container_ok {
                "namespaces, seccomp, Landlock and cgroup limits all available".into()
            } else if userns {
                format!(
                    "missing: {} (runs only with --allow-weaker-isolation)",
                    missing.join(", ")
                )
            } else {
                "user namespaces are refused on this host".into()
            },
        },
        LevelReport {
            level: "gvisor",
            available: false,
            reason: format!(
                "not implemented in this version{}",
                if ok("runsc") {
                    " (runsc is installed)"
                } else {
                    "; runsc not installed"
                }
            ),
        },
        LevelReport {
            level: "microvm",
            available: false,
            reason: "not implemented in this version".into(),
        },
    ];
    let report = Report { checks, levels };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("stockade: {e}");
                return ExitCode::from(125);
            }
        }
    } else {
        for c in &report.checks {
            println!(
                "{:<4} {:<16} {}",
                if c.ok { "ok" } else { "no" },
                c.name,
                c.detail
            );
        }
        println!();
        for l in &report.levels {
            println!(
                "level {:<10} {:<13} {}",
                l.level,
                if l.available {
                    "available"
                } else {
                    "unavailable"
                },
                l.reason
            );
        }
    }
    ExitCode::SUCCESS
}

/// Whether this process may join the kernel's audit netlink multicast group (CAP_AUDIT_READ):
/// the same socket the violation watcher opens.
fn audit_netlink_readable() -> bool {
    stockade_runtime::kmsg::open_netlink().is_some()
}
