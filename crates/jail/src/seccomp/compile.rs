//! Turns the data in `table.rs` into BPF programs with seccompiler, one layer per errno.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SeccompError;
use super::sysno;
use super::table::{
    ALLOWED, ALLOWED_AARCH64, ALLOWED_X86_64, CONDITIONAL, DEFAULT_ERRNO, DENIED, LAYER_ORDER, When,
};

/// `AUDIT_ARCH_X86_64` from `linux/audit.h`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64` from `linux/audit.h`.
pub(crate) const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// An architecture Stockade builds filters for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this process runs on.
    pub(crate) fn running() -> Result<Arch, SeccompError> {
        Arch::from_name(std::env::consts::ARCH)
    }

    pub(crate) fn from_name(name: &str) -> Result<Arch, SeccompError> {
        match name {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            _ => Err(SeccompError::UnsupportedArch {
                arch: name.to_owned(),
            }),
        }
    }

    pub(crate) fn from_audit(audit: u32) -> Option<Arch> {
        match audit {
            AUDIT_ARCH_X86_64 => Some(Arch::X86_64),
            AUDIT_ARCH_AARCH64 => Some(Arch::Aarch64),
            _ => None,
        }
    }

    pub(crate) fn audit(self) -> u32 {
        match self {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn target(self) -> TargetArch {
        match self {
            Arch::X86_64 => TargetArch::x86_64,
            Arch::Aarch64 => TargetArch::aarch64,
        }
    }

    fn numbers(self) -> &'static [(&'static str, i64)] {
        match self {
            Arch::X86_64 => sysno::X86_64,
            Arch::Aarch64 => sysno::AARCH64,
        }
    }

    fn extra_allowed(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => ALLOWED_X86_64,
            Arch::Aarch64 => ALLOWED_AARCH64,
        }
    }

    /// The syscall number of `name` on this architecture, if it exists there.
    pub(crate) fn nr(self, name: &str) -> Option<i64> {
        self.numbers()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, nr)| *nr)
    }
}

/// The compiled layers, oldest (installed first) to newest, plus counts for the audit record.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub filters: Vec<BpfProgram>,
    pub allowed: u32,
    pub conditional: u32,
}

/// Builds the base allowlist layer and one layer per conditional errno, in `LAYER_ORDER`.
pub(crate) fn compile(arch: Arch) -> Result<Compiled, SeccompError> {
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
    let allowed = u32::try_from(base.len()).unwrap_or(u32::MAX);
    filters.push(build(
        base,
        errno_action(DEFAULT_ERRNO),
        SeccompAction::Allow,
        arch,
        "base",
    )?);

    // Layers 1..: everything allowed except the conditional patterns with this errno.
    let mut conditional = 0u32;
    for &errno in LAYER_ORDER {
        let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
        for c in CONDITIONAL.iter().filter(|c| c.errno == errno) {
            let nr = arch.nr(c.name).ok_or(SeccompError::MissingSyscall {
                name: c.name,
                arch: arch.name(),
            })?;
            conditional += 1;
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
    Ok(Compiled {
        filters,
        allowed,
        conditional,
    })
}

/// Refuses a table that contradicts itself, so a careless edit fails at start-up.
pub(crate) fn check_policy() -> Result<(), SeccompError> {
    for d in DENIED {
        let also_allowed = ALLOWED
            .iter()
            .chain(ALLOWED_X86_64)
            .chain(ALLOWED_AARCH64)
            .copied()
            .chain(CONDITIONAL.iter().map(|c| c.name))
            .any(|n| n == d.name);
        if also_allowed {
            return Err(SeccompError::PolicyConflict { name: d.name });
        }
    }
    for c in CONDITIONAL {
        if !LAYER_ORDER.contains(&c.errno) {
            return Err(SeccompError::PolicyConflict { name: c.name });
        }
    }
    Ok(())
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
    let filter = SeccompFilter::new(rules, mismatch, matched, arch.target())
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
