#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::cell::RefCell;

/// A fake host that records which probes were asked.
struct Fake {
    gvisor: Result<String, String>,
    kvm: Result<(), String>,
    tcg: Result<(), String>,
    asked: RefCell<Vec<&'static str>>,
}

impl Fake {
    fn new(gvisor: bool, kvm: bool, tcg: bool) -> Fake {
        Fake {
            gvisor: if gvisor {
                Ok("ptrace".into())
            } else {
                Err("runsc: not found".into())
            },
            kvm: if kvm {
                Ok(())
            } else {
                Err("KVM_RUN: hardware virtualization is not exposed".into())
            },
            tcg: if tcg {
                Ok(())
            } else {
                Err("qemu-system-x86_64: not found".into())
            },
            asked: RefCell::new(Vec::new()),
        }
    }
    fn asked(&self) -> Vec<&'static str> {
        self.asked.borrow().clone()
    }
}

impl Host for Fake {
    fn gvisor(&self) -> Result<String, String> {
        self.asked.borrow_mut().push("gvisor");
        self.gvisor.clone()
    }
    fn kvm(&self) -> Result<(), String> {
        self.asked.borrow_mut().push("kvm");
        self.kvm.clone()
    }
    fn tcg(&self) -> Result<(), String> {
        self.asked.borrow_mut().push("tcg");
        self.tcg.clone()
    }
}

fn policy(trust: Option<Trust>, level: Option<Level>, emulated: bool, gv: bool) -> Policy {
    let mut p = Policy {
        level,
        trust,
        ..Default::default()
    };
    p.security.allow_emulated = emulated;
    p.security.allow_gvisor_for_untrusted = gv;
    p
}

const T: Option<Trust> = Some(Trust::Trusted);
const I: Option<Trust> = Some(Trust::Internal);
const U: Option<Trust> = Some(Trust::Untrusted);
const C: Option<Level> = Some(Level::Container);
const G: Option<Level> = Some(Level::Gvisor);
const M: Option<Level> = Some(Level::Microvm);

