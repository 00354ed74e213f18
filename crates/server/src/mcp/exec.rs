//! Running one command for a tool call: its output collected (head and tail of each stream
//! kept, [`MAX_STREAM_BYTES`] returned), its end, and what the sandbox's audit trail recorded
//! while it ran (network names denied, limits hit), turned into a result a model can act on.

use super::{Current, MAX_STREAM_BYTES, NetInfo, ToolError, error_result, ok_result};
use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;
use stockade_audit::{Decision, Event, EventKind};
use stockade_policy::NetworkMode;
use stockade_runtime::session::{ExecEnd, ExecEvent, ExecSpec, Session, SessionError, Termination};
use tokio::sync::broadcast;

/// What to run.
pub struct CommandRequest {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub timeout: Duration,
    pub stdin: Option<String>,
    pub env: Vec<(String, String)>,
}

/// One stream as returned: the whole of it, or its head and tail around a marker.
#[derive(Debug)]
pub struct Captured {
    pub text: String,
    pub total_bytes: u64,
    pub truncated: bool,
}

const HEAD: usize = MAX_STREAM_BYTES / 4;
const TAIL: usize = MAX_STREAM_BYTES - HEAD;

/// Keeps the first [`HEAD`] and the last [`TAIL`] bytes of a stream.
#[derive(Default)]
struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < HEAD {
            let n = data.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= TAIL {
            self.tail.clear();
            self.tail.extend(&data[data.len() - TAIL..]);
        } else {
            self.tail.extend(data);
            if self.tail.len() > TAIL {
                let extra = self.tail.len() - TAIL;
                self.tail.drain(..extra);
            }
        }
    }

    fn finish(self) -> Captured {
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let kept = (self.head.len() + tail.len()) as u64;
        if kept >= self.total {
            let mut all = self.head;
            all.extend_from_slice(&tail);
            return Captured {
                text: String::from_utf8_lossy(&all).into_owned(),
                total_bytes: self.total,
                truncated: false,
            };
        }
        // The tail may start inside a UTF-8 sequence: skip its continuation bytes.
        let skip = tail
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count();
        let text = format!(
            "{}\n[... {} bytes left out: each stream is capped at {} KiB (its first {} KiB and last {} KiB are shown); redirect the output to a file and read it with read_file ...]\n{}",
            String::from_utf8_lossy(&self.head),
            self.total - kept,
            MAX_STREAM_BYTES / 1024,
            HEAD / 1024,
            TAIL / 1024,
            String::from_utf8_lossy(&tail[skip..])
        );
        Captured {
            text,
            total_bytes: self.total,
            truncated: true,
        }
    }
}

/// A network name the policy refused while the command ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDenial {
    pub name: String,
    pub port: Option<u16>,
    pub reason: String,
}

/// How one command went.
pub struct RunReport {
    pub exec_id: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub end: ExecEnd,
    pub duration: Duration,
    pub stdout: Captured,
    pub stderr: Captured,
    /// Output chunks a slow reader missed (never expected here: the relay keeps 4096).
    pub lagged: u64,
    pub network_denied: Vec<NetDenial>,
    /// `limit.hit` events of this command: (limit, detail).
    pub limits: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Length of the sandbox's audit trail now (events after it belong to what follows).
pub async fn trail_len(s: &Session) -> u64 {
    match s.audit_log() {
        Some(p) => tokio::fs::metadata(p).await.map(|m| m.len()).unwrap_or(0),
        None => 0,
    }
}

/// Events appended to the trail after byte `from`.
pub async fn events_since(s: &Session, from: u64) -> Vec<Event> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Some(p) = s.audit_log() else {
        return Vec::new();
    };
    let Ok(mut f) = tokio::fs::File::open(&p).await else {
        return Vec::new();
    };
    if f.seek(std::io::SeekFrom::Start(from)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    // Bounded: a command's own events, not a whole trail.
    if (&mut f)
        .take(16 * 1024 * 1024)
        .read_to_end(&mut buf)
        .await
        .is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    // A last line still being written is skipped (and its warning dropped: not the model's).
    stockade_audit::parse_log(&text, "audit").events
}

/// Runs a command to its end; `cancelled` (the client cancelled the call) kills it.
pub async fn run(
    c: &Current,
    req: CommandRequest,
    cancelled: impl Future<Output = ()>,
) -> Result<RunReport, ToolError> {
    let s = c.session();
    let from = trail_len(s).await;
    let spec = ExecSpec {
        argv: req.argv.clone(),
        env: req.env,
        cwd: req.cwd,
        stdin: req.stdin.is_some(),
        pty: None,
        timeout: Some(req.timeout),
        tag: Some("mcp".into()),
    };
    let h = match s.exec(spec).await {
        Ok(h) => h,
        Err(e) => return Err(exec_error(&req.argv, e)),
    };
    let mut rx = h.subscribe();
    if let Some(input) = req.stdin {
        let h = h.clone();
        tokio::spawn(async move {
            // A process that exits without reading its stdin makes this fail: not an error.
            let _ = h.write_stdin(input.as_bytes()).await;
            h.close_stdin().await;
        });
    }
    let mut out = Capture::default();
    let mut err = Capture::default();
    let mut lagged = 0u64;
    tokio::pin!(cancelled);
    let mut cancel_sent = false;
    let outcome = loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ExecEvent::Stdout(b)) | Ok(ExecEvent::Pty(b)) => out.push(&b),
                Ok(ExecEvent::Stderr(b)) => err.push(&b),
                Ok(ExecEvent::Exited(o)) => break o,
                Err(broadcast::error::RecvError::Lagged(n)) => lagged += n,
                Err(broadcast::error::RecvError::Closed) => break h.wait().await,
            },
            () = &mut cancelled, if !cancel_sent => {
                cancel_sent = true;
                let _ = h.signal(libc::SIGKILL);
            }
        }
    };
    let mut events = events_since(s, from).await;
    let net_possible = c.net.as_ref().is_none_or(|n| n.mode != NetworkMode::None);
    if outcome.exit_code != 0 && net_possible && denials(&events, h.exec_id()).is_empty() {
        // The gateway records a refusal as it answers: give a record racing the exit a moment.
        tokio::time::sleep(Duration::from_millis(150)).await;
        events = events_since(s, from).await;
    }
    let signal = match outcome.termination {
        Some(Termination::Signaled(sig)) => Some(sig),
        _ => None,
    };
    Ok(RunReport {
        exec_id: h.exec_id().to_string(),
        exit_code: outcome.exit_code,
        signal,
        end: outcome.end,
        duration: outcome.duration,
        stdout: out.finish(),
        stderr: err.finish(),
        lagged,
        network_denied: denials(&events, h.exec_id()),
        limits: limits(&events, h.exec_id()),
        timeout: req.timeout,
    })
}

