//! Violations as the kernel reports them: seccomp denials (audit record type 1326, logged because
//! the filter is installed with SECCOMP_FILTER_FLAG_LOG) and Landlock denials (types 1423/1424,
//! logged for the command because the domain is created with LOG_NEW_EXEC_ON), read from
//! /dev/kmsg, where the kernel prints audit records when no audit daemon is registered.
//!
//! Attribution: a root-launched sandbox runs as its own otherwise unused host uid, so a record's
//! `uid=` names the sandbox exactly. Runs launched by ordinary users cannot read /dev/kmsg on most
//! hosts (dmesg_restrict), and their uid is not unique: no violation events there (doctor says so).
//! Limits: the kernel rate-limits these printk records (about 10 per 5 s burst) and drops them
//! when an audit daemon is running (it gets them instead); so this is "where it can be observed".

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use stockade_audit::{EventKind, Recorder, ViolationKind};

pub struct Watch {
    stop: std::os::fd::OwnedFd,
    handle: JoinHandle<()>,
}

impl Watch {
    /// Stops after draining what the kernel has already printed. Records are printed while the
    /// denied syscall runs, so once the command has ended everything about it is readable.
    pub fn finish(self) {
        drop(self.stop); // EOF on the pipe wakes the thread, which drains and returns
        let _ = self.handle.join();
    }
}

/// A parsed `key=value` record body.
pub fn fields(body: &str) -> HashMap<&str, &str> {
    let mut out = HashMap::new();
    let mut rest = body;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(' ').next().unwrap_or("").trim();
        let after = &rest[eq + 1..];
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(' ') {
                Some(sp) => (&after[..sp], &after[sp..]),
                None => (after, ""),
            }
        };
        if !key.is_empty() {
            out.insert(key, val);
        }
        rest = next;
    }
    out
}

/// Turns one kmsg line into a violation for `uid`, tracking Landlock domains in `domains`.
pub fn parse_line(line: &str, uid: u32, domains: &mut Vec<String>) -> Option<EventKind> {
    let body = line.split_once(';').map_or(line, |(_, b)| b);
    let rest = body.strip_prefix("audit: type=")?;
    let (ty, rest) = rest.split_once(' ')?;
    let f = fields(rest);
    let uid_s = uid.to_string();
    match ty {
        "1326" if f.get("uid") == Some(&uid_s.as_str()) => {
            let code = u32::from_str_radix(f.get("code")?.trim_start_matches("0x"), 16).ok()?;
            let action = code & 0x7fff_0000;
            // The record carries the action; the errno (data) is usually masked out, and 0 means
            // "not reported" rather than success.
            let errno =
                (action == 0x0005_0000 && code & 0xffff != 0).then_some((code & 0xffff) as i32);
            let nr: i64 = f.get("syscall")?.parse().ok()?;
            let name = stockade_jail::seccomp::syscall_name(nr)
                .map_or_else(|| format!("#{nr}"), str::to_string);
            Some(EventKind::Violation {
                kind: ViolationKind::Syscall,
                detail: format!(
                    "seccomp denied {name} (pid {} comm {})",
                    f.get("pid").unwrap_or(&"?"),
                    f.get("comm").unwrap_or(&"?")
                ),
                syscall: Some(name),
                path: None,
                errno,
            })
        }
        "1424" if f.get("uid") == Some(&uid_s.as_str()) => {
            if let Some(d) = f.get("domain") {
                domains.push((*d).to_string());
            }
            None
        }
        "1423" => {
            let domain = f.get("domain")?;
            if !domains.iter().any(|d| d == domain) {
                return None;
            }
            let blockers = f.get("blockers").copied().unwrap_or("?");
            Some(EventKind::Violation {
                kind: ViolationKind::Landlock,
                detail: format!("landlock denied {blockers}"),
                syscall: None,
                path: f.get("path").map(|p| (*p).to_string()),
                errno: None,
            })
        }
        _ => None,
    }
}

/// Starts watching for `uid`'s violations; None when /dev/kmsg is not readable here.
pub fn watch(uid: u32, recorder: Arc<Mutex<Recorder>>, exec_id: String) -> Option<Watch> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    // SAFETY: lseek on our own descriptor; SEEK_END on /dev/kmsg skips records printed before now.
    unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int out-array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    let (stop_r, stop) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let handle = std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        let mut domains = Vec::new();
        let mut stopping = false;
        loop {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    if let Some(ev) = parse_line(line.trim_end(), uid, &mut domains)
                        && let Ok(mut r) = recorder.lock()
                    {
                        let _ = r.emit(Some(&exec_id), ev);
                    }
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // overwritten records
                _ => {}
            }
            if stopping {
                return;
            }
            let mut pfd = [
                libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop_r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: a valid two-element pollfd array for the duration of the call.
            unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
            if pfd[1].revents != 0 {
                stopping = true; // one more drain, then return
            }
        }
    });
    Some(Watch { stop, handle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seccomp_and_landlock_records_for_our_uid_only() {
        let mut d = Vec::new();
        let sec = "5,1234,999,-;audit: type=1326 audit(1732724400.123:45): auid=4294967295 uid=1879048200 gid=1879048200 ses=4294967295 subj=unconfined pid=4242 comm=\"python3\" exe=\"/usr/bin/python3.11\" sig=0 arch=c000003e syscall=272 compat=0 ip=0x7f code=0x50001";
        match parse_line(sec, 1879048200, &mut d) {
            Some(EventKind::Violation {
                kind: ViolationKind::Syscall,
                syscall,
                errno,
                ..
            }) => {
                assert_eq!(syscall.as_deref(), Some("unshare"));
                assert_eq!(errno, Some(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse_line(sec, 1000, &mut d).is_none(),
            "another uid's record must not be attributed"
        );
        let dom = "5,1,2,-;audit: type=1424 audit(1.2:3): domain=1a2b status=allocated mode=enforcing pid=7 uid=1879048200 exe=\"/x\" comm=\"ls\"";
        assert!(parse_line(dom, 1879048200, &mut d).is_none());
        let acc = "5,1,2,-;audit: type=1423 audit(1.2:3): domain=1a2b blockers=fs.read_dir path=\"/dev/pts\" dev=\"devpts\" ino=1";
        match parse_line(acc, 1879048200, &mut d) {
            Some(EventKind::Violation {
                kind: ViolationKind::Landlock,
                path,
                detail,
                ..
            }) => {
                assert_eq!(path.as_deref(), Some("/dev/pts"));
                assert!(detail.contains("fs.read_dir"));
            }
            other => panic!("{other:?}"),
        }
        let foreign = acc.replace("1a2b", "ffff");
        assert!(parse_line(&foreign, 1879048200, &mut d).is_none());
    }
}