/// What each row expects: a level description (`Resolved::describe`) or an error.
#[derive(Debug, PartialEq)]
enum Want {
    Is(&'static str),
    Refused,
}
use Want::*;

/// Host: (gvisor, kvm, tcg) usable.
type HostBits = (bool, bool, bool);
/// (trust, level, allow_emulated, allow_gvisor_for_untrusted, host, want)
type Row = (Option<Trust>, Option<Level>, bool, bool, HostBits, Want);

#[test]
fn table() {
    // (trust, level, allow_emulated, allow_gvisor_for_untrusted, host gvisor/kvm/tcg, want)
    #[rustfmt::skip]
    let rows: &[Row] = &[
        // Nothing stated, trusted, or container stated: container whatever the host.
        (None, None, false, false, (false, false, false), Is("container")),
        (T, None, false, false, (true, true, true), Is("container")),
        (None, C, false, false, (true, true, true), Is("container")),
        (T, C, true, true, (false, false, false), Is("container")),
        // Trusted with a stronger stated level: that level.
        (T, G, false, false, (true, true, true), Is("gvisor (ptrace)")),
        (T, M, false, false, (true, true, true), Is("microvm (kvm)")),
        (T, M, false, false, (true, false, true), Refused),
        (T, M, true, false, (true, false, true), Is("microvm (tcg)")),
        // Explicit level without trust: as is, never another one.
        (None, G, false, false, (true, true, true), Is("gvisor (ptrace)")),
        (None, G, false, false, (false, true, true), Refused),
        (None, M, false, false, (true, true, true), Is("microvm (kvm)")),
        (None, M, false, false, (true, false, true), Refused),
        (None, M, true, false, (true, false, true), Is("microvm (tcg)")),
        (None, M, true, false, (true, false, false), Refused),
        // Internal: gVisor when it works, else a microVM.
        (I, None, false, false, (true, true, true), Is("gvisor (ptrace)")),
        (I, None, false, false, (false, true, true), Is("microvm (kvm)")),
        (I, None, false, false, (false, false, true), Refused),
        (I, None, true, false, (false, false, true), Is("microvm (tcg)")),
        (I, None, true, false, (false, false, false), Refused),
        (I, G, false, false, (false, true, true), Refused),
        (I, M, false, false, (true, true, true), Is("microvm (kvm)")),
        // Untrusted: a microVM; TCG only when allowed; gVisor only when allowed.
        (U, None, false, false, (true, true, true), Is("microvm (kvm)")),
        (U, None, false, true, (true, true, true), Is("microvm (kvm)")),
        (U, None, false, false, (true, false, true), Refused),
        (U, None, true, false, (true, false, true), Is("microvm (tcg)")),
        (U, None, true, true, (true, false, true), Is("microvm (tcg)")),
        (U, None, false, true, (true, false, true), Is("gvisor (ptrace)")),
        (U, None, true, true, (true, false, false), Is("gvisor (ptrace)")),
        (U, None, true, true, (false, false, false), Refused),
        (U, None, false, true, (false, false, true), Refused),
        (U, G, false, true, (true, true, true), Is("gvisor (ptrace)")),
        (U, M, false, false, (true, false, true), Refused),
        (U, M, true, false, (true, false, true), Is("microvm (tcg)")),
    ];
    for (trust, level, emu, gv, (hg, hk, ht), want) in rows {
        let p = policy(*trust, *level, *emu, *gv);
        p.validate().unwrap();
        let host = Fake::new(*hg, *hk, *ht);
        let got = match resolve_with(&p, &host) {
            Ok(r) => Is(Box::leak(r.describe().into_boxed_str())),
            Err(_) => Refused,
        };
        assert_eq!(
            &got, want,
            "{trust:?} {level:?} emu={emu} gv={gv} host={hg}/{hk}/{ht}"
        );
        // The same through HostLevels.
        let levels = HostLevels {
            gvisor: host.gvisor.clone(),
            kvm: host.kvm.clone(),
            tcg: host.tcg.clone(),
        };
        assert_eq!(
            resolve(&p, &levels).map(|r| r.describe()).ok(),
            resolve_with(&p, &host).map(|r| r.describe()).ok()
        );
    }
}

/// Every valid policy on every host: what is chosen is allowed and available; a refusal
/// happens only when nothing allowed is available, and says why and what would help.
#[test]
fn every_combination() {
    let trusts = [None, T, I, U];
    let levels = [None, C, G, M];
    let mut refusals = 0;
    let mut runs = 0;
    for trust in trusts {
        for level in levels {
            for emu in [false, true] {
                for gv in [false, true] {
                    let p = policy(trust, level, emu, gv);
                    if p.validate().is_err() {
                        continue;
                    }
                    for bits in 0..8u8 {
                        let (hg, hk, ht) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
                        let host = Fake::new(hg, hk, ht);
                        let case =
                            format!("{trust:?} {level:?} emu={emu} gv={gv} host={hg}/{hk}/{ht}");
                        // Options the policy accepts that the host can give.
                        let min = p.minimum_level();
                        let ok_level = |l: Level| l >= min && level.is_none_or(|s| s == l);
                        let mut options = Vec::new();
                        if ok_level(Level::Container) {
                            options.push("container");
                        }
                        if ok_level(Level::Gvisor) && hg {
                            options.push("gvisor (ptrace)");
                        }
                        if ok_level(Level::Microvm) && hk {
                            options.push("microvm (kvm)");
                        }
                        if ok_level(Level::Microvm) && ht && emu {
                            options.push("microvm (tcg)");
                        }
                        match resolve_with(&p, &host) {
                            Ok(r) => {
                                runs += 1;
                                assert!(options.contains(&r.describe().as_str()), "{case}: {r:?}");
                                assert_eq!(r.accel.is_some(), r.level == Level::Microvm, "{case}");
                                assert_eq!(
                                    r.platform.is_some(),
                                    r.level == Level::Gvisor,
                                    "{case}"
                                );
                                assert!(!r.why.is_empty());
                                // Preferences: the weakest allowed, except untrusted prefers a
                                // microVM, and KVM over TCG.
                                if trust == U && level.is_none() && (hk || (ht && emu)) {
                                    assert_eq!(r.level, Level::Microvm, "{case}");
                                }
                                if trust == I && level.is_none() && hg {
                                    assert_eq!(r.level, Level::Gvisor, "{case}");
                                }
                                if r.level == Level::Microvm && hk {
                                    assert_eq!(r.accel, Some(Accel::Kvm), "{case}");
                                }
                                if level.is_none() && trust != U && trust != I {
                                    assert_eq!(r.level, Level::Container, "{case}");
                                }
                            }
                            Err(e) => {
                                refusals += 1;
                                assert!(
                                    options.is_empty(),
                                    "{case}: refused although {options:?} would do: {e}"
                                );
                                // The probes' reasons are in the message.
                                let wants_vm = ok_level(Level::Microvm);
                                let wants_gv = ok_level(Level::Gvisor);
                                if wants_vm {
                                    assert!(
                                        e.contains("hardware virtualization is not exposed"),
                                        "{case}: {e}"
                                    );
                                }
                                if wants_gv {
                                    assert!(e.contains("runsc: not found"), "{case}: {e}");
                                }
                                // What would make it possible.
                                if wants_vm && !emu && ht {
                                    assert!(
                                        e.contains(
                                            "security.allow_emulated = true (or --allow-emulated)"
                                        ),
                                        "{case}: {e}"
                                    );
                                }
                                if wants_vm && !emu && !ht {
                                    assert!(
                                        e.contains("TCG emulation would not work here either"),
                                        "{case}: {e}"
                                    );
                                }
                                if trust == U && !gv && level.is_none() {
                                    assert!(
                                        e.contains("security.allow_gvisor_for_untrusted = true"),
                                        "{case}: {e}"
                                    );
                                }
                                if wants_gv && !hg {
                                    assert!(e.contains("Debian package `runsc`"), "{case}: {e}");
                                }
                                assert!(
                                    e.contains("stockade doctor")
                                        || e.contains("allow_gvisor_for_untrusted"),
                                    "{case}: {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    // The loops covered both outcomes many times.
    assert!(
        runs > 100 && refusals > 20,
        "runs {runs}, refusals {refusals}"
    );
}

#[test]
fn the_refusal_says_why_and_what_would_help() {
    let p = policy(U, None, false, false);
    let host = Fake::new(false, false, true);
    let e = resolve_with(&p, &host).unwrap_err();
    assert_eq!(
        e,
        "untrusted needs a microVM: KVM is not usable here (KVM_RUN: hardware virtualization is \
         not exposed) and TCG emulation is not allowed by the policy; set security.allow_emulated \
         = true (or --allow-emulated) to run under QEMU's TCG software emulation (same walls, much \
         slower); or set security.allow_gvisor_for_untrusted = true (or \
         --allow-gvisor-for-untrusted) to accept gVisor for untrusted code (gVisor is not usable \
         here either: runsc: not found)"
    );
    let e = resolve_with(&policy(None, G, false, false), &host).unwrap_err();
    assert_eq!(
        e,
        "level = \"gvisor\" cannot run here: gVisor is not usable (runsc: not found); install runsc \
         (Debian package `runsc`), or pick another level; `stockade doctor` shows what this host can give"
    );
}

#[test]
fn only_what_the_decision_needs_is_probed() {
    // Policies that end at container probe nothing, on any host.
    for p in [
        policy(None, None, true, true),
        policy(T, None, true, true),
        policy(None, C, true, true),
        policy(T, C, false, false),
    ] {
        for bits in 0..8u8 {
            let host = Fake::new(bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
            assert_eq!(resolve_with(&p, &host).unwrap().level, Level::Container);
            assert!(host.asked().is_empty(), "{p:?}: {:?}", host.asked());
        }
    }
    let cases: &[(Policy, HostBits, &[&str])] = &[
        (policy(None, G, true, true), (true, true, true), &["gvisor"]),
        (policy(I, None, true, true), (true, true, true), &["gvisor"]),
        (policy(U, None, true, true), (true, true, true), &["kvm"]),
        (policy(None, M, true, false), (true, true, true), &["kvm"]),
        // TCG is asked only when KVM failed and emulation is allowed...
        (
            policy(U, None, true, false),
            (true, false, true),
            &["kvm", "tcg"],
        ),
        // ...and gVisor for untrusted only after no microVM could be had.
        (
            policy(U, None, false, true),
            (true, false, true),
            &["kvm", "gvisor"],
        ),
        (
            policy(I, None, false, false),
            (false, true, true),
            &["gvisor", "kvm"],
        ),
    ];
    for (p, (g, k, t), want) in cases {
        let host = Fake::new(*g, *k, *t);
        resolve_with(p, &host).unwrap();
        assert_eq!(host.asked(), *want, "{p:?}");
    }
}

#[test]
fn describe_and_container() {
    let c = Resolved::container();
    assert_eq!(
        (c.level, c.accel, c.platform.clone()),
        (Level::Container, None, None)
    );
    assert_eq!(c.describe(), "container");
}
