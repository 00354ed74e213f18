//! `process.Process`: envd's process service, served from a [`Session`].
//!
//! Processes are the session's ([`Session::exec`]); a pid is the pid inside the sandbox. As in
//! envd, a process outlives the stream that started it (closing a `Start` stream does not kill
//! it; `Connect` re-attaches by pid or tag, seeing output from then on), `Connect-Timeout-Ms` of
//! a `Start` call is the process's own timeout (it is killed when it passes; without one the
//! sandbox policy's `limits.timeout` applies), and an end event is shaped like Go's
//! `os.ProcessState` (`exitCode` -1 and `status` "signal: killed" for a killed process).
//!
//! [`Session`]: stockade_runtime::session::Session
//! [`Session::exec`]: stockade_runtime::session::Session::exec

use super::connect::{self, Code, RpcError, StreamTx};
use super::envd::{Target, check_rpc_user, resolve_path, rpc_error};
use super::messages::{
    CloseStdinRequest, ConnectRequest, EndEvent, Input, ListResponse, ProcessConfig, ProcessEvent,
    ProcessInfo, Pty, Selector, SendInputRequest, SendSignalRequest, StartRequest,
    StreamInputRequest, UpdateRequest, signal_number,
};
use crate::service::Sandbox;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use stockade_runtime::session::{
    ExecEnd, ExecEvent, ExecHandle, ExecOutcome, ExecSpec, PtySize, Termination,
};
use tokio::sync::broadcast::error::RecvError;

/// How long a stream waits for a process's last events once the process is known to have ended.
const END_GRACE: Duration = Duration::from_millis(300);

pub async fn start(t: Target, headers: HeaderMap, body: Body) -> Response {
    let req: StartRequest = match connect::stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return connect::stream_error(e),
    };
    let spec = match check_rpc_user(&t.sandbox, &headers)
        .and_then(|()| connect::timeout(&headers))
        .and_then(|timeout| exec_spec(&t.sandbox, req, timeout))
    {
        Ok(s) => s,
        Err(e) => return connect::stream_error(e),
    };
    let handle = match t.sandbox.session.exec(spec).await {
        Ok(h) => h,
        Err(e) => return connect::stream_error(rpc_error(e)),
    };
    // Subscribe before anything else is awaited, so no output is missed.
    let rx = handle.subscribe();
    let (resp, tx) = connect::stream_response();
    tokio::spawn(pump(handle, rx, tx, connect::keepalive(&headers)));
    resp
}

pub async fn connect_(t: Target, headers: HeaderMap, body: Body) -> Response {
    let req: ConnectRequest = match connect::stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return connect::stream_error(e),
    };
    let handle = match check_rpc_user(&t.sandbox, &headers)
        .and_then(|()| Selector::from_msg(req.process))
        .and_then(|sel| find(&t.sandbox, &sel))
    {
        Ok(h) => h,
        Err(e) => return connect::stream_error(e),
    };
    let rx = handle.subscribe();
    let (resp, tx) = connect::stream_response();
    tokio::spawn(pump(handle, rx, tx, connect::keepalive(&headers)));
    resp
}

pub async fn list(t: Target, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let _: serde_json::Value = connect::unary_request(&headers, body).await?;
        check_rpc_user(&t.sandbox, &headers)?;
        let processes = t
            .sandbox
            .session
            .running()
            .iter()
            .map(|h| {
                let spec = h.spec();
                ProcessInfo {
                    config: ProcessConfig {
                        cmd: spec.argv.first().cloned().unwrap_or_default(),
                        args: spec.argv.iter().skip(1).cloned().collect(),
                        envs: spec.env.iter().cloned().collect(),
                        cwd: spec.cwd.clone(),
                    },
                    pid: pid_u32(h),
                    tag: spec.tag.clone(),
                }
            })
            .collect();
        Ok::<_, RpcError>(ListResponse { processes })
    };
    match r.await {
        Ok(l) => connect::unary_ok(&l),
        Err(e) => e.into_response(),
    }
}

pub async fn send_input(t: Target, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: SendInputRequest = connect::unary_request(&headers, body).await?;
        check_rpc_user(&t.sandbox, &headers)?;
        let h = find(&t.sandbox, &Selector::from_msg(req.process)?)?;
        write_input(&h, Input::from_msg(req.input)?).await
    };
    empty_unary(r.await)
}

