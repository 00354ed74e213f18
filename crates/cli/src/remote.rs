//! The client of `stockade serve`'s native API: `stockade create|exec|cp|kill --server URL`, and
//! `stockade ls|trace --server`.
//!
//! The server comes from `--server` or `STOCKADE_SERVER`; the API key only from
//! `STOCKADE_API_KEY` (never a flag, so it stays out of `ps` and shell history). Failures say what
//! to do: an unreachable server, a refused key (401), an unknown sandbox (404), a quota (429, the
//! server's own message). Text from the server reaches the terminal with control characters
//! escaped, except a command's own output, which is the point of `exec`.
//! Tested end to end by `crates/cli/tests/serve_data.rs`.

mod exec;

use crate::ls::{printable, warn};
use base64::Engine;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use stockade_audit::{Event, EventKind};

pub use exec::ExecArgs;

/// Where the server is.
#[derive(clap::Args, Debug)]
pub struct ServerOpt {
    /// The server's URL, e.g. http://127.0.0.1:3000 (the API key comes from STOCKADE_API_KEY).
    #[arg(long, env = "STOCKADE_SERVER", value_name = "URL")]
    pub server: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum RemoteCmd {
    /// Create a sandbox on a server (`stockade serve`); prints its id.
    Create(CreateArgs),
    /// Run a command in a sandbox on a server; exits with its status (128+N if killed by signal N).
    Exec(ExecArgs),
    /// Copy a file into a sandbox on a server (LOCAL ID:PATH) or out of it (ID:PATH LOCAL); `-`
    /// is stdin or stdout.
    Cp(CpArgs),
    /// Destroy a sandbox on a server.
    Kill(KillArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// A template name (`stockade template ls` on the server) [default: base].
    #[arg(long, value_name = "NAME")]
    template: Option<String>,
    /// A policy file (TOML) sent inline instead of the template's policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Seconds until the server destroys it [default: the server's, 300].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// A variable for every process inside (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Metadata to recognise it by (repeatable).
    #[arg(long = "meta", value_name = "K=V", value_parser = key_value)]
    meta: Vec<(String, String)>,
    /// Also print the sandbox's access token (on stderr): it lets a holder use this one
    /// sandbox's exec and files without the API key.
    #[arg(long)]
    show_token: bool,
    #[command(flatten)]
    server: ServerOpt,
}

#[derive(clap::Args, Debug)]
pub struct CpArgs {
    /// LOCAL or ID:PATH (`-`: stdin).
    src: String,
    /// ID:PATH or LOCAL (`-`: stdout; an existing directory: the file keeps its name).
    dst: String,
    #[command(flatten)]
    server: ServerOpt,
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// The sandbox's id.
    id: String,
    #[command(flatten)]
    server: ServerOpt,
}

pub fn run(cmd: RemoteCmd) -> ExitCode {
    let r = match cmd {
        RemoteCmd::Create(a) => create(a),
        RemoteCmd::Exec(a) => return exec::run(a),
        RemoteCmd::Cp(a) => cp(a),
        RemoteCmd::Kill(a) => kill(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

const KEY_ENV: &str = "STOCKADE_API_KEY";

fn key_help() -> String {
    format!("set {KEY_ENV} to a key from `stockade keys create` (run where the server's state is)")
}

pub(crate) struct Client {
    /// `http://host:port` without a trailing slash.
    pub base: String,
    key: String,
    agent: ureq::Agent,
}

/// A sandbox id as the server spells it: 16 lowercase hex characters.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_id(id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{}: not a sandbox id (16 hex characters, as `stockade create` printed)",
            printable(id)
        ))
    }
}

impl Client {
    pub fn new(server: &str) -> Result<Client, String> {
        let base = server.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.split_once("://").is_none_or(|(_, h)| h.is_empty())
        {
            return Err(format!(
                "--server {}: expected a URL such as http://127.0.0.1:3000",
                printable(server)
            ));
        }
        let key = match std::env::var(KEY_ENV) {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => return Err(format!("no API key: {}", key_help())),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .max_redirects(0)
            .build()
            .new_agent();
        Ok(Client { base, key, agent })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.key)
    }

