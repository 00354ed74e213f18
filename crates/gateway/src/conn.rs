//! The host-side per-connection handler: the one place where the gateway's decisions meet sockets.
//!
//! Two entry points, both blocking std I/O (one thread per connection):
//!
//! - [`Gateway::handle_transparent`]: a connection the sandbox opened to the loopback address that
//!   the gateway's DNS answer mapped to `name`. The first bytes (TLS ClientHello or HTTP request
//!   head) must name the same host, or the connection is refused (domain fronting).
//! - [`Gateway::handle_proxy`]: a connection to the `HTTP_PROXY`/`HTTPS_PROXY` endpoint. `CONNECT
//!   host:port` and absolute-form `GET http://host/...` requests; refusals answer `403` with the
//!   reason code in the body and in an `X-Stockade-Reason` header.
//!
//! ## What it promises
//!
//! - Decisions use only the name the sandbox asked for and the addresses the gateway resolved
//!   itself (the `hosts` map, else the host resolver). An IP literal as a name is refused
//!   (`denied:ip_literal`).
//! - Nothing is dialled before the name passed [`Rules::decide`] and the address passed
//!   [`AddrPolicy::check`]; in transparent mode nothing is dialled before the first bytes were
//!   checked. Addresses that fail the policy are never dialled.
//! - Fail closed: missing SNI (any port), missing `Host`, unparseable first bytes, a protocol that
//!   is neither TLS nor HTTP/1.x, or no first bytes within the peek timeout: refused.
//! - Every call returns one [`ConnectRecord`] (the `net.connect` audit event's content).
//!
//! ## Limitations
//!
//! Only the first request of a connection is checked: later requests on a kept-alive HTTP
//! connection reach the same (allowed) upstream unchecked, so a `Host` change there cannot reach
//! another address, but is not refused either (the proxy's forwarded request carries
//! `Connection: close` to limit this). No Encrypted Client Hello, no HTTP/2 prior knowledge. Bytes
//! are copied in user space (no `splice`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use crate::addr::AddrPolicy;
use crate::http::{self, Form, HeadResult};
use crate::intercept::{Interceptor, SecretEvent};
use crate::rules::{self, Decision, Rules};
use crate::secrets::SecretSet;
use crate::sni::{self, SniResult};
use std::sync::Arc;

/// Largest first-bytes window read before a decision (a ClientHello or a request head).
pub const MAX_PEEK: usize = 16 * 1024;
/// Default time the sandbox has to send its first bytes.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to establish the upstream TCP connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

const TLS_HANDSHAKE: u8 = 22;

/// What became of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed and relayed (`reason` is `"allowed"`).
    Allowed,
    /// Refused by policy (`reason` is a `denied:*` code); nothing was relayed.
    Denied,
    /// Allowed, but resolving or dialling failed (`reason` is a `failed:*` code).
    Failed,
}

/// The content of a `net.connect` audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRecord {
    /// The name the sandbox asked for (normalized when valid); empty if none was read.
    pub name: String,
    /// The destination port (0 if none was read).
    pub port: u16,
    pub verdict: Verdict,
    /// `"allowed"`, a `denied:*` code, or a `failed:*` code.
    pub reason: &'static str,
    /// Bytes relayed from the sandbox to the upstream (including the checked first bytes).
    pub bytes_out: u64,
    /// Bytes relayed from the upstream to the sandbox.
    pub bytes_in: u64,
    pub duration_ms: u64,
    /// The upstream address dialled, if any.
    pub peer: Option<SocketAddr>,
    /// What secrets did on this connection (`secret.used` / `secret.refused`).
    pub secrets: Vec<SecretEvent>,
}

/// A refusal or failure before relaying: the code and whether it is a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stop {
    verdict: Verdict,
    reason: &'static str,
}

fn denied(reason: &'static str) -> Stop {
    Stop {
        verdict: Verdict::Denied,
        reason,
    }
}

fn failed(reason: &'static str) -> Stop {
    Stop {
        verdict: Verdict::Failed,
        reason,
    }
}

/// The gateway's per-connection policy: the name rules, the post-resolution address policy and
/// the operator's static names.
#[derive(Debug, Clone)]
pub struct Gateway {
    rules: Rules,
    addrs: AddrPolicy,
    hosts: BTreeMap<String, IpAddr>,
    peek_timeout: Duration,
    dial_timeout: Duration,
    interceptor: Option<Arc<Interceptor>>,
}

