//! Cleaning up after a server that died while its sandboxes ran.

use super::*;

/// Cleans up after a session whose server died (blocking): kills its launcher if it is still
/// the same process, removes its cgroups, and appends `sandbox.destroyed` (reason `error`,
/// "supervisor lost") to its audit log when that event is missing.
pub fn recover(record: &RecoveryRecord) -> RecoveryReport {
    let mut killed = false;
    let pid = record.launcher_pid;
    if pid > 0 && start_time(pid).is_some_and(|t| t == record.launcher_starttime) {
        // SAFETY: kill with a positive pid and a valid signal number; the start time check
        // above makes sure it is still our launcher, not a reused pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        killed = true;
        let until = Instant::now() + Duration::from_secs(5);
        while start_time(pid).is_some_and(|t| t == record.launcher_starttime)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut leftovers = Vec::new();
    for dir in &record.cgroup_dirs {
        // Only directories under a stockade cgroup parent are touched (the record is ours,
        // but a damaged database must not make us remove someone else's cgroup).
        if !dir.components().any(|c| c.as_os_str() == "stockade") {
            leftovers.push(format!(
                "{}: not a stockade cgroup, left alone",
                dir.display()
            ));
            continue;
        }
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if !dir.exists() {
                break;
            }
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill with a pid read from the sandbox's own cgroup.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            if std::fs::remove_dir(dir).is_ok() || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if dir.exists() {
            leftovers.push(format!("cgroup {}", dir.display()));
        }
    }
    leftovers.extend(crate::backend::cleanup_after(&record.id));
    if let Some(log) = &record.audit_log {
        close_log(log, &record.id, &leftovers);
    }
    RecoveryReport { killed, leftovers }
}

/// Appends `sandbox.destroyed` to a log that lacks it (events written before the crash stay).
fn close_log(log: &Path, id: &str, leftovers: &[String]) {
    let Ok(parsed) = stockade_audit::reader::read_log(log) else {
        return;
    };
    if parsed
        .events
        .iter()
        .any(|e| matches!(e.kind, EventKind::SandboxDestroyed { .. }))
    {
        return;
    }
    let last = parsed.events.iter().map(|e| e.seq).max().unwrap_or(0);
    let started = parsed.events.first().map(|e| e.at.clone());
    let Some(state) = log
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|p| stockade_audit::StateDir(p.to_path_buf()))
    else {
        return;
    };
    if let Ok(mut rec) = stockade_audit::Recorder::reopen(
        &state,
        id,
        last,
        stockade_audit::Redactor::new(Vec::new()),
    ) {
        let _ = rec.emit(
            None,
            EventKind::SandboxDestroyed {
                reason: DestroyReason::Error,
                clean: leftovers.is_empty(),
                leftovers: leftovers.to_vec(),
                duration_ms: 0,
                error: Some(format!(
                    "supervisor lost: the server died while the sandbox ran (started {}); cleaned up at restart",
                    started.unwrap_or_default()
                )),
            },
        );
        let _ = rec.sync();
    }
    let _ = std::fs::remove_file(log.with_file_name("supervisor"));
}
