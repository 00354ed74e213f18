//! Fuzz-ish: deterministic pseudo-random inputs (a 64-bit LCG) that must never panic. Random
//! bytes, random TOML-ish tokens, and random byte mutations of the sample policies.
//! A real `cargo fuzz` target can reuse `Policy::from_toml` as its entry point.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stockade_policy::{ByteSize, Policy, parse_duration};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        // Knuth's MMIX constants.
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn exercise(src: &str) {
    if let Ok(p) = Policy::from_toml(src, "fuzz.toml") {
        // Anything accepted is valid, prints, and reads back the same.
        p.validate().unwrap();
        let back = Policy::from_toml(&p.to_toml(), "again.toml").unwrap();
        assert_eq!(back, p);
        let _ = p.digest();
    } else if let Err(e) = Policy::from_toml(src, "fuzz.toml") {
        assert!(!e.0.is_empty());
        let _ = e.to_string();
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut r = Lcg(1);
    for _ in 0..3000 {
        let len = r.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        let s = String::from_utf8_lossy(&bytes);
        exercise(&s);
        let _ = s.parse::<ByteSize>();
        let _ = parse_duration(&s);
    }
}

#[test]
fn random_tokens_never_panic() {
    const TOKENS: &[&str] = &[
        "[limits]",
        "[process]",
        "[filesystem]",
        "[workspace]",
        "[security]",
        "[network]",
        "[network.hosts]",
        "allow",
        "deny",
        "allow_private",
        "allow_open",
        "hosts",
        "\"*.pypi.org\"",
        "\"a.example:8443\"",
        "\"10.0.0.0/8\"",
        "\"fd00::/8\"",
        "\"127.0.0.1\"",
        "\"allowlist\"",
        "\"open\"",
        "[audit]",
        "enabled",
        "redact_env",
        "sensitive",
        "[[x]]",
        "memory",
        "pids",
        "cpus",
        "timeout",
        "env",
        "env_pass",
        "mounts",
        "etc_extra",
        "host",
        "path",
        "mode",
        "uid",
        "hostname",
        "seccomp",
        "version",
        "level",
        "trust",
        "untrusted",
        "microvm",
        "allow_emulated",
        "=",
        " = ",
        "\n",
        "\"",
        "'",
        "[",
        "]",
        "{",
        "}",
        ",",
        ".",
        "1",
        "-1",
        "0",
        "1e999",
        "nan",
        "inf",
        "99999999999999999999",
        "\"1GiB\"",
        "\"10m\"",
        "\"/proc\"",
        "\"..\"",
        "\"ro\"",
        "\"rw\"",
        "true",
        "false",
        "\\u0000",
        "é",
        "#",
        "1979-05-27",
        "\"\"\"",
        "'''",
        "\t",
        "\r\n",
        "limits.memory",
        "\"shadow\"",
        "{ host = \"/a\" }",
    ];
    let mut r = Lcg(7);
    for _ in 0..3000 {
        let n = r.below(30);
        let s: String = (0..n).map(|_| TOKENS[r.below(TOKENS.len())]).collect();
        exercise(&s);
        let _ = s.parse::<ByteSize>();
        let _ = parse_duration(&s);
    }
}

#[test]
fn mutated_policies_never_panic() {
    let base = Policy::default().to_toml().into_bytes();
    let strict = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../policies/strict.toml"
    ))
    .unwrap();
    let allowlist = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../policies/allowlist.toml"
    ))
    .unwrap();
    let mut r = Lcg(42);
    for i in 0..4500 {
        let mut b = match i % 3 {
            0 => base.clone(),
            1 => strict.clone(),
            _ => allowlist.clone(),
        };
        for _ in 0..=r.below(8) {
            let at = r.below(b.len());
            match r.below(3) {
                0 => b[at] = r.next() as u8,
                1 => {
                    b.remove(at);
                }
                _ => b.insert(at, b"=[]{}\"'.,#\n0-9aZ\\"[r.below(17)]),
            }
        }
        exercise(&String::from_utf8_lossy(&b));
    }
}
