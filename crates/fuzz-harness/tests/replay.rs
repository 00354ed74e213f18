//! Replays every committed fuzz input through its target on stable: the seeds in
//! `fuzz/corpus/<target>/`, the inputs that once failed in `fuzz/regressions/<target>/`, and a
//! few hundred deterministic mutations of each seed. A new file in either directory is picked up
//! without touching this test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use stockade_fuzz_harness::alloc::{self, PeakAlloc};
use stockade_fuzz_harness::{TARGETS, Target};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Mutated copies of each seed (byte flips, insertions, deletions, truncations).
const MUTATIONS: usize = 300;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn run(target: &Target, what: &str, data: &[u8]) {
    let (name, f) = *target;
    if catch_unwind(AssertUnwindSafe(|| f(data))).is_err() {
        panic!(
            "fuzz target {name} fails on {what}; reproduce with \
             `scripts/fuzz repro {name} FILE` or this test"
        );
    }
}

/// A small deterministic generator (xorshift64*), so a failing mutation reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let i = rng.below(m.len() + 1);
        match rng.below(4) {
            0 if i < m.len() => m[i] = rng.next() as u8,
            1 => m.insert(i, rng.next() as u8),
            2 if i < m.len() => {
                m.remove(i);
            }
            _ => m.truncate(i),
        }
    }
    m
}

fn replay(name: &str) {
    let target = TARGETS.iter().find(|t| t.0 == name).unwrap();
    let seeds = files(&fuzz_dir().join("corpus").join(name));
    assert!(
        seeds.len() >= 3,
        "fuzz/corpus/{name}/ should hold at least 3 seed inputs, found {}",
        seeds.len()
    );
    for (path, bytes) in &seeds {
        run(target, &path.display().to_string(), bytes);
    }
    for (path, bytes) in files(&fuzz_dir().join("regressions").join(name)) {
        run(target, &path.display().to_string(), &bytes);
    }
    let mut rng = Rng(0x5eed_f00d_cafe_0001);
    for (path, bytes) in &seeds {
        for i in 0..MUTATIONS {
            let m = mutate(bytes, &mut rng);
            run(
                target,
                &format!("mutation {i} of {} ({m:?})", path.display()),
                &m,
            );
        }
    }
}

#[test]
fn the_allocation_counter_is_installed() {
    alloc::reset();
    let v: Vec<u8> = Vec::with_capacity(12345);
    assert!(alloc::installed());
    assert!(alloc::largest() >= 12345);
    drop(v);
}

#[test]
fn every_target_has_a_test_here() {
    let tested = [
        "policy",
        "domain_pattern",
        "agent_frames",
        "dns_message",
        "http_head",
        "tls_client_hello",
    ];
    let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(names, tested);
}

#[test]
fn policy() {
    replay("policy");
}

#[test]
fn domain_pattern() {
    replay("domain_pattern");
}

#[test]
fn agent_frames() {
    replay("agent_frames");
}

#[test]
fn dns_message() {
    replay("dns_message");
}

#[test]
fn http_head() {
    replay("http_head");
}

#[test]
fn tls_client_hello() {
    replay("tls_client_hello");
}