    fn unreachable(&self, e: &ureq::Error) -> String {
        format!(
            "cannot reach the server at {}: {e} (is `stockade serve` running there? --server or STOCKADE_SERVER)",
            printable(&self.base)
        )
    }

    /// Sends a request; a 4xx/5xx answer becomes the error message.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<ureq::http::Response<ureq::Body>, String> {
        let url = self.url(path);
        let auth = self.auth();
        let r = match method {
            "GET" => self.agent.get(&url).header("authorization", &auth).call(),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            "POST" | "PUT" => {
                let b = if method == "POST" {
                    self.agent.post(&url)
                } else {
                    self.agent.put(&url)
                };
                let body = json.map(|v| v.to_string()).unwrap_or_else(|| "{}".into());
                b.header("authorization", &auth)
                    .content_type("application/json")
                    .send(body.as_bytes())
            }
            _ => return Err(format!("unsupported method {method}")),
        };
        let resp = r.map_err(|e| self.unreachable(&e))?;
        self.check(resp)
    }

    /// An answer of 400 and up as one clear message.
    pub fn check(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, String> {
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(resp);
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        Err(error_message(status, &text))
    }

    /// A JSON answer.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let mut resp = self.send(method, path, body)?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| format!("reading the server's answer: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("the server's answer is not JSON: {e}"))
    }
}

/// The message for a refused request: the server's `{"error": {code, message}}` when it sent
/// one, with advice for the usual cases.
pub(crate) fn error_message(status: u16, body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = v["error"]["code"].as_str().unwrap_or("");
    let msg = v["error"]["message"]
        .as_str()
        .map(|m| printable(m).into_owned())
        .unwrap_or_else(|| {
            let t: String = body.chars().take(200).collect();
            printable(t.trim()).into_owned()
        });
    match status {
        401 => format!(
            "the server refused the credentials (401): {msg}; {}",
            key_help()
        ),
        404 => format!("not found (404): {msg}"),
        429 => format!("the server's limit is reached (429): {msg}"),
        _ if code.is_empty() => format!("the server answered {status}: {msg}"),
        _ => format!("the server answered {status} {code}: {msg}"),
    }
}

// ---------------------------------------------------------------------------------------------
// create, kill

