//! The policy, as data. This file is the one place to review what the sandbox may call.
//!
//! * [`ALLOWED`]: syscalls allowed unconditionally, on every architecture where they exist.
//!   Source: Moby's `profiles/seccomp/default.json`, the unconditional `SCMP_ACT_ALLOW` group,
//!   minus the names listed in [`DENIED`] and minus the syscalls whose arguments we check
//!   ([`CONDITIONAL`]), and minus `socketcall` (a 32-bit multiplexer that would bypass the
//!   socket checks; it does not exist on the architectures we build for).
//! * [`ALLOWED_X86_64`] / [`ALLOWED_AARCH64`]: Moby's arch-specific allow groups.
//! * [`DENIED`]: syscalls Stockade denies with `EPERM` even where Moby allows them (sometimes
//!   only under a capability). They are denied simply by being absent from the allow lists; the
//!   list exists so every such decision has a written reason and a probe test.
//! * [`CONDITIONAL`]: syscalls allowed except for the argument patterns listed, each with the
//!   errno it gets and why.
//!
//! Everything else gets `EPERM` (the default action), as in Docker.

/// Errno returned for every syscall not in the allow lists.
pub(crate) const DEFAULT_ERRNO: i32 = libc::EPERM;

/// Allowed unconditionally (names absent on the running architecture are skipped).
#[rustfmt::skip]
pub(crate) const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "alarm", "bind", "brk", "capget", "capset", "chdir", "chmod",
    "chown", "chown32", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old",
    "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2",
    "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
    "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid",
    "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid",
    "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl",
    "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64",
    "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid",
    "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid",
    "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid",
    "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
];

/// Moby's x86_64 (`amd64`) extras.
pub(crate) const ALLOWED_X86_64: &[&str] = &["arch_prctl", "modify_ldt"];

/// Moby's `arm64` extras (most are 32-bit ARM names absent on aarch64; they are skipped).
pub(crate) const ALLOWED_AARCH64: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// A syscall denied outright, with the reason a reviewer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Denied {
    pub name: &'static str,
    #[allow(dead_code, reason = "for reviewers; checked by the tests")]
    pub reason: &'static str,
}

const fn deny(name: &'static str, reason: &'static str) -> Denied {
    Denied { name, reason }
}

const MOUNTS: &str = "changes the mount table, which the jail fixes before exec";
const NAMESPACES: &str = "creates or joins namespaces; the jail's namespaces are final";
const KEXEC: &str = "replaces the running kernel";
const MODULES: &str = "loads or unloads kernel code";
const CLOCK: &str = "changes the host clock, which is not namespaced";
const KEYS: &str = "the kernel keyring is not namespaced and has a long CVE history";
const URING: &str = "io_uring performs I/O the syscall filter never sees; long CVE history";
const HANDLES: &str = "file handles bypass path-based confinement (the 'shocker' escape)";
const PEEK: &str = "reads or writes another process's memory";

/// Denied with [`DEFAULT_ERRNO`] even where Moby allows them. `stime`, `umount` and
/// `nfsservctl` are listed for completeness; the first two do not exist on x86_64/aarch64.
pub(crate) const DENIED: &[Denied] = &[
    deny("ptrace", "inspects and controls other processes"),
    deny("process_vm_readv", PEEK),
    deny("process_vm_writev", PEEK),
    deny(
        "bpf",
        "loads programs into the kernel; large attack surface",
    ),
    deny(
        "perf_event_open",
        "kernel profiling: side channels and frequent kernel bugs",
    ),
    deny(
        "userfaultfd",
        "lets a process stall kernel page faults, an exploit primitive",
    ),
    deny("io_uring_setup", URING),
    deny("io_uring_enter", URING),
    deny("io_uring_register", URING),
    deny("keyctl", KEYS),
    deny("add_key", KEYS),
    deny("request_key", KEYS),
    deny("mount", MOUNTS),
    deny("umount", MOUNTS),
    deny("umount2", MOUNTS),
    deny("pivot_root", MOUNTS),
    deny("move_mount", MOUNTS),
    deny("fsopen", MOUNTS),
    deny("fsconfig", MOUNTS),
    deny("fsmount", MOUNTS),
    deny("fspick", MOUNTS),
    deny("open_tree", MOUNTS),
    deny("mount_setattr", MOUNTS),
    deny("unshare", NAMESPACES),
    deny("setns", NAMESPACES),
    deny("kexec_load", KEXEC),
    deny("kexec_file_load", KEXEC),
    deny("init_module", MODULES),
    deny("finit_module", MODULES),
    deny("delete_module", MODULES),
    deny("open_by_handle_at", HANDLES),
    deny("name_to_handle_at", HANDLES),
    deny("acct", "process accounting writes to a host file"),
    deny("swapon", "changes host swap"),
    deny("swapoff", "changes host swap"),
    deny("reboot", "reboots the host (or the pid namespace)"),
    deny(
        "syslog",
        "reads the kernel log, which leaks host and address information",
    ),
    deny("quotactl", "changes host filesystem quotas"),
    deny("quotactl_fd", "changes host filesystem quotas"),
    deny("settimeofday", CLOCK),
    deny("clock_settime", CLOCK),
    deny("clock_adjtime", CLOCK),
    deny("adjtimex", CLOCK),
    deny("stime", CLOCK),
    deny(
        "lookup_dcookie",
        "profiling interface, removed from modern kernels",
    ),
    deny("vhangup", "hangs up the controlling terminal"),
    deny(
        "nfsservctl",
        "kernel NFS server control, removed from modern kernels",
    ),
];