/// `StreamInput` (client stream): a `start` naming the process, then `data` chunks in order.
pub async fn stream_input(t: Target, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let mut stream = connect::ClientStream::new(&headers, body)?;
        check_rpc_user(&t.sandbox, &headers)?;
        let mut target: Option<ExecHandle> = None;
        while let Some(msg) = stream.next::<StreamInputRequest>().await? {
            match (msg.start, msg.data, msg.keepalive) {
                (Some(start), None, None) => {
                    target = Some(find(&t.sandbox, &Selector::from_msg(start.process)?)?);
                }
                (None, Some(data), None) => {
                    let Some(h) = &target else {
                        return Err(RpcError::invalid(
                            "stream input: the first message must be `start` (which process)",
                        ));
                    };
                    write_input(h, Input::from_msg(data.input)?).await?;
                }
                (None, None, Some(_)) => {}
                _ => {
                    return Err(RpcError::invalid(
                        "stream input: each message is exactly one of start, data, keepalive",
                    ));
                }
            }
        }
        Ok(())
    };
    let end = r.await.err();
    let mut body = Vec::new();
    if end.is_none() {
        body.extend_from_slice(&connect::envelope(0, b"{}"));
    }
    body.extend_from_slice(&connect::end_stream(end.as_ref()));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::CT_STREAM)],
        body,
    )
        .into_response()
}

pub async fn send_signal(t: Target, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: SendSignalRequest = connect::unary_request(&headers, body).await?;
        check_rpc_user(&t.sandbox, &headers)?;
        let sig = signal_number(&req.signal)?;
        let h = find(&t.sandbox, &Selector::from_msg(req.process)?)?;
        h.signal(sig).map_err(rpc_error)
    };
    empty_unary(r.await)
}

pub async fn close_stdin(t: Target, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: CloseStdinRequest = connect::unary_request(&headers, body).await?;
        check_rpc_user(&t.sandbox, &headers)?;
        let h = find(&t.sandbox, &Selector::from_msg(req.process)?)?;
        if h.spec().pty.is_some() {
            return Err(RpcError::invalid(
                "cannot close stdin of a process on a terminal: send Ctrl+D (0x04) as its input instead",
            ));
        }
        h.close_stdin().await;
        Ok(())
    };
    empty_unary(r.await)
}

pub async fn update(t: Target, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: UpdateRequest = connect::unary_request(&headers, body).await?;
        check_rpc_user(&t.sandbox, &headers)?;
        let h = find(&t.sandbox, &Selector::from_msg(req.process)?)?;
        let Some(size) = pty_size(req.pty)? else {
            return Err(RpcError::invalid(
                "update: pty.size is required (the only thing Update changes)",
            ));
        };
        if h.spec().pty.is_none() {
            return Err(RpcError::invalid(format!(
                "process with pid {} has no terminal to resize",
                pid_u32(&h)
            )));
        }
        h.resize(size).map_err(rpc_error)
    };
    empty_unary(r.await)
}

fn empty_unary(r: Result<(), RpcError>) -> Response {
    match r {
        Ok(()) => connect::unary_ok(&serde_json::json!({})),
        Err(e) => e.into_response(),
    }
}

fn pid_u32(h: &ExecHandle) -> u32 {
    u32::try_from(h.pid()).unwrap_or(0)
}

/// A running process of the sandbox (envd forgets a process once it has ended, as we do).
fn find(sb: &Sandbox, sel: &Selector) -> Result<ExecHandle, RpcError> {
    sb.session
        .running()
        .into_iter()
        .find(|h| match sel {
            Selector::Pid(p) => pid_u32(h) == *p,
            Selector::Tag(t) => h.spec().tag.as_deref() == Some(t.as_str()),
        })
        .ok_or_else(|| RpcError::not_found(format!("{sel} not found")))
}

async fn write_input(h: &ExecHandle, input: Input) -> Result<(), RpcError> {
    let has_pty = h.spec().pty.is_some();
    let data = match input {
        Input::Stdin(_) if has_pty => {
            return Err(RpcError::invalid(
                "the process has a terminal: send its input as `pty`, not `stdin`",
            ));
        }
        Input::Pty(_) if !has_pty => {
            return Err(RpcError::invalid(
                "the process has no terminal: send its input as `stdin`, not `pty`",
            ));
        }
        Input::Stdin(d) | Input::Pty(d) => d,
    };
    if data.is_empty() {
        return Ok(());
    }
    h.write_stdin(&data).await.map_err(rpc_error)
}

