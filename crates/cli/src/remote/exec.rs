//! `stockade exec ID [-t] [-i] -- CMD...`: a command in a sandbox on a server.
//!
//! Without `-t`/`-i` it runs over server-sent events (`POST .../exec`), stdin is /dev/null;
//! with them, over the WebSocket (`GET .../exec/ws`): `-i` forwards local stdin, `-t` runs the
//! command on a PTY sized like the local terminal (raw mode and resizes when stdin is one).
//! SIGINT/SIGTERM/SIGHUP received here are passed on to the command; its exit status becomes
//! ours (127 when it is not found, 126 when not executable, as a shell says).

use super::{Client, ServerOpt, check_id, error_message, key_value, unb64};
use crate::ls::printable;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;
use tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The sandbox's id.
    id: String,
    /// Run on a terminal (PTY) over the WebSocket; the local terminal goes raw when stdin is one.
    #[arg(long, short = 't')]
    tty: bool,
    /// Forward local stdin to the command (over the WebSocket).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// A variable for this command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Working directory inside [default: the sandbox's home].
    #[arg(long, short = 'w', value_name = "DIR")]
    cwd: Option<String>,
    /// Seconds until the command is killed [default: the sandbox policy's limits.timeout].
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    #[command(flatten)]
    server: ServerOpt,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// What ended a run here.
enum Outcome {
    /// The command's exit code (128+N for a signal).
    Exit(i32),
}

pub fn run(a: ExecArgs) -> ExitCode {
    let r = (|| -> Result<Outcome, String> {
        check_id(&a.id)?;
        let client = Client::new(&a.server.server)?;
        let mut body = serde_json::json!({
            "argv": a.command,
            "env": a.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        });
        if let Some(c) = &a.cwd {
            body["cwd"] = c.clone().into();
        }
        if let Some(t) = a.timeout {
            body["timeout"] = t.into();
        }
        // Termination signals are blocked process-wide (see main): take them here.
        let (sig_tx, sig_rx) = mpsc::channel();
        stockade_runtime::relay::signals(sig_tx);
        if a.tty || a.interactive {
            websocket(&client, &a, body, &sig_rx)
        } else {
            sse(&client, &a.id, &body, &sig_rx)
        }
    })();
    match r {
        Ok(Outcome::Exit(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => crate::fail(e),
    }
}

fn signal_of(rx: &mpsc::Receiver<stockade_runtime::relay::Event>) -> Option<i32> {
    match rx.try_recv() {
        Ok(stockade_runtime::relay::Event::Signal(s)) => Some(s),
        _ => None,
    }
}

/// Says why the command was killed, when it was.
fn note_end(exit: &serde_json::Value) {
    let why = match exit["end"].as_str() {
        Some("timeout") => "its timeout passed",
        Some("output_limit") => "its output passed the sandbox's limit",
        Some("sandbox_ended") => "the sandbox ended",
        _ => return,
    };
    let _ = writeln!(io::stderr(), "stockade: the command was killed: {why}");
}

fn exit_code(exit: &serde_json::Value) -> i32 {
    note_end(exit);
    exit["exit_code"]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(125)
}

/// A start refused by the server: its message, and the shell's status for the two usual cases.
fn refused(msg: String) -> Result<Outcome, String> {
    let code = if msg.contains("command_not_found") {
        127
    } else if msg.contains("command_not_executable") {
        126
    } else {
        return Err(msg);
    };
    let _ = writeln!(io::stderr(), "stockade: {msg}");
    Ok(Outcome::Exit(code))
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

enum SseMsg {
    Started(i64),
    Exit(serde_json::Value),
    Failed(String),
}

fn sse(
    client: &Client,
    id: &str,
    body: &serde_json::Value,
    sig_rx: &mpsc::Receiver<stockade_runtime::relay::Event>,
) -> Result<Outcome, String> {
    let resp = match client.send("POST", &format!("/v1/sandboxes/{id}/exec"), Some(body)) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let reader = BufReader::new(resp.into_body().into_reader());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = read_sse(reader, &tx);
        let _ = tx.send(match r {
            Ok(()) => {
                SseMsg::Failed("the server ended the stream before the command's exit".into())
            }
            Err(e) => SseMsg::Failed(e),
        });
    });
    let mut pid = None;
    let mut forwarded = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(SseMsg::Started(p)) => pid = Some(p),
            Ok(SseMsg::Exit(v)) => return Ok(Outcome::Exit(exit_code(&v))),
            Ok(SseMsg::Failed(e)) => return Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the output stream ended".into());
            }
        }
        if let Some(sig) = signal_of(sig_rx) {
            match pid {
                // Passed on once; a second one gives up waiting.
                Some(p) if !forwarded => {
                    forwarded = true;
                    let _ = client.send(
                        "POST",
                        &format!("/v1/sandboxes/{id}/processes/{p}/signal"),
                        Some(&serde_json::json!({ "signal": sig })),
                    );
                }
                _ => return Ok(Outcome::Exit(128 + sig)),
            }
        }
    }
}

