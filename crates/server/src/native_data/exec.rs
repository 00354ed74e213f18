//! Processes in a sandbox: `POST .../exec` (SSE or `?wait=true`), the WebSocket
//! `GET .../exec/ws` and its re-attach `GET .../exec/{pid}/ws`, `GET .../processes`,
//! `POST .../processes/{pid}/signal`.
//!
//! A process outlives the connection that started it (until it ends, its timeout passes or the
//! sandbox ends): a client that went away can re-attach by pid and sees output from then on.

use super::{DataError, authorize, resolve_path};
use crate::AppState;
use crate::service::Sandbox;
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use stockade_runtime::session::{
    ExecEnd, ExecEvent, ExecHandle, ExecOutcome, ExecSpec, PtySize, Termination,
};
use tokio::sync::{broadcast, mpsc};

/// Longest `timeout` a request may ask for (a sandbox's TTL ends every process anyway).
const MAX_TIMEOUT_SECS: f64 = 7.0 * 86_400.0;
/// Largest WebSocket message a client may send (stdin arrives in pieces).
const MAX_WS_MESSAGE: usize = 1 << 20;
/// How long a WebSocket client has to send its start message.
const START_WAIT: Duration = Duration::from_secs(30);

/// What to run: `POST .../exec` and the first message of `GET .../exec/ws`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The program and its arguments (exactly one of `argv` and `cmd`).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A shell command line, run as `["/bin/sh", "-c", cmd]`.
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory: absolute, or relative to the sandbox's home (default: the home).
    #[serde(default)]
    pub cwd: Option<String>,
    /// SSE only: text fed to the process's stdin, then end of file.
    #[serde(default)]
    pub stdin: Option<String>,
    /// WebSocket only: run on a pseudo-terminal of this size.
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// Seconds until the process is killed (default: the policy's `limits.timeout`).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// A client's name for the process (shown by `GET .../processes`).
    #[serde(default)]
    pub tag: Option<String>,
}

