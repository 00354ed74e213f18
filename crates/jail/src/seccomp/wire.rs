//! The byte format the supervisor uses to hand a compiled program to the launcher.
//!
//! All integers little-endian:
//! `magic (8) | audit_arch u32 | default_errno u32 | allowed u32 | conditional u32 |
//!  filter_count u32 | filter_count x (len u32 | len x (code u16, jt u8, jf u8, k u32))`.
//! The parser checks every length before reading and rejects trailing bytes; the kernel
//! verifies the instructions themselves when the program is installed.

use super::bpf::Insn;
use super::compile::Arch;
use super::{SeccompError, SeccompProgram};

/// Version 2: one binary-search filter (version 1 carried four linear layers). The layout is
/// unchanged; the version makes a launcher refuse a program from a different build.
const MAGIC: &[u8; 8] = b"STKSCMP\x02";
/// More layers than any policy we build; bounds the work a hostile input can ask for.
pub(crate) const MAX_FILTERS: usize = 16;
/// The kernel's `BPF_MAXINSNS`.
pub(crate) const MAX_INSNS: usize = 4096;
const INSN_BYTES: usize = 8;

pub(crate) fn encode(p: &SeccompProgram) -> Vec<u8> {
    let insns: usize = p.filters.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(28 + 4 * p.filters.len() + INSN_BYTES * insns);
    out.extend_from_slice(MAGIC);
    for v in [p.arch.audit(), p.default_errno, p.allowed, p.conditional] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    // Lengths are bounded by MAX_FILTERS and MAX_INSNS when the program is built or parsed.
    out.extend_from_slice(&(p.filters.len() as u32).to_le_bytes());
    for f in &p.filters {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        for i in f {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
    }
    out
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SeccompError> {
        if self.rest.len() < n {
            return Err(SeccompError::Malformed { reason: what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SeccompError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<SeccompProgram, SeccompError> {
    let mut r = Reader { rest: bytes };
    if r.take(MAGIC.len(), "truncated magic")? != MAGIC {
        return Err(SeccompError::Malformed {
            reason: "bad magic or version",
        });
    }
    let audit = r.u32("truncated header")?;
    let arch = Arch::from_audit(audit).ok_or(SeccompError::Malformed {
        reason: "unknown arch",
    })?;
    let default_errno = r.u32("truncated header")?;
    let allowed = r.u32("truncated header")?;
    let conditional = r.u32("truncated header")?;
    let count = r.u32("truncated header")? as usize;
    if count == 0 || count > MAX_FILTERS {
        return Err(SeccompError::Malformed {
            reason: "filter count out of range",
        });
    }
    let mut filters = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32("truncated filter length")? as usize;
        if len == 0 || len > MAX_INSNS {
            return Err(SeccompError::Malformed {
                reason: "filter length out of range",
            });
        }
        let raw = r.take(len * INSN_BYTES, "truncated filter")?;
        let prog: Vec<Insn> = raw
            .chunks_exact(INSN_BYTES)
            .map(|c| Insn {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        filters.push(prog);
    }
    if !r.rest.is_empty() {
        return Err(SeccompError::Malformed {
            reason: "trailing bytes",
        });
    }
    Ok(SeccompProgram {
        arch,
        filters,
        default_errno,
        allowed,
        conditional,
    })
}