/// Reads events until `exit`, writing output as it comes.
fn read_sse(mut r: impl BufRead, tx: &mpsc::Sender<SseMsg>) -> Result<(), String> {
    let mut event = String::new();
    let mut data = String::new();
    let mut line = String::new();
    let mut out = io::stdout();
    let mut err = io::stderr();
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("reading the output stream: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        } else if l.is_empty() && !event.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
            match event.as_str() {
                "started" => {
                    let _ = tx.send(SseMsg::Started(v["pid"].as_i64().unwrap_or(0)));
                }
                "stdout" | "stderr" => {
                    let bytes = v["data"]
                        .as_str()
                        .and_then(unb64)
                        .ok_or("the server sent output that is not base64")?;
                    let w: &mut dyn Write = if event == "stdout" {
                        &mut out
                    } else {
                        &mut err
                    };
                    // A closed pipe (`| head`) here is not the command's failure.
                    let _ = w.write_all(&bytes).and_then(|()| w.flush());
                }
                "lagged" => {
                    let _ = writeln!(
                        err,
                        "stockade: warning: this client fell behind; some output was lost"
                    );
                }
                "exit" => {
                    let _ = tx.send(SseMsg::Exit(v));
                    return Ok(());
                }
                _ => {}
            }
            event.clear();
            data.clear();
        } else if l.is_empty() {
            data.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// The local terminal in raw mode until dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn term_size() -> Option<(u16, u16)> {
    let w = rustix::termios::tcgetwinsize(io::stdin().as_fd())
        .or_else(|_| rustix::termios::tcgetwinsize(io::stdout().as_fd()))
        .ok()?;
    (w.ws_row > 0 && w.ws_col > 0).then_some((w.ws_row, w.ws_col))
}

fn websocket(
    client: &Client,
    a: &ExecArgs,
    mut body: serde_json::Value,
    sig_rx: &mpsc::Receiver<stockade_runtime::relay::Event>,
) -> Result<Outcome, String> {
    let stdin_tty = io::stdin().is_terminal();
    let mut size = if a.tty {
        Some(term_size().unwrap_or((24, 80)))
    } else {
        None
    };
    if let Some((rows, cols)) = size {
        body["pty"] = serde_json::json!({ "rows": rows, "cols": cols });
        body["env"]["TERM"] = std::env::var("TERM")
            .unwrap_or_else(|_| "xterm-256color".into())
            .into();
    }
    let url = match client.base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}/v1/sandboxes/{}/exec/ws", a.id),
        _ => {
            return Err(
                "-t/-i need a plain http:// server URL for now (the WebSocket client has no TLS); run without them, or through a local tunnel".into(),
            );
        }
    };
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
        .map_err(|e| format!("{}: {e}", printable(&url)))?;
    req.headers_mut().insert(
        "authorization",
        client
            .auth()
            .parse()
            .map_err(|_| "STOCKADE_API_KEY is not valid header text".to_string())?,
    );
    let (mut ws, _) = tungstenite::connect(req).map_err(|e| match e {
        tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            error_message(resp.status().as_u16(), &body)
        }
        e => format!(
            "cannot reach the server at {}: {e} (is `stockade serve` running there?)",
            printable(&client.base)
        ),
    })?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| format!("socket: {e}"))?;
    }
    let send = |ws: &mut tungstenite::WebSocket<_>, m: Message| -> Result<(), String> {
        ws.send(m).map_err(|e| format!("the connection broke: {e}"))
    };
    send(&mut ws, Message::text(body.to_string()))?;
    let forward_stdin = a.interactive || (a.tty && stdin_tty);
    let raw = if a.tty && stdin_tty {
        RawMode::enter()
    } else {
        None
    };
    let (in_tx, in_rx) = mpsc::channel::<Option<Vec<u8>>>();
    let mut started = false;
    let mut out = io::stdout();
    let mut err = io::stderr();
    let result = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if v.get("started").is_some() {
                    started = true;
                    if forward_stdin {
                        let tx = in_tx.clone();
                        std::thread::spawn(move || read_stdin(&tx));
                    }
                } else if let Some(e) = v.get("error") {
                    let msg = error_message(400, &serde_json::json!({ "error": e }).to_string());
                    if !started {
                        drop(raw);
                        return refused(format!("{} {msg}", e["code"].as_str().unwrap_or("")));
                    }
                    let _ = writeln!(err, "stockade: {msg}");
                } else if let Some(x) = v.get("exit") {
                    break Ok(x.clone());
                } else {
                    for k in ["stdout", "pty", "stderr"] {
                        if let Some(d) = v.get(k).and_then(|d| d.as_str()) {
                            let bytes =
                                unb64(d).ok_or("the server sent output that is not base64")?;
                            let w: &mut dyn Write = if k == "stderr" { &mut err } else { &mut out };
                            let _ = w.write_all(&bytes).and_then(|()| w.flush());
                        }
                    }
                }
            }
            Ok(Message::Close(_)) => {
                break Err("the server closed the connection before the command's exit".to_string());
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                break Err("the connection closed before the command's exit".to_string());
            }
            Err(e) => break Err(format!("the connection broke: {e}")),
        }
        while let Ok(item) = in_rx.try_recv() {
            let m = match item {
                Some(bytes) => Message::binary(bytes),
                None => Message::text(serde_json::json!({ "close_stdin": true }).to_string()),
            };
            send(&mut ws, m)?;
        }
        if a.tty && stdin_tty {
            let now = term_size();
            if now.is_some() && now != size {
                size = now;
                if let Some((rows, cols)) = now {
                    send(
                        &mut ws,
                        Message::text(
                            serde_json::json!({ "resize": { "rows": rows, "cols": cols } })
                                .to_string(),
                        ),
                    )?;
                }
            }
        }
        if let Some(sig) = signal_of(sig_rx) {
            send(
                &mut ws,
                Message::text(serde_json::json!({ "signal": sig }).to_string()),
            )?;
        }
    };
    drop(raw);
    let _ = ws.close(None);
    result.map(|x| Outcome::Exit(exit_code(&x)))
}

/// Local stdin to the channel in chunks; `None` at its end.
fn read_stdin(tx: &mpsc::Sender<Option<Vec<u8>>>) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(None);
                return;
            }
            Ok(n) => {
                if tx.send(Some(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}
