//! End-to-end tests of the handler. All traffic stays on 127.0.0.0/8: an upstream on 127.0.0.2
//! (`api.test`) and a canary on 127.0.0.3 (`evil.test`), both counting connections and recording
//! the first bytes they read. Names in 10/8 and 169.254/16 are only mapped, never dialled.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::*;
use crate::addr::Cidr;

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

/// A local server that counts connections, records what each one sent first (a request head or
/// a ClientHello), answers [`REPLY`] and closes.
struct Server {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Server {
    fn start(ip: &str) -> Server {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (count.clone(), seen.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !complete(&buf) {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let got_any = !buf.is_empty();
                    s.lock().unwrap().push(buf);
                    if got_any {
                        let _ = conn.write_all(REPLY);
                    }
                });
            }
        });
        Server { addr, count, seen }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted, after a pause long enough for a pending one to be accepted.
    fn connections(&self) -> usize {
        thread::sleep(Duration::from_millis(150));
        self.count.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        thread::sleep(Duration::from_millis(150));
        self.seen.lock().unwrap().clone()
    }
}

fn complete(buf: &[u8]) -> bool {
    match buf.first() {
        None => false,
        Some(22) => matches!(sni::parse_sni(buf), SniResult::Complete(_)),
        Some(_) => buf.windows(4).any(|w| w == b"\r\n\r\n"),
    }
}