fn pty_size(p: Option<Pty>) -> Result<Option<PtySize>, RpcError> {
    let Some(p) = p else { return Ok(None) };
    let s = p.size.unwrap_or_default();
    let dim = |v: u32, default: u16, what: &str| -> Result<u16, RpcError> {
        match v {
            0 => Ok(default),
            1..=10_000 => Ok(u16::try_from(v).unwrap_or(default)),
            _ => Err(RpcError::invalid(format!(
                "pty size: {what} {v} is out of range (1..=10000)"
            ))),
        }
    };
    Ok(Some(PtySize {
        rows: dim(s.rows, 24, "rows")?,
        cols: dim(s.cols, 80, "cols")?,
    }))
}

/// The [`ExecSpec`] of a `Start` request.
fn exec_spec(
    sb: &Sandbox,
    req: StartRequest,
    timeout: Option<Duration>,
) -> Result<ExecSpec, RpcError> {
    let p = req
        .process
        .ok_or_else(|| RpcError::invalid("start: `process` is required"))?;
    if p.cmd.is_empty() {
        return Err(RpcError::invalid("start: process.cmd is empty"));
    }
    let mut argv = Vec::with_capacity(1 + p.args.len());
    argv.push(p.cmd);
    argv.extend(p.args);
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(RpcError::invalid(
            "start: arguments may not contain NUL bytes",
        ));
    }
    let mut env = Vec::with_capacity(p.envs.len());
    for (k, v) in p.envs {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            let shown: String = k.chars().take(64).collect();
            return Err(RpcError::invalid(format!(
                "start: environment variable {shown:?}: names are non-empty without `=` or NUL, values without NUL"
            )));
        }
        env.push((k, v));
    }
    let cwd = match p.cwd.as_deref() {
        None | Some("") => None,
        Some(c) => Some(resolve_path(c, sb.session.home())?),
    };
    let pty = pty_size(req.pty)?;
    if let Some(tag) = &req.tag
        && (tag.len() > 256 || tag.contains('\0'))
    {
        return Err(RpcError::invalid(
            "start: a tag is at most 256 bytes, without NUL",
        ));
    }
    Ok(ExecSpec {
        argv,
        env,
        cwd,
        // envd's default: stdin unless the request says otherwise. A PTY is its own stdin.
        stdin: pty.is_none() && req.stdin.unwrap_or(true),
        pty,
        timeout,
        tag: req.tag,
    })
}

