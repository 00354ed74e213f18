//! Which isolation level a sandbox runs at: the policy's `level` and `trust` against what this
//! host can give ([`resolve`]), never a silent fallback.
//!
//! - An explicit `level` is used as is (validation already refused one weaker than `trust`).
//! - `trust = "trusted"` (or no trust and no level): `container`.
//! - `trust = "internal"`: `gvisor` when runsc works here, else a microVM.
//! - `trust = "untrusted"`: a microVM (KVM; QEMU's TCG emulation only with
//!   `security.allow_emulated`), else `gvisor` only with `security.allow_gvisor_for_untrusted`.
//! - A microVM under TCG always needs `security.allow_emulated`, whatever picked the level.
//!
//! When the host cannot give what the policy needs, the error says why (the probes' own reasons)
//! and what would make it possible. Probes run only when the decision needs them: a policy that
//! ends up at `container` runs none ([`resolve_here`]); the probes cache their own results.

use stockade_jail::plan::Accel;
use stockade_policy::{Level, Policy, Trust};

/// What this host can give, as the backends' probes found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLevels {
    /// The runsc platform that works here (e.g. "ptrace"), or why gVisor cannot run.
    pub gvisor: Result<String, String>,
    /// Whether a microVM starts with KVM here (detected by trying), or why not.
    pub kvm: Result<(), String>,
    /// Whether a microVM starts under QEMU's TCG software emulation here, or why not.
    pub tcg: Result<(), String>,
}

/// Asks the backends about this host: everything (what `stockade doctor` shows). To decide for
/// one policy, use [`resolve_here`], which asks only what the decision needs.
pub fn probe() -> HostLevels {
    HostLevels {
        gvisor: crate::gvisor::probe(),
        kvm: crate::microvm::probe(Accel::Kvm),
        tcg: crate::microvm::probe(Accel::Tcg),
    }
}

/// The level a sandbox runs at, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub level: Level,
    /// microvm only: how the guest's CPU is provided.
    pub accel: Option<Accel>,
    /// gvisor only: the runsc platform.
    pub platform: Option<String>,
    /// Why this level, in one sentence (for `--verbose` and logs).
    pub why: String,
}

impl Resolved {
    /// The container level, for callers that have not resolved a policy (yet).
    pub fn container() -> Resolved {
        Resolved {
            level: Level::Container,
            accel: None,
            platform: None,
            why: "container level (no stronger level asked for)".into(),
        }
    }

    /// `container`, `gvisor (ptrace)`, `microvm (kvm)`, `microvm (tcg)`.
    pub fn describe(&self) -> String {
        match (self.level, self.accel, &self.platform) {
            (Level::Microvm, Some(Accel::Kvm), _) => "microvm (kvm)".into(),
            (Level::Microvm, Some(Accel::Tcg), _) => "microvm (tcg)".into(),
            (Level::Gvisor, _, Some(p)) => format!("gvisor ({p})"),
            (l, _, _) => l.as_str().into(),
        }
    }
}

/// Where [`resolve_with`] gets its answers: a [`HostLevels`] already probed, or the live probes.
pub trait Host {
    fn gvisor(&self) -> Result<String, String>;
    fn kvm(&self) -> Result<(), String>;
    fn tcg(&self) -> Result<(), String>;
}

impl Host for HostLevels {
    fn gvisor(&self) -> Result<String, String> {
        self.gvisor.clone()
    }
    fn kvm(&self) -> Result<(), String> {
        self.kvm.clone()
    }
    fn tcg(&self) -> Result<(), String> {
        self.tcg.clone()
    }
}

/// The backends' own probes, asked one at a time (each caches its result).
pub struct LiveHost;

impl Host for LiveHost {
    fn gvisor(&self) -> Result<String, String> {
        crate::gvisor::probe()
    }
    fn kvm(&self) -> Result<(), String> {
        crate::microvm::probe(Accel::Kvm)
    }
    fn tcg(&self) -> Result<(), String> {
        crate::microvm::probe(Accel::Tcg)
    }
}

/// [`resolve`] against this host, probing only what the decision needs.
pub fn resolve_here(policy: &Policy) -> Result<Resolved, String> {
    resolve_with(policy, &LiveHost)
}

/// The level `policy` runs at on a host that can give `host`, or why it cannot run here and
/// what would make it possible.
pub fn resolve(policy: &Policy, host: &HostLevels) -> Result<Resolved, String> {
    resolve_with(policy, host)
}

const EMULATED_HINT: &str = "set security.allow_emulated = true (or --allow-emulated) to run \
                             under QEMU's TCG software emulation (same walls, much slower)";
const GVISOR_UNTRUSTED_HINT: &str = "security.allow_gvisor_for_untrusted = true (or \
                                     --allow-gvisor-for-untrusted) to accept gVisor for untrusted code";
const INSTALL_RUNSC: &str = "install runsc (Debian package `runsc`)";
const DOCTOR: &str = "`stockade doctor` shows what this host can give";

