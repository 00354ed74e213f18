//! # stockade-fuzz-harness: what each fuzz target checks
//!
//! One `pub fn <target>(data: &[u8])` per parser that sees untrusted bytes. The libFuzzer
//! binaries in `fuzz/fuzz_targets/` are one-line wrappers around these functions, and the main
//! workspace builds this crate too, so `cargo test` on stable replays every file of
//! `fuzz/corpus/<target>/` (the seeds) and `fuzz/regressions/<target>/` (inputs that once
//! failed) through exactly the code the fuzzer runs. See `docs/fuzzing.md`.
//!
//! ## What it guarantees
//!
//! Each function returns normally when its input holds every property listed in its docs, and
//! panics (with the broken property in the message) otherwise; libFuzzer records a panic as a
//! crash. The properties are more than "no panic": round trips, agreement between two decoders
//! of the same bytes, decisions that never change when more bytes arrive, names that are really
//! in the input, allocation bounds. A function never does I/O beyond a socket pair of its own
//! (`agent_frames`), and never keeps state between calls, so a crash replays from its file alone.
//!
//! ## What it does not do
//!
//! It is not a test of the parsers' exact answers (their unit tests do that), and on stable Rust
//! the fuzzer runs without AddressSanitizer: the parsers are safe Rust (`#![forbid(unsafe_code)]`
//! except the agent's socket helper), so the properties, panics, overflow checks and debug
//! assertions are what finds bugs.
//!
//! ## How it is tested
//!
//! `tests/replay.rs` runs every target over its seeds, its regressions and a few hundred
//! deterministic mutations of each seed; the fuzz binaries run it for minutes (`scripts/fuzz`).

pub mod alloc;
mod dns;
mod domain;
mod frames;
mod http;
mod policy;
mod tls;

pub use dns::dns_message;
pub use domain::domain_pattern;
pub use frames::agent_frames;
pub use http::http_head;
pub use policy::policy;
pub use tls::tls_client_hello;

/// A fuzz target: its name (the directory under `fuzz/corpus/` and the binary's name) and its
/// body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `scripts/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    ("policy", policy),
    ("domain_pattern", domain_pattern),
    ("agent_frames", agent_frames),
    ("dns_message", dns_message),
    ("http_head", http_head),
    ("tls_client_hello", tls_client_hello),
];

/// True when `needle` occurs as a contiguous run of bytes in `hay` (an empty needle always does).
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A few cut points in `0..len` for the "a decision never changes when more bytes arrive"
/// checks: the middle, one byte short, and `extra` (clamped), without duplicates.
pub(crate) fn cuts(len: usize, extra: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = [len / 2, len.saturating_sub(1), len / 4]
        .into_iter()
        .chain(extra.iter().copied())
        .filter(|&k| k < len)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
