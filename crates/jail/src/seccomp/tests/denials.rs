//! One probe per denial: the control (no filter, root) gets a specific result, the filtered
//! child gets the policy's errno (or SIGSYS). Arguments are chosen so the kernel fails early
//! or does something harmless, and so the control result differs from the denial.

use libc::{EAFNOSUPPORT, EBADF, EFAULT, EINVAL, ENOENT, ENOSYS, EOPNOTSUPP, EPERM, ESRCH};

use super::probe::{Expect, check, missing_path, sys};

const DENY: Expect = Expect::Errno(EPERM);

macro_rules! probe {
    ($test:ident, $body:block, $control:expr, $filtered:expr) => {
        #[test]
        fn $test() {
            fn call() -> libc::c_long $body
            check(stringify!($test), call, $control, $filtered);
        }
    };
}

const NO_PID: libc::c_long = 0x3fff_ffff; // above PID_MAX_LIMIT
const PTRACE_GETREGS: libc::c_long = 12;

// --- Unconditional denials (EPERM) ---------------------------------------------------------
probe!(
    ptrace,
    { sys(libc::SYS_ptrace, [PTRACE_GETREGS, NO_PID, 0, 0, 0, 0]) },
    Expect::Errno(ESRCH),
    DENY
);
probe!(
    process_vm_readv,
    { sys(libc::SYS_process_vm_readv, [0, 0, 0, 0, 0, 1]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    process_vm_writev,
    { sys(libc::SYS_process_vm_writev, [0, 0, 0, 0, 0, 1]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    bpf,
    { sys(libc::SYS_bpf, [9999, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    perf_event_open,
    { sys(libc::SYS_perf_event_open, [0, 0, -1, -1, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    userfaultfd,
    { sys(libc::SYS_userfaultfd, [0xffff, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    io_uring_setup,
    { sys(libc::SYS_io_uring_setup, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    io_uring_enter,
    { sys(libc::SYS_io_uring_enter, [-1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);
probe!(
    io_uring_register,
    { sys(libc::SYS_io_uring_register, [-1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    keyctl,
    { sys(libc::SYS_keyctl, [9999, 0, 0, 0, 0, 0]) },
    Expect::Errno(EOPNOTSUPP),
    DENY
);
probe!(
    add_key,
    { sys(libc::SYS_add_key, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    request_key,
    { sys(libc::SYS_request_key, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    mount,
    { sys(libc::SYS_mount, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    umount2,
    { sys(libc::SYS_umount2, [missing_path(), 0xffff_ffff, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    pivot_root,
    { sys(libc::SYS_pivot_root, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    move_mount,
    { sys(libc::SYS_move_mount, [-1, 0, -1, 0, 0xffff_ffff, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    fsopen,
    { sys(libc::SYS_fsopen, [0, 0xffff, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    fsconfig,
    { sys(libc::SYS_fsconfig, [-1, 9999, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    fsmount,
    { sys(libc::SYS_fsmount, [-1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);
probe!(
    fspick,
    { sys(libc::SYS_fspick, [-1, 0, 0xffff, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    open_tree,
    { sys(libc::SYS_open_tree, [-1, 0, 0xffff_ffff, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    mount_setattr,
    { sys(libc::SYS_mount_setattr, [-1, 0, 0xffff, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
// Flag 0x1 lies in CSIGNAL, which unshare never accepts.
probe!(
    unshare,
    { sys(libc::SYS_unshare, [1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    setns,
    { sys(libc::SYS_setns, [-1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);
// kexec and modules: ENOSYS where the kernel lacks CONFIG_KEXEC / CONFIG_MODULES (this CI VM);
// otherwise the argument error. Either differs from the filter's EPERM.
probe!(
    kexec_load,
    { sys(libc::SYS_kexec_load, [0, 1000, 0, 0, 0, 0]) },
    Expect::AnyErrno(&[ENOSYS, EINVAL]),
    DENY
);
probe!(
    kexec_file_load,
    { sys(libc::SYS_kexec_file_load, [-1, -1, 0, 0, 0xffff, 0]) },
    Expect::AnyErrno(&[ENOSYS, EINVAL]),
    DENY
);
probe!(
    init_module,
    { sys(libc::SYS_init_module, [0, 0, 0, 0, 0, 0]) },
    Expect::AnyErrno(&[ENOSYS, libc::ENOEXEC]),
    DENY
);
probe!(
    finit_module,
    { sys(libc::SYS_finit_module, [-1, 0, 0, 0, 0, 0]) },
    Expect::AnyErrno(&[ENOSYS, EBADF]),
    DENY
);
probe!(
    delete_module,
    { sys(libc::SYS_delete_module, [0, 0, 0, 0, 0, 0]) },
    Expect::AnyErrno(&[ENOSYS, EFAULT]),
    DENY
);
probe!(
    open_by_handle_at,
    { sys(libc::SYS_open_by_handle_at, [-1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    name_to_handle_at,
    { sys(libc::SYS_name_to_handle_at, [-1, 0, 0, 0, 0xffff, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    acct,
    { sys(libc::SYS_acct, [missing_path(), 0, 0, 0, 0, 0]) },
    Expect::Errno(ENOENT),
    DENY
);
probe!(
    swapon,
    { sys(libc::SYS_swapon, [missing_path(), 0xffff_ffff, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    swapoff,
    { sys(libc::SYS_swapoff, [missing_path(), 0, 0, 0, 0, 0]) },
    Expect::Errno(ENOENT),
    DENY
);
// Wrong magic numbers: the kernel refuses before looking at the command.
probe!(
    reboot,
    { sys(libc::SYS_reboot, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    syslog,
    { sys(libc::SYS_syslog, [9999, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    quotactl,
    { sys(libc::SYS_quotactl, [0xffff_ffff, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    quotactl_fd,
    { sys(libc::SYS_quotactl_fd, [-1, 0, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);
probe!(
    settimeofday,
    {
        static BAD_TV: libc::timeval = libc::timeval {
            tv_sec: 0,
            tv_usec: 2_000_000,
        };
        sys(
            libc::SYS_settimeofday,
            [(&raw const BAD_TV) as libc::c_long, 0, 0, 0, 0, 0],
        )
    },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    clock_settime,
    {
        static TS: libc::timespec = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // CLOCK_MONOTONIC cannot be set.
        sys(
            libc::SYS_clock_settime,
            [
                libc::CLOCK_MONOTONIC as libc::c_long,
                (&raw const TS) as libc::c_long,
                0,
                0,
                0,
                0,
            ],
        )
    },
    Expect::Errno(EINVAL),
    DENY
);
probe!(
    clock_adjtime,
    { sys(libc::SYS_clock_adjtime, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
probe!(
    adjtimex,
    { sys(libc::SYS_adjtimex, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EFAULT),
    DENY
);
// Removed from the kernel (6.9 and 3.1): ENOSYS unfiltered, EPERM filtered.
probe!(
    lookup_dcookie,
    { sys(libc::SYS_lookup_dcookie, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(ENOSYS),
    DENY
);
probe!(
    nfsservctl,
    { sys(libc::SYS_nfsservctl, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(ENOSYS),
    DENY
);
// The probe child called setsid, so it has no terminal: vhangup succeeds and does nothing.
probe!(
    vhangup,
    { sys(libc::SYS_vhangup, [0, 0, 0, 0, 0, 0]) },
    Expect::Success,
    DENY
);

// --- personality ---------------------------------------------------------------------------
const ADDR_NO_RANDOMIZE: libc::c_long = 0x0040000;
probe!(
    personality_addr_no_randomize,
    { sys(libc::SYS_personality, [ADDR_NO_RANDOMIZE, 0, 0, 0, 0, 0]) },
    Expect::Success,
    DENY
);
// The allowed query still works under the filter; the control is the filtered run of a
// denied value (personality cannot fail unfiltered).
#[test]
fn personality_query_allowed() {
    fn query() -> libc::c_long {
        sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0])
    }
    let p = crate::seccomp::SeccompProgram::compile_default().unwrap();
    assert_eq!(
        super::probe::run(Some(&p), query),
        super::probe::Outcome::Success
    );
}

// --- clone: CLONE_NEW* → EPERM; CLONE_SIGHAND without CLONE_VM makes the kernel refuse with
// EINVAL before creating anything, so no namespace or child is ever made. ----------------------
macro_rules! clone_probe {
    ($test:ident, $flag:expr) => {
        probe!(
            $test,
            {
                sys(
                    libc::SYS_clone,
                    [
                        ($flag) as libc::c_long | libc::CLONE_SIGHAND as libc::c_long,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                )
            },
            Expect::Errno(EINVAL),
            DENY
        );
    };
}
clone_probe!(clone_newns, libc::CLONE_NEWNS);
clone_probe!(clone_newcgroup, libc::CLONE_NEWCGROUP);
clone_probe!(clone_newuts, libc::CLONE_NEWUTS);
clone_probe!(clone_newipc, libc::CLONE_NEWIPC);
clone_probe!(clone_newuser, libc::CLONE_NEWUSER);
clone_probe!(clone_newpid, libc::CLONE_NEWPID);
clone_probe!(clone_newnet, libc::CLONE_NEWNET);
clone_probe!(clone_newtime, 0x80);
// The flags in the upper 32 bits of the register are ignored by the kernel and by the filter.
clone_probe!(
    clone_newuser_high_bits_set,
    0x7_0000_0000_i64 | libc::CLONE_NEWUSER as i64
);

#[test]
fn clone_without_namespace_flags_passes_the_filter() {
    fn call() -> libc::c_long {
        sys(
            libc::SYS_clone,
            [libc::CLONE_SIGHAND as libc::c_long, 0, 0, 0, 0, 0],
        )
    }
    let p = crate::seccomp::SeccompProgram::compile_default().unwrap();
    let got = super::probe::run(Some(&p), call);
    assert_eq!(
        got,
        super::probe::Outcome::Errno(EINVAL),
        "the kernel, not the filter, must answer"
    );
}

// clone3: size 0 is EINVAL unfiltered; the filter answers ENOSYS before the kernel looks.
probe!(
    clone3,
    { sys(libc::SYS_clone3, [0, 0, 0, 0, 0, 0]) },
    Expect::Errno(EINVAL),
    Expect::Errno(ENOSYS)
);

// --- ioctl: TIOCSTI / TIOCLINUX on fd -1 are EBADF unfiltered ------------------------------------
probe!(
    ioctl_tiocsti,
    { sys(libc::SYS_ioctl, [-1, 0x5412, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);
probe!(
    ioctl_tioclinux,
    { sys(libc::SYS_ioctl, [-1, 0x541C, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);
probe!(
    ioctl_tiocsti_high_bits,
    { sys(libc::SYS_ioctl, [-1, 0xdead_0000_5412, 0, 0, 0, 0]) },
    Expect::Errno(EBADF),
    DENY
);

#[test]
fn ioctl_other_commands_pass_the_filter() {
    fn call() -> libc::c_long {
        sys(
            libc::SYS_ioctl,
            [-1, libc::TCGETS as libc::c_long, 0, 0, 0, 0],
        )
    }
    let p = crate::seccomp::SeccompProgram::compile_default().unwrap();
    assert_eq!(
        super::probe::run(Some(&p), call),
        super::probe::Outcome::Errno(EBADF)
    );
}

// --- socket / socketpair ---------------------------------------------------------------------
const SOCK_RAW: libc::c_long = libc::SOCK_RAW as libc::c_long;
probe!(
    socket_netlink,
    {
        sys(
            libc::SYS_socket,
            [libc::AF_NETLINK as libc::c_long, SOCK_RAW, 0, 0, 0, 0],
        )
    },
    Expect::Success,
    Expect::Errno(EAFNOSUPPORT)
);
// Both layers deny: the family layer is installed later, so its errno wins.
probe!(
    socket_packet_raw,
    {
        sys(
            libc::SYS_socket,
            [libc::AF_PACKET as libc::c_long, SOCK_RAW, 0, 0, 0, 0],
        )
    },
    Expect::Success,
    Expect::Errno(EAFNOSUPPORT)
);
probe!(
    socket_inet_raw,
    {
        sys(
            libc::SYS_socket,
            [
                libc::AF_INET as libc::c_long,
                SOCK_RAW,
                libc::IPPROTO_ICMP as libc::c_long,
                0,
                0,
                0,
            ],
        )
    },
    Expect::Success,
    DENY
);
probe!(
    socket_inet6_raw_cloexec,
    {
        sys(
            libc::SYS_socket,
            [
                libc::AF_INET6 as libc::c_long,
                SOCK_RAW | libc::SOCK_CLOEXEC as libc::c_long,
                libc::IPPROTO_ICMPV6 as libc::c_long,
                0,
                0,
                0,
            ],
        )
    },
    Expect::Success,
    DENY
);
// The kernel turns (AF_INET, SOCK_PACKET) into a packet socket.
probe!(
    socket_inet_sock_packet,
    {
        sys(
            libc::SYS_socket,
            [libc::AF_INET as libc::c_long, 10, 0, 0, 0, 0],
        )
    },
    Expect::Success,
    DENY
);
probe!(
    socketpair_netlink,
    {
        let mut sv = [0 as libc::c_int; 2];
        sys(
            libc::SYS_socketpair,
            [
                libc::AF_NETLINK as libc::c_long,
                SOCK_RAW,
                0,
                sv.as_mut_ptr() as libc::c_long,
                0,
                0,
            ],
        )
    },
    Expect::Errno(EOPNOTSUPP),
    Expect::Errno(EAFNOSUPPORT)
);

#[test]
fn allowed_sockets_pass_the_filter() {
    fn call() -> libc::c_long {
        let mut sv = [0 as libc::c_int; 2];
        let unix = sys(
            libc::SYS_socketpair,
            [
                libc::AF_UNIX as libc::c_long,
                libc::SOCK_STREAM as libc::c_long,
                0,
                sv.as_mut_ptr() as libc::c_long,
                0,
                0,
            ],
        );
        let inet = sys(
            libc::SYS_socket,
            [
                libc::AF_INET as libc::c_long,
                libc::SOCK_DGRAM as libc::c_long,
                0,
                0,
                0,
                0,
            ],
        );
        let inet6 = sys(
            libc::SYS_socket,
            [
                libc::AF_INET6 as libc::c_long,
                libc::SOCK_STREAM as libc::c_long,
                0,
                0,
                0,
                0,
            ],
        );
        if unix < 0 {
            unix
        } else if inet < 0 {
            inet
        } else {
            inet6
        }
    }
    let p = crate::seccomp::SeccompProgram::compile_default().unwrap();
    assert_eq!(
        super::probe::run(Some(&p), call),
        super::probe::Outcome::Success
    );
}

// --- other ABIs on x86_64 -------------------------------------------------------------------
// x32: close(-1) with the x32 bit. ENOSYS on kernels without CONFIG_X86_X32_ABI (this CI VM),
// EBADF with it; the filter answers EPERM first either way.
#[cfg(target_arch = "x86_64")]
probe!(
    x32_syscall,
    { sys(0x4000_0000 | libc::SYS_close, [-1, 0, 0, 0, 0, 0]) },
    Expect::AnyErrno(&[ENOSYS, EBADF]),
    DENY
);

// i386 getpid (20) through int 0x80: the pid unfiltered, SIGSYS (kill) with the filter.
#[cfg(target_arch = "x86_64")]
probe!(
    int80_i386_abi_killed,
    {
        let ret: i64;
        // SAFETY: int 0x80 with eax=20 is the i386 getpid: no memory is read or written; rax gets
        // the result and r8-r11 are declared clobbered in case the compat entry does not keep them.
        unsafe {
            core::arch::asm!(
                "int 0x80",
                inlateout("rax") 20_i64 => ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack),
            )
        };
        ret as libc::c_long
    },
    Expect::Success,
    Expect::Signal(libc::SIGSYS)
);