/// Which argument pattern triggers a [`Conditional`] denial. All comparisons look at the low
/// 32 bits of the argument (the kernel reads every argument checked here as a 32-bit value).
#[derive(Debug, Clone, Copy)]
pub(crate) enum When {
    /// Always (the syscall's interesting arguments live in memory BPF cannot read).
    Always,
    /// `arg` has any of these bits set.
    AnyBit { arg: u8, bits: &'static [u32] },
    /// `arg` equals one of these values.
    OneOf { arg: u8, values: &'static [u32] },
    /// `arg & mask` equals one of these values.
    MaskedOneOf {
        arg: u8,
        mask: u32,
        values: &'static [u32],
    },
    /// `arg` is none of these values.
    NoneOf { arg: u8, values: &'static [u32] },
}

/// A syscall allowed except when its arguments match `when`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditional {
    pub name: &'static str,
    pub when: When,
    pub errno: i32,
    #[allow(dead_code, reason = "for reviewers; checked by the tests")]
    pub reason: &'static str,
}

/// Every `CLONE_NEW*` flag. `CLONE_NEWTIME` (0x80) overlaps the exit-signal byte of `clone`
/// and only matters for `clone3`/`unshare`; denying it in `clone` only refuses invalid signals.
pub(crate) const CLONE_NEW_FLAGS: &[u32] = &[
    libc::CLONE_NEWNS as u32,
    libc::CLONE_NEWCGROUP as u32,
    libc::CLONE_NEWUTS as u32,
    libc::CLONE_NEWIPC as u32,
    libc::CLONE_NEWUSER as u32,
    libc::CLONE_NEWPID as u32,
    libc::CLONE_NEWNET as u32,
    0x80, // CLONE_NEWTIME
];

/// Linux's obsolete `SOCK_PACKET` type (10); `socket(AF_INET, SOCK_PACKET, ..)` is silently
/// turned into an `AF_PACKET` socket by the kernel.
pub(crate) const SOCK_PACKET: u32 = 10;

/// The socket families the sandbox may use.
pub(crate) const SOCKET_FAMILIES: &[u32] = &[
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

/// `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and the 0xffffffff query.
pub(crate) const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Allowed except for these patterns.
pub(crate) const CONDITIONAL: &[Conditional] = &[
    Conditional {
        name: "clone",
        when: When::AnyBit {
            arg: 0,
            bits: CLONE_NEW_FLAGS,
        },
        errno: libc::EPERM,
        reason: "new namespaces would undo the jail's; plain fork and threads stay allowed",
    },
    Conditional {
        name: "clone3",
        when: When::Always,
        errno: libc::ENOSYS,
        reason: "flags live in memory BPF cannot read; ENOSYS makes glibc fall back to clone",
    },
    Conditional {
        name: "ioctl",
        when: When::OneOf {
            arg: 1,
            values: &[0x5412, 0x541C],
        },
        errno: libc::EPERM,
        reason: "TIOCSTI/TIOCLINUX inject input into a terminal outside the sandbox",
    },
    Conditional {
        name: "socket",
        when: When::NoneOf {
            arg: 0,
            values: SOCKET_FAMILIES,
        },
        errno: libc::EAFNOSUPPORT,
        reason: "only unix, IPv4 and IPv6 sockets; netlink, packet, vsock... reach the host kernel",
    },
    Conditional {
        name: "socketpair",
        when: When::NoneOf {
            arg: 0,
            values: SOCKET_FAMILIES,
        },
        errno: libc::EAFNOSUPPORT,
        reason: "only unix, IPv4 and IPv6 sockets",
    },
    Conditional {
        name: "socket",
        when: When::MaskedOneOf {
            arg: 1,
            mask: 0xf,
            values: &[libc::SOCK_RAW as u32, SOCK_PACKET],
        },
        errno: libc::EPERM,
        reason: "raw and packet sockets forge traffic and sniff the network",
    },
    Conditional {
        name: "personality",
        when: When::NoneOf {
            arg: 0,
            values: PERSONALITIES,
        },
        errno: libc::EPERM,
        reason: "other personalities (e.g. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) weaken hardening",
    },
];

/// The order in which the conditional layers are installed, after the allowlist. When two
/// layers deny the same call, the kernel reports the errno of the one installed last (see the
/// module doc): `socket(AF_PACKET, SOCK_RAW, ..)` gets `EAFNOSUPPORT`, not `EPERM`.
pub(crate) const LAYER_ORDER: &[i32] = &[libc::EPERM, libc::EAFNOSUPPORT, libc::ENOSYS];
