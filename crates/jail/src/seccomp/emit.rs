//! Emits one seccomp filter from a decision per syscall number: arch check, `ld nr`, then a
//! balanced binary search (`jge`) over runs of numbers with the same decision, down to leaves
//! that return, or check arguments and then return.
//!
//! ```text
//!     ld  arch ; jeq AUDIT_ARCH ? next : ret KILL_PROCESS
//!     ld  nr   ; (x86_64) jge 0x40000000 ? ret default : next      x32 ABI
//!     jge 232  ? (jge 290 ? ... : ...) : (jge 60 ? ... : ...)        ~log2(runs) compares
//! ```
//!
//! Every syscall costs a handful of instructions instead of a walk along a chain, and the
//! kernel verifies and JITs one short program instead of four.

use std::collections::BTreeMap;

use super::SeccompError;
use super::bpf::{BPF_JEQ, BPF_JGE, BPF_JSET, Emitter, Insn, OFF_ARCH, OFF_ARGS, OFF_NR, Target};

/// `SECCOMP_RET_*` values, as `u32` for `ret k`.
pub(crate) const RET_KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
pub(crate) const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

/// `ret` value for an errno.
pub(crate) fn ret_errno(errno: u32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno & libc::SECCOMP_RET_DATA)
}

/// A test on the low 32 bits of one syscall argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pred {
    /// Always true.
    Always,
    /// `arg & b == b` for some `b` in `bits`.
    AnyBit { arg: u8, bits: Vec<u32> },
    /// `arg & mask` is one of `values` (`mask` `u32::MAX` for a plain comparison).
    OneOf {
        arg: u8,
        mask: u32,
        values: Vec<u32>,
    },
    /// `arg` is none of `values`.
    NoneOf { arg: u8, values: Vec<u32> },
}

/// What one syscall number gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leaf {
    /// `ret k` whatever the arguments.
    Ret(u32),
    /// The first `(pred, ret)` whose `pred` holds gives `ret`; if none does, `otherwise`.
    Checks {
        checks: Vec<(Pred, u32)>,
        otherwise: u32,
    },
}

/// One filter's decisions: `arch` is checked first (anything else is killed), numbers in
/// `leaves` get their leaf, every other number (including x32's `nr | 0x40000000`, above every
/// native number) gets `ret default`.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub audit_arch: u32,
    /// `Some(bit)`: numbers with this bit set are another ABI under the same audit arch
    /// (x86_64's x32) and get `default` before the search.
    pub abi_bit: Option<u32>,
    pub default: u32,
    pub leaves: BTreeMap<u32, Leaf>,
}

/// Emits `plan` as one program.
pub(crate) fn emit(plan: &Plan) -> Result<Vec<Insn>, SeccompError> {
    let mut e = Emitter::new();
    let runs = runs(plan);
    let search = subtree(&mut e, &runs)?;
    let after_abi = match plan.abi_bit {
        Some(bit) => Target::Label(e.jump(BPF_JGE, bit, Target::Ret(plan.default), search)?),
        None => search,
    };
    fall_into(&mut e, after_abi)?;
    let load_nr = e.load(OFF_NR);
    e.jump(
        BPF_JEQ,
        plan.audit_arch,
        Target::Label(load_nr),
        Target::Ret(RET_KILL_PROCESS),
    )?;
    e.load(OFF_ARCH);
    e.finish()
}

/// Makes the next prepended instruction fall through to `t`.
fn fall_into(e: &mut Emitter, t: Target) -> Result<(), SeccompError> {
    match t {
        Target::Label(l) if e.is_top(l) => {}
        Target::Label(l) => {
            e.ja(l)?;
        }
        Target::Ret(k) => {
            e.ret(k);
        }
    }
    Ok(())
}

