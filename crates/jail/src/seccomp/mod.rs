//! The seccomp-bpf filter: policy kept as data (`table.rs`), compiled once by the supervisor,
//! shipped to the launcher as bytes, installed between fork and exec.
//!
//! # What it guarantees
//!
//! On x86_64 and aarch64, once [`SeccompProgram::apply`] returns `Ok`, the calling thread and
//! everything it execs or forks:
//!
//! * may make only the syscalls of Docker/Moby's default profile allowlist; anything else
//!   returns `EPERM` (the default action);
//! * additionally gets `EPERM` for the syscalls in `table::DENIED` even where Docker allows
//!   them (ptrace, process_vm_*, bpf, perf_event_open, userfaultfd, io_uring_*, the keyring,
//!   the whole mount API, unshare/setns, kexec, modules, file handles, acct, swap, reboot,
//!   syslog, quotas, clock setting, lookup_dcookie, vhangup, nfsservctl);
//! * gets the errno of `table::CONDITIONAL` for these argument patterns: `clone` with any
//!   `CLONE_NEW*` flag → `EPERM`; `clone3` → `ENOSYS` (glibc then falls back to `clone`);
//!   `ioctl` `TIOCSTI`/`TIOCLINUX` (low 32 bits of the command) → `EPERM`; `socket`/`socketpair`
//!   outside `AF_UNIX`/`AF_INET`/`AF_INET6` → `EAFNOSUPPORT`; `socket` of type `SOCK_RAW` or
//!   `SOCK_PACKET` → `EPERM`; `personality` other than 0, 8, 0x20000, 0x20008, 0xffffffff →
//!   `EPERM`;
//! * is killed (`SECCOMP_RET_KILL_PROCESS`, SIGSYS) for a syscall of another audit
//!   architecture, e.g. the i386 ABI through `int 0x80` on x86_64 (the filter checks
//!   `seccomp_data.arch` first);
//! * gets `EPERM` for x32 syscalls (`nr | 0x40000000`): they carry `AUDIT_ARCH_X86_64`, so the
//!   arch check passes them; the filter then sends every number with that bit to the default
//!   errno before the search.
//!
//! # One filter, and which errno wins
//!
//! The program is a single filter (`compile.rs` decides per syscall number, `emit.rs` writes
//! it): arch check, `ld nr`, then a balanced binary search over runs of numbers with the same
//! decision, down to a `ret` or to the argument checks of that syscall. A syscall costs about a
//! dozen instructions, and `apply` has the kernel verify and JIT one short program.
//!
//! It returns what Stockade's former four stacked seccompiler filters returned together (the
//! tests interpret both and compare, for every number and the argument patterns): the
//! allowlist (default `EPERM`), then one layer per errno in `table::LAYER_ORDER` (`EPERM`,
//! `EAFNOSUPPORT`, `ENOSYS`). Per seccomp(2) and `kernel/seccomp.c` `seccomp_run_filters()`,
//! the newest filter's errno won between two errnos and any errno beat ALLOW; the single
//! filter therefore tries a syscall's checks newest layer first: `socket(AF_PACKET, SOCK_RAW,
//! 0)` → `EAFNOSUPPORT`, not `EPERM`.
//!
//! # What it does not do
//!
//! * It is a layer on top of namespaces, Landlock, capabilities and cgroups, not a sandbox by
//!   itself: an allowed syscall (open, connect, ...) is confined by those, not here.
//! * BPF sees only syscall registers: pointers (paths, `clone3` arguments, `sockaddr`s,
//!   `ioctl` payloads) cannot be inspected, which is why `clone3` is refused outright.
//! * It does not apply to other threads (no TSYNC): call [`SeccompProgram::apply`] in a
//!   single-threaded process (the launcher, between fork and exec).
//! * It requires `no_new_privs` (set by the caller; `apply` checks and refuses otherwise).
//! * Only x86_64 and aarch64 are built; other architectures are an error, never "no filter".
//!
//! # How it is tested
//!
//! `tests/`: for every denial a child process (forked after compiling; only raw syscalls in the
//! child) sets `no_new_privs`, applies the program and makes the syscall with arguments for
//! which an unfiltered root process gets a different, specific result; the parent asserts the
//! exact errno (or SIGSYS). A control child runs the same probe without the filter and must get
//! that different result. A child that applies the filter then execs python3 with threads, a
//! subprocess, fork, AF_INET/AF_INET6/AF_UNIX sockets, pipes and epoll must exit 0. Unit tests
//! cover the table (no name both allowed and denied, numbers equal to `libc`) and the byte
//! format against truncated and garbage input.

