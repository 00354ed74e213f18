//! Unit tests of the table, the compiler and the byte format (no kernel needed).

use std::collections::BTreeSet;

use crate::seccomp::compile::{Arch, check_policy, compile};
use crate::seccomp::table::{ALLOWED, CONDITIONAL, DENIED, LAYER_ORDER};
use crate::seccomp::{SeccompError, SeccompProgram};

#[test]
fn policy_is_consistent_and_reasoned() {
    check_policy().unwrap();
    let denied: BTreeSet<_> = DENIED.iter().map(|d| d.name).collect();
    assert_eq!(
        denied.len(),
        DENIED.len(),
        "a name is listed twice in DENIED"
    );
    for d in DENIED {
        assert!(!d.reason.is_empty(), "{} has no reason", d.name);
    }
    for c in CONDITIONAL {
        assert!(!c.reason.is_empty(), "{} has no reason", c.name);
        assert!(LAYER_ORDER.contains(&c.errno));
    }
}

#[test]
fn every_name_exists_on_some_arch() {
    // Moby lists 32-bit names (chown32, *_time64...) that neither arch has; every name we deny
    // or check must exist on at least one, except the ones the table says are absent.
    for d in DENIED {
        let known = Arch::X86_64.nr(d.name).is_some() || Arch::Aarch64.nr(d.name).is_some();
        assert!(
            known || ["stime", "umount"].contains(&d.name),
            "{} is unknown",
            d.name
        );
    }
    for c in CONDITIONAL {
        assert!(
            Arch::X86_64.nr(c.name).is_some() && Arch::Aarch64.nr(c.name).is_some(),
            "{}",
            c.name
        );
    }
    let resolved = ALLOWED
        .iter()
        .filter(|n| Arch::X86_64.nr(n).is_some())
        .count();
    assert!(
        resolved > 250,
        "only {resolved} allowed names resolve on x86_64"
    );
}

#[test]
fn compiles_for_both_arches() {
    // aarch64 lacks the legacy calls (open, stat, fork...), hence the lower floor.
    for (arch, floor) in [(Arch::X86_64, 280), (Arch::Aarch64, 240)] {
        let c = compile(arch).unwrap();
        assert_eq!(c.filters.len(), 1);
        assert!(c.allowed > floor, "{arch:?}: {}", c.allowed);
        assert_eq!(c.conditional as usize, CONDITIONAL.len());
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn numbers_match_libc() {
    let pairs: &[(&str, libc::c_long)] = &[
        ("read", libc::SYS_read),
        ("clone", libc::SYS_clone),
        ("clone3", libc::SYS_clone3),
        ("ioctl", libc::SYS_ioctl),
        ("socket", libc::SYS_socket),
        ("socketpair", libc::SYS_socketpair),
        ("personality", libc::SYS_personality),
        ("execve", libc::SYS_execve),
        ("seccomp", libc::SYS_seccomp),
        ("prctl", libc::SYS_prctl),
        ("ptrace", libc::SYS_ptrace),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("mount", libc::SYS_mount),
        ("unshare", libc::SYS_unshare),
        ("bpf", libc::SYS_bpf),
        ("arch_prctl", libc::SYS_arch_prctl),
        ("rseq", libc::SYS_rseq),
        ("exit_group", libc::SYS_exit_group),
        ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    ];
    for (name, nr) in pairs {
        assert_eq!(Arch::X86_64.nr(name), Some(*nr), "{name}");
    }
}

#[test]
fn describe_names_the_facts() {
    let p = SeccompProgram::compile_default().unwrap();
    let d = p.describe();
    assert!(d.starts_with("bpf: 1 filter ("), "{d}");
    assert!(d.contains("default errno EPERM"), "{d}");
    assert!(d.contains("syscalls allowed"), "{d}");
}

#[test]
fn bytes_round_trip() {
    let p = SeccompProgram::compile_default().unwrap();
    let b = p.to_bytes();
    let q = SeccompProgram::from_bytes(&b).unwrap();
    assert_eq!(q.to_bytes(), b);
    assert_eq!(q.describe(), p.describe());
    assert_eq!(q.filters, p.filters);
}

fn malformed(b: &[u8]) -> bool {
    matches!(
        SeccompProgram::from_bytes(b),
        Err(SeccompError::Malformed { .. })
    )
}

#[test]
fn from_bytes_rejects_truncated_and_garbage() {
    let b = SeccompProgram::compile_default().unwrap().to_bytes();
    // Every strict prefix.
    for n in 0..b.len() {
        assert!(malformed(&b[..n]), "prefix of {n} bytes accepted");
    }
    // Trailing byte.
    let mut long = b.clone();
    long.push(0);
    assert!(malformed(&long));
    // Bad magic / version, including version 1 (four linear layers, before the search filter).
    let mut bad = b.clone();
    bad[7] ^= 0xff;
    assert!(malformed(&bad));
    let mut v1 = b.clone();
    v1[7] = 1;
    assert!(malformed(&v1));
    // Unknown arch.
    let mut bad = b.clone();
    bad[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert!(malformed(&bad));
    // Filter count 0 and huge.
    for count in [0u32, 17, u32::MAX] {
        let mut bad = b.clone();
        bad[24..28].copy_from_slice(&count.to_le_bytes());
        assert!(malformed(&bad), "count {count}");
    }
    // First filter length 0, over the kernel maximum, and u32::MAX.
    for len in [0u32, 4097, u32::MAX] {
        let mut bad = b.clone();
        bad[28..32].copy_from_slice(&len.to_le_bytes());
        assert!(malformed(&bad), "len {len}");
    }
    // Pseudo-random garbage, with and without a valid header: must not panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let len = (round * 7) % 300;
        let mut g: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if round % 2 == 0 && g.len() > 28 {
            g[..28].copy_from_slice(&b[..28]);
        }
        let _ = SeccompProgram::from_bytes(&g);
    }
}

#[test]
fn apply_refuses_without_no_new_privs() {
    // Run in a child: the check must fail before any filter is installed.
    let p = SeccompProgram::compile_default().unwrap();
    // SAFETY: the child only calls `apply` (allocation-free on this path) and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match p.apply() {
            Err(SeccompError::NoNewPrivs) => 0,
            Ok(()) => 1,
            Err(_) => 2,
        };
        // SAFETY: ends the forked child without running the harness's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` outlives the call.
    assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
}
