//! The escape and exfiltration suite (issue 5): attacks run inside real sandboxes with the
//! default policy (and, for the network cases, an allowlist naming one local test host), against
//! canaries planted on the host. A case passes only if the attack is refused (its exact errno,
//! signal or exit), the canaries prove nothing got through, and the expected audit event is in
//! the trail — next to a control showing the same probe works where the wall is not.
//!
//! Run alone: `cargo test -p stockade --test escape`. See tests/escape/README.md for the cases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod environment;
mod filesystem;
mod kernel;
mod network;
mod resources;