mod bpf;
mod compile;
mod emit;
#[cfg(test)]
mod legacy;
mod sysno;
mod table;
mod wire;

#[cfg(test)]
mod tests;

use bpf::Insn;
use compile::Arch;

/// Compiled BPF filters for the running architecture, in installation order (one, today; the
/// byte format and `apply` keep the list).
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    arch: Arch,
    filters: Vec<Vec<Insn>>,
    default_errno: u32,
    allowed: u32,
    conditional: u32,
}

/// Why a program could not be built, read or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "seccomp filters are only built for x86_64 and aarch64, and this host is {arch}; \
         run Stockade on a supported architecture"
    )]
    UnsupportedArch { arch: String },
    #[error(
        "the seccomp program was compiled for {expected} but this process runs on {found}; \
         compile it on the host that applies it"
    )]
    WrongArch {
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "the syscall table for {arch} has no number for `{name}`, which the policy checks; \
         this is a Stockade bug, please report it"
    )]
    MissingSyscall {
        name: &'static str,
        arch: &'static str,
    },
    #[error(
        "the seccomp policy lists `{name}` inconsistently (both allowed and denied, or with an \
         errno missing from LAYER_ORDER); fix crates/jail/src/seccomp/table.rs"
    )]
    PolicyConflict { name: &'static str },
    #[error("seccompiler rejected the {layer} layer: {source}; this is a Stockade bug")]
    Compile {
        layer: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error(
        "the seccomp program bytes are malformed ({reason}); the supervisor and the launcher \
         must be the same Stockade build"
    )]
    Malformed { reason: &'static str },
    #[error(
        "no_new_privs is not set on this thread; call prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) \
         before SeccompProgram::apply"
    )]
    NoNewPrivs,
    #[error(
        "installing seccomp filter {index} failed (errno {errno}); filters before it are in force, \
         so this process must exit. Check that the kernel has CONFIG_SECCOMP_FILTER"
    )]
    Install { index: usize, errno: i32 },
}

impl SeccompProgram {
    /// Compiles Stockade's default filter set for the running architecture (x86_64 and
    /// aarch64); any other architecture is [`SeccompError::UnsupportedArch`].
    pub fn compile_default() -> Result<SeccompProgram, SeccompError> {
        let arch = Arch::running()?;
        let c = compile::compile(arch)?;
        if c.filters.len() > wire::MAX_FILTERS
            || c.filters
                .iter()
                .any(|f| f.is_empty() || f.len() > wire::MAX_INSNS)
        {
            return Err(SeccompError::Malformed {
                reason: "compiled filter out of bounds",
            });
        }
        Ok(SeccompProgram {
            arch,
            filters: c.filters,
            default_errno: table::DEFAULT_ERRNO.unsigned_abs(),
            allowed: c.allowed,
            conditional: c.conditional,
        })
    }

    /// Serialises the program so the supervisor can pass it to the launcher over a pipe.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Reads bytes made by [`SeccompProgram::to_bytes`]. Checks magic, version, architecture
    /// and every length; never panics on hostile input. The kernel validates the instructions
    /// at [`SeccompProgram::apply`].
    pub fn from_bytes(b: &[u8]) -> Result<SeccompProgram, SeccompError> {
        wire::decode(b)
    }

    /// Installs every filter on the calling thread, oldest layer first.
    ///
    /// Requires `no_new_privs` to be set on the calling thread already (it returns
    /// [`SeccompError::NoNewPrivs`] otherwise). Filters only the calling thread (no TSYNC): call
    /// it in a single-threaded process. Uses only raw `prctl`/`seccomp` syscalls and does not
    /// allocate, so it is safe between fork and exec. On error after the first filter, the
    /// filters already installed stay in force; the caller must exit.
    pub fn apply(&self) -> Result<(), SeccompError> {
        self.install(SECCOMP_FILTER_FLAG_LOG)
    }

    /// [`apply`](Self::apply) without `SECCOMP_FILTER_FLAG_LOG`, for kernels that refuse the
    /// flag (gVisor's, which has no host audit log for denials anyway).
    pub fn apply_unlogged(&self) -> Result<(), SeccompError> {
        self.install(0)
    }

