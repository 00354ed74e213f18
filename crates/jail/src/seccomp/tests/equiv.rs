//! The single binary-search filter returns exactly what the former four seccompiler layers
//! returned together, for every syscall number 0..=500, x32 and out-of-range numbers, foreign
//! arches, and argument vectors that hit each side of every conditional rule. Plus the emitter
//! on a table big enough to need long jumps.

use std::collections::BTreeMap;

use super::interp::{Data, run, run_counted, run_stack};
use crate::seccomp::bpf::{BPF_JA, BPF_JMP};
use crate::seccomp::compile::{AUDIT_ARCH_AARCH64, AUDIT_ARCH_X86_64, Arch, compile, plan};
use crate::seccomp::emit::{Leaf, Plan, Pred, RET_ALLOW, RET_KILL_PROCESS, emit, ret_errno};
use crate::seccomp::legacy::legacy_filters;
use crate::seccomp::table::{CLONE_NEW_FLAGS, CONDITIONAL, PERSONALITIES, SOCK_PACKET};

const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
const HIGH: u64 = 0xdead_beef_0000_0000;

/// Values for arguments 0 and 1 that hit both sides of every rule, with and without garbage
/// in the high 32 bits (the rules look at the low 32 bits only).
fn arg_values() -> Vec<u64> {
    let mut v: Vec<u64> = vec![0, 1, 2, 3, 5, 10, 16, 17, 40, 0x7fff_ffff, 0xffff_ffff];
    v.extend(0..46u64); // every socket family and small value (deduplicated below)
    for &f in CLONE_NEW_FLAGS {
        let f = u64::from(f);
        v.extend([
            f,
            f | 0x11,
            f | libc::CLONE_VM as u64 | 0x100,
            !f & 0xffff_ffff,
        ]);
    }
    v.extend([0x0100_0000 | 0x11, 0x003d_0f00]); // ordinary clone flags (fork, threads)
    v.extend([0x5412, 0x541c, 0x5413, 0x541b, 0x8912]); // ioctls around TIOCSTI/TIOCLINUX
    v.extend(PERSONALITIES.iter().map(|&p| u64::from(p)));
    v.extend([0x40000, 0x0040_0008, 0x20001, 0x9]); // personalities around the allowed ones
    let t = [libc::SOCK_RAW as u64, u64::from(SOCK_PACKET), 1, 2, 5, 6];
    for t in t {
        v.extend([t | 0x80000, t | 0x800, t | 0x10, t | 0x80800]); // CLOEXEC, NONBLOCK, junk
    }
    let lows = v.clone();
    v.extend(lows.iter().map(|x| x | HIGH));
    v.sort_unstable();
    v.dedup();
    v
}