/// Streams a process's events until it ends or the client goes.
async fn pump(
    handle: ExecHandle,
    mut rx: tokio::sync::broadcast::Receiver<ExecEvent>,
    tx: StreamTx,
    keepalive: Option<Duration>,
) {
    if send(
        &tx,
        &ProcessEvent::Start {
            pid: pid_u32(&handle),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    let mut ka = keepalive.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    let waited = handle.wait();
    tokio::pin!(waited);
    let mut ended: Option<ExecOutcome> = None;
    loop {
        let has_ended = ended.is_some();
        let grace = async move {
            if has_ended {
                tokio::time::sleep(END_GRACE).await
            } else {
                std::future::pending().await
            }
        };
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            o = &mut waited, if !has_ended => { ended = Some(o); continue; }
            () = grace => {
                // The process ended but its end event was sent before we subscribed.
                if let Some(o) = &ended {
                    let _ = send(&tx, &ProcessEvent::End(end_event(o))).await;
                }
                tx.end(None).await;
                return;
            }
            () = tick(&mut ka) => {
                if send(&tx, &ProcessEvent::Keepalive).await.is_err() { return; }
                continue;
            }
            () = tx.closed() => return,
        };
        let out = match ev {
            Ok(ExecEvent::Stdout(b)) => ProcessEvent::Stdout(b),
            Ok(ExecEvent::Stderr(b)) => ProcessEvent::Stderr(b),
            Ok(ExecEvent::Pty(b)) => ProcessEvent::Pty(b),
            Ok(ExecEvent::Exited(o)) => {
                if send(&tx, &ProcessEvent::End(end_event(&o))).await.is_ok() {
                    tx.end(None).await;
                }
                return;
            }
            Err(RecvError::Lagged(n)) => {
                tx.end(Some(RpcError::new(
                    Code::DataLoss,
                    format!(
                        "{n} output chunks of process {} were dropped because this stream was read too slowly; the process goes on (reconnect to it by pid)",
                        pid_u32(&handle)
                    ),
                )))
                .await;
                return;
            }
            Err(RecvError::Closed) => {
                let o = handle.wait().await;
                if send(&tx, &ProcessEvent::End(end_event(&o))).await.is_ok() {
                    tx.end(None).await;
                }
                return;
            }
        };
        if send(&tx, &out).await.is_err() {
            return;
        }
        if let Some(i) = ka.as_mut() {
            i.reset();
        }
    }
}

async fn send(tx: &StreamTx, ev: &ProcessEvent) -> Result<(), connect::Gone> {
    tx.send(&ev.to_json()).await
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The end event envd would send: Go's `ProcessState` (`exit status N`, `signal: killed`).
pub fn end_event(o: &ExecOutcome) -> EndEvent {
    let why = match o.end {
        ExecEnd::Exited => None,
        ExecEnd::Timeout => Some("killed: its timeout passed"),
        ExecEnd::Output => Some("killed: its output passed the sandbox's output limit"),
        ExecEnd::SandboxEnded => Some("the sandbox ended"),
    };
    match o.termination {
        Some(Termination::Exited(c)) => {
            let status = format!("exit status {c}");
            let error = match (c, why) {
                (0, None) => None,
                (_, None) => Some(status.clone()),
                (_, Some(w)) => Some(format!("{status} ({w})")),
            };
            EndEvent {
                exit_code: c,
                exited: true,
                status,
                error,
            }
        }
        Some(Termination::Signaled(s)) => {
            let status = format!("signal: {}", signal_name(s));
            let error = Some(match why {
                None => status.clone(),
                Some(w) => format!("{status} ({w})"),
            });
            EndEvent {
                exit_code: -1,
                exited: false,
                status,
                error,
            }
        }
        None => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some(
                why.unwrap_or("the sandbox ended").to_string()
                    + " before the process's end was known",
            ),
        },
    }
}

/// Go's (and glibc's) description of a signal.
fn signal_name(s: i32) -> String {
    let n = match s {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        libc::SIGXCPU => "CPU time limit exceeded",
        libc::SIGXFSZ => "file size limit exceeded",
        libc::SIGSYS => "bad system call",
        other => return format!("signal {other}"),
    };
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(t: Option<Termination>, end: ExecEnd) -> ExecOutcome {
        ExecOutcome {
            termination: t,
            exit_code: t.map(|t| t.shell_code()).unwrap_or(137),
            end,
            output_bytes: 0,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn end_events_like_go() {
        let e = end_event(&outcome(Some(Termination::Exited(0)), ExecEnd::Exited));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str(), e.error),
            (0, true, "exit status 0", None)
        );
        let e = end_event(&outcome(Some(Termination::Exited(3)), ExecEnd::Exited));
        assert_eq!(e.error.as_deref(), Some("exit status 3"));
        let e = end_event(&outcome(Some(Termination::Signaled(9)), ExecEnd::Exited));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
        let e = end_event(&outcome(Some(Termination::Signaled(9)), ExecEnd::Timeout));
        assert_eq!(
            e.error.as_deref(),
            Some("signal: killed (killed: its timeout passed)")
        );
        let e = end_event(&outcome(None, ExecEnd::SandboxEnded));
        assert_eq!(e.exit_code, -1);
    }

    #[test]
    fn pty_sizes() {
        assert_eq!(pty_size(None).unwrap(), None);
        let p = Pty {
            size: Some(super::super::messages::PtySizeMsg { cols: 100, rows: 0 }),
        };
        assert_eq!(
            pty_size(Some(p)).unwrap(),
            Some(PtySize {
                rows: 24,
                cols: 100
            })
        );
        let p = Pty {
            size: Some(super::super::messages::PtySizeMsg {
                cols: 70_000,
                rows: 5,
            }),
        };
        assert!(pty_size(Some(p)).is_err());
    }
}
