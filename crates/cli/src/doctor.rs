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
    /// What was tried for this level (gvisor: runsc, each platform; microvm: QEMU, KVM, TCG,
    /// the guest assets).
    details: Vec<Check>,
}

/// Whether this host can serve a trust level, at which level, and with what settings.
#[derive(Debug, PartialEq, Serialize)]
struct TrustReport {
    trust: &'static str,
    servable: bool,
    /// The level it runs at (`container`, `gvisor (ptrace)`, `microvm (tcg)`), when servable.
    level: Option<String>,
    /// Policy settings it needs here (empty: none).
    settings: Vec<&'static str>,
    /// Why (the resolver's reason or refusal).
    reason: String,
    /// When settings are needed: the resolver's refusal without them.
    #[serde(skip_serializing_if = "Option::is_none")]
    without_settings: Option<String>,
}

#[derive(Serialize)]
struct Report {
    checks: Vec<Check>,
    levels: Vec<LevelReport>,
    trust: Vec<TrustReport>,
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

fn dev_kvm_check() -> Check {
    use std::os::fd::AsRawFd;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Err(e) => Check {
            name: "/dev/kvm",
            ok: false,
            detail: e.to_string(),
        },
        Ok(f) => {
            const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
            // SAFETY: KVM_GET_API_VERSION takes no argument; `f` is an open /dev/kvm descriptor.
            let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
            Check {
                name: "/dev/kvm",
                ok: v >= 0,
                detail: format!(
                    "opens, API version {v} (whether a guest kernel runs is the kvm line: tried)"
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
    let host = stockade_runtime::levels::probe();
    let levels = vec![
        LevelReport {
            level: "container",
            details: Vec::new(),
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
        gvisor_report(&host.gvisor),
        microvm_report(&host),
    ];
    let container = if container_ok {
        Ok(())
    } else {
        Err(levels[0].reason.clone())
    };
    let trust = trust_reports(&host, &container);
    let report = Report {
        checks,
        levels,
        trust,
    };
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
            for d in &l.details {
                println!(
                    "      {:<4} {:<16} {}",
                    if d.ok { "ok" } else { "no" },
                    d.name,
                    d.detail
                );
            }
        }
        println!();
        for t in &report.trust {
            let what = match (&t.level, t.settings.is_empty()) {
                (Some(l), true) => l.clone(),
                (Some(l), false) => format!("{l} with {}", t.settings.join(" and ")),
                (None, _) => "refused".into(),
            };
            if t.servable {
                println!("trust {:<10} ok   {what}", t.trust);
            } else {
                println!("trust {:<10} no   {what}: {}", t.trust, t.reason);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Whether this process may join the kernel's audit netlink multicast group (CAP_AUDIT_READ):
/// the same socket the violation watcher opens.
fn audit_netlink_readable() -> bool {
    stockade_runtime::kmsg::open_netlink().is_some()
}

/// The first line a tool prints for `--version`.
fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "version unknown".into())
}

fn gvisor_report(probed: &Result<String, String>) -> LevelReport {
    let mut details = Vec::new();
    match stockade_runtime::gvisor::runsc_binary() {
        Ok(runsc) => {
            details.push(Check {
                name: "runsc",
                ok: true,
                detail: format!("{} ({})", runsc.display(), version_of(&runsc)),
            });
            details.extend(gvisor_platforms(&runsc));
        }
        Err(e) => details.push(Check {
            name: "runsc",
            ok: false,
            detail: e,
        }),
    }
    LevelReport {
        level: "gvisor",
        available: probed.is_ok(),
        reason: match probed {
            Ok(p) => format!("runsc works here with platform {p}"),
            Err(e) => e.clone(),
        },
        details,
    }
}

/// Each runsc platform, tried by the gvisor level's own probe (a throwaway container running
/// the host's `/bin/true` on a read-only `/`), so the report says why the others do not work.
/// Needs root, like the gvisor level.
fn gvisor_platforms(runsc: &Path) -> Vec<Check> {
    match stockade_runtime::gvisor::try_each(runsc) {
        Err(e) => vec![Check {
            name: "platforms",
            ok: false,
            detail: format!("not tried: {e}"),
        }],
        Ok(tried) => tried
            .into_iter()
            .map(|(platform, r)| Check {
                name: match platform {
                    "systrap" => "platform systrap",
                    "kvm" => "platform kvm",
                    _ => "platform ptrace",
                },
                ok: r.is_ok(),
                detail: match r {
                    Ok(d) => format!("ran /bin/true in {} ms", d.as_millis()),
                    Err(e) if e.starts_with("did not finish") => format!(
                        "{e} (hangs: typically /dev/kvm present without usable hardware virtualization)"
                    ),
                    Err(e) => e,
                },
            })
            .collect(),
    }
}

fn microvm_report(host: &stockade_runtime::levels::HostLevels) -> LevelReport {
    use stockade_runtime::microvm::Assets;
    let mut details = Vec::new();
    let assets = Assets::locate();
    match &assets {
        Ok(a) => {
            details.push(Check {
                name: "qemu",
                ok: true,
                detail: format!("{} ({})", a.qemu.display(), version_of(&a.qemu)),
            });
            details.push(Check {
                name: "guest kernel",
                ok: true,
                detail: format!(
                    "{} with {} module(s){}",
                    a.kernel.display(),
                    a.modules.len(),
                    std::fs::read_to_string(a.dir.join("kernel.version"))
                        .map(|v| format!(", version {}", v.trim()))
                        .unwrap_or_default()
                ),
            });
        }
        Err(e) => details.push(Check {
            name: "assets",
            ok: false,
            detail: e.clone(),
        }),
    }
    details.push(match stockade_runtime::backend::guest_binary() {
        Ok(p) => Check {
            name: "guest binary",
            ok: true,
            detail: p.display().to_string(),
        },
        Err(e) => Check {
            name: "guest binary",
            ok: false,
            detail: e,
        },
    });
    details.push(dev_kvm_check());
    details.push(Check {
        name: "kvm",
        ok: host.kvm.is_ok(),
        detail: match &host.kvm {
            Ok(()) => "a microVM boots with KVM (tried)".into(),
            Err(e) => e.clone(),
        },
    });
    details.push(Check {
        name: "tcg",
        ok: host.tcg.is_ok(),
        detail: match &host.tcg {
            Ok(()) => "a microVM boots under QEMU's TCG software emulation (tried); needs security.allow_emulated".into(),
            Err(e) => e.clone(),
        },
    });
    let (available, reason) = match (&host.kvm, &host.tcg) {
        (Ok(()), _) => (true, "microVMs run with KVM".to_string()),
        (Err(k), Ok(())) => (
            true,
            format!(
                "only under QEMU's TCG software emulation (policies need security.allow_emulated \
                 = true or --allow-emulated); KVM is not usable: {k}"
            ),
        ),
        (Err(k), Err(t)) => (
            false,
            format!("KVM is not usable ({k}); TCG is not either ({t})"),
        ),
    };
    LevelReport {
        level: "microvm",
        available,
        reason,
        details,
    }
}

/// Which trust levels this host can serve, through the runtime's own resolver: first with the
/// default settings, then with the least the operator would have to allow.
fn trust_reports(
    host: &stockade_runtime::levels::HostLevels,
    container: &Result<(), String>,
) -> Vec<TrustReport> {
    use stockade_policy::{Level, Policy, Trust};
    const EMULATED: &str = "security.allow_emulated = true (--allow-emulated)";
    const GVISOR: &str =
        "security.allow_gvisor_for_untrusted = true (--allow-gvisor-for-untrusted)";
    Trust::ALL
        .into_iter()
        .map(|trust| {
            let mut first_refusal = None;
            for settings in [vec![], vec![EMULATED], vec![GVISOR], vec![EMULATED, GVISOR]] {
                if trust != Trust::Untrusted && settings.contains(&GVISOR) {
                    continue;
                }
                let mut p = Policy {
                    trust: Some(trust),
                    ..Default::default()
                };
                p.security.allow_emulated = settings.contains(&EMULATED);
                p.security.allow_gvisor_for_untrusted = settings.contains(&GVISOR);
                match stockade_runtime::levels::resolve(&p, host) {
                    Ok(r) => {
                        if r.level == Level::Container
                            && let Err(e) = container
                        {
                            return TrustReport {
                                trust: trust.as_str(),
                                servable: false,
                                level: None,
                                settings: Vec::new(),
                                reason: format!("the container level is not available: {e}"),
                                without_settings: None,
                            };
                        }
                        return TrustReport {
                            trust: trust.as_str(),
                            servable: true,
                            level: Some(r.describe()),
                            settings,
                            reason: r.why,
                            without_settings: first_refusal,
                        };
                    }
                    Err(e) => {
                        first_refusal.get_or_insert(e);
                    }
                }
            }
            TrustReport {
                trust: trust.as_str(),
                servable: false,
                level: None,
                settings: Vec::new(),
                reason: first_refusal.unwrap_or_default(),
                without_settings: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use stockade_runtime::levels::HostLevels;

    fn host(g: bool, k: bool, t: bool) -> HostLevels {
        HostLevels {
            gvisor: if g {
                Ok("ptrace".into())
            } else {
                Err("no runsc".into())
            },
            kvm: if k { Ok(()) } else { Err("no VT-x".into()) },
            tcg: if t { Ok(()) } else { Err("no qemu".into()) },
        }
    }

    fn line(r: &TrustReport) -> String {
        format!(
            "{} {} {} [{}]",
            r.trust,
            r.servable,
            r.level.as_deref().unwrap_or("-"),
            r.settings.join(", ")
        )
    }

    #[test]
    fn trust_levels_this_host_can_serve() {
        // This machine kind: runsc ptrace, no KVM, TCG works.
        let got: Vec<String> = trust_reports(&host(true, false, true), &Ok(()))
            .iter()
            .map(line)
            .collect();
        assert_eq!(
            got,
            [
                "trusted true container []",
                "internal true gvisor (ptrace) []",
                "untrusted true microvm (tcg) [security.allow_emulated = true (--allow-emulated)]",
            ]
        );
        let r = trust_reports(&host(true, false, true), &Ok(()));
        let without = r[2].without_settings.as_deref().unwrap();
        assert!(
            without.starts_with("untrusted needs a microVM: KVM is not usable here (no VT-x)"),
            "{without}"
        );
        assert!(r[2].reason.contains("TCG"), "{}", r[2].reason);
        assert_eq!(r[1].without_settings, None);
        // KVM everywhere: no settings needed.
        let got: Vec<String> = trust_reports(&host(false, true, true), &Ok(()))
            .iter()
            .map(line)
            .collect();
        assert_eq!(
            got,
            [
                "trusted true container []",
                "internal true microvm (kvm) []",
                "untrusted true microvm (kvm) []",
            ]
        );
        // Only gVisor: untrusted needs the operator's consent.
        let got: Vec<String> = trust_reports(&host(true, false, false), &Ok(()))
            .iter()
            .map(line)
            .collect();
        assert_eq!(
            got[2],
            "untrusted true gvisor (ptrace) [security.allow_gvisor_for_untrusted = true (--allow-gvisor-for-untrusted)]"
        );
        // Nothing but containers, and those broken too.
        let r = trust_reports(
            &host(false, false, false),
            &Err("user namespaces are refused".into()),
        );
        assert_eq!(
            r.iter().map(line).collect::<Vec<_>>(),
            [
                "trusted false - []",
                "internal false - []",
                "untrusted false - []"
            ]
        );
        assert!(
            r[0].reason.contains("user namespaces are refused"),
            "{}",
            r[0].reason
        );
        assert!(
            r[1].reason.contains("no runsc") && r[1].reason.contains("no VT-x"),
            "{}",
            r[1].reason
        );
    }
}