impl ExecBody {
    /// The spec to start, after checking what can be checked here (the session checks the rest).
    pub fn to_spec(&self, home: &str, stdin: bool) -> Result<ExecSpec, DataError> {
        let argv = match (&self.argv, &self.cmd) {
            (Some(a), None) => a.clone(),
            (None, Some(c)) => vec!["/bin/sh".into(), "-c".into(), c.clone()],
            (Some(_), Some(_)) => {
                return Err(DataError::bad_request(
                    "give either `argv` (a list) or `cmd` (a shell command line), not both",
                ));
            }
            (None, None) => {
                return Err(DataError::bad_request(
                    "nothing to run: give `argv` (a list) or `cmd` (a shell command line)",
                ));
            }
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err(DataError::bad_request(
                "`argv` is empty: name a program to run",
            ));
        }
        let timeout = match self.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS => {
                Some(Duration::from_secs_f64(t))
            }
            Some(t) => {
                return Err(DataError::bad_request(format!(
                    "timeout {t}: expected seconds, more than 0 and at most {MAX_TIMEOUT_SECS}"
                )));
            }
        };
        if let Some(p) = self.pty
            && (p.rows == 0 || p.cols == 0)
        {
            return Err(DataError::bad_request(
                "pty: rows and cols must be at least 1",
            ));
        }
        if self.tag.as_ref().is_some_and(|t| t.len() > 256) {
            return Err(DataError::bad_request("tag: at most 256 bytes"));
        }
        let cwd = match &self.cwd {
            Some(c) => Some(resolve_path(home, c)?),
            None => None,
        };
        Ok(ExecSpec {
            argv,
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd,
            stdin,
            pty: self.pty,
            timeout,
            tag: self.tag.clone(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    /// Answer once with the whole output as JSON instead of streaming.
    #[serde(default)]
    wait: bool,
}

pub fn end_name(e: ExecEnd) -> &'static str {
    match e {
        ExecEnd::Exited => "exited",
        ExecEnd::Timeout => "timeout",
        ExecEnd::Output => "output_limit",
        ExecEnd::SandboxEnded => "sandbox_ended",
    }
}

/// The `exit` payload: `{exit_code, signal, end, duration_ms, output_bytes}`.
pub fn exit_json(o: &ExecOutcome) -> serde_json::Value {
    let signal = match o.termination {
        Some(Termination::Signaled(s)) => Some(s),
        _ => None,
    };
    serde_json::json!({
        "exit_code": o.exit_code,
        "signal": signal,
        "end": end_name(o.end),
        "duration_ms": u64::try_from(o.duration.as_millis()).unwrap_or(u64::MAX),
        "output_bytes": o.output_bytes,
    })
}

fn started_json(h: &ExecHandle) -> serde_json::Value {
    serde_json::json!({ "exec_id": h.exec_id(), "pid": h.pid() })
}

/// `POST /v1/sandboxes/{id}/exec`
pub async fn exec(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ExecQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Json<ExecBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let Json(body) = body?;
    if body.pty.is_some() {
        return Err(DataError::bad_request(
            "pty: a terminal needs the WebSocket endpoint (GET .../exec/ws)",
        ));
    }
    let spec = body.to_spec(sb.session.home(), body.stdin.is_some())?;
    let h = sb.session.exec(spec).await?;
    // Subscribed before anything else can run: the first receiver sees all output.
    let rx = h.subscribe();
    if let Some(input) = body.stdin {
        let h = h.clone();
        tokio::spawn(async move {
            // A process that exits without reading its stdin makes this fail: not an error.
            let _ = h.write_stdin(input.as_bytes()).await;
            h.close_stdin().await;
        });
    }
    if q.wait {
        return Ok(Json(collect(&h, rx, super::limits(&st).max_download).await).into_response());
    }
    let first = SseEvent::default()
        .event("started")
        .data(started_json(&h).to_string());
    let stream = futures_util::stream::unfold(
        (Some(first), rx, h, false),
        |(first, mut rx, h, done)| async move {
            if let Some(f) = first {
                return Some((Ok::<_, Infallible>(f), (None, rx, h, false)));
            }
            if done {
                return None;
            }
            let (ev, done) = match rx.recv().await {
                Ok(ExecEvent::Stdout(b)) => (output_event("stdout", &b), false),
                Ok(ExecEvent::Stderr(b)) => (output_event("stderr", &b), false),
                Ok(ExecEvent::Pty(b)) => (output_event("pty", &b), false),
                Ok(ExecEvent::Exited(o)) => (exit_event(&o), true),
                Err(broadcast::error::RecvError::Lagged(n)) => (
                    SseEvent::default()
                        .event("lagged")
                        .data(serde_json::json!({ "missed_chunks": n }).to_string()),
                    false,
                ),
                Err(broadcast::error::RecvError::Closed) => (exit_event(&h.wait().await), true),
            };
            Some((Ok(ev), (None, rx, h, done)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn output_event(name: &str, data: &[u8]) -> SseEvent {
    SseEvent::default()
        .event(name)
        .data(serde_json::json!({ "data": B64.encode(data) }).to_string())
}

fn exit_event(o: &ExecOutcome) -> SseEvent {
    SseEvent::default()
        .event("exit")
        .data(exit_json(o).to_string())
}

/// `?wait=true`: the whole output (bounded by the policy's output cap, and by `cap`) and the end.
async fn collect(
    h: &ExecHandle,
    mut rx: broadcast::Receiver<ExecEvent>,
    cap: u64,
) -> serde_json::Value {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut lagged = 0u64;
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let outcome = loop {
        match rx.recv().await {
            Ok(ExecEvent::Stdout(b) | ExecEvent::Pty(b)) => {
                if out.len() + err.len() + b.len() <= cap {
                    out.extend_from_slice(&b);
                }
            }
            Ok(ExecEvent::Stderr(b)) => {
                if out.len() + err.len() + b.len() <= cap {
                    err.extend_from_slice(&b);
                }
            }
            Ok(ExecEvent::Exited(o)) => break o,
            Err(broadcast::error::RecvError::Lagged(n)) => lagged += n,
            Err(broadcast::error::RecvError::Closed) => break h.wait().await,
        }
    };
    let mut v = exit_json(&outcome);
    if let Some(o) = v.as_object_mut() {
        o.insert("exec_id".into(), h.exec_id().into());
        o.insert("pid".into(), h.pid().into());
        for (name, bytes) in [("stdout", &out), ("stderr", &err)] {
            o.insert(
                name.into(),
                String::from_utf8_lossy(bytes).into_owned().into(),
            );
            if std::str::from_utf8(bytes).is_err() {
                o.insert(format!("{name}_b64"), B64.encode(bytes).into());
            }
        }
        if lagged > 0 {
            o.insert("missed_chunks".into(), lagged.into());
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// A client message after the start: any of these keys, applied in this order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    /// Bytes for stdin, base64.
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    resize: Option<PtySize>,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default)]
    close_stdin: Option<bool>,
}

fn ws_rejection(r: axum::extract::ws::rejection::WebSocketUpgradeRejection) -> DataError {
    DataError::bad_request(format!("this endpoint is a WebSocket: {}", r.body_text()))
}

/// `GET /v1/sandboxes/{id}/exec/ws`
pub async fn exec_ws(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let ws = ws.map_err(ws_rejection)?;
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| start_and_pump(socket, sb)))
}

/// `GET /v1/sandboxes/{id}/exec/{pid}/ws`
pub async fn attach_ws(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let h = find(&sb, &pid)?;
    let ws = ws.map_err(ws_rejection)?;
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            let rx = h.subscribe();
            pump(socket, h, rx, true).await;
        }))
}

fn text(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

fn error_msg(e: &DataError) -> Message {
    text(serde_json::json!({ "error": { "code": e.code, "message": e.message } }))
}

async fn start_and_pump(mut socket: WebSocket, sb: Arc<Sandbox>) {
    let first = match tokio::time::timeout(START_WAIT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ExecBody>(t.as_str())
            .map_err(|e| DataError::bad_request(format!("the start message: {e}"))),
        Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => return,
        Ok(Some(Ok(_))) => Err(DataError::bad_request(
            "the first message must be a JSON text message saying what to run ({\"argv\": [...]} or {\"cmd\": \"...\"})",
        )),
        Err(_) => Err(DataError::bad_request("no start message within 30 s")),
    };
    let started = match first {
        Ok(body) if body.stdin.is_some() => Err(DataError::bad_request(
            "stdin: on the WebSocket, send {\"stdin\": \"<base64>\"} messages after the start",
        )),
        Ok(body) => match body.to_spec(sb.session.home(), true) {
            Ok(spec) => sb.session.exec(spec).await.map_err(DataError::from),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match started {
        Ok(h) => {
            let rx = h.subscribe();
            pump(socket, h, rx, false).await;
        }
        Err(e) => {
            let _ = socket.send(error_msg(&e)).await;
            let _ = socket.send(Message::Close(None)).await;
        }
    }
}

/// Moves output to the client and the client's input to the process until the process ends
/// (then the socket is closed) or the client goes away (the process runs on). `attached`: `rx`
/// was subscribed to a process already running, which may have ended just before.
async fn pump(
    socket: WebSocket,
    h: ExecHandle,
    mut rx: broadcast::Receiver<ExecEvent>,
    attached: bool,
) {
    let (mut sink, mut stream) = socket.split();
    if sink
        .send(text(serde_json::json!({ "started": started_json(&h) })))
        .await
        .is_err()
    {
        return;
    }
    // The outcome is set before the end is sent: checked after subscribing, an end that `rx`
    // missed is seen here.
    if attached && let Some(o) = h.outcome() {
        let _ = sink
            .send(text(serde_json::json!({ "exit": exit_json(&o) })))
            .await;
        let _ = sink.send(Message::Close(None)).await;
        return;
    }
    // Replies to the client's messages (errors) come back to this loop to be sent.
    let (reply_tx, mut reply_rx) = mpsc::channel::<Message>(16);
    let input = {
        let h = h.clone();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let r = match msg {
                    Ok(Message::Text(t)) => match serde_json::from_str::<Control>(t.as_str()) {
                        Ok(c) => control(&h, c).await,
                        Err(e) => Err(DataError::bad_request(format!(
                            "a client message: {e} (expected stdin, close_stdin, resize or signal)"
                        ))),
                    },
                    Ok(Message::Binary(b)) => h.write_stdin(&b).await.map_err(DataError::from),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(Message::Ping(_) | Message::Pong(_)) => Ok(()),
                };
                if let Err(e) = r
                    && reply_tx.send(error_msg(&e)).await.is_err()
                {
                    break;
                }
            }
        })
    };
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let (msg, done) = match ev {
                    Ok(ExecEvent::Stdout(b)) => (text(serde_json::json!({ "stdout": B64.encode(&b) })), false),
                    Ok(ExecEvent::Stderr(b)) => (text(serde_json::json!({ "stderr": B64.encode(&b) })), false),
                    Ok(ExecEvent::Pty(b)) => (text(serde_json::json!({ "pty": B64.encode(&b) })), false),
                    Ok(ExecEvent::Exited(o)) => (text(serde_json::json!({ "exit": exit_json(&o) })), true),
                    Err(broadcast::error::RecvError::Lagged(n)) => (text(serde_json::json!({ "lagged": n })), false),
                    Err(broadcast::error::RecvError::Closed) => {
                        (text(serde_json::json!({ "exit": exit_json(&h.wait().await) })), true)
                    }
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
                if done {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            }
            reply = reply_rx.recv() => match reply {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
                // The client went away: the process runs on (re-attach by pid).
                None => break,
            },
        }
    }
    input.abort();
}

async fn control(h: &ExecHandle, c: Control) -> Result<(), DataError> {
    if let Some(s) = c.stdin {
        let bytes = B64
            .decode(s.as_bytes())
            .map_err(|e| DataError::bad_request(format!("stdin: not base64: {e}")))?;
        h.write_stdin(&bytes).await?;
    }
    if let Some(size) = c.resize {
        h.resize(size)?;
    }
    if let Some(sig) = c.signal {
        h.signal(sig)?;
    }
    if c.close_stdin == Some(true) {
        h.close_stdin().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes

fn find(sb: &Sandbox, pid: &str) -> Result<ExecHandle, DataError> {
    let n: i32 =
        pid.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            DataError::bad_request("pid: expected a process id (a positive number)")
        })?;
    sb.session
        .running()
        .into_iter()
        .find(|h| h.pid() == n)
        .ok_or_else(|| {
            DataError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no running process {n} started through the API in this sandbox"),
            )
        })
}

