//! `stockade __vmm`: the host side of a gvisor or microvm sandbox, started by the supervisor in
//! place of `__launch` with the same descriptors (0/1/2 the command's stdio, 3 control, 4 plan,
//! 5 liveness).
//!
//! It reads the plan, joins the sandbox's cgroups (so the backend and all it starts are inside
//! the limits), prepares the backend (an OCI bundle for runsc; for QEMU, a private mount
//! namespace whose view directory holds only what the plan binds), starts it with the tunnel's
//! byte stream on its stdin/stdout, and then carries descriptors 0-5 through the tunnel.
//!
//! Like the launcher it is the sandbox's guardian: if the supervisor dies (liveness EOF) and the
//! guest does not end by itself within a moment, it kills the backend, removes the cgroups and
//! its work directory.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stockade_agent::launcher::{CTRL_FD, LIVENESS_FD, PLAN_FD};
use stockade_agent::protocol::{AgentMsg, write_frame};
use stockade_agent::tunnel::{self, Role, Way};
use stockade_jail::plan::{BackendLevel, BackendSpec, SandboxPlan};
use stockade_jail::sys;

/// Entry point; returns the exit code.
pub fn main(allow_weaker: bool) -> i32 {
    if sys::close_fds_from(LIVENESS_FD + 1).is_err() {
        return 125;
    }
    for fd in [0, 1, 2, CTRL_FD, PLAN_FD, LIVENESS_FD] {
        if sys::set_cloexec(fd).is_err() {
            return 125;
        }
    }
    // SAFETY: the supervisor placed these descriptors at fixed numbers before exec and nothing
    // else in this fresh process owns them.
    let (ctrl, mut plan_pipe, liveness, stdin, stdout, stderr) = unsafe {
        (
            UnixStream::from_raw_fd(CTRL_FD),
            std::fs::File::from_raw_fd(PLAN_FD),
            OwnedFd::from_raw_fd(LIVENESS_FD),
            OwnedFd::from_raw_fd(0),
            OwnedFd::from_raw_fd(1),
            OwnedFd::from_raw_fd(2),
        )
    };
    let mut report = match ctrl.try_clone() {
        Ok(c) => c,
        Err(_) => return 125,
    };
    let mut fail = |message: String| {
        let _ = write_frame(&mut report, &AgentMsg::SetupFailed { message });
        125
    };
    let mut buf = Vec::new();
    if let Err(e) = plan_pipe.read_to_end(&mut buf) {
        return fail(format!("reading the plan: {e}"));
    }
    drop(plan_pipe);
    let mut plan: SandboxPlan = match serde_json::from_slice(&buf) {
        Ok(p) => p,
        Err(e) => return fail(format!("bad plan: {e}")),
    };
    let Some(spec) = plan.backend.take() else {
        return fail("__vmm needs a plan with a backend".into());
    };
    if let Err(e) = make_work_dir(&spec.work_dir) {
        return fail(format!("creating {}: {e}", spec.work_dir.display()));
    }
    let started = match start_backend(&plan, &spec, allow_weaker) {
        Ok(s) => s,
        Err(e) => {
            cleanup(&plan, &spec);
            return fail(e);
        }
    };
    let Started {
        mut child,
        guest_plan,
        h2g,
        g2h,
        log,
    } = started;
    let (plan_r, plan_w) = match stockade_jail::sys::pipe_cloexec() {
        Ok(p) => p,
        Err(e) => {
            kill(&mut child);
            cleanup(&plan, &spec);
            return fail(format!("pipe: {e}"));
        }
    };
    std::thread::spawn(move || {
        let _ = std::fs::File::from(plan_w).write_all(&guest_plan);
    });
    // The supervisor's death: the guest hears it through the tunnel (its launcher then ends the
    // sandbox); if the backend is still there a moment later, it is killed here.
    let live_for_tunnel = match liveness.try_clone() {
        Ok(l) => l,
        Err(e) => {
            kill(&mut child);
            cleanup(&plan, &spec);
            return fail(format!("dup: {e}"));
        }
    };
    // Kept to tell, once the tunnel ends, whether the supervisor is gone.
    let live_check = match liveness.try_clone() {
        Ok(l) => l,
        Err(e) => {
            kill(&mut child);
            cleanup(&plan, &spec);
            return fail(format!("dup: {e}"));
        }
    };
    let child_pid = child.id() as libc::pid_t;
    {
        let plan = plan.clone();
        let spec = spec.clone();
        std::thread::spawn(move || guard(liveness, child_pid, &plan, &spec));
    }
    let fixed = vec![
        (tunnel::PLAN, plan_r, Way::Send),
        (tunnel::LIVENESS, live_for_tunnel, Way::Send),
        (tunnel::STDIN, stdin, Way::Send),
        (tunnel::STDOUT, stdout, Way::Recv),
        (tunnel::STDERR, stderr, Way::Recv),
    ];
    let outcome = tunnel::run(Role::Host, g2h, h2g, ctrl, fixed);
    // The guest's side is gone: the backend ends by itself (the VM powered off, the container
    // init exited); give it a moment, then make sure.
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                kill(&mut child);
                break None;
            }
        }
    };
    let spoke = outcome.as_ref().is_ok_and(|o| o.peer_spoke);
    if !spoke {
        let what = match spec.level {
            BackendLevel::Gvisor => "runsc",
            BackendLevel::Microvm => "QEMU",
        };
        let how = match status {
            Some(s) => s.to_string(),
            None => "no exit within 3 s after the guest went silent".into(),
        };
        let tail = log_tail(&log);
        cleanup(&plan, &spec);
        return fail(format!(
            "{what} ended before the sandbox started ({how}){}{tail}",
            if tail.is_empty() { "" } else { ": " }
        ));
    }
    if let Err(e) = outcome {
        let _ = writeln!(std::io::stderr(), "stockade: tunnel: {e}");
    }
    cleanup(&plan, &spec);
    if hung_up(&live_check) {
        // The supervisor died (its end of the liveness pipe is closed) and the sandbox ended
        // with it before the guard's grace period was over: the cgroups are ours to remove,
        // as the guard would (returning here ends the guard thread with this process).
        let left = stockade_jail::launch::reap_cgroups(&plan.cgroup_dirs);
        return if left.is_empty() { 0 } else { 1 };
    }
    0
}