fn gateway(allow: &[String], allow_private: &[&str]) -> Gateway {
    let rules = Rules::new(allow, &[]).unwrap();
    let cidrs = allow_private
        .iter()
        .map(|c| Cidr::parse(c).unwrap())
        .collect();
    let hosts: BTreeMap<String, IpAddr> = [
        ("api.test", "127.0.0.2"),
        ("evil.test", "127.0.0.3"),
        ("priv.test", "10.9.8.7"),
        ("meta.test", "169.254.169.254"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
    .collect();
    Gateway::new(rules, AddrPolicy::new(cidrs), hosts).with_dial_timeout(Duration::from_secs(2))
}

/// A pair of connected sockets: (the sandbox's end, the end the gateway handles).
fn socket_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (client, server)
}

/// Sends `send` through `handle`, half-closes, and returns the record and everything read back.
fn run(
    send: &[u8],
    handle: impl FnOnce(TcpStream) -> ConnectRecord + Send + 'static,
) -> (ConnectRecord, Vec<u8>) {
    let (mut client, server) = socket_pair();
    let h = thread::spawn(move || handle(server));
    // A refusal may close the connection before (or while) the client writes: then the write or
    // the half-close fails, which is part of being refused, not a test failure.
    let _ = client.write_all(send);
    let _ = client.shutdown(Shutdown::Write);
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut back = Vec::new();
    let _ = client.read_to_end(&mut back);
    (h.join().unwrap(), back)
}

fn transparent(gw: &Gateway, name: &str, port: u16, send: &[u8]) -> (ConnectRecord, Vec<u8>) {
    let (gw, name) = (gw.clone(), name.to_string());
    run(send, move |s| gw.handle_transparent(s, &name, port))
}

fn proxy(gw: &Gateway, send: &[u8]) -> (ConnectRecord, Vec<u8>) {
    let gw = gw.clone();
    run(send, move |s| gw.handle_proxy(s))
}

fn get(host: &str) -> Vec<u8> {
    format!("GET /x HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n").into_bytes()
}

/// A real ClientHello made by rustls for `server_name`.
fn hello(server_name: &str) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn assert_denied(rec: &ConnectRecord, code: &str) {
    assert_eq!(
        (rec.verdict, rec.reason),
        (Verdict::Denied, code),
        "{rec:?}"
    );
    assert_eq!(
        (rec.bytes_out, rec.bytes_in, rec.peer),
        (0, 0, None),
        "{rec:?}"
    );
}

#[test]
fn transparent_http_allowed_end_to_end() {
    let api = Server::start("127.0.0.2");
    let gw = gateway(&[format!("api.test:{}", api.port())], &["127.0.0.2/32"]);
    let req = get(&format!("api.test:{}", api.port()));
    let (rec, back) = transparent(&gw, "api.test", api.port(), &req);
    assert_eq!((rec.verdict, rec.reason), (Verdict::Allowed, "allowed"));
    assert_eq!(back, REPLY);
    assert_eq!(rec.bytes_out, req.len() as u64);
    assert_eq!(rec.bytes_in, REPLY.len() as u64);
    assert_eq!(rec.peer, Some(api.addr));
    assert_eq!((rec.name.as_str(), rec.port), ("api.test", api.port()));
    assert_eq!(api.connections(), 1);
    assert_eq!(api.seen(), vec![req]);
}

#[test]
fn transparent_unlisted_name_is_refused_and_canary_sees_nothing() {
    let canary = Server::start("127.0.0.3");
    let req = get("evil.test");
    let gw = gateway(&["api.test:1".to_string()], &["127.0.0.2/32"]);
    let (rec, back) = transparent(&gw, "evil.test", canary.port(), &req);
    assert_denied(&rec, "denied:not_in_allowlist");
    assert!(back.is_empty());
    assert_eq!(canary.connections(), 0);

    // Control: allowed (and its address allowed), the same probe reaches the canary.
    let open = gateway(&[format!("evil.test:{}", canary.port())], &["127.0.0.3/32"]);
    let (rec, back) = transparent(&open, "evil.test", canary.port(), &req);
    assert_eq!(rec.reason, "allowed");
    assert_eq!(back, REPLY);
    assert_eq!(canary.connections(), 1);
}

#[test]
fn allowed_name_resolving_to_unlisted_private_address_is_refused() {
    let canary = Server::start("127.0.0.3");
    let p = canary.port();
    let allow: Vec<String> = ["evil.test", "priv.test", "meta.test"]
        .iter()
        .map(|n| format!("{n}:{p}"))
        .collect();
    let gw = gateway(&allow, &["127.0.0.2/32"]);
    // 127.0.0.3 is loopback (its class code), 10.9.8.7 private, 169.254.169.254 metadata.
    for (name, code) in [
        ("evil.test", "denied:loopback_address"),
        ("priv.test", "denied:private_address"),
        ("meta.test", "denied:metadata_address"),
    ] {
        let (rec, back) = transparent(&gw, name, p, &get(name));
        assert_denied(&rec, code);
        assert!(back.is_empty());
    }
    assert_eq!(canary.connections(), 0);

    // Control: allow_private naming 127.0.0.3 lets the same name through.
    let gw = gateway(&allow, &["127.0.0.3/32"]);
    let (rec, _) = transparent(&gw, "evil.test", p, &get("evil.test"));
    assert_eq!(rec.reason, "allowed");
    assert_eq!(canary.connections(), 1);
}

#[test]
fn transparent_host_header_naming_another_host_is_refused() {
    let api = Server::start("127.0.0.2");
    let canary = Server::start("127.0.0.3");
    let gw = gateway(&[format!("api.test:{}", api.port())], &["127.0.0.2/32"]);
    for host in [
        "evil.test".to_string(),
        format!("evil.test:{}", canary.port()),
        format!("api.test:{}", api.port() ^ 1), // right name, wrong port
    ] {
        let (rec, back) = transparent(&gw, "api.test", api.port(), &get(&host));
        assert_denied(&rec, "denied:host_mismatch");
        assert!(back.is_empty());
    }
    // Absolute-form target disagreeing with Host.
    let req = format!(
        "GET http://evil.test/ HTTP/1.1\r\nHost: api.test:{}\r\n\r\n",
        api.port()
    );
    let (rec, _) = transparent(&gw, "api.test", api.port(), req.as_bytes());
    assert_denied(&rec, "denied:host_mismatch");
    assert_eq!((api.connections(), canary.connections()), (0, 0));

    // Control: the right Host (with and without the port) goes through.
    for host in ["api.test".to_string(), format!("API.test:{}", api.port())] {
        let (rec, back) = transparent(&gw, "api.test", api.port(), &get(&host));
        assert_eq!(rec.reason, "allowed", "{host}");
        assert_eq!(back, REPLY);
    }
    assert_eq!(api.connections(), 2);
}

#[test]
fn transparent_tls_sni_must_equal_the_name() {
    let api = Server::start("127.0.0.2");
    let canary = Server::start("127.0.0.3");
    let gw = gateway(&[format!("api.test:{}", api.port())], &["127.0.0.2/32"]);
    let (rec, back) = transparent(&gw, "api.test", api.port(), &hello("evil.test"));
    assert_denied(&rec, "denied:sni_mismatch");
    assert!(back.is_empty());
    assert_eq!((api.connections(), canary.connections()), (0, 0));

    // Control: the ClientHello for the right name is forwarded byte for byte.
    let ch = hello("api.test");
    let (rec, back) = transparent(&gw, "api.test", api.port(), &ch);
    assert_eq!(rec.reason, "allowed");
    assert_eq!(rec.bytes_out, ch.len() as u64);
    assert_eq!(back, REPLY);
    assert_eq!(api.seen(), vec![ch]);
}

#[test]
fn transparent_garbage_and_silence_are_refused() {
    let api = Server::start("127.0.0.2");
    let gw = gateway(&[format!("api.test:{}", api.port())], &["127.0.0.2/32"])
        .with_peek_timeout(Duration::from_millis(200));
    let (rec, _) = transparent(&gw, "api.test", api.port(), b"\x16\x03\x01\x00\x05hello");
    assert_denied(&rec, "denied:bad_tls");
    let (rec, _) = transparent(&gw, "api.test", api.port(), b"SSH-2.0-x\n\r\n\r\n");
    assert_denied(&rec, "denied:unknown_protocol");
    let (rec, _) = transparent(&gw, "api.test", api.port(), b"");
    assert_denied(&rec, "denied:closed_before_request");
    let (rec, _) = transparent(&gw, "api.test", api.port(), b"GET / HTTP/1.0\r\n\r\n");
    assert_denied(&rec, "denied:no_host");

    // Silence: the sandbox keeps the connection open and sends nothing.
    let (_client, server) = socket_pair();
    let rec = gw.handle_transparent(server, "api.test", api.port());
    assert_denied(&rec, "denied:first_bytes_timeout");
    assert_eq!(api.connections(), 0);
}

#[test]
fn proxy_connect_allowed_and_refused() {
    let api = Server::start("127.0.0.2");
    let canary = Server::start("127.0.0.3");
    let gw = gateway(&[format!("api.test:{}", api.port())], &["127.0.0.2/32"]);
    let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";

    // Allowed: head and ClientHello sent together (the gateway keeps what follows the head).
    let ch = hello("api.test");
    let mut req = format!(
        "CONNECT api.test:{0} HTTP/1.1\r\nHost: api.test:{0}\r\n\r\n",
        api.port()
    )
    .into_bytes();
    req.extend_from_slice(&ch);
    let (rec, back) = proxy(&gw, &req);
    assert_eq!((rec.verdict, rec.reason), (Verdict::Allowed, "allowed"));
    assert_eq!((rec.name.as_str(), rec.port), ("api.test", api.port()));
    assert_eq!(back, [ok.as_slice(), REPLY].concat());
    assert_eq!(
        (rec.bytes_out, rec.bytes_in),
        (ch.len() as u64, REPLY.len() as u64)
    );
    assert_eq!(api.seen(), vec![ch]);

    // Unlisted name and IP literal: 403 with the code, nothing dialled.
    for (target, code) in [
        (
            format!("evil.test:{}", canary.port()),
            "denied:not_in_allowlist",
        ),
        (format!("127.0.0.3:{}", canary.port()), "denied:ip_literal"),
        (format!("[::1]:{}", canary.port()), "denied:ip_literal"),
    ] {
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let (rec, back) = proxy(&gw, req.as_bytes());
        assert_denied(&rec, code);
        let back = String::from_utf8(back).unwrap();
        assert!(back.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{back}");
        assert!(
            back.contains(&format!("\r\nX-Stockade-Reason: {code}\r\n")),
            "{back}"
        );
        assert!(back.ends_with(&format!("\r\n\r\n{code}\n")), "{back}");
    }
    assert_eq!(canary.connections(), 0);

    // Tunnel whose SNI names another host: closed after the 200, no byte reaches upstream.
    let mut req = format!(
        "CONNECT api.test:{0} HTTP/1.1\r\nHost: api.test:{0}\r\n\r\n",
        api.port()
    )
    .into_bytes();
    req.extend_from_slice(&hello("evil.test"));
    let (rec, back) = proxy(&gw, &req);
    assert_eq!(
        (rec.verdict, rec.reason),
        (Verdict::Denied, "denied:sni_mismatch")
    );
    assert_eq!((rec.bytes_out, rec.bytes_in), (0, 0));
    assert_eq!(back, ok);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].is_empty(), "{seen:?}");
    assert_eq!(canary.connections(), 0);
}