/// `GET /v1/sandboxes/{id}/processes`
pub async fn processes(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let v: Vec<_> = sb
        .session
        .running()
        .iter()
        .map(|h| {
            let s = h.spec();
            serde_json::json!({
                "pid": h.pid(),
                "exec_id": h.exec_id(),
                "argv": s.argv,
                "cwd": s.cwd,
                "tag": s.tag,
                "pty": s.pty.is_some(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "processes": v })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    signal: i32,
}

/// `POST /v1/sandboxes/{id}/processes/{pid}/signal`
pub async fn signal(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
    body: Result<Json<SignalBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Json(b) = body?;
    let h = find(&sb, &pid)?;
    h.signal(b.signal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> Result<ExecBody, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn exec_bodies() {
        let h = "/home/sandbox";
        let s = body(serde_json::json!({"cmd": "echo hi", "cwd": "w", "timeout": 1.5}))
            .unwrap()
            .to_spec(h, false)
            .unwrap();
        assert_eq!(s.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(s.cwd.as_deref(), Some("/home/sandbox/w"));
        assert_eq!(s.timeout, Some(Duration::from_millis(1500)));
        let s = body(serde_json::json!({"argv": ["ls", "-l"], "env": {"A": "1"}}))
            .unwrap()
            .to_spec(h, true)
            .unwrap();
        assert_eq!(s.argv, ["ls", "-l"]);
        assert_eq!(s.env, [("A".to_string(), "1".to_string())]);
        assert!(s.stdin && s.cwd.is_none() && s.timeout.is_none());
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"argv": []}),
            serde_json::json!({"argv": [""]}),
            serde_json::json!({"argv": ["a"], "cmd": "b"}),
            serde_json::json!({"cmd": "a", "timeout": 0}),
            serde_json::json!({"cmd": "a", "timeout": -1}),
            serde_json::json!({"cmd": "a", "pty": {"rows": 0, "cols": 80}}),
        ] {
            let e = body(bad.clone()).unwrap().to_spec(h, false).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(body(serde_json::json!({"cmd": "a", "shell": true})).is_err());
    }

    #[test]
    fn exit_payload() {
        let o = ExecOutcome {
            termination: Some(Termination::Signaled(15)),
            exit_code: 143,
            end: ExecEnd::Exited,
            output_bytes: 3,
            duration: Duration::from_millis(12),
        };
        assert_eq!(
            exit_json(&o),
            serde_json::json!({"exit_code": 143, "signal": 15, "end": "exited", "duration_ms": 12, "output_bytes": 3})
        );
        assert_eq!(end_name(ExecEnd::Output), "output_limit");
    }
}
