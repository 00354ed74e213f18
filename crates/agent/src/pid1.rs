//! The agent as PID 1 of the sandbox: finishes confinement, runs the command, reaps every
//! orphan, and when the command ends kills whatever it left behind before reporting.
//!
//! PID 1 ignores signals from inside its namespace unless it installs handlers, and it installs
//! none: SIGCHLD is blocked and read from a signalfd. It is non-dumpable, so the command (same
//! uid) cannot open /proc/1/mem or /proc/1/fd.
//!
//! The same end ([`serve`]: Ready, Go, the command or session, kill everything, report) serves
//! the gvisor level's agent (`crate::direct`), which runs in a root runsc built instead.
//!
//! In session mode (`plan.session`) there is no command: after `Go` the agent serves requests
//! (see [`crate::session`]) until `Stop`, then ends exactly as after a command.

use crate::changes;
use crate::protocol::{AgentMsg, SupervisorMsg, Termination, read_frame, write_frame};
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use stockade_jail::confine::{self, Enforced};
use stockade_jail::launch::{self, CgroupGate};
use stockade_jail::plan::{Rlimit, SandboxPlan};
use stockade_jail::rootfs::{self, PreOpened};
use stockade_jail::seccomp::SeccompProgram;
use stockade_jail::sys;

/// Most entries an overlay change report carries.
const CHANGE_LIMIT: usize = 100_000;

pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns; skipping atexit handlers is intended in the agent.
    unsafe { libc::_exit(code) }
}

pub(crate) fn setup_failed(ctrl: &mut UnixStream, message: String) -> ! {
    let _ = write_frame(ctrl, &AgentMsg::SetupFailed { message });
    exit(125)
}

/// What the set-up hands to the common end ([`serve`]).
pub(crate) struct Prepared {
    /// What was enforced, for the Ready report.
    pub(crate) enforced: Enforced,
    /// The egress bridge (network allowlist mode).
    pub(crate) bridge: Option<crate::net::Bridge>,
    /// An overlay workspace's layers (upper, lower), read for the change report.
    pub(crate) layers: Option<(PathBuf, PathBuf)>,
    /// Keeps the layers' descriptors open until the report.
    pub(crate) _built: Option<rootfs::BuiltRoot>,
}

/// The hostname check/set step, shared by both set-ups.
pub(crate) fn set_hostname(plan: &SandboxPlan) -> Result<(), String> {
    sys::sethostname(&plan.hostname).map_err(|e| format!("setting hostname: {e}"))
}

/// Binds the egress bridge when the plan asks for it (loopback must be up).
pub(crate) fn bind_bridge(plan: &SandboxPlan) -> Result<Option<crate::net::Bridge>, String> {
    if !plan.egress {
        return Ok(None);
    }
    crate::net::Bridge::bind()
        .map(Some)
        .map_err(|e| format!("network: binding the DNS and proxy ports: {e}"))
}

/// The working directory and the plan's rlimits (lowered, never raised).
pub(crate) fn cwd_and_rlimits(plan: &SandboxPlan) -> Result<(), String> {
    std::env::set_current_dir(&plan.cwd)
        .map_err(|e| format!("entering {}: {e}", plan.cwd.display()))?;
    for r in &plan.rlimits {
        let (res, v, what) = match *r {
            Rlimit::NoFile(v) => (libc::RLIMIT_NOFILE, v, "open files"),
            Rlimit::Core(v) => (libc::RLIMIT_CORE, v, "core size"),
        };
        sys::lower_rlimit(res, v).map_err(|e| format!("setting the {what} limit: {e}"))?;
    }
    Ok(())
}

/// The plan's compiled seccomp program, parsed (applied later, last).
pub(crate) fn seccomp_program(plan: &SandboxPlan) -> Result<Option<SeccompProgram>, String> {
    plan.seccomp
        .as_deref()
        .map(SeccompProgram::from_bytes)
        .transpose()
        .map_err(|e| format!("loading the seccomp program: {e}"))
}

