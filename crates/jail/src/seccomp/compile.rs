//! Turns the data in `table.rs` into one decision per syscall number ([`Plan`]) and emits it
//! as a single BPF filter (`emit.rs`).
//!
//! The decision reproduces what the previous four stacked layers (allowlist, then one layer per
//! errno in `LAYER_ORDER`) returned together under the kernel's rule (newest filter's errno
//! wins, any errno beats ALLOW): a syscall outside the allow lists gets `DEFAULT_ERRNO`; an
//! allowed one with argument checks tries the checks of the NEWEST layer first (`LAYER_ORDER`
//! reversed), the first pattern that matches gives its errno, and none matching means ALLOW.

use std::collections::BTreeMap;

use super::SeccompError;
use super::bpf::Insn;
use super::emit::{self, Leaf, Plan, Pred, RET_ALLOW, ret_errno};
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

    pub(crate) fn numbers(self) -> &'static [(&'static str, i64)] {
        match self {
            Arch::X86_64 => sysno::X86_64,
            Arch::Aarch64 => sysno::AARCH64,
        }
    }

    pub(crate) fn extra_allowed(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => ALLOWED_X86_64,
            Arch::Aarch64 => ALLOWED_AARCH64,
        }
    }

    /// Syscall numbers with this bit set belong to another ABI that shares the audit arch
    /// (x86_64's x32); they get the default errno.
    pub(crate) fn abi_bit(self) -> Option<u32> {
        match self {
            Arch::X86_64 => Some(0x4000_0000),
            Arch::Aarch64 => None,
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

/// The compiled filters, oldest (installed first) to newest, plus counts for the audit record.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub filters: Vec<Vec<Insn>>,
    pub allowed: u32,
    pub conditional: u32,
}

/// Builds the single filter for `arch`.
pub(crate) fn compile(arch: Arch) -> Result<Compiled, SeccompError> {
    let (plan, allowed, conditional) = plan(arch)?;
    Ok(Compiled {
        filters: vec![emit::emit(&plan)?],
        allowed,
        conditional,
    })
}

/// The decision for every syscall number of `arch`, with the allowed and checked counts.
pub(crate) fn plan(arch: Arch) -> Result<(Plan, u32, u32), SeccompError> {
    check_policy()?;
    let mut leaves: BTreeMap<u32, Leaf> = BTreeMap::new();
    let conditional_names = CONDITIONAL.iter().map(|c| c.name);
    for name in ALLOWED
        .iter()
        .chain(arch.extra_allowed())
        .copied()
        .chain(conditional_names)
    {
        if let Some(nr) = arch.nr(name) {
            leaves.insert(number(nr, name)?, Leaf::Ret(RET_ALLOW));
        }
    }
    let allowed = u32::try_from(leaves.len()).unwrap_or(u32::MAX);

    // Newest layer first: between two errnos the kernel reports the newest filter's.
    let mut conditional = 0u32;
    for &errno in LAYER_ORDER.iter().rev() {
        for c in CONDITIONAL.iter().filter(|c| c.errno == errno) {
            let nr = arch.nr(c.name).ok_or(SeccompError::MissingSyscall {
                name: c.name,
                arch: arch.name(),
            })?;
            conditional += 1;
            let check = (pred(c.when), ret_errno(errno.unsigned_abs()));
            match leaves
                .entry(number(nr, c.name)?)
                .or_insert(Leaf::Ret(RET_ALLOW))
            {
                Leaf::Checks { checks, .. } => checks.push(check),
                leaf @ Leaf::Ret(_) => {
                    *leaf = Leaf::Checks {
                        checks: vec![check],
                        otherwise: RET_ALLOW,
                    }
                }
            }
        }
    }
    let plan = Plan {
        audit_arch: arch.audit(),
        abi_bit: arch.abi_bit(),
        default: ret_errno(DEFAULT_ERRNO.unsigned_abs()),
        leaves,
    };
    Ok((plan, allowed, conditional))
}

fn number(nr: i64, name: &'static str) -> Result<u32, SeccompError> {
    u32::try_from(nr).map_err(|_| SeccompError::PolicyConflict { name })
}

fn pred(when: When) -> Pred {
    match when {
        When::Always => Pred::Always,
        When::AnyBit { arg, bits } => Pred::AnyBit {
            arg,
            bits: bits.to_vec(),
        },
        When::OneOf { arg, values } => Pred::OneOf {
            arg,
            mask: u32::MAX,
            values: values.to_vec(),
        },
        When::MaskedOneOf { arg, mask, values } => Pred::OneOf {
            arg,
            mask,
            values: values.to_vec(),
        },
        When::NoneOf { arg, values } => Pred::NoneOf {
            arg,
            values: values.to_vec(),
        },
    }
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
