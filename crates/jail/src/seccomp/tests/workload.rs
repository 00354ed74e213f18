//! Ordinary work still runs under the filter: a child applies it and execs python3, which
//! starts threads, spawns a subprocess (posix_spawn tries clone3, gets ENOSYS, falls back to
//! clone), forks, opens AF_INET/AF_INET6/AF_UNIX sockets, uses pipes and epoll, and checks that
//! a netlink socket is refused with EAFNOSUPPORT.

use std::ffi::CString;

use crate::seccomp::SeccompProgram;

const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = r#"
import errno, os, select, socket, subprocess, sys, threading
out = []
ts = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
assert sorted(out) == [0, 1, 4, 9], out
p = subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, check=True)
assert p.stdout == b"hi\n", p.stdout
pid = os.fork()
if pid == 0:
    os._exit(7)
_, st = os.waitpid(pid, 0)
assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 7, st
for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
    socket.socket(fam, socket.SOCK_STREAM).close()
a, b = socket.socketpair()
a.send(b"x"); assert b.recv(1) == b"x"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.close()
r, w = os.pipe()
ep = select.epoll(); ep.register(r, select.EPOLLIN)
os.write(w, b"y")
assert ep.poll(1) == [(r, select.EPOLLIN)]
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    sys.exit(3)
except OSError as e:
    assert e.errno == errno.EAFNOSUPPORT, e
sys.exit(0)
"#;

/// Forks, optionally applies `program`, execs python3 with SCRIPT; returns the wait status.
fn run_python(program: Option<&SeccompProgram>) -> i32 {
    // Everything the child needs is allocated before fork.
    let path = CString::new(PYTHON).unwrap();
    let args = [
        CString::new("python3").unwrap(),
        CString::new("-c").unwrap(),
        CString::new(SCRIPT).unwrap(),
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env = [CString::new("PATH=/usr/bin:/bin").unwrap()];
    let envp = [env[0].as_ptr(), std::ptr::null()];
    // SAFETY: the child below only calls prctl, `apply` (allocation-free), execve and `_exit`;
    // `path`, `argv` and `envp` were built before fork and stay alive in the child's copy.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: single-threaded child; prctl sets a flag on this thread only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            // SAFETY: ends the forked child without the harness's exit handlers.
            unsafe { libc::_exit(120) };
        }
        if let Some(p) = program
            && p.apply().is_err()
        {
            // SAFETY: as above.
            unsafe { libc::_exit(121) };
        }
        // SAFETY: NUL-terminated strings and null-terminated arrays built before fork.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        // SAFETY: as above; 127 means exec failed.
        unsafe { libc::_exit(127) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` outlives the call.
    assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
    status
}

#[test]
fn python_workload_runs_under_the_filter() {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is required for this test (install python3)"
    );
    let p = SeccompProgram::compile_default().unwrap();
    let status = run_python(Some(&p));
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "python under the filter: status {status:#x} (exit {}, 127 = exec failed, 3 = netlink \
         allowed, 1 = an assertion failed; run the script by hand to see which)",
        libc::WEXITSTATUS(status)
    );
}

#[test]
fn python_workload_control_reaches_the_netlink_check() {
    // Without the filter the script gets past everything and its netlink socket succeeds (exit
    // 3): the workload itself is sound and the final check is not vacuous.
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is required for this test (install python3)"
    );
    let status = run_python(None);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3,
        "status {status:#x}"
    );
}
