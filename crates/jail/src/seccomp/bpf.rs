//! Classic BPF for seccomp: the instruction type and a small emitter that builds a program
//! back to front, so every jump is forward and its distance is known when it is written.
//!
//! Conditional jumps have 8-bit offsets (`jt`/`jf` ≤ 255). The emitter keeps them in range on
//! its own: a far `ret` is duplicated next to the jump (one instruction, no extra hop), and a
//! far label is reached through a `BPF_JA` trampoline (32-bit offset).

use std::collections::HashMap;

use super::SeccompError;

/// One classic BPF instruction; the same layout as the kernel's (and libc's) `struct
/// sock_filter`, so a slice of it can be handed to `seccomp(2)` as is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcode parts, from `linux/bpf_common.h` (libc's constants are `u32`; the field is `u16`).
pub(crate) const BPF_LD: u16 = 0x00;
pub(crate) const BPF_ALU: u16 = 0x04;
pub(crate) const BPF_JMP: u16 = 0x05;
pub(crate) const BPF_RET: u16 = 0x06;
pub(crate) const BPF_W: u16 = 0x00;
pub(crate) const BPF_ABS: u16 = 0x20;
pub(crate) const BPF_AND: u16 = 0x50;
pub(crate) const BPF_JA: u16 = 0x00;
pub(crate) const BPF_JEQ: u16 = 0x10;
pub(crate) const BPF_JGE: u16 = 0x30;
pub(crate) const BPF_JSET: u16 = 0x40;
pub(crate) const BPF_K: u16 = 0x00;

/// `struct seccomp_data` offsets: `nr`, `arch`, then `args[6]` (u64 each) from 16. Both
/// architectures we build for are little-endian, so an argument's low 32 bits come first.
pub(crate) const OFF_NR: u32 = 0;
pub(crate) const OFF_ARCH: u32 = 4;
pub(crate) const OFF_ARGS: u32 = 16;

/// Longest distance a conditional jump can encode.
const MAX_COND: usize = u8::MAX as usize;
/// Instructions `jump` may emit (materialised targets) between checking a distance and
/// writing the jump; distances keep this much slack.
const SLACK: usize = 2;

/// A place in the program, counted from its END (0 = the last instruction), so it stays
/// valid while earlier code is prepended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// Where a jump goes: code already emitted, or "return this value" (emitted on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Label(Label),
    Ret(u32),
}

/// Builds a program from its last instruction to its first.
#[derive(Debug, Default)]
pub(crate) struct Emitter {
    rev: Vec<Insn>,
    /// The most recently emitted (closest) `ret` of each value.
    rets: HashMap<u32, Label>,
}

impl Emitter {
    pub(crate) fn new() -> Emitter {
        Emitter::default()
    }

    /// True if `l` is the most recently emitted instruction (a prepended one falls into it).
    pub(crate) fn is_top(&self, l: Label) -> bool {
        l.0 + 1 == self.rev.len()
    }

    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> Label {
        self.rev.push(Insn { code, jt, jf, k });
        Label(self.rev.len() - 1)
    }

    /// Distance a jump placed next would need to reach `l`.
    fn distance(&self, l: Label) -> usize {
        self.rev.len() - l.0 - 1
    }

    /// Prepends a `ret k`.
    pub(crate) fn ret(&mut self, k: u32) -> Label {
        let l = self.push(BPF_RET | BPF_K, 0, 0, k);
        self.rets.insert(k, l);
        l
    }

    /// Prepends `A = seccomp_data[off]` (32 bits); it falls through to the code after it.
    pub(crate) fn load(&mut self, off: u32) -> Label {
        self.push(BPF_LD | BPF_W | BPF_ABS, 0, 0, off)
    }

    /// Prepends `A &= k`; it falls through to the code after it.
    pub(crate) fn and(&mut self, k: u32) -> Label {
        self.push(BPF_ALU | BPF_AND | BPF_K, 0, 0, k)
    }

    /// Makes `t` reachable from a conditional jump about to be emitted (within 255 even after
    /// the other target is materialised), duplicating a far `ret` or adding a `ja` trampoline.
    fn near(&mut self, t: Target) -> Result<Label, SeccompError> {
        match t {
            Target::Ret(k) => match self.rets.get(&k) {
                Some(&l) if self.distance(l) + SLACK <= MAX_COND => Ok(l),
                _ => Ok(self.ret(k)),
            },
            Target::Label(l) if self.distance(l) + SLACK <= MAX_COND => Ok(l),
            Target::Label(l) => self.ja(l),
        }
    }

    /// Prepends an unconditional jump to `l` (32-bit offset).
    pub(crate) fn ja(&mut self, l: Label) -> Result<Label, SeccompError> {
        let d = u32::try_from(self.distance(l)).map_err(|_| too_long())?;
        Ok(self.push(BPF_JMP | BPF_JA, 0, 0, d))
    }

    /// Prepends `if A <op> k goto jt else goto jf` (`op` one of `BPF_JEQ`, `BPF_JGE`,
    /// `BPF_JSET`).
    pub(crate) fn jump(
        &mut self,
        op: u16,
        k: u32,
        jt: Target,
        jf: Target,
    ) -> Result<Label, SeccompError> {
        let t = self.near(jt)?;
        let f = if jf == jt { t } else { self.near(jf)? };
        let jt = u8::try_from(self.distance(t)).map_err(|_| too_long())?;
        let jf = u8::try_from(self.distance(f)).map_err(|_| too_long())?;
        Ok(self.push(BPF_JMP | op | BPF_K, jt, jf, k))
    }

    /// The program, first instruction first. It must end in a `ret` (the kernel requires it).
    pub(crate) fn finish(mut self) -> Result<Vec<Insn>, SeccompError> {
        match self.rev.first() {
            Some(i) if i.code == BPF_RET | BPF_K => {}
            _ => {
                return Err(SeccompError::Malformed {
                    reason: "emitted program does not end in ret",
                });
            }
        }
        self.rev.reverse();
        Ok(self.rev)
    }
}

fn too_long() -> SeccompError {
    SeccompError::Malformed {
        reason: "jump offset out of range while emitting",
    }
}
