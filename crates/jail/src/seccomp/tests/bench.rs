//! Timing of the filter (ignored by default; run as root with
//! `cargo test --release -p stockade-jail seccomp::tests::bench -- --ignored --nocapture`):
//! instruction count, `apply()` time, and 100k syscalls in a forked child, for: no filter, a
//! one-instruction ALLOW filter (the kernel's fixed cost of having seccomp at all), the former
//! four seccompiler layers, and the current filter. `getppid` never depends on its arguments,
//! so the kernel's per-arch action cache (Linux 5.11+) may skip the filters for it;
//! `personality(0xffffffff)` has an argument check, so every filter runs on every call.
//! Prints medians; asserts nothing about speed.

use crate::seccomp::SeccompProgram;
use crate::seccomp::bpf::{BPF_K, BPF_RET, Insn};
use crate::seccomp::compile::Arch;
use crate::seccomp::legacy::legacy_filters;

const CALLS: u64 = 100_000;
const ROUNDS: usize = 41;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Forks; the child optionally applies `program`, then times `CALLS` getppid() and reports
/// `[apply_ns, loop_ns]` through a pipe. Only raw syscalls run in the child.
fn one_round(program: Option<&SeccompProgram>, nr: libc::c_long, arg: libc::c_long) -> [u64; 2] {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe(2) requires.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes raw syscalls, runs `apply` (allocation-free) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: flag on this (only) thread of the child.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            // SAFETY: ends the child without the parent's exit handlers.
            unsafe { libc::_exit(2) };
        }
        let t0 = now_ns();
        if let Some(p) = program
            && p.apply().is_err()
        {
            // SAFETY: as above.
            unsafe { libc::_exit(3) };
        }
        let t1 = now_ns();
        for _ in 0..CALLS {
            // SAFETY: getppid ignores its arguments; personality(0xffffffff) only queries.
            unsafe { libc::syscall(nr, arg) };
        }
        let t2 = now_ns();
        let out = [t1 - t0, t2 - t1];
        // SAFETY: writes the 16 bytes of `out`, which lives until `_exit`, to our pipe end.
        unsafe {
            libc::write(fds[1], out.as_ptr().cast(), 16);
            libc::_exit(0)
        };
    }
    // SAFETY: closes our copy of the write end, which we own.
    unsafe { libc::close(fds[1]) };
    let mut out = [0u64; 2];
    // SAFETY: reads at most 16 bytes into `out`, which is 16 bytes long; we own `fds[0]`.
    let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), 16) };
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` outlives the call; we own `fds[0]`.
    unsafe {
        libc::waitpid(pid, &raw mut status, 0);
        libc::close(fds[0]);
    }
    assert_eq!(n, 16, "child failed, status {status:#x}");
    out
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
#[ignore = "timing; run by hand with --ignored --nocapture"]
fn bench_filter() {
    let new = SeccompProgram::compile_default().unwrap();
    let arch = Arch::running().unwrap();
    let with = |filters: Vec<Vec<Insn>>| SeccompProgram {
        filters,
        ..new.clone()
    };
    let allow = with(vec![vec![Insn {
        code: BPF_RET | BPF_K,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }]]);
    let old = with(legacy_filters(arch).unwrap());
    let variants: [(&str, Option<&SeccompProgram>); 4] = [
        ("no filter", None),
        ("ALLOW-only filter", Some(&allow)),
        ("old: 4 linear layers", Some(&old)),
        ("new: 1 search filter", Some(&new)),
    ];
    let calls = [
        ("getppid", libc::SYS_getppid, 0),
        ("personality(query)", libc::SYS_personality, 0xffff_ffff),
    ];
    // samples[variant][call] = rounds of [apply_ns, loop_ns]; variants interleaved per round
    // so drift on a shared host hits them alike.
    let mut samples = vec![vec![Vec::new(); calls.len()]; variants.len()];
    for _ in 0..ROUNDS {
        for (v, (_, p)) in variants.iter().enumerate() {
            for (c, (_, nr, arg)) in calls.iter().enumerate() {
                samples[v][c].push(one_round(*p, *nr, *arg));
            }
        }
    }
    println!(
        "{CALLS} calls per round, median of {ROUNDS}; wire bytes: old {}, new {}",
        old.to_bytes().len(),
        new.to_bytes().len()
    );
    let base: Vec<u64> = (0..calls.len())
        .map(|c| median(samples[0][c].iter().map(|r| r[1]).collect()))
        .collect();
    for (v, (name, p)) in variants.iter().enumerate() {
        let insns: Vec<usize> = p.map_or(vec![], |p| p.filters.iter().map(Vec::len).collect());
        let apply = median(samples[v][0].iter().map(|r| r[0]).collect());
        let mut line = format!(
            "{name:<21} insns {insns:?}  apply {:.1} us",
            apply as f64 / 1e3
        );
        for (c, (call, _, _)) in calls.iter().enumerate() {
            let ns = median(samples[v][c].iter().map(|r| r[1]).collect());
            line += &format!(
                "  {call}: {:.2} ms ({:+.0} ns/call)",
                ns as f64 / 1e6,
                (ns as f64 - base[c] as f64) / CALLS as f64
            );
        }
        println!("{line}");
    }
}