impl Gateway {
    /// `hosts` keys are normalized (lower case, no trailing dot) here.
    pub fn new(rules: Rules, addrs: AddrPolicy, hosts: BTreeMap<String, IpAddr>) -> Gateway {
        let hosts = hosts
            .into_iter()
            .map(|(k, v)| (rules::normalize_name(&k).unwrap_or(k), v))
            .collect();
        Gateway {
            rules,
            addrs,
            hosts,
            peek_timeout: PEEK_TIMEOUT,
            dial_timeout: DIAL_TIMEOUT,
            interceptor: None,
        }
    }

    /// Injects secrets: TLS to a host with a secret bound is intercepted by `i`; placeholders
    /// seen in plaintext traffic are refused.
    pub fn with_interceptor(mut self, i: Arc<Interceptor>) -> Gateway {
        self.interceptor = Some(i);
        self
    }

    fn secrets(&self) -> Option<&SecretSet> {
        self.interceptor
            .as_deref()
            .map(Interceptor::secrets)
            .filter(|s| !s.is_empty())
    }

    /// After the first bytes passed: TLS to a bound host is intercepted; plaintext is scanned
    /// for placeholders; anything else is relayed as it is.
    /// `dialled` is the upstream connection when it was made already (CONNECT).
    fn forward(
        &self,
        client: &TcpStream,
        first: &[u8],
        name: &str,
        port: u16,
        rec: &mut ConnectRecord,
        dialled: Option<TcpStream>,
    ) -> Result<(), Stop> {
        let dial = |rec: &mut ConnectRecord, dialled: Option<TcpStream>| match dialled {
            Some(u) => Ok(u),
            None => self.resolve_and_dial(name, port, rec),
        };
        let tls = first.first() == Some(&TLS_HANDSHAKE);
        if let Some(set) = self.secrets() {
            if tls && set.bound(name) {
                let upstream = dial(rec, dialled)?;
                let Some(i) = self.interceptor.as_deref() else {
                    return Err(failed("failed:intercept"));
                };
                let served = i.serve(client, first, upstream, name, port);
                rec.bytes_out = served.bytes_out;
                rec.bytes_in = served.bytes_in;
                rec.secrets = served.events;
                return match served.failure {
                    Some(code) if code.starts_with("denied:") => Err(denied(code)),
                    Some(code) => Err(failed(code)),
                    None => Ok(()),
                };
            }
            if !tls {
                if let Some(s) = set.placeholders_in(first).first() {
                    let reason = if s.bound_to(name) {
                        "denied:secret_plaintext"
                    } else {
                        "denied:secret_not_bound"
                    };
                    rec.secrets.push(SecretEvent::Refused {
                        name: s.name.clone(),
                        destination: name.to_string(),
                        reason,
                    });
                    return Err(denied(reason));
                }
                let upstream = dial(rec, dialled)?;
                relay(client, upstream, first, rec, Some(set));
                return Ok(());
            }
        }
        let upstream = dial(rec, dialled)?;
        relay(client, upstream, first, rec, None);
        Ok(())
    }

    /// Replaces the time allowed for the first bytes ([`PEEK_TIMEOUT`] by default).
    pub fn with_peek_timeout(mut self, d: Duration) -> Gateway {
        self.peek_timeout = d;
        self
    }

    /// Replaces the upstream connect timeout ([`DIAL_TIMEOUT`] by default).
    pub fn with_dial_timeout(mut self, d: Duration) -> Gateway {
        self.dial_timeout = d;
        self
    }

    /// A connection the sandbox opened to the address DNS mapped to `name` (transparent mode).
    ///
    /// Order: name rules; first bytes (TLS: SNI must equal `name`; HTTP: `Host` must equal
    /// `name`, and its port, if given, `port`); resolution and address policy; dial; relay.
    pub fn handle_transparent(&self, client: TcpStream, name: &str, port: u16) -> ConnectRecord {
        let start = Instant::now();
        let mut rec = record(name, port);
        let result = self.transparent(&client, name, port, &mut rec);
        finish(rec, result, start, &client)
    }

    fn transparent(
        &self,
        client: &TcpStream,
        name: &str,
        port: u16,
        rec: &mut ConnectRecord,
    ) -> Result<(), Stop> {
        let name = self.check_name(name, port)?;
        rec.name.clone_from(&name);
        let first = self.peek(client, Vec::new())?;
        check_first_bytes(&first, &name, port)?;
        self.forward(client, &first, &name, port, rec, None)
    }