/// Whether the other end of the liveness pipe is closed (the supervisor is gone), now.
fn hung_up(liveness: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: liveness.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; timeout 0.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN | libc::POLLERR) != 0
}

struct Started {
    child: Child,
    /// The plan as the guest runs it (JSON).
    guest_plan: Vec<u8>,
    /// Host → guest (the backend's stdin).
    h2g: OwnedFd,
    /// Guest → host (the backend's stdout).
    g2h: OwnedFd,
    /// The backend's stderr (its own messages, the guest's console).
    log: PathBuf,
}

fn make_work_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

fn start_backend(
    plan: &SandboxPlan,
    spec: &BackendSpec,
    allow_weaker: bool,
) -> Result<Started, String> {
    let log = spec.work_dir.join("backend.log");
    let (mut cmd, guest_plan, run_as) = match spec.level {
        BackendLevel::Gvisor => {
            let runsc = spec
                .runsc
                .clone()
                .ok_or("gvisor: no runsc binary in the plan")?;
            let platform = spec.platform.clone().unwrap_or_else(|| "ptrace".into());
            let bundle = spec.work_dir.join("bundle");
            let mut args: Vec<String> = crate::gvisor::GUEST_ARGS
                .iter()
                .map(|s| s.to_string())
                .collect();
            if allow_weaker {
                args.push(stockade_agent::launcher::ALLOW_WEAKER_ARG.into());
            }
            idmap_for_gvisor(plan)?;
            let guest =
                crate::gvisor::write_bundle_with_args(plan, &bundle, &spec.guest_bin, &args)?;
            let cmd = crate::gvisor::runsc_command(
                &runsc,
                &platform,
                &spec.work_dir.join("runsc"),
                &bundle,
                &runsc_id(&plan.id),
            );
            (cmd, guest, None)
        }
        BackendLevel::Microvm => prepare_microvm(plan, spec, allow_weaker)?,
    };
    let guest_plan = serde_json::to_vec(&guest_plan).map_err(|e| format!("plan: {e}"))?;
    let (h2g_r, h2g_w) = stockade_jail::sys::pipe_cloexec().map_err(|e| format!("pipe: {e}"))?;
    let (g2h_r, g2h_w) = stockade_jail::sys::pipe_cloexec().map_err(|e| format!("pipe: {e}"))?;
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    if let Some(id) = run_as {
        // QEMU reopens its stderr by path for the guest console.
        std::os::unix::fs::fchown(&log_file, Some(id), Some(id))
            .map_err(|e| format!("{}: {e}", log.display()))?;
    }
    cmd.stdin(Stdio::from(h2g_r))
        .stdout(Stdio::from(g2h_w))
        .stderr(Stdio::from(log_file));
    // The backend and everything it starts are inside the sandbox's limits (this process is not:
    // it must outlive them to clean up).
    let procs: Vec<std::ffi::CString> = plan
        .cgroup_procs
        .iter()
        .map(|p| sys::cstr(p))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cgroup path: {e}"))?;
    // SAFETY: the closure runs between fork and exec and only calls open, write, close,
    // setgroups, setresgid, setresuid, sigprocmask, signal and prctl, which are
    // async-signal-safe, on C strings prepared before the fork and integers.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(e);
                }
            }
            // Then the backend's own identity (after the cgroup join, which needs root).
            if let Some(id) = run_as
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(id, id, id) != 0
                    || libc::setresuid(id, id, id) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // Dies with us, whatever kills us.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    Ok(Started {
        child,
        guest_plan,
        h2g: h2g_w,
        g2h: g2h_r,
        log,
    })
}

