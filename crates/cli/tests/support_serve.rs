//! Helpers for the end-to-end tests of `stockade serve`'s data plane and its CLI client
//! (`serve_data.rs`, `serve_client.rs`): the real binary on a free port of 127.0.0.1 with a temp
//! state directory and a key made by `stockade keys create`; HTTP through ureq, server-sent
//! events parsed here, WebSockets through tungstenite; every wait has a deadline.
//!
//! Included with `mod support_serve;`; cargo also builds it as an (empty) test target of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use base64::Engine;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stockade_audit::Event;
use tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_stockade");

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these end-to-end tests need root (cgroups, namespaces); CI runs them as root"
    );
}

pub fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {s}"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running `stockade serve` with its own state directory and one API key.
pub struct Server {
    pub port: u16,
    pub key: String,
    pub state: tempfile::TempDir,
    child: Child,
    agent: ureq::Agent,
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text())
    }
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// The status and the error code, for one-line assertions.
    pub fn err(&self) -> (u16, String) {
        (self.status, self.code())
    }
}

/// Credentials a request carries.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Key,
    None,
    OtherKey(&'a str),
    Token(&'a str),
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// As [`Server::start`], with these variables added to the server's environment (a canary
    /// a sandbox must never see).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        require_root();
        let state = tempfile::Builder::new()
            .prefix("stockade-serve-data-")
            .tempdir_in("/tmp")
            .unwrap();
        let key = Server::new_key(state.path(), "data");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(state.path())
            .args(["serve", "--listen", &listen])
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("STOCKADE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.path().join("serve.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(180)))
            .build()
            .new_agent();
        let mut s = Server {
            port,
            key,
            state,
            child,
            agent,
        };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("stockade serve exited with {st}: {}", s.log());
            }
            let up = s
                .agent
                .get(s.url("/health"))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if up {
                break;
            }
            assert!(Instant::now() < until, "serve not up in 30 s: {}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The server's host pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn new_key(state: &Path, name: &str) -> String {
        let out = Command::new(BIN)
            .arg("--state-dir")
            .arg(state)
            .args(["keys", "create", "--name", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keys create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("serve.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn auth_header(&self, a: Auth) -> Option<(&'static str, String)> {
        match a {
            Auth::Key => Some(("authorization", format!("Bearer {}", self.key))),
            Auth::OtherKey(k) => Some(("authorization", format!("Bearer {k}"))),
            Auth::Token(t) => Some(("x-access-token", t.to_string())),
            Auth::None => None,
        }
    }

    /// One request; `body`: raw bytes (JSON when it parses as JSON).
    pub fn req(&self, method: &str, path: &str, a: Auth, body: Option<&[u8]>) -> Resp {
        let url = self.url(path);
        let mut b = ureq::http::Request::builder().method(method).uri(&url);
        if let Some((k, v)) = self.auth_header(a) {
            b = b.header(k, v);
        }
        if let Some(body) = body {
            let ct = if serde_json::from_slice::<Value>(body).is_ok() && method != "PUT" {
                "application/json"
            } else {
                "application/octet-stream"
            };
            b = b.header("content-type", ct);
        }
        let r = match body {
            Some(body) => self.agent.run(b.body(body.to_vec()).unwrap()),
            None => self.agent.run(b.body(()).unwrap()),
        };
        let mut resp = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        Resp { status, body }
    }

    pub fn get(&self, path: &str, a: Auth) -> Resp {
        self.req("GET", path, a, None)
    }

    pub fn post(&self, path: &str, a: Auth, v: &Value) -> Resp {
        self.req("POST", path, a, Some(v.to_string().as_bytes()))
    }

    /// Creates a sandbox: (id, access token).
    pub fn create(&self, body: &Value) -> (String, String) {
        let r = self.post("/v1/sandboxes", Auth::Key, body);
        assert_eq!(r.status, 201, "create: {}", r.text());
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_string(),
            v["access_token"].as_str().unwrap().to_string(),
        )
    }

    /// `POST .../exec` with SSE: every event, in order, up to and with `exit`.
    pub fn exec_sse(&self, id: &str, body: &Value) -> Result<Vec<(String, Value)>, Resp> {
        let r = self.post(&format!("/v1/sandboxes/{id}/exec"), Auth::Key, body);
        if r.status != 200 {
            return Err(r);
        }
        Ok(parse_sse(&r.text()))
    }

    /// `POST .../exec?wait=true`.
    pub fn exec_wait(&self, id: &str, body: &Value) -> Value {
        let r = self.post(
            &format!("/v1/sandboxes/{id}/exec?wait=true"),
            Auth::Key,
            body,
        );
        assert_eq!(r.status, 200, "exec {body}: {}", r.text());
        r.json()
    }

    /// Runs a shell command inside and insists it succeeds; its stdout.
    pub fn sh(&self, id: &str, cmd: &str) -> String {
        let v = self.exec_wait(id, &json!({ "cmd": cmd }));
        assert_eq!(v["exit_code"], 0, "{cmd}: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    pub fn events(&self, id: &str) -> Vec<Event> {
        let r = self.get(&format!("/v1/sandboxes/{id}/events"), Auth::Key);
        assert_eq!(r.status, 200, "events: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn files(&self, id: &str, path: &str) -> String {
        format!("/v1/sandboxes/{id}/files?path={}", enc(path))
    }

    pub fn ws(&self, path: &str, a: Auth) -> Result<Ws, (u16, String)> {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{}{path}",
            self.port
        ))
        .unwrap();
        if let Some((k, v)) = self.auth_header(a) {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        match tungstenite::connect(req) {
            Ok((ws, _)) => {
                if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                }
                Ok(Ws { ws })
            }
            Err(tungstenite::Error::Http(r)) => Err((
                r.status().as_u16(),
                r.body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            )),
            Err(e) => panic!("websocket {path}: {e}"),
        }
    }

    /// The binary as a client of this server (key and URL in the environment).
    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("STOCKADE_API_KEY", &self.key)
            .env("STOCKADE_SERVER", self.url(""))
            .env_remove("STOCKADE_LOG")
            .env("NO_COLOR", "1");
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Graceful stop (sandboxes destroyed), then make sure.
        // SAFETY: kill with the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query value, percent-encoded.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Server-sent events as (event, data as JSON).
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let (mut ev, mut data) = (String::new(), String::new());
    for line in text.split('\n') {
        if let Some(v) = line.strip_prefix("event:") {
            ev = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        } else if line.is_empty() && !ev.is_empty() {
            out.push((
                std::mem::take(&mut ev),
                serde_json::from_str(&data).unwrap_or(Value::Null),
            ));
            data.clear();
        }
    }
    out
}

/// The bytes of `stdout` (or `stderr`) events, concatenated.
pub fn output(events: &[(String, Value)], stream: &str) -> Vec<u8> {
    events
        .iter()
        .filter(|(e, _)| e == stream)
        .flat_map(|(_, v)| unb64(v["data"].as_str().unwrap()))
        .collect()
}

pub fn exit_of(events: &[(String, Value)]) -> Value {
    let (last, v) = events.last().expect("no events");
    assert_eq!(last, "exit", "the stream ends with exit: {events:?}");
    v.clone()
}

/// A streaming response (SSE) read line by line on a thread.
pub struct Stream {
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Stream {
    pub fn open(srv: &Server, path: &str) -> Stream {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        use std::io::Write;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            srv.key
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = BufReader::new(s);
            for l in r.lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Stream { lines: rx }
    }

    /// Lines until one satisfies `pred` (panics after `within`); all lines read.
    pub fn until(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let until = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = pred(&l);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("not seen within {within:?}; lines: {seen:#?}"),
            }
        }
    }
}

