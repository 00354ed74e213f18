//! Thin, checked wrappers over the raw Linux syscalls the jail needs and that `rustix` does not
//! cover (the new mount API, namespaced clone, capability sets, `SIOCSIFFLAGS`).
//!
//! Every function returns `io::Error` built from `errno`; none panics. Callers between `clone`
//! and `exec` run in a single-threaded process (the launcher is a freshly exec'd helper), so
//! allocation there is safe; see `launch.rs`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// New mount API constants (include/uapi/linux/mount.h); spelled out because libc lacks some.
pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x0000_0004;
pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
const AT_RECURSIVE: u32 = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Converts a path to a NUL-terminated C string, rejecting interior NULs.
pub fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `clone(flags | SIGCHLD)` without a new stack: behaves like `fork` (returns 0 in the child).
///
/// # Safety
/// The calling process must be single-threaded: the child continues running Rust code with a
/// copy of the parent's memory, which is only sound when no other thread could hold a lock.
pub unsafe fn clone_fork(flags: libc::c_ulong) -> io::Result<libc::pid_t> {
    // SAFETY: a NULL stack makes the kernel use a copy-on-write copy of the current stack, exactly
    // like fork(2); the caller guarantees no other thread exists, so no lock is held mid-update.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(ret).map(|r| r as libc::pid_t)
}

/// `unshare(2)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers; it only changes this thread's namespace membership.
    check_int(unsafe { libc::unshare(flags) }).map(drop)
}

/// `open_tree(path, OPEN_TREE_CLONE [| AT_RECURSIVE])`: a detached copy of the mount at `path`.
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; the kernel returns a
    // new file descriptor that we take sole ownership of below.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr` on a mount fd (empty path), optionally recursive.