/// gVisor's gofer (root) serves the sandbox's files: in a private mount namespace of this
/// process (runsc inherits it), each writable host path the plan idmaps (a rw workspace) is
/// covered by an idmapped clone of itself, so that, as at the container level, root-owned files
/// appear owned by the sandbox user and what it creates lands root-owned on disk. Two mappings:
/// on-disk root ↔ the sandbox uid, and the sandbox's own unused host uid ↔ root, which is what
/// the gofer's creations (as root) are stored as until it gives them to the sandbox user.
fn idmap_for_gvisor(plan: &SandboxPlan) -> Result<(), String> {
    let Some(unused) = plan.idmap_host_uid else {
        return Ok(()); // not launched by root: nothing is idmapped at any level
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    if plan.workspace.idmap && plan.workspace.kind == stockade_jail::plan::WorkspaceKind::Rw {
        paths.push(plan.workspace.host.clone());
    }
    for op in &plan.root_ops {
        if let stockade_jail::plan::RootOp::Bind(b) = op
            && b.writable
            && b.idmap
        {
            paths.push(b.source.clone());
        }
    }
    if paths.is_empty() {
        return Ok(());
    }
    private_mounts("gvisor")?;
    // `on-disk visible count` lines (the mount's namespace sees the disk's ids as its own).
    let uid_map = format!("0 {} 1\n{unused} 0 1\n", plan.uid);
    let gid_map = format!("0 {} 1\n{unused} 0 1\n", plan.gid);
    let ns = crate::microvm::idmap_userns_with(&uid_map, &gid_map)?;
    for p in &paths {
        let fd = sys::open_tree_clone(p, true)
            .map_err(|e| format!("gvisor: opening {}: {e}", p.display()))?;
        sys::mount_setattr_idmap(&fd, &ns).map_err(|e| {
            format!(
                "gvisor: idmapping {} (its filesystem must support idmapped mounts): {e}",
                p.display()
            )
        })?;
        sys::move_mount_fd(&fd, p)
            .map_err(|e| format!("gvisor: mounting the idmapped {}: {e}", p.display()))?;
    }
    Ok(())
}

/// The QEMU command and the guest's plan: in a private mount namespace of this process (QEMU
/// inherits it), a view directory holding only what the plan binds is exported to the guest.
fn prepare_microvm(
    plan: &SandboxPlan,
    spec: &BackendSpec,
    allow_weaker: bool,
) -> Result<(Command, SandboxPlan, Option<u32>), String> {
    use crate::microvm::{Assets, VmSpec, build_view, qemu_command};
    let assets = Assets::locate()?;
    let initramfs = assets.initramfs(&spec.guest_bin, None)?;
    // Only this process and QEMU see the view's mounts; they vanish with them.
    private_mounts("microvm")?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    // QEMU runs as the sandbox's own unused host uid (root launches) or as the caller.
    let qemu_uid = plan.idmap_host_uid.unwrap_or(me);
    let view = spec.work_dir.join("view");
    let guest = build_view(plan, &view, qemu_uid)?;
    let mut extra = Vec::new();
    if allow_weaker {
        extra.push("stockade.weaker=1".to_string());
    }
    let vm = VmSpec {
        memory: guest_memory(spec.memory),
        cpus: spec.cpus,
        accel: spec.accel.unwrap_or(stockade_jail::plan::Accel::Tcg),
        initramfs,
        view,
        console_log: None,
        extra_cmdline: extra,
    };
    let cmd = qemu_command(&assets, &vm)?;
    Ok((cmd, guest, (me == 0).then_some(qemu_uid)))
}

/// QEMU itself (TCG translation cache, devices, 9p) lives in the same memory limit as the
/// guest: the guest gets the limit less this.
pub const VMM_OVERHEAD: u64 = 192 << 20;

/// The least guest RAM a microVM gets (the kernel, the initramfs, the agent and a command).
pub const MIN_GUEST_MEMORY: u64 = 128 << 20;

/// The guest RAM for a sandbox whose memory limit is `limit` (at least [`MIN_GUEST_MEMORY`];
/// `backend::spec` refuses limits below `VMM_OVERHEAD + MIN_GUEST_MEMORY`).
pub fn guest_memory(limit: u64) -> u64 {
    limit.saturating_sub(VMM_OVERHEAD).max(MIN_GUEST_MEMORY)
}

/// Gives this process its own mount namespace with nothing propagating back to the host's: what
/// it mounts now (and the backend it starts, which inherits it) vanishes with them.
fn private_mounts(level: &str) -> Result<(), String> {
    sys::unshare(libc::CLONE_NEWNS).map_err(|e| format!("{level}: unshare(mount): {e}"))?;
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| format!("{level}: making mounts private: {e}"))
}