/// [`resolve`] with answers from `host`, asked lazily.
pub fn resolve_with(policy: &Policy, host: &dyn Host) -> Result<Resolved, String> {
    let emulated = policy.security.allow_emulated;
    if let Some(level) = policy.level {
        let ctx = match policy.trust {
            Some(t) => format!("level = {:?} (trust = {:?})", level.as_str(), t.as_str()),
            None => format!("level = {:?}", level.as_str()),
        };
        return match level {
            Level::Container => Ok(Resolved {
                why: format!("{ctx} as stated"),
                ..Resolved::container()
            }),
            Level::Gvisor => match host.gvisor() {
                Ok(p) => Ok(gvisor_at(p, format!("{ctx} as stated"))),
                Err(e) => Err(format!(
                    "{ctx} cannot run here: gVisor is not usable ({e}); {INSTALL_RUNSC}, or \
                     pick another level; {DOCTOR}"
                )),
            },
            Level::Microvm => microvm(host, emulated, &ctx).map_err(|v| {
                format!(
                    "{ctx} cannot run here: {}; {DOCTOR}",
                    v.explain(host, emulated)
                )
            }),
        };
    }
    match policy.trust {
        None => Ok(Resolved {
            why: "no level or trust stated: container".into(),
            ..Resolved::container()
        }),
        Some(Trust::Trusted) => Ok(Resolved {
            why: "trust = \"trusted\": container".into(),
            ..Resolved::container()
        }),
        Some(Trust::Internal) => {
            let ctx = "trust = \"internal\"";
            let gv_err = match host.gvisor() {
                Ok(p) => return Ok(gvisor_at(p, format!("{ctx}: gVisor"))),
                Err(e) => e,
            };
            match microvm(host, emulated, ctx) {
                Ok(mut r) => {
                    r.why = format!("{} (gVisor is not usable here: {gv_err})", r.why);
                    Ok(r)
                }
                Err(v) => Err(format!(
                    "internal needs gVisor or a microVM: gVisor is not usable here ({gv_err}) \
                     ({INSTALL_RUNSC}), and {}; {DOCTOR}",
                    v.explain(host, emulated)
                )),
            }
        }
        Some(Trust::Untrusted) => {
            let ctx = "trust = \"untrusted\"";
            let vm = match microvm(host, emulated, ctx) {
                Ok(r) => return Ok(r),
                Err(v) => v,
            };
            let gv = host.gvisor();
            if policy.security.allow_gvisor_for_untrusted {
                return match gv {
                    Ok(p) => Ok(gvisor_at(
                        p,
                        format!(
                            "{ctx}: gVisor, accepted by security.allow_gvisor_for_untrusted (a \
                             microVM is not possible: {})",
                            vm.reason()
                        ),
                    )),
                    Err(e) => Err(format!(
                        "untrusted needs a microVM, or gVisor (allowed by the policy): {}, and \
                         gVisor is not usable here either ({e}; {INSTALL_RUNSC}); {DOCTOR}",
                        vm.explain(host, emulated)
                    )),
                };
            }
            let gv = match gv {
                Ok(p) => format!("gVisor works here, runsc platform {p}"),
                Err(e) => format!("gVisor is not usable here either: {e}"),
            };
            Err(format!(
                "untrusted needs a microVM: {}; or set {GVISOR_UNTRUSTED_HINT} ({gv})",
                vm.explain(host, emulated)
            ))
        }
    }
}

fn gvisor_at(platform: String, why: String) -> Resolved {
    Resolved {
        level: Level::Gvisor,
        accel: None,
        why: format!("{why}, runsc platform {platform}"),
        platform: Some(platform),
    }
}

/// Why a microVM cannot start: KVM's reason, and TCG's when it was asked (only when the policy
/// allows emulation: otherwise the decision does not need it).
struct NoVm {
    kvm: String,
    tcg: Option<String>,
}

impl NoVm {
    /// The probes' reasons, without advice.
    fn reason(&self) -> String {
        match &self.tcg {
            Some(t) => format!(
                "KVM is not usable here ({}) and QEMU's TCG emulation is not either ({t})",
                self.kvm
            ),
            None => format!(
                "KVM is not usable here ({}) and TCG emulation is not allowed by the policy",
                self.kvm
            ),
        }
    }

    /// The reasons and what would make a microVM possible. On this error path only, TCG is
    /// probed even when emulation is not allowed, to say whether allowing it would help.
    fn explain(&self, host: &dyn Host, allow_emulated: bool) -> String {
        if allow_emulated {
            return self.reason();
        }
        match host.tcg() {
            Ok(()) => format!("{}; {EMULATED_HINT}", self.reason()),
            Err(t) => format!(
                "{} (and QEMU's TCG emulation would not work here either: {t})",
                self.reason()
            ),
        }
    }
}

/// A microVM: KVM, else TCG when `allow_emulated`.
fn microvm(host: &dyn Host, allow_emulated: bool, ctx: &str) -> Result<Resolved, NoVm> {
    let kvm = match host.kvm() {
        Ok(()) => {
            return Ok(Resolved {
                level: Level::Microvm,
                accel: Some(Accel::Kvm),
                platform: None,
                why: format!("{ctx}: microVM with KVM"),
            });
        }
        Err(e) => e,
    };
    if !allow_emulated {
        return Err(NoVm { kvm, tcg: None });
    }
    match host.tcg() {
        Ok(()) => Ok(Resolved {
            level: Level::Microvm,
            accel: Some(Accel::Tcg),
            platform: None,
            why: format!(
                "{ctx}: microVM under QEMU's TCG software emulation, allowed by \
                 security.allow_emulated (KVM is not usable here: {kvm})"
            ),
        }),
        Err(t) => Err(NoVm { kvm, tcg: Some(t) }),
    }
}

#[cfg(test)]
#[path = "levels_tests.rs"]
mod tests;