    /// A connection to the proxy endpoint (`HTTP_PROXY`/`HTTPS_PROXY`).
    ///
    /// `CONNECT host:port`: checked, dialled, answered `200 Connection established`, then the
    /// tunnel's first bytes are checked as in transparent mode (a ClientHello's SNI must equal
    /// `host`; on refusal the connection is closed). Absolute-form `http://` requests: checked,
    /// dialled, and forwarded in origin form with `Connection: close`. Refusals before any
    /// answer get `403` (`400` for an unparseable request, `502` when dialling fails).
    pub fn handle_proxy(&self, client: TcpStream) -> ConnectRecord {
        let start = Instant::now();
        let mut rec = record("", 0);
        let mut answered = false;
        let result = self.proxy(&client, &mut rec, &mut answered);
        if let (Err(stop), false) = (result, answered) {
            let status = match (stop.verdict, stop.reason) {
                (_, "denied:bad_request") => "400 Bad Request",
                (Verdict::Failed, _) => "502 Bad Gateway",
                _ => "403 Forbidden",
            };
            let _ = (&client).write_all(refusal(status, stop.reason).as_bytes());
        }
        finish(rec, result, start, &client)
    }

    fn proxy(
        &self,
        client: &TcpStream,
        rec: &mut ConnectRecord,
        answered: &mut bool,
    ) -> Result<(), Stop> {
        let buf = self.read_head(client)?;
        let head = match http::parse_head(&buf) {
            HeadResult::Complete(h) => h,
            HeadResult::NeedMore | HeadResult::Malformed(_) => {
                return Err(denied("denied:bad_request"));
            }
        };
        let dest = match http::destination(&head) {
            Ok(d) => d,
            Err("host_mismatch") => return Err(denied("denied:host_mismatch")),
            Err(_) => return Err(denied("denied:bad_request")),
        };
        if dest.form == Form::Origin {
            return Err(denied("denied:bad_request"));
        }
        rec.name.clone_from(&dest.host);
        rec.port = dest.port;
        let name = self.check_name(&dest.host, dest.port)?;
        rec.name.clone_from(&name);
        let rest = &buf[head.head_len..];
        match dest.form {
            Form::Connect => {
                let upstream = self.resolve_and_dial(&name, dest.port, rec)?;
                (&*client)
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .map_err(|_| failed("failed:client_write"))?;
                *answered = true;
                let first = self.peek(client, rest.to_vec())?;
                check_first_bytes(&first, &name, dest.port)?;
                self.forward(client, &first, &name, dest.port, rec, Some(upstream))
            }
            Form::Absolute => {
                let mut out =
                    origin_form(&buf[..head.head_len], &head.target, &dest.host, dest.port)
                        .ok_or(denied("denied:bad_request"))?;
                out.extend_from_slice(rest);
                self.forward(client, &out, &name, dest.port, rec, None)
            }
            Form::Origin => Err(denied("denied:bad_request")),
        }
    }

