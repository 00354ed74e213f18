//! Linux isolation primitives for Stockade: namespaces, mounts, seccomp, Landlock, capabilities,
//! rlimits and cgroups. This crate is the one home of raw syscalls; every `unsafe` block carries a
//! SAFETY comment stating the invariant it relies on.

pub mod cgroup;
pub mod seccomp;
