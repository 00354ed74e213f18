//! A classic-BPF interpreter for seccomp programs (the subset seccompiler and `emit.rs` use),
//! and the kernel's rule for combining stacked filters. It panics on anything the kernel would
//! reject: an unknown opcode, a load outside `seccomp_data`, a jump past the end, running off
//! the end.

use crate::seccomp::bpf::{
    BPF_ABS, BPF_ALU, BPF_AND, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET,
    BPF_W, Insn,
};

const BPF_JGT: u16 = 0x20;

/// `struct seccomp_data` as the filter sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Data {
    pub nr: u32,
    pub arch: u32,
    pub ip: u64,
    pub args: [u64; 6],
}

impl Data {
    /// The 32-bit word at byte offset `off` (little-endian layout, as on x86_64 and aarch64).
    fn word(&self, off: u32) -> u32 {
        assert!(off.is_multiple_of(4) && off < 64, "load at offset {off}");
        match off {
            0 => self.nr,
            4 => self.arch,
            8 => self.ip as u32,
            12 => (self.ip >> 32) as u32,
            _ => {
                let a = self.args[(off as usize - 16) / 8];
                if off.is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
        }
    }
}

/// Runs `prog` on `d` and returns its `ret` value.
pub(super) fn run(prog: &[Insn], d: &Data) -> u32 {
    run_counted(prog, d).0
}

/// Runs `prog` on `d`; returns its `ret` value and how many instructions ran.
pub(super) fn run_counted(prog: &[Insn], d: &Data) -> (u32, usize) {
    assert!(
        !prog.is_empty() && prog.len() <= 4096,
        "length {}",
        prog.len()
    );
    let mut a: u32 = 0;
    let mut pc = 0usize;
    let mut steps = 0;
    loop {
        steps += 1;
        let i = prog
            .get(pc)
            .unwrap_or_else(|| panic!("ran off the end at {pc}"));
        let next = pc + 1;
        let jump = |off: usize| {
            let t = next + off;
            assert!(t < prog.len(), "jump from {pc} to {t} past the end");
            t
        };
        pc = match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                a = d.word(i.k);
                next
            }
            c if c == BPF_ALU | BPF_AND | BPF_K => {
                a &= i.k;
                next
            }
            c if c == BPF_JMP | BPF_JA => jump(i.k as usize),
            c if c == BPF_RET | BPF_K => return (i.k, steps),
            c => {
                let taken = match c & !(BPF_JMP | BPF_K) {
                    _ if c & 0x07 != BPF_JMP || c & 0x08 != BPF_K => panic!("opcode {c:#x}"),
                    BPF_JEQ => a == i.k,
                    BPF_JGT => a > i.k,
                    BPF_JGE => a >= i.k,
                    BPF_JSET => a & i.k != 0,
                    _ => panic!("opcode {c:#x} at {pc}"),
                };
                jump(usize::from(if taken { i.jt } else { i.jf }))
            }
        };
    }
}

/// What the kernel returns for stacked `filters` (installation order): it runs the newest
/// first and keeps a later result only if its action is strictly stronger (`ACTION_ONLY` as
/// `s32`, smaller is stronger), starting from ALLOW (`kernel/seccomp.c`,
/// `seccomp_run_filters`).
pub(super) fn run_stack(filters: &[Vec<Insn>], d: &Data) -> u32 {
    let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
    let mut ret = libc::SECCOMP_RET_ALLOW;
    for f in filters.iter().rev() {
        let cur = run(f, d);
        if action(cur) < action(ret) {
            ret = cur;
        }
    }
    ret
}