    /// Name rules, with IP literals of either family refused as such.
    fn check_name(&self, name: &str, port: u16) -> Result<String, Stop> {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Err(denied(rules::Reason::IpLiteral.code()));
        }
        match self.rules.decide(name, port) {
            Decision::Allowed => {
                rules::normalize_name(name).map_err(|_| denied(rules::Reason::BadName.code()))
            }
            Decision::Denied(r) => Err(denied(r.code())),
        }
    }

    /// Resolves `name` (static hosts first), keeps the addresses the policy allows, and dials them
    /// in order. If none is allowed, the first refused address's code.
    fn resolve_and_dial(
        &self,
        name: &str,
        port: u16,
        rec: &mut ConnectRecord,
    ) -> Result<TcpStream, Stop> {
        for addr in self.resolve_allowed(name, port)? {
            if let Ok(s) = TcpStream::connect_timeout(&addr, self.dial_timeout) {
                // Relayed bytes go out as they come: Nagle plus delayed ACK would hold TLS
                // handshake flights for 40 ms.
                let _ = s.set_nodelay(true);
                rec.peer = Some(addr);
                return Ok(s);
            }
        }
        Err(failed("failed:connect"))
    }

    /// The addresses of `name` that the address policy allows; if none is allowed, the first
    /// refused address's code.
    fn resolve_allowed(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, Stop> {
        let resolved: Vec<SocketAddr> = match self.hosts.get(name) {
            Some(ip) => vec![SocketAddr::new(*ip, port)],
            None => (name, port)
                .to_socket_addrs()
                .map_err(|_| failed("failed:resolve"))?
                .collect(),
        };
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| match self.addrs.check(a.ip()) {
                Ok(()) => true,
                Err(code) => {
                    first_refusal.get_or_insert(code);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(first_refusal.map_or(failed("failed:resolve"), denied));
        }
        Ok(allowed)
    }

    /// Reads the first bytes until they are a complete ClientHello or request head (or clearly
    /// neither), within the peek timeout and [`MAX_PEEK`].
    fn peek(&self, client: &TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, Stop> {
        let deadline = Instant::now() + self.peek_timeout;
        loop {
            if !buf.is_empty() && !needs_more(&buf) {
                return Ok(buf);
            }
            if buf.len() >= MAX_PEEK {
                return Ok(buf);
            }
            read_some(client, &mut buf, deadline)?;
        }
    }

    /// Reads a proxy request head (up to [`MAX_PEEK`]).
    fn read_head(&self, client: &TcpStream) -> Result<Vec<u8>, Stop> {
        let deadline = Instant::now() + self.peek_timeout;
        let mut buf = Vec::new();
        loop {
            match http::parse_head(&buf) {
                HeadResult::NeedMore if buf.len() < MAX_PEEK => {
                    read_some(client, &mut buf, deadline)?;
                }
                _ => return Ok(buf),
            }
        }
    }
}

fn record(name: &str, port: u16) -> ConnectRecord {
    ConnectRecord {
        name: name.to_string(),
        port,
        verdict: Verdict::Allowed,
        reason: "allowed",
        bytes_out: 0,
        bytes_in: 0,
        duration_ms: 0,
        peer: None,
        secrets: Vec::new(),
    }
}

fn finish(
    mut rec: ConnectRecord,
    result: Result<(), Stop>,
    start: Instant,
    client: &TcpStream,
) -> ConnectRecord {
    if let Err(stop) = result {
        rec.verdict = stop.verdict;
        rec.reason = stop.reason;
        let _ = client.shutdown(Shutdown::Both);
    }
    rec.duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    rec
}

fn read_some(client: &TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Stop> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(denied("denied:first_bytes_timeout"));
    }
    client
        .set_read_timeout(Some(left))
        .map_err(|_| failed("failed:client_read"))?;
    let mut chunk = [0u8; 4096];
    let want = chunk.len().min(MAX_PEEK.saturating_sub(buf.len()));
    let n = match (&*client).read(&mut chunk[..want]) {
        Ok(0) => return Err(denied("denied:closed_before_request")),
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(denied("denied:first_bytes_timeout"));
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
        Err(_) => return Err(failed("failed:client_read")),
    };
    buf.extend_from_slice(&chunk[..n]);
    client
        .set_read_timeout(None)
        .map_err(|_| failed("failed:client_read"))
}

fn needs_more(buf: &[u8]) -> bool {
    if buf.first() == Some(&TLS_HANDSHAKE) {
        sni::parse_sni(buf) == SniResult::NeedMore
    } else {
        http::parse_head(buf) == HeadResult::NeedMore
    }
}

/// The domain-fronting check: the first bytes must name `name` (already normalized).
fn check_first_bytes(first: &[u8], name: &str, port: u16) -> Result<(), Stop> {
    if first.first() == Some(&TLS_HANDSHAKE) {
        return match sni::parse_sni(first) {
            SniResult::Complete(None) => Err(denied("denied:no_sni")),
            SniResult::Complete(Some(sni)) => {
                if rules::normalize_name(&sni).is_ok_and(|s| s == name) {
                    Ok(())
                } else {
                    Err(denied("denied:sni_mismatch"))
                }
            }
            SniResult::NeedMore | SniResult::NotTls | SniResult::Malformed(_) => {
                Err(denied("denied:bad_tls"))
            }
        };
    }
    let head = match http::parse_head(first) {
        HeadResult::Complete(h) => h,
        HeadResult::NeedMore | HeadResult::Malformed(_) => {
            return Err(denied("denied:unknown_protocol"));
        }
    };
    if head.method == "CONNECT" {
        return Err(denied("denied:bad_request"));
    }
    let host = head.host.as_deref().ok_or(denied("denied:no_host"))?;
    let (h, p) = http::authority(host).map_err(|_| denied("denied:host_mismatch"))?;
    let same_name = rules::normalize_name(&h).is_ok_and(|h| h == name);
    if !same_name || p.is_some_and(|p| p != port) {
        return Err(denied("denied:host_mismatch"));
    }
    // An absolute-form target must agree with Host too (destination() checks that).
    match http::destination(&head) {
        Ok(_) => Ok(()),
        Err("host_mismatch") => Err(denied("denied:host_mismatch")),
        Err(_) => Err(denied("denied:bad_request")),
    }
}

/// Rewrites an absolute-form request head to origin form: the path alone on the request line,
/// `Host` present, `Proxy-*` and `Connection` headers replaced by `Connection: close`.
fn origin_form(head: &[u8], target: &str, host: &str, port: u16) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.splitn(3, ' ');
    let (method, _, version) = (parts.next()?, parts.next()?, parts.next()?);
    let after_scheme = target.get("http://".len()..)?;
    let path = match after_scheme.find(['/', '?']) {
        Some(i) => after_scheme.get(i..)?,
        None => "/",
    };
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let mut out = format!("{method} {path} {version}\r\n");
    let mut saw_host = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("proxy-") || lower.starts_with("connection:") {
            continue;
        }
        saw_host |= lower.starts_with("host:");
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !saw_host {
        if port == 80 {
            out.push_str(&format!("Host: {host}\r\n"));
        } else {
            out.push_str(&format!("Host: {host}:{port}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    Some(out.into_bytes())
}

fn refusal(status: &str, code: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nX-Stockade-Reason: {code}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{code}\n",
        code.len() + 1
    )
}

/// Writes `first` upstream, then copies both ways until both directions end; counts bytes.
/// With `scan`, the outbound stream is watched for placeholders: one ends the connection and is
/// recorded as refused (the placeholder is worthless outside, but its trip is written down).
fn relay(
    client: &TcpStream,
    upstream: TcpStream,
    first: &[u8],
    rec: &mut ConnectRecord,
    scan: Option<&SecretSet>,
) {
    if (&upstream).write_all(first).is_err() {
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }
    rec.bytes_out = first.len() as u64;
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    };
    let mut scanner = scan.map(|set| Scanner::new(set, first));
    let outbound = thread::spawn(move || {
        let n = copy_half(&c2, &u2, scanner.as_mut());
        (n, scanner.and_then(|s| s.hit))
    });
    rec.bytes_in = copy_half(&upstream, client, None);
    let (n, hit) = outbound.join().unwrap_or((0, None));
    rec.bytes_out += n;
    if let (Some(name), Some(set)) = (hit, scan) {
        let bound = set
            .secrets
            .iter()
            .any(|s| s.name == name && s.bound_to(&rec.name));
        let reason = if bound {
            "denied:secret_plaintext"
        } else {
            "denied:secret_not_bound"
        };
        rec.secrets.push(SecretEvent::Refused {
            name,
            destination: rec.name.clone(),
            reason,
        });
        rec.verdict = Verdict::Denied;
        rec.reason = reason;
    }
}

/// Watches a byte stream for placeholders without delaying it: a window of the last bytes is
/// kept so a placeholder split across reads is still seen.
struct Scanner {
    placeholders: Vec<(String, Vec<u8>)>,
    tail: Vec<u8>,
    keep: usize,
    hit: Option<String>,
}

impl Scanner {
    fn new(set: &SecretSet, first: &[u8]) -> Scanner {
        let placeholders: Vec<(String, Vec<u8>)> = set
            .secrets
            .iter()
            .map(|s| (s.name.clone(), s.placeholder.as_bytes().to_vec()))
            .collect();
        let keep = placeholders
            .iter()
            .map(|p| p.1.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let mut s = Scanner {
            placeholders,
            tail: Vec::new(),
            keep,
            hit: None,
        };
        s.feed(first);
        s
    }

    /// Whether `chunk` (with the window) completes a placeholder.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        self.tail.extend_from_slice(chunk);
        if self.hit.is_none() {
            self.hit = self
                .placeholders
                .iter()
                .find(|(_, p)| memchr::memmem::find(&self.tail, p).is_some())
                .map(|(n, _)| n.clone());
        }
        let cut = self.tail.len().saturating_sub(self.keep);
        self.tail.drain(..cut);
        self.hit.is_some()
    }
}

/// Copies `from` → `to` until EOF or error (or a placeholder, with `scan`); then half-closes `to`
/// (or closes both on error or a placeholder).
fn copy_half(from: &TcpStream, to: &TcpStream, mut scan: Option<&mut Scanner>) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match (&*from).read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return total;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if scan.as_deref_mut().is_some_and(|s| s.feed(&buf[..n])) {
            break;
        }
        if (&*to).write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    total
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
