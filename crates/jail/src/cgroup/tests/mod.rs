//! Unit tests on a fake cgroupfs tree, and host tests on the real one.

mod discovery;
mod fake;
mod fake_v1;
mod fake_v2;
mod host;