pub struct Ws {
    pub ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_binary(&mut self, b: &[u8]) {
        self.ws.send(Message::binary(b.to_vec())).unwrap();
    }

    /// The next JSON message (None when the server closed).
    pub fn recv(&mut self) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return None;
                }
                Err(e) => panic!("websocket read: {e}"),
            }
        }
    }

    /// Messages until one satisfies `pred`; the output (stdout, stderr and pty) decoded on the
    /// way, and every message.
    pub fn until(&mut self, pred: impl Fn(&Value, &str) -> bool) -> (String, Vec<Value>) {
        let mut out = String::new();
        let mut all = Vec::new();
        loop {
            let v = self.recv().unwrap_or_else(|| {
                panic!("closed before the expected message; output {out:?}, messages {all:?}")
            });
            for k in ["stdout", "stderr", "pty"] {
                if let Some(d) = v.get(k).and_then(|d| d.as_str()) {
                    out.push_str(&String::from_utf8_lossy(&unb64(d)));
                }
            }
            all.push(v.clone());
            if pred(&v, &out) {
                return (out, all);
            }
        }
    }
}

/// A directory on the host outside every sandbox's view, removed at the end.
pub struct HostDir(pub PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a whole local file.
pub fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// An HTTP server on `ip` answering "hello from IP"; counts connections.
pub fn http_server(ip: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    let body = format!("hello from {ip}");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (port, count)
}