fn check_arch(arch: Arch) {
    let new = compile(arch).unwrap().filters;
    let old = legacy_filters(arch).unwrap();
    assert_eq!(new.len(), 1);
    let conditional: Vec<u32> = CONDITIONAL
        .iter()
        .map(|c| arch.nr(c.name).unwrap() as u32)
        .collect();
    let values = arg_values();
    let few = [0u64, 1, 0x11, 0xffff_ffff, HIGH | 3];
    let mut numbers: Vec<u32> = (0..=500).collect();
    for x32 in [0u32, 1, 39, 41, 56, 101, 110, 435, 512, 547, 0x3fff_ffff] {
        numbers.push(0x4000_0000 | x32);
    }
    numbers.extend([0x3fff_ffff, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, u32::MAX]);
    let arches = [
        AUDIT_ARCH_X86_64,
        AUDIT_ARCH_AARCH64,
        AUDIT_ARCH_I386,
        0,
        u32::MAX,
    ];
    let (mut cases, mut denied, mut killed) = (0u64, 0u64, 0u64);
    for &audit in &arches {
        for &nr in &numbers {
            // Every pair of argument-0/argument-1 values for the checked syscalls; a few
            // vectors for the rest.
            let (a0, a1): (&[u64], &[u64]) = if conditional.contains(&nr) {
                (&values, &values)
            } else {
                (&few, &few)
            };
            for &x in a0 {
                for &y in a1 {
                    let d = Data {
                        nr,
                        arch: audit,
                        ip: 0x7fff_0000_1234,
                        args: [x, y, x ^ y, 0, HIGH, u64::MAX],
                    };
                    let want = run_stack(&old, &d);
                    let got = run(&new[0], &d);
                    assert_eq!(
                        got, want,
                        "{arch:?}: nr {nr:#x} arch {audit:#x} args {x:#x} {y:#x}"
                    );
                    cases += 1;
                    denied += u64::from(got != RET_ALLOW);
                    killed += u64::from(got == RET_KILL_PROCESS);
                }
            }
        }
    }
    // The comparison covered every kind of result.
    assert!(
        cases > 100_000 && denied > 0 && killed > 0,
        "{cases} {denied} {killed}"
    );
    for errno in [libc::EPERM, libc::EAFNOSUPPORT, libc::ENOSYS] {
        let seen = numbers.iter().any(|&nr| {
            values.iter().any(|&x| {
                let d = Data {
                    nr,
                    arch: arch.audit(),
                    ip: 0,
                    args: [x, 3, 0, 0, 0, 0],
                };
                run(&new[0], &d) == ret_errno(errno as u32)
            })
        });
        assert!(seen, "{arch:?}: errno {errno} never returned");
    }
}

#[test]
fn single_filter_equals_legacy_layers_x86_64() {
    check_arch(Arch::X86_64);
}

#[test]
fn single_filter_equals_legacy_layers_aarch64() {
    check_arch(Arch::Aarch64);
}

#[test]
fn single_filter_is_short_and_shallow() {
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let f = &compile(arch).unwrap().filters[0];
        let (plan, _, _) = plan(arch).unwrap();
        assert!(f.len() < 400, "{arch:?}: {} instructions", f.len());
        // Instructions run for the worst syscall number (zero arguments), against the ~1,450
        // the first layer alone ran for a number at the end of its chain.
        let worst = (0..=500u32)
            .map(|nr| {
                let d = Data {
                    nr,
                    arch: arch.audit(),
                    ip: 0,
                    args: [0; 6],
                };
                run_counted(f, &d).1
            })
            .max()
            .unwrap();
        assert!(
            worst <= 30,
            "{arch:?}: {worst} steps, {} leaves",
            plan.leaves.len()
        );
    }
}

/// A synthetic plan with `n` numbers whose decisions alternate between allow, errnos and
/// argument checks, so the search tree's subtrees are far longer than 255 instructions.
fn big_plan(n: u32) -> Plan {
    let mut leaves = BTreeMap::new();
    for i in 0..n {
        let nr = i * 3 + (i % 5); // gaps of varying width between runs
        let leaf = match i % 7 {
            0 | 3 => Leaf::Ret(RET_ALLOW),
            1 => Leaf::Ret(ret_errno(1 + i % 100)),
            2 => Leaf::Checks {
                checks: vec![
                    (
                        Pred::NoneOf {
                            arg: 0,
                            values: vec![1, 2, 10],
                        },
                        ret_errno(97),
                    ),
                    (
                        Pred::OneOf {
                            arg: 1,
                            mask: 0xf,
                            values: vec![3, 10],
                        },
                        ret_errno(1),
                    ),
                ],
                otherwise: RET_ALLOW,
            },
            4 => Leaf::Checks {
                checks: vec![(
                    Pred::AnyBit {
                        arg: 0,
                        bits: vec![0x10, 0x30, 0x80],
                    },
                    ret_errno(1),
                )],
                otherwise: RET_ALLOW,
            },
            5 => Leaf::Checks {
                checks: vec![(
                    Pred::AnyBit {
                        arg: 2,
                        bits: vec![0x100, 0x2000],
                    },
                    ret_errno(2),
                )],
                otherwise: RET_ALLOW,
            },
            _ => Leaf::Checks {
                checks: vec![(Pred::Always, ret_errno(38))],
                otherwise: RET_ALLOW,
            },
        };
        leaves.insert(nr, leaf);
    }
    Plan {
        audit_arch: AUDIT_ARCH_X86_64,
        abi_bit: Some(0x4000_0000),
        default: ret_errno(1),
        leaves,
    }
}