pub fn mount_setattr_fd(fd: &OwnedFd, set: u64, clear: u64, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `attr` lives on this stack frame for the whole call and its size is passed; the
    // empty path is a static NUL-terminated string; `fd` is a live descriptor we borrow.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// `mount_setattr` on a path (not recursive unless asked).
pub fn mount_setattr_path(path: &Path, set: u64, recursive: bool) -> io::Result<()> {
    let c = cstr(path)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `c` and `attr` outlive the call; the size passed matches the struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attach a detached tree.
pub fn move_mount_fd(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    let c = cstr(target)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `fd` is borrowed, not closed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// Classic `mount(2)`.
pub fn mount(
    source: Option<&CStr>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let t = cstr(target)?;
    let p = |o: Option<&CStr>| o.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either NULL (allowed for these arguments) or a NUL-terminated
    // string borrowed for the duration of the call.
    let ret = unsafe {
        libc::mount(
            p(source),
            t.as_ptr(),
            p(fstype),
            flags,
            p(data).cast::<libc::c_void>(),
        )
    };
    check_int(ret).map(drop)
}

/// `umount2(target, flags)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a NUL-terminated string that outlives the call.
    check_int(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(".", ".")` from the current directory (the new root), the idiom that needs no
/// directory for the old root: the old root ends up stacked under the new one and is detached next.
pub fn pivot_root_here() -> io::Result<()> {
    // SAFETY: both arguments are static NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) }).map(drop)
}

/// `sethostname(2)` in the current UTS namespace.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Brings the loopback interface of the current network namespace up (`SIOCSIFFLAGS`).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() takes no pointers; the returned fd is owned by `sock` below.
    let fd = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `req` is a properly initialised ifreq living on this frame; the ioctl reads it.
    check_int(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP in the current user namespace).
pub fn drop_bounding_set() -> io::Result<()> {
    drop_bounding_set_except(0)
}

/// Drops every capability but those in the mask `keep` (bit n = capability n) from the
/// bounding set (needs CAP_SETPCAP).
pub fn drop_bounding_set_except(keep: u64) -> io::Result<()> {
    for cap in 0..64 {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes integers only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Clears the ambient set and the effective, permitted and inheritable sets of this thread.
pub fn clear_capabilities() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    capset_zero()
}

/// Empties the effective, permitted and inheritable sets of this thread (capset, v3 layout),
/// without touching the ambient set (for kernels that have none, e.g. gVisor's).
pub fn capset_zero() -> io::Result<()> {
    capset_only(0)
}

/// Sets the effective and permitted sets of this thread to the mask `keep` (bit n =
/// capability n; it can only shrink them) and empties the inheritable set (capset, v3 layout).
pub fn capset_only(keep: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let half = |w: u64| Data {
        effective: w as u32,
        permitted: w as u32,
        inheritable: 0,
    };
    let data = [half(keep & 0xffff_ffff), half(keep >> 32)];
    // SAFETY: header and the two-element data array (the v3 layout) live on this frame for the call.
    check(unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) })
        .map(drop)
}

/// Reads the effective capability mask of this thread from /proc (for verification and tests).
pub fn effective_caps_zero() -> io::Result<bool> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    Ok(s.lines()
        .filter(|l| {
            l.starts_with("CapEff:")
                || l.starts_with("CapPrm:")
                || l.starts_with("CapBnd:")
                || l.starts_with("CapAmb:")
        })
        .all(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|v| v.chars().all(|c| c == '0'))
        }))
}

pub fn setresgid(g: u32) -> io::Result<()> {
    // SAFETY: integer-only syscall (raw, so it affects only this thread: the process is single-threaded).
    check(unsafe { libc::syscall(libc::SYS_setresgid, g, g, g) }).map(drop)
}

pub fn setresuid(u: u32) -> io::Result<()> {
    // SAFETY: integer-only syscall; the process is single-threaded so per-thread creds are the process's.
    check(unsafe { libc::syscall(libc::SYS_setresuid, u, u, u) }).map(drop)
}

/// `setgroups(0, NULL)`: drop every supplementary group.
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a zero count with a NULL list is the documented way to clear the groups.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) })
        .map(drop)
}

pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

pub fn set_dumpable(on: bool) -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) })
        .map(drop)
}

/// Asks the kernel to send `sig` to this process when its parent thread exits.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// Lowers (never raises) a resource limit: both values are clamped to the current hard limit,
/// since this host's root lacks CAP_SYS_RESOURCE.
pub fn lower_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `cur` is a valid out-pointer on this frame.
    check_int(unsafe { libc::getrlimit(resource, &mut cur) })?;
    let v = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: `new` is a valid in-pointer on this frame.
    check_int(unsafe { libc::setrlimit(resource, &new) }).map(drop)
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall returning a new fd that we own.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig)`: signals exactly the process the pidfd names, never a reused pid.
pub fn pidfd_kill(pidfd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: NULL siginfo is allowed; `pidfd` is a live descriptor.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// Blocking `waitpid(pid)`, retried on EINTR; returns the raw wait status.
pub fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<(libc::pid_t, libc::c_int)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer on this frame.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((r, status));
    }
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` moved to a number >= 10 (close-on-exec), so that dup2 onto 0..9 in a child about to
/// exec cannot clobber a source.
pub fn dup_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer and returns a new descriptor we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Sets FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_SETFD and an integer flag takes no pointers.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Closes every descriptor from `first` upward except those listed (close_range where possible).
pub fn close_fds_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range takes integers only; descriptors >= `first` are by contract not owned by
    // any live Rust object in this process (the caller is a freshly exec'd helper or a child about
    // to exec).
    check(unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, u32::MAX, 0) })
        .map(drop)
}

/// Makes a detached mount tree idmapped through the user namespace `userns` (recursively).
pub fn mount_setattr_idmap(fd: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` outlives the call and its size is passed; both descriptors are borrowed live fds.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// Sends `bytes` on a unix stream socket with `fd` attached (SCM_RIGHTS) to the first byte.
pub fn send_with_fd(sock: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    send_with_fds(sock, bytes, &[fd])
}

/// Most descriptors [`send_with_fds`] attaches to one message (the receiver,
/// [`recv_with_fds`], accepts as many).
pub const MAX_SEND_FDS: usize = 8;

/// Sends `bytes` on a unix stream socket with every descriptor of `fds` attached, in order, to
/// the first byte (one SCM_RIGHTS message). With no descriptors it is a plain send. The caller
/// keeps its copies (close them after). `bytes` must not be empty when `fds` is not (the
/// descriptors ride on a byte); more than [`MAX_SEND_FDS`] descriptors are refused.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_SEND_FDS || (bytes.is_empty() && !fds.is_empty()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte to travel with, and at most 8 fit",
        ));
    }
    let payload = std::mem::size_of_val(fds) as u32;
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE is a pure size computation.
        unsafe { libc::CMSG_SPACE(payload) as usize }
    };
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` points at `cbuf`, which has room for exactly one cmsg holding
        // `fds.len()` descriptors (the size came from CMSG_SPACE of their byte length);
        // CMSG_FIRSTHDR/CMSG_DATA stay inside it, and the copy reads exactly `payload` bytes
        // from the live slice `fds`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                payload as usize,
            );
        }
    }
    // The descriptors travel with the first byte; whatever the first call did not send follows
    // as plain bytes.
    let mut sent = loop {
        // SAFETY: `msg` and everything it points to live on this frame for the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is a live slice; send reads at most its length.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives bytes from a unix stream socket, returning also any descriptors passed with them
/// (CLOEXEC). At most 8 descriptors per call are accepted; extra ones are closed by the kernel.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    const MAX_FDS: usize = MAX_SEND_FDS;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: `msg` points at `buf` and `cbuf`, both alive and sized as declared.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the CMSG_* macros that bound
    // every access by msg_controllen; each SCM_RIGHTS fd is new and owned by us from here on.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let mut fd: RawFd = -1;
                    std::ptr::copy_nonoverlapping(
                        data.add(i * std::mem::size_of::<RawFd>()),
                        (&mut fd as *mut RawFd).cast::<u8>(),
                        std::mem::size_of::<RawFd>(),
                    );
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds))
}

/// `finit_module(fd, "", 0)`: loads the kernel module in the open file `fd` (the microVM guest's
/// init loads its virtio and 9p modules this way; see `stockade_agent::guest_boot`).
pub fn finit_module(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: the parameter string is a static NUL-terminated empty string; `fd` is a live
    // descriptor borrowed for the call; the kernel reads the module through it and keeps nothing.
    check(unsafe { libc::syscall(libc::SYS_finit_module, fd.as_raw_fd(), c"".as_ptr(), 0) })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn is_fifo(fd: &OwnedFd) -> bool {
        // SAFETY: `st` is a valid out-pointer; `fd` is a live descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }

    #[test]
    fn several_descriptors_travel_in_one_message_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r1, w1) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        let dev_null = std::fs::File::open("/dev/null").unwrap();
        let sent = [w1.as_raw_fd(), dev_null.as_raw_fd(), r2.as_raw_fd()];
        send_with_fds(a.as_raw_fd(), b"hello", &sent).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 3);
        // Same order: a pipe, a character device, a pipe; the first is w1's twin.
        assert!(is_fifo(&fds[0]) && !is_fifo(&fds[1]) && is_fifo(&fds[2]));
        rustix::io::write(&fds[0], b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(rustix::io::read(&r1, &mut one).unwrap(), 1);
        rustix::io::write(&w2, b"y").unwrap();
        assert_eq!(rustix::io::read(&fds[2], &mut one).unwrap(), 1);
        assert_eq!(&one, b"y");
        // No descriptors: a plain send. The single-fd wrapper still works.
        send_with_fds(a.as_raw_fd(), b"p", &[]).unwrap();
        send_with_fd(a.as_raw_fd(), b"q", dev_null.as_raw_fd()).unwrap();
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        // Both may arrive in one read (the fd-less byte first); the descriptor comes along.
        assert!(n >= 1 && buf[0] == b'p');
        let fds = if n == 2 {
            fds
        } else {
            recv_with_fds(b.as_raw_fd(), &mut buf).unwrap().1
        };
        assert_eq!(fds.len(), 1);
        // Refused: descriptors with no byte, and more than fit.
        let e = send_with_fds(a.as_raw_fd(), b"", &sent).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let nine = [dev_null.as_raw_fd(); 9];
        let e = send_with_fds(a.as_raw_fd(), b"z", &nine).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