/// The runsc container id of sandbox `id`.
pub fn runsc_id(id: &str) -> String {
    format!("stockade-{id}")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes what the backend left on the host: runsc's container and state, the work directory.
fn cleanup(plan: &SandboxPlan, spec: &BackendSpec) {
    if let (BackendLevel::Gvisor, Some(runsc)) = (spec.level, &spec.runsc) {
        crate::gvisor::cleanup(runsc, &spec.work_dir.join("runsc"), &runsc_id(&plan.id));
    }
    let _ = std::fs::remove_dir_all(&spec.work_dir);
}

/// Waits for the supervisor's death; then gives the guest a moment to end by itself before
/// killing everything and cleaning up after it.
fn guard(liveness: OwnedFd, backend: libc::pid_t, plan: &SandboxPlan, spec: &BackendSpec) {
    loop {
        let mut pfd = libc::pollfd {
            fd: liveness.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill takes integers; `backend` is our own child, not reaped while the tunnel runs.
    unsafe { libc::kill(backend, libc::SIGKILL) };
    cleanup(plan, spec);
    let left = stockade_jail::launch::reap_cgroups(&plan.cgroup_dirs);
    std::process::exit(if left.is_empty() { 0 } else { 1 });
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    // The console is written from inside: bounded, and only printable characters pass.
    let chars: Vec<char> = lines[start..]
        .join(" | ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let from = chars.len().saturating_sub(2000);
    let tail: String = chars[from..].iter().collect();
    if from > 0 { format!("...{tail}") } else { tail }
}