/// The decision `plan` describes, computed directly.
fn decide(plan: &Plan, d: &Data) -> u32 {
    if d.arch != plan.audit_arch {
        return RET_KILL_PROCESS;
    }
    if plan.abi_bit.is_some_and(|b| d.nr & b != 0) {
        return plan.default;
    }
    let low = |arg: u8| d.args[usize::from(arg)] as u32;
    match plan.leaves.get(&d.nr) {
        None => plan.default,
        Some(Leaf::Ret(k)) => *k,
        Some(Leaf::Checks { checks, otherwise }) => checks
            .iter()
            .find(|(p, _)| match p {
                Pred::Always => true,
                Pred::AnyBit { arg, bits } => bits.iter().any(|&b| low(*arg) & b == b),
                Pred::OneOf { arg, mask, values } => values.contains(&(low(*arg) & mask)),
                Pred::NoneOf { arg, values } => !values.contains(&low(*arg)),
            })
            .map_or(*otherwise, |(_, r)| *r),
    }
}

#[test]
fn long_jumps_in_a_big_table() {
    let plan = big_plan(600);
    let prog = emit(&plan).unwrap();
    let trampolines = prog.iter().filter(|i| i.code == BPF_JMP | BPF_JA).count();
    assert!(
        prog.len() > 2000 && prog.len() <= 4096,
        "{} instructions",
        prog.len()
    );
    assert!(
        trampolines > 0,
        "no long jump needed; make the table bigger"
    );
    let max_nr = plan.leaves.keys().last().copied().unwrap();
    let args: [[u64; 6]; 8] = [
        [0; 6],
        [1, 3, 0x100, 0, 0, 0],
        [2, 10 | 0x80, 0, 0, 0, 0],
        [0x10, 0x13, 0x2000, 0, 0, 0],
        [0x20, 0, 0x300, 0, 0, 0],
        [0x80 | HIGH, 0x1a | HIGH, 0, 0, 0, 0],
        [10, 4, 0xff, 0, 0, 0],
        [u64::MAX; 6],
    ];
    let mut worst = 0;
    for nr in (0..=max_nr + 3).chain([0x4000_0005, u32::MAX]) {
        for audit in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
            for a in args {
                let d = Data {
                    nr,
                    arch: audit,
                    ip: 0,
                    args: a,
                };
                let (got, steps) = run_counted(&prog, &d);
                assert_eq!(
                    got,
                    decide(&plan, &d),
                    "nr {nr} arch {audit:#x} args {a:x?}"
                );
                worst = worst.max(steps);
            }
        }
    }
    // log2(runs) compares plus checks and a few trampolines, not a walk along the table.
    assert!(worst < 40, "{worst} steps");
}

#[test]
fn emitted_default_plan_matches_its_decisions() {
    // The real plan, checked against `decide` too (independent of the legacy oracle).
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let (plan, _, _) = plan(arch).unwrap();
        let prog = emit(&plan).unwrap();
        for nr in 0..=600 {
            for a in arg_values().iter().step_by(7) {
                let d = Data {
                    nr,
                    arch: arch.audit(),
                    ip: 0,
                    args: [*a, *a >> 3, 0, 0, 0, 0],
                };
                assert_eq!(
                    run(&prog, &d),
                    decide(&plan, &d),
                    "{arch:?} nr {nr} arg {a:#x}"
                );
            }
        }
    }
}