fn create(a: CreateArgs) -> Result<(), String> {
    let client = Client::new(&a.server.server)?;
    let mut body = serde_json::Map::new();
    if let Some(t) = &a.template {
        body.insert("template".into(), t.clone().into());
    }
    if let Some(f) = &a.policy {
        let src = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        // Checked here first: the error then names the local file, line and column.
        stockade_policy::Policy::from_toml(&src, &f.display().to_string())
            .map_err(|e| e.to_string())?;
        body.insert("policy".into(), src.into());
    }
    if let Some(t) = a.timeout {
        body.insert("timeout".into(), t.into());
    }
    let map = |kv: &[(String, String)]| -> serde_json::Value {
        kv.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    body.insert("env".into(), map(&a.env));
    body.insert("metadata".into(), map(&a.meta));
    let v = client.json("POST", "/v1/sandboxes", Some(&body.into()))?;
    let id = v["id"]
        .as_str()
        .filter(|i| valid_id(i))
        .ok_or("the server's answer has no sandbox id")?;
    if a.show_token
        && let Some(t) = v["access_token"].as_str()
    {
        let _ = writeln!(io::stderr(), "access token: {}", printable(t));
    }
    println!("{id}");
    Ok(())
}

fn kill(a: KillArgs) -> Result<(), String> {
    check_id(&a.id)?;
    let client = Client::new(&a.server.server)?;
    client.send("DELETE", &format!("/v1/sandboxes/{}", a.id), None)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cp

/// `ID:PATH` → (id, path); anything else is local.
fn remote_spec(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (valid_id(id) && !path.is_empty()).then_some((id, path))
}

fn cp(a: CpArgs) -> Result<(), String> {
    match (remote_spec(&a.src), remote_spec(&a.dst)) {
        (None, Some((id, path))) => {
            let client = Client::new(&a.server.server)?;
            upload(&client, &a.src, id, path)
        }
        (Some((id, path)), None) => {
            let client = Client::new(&a.server.server)?;
            download(&client, id, path, &a.dst)
        }
        (Some(_), Some(_)) => {
            Err("copying between two sandboxes is not supported: copy through a local file".into())
        }
        (None, None) => Err(
            "one side must be in a sandbox: ID:PATH (the id as `stockade create` printed)".into(),
        ),
    }
}

/// A query value, percent-encoded.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn upload(client: &Client, local: &str, id: &str, path: &str) -> Result<(), String> {
    let url = client.url(&format!("/v1/sandboxes/{id}/files?path={}", encode(path)));
    let req = client
        .agent
        .put(&url)
        .header("authorization", &client.auth())
        .content_type("application/octet-stream");
    let resp = if local == "-" {
        let mut stdin = io::stdin().lock();
        req.send(ureq::SendBody::from_reader(&mut stdin))
    } else {
        let mut f = File::open(local).map_err(|e| format!("{}: {e}", printable(local)))?;
        let meta = f
            .metadata()
            .map_err(|e| format!("{}: {e}", printable(local)))?;
        if !meta.is_file() {
            return Err(format!("{}: not a regular file", printable(local)));
        }
        // With its length announced, the server refuses an upload over its cap before it starts.
        req.header("content-length", &meta.len().to_string())
            .send(ureq::SendBody::from_reader(&mut f))
    };
    let resp = resp.map_err(|e| match e {
        ureq::Error::Io(_) => format!(
            "the upload broke off: {e} (the server may have refused it: over its --max-upload cap?)"
        ),
        e => client.unreachable(&e),
    })?;
    client.check(resp)?;
    Ok(())
}

fn download(client: &Client, id: &str, path: &str, local: &str) -> Result<(), String> {
    let resp = client.send(
        "GET",
        &format!("/v1/sandboxes/{id}/files?path={}", encode(path)),
        None,
    )?;
    let mut body = resp.into_body().into_reader();
    if local == "-" {
        let mut out = io::stdout().lock();
        io::copy(&mut body, &mut out)
            .map_err(|e| format!("downloading {}: {e}", printable(path)))?;
        return out.flush().map_err(|e| format!("writing stdout: {e}"));
    }
    let mut dest = PathBuf::from(local);
    if dest.is_dir() {
        let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("file");
        dest.push(name);
    }
    // Into a temporary file next to it, renamed when complete: a broken download leaves
    // nothing behind and an existing file as it was.
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.stockade-cp-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let r = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        io::copy(&mut body, &mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "downloading {} to {}: {e}",
            printable(path),
            dest.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ls, trace

/// `stockade ls --server`: the caller's sandboxes on the server.
pub fn ls(server: &str, json: bool) -> ExitCode {
    let r = (|| -> Result<String, String> {
        let client = Client::new(server)?;
        let v = client.json("GET", "/v1/sandboxes", None)?;
        let list = v["sandboxes"].as_array().cloned().unwrap_or_default();
        if json {
            return Ok(list.iter().map(|s| format!("{s}\n")).collect());
        }
        if list.is_empty() {
            return Ok(format!("no sandboxes on {}\n", printable(&client.base)));
        }
        let mut rows = vec![[
            "SANDBOX".to_string(),
            "TEMPLATE".into(),
            "CREATED".into(),
            "EXPIRES".into(),
            "METADATA".into(),
        ]];
        for s in &list {
            let text = |k: &str| printable(s[k].as_str().unwrap_or("-")).into_owned();
            let meta = s["metadata"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            rows.push([
                text("id"),
                text("template"),
                text("created_at"),
                text("expires_at"),
                crate::ls::truncate(&printable(&meta), 60),
            ]);
        }
        let mut width = [0usize; 4];
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let line = format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3]
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        Ok(out)
    })();
    match r {
        Ok(out) => crate::trace::write_stdout(&out),
        Err(e) => crate::fail(e),
    }
}

/// The events of a sandbox on the server (after `since`).
fn fetch_events(client: &Client, id: &str, since: Option<u64>) -> Result<Vec<Event>, String> {
    let path = match since {
        Some(s) => format!("/v1/sandboxes/{id}/events?since={s}"),
        None => format!("/v1/sandboxes/{id}/events"),
    };
    let v = client.json("GET", &path, None)?;
    let arr = v
        .as_array()
        .ok_or("the server's events are not a JSON array")?;
    let mut out = Vec::with_capacity(arr.len());
    for e in arr {
        match serde_json::from_value::<Event>(e.clone()) {
            Ok(ev) => out.push(ev),
            Err(err) => warn(format!("an event from the server was skipped: {err}")),
        }
    }
    Ok(out)
}

/// `stockade trace --server ID [--json] [--follow]`: a sandbox's events from the server,
/// rendered as for a local log. `render` draws the tree; `stream` renders one event of a follow.
pub fn trace(
    server: &str,
    id: Option<&str>,
    json: bool,
    follow: bool,
    render: &dyn Fn(&str, &[Event]) -> String,
    stream: &mut dyn FnMut(&Event) -> String,
) -> ExitCode {
    let r = (|| -> Result<(), String> {
        let Some(id) = id else {
            return Err(
                "--last reads the local state directory; with --server give the sandbox's id"
                    .into(),
            );
        };
        check_id(id)?;
        let client = Client::new(server)?;
        let events = fetch_events(&client, id, None)?;
        let lines = |evs: &[Event]| -> String {
            evs.iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .map(|l| l + "\n")
                .collect()
        };
        if !follow {
            let out = if json {
                lines(&events)
            } else {
                render(id, &events)
            };
            return write_out(&out);
        }
        let mut last = None;
        let mut batch = events;
        loop {
            let mut out = String::new();
            let mut done = false;
            for e in &batch {
                last = Some(e.seq);
                done |= matches!(e.kind, EventKind::SandboxDestroyed { .. });
                if json {
                    out.push_str(&lines(std::slice::from_ref(e)));
                } else {
                    out.push_str(&stream(e));
                }
            }
            write_out(&out)?;
            if done {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
            batch = match fetch_events(&client, id, last) {
                Ok(b) => b,
                // Destroyed and gone from the server between two polls.
                Err(e) if e.starts_with("not found") => {
                    warn(format!("{id} is no longer on the server (destroyed)"));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
        }
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}

fn write_out(text: &str) -> Result<(), String> {
    let mut o = io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing the output: {e}")),
    }
}

pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_messages() {
        assert_eq!(
            remote_spec("0123456789abcdef:/tmp/x"),
            Some(("0123456789abcdef", "/tmp/x"))
        );
        assert_eq!(remote_spec("./a:b"), None);
        assert_eq!(remote_spec("0123456789ABCDEF:/x"), None);
        assert_eq!(remote_spec("0123456789abcdef:"), None);
        assert_eq!(encode("/a b/ü&x=1"), "/a%20b/%C3%BC%26x%3D1");
        let m = error_message(
            401,
            r#"{"error":{"code":"unauthorized","message":"invalid or revoked API key"}}"#,
        );
        assert!(
            m.contains("STOCKADE_API_KEY") && m.contains("invalid or revoked"),
            "{m}"
        );
        let m = error_message(
            429,
            r#"{"error":{"code":"too_many_sandboxes","message":"key k1 has 2 of 2"}}"#,
        );
        assert!(m.contains("key k1 has 2 of 2"), "{m}");
        assert!(error_message(502, "<html>\x1b[31m").contains("\\x1b"));
        assert_eq!(key_value("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(key_value("=x").is_err() && key_value("x").is_err());
    }
}