/// Runs as PID 1 until the command ends; never returns.
pub fn run(
    plan: &SandboxPlan,
    pre: PreOpened,
    gate: CgroupGate,
    mut ctrl: UnixStream,
    allow_weaker: bool,
) -> ! {
    let prepared = match setup(plan, pre, gate, allow_weaker) {
        Ok(p) => p,
        Err(message) => setup_failed(&mut ctrl, message),
    };
    serve(plan, ctrl, prepared)
}

/// The container level's set-up: the root, cgroups, hostname, loopback, the bridge, cwd,
/// rlimits, then identity, Landlock and seccomp.
fn setup(
    plan: &SandboxPlan,
    pre: PreOpened,
    gate: CgroupGate,
    allow_weaker: bool,
) -> Result<Prepared, String> {
    if plan.egress {
        crate::net::allow_low_ports().map_err(|e| format!("network: {e}"))?;
    }
    let built = rootfs::build(plan, pre).map_err(|e| format!("building the sandbox root: {e}"))?;
    // The launcher joined us to our cgroups while the root was built; from here on the limits hold.
    launch::enter_cgroups(gate).map_err(|e| e.to_string())?;
    set_hostname(plan)?;
    sys::loopback_up().map_err(|e| format!("bringing up loopback: {e}"))?;
    let bridge = bind_bridge(plan)?;
    cwd_and_rlimits(plan)?;
    let seccomp = seccomp_program(plan)?;
    let mut ruleset = confine::prepare_landlock(&plan.landlock).map_err(|e| e.to_string())?;
    // The agent alone reads the overlay's layers (through descriptors, no path leads there).
    let layers: Option<(PathBuf, PathBuf)> = match (&built.overlay_upper, &built.overlay_lower) {
        (Some(u), Some(l)) => Some((fd_path(u), fd_path(l))),
        _ => None,
    };
    if let (Some(u), Some(l), Some(rs)) = (
        &built.overlay_upper,
        &built.overlay_lower,
        ruleset.take_if(|_| layers.is_some()),
    ) {
        use landlock::{ABI, AccessFs, PathBeneath, RulesetCreatedAttr};
        let read = AccessFs::from_read(ABI::V6);
        let rs = rs
            .add_rule(PathBeneath::new(u, read))
            .and_then(|rs| rs.add_rule(PathBeneath::new(l, read)))
            .map_err(|e| format!("landlock: {e}"))?;
        ruleset = Some(rs);
    }
    confine::drop_privileges(plan.uid, plan.gid, plan.idmap_host_uid.is_some())
        .map_err(|e| e.to_string())?;
    let enforced = confine::restrict(
        ruleset,
        plan.landlock.required,
        allow_weaker,
        seccomp.as_ref(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Prepared {
        enforced,
        bridge,
        layers,
        _built: Some(built),
    })
}

/// The end every agent shares once confined: Ready, wait for Go, the command (or the session's
/// requests), kill every other process of the sandbox and reap, report. Never returns.
pub(crate) fn serve(plan: &SandboxPlan, mut ctrl: UnixStream, prepared: Prepared) -> ! {
    let Prepared {
        enforced,
        mut bridge,
        layers,
        _built,
    } = prepared;
    let sfd = match block_sigchld() {
        Ok(fd) => fd,
        Err(e) => setup_failed(&mut ctrl, format!("signalfd: {e}")),
    };
    if write_frame(&mut ctrl, &AgentMsg::Ready { enforced }).is_err() {
        exit(125);
    }
    // Nothing untrusted runs until the supervisor has recorded the start.
    match read_frame::<SupervisorMsg>(&mut ctrl) {
        Ok(Some(SupervisorMsg::Go)) => {}
        _ => exit(0),
    }
    // In a microVM guest the guest kernel's own OOM kills are the memory limit: counted from
    // here (the count is the whole guest's, which holds nothing but this sandbox).
    let oom_before = plan.vm_guest.then(guest_oom_kills).flatten();
    let termination = if plan.session {
        // Requests until Stop (or the supervisor is gone); then the same end as a command's.
        crate::session::serve(&sfd, &mut ctrl, bridge.as_mut());
        Termination::Exited(0)
    } else {
        let pid = match spawn(plan) {
            Ok(pid) => pid,
            Err((code, message)) => {
                let _ = write_frame(&mut ctrl, &AgentMsg::ExecFailed { code, message });
                exit(code)
            }
        };
        if write_frame(&mut ctrl, &AgentMsg::Started { pid }).is_err() {
            kill_all_and_reap();
            exit(125);
        }
        wait_main(pid, &sfd, &mut ctrl, bridge.as_mut())
    };
    kill_all_and_reap();
    let (changes, changes_error) = match layers {
        Some((u, l)) => match changes::overlay_changes(&u, &l, CHANGE_LIMIT) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    let _ = write_frame(
        &mut ctrl,
        &AgentMsg::Exited {
            termination,
            changes,
            changes_error,
            scratch_full: scratch_full(plan),
            guest_oom: oom_before
                .zip(guest_oom_kills())
                .is_some_and(|(before, after)| after > before),
        },
    );
    exit(0)
}

/// Whether a scratch tmpfs has less than 64 KiB left. At the container level one tmpfs backs
/// /tmp, HOME and /dev/shm (checking any of them is checking it); at the gvisor level runsc
/// makes one per mount point (and one for a `tmp` workspace), each with its share of the
/// budget: any of them full counts. Only tmpfs mounts count (a HOME that is a bind of a host
/// directory is not the scratch budget).
fn scratch_full(plan: &SandboxPlan) -> bool {
    let mut paths = vec![
        PathBuf::from("/tmp"),
        plan.home.clone(),
        PathBuf::from("/dev/shm"),
    ];
    if plan.workspace.kind == stockade_jail::plan::WorkspaceKind::Tmp {
        paths.push(plan.workspace.target.clone());
    }
    paths.iter().any(|p| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: `st` is a valid out-pointer for the call; `c` is a NUL-terminated path that
        // lives across it.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return false;
        }
        st.f_type == libc::TMPFS_MAGIC
            && st.f_blocks > 0
            && (st.f_bavail as u64).saturating_mul(st.f_bsize as u64) < 64 * 1024
    })
}