    fn install(&self, flags: libc::c_ulong) -> Result<(), SeccompError> {
        let running = std::env::consts::ARCH;
        if running != self.arch.name() {
            let found = if running == "aarch64" {
                "aarch64"
            } else {
                "another architecture"
            };
            return Err(SeccompError::WrongArch {
                expected: self.arch.name(),
                found,
            });
        }
        // SAFETY: PR_GET_NO_NEW_PRIVS reads a flag of the calling thread and takes no pointers.
        let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
        if nnp != 1 {
            return Err(SeccompError::NoNewPrivs);
        }
        for (index, filter) in self.filters.iter().enumerate() {
            let Ok(len) = u16::try_from(filter.len()) else {
                return Err(SeccompError::Malformed {
                    reason: "filter longer than 65535",
                });
            };
            let prog = libc::sock_fprog {
                len,
                // `Insn` is `#[repr(C)]` with the same fields, in the same order and of the same
                // types as the kernel's (and libc's) `struct sock_filter`.
                filter: filter.as_ptr().cast::<libc::sock_filter>().cast_mut(),
            };
            // SAFETY: `prog` points at `filter`, which `self` owns and keeps alive and unchanged
            // for the whole call; the kernel copies the instructions before returning and never
            // writes through the pointer. The call affects only the calling thread.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    // With SECCOMP_FILTER_FLAG_LOG, denials (non-ALLOW results) go to the kernel
                    // audit log, where the supervisor turns them into `violation` events (see
                    // stockade-runtime's kmsg.rs).
                    flags,
                    &raw const prog,
                )
            };
            if rc != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(SeccompError::Install { index, errno });
            }
        }
        Ok(())
    }

    /// A short description for the audit record.
    pub fn describe(&self) -> String {
        format!(
            "bpf: {} filter{} ({} instructions, binary search) for {}, default errno {}, \
             {} syscalls allowed, {} argument checks, foreign arch killed",
            self.filters.len(),
            if self.filters.len() == 1 { "" } else { "s" },
            self.filters.iter().map(Vec::len).sum::<usize>(),
            self.arch.name(),
            errno_name(self.default_errno),
            self.allowed,
            self.conditional,
        )
    }
}

fn errno_name(errno: u32) -> String {
    match i32::try_from(errno) {
        Ok(libc::EPERM) => "EPERM".to_owned(),
        Ok(libc::ENOSYS) => "ENOSYS".to_owned(),
        Ok(libc::EAFNOSUPPORT) => "EAFNOSUPPORT".to_owned(),
        _ => errno.to_string(),
    }
}

/// seccomp(2) flag: log every action but ALLOW to the audit subsystem.
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;

/// The name of syscall `nr` on the running architecture's native ABI, for reports (audit
/// events); None for a number the kernel does not define there.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let native = if cfg!(target_arch = "aarch64") {
        AUDIT_ARCH_AARCH64
    } else {
        AUDIT_ARCH_X86_64
    };
    syscall_name_for(native, nr).map(|(_, name)| name)
}

/// `AUDIT_ARCH_*` values as the kernel's audit records give them (`arch=`).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// The ABI and name of syscall `nr` made through `arch` (an `AUDIT_ARCH_*` value): the ABI is
/// `""` for the native one, `"i386"` or `"x32"` for the compatibility ones the filter kills or
/// refuses. None when the number is not a syscall of that ABI.
pub fn syscall_name_for(arch: u32, nr: i64) -> Option<(&'static str, &'static str)> {
    let nr_usize = |n: i64| usize::try_from(n).ok();
    match arch {
        AUDIT_ARCH_X86_64 if nr & X32_SYSCALL_BIT != 0 => {
            syscalls::x86_64::Sysno::new(nr_usize(nr & !X32_SYSCALL_BIT)?)
                .map(|s| ("x32", s.name()))
        }
        AUDIT_ARCH_X86_64 => syscalls::x86_64::Sysno::new(nr_usize(nr)?).map(|s| ("", s.name())),
        AUDIT_ARCH_I386 => syscalls::x86::Sysno::new(nr_usize(nr)?).map(|s| ("i386", s.name())),
        AUDIT_ARCH_AARCH64 => syscalls::aarch64::Sysno::new(nr_usize(nr)?).map(|s| ("", s.name())),
        _ => None,
    }
}
