//! Fork-and-probe helpers. The test harness is multi-threaded, so the child only makes raw
//! syscalls (no allocation, no locks) between fork and `_exit`.

use crate::seccomp::SeccompProgram;

/// Exit codes the child uses for its own setup failures (errnos are all below 200).
const EXIT_NNP_FAILED: i32 = 200;
const EXIT_APPLY_FAILED: i32 = 201;

/// What a probe returned, as seen by the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The syscall returned a non-negative value.
    Success,
    /// The syscall failed with this errno.
    Errno(i32),
    /// The child was killed by this signal.
    Signal(i32),
    /// The child could not set itself up (a test bug, never an acceptable result).
    Setup(i32),
}

/// Forks; in the child sets `no_new_privs`, applies `program` if given, runs `call` and
/// reports its result through the exit status.
pub(super) fn run(program: Option<&SeccompProgram>, call: fn() -> libc::c_long) -> Outcome {
    // SAFETY: the child below only makes raw syscalls through libc wrappers, reads errno and
    // calls `_exit`; `apply` and every `call` are allocation- and lock-free, so the state of
    // other harness threads copied by fork (malloc locks, etc.) is never touched.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child(program, call);
    }
    let mut status = 0;
    // SAFETY: `pid` is our own child and `status` outlives the call.
    let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(
        rc,
        pid,
        "waitpid failed: {}",
        std::io::Error::last_os_error()
    );
    if libc::WIFSIGNALED(status) {
        return Outcome::Signal(libc::WTERMSIG(status));
    }
    match libc::WEXITSTATUS(status) {
        0 => Outcome::Success,
        c @ (EXIT_NNP_FAILED | EXIT_APPLY_FAILED) => Outcome::Setup(c),
        c => Outcome::Errno(c),
    }
}

fn child(program: Option<&SeccompProgram>, call: fn() -> libc::c_long) -> ! {
    // SAFETY: in the forked child (single thread): setsid detaches from the test's terminal so
    // probes such as vhangup cannot reach it; prctl sets a flag on this thread only.
    unsafe {
        libc::setsid();
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            libc::_exit(EXIT_NNP_FAILED);
        }
    }
    if let Some(p) = program
        && p.apply().is_err()
    {
        // SAFETY: `_exit` ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(EXIT_APPLY_FAILED) };
    }
    let ret = call();
    let code = if ret >= 0 {
        0
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(199)
    };
    // SAFETY: as above; errno values fit in an exit status (all are below 200).
    unsafe { libc::_exit(code.clamp(0, 199)) }
}

/// The expected result of a probe.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect {
    Success,
    Errno(i32),
    /// One of these errnos; the choice depends on the kernel's configuration (documented at
    /// the probe). None of them may be the filter's errno.
    AnyErrno(&'static [i32]),
    Signal(i32),
}

impl Expect {
    fn matches(self, o: Outcome) -> bool {
        match (self, o) {
            (Expect::Success, Outcome::Success) => true,
            (Expect::Errno(e), Outcome::Errno(g)) => e == g,
            (Expect::AnyErrno(es), Outcome::Errno(g)) => es.contains(&g),
            (Expect::Signal(s), Outcome::Signal(g)) => s == g,
            _ => false,
        }
    }
}

/// Runs `call` without the filter (must give `control`) and with it (must give `filtered`).
pub(super) fn check(name: &str, call: fn() -> libc::c_long, control: Expect, filtered: Expect) {
    let program = match SeccompProgram::compile_default() {
        Ok(p) => p,
        Err(e) => panic!("{name}: compile_default failed: {e}"),
    };
    let c = run(None, call);
    assert!(
        control.matches(c),
        "{name}: control (no filter) gave {c:?}, expected {control:?}; the probe proves nothing \
         on this host until its arguments are fixed"
    );
    let f = run(Some(&program), call);
    assert!(
        filtered.matches(f),
        "{name}: with the filter gave {f:?}, expected {filtered:?}"
    );
    assert_ne!(c, f, "{name}: filtered and unfiltered results are equal");
}

/// A raw syscall with up to six arguments.
pub(super) fn sys(nr: libc::c_long, a: [libc::c_long; 6]) -> libc::c_long {
    // SAFETY: every probe passes only null, -1 fds, static strings or small integers chosen so
    // that the kernel fails early or does something harmless in the short-lived child.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// A static, NUL-terminated path that does not exist.
pub(super) fn missing_path() -> libc::c_long {
    c"/nonexistent-stockade-probe".as_ptr() as libc::c_long
}