/// The guest kernel's count of OOM kills (`oom_kill` in /proc/vmstat).
fn guest_oom_kills() -> Option<u64> {
    std::fs::read_to_string("/proc/vmstat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn block_sigchld() -> io::Result<OwnedFd> {
    // SAFETY: `set` is a valid sigset_t on this frame, initialised by sigemptyset before use;
    // sigprocmask/signalfd read it only during the calls. PID 1 is single-threaded.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Finds `name` on PATH the way execvp would; (126|127, message) when it cannot be run.
pub(crate) fn resolve(name: &str, path_var: &str) -> Result<PathBuf, (i32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let check = |p: &Path| -> Result<PathBuf, (i32, String)> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Err((126, format!("{}: is a directory", p.display()))),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                Err((126, format!("{}: permission denied", p.display())))
            }
            Ok(_) => Ok(p.to_path_buf()),
            Err(_) => Err((
                127,
                format!("{}: not found inside the sandbox", p.display()),
            )),
        }
    };
    if name.contains('/') {
        return check(Path::new(name));
    }
    let mut first_denied = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(name);
        match check(&cand) {
            Ok(p) => return Ok(p),
            Err((126, m)) if first_denied.is_none() => first_denied = Some((126, m)),
            Err(_) => {}
        }
    }
    Err(first_denied.unwrap_or((127, format!("{name}: command not found inside the sandbox"))))
}

pub(crate) fn cstring(s: &[u8]) -> Result<CString, (i32, String)> {
    CString::new(s).map_err(|_| {
        (
            126,
            "argument or environment contains a NUL byte".to_string(),
        )
    })
}

