//! The previous compiler (seccompiler, one linear filter per errno layer), kept for tests
//! only: `tests/equiv.rs` checks that the emitted single filter returns exactly what these
//! four layers return together, for every syscall number and the argument patterns.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SeccompError;
use super::bpf::Insn;
use super::compile::{Arch, check_policy};
use super::table::{ALLOWED, CONDITIONAL, DEFAULT_ERRNO, LAYER_ORDER, When};

fn target(arch: Arch) -> TargetArch {
    match arch {
        Arch::X86_64 => TargetArch::x86_64,
        Arch::Aarch64 => TargetArch::aarch64,
    }
}

/// The old layers, oldest (installed first) to newest.
pub(crate) fn legacy_filters(arch: Arch) -> Result<Vec<Vec<Insn>>, SeccompError> {
    check_policy()?;
    let mut filters = Vec::with_capacity(1 + LAYER_ORDER.len());

    // Layer 0: the allowlist. Conditional syscalls are allowed here; their layers deny.
    let mut base: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let conditional_names = CONDITIONAL.iter().map(|c| c.name);
    for name in ALLOWED
        .iter()
        .chain(arch.extra_allowed())
        .copied()
        .chain(conditional_names)
    {
        if let Some(nr) = arch.nr(name) {
            base.insert(nr, Vec::new());
        }
    }
    filters.push(build(
        base,
        errno_action(DEFAULT_ERRNO),
        SeccompAction::Allow,
        arch,
        "base",
    )?);

    // Layers 1..: everything allowed except the conditional patterns with this errno.
    for &errno in LAYER_ORDER {
        let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
        for c in CONDITIONAL.iter().filter(|c| c.errno == errno) {
            let nr = arch.nr(c.name).ok_or(SeccompError::MissingSyscall {
                name: c.name,
                arch: arch.name(),
            })?;
            let entry = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), rules_for(c.when)?) {
                // `None` means "always": nothing can widen it.
                (None, _) => {}
                (Some(_), None) => *entry = None,
                (Some(list), Some(mut more)) => list.append(&mut more),
            }
        }
        let rules = rules
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        filters.push(build(
            rules,
            SeccompAction::Allow,
            errno_action(errno),
            arch,
            "conditional",
        )?);
    }
    Ok(filters
        .into_iter()
        .map(|f| {
            f.into_iter()
                .map(|i| Insn {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect()
        })
        .collect())
}

fn errno_action(errno: i32) -> SeccompAction {
    SeccompAction::Errno(errno.unsigned_abs())
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: Arch,
    layer: &'static str,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, target(arch))
        .map_err(|source| SeccompError::Compile { layer, source })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { layer, source })
}

/// The rules (OR of ANDs) that match `when`; `None` means the syscall always matches.
fn rules_for(when: When) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    let rule = |conds: Vec<(u8, SeccompCmpOp, u32)>| -> Result<SeccompRule, SeccompError> {
        let conds = conds
            .into_iter()
            .map(|(arg, op, v)| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, v.into()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SeccompError::Compile {
                layer: "conditional",
                source,
            })?;
        SeccompRule::new(conds).map_err(|source| SeccompError::Compile {
            layer: "conditional",
            source,
        })
    };
    let rules = match when {
        When::Always => return Ok(None),
        When::AnyBit { arg, bits } => bits
            .iter()
            .map(|&b| rule(vec![(arg, SeccompCmpOp::MaskedEq(b.into()), b)]))
            .collect::<Result<Vec<_>, _>>()?,
        When::OneOf { arg, values } => values
            .iter()
            .map(|&v| rule(vec![(arg, SeccompCmpOp::Eq, v)]))
            .collect::<Result<Vec<_>, _>>()?,
        When::MaskedOneOf { arg, mask, values } => values
            .iter()
            .map(|&v| rule(vec![(arg, SeccompCmpOp::MaskedEq(mask.into()), v)]))
            .collect::<Result<Vec<_>, _>>()?,
        When::NoneOf { arg, values } => {
            vec![rule(
                values.iter().map(|&v| (arg, SeccompCmpOp::Ne, v)).collect(),
            )?]
        }
    };
    Ok(Some(rules))
}
