//! Probes of the argument checks (clone, clone3, ioctl, socket, socketpair, personality) and of
//! the foreign-ABI handling, each with its unfiltered control, plus the allowed cases.

use libc::{EAFNOSUPPORT, EBADF, EINVAL, ENOSYS, EOPNOTSUPP, EPERM};

use super::probe::{Expect, Outcome, check, run, sys};
use crate::seccomp::SeccompProgram;

const DENY: Expect = Expect::Errno(EPERM);

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
    let p = SeccompProgram::compile_default().unwrap();
    assert_eq!(run(Some(&p), query), Outcome::Success);
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
    let p = SeccompProgram::compile_default().unwrap();
    let got = run(Some(&p), call);
    assert_eq!(
        got,
        Outcome::Errno(EINVAL),
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
    let p = SeccompProgram::compile_default().unwrap();
    assert_eq!(run(Some(&p), call), Outcome::Errno(EBADF));
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
    let p = SeccompProgram::compile_default().unwrap();
    assert_eq!(run(Some(&p), call), Outcome::Success);
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