/// The number line cut into runs `(start, leaf)`: each run lasts until the next start; the
/// first starts at 0 and the last runs to `u32::MAX`.
fn runs(plan: &Plan) -> Vec<(u32, Leaf)> {
    let default = Leaf::Ret(plan.default);
    let mut out: Vec<(u32, Leaf)> = vec![(0, default.clone())];
    let add = |out: &mut Vec<(u32, Leaf)>, start: u32, leaf: &Leaf| match out.last_mut() {
        Some((_, l)) if l == leaf => {}
        // Only at 0: a later start is always past the last one.
        Some((s, l)) if *s == start => *l = leaf.clone(),
        _ => out.push((start, leaf.clone())),
    };
    for (&nr, leaf) in &plan.leaves {
        add(&mut out, nr, leaf);
        if let Some(after) = nr.checked_add(1)
            && !plan.leaves.contains_key(&after)
        {
            add(&mut out, after, &default);
        }
    }
    out
}

/// Emits the search over `runs` (sorted, non-empty) and returns where it starts.
fn subtree(e: &mut Emitter, runs: &[(u32, Leaf)]) -> Result<Target, SeccompError> {
    match runs {
        [] => Err(SeccompError::Malformed {
            reason: "empty run list while emitting",
        }),
        [(_, leaf)] => leaf_code(e, leaf),
        _ => {
            let mid = runs.len() / 2;
            let hi = subtree(e, &runs[mid..])?;
            let lo = subtree(e, &runs[..mid])?;
            Ok(Target::Label(e.jump(BPF_JGE, runs[mid].0, hi, lo)?))
        }
    }
}

fn leaf_code(e: &mut Emitter, leaf: &Leaf) -> Result<Target, SeccompError> {
    match leaf {
        Leaf::Ret(k) => Ok(Target::Ret(*k)),
        Leaf::Checks { checks, otherwise } => {
            let mut next = Target::Ret(*otherwise);
            for (pred, ret) in checks.iter().rev() {
                next = pred_code(e, pred, Target::Ret(*ret), next)?;
            }
            Ok(next)
        }
    }
}

/// Emits `if pred goto yes else goto no` and returns its start.
fn pred_code(
    e: &mut Emitter,
    pred: &Pred,
    yes: Target,
    no: Target,
) -> Result<Target, SeccompError> {
    let arg_off = |arg: &u8| OFF_ARGS + 8 * u32::from(*arg);
    match pred {
        Pred::Always => Ok(yes),
        // Degenerate lists: nothing to compare (and no instruction for `ld` to fall into).
        Pred::AnyBit { bits, .. } if bits.is_empty() => Ok(no),
        Pred::OneOf { values, .. } if values.is_empty() => Ok(no),
        Pred::NoneOf { values, .. } if values.is_empty() => Ok(yes),
        Pred::AnyBit { arg, bits } if bits.iter().all(|b| b.is_power_of_two()) => {
            // Single bits: "any of them set" is one `jset` of their union.
            let union = bits.iter().fold(0, |a, b| a | b);
            e.jump(BPF_JSET, union, yes, no)?;
            Ok(Target::Label(e.load(arg_off(arg))))
        }
        Pred::AnyBit { arg, bits } => {
            let mut next = no;
            for &b in bits.iter().rev() {
                e.jump(BPF_JEQ, b, yes, next)?;
                e.and(b);
                next = Target::Label(e.load(arg_off(arg)));
            }
            Ok(next)
        }
        Pred::OneOf { arg, mask, values } => {
            let mut next = no;
            for &v in values.iter().rev() {
                next = Target::Label(e.jump(BPF_JEQ, v, yes, next)?);
            }
            if *mask != u32::MAX {
                e.and(*mask);
            }
            Ok(Target::Label(e.load(arg_off(arg))))
        }
        Pred::NoneOf { arg, values } => {
            let mut next = yes;
            for &v in values.iter().rev() {
                next = Target::Label(e.jump(BPF_JEQ, v, no, next)?);
            }
            Ok(Target::Label(e.load(arg_off(arg))))
        }
    }
}