/// Network refusals among `events`: the gateway's events of a session are not tied to one
/// process (`exec_id` "session" or none), so every refusal recorded while it ran counts.
fn denials(events: &[Event], exec_id: &str) -> Vec<NetDenial> {
    let mut v: Vec<NetDenial> = Vec::new();
    for e in events {
        let ours = match e.exec_id.as_deref() {
            None | Some("session") => true,
            Some(x) => x == exec_id,
        };
        if !ours {
            continue;
        }
        let d = match &e.kind {
            EventKind::NetDns {
                name,
                decision: Decision::Denied,
                reason,
                ..
            } => NetDenial {
                name: name.clone(),
                port: None,
                reason: reason.clone(),
            },
            EventKind::NetConnect {
                name,
                port,
                decision: Decision::Denied,
                reason,
                ..
            } => NetDenial {
                name: name.clone(),
                port: Some(*port),
                reason: reason.clone(),
            },
            _ => continue,
        };
        if d.name.is_empty() {
            continue;
        }
        // One line per name and reason (a lookup asks for A and AAAA; a client retries).
        if let Some(x) = v
            .iter_mut()
            .find(|x| x.name == d.name && x.reason == d.reason)
        {
            if x.port.is_none() {
                x.port = d.port;
            }
            continue;
        }
        v.push(d);
    }
    v
}