#[test]
fn proxy_absolute_form_get_is_forwarded_in_origin_form() {
    let api = Server::start("127.0.0.2");
    let canary = Server::start("127.0.0.3");
    let gw = gateway(&[format!("api.test:{}", api.port())], &["127.0.0.2/32"]);
    let p = api.port();
    let req = format!(
        "GET http://api.test:{p}/a/b?q=1 HTTP/1.1\r\nHost: api.test:{p}\r\n\
         Proxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n"
    );
    let (rec, back) = proxy(&gw, req.as_bytes());
    assert_eq!((rec.verdict, rec.reason), (Verdict::Allowed, "allowed"));
    assert_eq!(back, REPLY);
    let want = format!(
        "GET /a/b?q=1 HTTP/1.1\r\nHost: api.test:{p}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(rec.bytes_out, want.len() as u64);
    assert_eq!(api.seen(), vec![want.into_bytes()]);

    // Refused: unlisted name, and Host disagreeing with the target.
    let c = canary.port();
    for (req, code) in [
        (
            format!("GET http://evil.test:{c}/ HTTP/1.1\r\nHost: evil.test:{c}\r\n\r\n"),
            "denied:not_in_allowlist",
        ),
        (
            format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: evil.test:{c}\r\n\r\n"),
            "denied:host_mismatch",
        ),
    ] {
        let (rec, back) = proxy(&gw, req.as_bytes());
        assert_denied(&rec, code);
        let back = String::from_utf8(back).unwrap();
        assert!(back.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{back}");
        assert!(
            back.contains(&format!("X-Stockade-Reason: {code}\r\n")),
            "{back}"
        );
    }
    // Not a proxy request at all.
    let (rec, back) = proxy(&gw, &get("api.test"));
    assert_denied(&rec, "denied:bad_request");
    assert!(back.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    assert_eq!(canary.connections(), 0);
    assert_eq!(api.connections(), 1);
}

#[test]
fn origin_form_rewrites() {
    let head =
        b"GET http://a.test HTTP/1.0\r\nProxy-Authorization: x\r\nConnection: keep-alive\r\n\r\n";
    let out = origin_form(head, "http://a.test", "a.test", 80).unwrap();
    assert_eq!(
        out,
        b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    );
    let head = b"GET http://a.test:81?x#f HTTP/1.1\r\nHost: a.test:81\r\n\r\n";
    let out = origin_form(head, "http://a.test:81?x#f", "a.test", 81).unwrap();
    assert_eq!(
        out,
        b"GET /?x HTTP/1.1\r\nHost: a.test:81\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn dial_failure_is_failed_not_denied_and_proxy_answers_502() {
    // A port on 127.0.0.2 with nothing listening (bound, then released).
    let port = TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway(&[format!("api.test:{port}")], &["127.0.0.2/32"]);
    let (rec, back) = transparent(&gw, "api.test", port, &get("api.test"));
    assert_eq!(
        (rec.verdict, rec.reason),
        (Verdict::Failed, "failed:connect")
    );
    assert!(back.is_empty());
    let req = format!("CONNECT api.test:{port} HTTP/1.1\r\nHost: api.test:{port}\r\n\r\n");
    let (rec, back) = proxy(&gw, req.as_bytes());
    assert_eq!(
        (rec.verdict, rec.reason),
        (Verdict::Failed, "failed:connect")
    );
    let back = String::from_utf8(back).unwrap();
    assert!(back.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{back}");
    assert!(
        back.contains("X-Stockade-Reason: failed:connect\r\n"),
        "{back}"
    );
}
