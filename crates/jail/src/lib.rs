//! Linux isolation primitives for Stockade: namespaces, mounts, seccomp, Landlock, capabilities,
//! rlimits and cgroups. This crate is the one home of raw syscalls; every `unsafe` block carries a
//! SAFETY comment stating the invariant it relies on.
//!
//! What it guarantees: given a [`plan::SandboxPlan`], the launcher path ([`launch`], [`rootfs`],
//! [`confine`]) either produces a process in fresh user/mount/PID/network/IPC/UTS/cgroup namespaces,
//! in a pivoted root built only from the plan's binds, with no capabilities, `no_new_privs`,
//! Landlock and seccomp in force, or fails with an error naming the step. It does not decide
//! *what* to allow: that is the policy's and the runtime's job. Tested end to end by the
//! `stockade` binary's tests (tests/ at the workspace root) and per module by unit tests.

pub mod cgroup;
pub mod confine;
pub mod fanotify;
pub mod launch;
pub mod plan;
pub mod rootdir;
pub mod rootfs;
pub mod seccomp;
pub mod sys;