fn limits(events: &[Event], exec_id: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.exec_id.as_deref().is_none_or(|x| x == exec_id))
        .filter_map(|e| match &e.kind {
            EventKind::LimitHit { limit, detail, .. } => Some((
                serde_json::to_value(limit)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                detail.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// What a refusal means, for a model.
pub fn denial_message(d: &NetDenial, net: Option<&NetInfo>) -> String {
    let target = match d.port {
        Some(p) => format!("{}:{p}", d.name),
        None => d.name.clone(),
    };
    let why = match d.reason.as_str() {
        "denied:not_in_allowlist" => "is not in the allowlist".to_string(),
        "denied:in_denylist" => "is in the policy's denylist".to_string(),
        r if r.ends_with("_address") => format!(
            "resolves to an address the sandbox may not reach ({})",
            r.trim_start_matches("denied:").replace('_', " ")
        ),
        r => format!("was refused ({r})"),
    };
    let allows = match net {
        Some(n) => format!("the sandbox's network policy allows: {}", n.allows()),
        None => "the sandbox's network policy is not known to this server".into(),
    };
    format!("network: {target} {why} ({allows})")
}

/// Signs in a failed command's stderr that it wanted the network.
const NET_SIGNS: &[&str] = &[
    "could not resolve host",
    "temporary failure in name resolution",
    "name or service not known",
    "network is unreachable",
    "getaddrinfo",
    "name resolution",
    "no address associated",
    "enetunreach",
    "eai_again",
    "failed to establish a new connection",
    "connection refused",
];

fn signal_name(s: i32) -> String {
    match s {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGBUS => "SIGBUS".into(),
        _ => format!("signal {s}"),
    }
}

/// The result of a finished command. An error (`isError`) when it did not exit 0, was killed,
/// or ran out of time; the first line then says why and what to do.
pub fn report(
    c: &Current,
    r: RunReport,
    note: Option<String>,
    extra: BTreeMap<&str, Value>,
) -> CallToolResult {
    let mut problems: Vec<String> = Vec::new();
    for d in &r.network_denied {
        problems.push(denial_message(d, c.net.as_ref()));
    }
    match r.end {
        ExecEnd::Timeout => problems.push(format!(
            "timeout: the command ran for {} s, its time limit, and was killed (SIGKILL). Pass a larger `timeout` (at most {} s here), make it do less per call, or run it in the background writing to a file and check on it in later calls",
            r.timeout.as_secs(),
            c.max_timeout.as_secs()
        )),
        ExecEnd::Output => problems.push(
            "output limit: the command wrote more than the sandbox's output limit (limits.max_output) and was killed. Redirect its output to a file (`cmd > out.txt 2>&1`) and read parts of it with read_file".into(),
        ),
        ExecEnd::SandboxEnded => problems.push(
            "the sandbox ended while the command ran (it was reset, its TTL passed, or the server is stopping); the next call starts a new sandbox".into(),
        ),
        ExecEnd::Exited => {}
    }
    for (limit, detail) in &r.limits {
        if limit == "timeout" && r.end == ExecEnd::Timeout {
            continue;
        }
        problems.push(format!("limit: {limit}: {detail}"));
    }
    if r.end == ExecEnd::Exited {
        // SIGKILL that was not this tool's timeout: in a sandbox, most often the memory limit
        // (the kernel's OOM killer in its cgroup). The top process, or a child through a shell.
        let killed = r.signal == Some(libc::SIGKILL) || (r.signal.is_none() && r.exit_code == 137);
        if r.exit_code == 127 {
            problems.push(
                "exit code 127: command not found (a program the command names is not installed in the sandbox or not on its PATH; see stderr). Check the name, or use another tool (sh, python3, ...)".into(),
            );
        } else if r.exit_code == 126 {
            problems.push(
                "exit code 126: a program the command names is not executable (see stderr)".into(),
            );
        } else if killed {
            let limit = match c.memory {
                Some(m) => format!("limits.memory = {m}"),
                None => "limits.memory".into(),
            };
            let peak = c
                .session()
                .usage()
                .memory_peak_bytes
                .map(|p| {
                    format!(
                        "; the sandbox's memory peak so far: {}",
                        stockade_policy::ByteSize(p)
                    )
                })
                .unwrap_or_default();
            problems.push(format!(
                "killed by SIGKILL (exit code {}): in this sandbox that is most often its memory limit ({limit}{peak}). Use less memory (process data in chunks, smaller inputs)",
                r.exit_code
            ));
        } else if let Some(sig) = r.signal {
            problems.push(format!(
                "killed by {} (exit code {})",
                signal_name(sig),
                r.exit_code
            ));
        } else if r.exit_code != 0 {
            problems.push(format!(
                "exit code {}: the command failed (see stderr)",
                r.exit_code
            ));
        }
    }
    if r.exit_code != 0
        && r.network_denied.is_empty()
        && c.net.as_ref().is_some_and(|n| n.mode == NetworkMode::None)
    {
        let e = r.stderr.text.to_ascii_lowercase();
        if NET_SIGNS.iter().any(|s| e.contains(s)) {
            problems.push(
                "network: this sandbox has no network access at all (its policy's network mode is none): names do not resolve and nothing outside the sandbox is reachable. Work offline, or ask the operator for a policy with an allowlist".into(),
            );
        }
    }
    let mut data = json!({
        "sandbox_id": c.id(),
        "exec_id": r.exec_id,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "end": crate::native_data::exec::end_name(r.end),
        "duration_ms": u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        "stdout": r.stdout.text,
        "stderr": r.stderr.text,
        "stdout_truncated": r.stdout.truncated,
        "stderr_truncated": r.stderr.truncated,
        "stdout_bytes": r.stdout.total_bytes,
        "stderr_bytes": r.stderr.total_bytes,
        "network_denied": r.network_denied.iter().map(|d| json!({
            "name": d.name, "port": d.port, "reason": d.reason,
        })).collect::<Vec<_>>(),
    });
    for (k, v) in extra {
        data[k] = v;
    }
    if r.lagged > 0 {
        data["output_chunks_lost"] = json!(r.lagged);
    }
    let mut body = String::new();
    if let Some(n) = &note {
        body.push_str(&format!("note: {n}\n"));
        data["note"] = json!(n);
    }
    body.push_str(&format!(
        "exit code {} in {:.2} s (sandbox {}, {})\n",
        r.exit_code,
        r.duration.as_secs_f64(),
        c.id(),
        r.exec_id
    ));
    let section = |name: &str, cap: &Captured| {
        let trunc = if cap.truncated {
            format!(", truncated: {} bytes in all", cap.total_bytes)
        } else {
            String::new()
        };
        if cap.text.is_empty() {
            format!("--- {name}: (empty) ---\n")
        } else {
            format!(
                "--- {name}{trunc} ---\n{}\n",
                cap.text.trim_end_matches('\n')
            )
        }
    };
    body.push_str(&section("stdout", &r.stdout));
    body.push_str(&section("stderr", &r.stderr));
    let failed = !problems.is_empty();
    if failed {
        let message = problems.join("\n");
        error_result(
            ToolError {
                message: format!("{message}\n\n{body}"),
                data,
            },
            Some(c.id()),
        )
    } else {
        ok_result(body, data)
    }
}

/// A process the sandbox could not start.
pub fn exec_error(argv: &[String], e: SessionError) -> ToolError {
    let prog = argv.first().map(String::as_str).unwrap_or("");
    match e {
        SessionError::ExecRefused { code: 127, message } => ToolError {
            message: format!(
                "command not found (exit code 127): `{prog}` is not installed in the sandbox or not on its PATH ({message}). Check the name, give an absolute path, or use another tool (sh, python3, ...)"
            ),
            data: json!({ "exit_code": 127 }),
        },
        SessionError::ExecRefused { code: 126, message } => ToolError {
            message: format!(
                "not executable (exit code 126): `{prog}` ({message}). Run it through its interpreter (e.g. `sh {prog}`) or make it executable with chmod +x"
            ),
            data: json!({ "exit_code": 126 }),
        },
        SessionError::ExecRefused { code, message } => ToolError {
            message: format!(
                "could not start the command (exit code {code}): {message}. If it names the working directory, create it first (mkdir -p) or pass another cwd"
            ),
            data: json!({ "exit_code": code }),
        },
        SessionError::Invalid(m) => ToolError::new(format!("invalid command: {m}")),
        SessionError::Gone => ToolError::new(
            "the sandbox has ended (reset, TTL or a limit); call again to start a new one",
        ),
        SessionError::Fs { message, .. } => ToolError::new(message),
        SessionError::Protocol(m) => {
            tracing::error!(error = %m, "mcp: agent protocol");
            ToolError::new("the sandbox's agent misbehaved; reset_sandbox starts a new sandbox")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_all_below_the_cap_and_head_and_tail_above() {
        let mut c = Capture::default();
        c.push(b"hello\n");
        let r = c.finish();
        assert_eq!(r.text, "hello\n");
        assert!(!r.truncated);

        let mut c = Capture::default();
        let big: Vec<u8> = (0..MAX_STREAM_BYTES * 3)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        for chunk in big.chunks(1000) {
            c.push(chunk);
        }
        let r = c.finish();
        assert!(r.truncated);
        assert_eq!(r.total_bytes, big.len() as u64);
        let head = String::from_utf8_lossy(&big[..HEAD]).into_owned();
        let tail = String::from_utf8_lossy(&big[big.len() - TAIL..]).into_owned();
        assert!(r.text.starts_with(&head));
        assert!(r.text.ends_with(&tail));
        assert!(
            r.text
                .contains(&format!("{} bytes left out", big.len() - MAX_STREAM_BYTES))
        );

        // Exactly at the cap: nothing left out.
        let mut c = Capture::default();
        c.push(&big[..MAX_STREAM_BYTES]);
        let r = c.finish();
        assert!(!r.truncated);
        assert_eq!(r.text.len(), MAX_STREAM_BYTES);
    }

    #[test]
    fn denial_messages_name_the_host_and_the_policy() {
        let d = NetDenial {
            name: "api.example.com".into(),
            port: None,
            reason: "denied:not_in_allowlist".into(),
        };
        let none = NetInfo {
            mode: NetworkMode::Allowlist,
            allow: vec![],
        };
        assert_eq!(
            denial_message(&d, Some(&none)),
            "network: api.example.com is not in the allowlist (the sandbox's network policy allows: none)"
        );
        let some = NetInfo {
            mode: NetworkMode::Allowlist,
            allow: vec!["pypi.org".into(), "*.github.com".into()],
        };
        assert!(denial_message(&d, Some(&some)).ends_with("allows: pypi.org, *.github.com)"));
        let p = NetDenial {
            name: "evil.test".into(),
            port: Some(80),
            reason: "denied:private_address".into(),
        };
        assert!(
            denial_message(&p, Some(&some))
                .starts_with("network: evil.test:80 resolves to an address the sandbox may not reach (private address)")
        );
    }
}
