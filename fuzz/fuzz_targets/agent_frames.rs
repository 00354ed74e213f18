//! Fuzz target `agent_frames`: the body and the properties it checks are
//! `stockade_fuzz_harness::agent_frames` (crates/fuzz-harness), which `cargo test` also replays.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stockade_fuzz_harness::alloc::PeakAlloc;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|data: &[u8]| stockade_fuzz_harness::agent_frames(data));