/// argv and envp as C strings with the NULL-terminated pointer arrays execve takes. The
/// pointers point into the strings' own heap buffers, which this value keeps alive: hold it
/// until the exec (or the fork that copies it) is done.
pub(crate) struct ExecArgs {
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    pub(crate) argv_p: Vec<*const libc::c_char>,
    pub(crate) envp_p: Vec<*const libc::c_char>,
}

impl ExecArgs {
    /// 126 with a message when an argument or a variable holds a NUL byte.
    pub(crate) fn new(
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<ExecArgs, (i32, String)> {
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_p.push(std::ptr::null());
        Ok(ExecArgs {
            _argv: argv,
            _envp: envp,
            argv_p,
            envp_p,
        })
    }
}

/// Forks and execs the command in its own session. Reports exec failures through a CLOEXEC pipe.
fn spawn(plan: &SandboxPlan) -> Result<i32, (i32, String)> {
    let argv0 = plan
        .argv
        .first()
        .ok_or((125, "no command given".to_string()))?;
    let path_var = plan
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/bin:/bin", |(_, v)| v.as_str());
    let exe = resolve(argv0, path_var)?;
    let exe_c = cstring(exe.as_os_str().as_bytes())?;
    let args = ExecArgs::new(&plan.argv, &plan.env)?;
    let (argv_p, envp_p) = (&args.argv_p, &args.envp_p);
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err((125, format!("pipe: {}", io::Error::last_os_error())));
    }
    // SAFETY: fork in PID 1, which is single-threaded. Between fork and exec the child only calls
    // async-signal-safe functions on memory prepared above (argv/envp pointers stay valid: the
    // child has its own copy of this stack and heap).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((125, format!("fork: {}", io::Error::last_os_error())));
    }
    if pid == 0 {
        // SAFETY: child side; see above. Every call is async-signal-safe and touches only data
        // owned by this frame. On any failure the child reports errno and exits.
        unsafe {
            child_prelude();
            libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            let e: i32 = *libc::__errno_location();
            libc::write(fds[1], (&e as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    // SAFETY: we own both pipe ends; closing the write end lets the read see EOF on a successful exec.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is our read end, owned from here by `r`.
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut buf = [0u8; 4];
    match r.read(&mut buf) {
        Ok(4) => {
            let e = i32::from_ne_bytes(buf);
            let _ = sys::waitpid(pid, 0);
            let code = if e == libc::ENOENT { 127 } else { 126 };
            Err((
                code,
                format!("{}: {}", exe.display(), io::Error::from_raw_os_error(e)),
            ))
        }
        _ => Ok(pid),
    }
}

/// The child's set-up between fork and exec, shared by the command and session requests:
/// signals back to default and unblocked, a new session, dumpable, oom_score_adj 500.
///
/// # Safety
/// Only in a child just forked from PID 1 (single-threaded), before exec: it makes only
/// async-signal-safe calls on its own stack.
pub(crate) unsafe fn child_prelude() {
    // SAFETY: per the contract above; every pointer is to this frame or a static C string.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Dispositions set by this Rust process (SIGPIPE ignored) must not reach the command.
        for sig in 1..32 {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::setsid();
        // PID 1's non-dumpable flag was inherited: while it is set, /proc/self belongs to
        // root and the write below would fail. exec resets it anyway.
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        let adj = b"500";
        let f = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if f >= 0 {
            libc::write(f, adj.as_ptr().cast(), adj.len());
            libc::close(f);
        }
    }
}

/// Waits for the command, reaping orphans; a Stop message or a lost supervisor ends it early.
fn wait_main(
    pid: i32,
    sfd: &OwnedFd,
    ctrl: &mut UnixStream,
    mut bridge: Option<&mut crate::net::Bridge>,
) -> Termination {
    loop {
        if let Some(t) = reap(pid) {
            return t;
        }
        let mut pfd = vec![
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ctrl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(b) = bridge.as_deref() {
            pfd.extend(b.fds().into_iter().map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }));
        }
        // SAFETY: `pfd` is a valid array of pollfd structs of the given length for the call.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), pfd.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        if pfd[0].revents != 0 {
            let mut info = [0u8; 128];
            // SAFETY: draining the signalfd into a stack buffer of the documented record size.
            while unsafe { libc::read(sfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {
            }
        }
        if pfd[1].revents != 0 {
            match read_frame::<SupervisorMsg>(ctrl) {
                Ok(Some(SupervisorMsg::Go)) => {} // already running; a repeated Go changes nothing
                // Session requests mean nothing to a one-shot run.
                Ok(Some(
                    SupervisorMsg::Exec(_)
                    | SupervisorMsg::Signal { .. }
                    | SupervisorMsg::Fs { .. }
                    | SupervisorMsg::Resize { .. },
                )) => {}
                Ok(Some(SupervisorMsg::DnsReply {
                    token,
                    allowed,
                    ports,
                })) => {
                    if let Some(b) = bridge.as_deref_mut() {
                        b.reply(token, allowed, &ports);
                    }
                }
                Ok(Some(SupervisorMsg::Stop)) | Ok(None) | Err(_) => {
                    kill_all_and_reap();
                    return reap_blocking(pid);
                }
            }
        }
        if let Some(b) = bridge.as_deref_mut() {
            for p in pfd.iter().skip(2).filter(|p| p.revents != 0) {
                b.ready(p.fd, ctrl);
            }
        }
    }
}

pub(crate) fn decode(status: i32) -> Termination {
    if libc::WIFSIGNALED(status) {
        Termination::Signaled(libc::WTERMSIG(status))
    } else {
        Termination::Exited(libc::WEXITSTATUS(status))
    }
}

/// Reaps every exited child without blocking; returns the command's termination if it was among them.
fn reap(main: i32) -> Option<Termination> {
    let mut result = None;
    while let Ok((p, st)) = sys::waitpid(-1, libc::WNOHANG) {
        if p <= 0 {
            break;
        }
        if p == main {
            result = Some(decode(st));
        }
    }
    result
}

fn reap_blocking(main: i32) -> Termination {
    match sys::waitpid(main, 0) {
        Ok((_, st)) => decode(st),
        Err(_) => Termination::Signaled(libc::SIGKILL),
    }
}

/// Kills every other process of the sandbox and reaps them all. kill(-1) signals every process
/// the caller may signal except itself and the namespace's init: as the sandbox's PID 1 that is
/// every other process; as the direct-mode agent (a subreaper under the gVisor tunnel, PID 1)
/// it is every process of the sandbox user, which is everything the agent started.
pub(crate) fn kill_all_and_reap() {
    // SAFETY: kill(-1) takes integers only and never signals the caller or PID 1.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    while let Ok((p, _)) = sys::waitpid(-1, 0) {
        if p <= 0 {
            break;
        }
    }
    // SAFETY: getpid takes no arguments and cannot fail.
    if unsafe { libc::getpid() } != 1 {
        wait_others_gone();
    }
}

/// Not PID 1 (the gvisor level): orphans may belong to PID 1, not to us, so waitpid cannot tell
/// when they are dead. Waits (bounded: 5 s) until /proc lists no live process but PID 1 and
/// this one; zombies are left for their parent to reap.
fn wait_others_gone() {
    // SAFETY: getpid takes no arguments and cannot fail.
    let me = unsafe { libc::getpid() };
    let live_other = || -> bool {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return false;
        };
        rd.flatten().any(|e| {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                return false;
            };
            if pid == 1 || pid == me {
                return false;
            }
            // State is the field after the parenthesised command name.
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                st.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next())
                    .is_some_and(|c| c != 'Z' && c != 'X')
            })
        })
    };
    let start = std::time::Instant::now();
    while live_other() && start.elapsed() < std::time::Duration::from_secs(5) {
        // Anything that raced the first kill (forked meanwhile) is signalled again.
        // SAFETY: as in kill_all_and_reap.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
