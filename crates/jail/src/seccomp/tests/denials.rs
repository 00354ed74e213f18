//! One probe per unconditional denial: the control (no filter, root) gets a specific result, the filtered
//! child gets the policy's errno (or SIGSYS). Arguments are chosen so the kernel fails early
//! or does something harmless, and so the control result differs from the denial.

use libc::{EBADF, EFAULT, EINVAL, ENOENT, ENOSYS, EOPNOTSUPP, EPERM, ESRCH};

use super::probe::{Expect, check, missing_path, sys};

const DENY: Expect = Expect::Errno(EPERM);

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
