//! End-to-end tests of network mode `allowlist` (issue 4, first slice): DNS through the agent,
//! per-name loopback addresses, the proxy port, the host-side gateway, and the `net.*` events.
//! All traffic stays on 127.0.0.0/8: an HTTP server on 127.0.0.2 is the allowed upstream
//! (`api.test`), a canary on 127.0.0.3 (`evil.test`) counts connections and must count zero.
//!
//! Every case runs at every isolation level (issue 9): `container::<case>`, `gvisor::<case>` and
//! `microvm::<case>` (QEMU under TCG: `--allow-emulated`; about 5-12 s a run here). At the
//! stronger levels the sandbox's traffic goes agent → tunnel → `__vmm` → gateway; the policy,
//! the gateway and the expected answers are the same, and each run checks that
//! `sandbox.created` records the level actually used. One level: `cargo test --test egress gvisor::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_serve;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support_serve::http_server;

/// The isolation level a case runs at.
#[derive(Clone, Copy, Debug)]
enum Level {
    Container,
    Gvisor,
    Microvm,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Container => "container",
            Level::Gvisor => "gvisor",
            Level::Microvm => "microvm",
        }
    }

    /// The `stockade run` flags that select it (TCG is all this CI machine has for microVMs).
    fn flags(self) -> &'static [&'static str] {
        match self {
            Level::Container => &["--level", "container"],
            Level::Gvisor => &["--level", "gvisor"],
            Level::Microvm => &["--level", "microvm", "--allow-emulated"],
        }
    }
}

/// One `#[test]` per case and level, in modules named after the level.
macro_rules! at_every_level {
    ($($case:ident),* $(,)?) => {
        mod container {
            $(#[test] fn $case() { super::$case(super::Level::Container) })*
        }
        mod gvisor {
            $(#[test] fn $case() { super::$case(super::Level::Gvisor) })*
        }
        mod microvm {
            $(#[test] fn $case() { super::$case(super::Level::Microvm) })*
        }
    };
}

at_every_level!(
    an_allowed_name_works_through_the_proxy_and_without_it,
    an_unlisted_name_gets_nxdomain_and_reaches_nothing,
    a_hard_coded_ip_and_a_private_resolution_are_refused,
    a_host_header_naming_another_host_is_refused,
    without_the_allowlist_there_is_no_resolver_at_all,
    metadata_udp_ipv6_and_data_carrying_queries_have_no_way_out,
    tls_through_the_gateway_checks_the_sni_against_the_name,
    curl_works_with_and_without_the_proxy_and_a_literal_ip_does_not,
    open_mode_needs_its_flag_reaches_any_name_but_the_denied_and_is_recorded,
);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    events: Vec<serde_json::Value>,
}

fn run(level: Level, policy: &str, script: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let pol = dir.path().join("policy.toml");
    std::fs::write(&pol, policy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stockade"))
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg("--policy")
        .arg(&pol)
        .arg("--workspace")
        .arg(&ws)
        .args(level.flags())
        .arg("--")
        .args(["python3", "-c", script])
        .output()
        .expect("run stockade");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: events(&state),
    };
    // Whatever started ran at the level asked for (a refusal before the start has no events).
    for c in of_type(&r, "sandbox.created") {
        assert_eq!(
            c["enforced"]["level"],
            level.name(),
            "sandbox.created: {c}\nstderr {}",
            r.stderr
        );
    }
    r
}

fn events(state: &Path) -> Vec<serde_json::Value> {
    let Ok(rd) = std::fs::read_dir(state.join("sandboxes")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in rd.flatten() {
        let text = std::fs::read_to_string(d.path().join("events.jsonl")).unwrap_or_default();
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    out
}

fn of_type<'a>(r: &'a Run, ty: &str) -> Vec<&'a serde_json::Value> {
    r.events.iter().filter(|e| e["type"] == ty).collect()
}

fn policy(port: u16, allow_private: &str) -> String {
    format!(
        "[network]\nmode = \"allowlist\"\nallow = [\"api.test:{port}\"]\nallow_private = [{allow_private}]\n\
         [network.hosts]\n\"api.test\" = \"127.0.0.2\"\n\"evil.test\" = \"127.0.0.3\"\n"
    )
}

fn an_allowed_name_works_through_the_proxy_and_without_it(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    let (_cport, canary) = http_server("127.0.0.3");
    let script = format!(
        "import urllib.request, socket\n\
         print(urllib.request.urlopen('http://api.test:{port}/', timeout=10).read().decode())\n\
         s = socket.create_connection(('api.test', {port}), timeout=10)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: api.test:{port}\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         while True:\n    c = s.recv(4096)\n    if not c: break\n    data += c\n\
         print(data.decode().split('\\r\\n\\r\\n')[1])\n"
    );
    let r = run(level, &policy(port, "\"127.0.0.2/32\""), &script);
    assert_eq!(r.code, 0, "stdout {} stderr {}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "hello from 127.0.0.2\nhello from 127.0.0.2\n");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "one connection by proxy, one direct"
    );
    assert_eq!(canary.load(Ordering::SeqCst), 0);
    let connects = of_type(&r, "net.connect");
    assert_eq!(connects.len(), 2, "{:?}", r.events);
    for c in &connects {
        assert_eq!(c["name"], "api.test");
        assert_eq!(c["port"], port);
        assert_eq!(c["decision"], "allowed");
        assert_eq!(c["reason"], "allowed");
        assert!(c["bytes_in"].as_u64().unwrap() > 0 && c["bytes_out"].as_u64().unwrap() > 0);
    }
    assert!(
        of_type(&r, "net.dns")
            .iter()
            .any(|d| d["name"] == "api.test" && d["decision"] == "allowed")
    );
}

fn an_unlisted_name_gets_nxdomain_and_reaches_nothing(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    let (cport, canary) = http_server("127.0.0.3");
    let script = format!(
        "import socket, urllib.request\n\
         try:\n    socket.getaddrinfo('evil.test', {cport}); print('resolved')\n\
         except socket.gaierror as e: print('gaierror', e.errno)\n\
         try:\n    urllib.request.urlopen('http://evil.test:{cport}/', timeout=10); print('fetched')\n\
         except urllib.error.HTTPError as e: print('http', e.code, e.headers.get('X-Stockade-Reason'))\n"
    );
    let r = run(level, &policy(port, "\"127.0.0.2/32\""), &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // -2 is EAI_NONAME: NXDOMAIN. The proxy answers 403 with the reason.
    assert_eq!(r.stdout, "gaierror -2\nhttp 403 denied:not_in_allowlist\n");
    assert_eq!(
        canary.load(Ordering::SeqCst),
        0,
        "the canary must count zero"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(
        of_type(&r, "net.dns")
            .iter()
            .any(|d| d["name"] == "evil.test"
                && d["decision"] == "denied"
                && d["reason"] == "denied:not_in_allowlist")
    );
    assert!(
        of_type(&r, "net.connect")
            .iter()
            .any(|c| c["reason"] == "denied:not_in_allowlist")
    );
    // Control: the same name in the allowlist resolves and is fetched.
    let allowed = format!(
        "[network]\nmode = \"allowlist\"\nallow = [\"evil.test:{cport}\"]\nallow_private = [\"127.0.0.3/32\"]\n\
         [network.hosts]\n\"evil.test\" = \"127.0.0.3\"\n"
    );
    let c = run(
        level,
        &allowed,
        &format!(
            "import urllib.request\nprint(urllib.request.urlopen('http://evil.test:{cport}/', timeout=10).read().decode())\n"
        ),
    );
    assert_eq!(c.stdout, "hello from 127.0.0.3\n", "{}", c.stderr);
    assert_eq!(canary.load(Ordering::SeqCst), 1);
}

fn a_hard_coded_ip_and_a_private_resolution_are_refused(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    // The sandbox's 127.0.0.2 is its own loopback: nothing listens there.
    let script = format!(
        "import socket, urllib.request\n\
         try:\n    socket.create_connection(('127.0.0.2', {port}), timeout=5); print('connected')\n\
         except OSError as e: print('ip', e.errno)\n\
         try:\n    urllib.request.urlopen('http://api.test:{port}/', timeout=10); print('fetched')\n\
         except urllib.error.HTTPError as e: print('http', e.code, e.headers.get('X-Stockade-Reason'))\n"
    );
    // No allow_private: api.test resolves to a loopback address of the host, which is refused.
    let r = run(level, &policy(port, ""), &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "ip 111\nhttp 403 denied:loopback_address\n");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing may reach the server"
    );
    assert!(
        of_type(&r, "net.connect")
            .iter()
            .any(|c| c["reason"] == "denied:loopback_address")
    );
}

fn a_host_header_naming_another_host_is_refused(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('api.test', {port}), timeout=10)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n')\n\
         print(repr(s.recv(100)))\n"
    );
    let r = run(level, &policy(port, "\"127.0.0.2/32\""), &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "b''\n", "the gateway closes without relaying");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(
        of_type(&r, "net.connect")
            .iter()
            .any(|c| c["reason"] == "denied:host_mismatch")
    );
}

fn without_the_allowlist_there_is_no_resolver_at_all(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    let script = "import socket\ntry:\n    socket.getaddrinfo('api.test', 80); print('resolved')\nexcept socket.gaierror as e: print('gaierror')\n";
    let r = run(level, "", script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "gaierror\n");
    assert!(of_type(&r, "net.dns").is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let _ = port;
}

fn metadata_udp_ipv6_and_data_carrying_queries_have_no_way_out(level: Level) {
    // api.test is mapped to the cloud metadata address: the gateway refuses it before dialling
    // (nothing is sent: the refusal comes from the address class).
    let pol = "[network]\nmode = \"allowlist\"\nallow = [\"api.test:80\"]\n\
               [network.hosts]\n\"api.test\" = \"169.254.169.254\"\n";
    let script = "import socket, struct, urllib.request\n\
        try:\n    urllib.request.urlopen('http://api.test/', timeout=10); print('fetched')\n\
        except urllib.error.HTTPError as e: print('meta', e.code, e.headers.get('X-Stockade-Reason'))\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        try:\n    u.sendto(b'x', ('192.0.2.1', 53)); print('udp sent')\n\
        except OSError as e: print('udp', e.errno)\n\
        try:\n    socket.create_connection(('2001:db8::1', 443), timeout=5); print('v6 connected')\n\
        except OSError as e: print('v6', e.errno)\n\
        def q(name, qtype):\n\
        \x20   labels = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'\n\
        \x20   pkt = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + labels + struct.pack('>HH', qtype, 1)\n\
        \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n\
        \x20   s.sendto(pkt, ('127.0.0.53', 53)); r = s.recv(512)\n\
        \x20   return r[3] & 0xf, struct.unpack('>H', r[6:8])[0]\n\
        print('txt unlisted', q('exfil.evil.test', 16))\n\
        print('txt allowed', q('api.test', 16))\n\
        print('a unlisted', q('exfil.evil.test', 1))\n";
    let r = run(level, pol, script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // REFUSED = 5, NXDOMAIN = 3, NOERROR with 0 answers for a type that is not A/AAAA.
    // No route out: ENETUNREACH (101) from Linux (the host's kernel or the microVM's);
    // gVisor's netstack answers EHOSTUNREACH (113) for an address with no route.
    let unreach = match level {
        Level::Gvisor => 113,
        Level::Container | Level::Microvm => 101,
    };
    assert_eq!(
        r.stdout,
        format!(
            "meta 403 denied:metadata_address\nudp {unreach}\nv6 {unreach}\ntxt unlisted (5, 0)\ntxt allowed (0, 0)\na unlisted (3, 0)\n"
        )
    );
    assert!(
        of_type(&r, "net.connect")
            .iter()
            .any(|c| c["reason"] == "denied:metadata_address")
    );
    assert!(
        of_type(&r, "net.dns")
            .iter()
            .any(|d| d["name"] == "exfil.evil.test"
                && d["qtype"] == "TYPE16"
                && d["decision"] == "denied")
    );
}

/// A TLS server for `api.test` on 127.0.0.2 with a certificate from a fresh test CA; returns the
/// port, the CA in PEM and a connection counter.
fn tls_server() -> (u16, String, Arc<AtomicUsize>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "stockade test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["api.test".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "api.test");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap(),
    );
    let l = TcpListener::bind(("127.0.0.2", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let config = config.clone();
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::Stream::new(&mut conn, &mut s);
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nhello tls",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, ca_cert.pem(), count)
}

fn tls_through_the_gateway_checks_the_sni_against_the_name(level: Level) {
    let (port, ca, hits) = tls_server();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let pol = format!(
        "[network]\nmode = \"allowlist\"\nallow = [\"api.test:{port}\"]\nallow_private = [\"127.0.0.2/32\"]\n\
         [network.hosts]\n\"api.test\" = \"127.0.0.2\"\n\n[[filesystem.mounts]]\nhost = \"{}\"\npath = \"/ca\"\n",
        dir.path().display()
    );
    let script = format!(
        "import ssl, socket, urllib.request\n\
         ctx = ssl.create_default_context(cafile='/ca/ca.pem')\n\
         print(urllib.request.urlopen('https://api.test:{port}/', context=ctx, timeout=10).read().decode())\n\
         raw = socket.create_connection(('api.test', {port}), timeout=10)\n\
         t = ctx.wrap_socket(raw, server_hostname='api.test')\n\
         t.sendall(b'GET / HTTP/1.1\\r\\nHost: api.test\\r\\n\\r\\n')\n\
         print(t.recv(100).split(b'\\r\\n\\r\\n')[1].decode())\n\
         raw = socket.create_connection(('api.test', {port}), timeout=10)\n\
         bad = ssl.create_default_context(); bad.check_hostname = False; bad.verify_mode = ssl.CERT_NONE\n\
         try:\n    bad.wrap_socket(raw, server_hostname='evil.test'); print('handshake')\n\
         except OSError as e: print('fronting refused')\n"
    );
    let r = run(level, &pol, &script);
    assert_eq!(r.code, 0, "stdout {} stderr {}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "hello tls\nhello tls\nfronting refused\n");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the mismatched SNI must not reach the server"
    );
    let reasons: Vec<_> = of_type(&r, "net.connect")
        .iter()
        .map(|c| c["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.contains(&"denied:sni_mismatch".to_string()),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| *r == "allowed").count(),
        2,
        "{reasons:?}"
    );
}

fn curl_works_with_and_without_the_proxy_and_a_literal_ip_does_not(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    // curl run from python so the probe reports each exit status on its own line.
    let script = format!(
        "import subprocess\n\
         def c(*a):\n    r = subprocess.run(['curl', '-sS', '--max-time', '10', *a], capture_output=True, text=True)\n    return r.returncode, r.stdout\n\
         print(c('http://api.test:{port}/'))\n\
         print(c('--noproxy', '*', 'http://api.test:{port}/'))\n\
         print(c('--noproxy', '*', 'https://1.2.3.4/')[0])\n\
         print(c('-f', 'http://1.2.3.4:{port}/')[0])\n"
    );
    let r = run(level, &policy(port, "\"127.0.0.2/32\""), &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // 7: could not connect (a literal address has no route and no listener inside);
    // 22: through the proxy the literal address gets a 403 (curl -f).
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "(0, 'hello from 127.0.0.2')", "{}", r.stdout);
    assert_eq!(lines[1], "(0, 'hello from 127.0.0.2')", "{}", r.stdout);
    assert_eq!(
        lines[2], "7",
        "a literal IP without the proxy must not connect: {}",
        r.stdout
    );
    assert_eq!(lines[3], "22", "{}", r.stdout);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(
        of_type(&r, "net.connect")
            .iter()
            .any(|c| c["reason"] == "denied:ip_literal"),
        "{:?}",
        r.events
    );
}

fn open_mode_needs_its_flag_reaches_any_name_but_the_denied_and_is_recorded(level: Level) {
    let (port, hits) = http_server("127.0.0.2");
    let pol = "[network]\nmode = \"open\"\nallow_open = true\ndeny = [\"blocked.test\"]\n\
               allow_private = [\"127.0.0.2/32\"]\n[network.hosts]\n\"whatever.test\" = \"127.0.0.2\"\n\
               \"blocked.test\" = \"127.0.0.2\"\n";
    let script = format!(
        "import urllib.request\n\
         print(urllib.request.urlopen('http://whatever.test:{port}/', timeout=10).read().decode())\n\
         try:\n    urllib.request.urlopen('http://blocked.test:{port}/', timeout=10); print('fetched')\n\
         except urllib.error.HTTPError as e: print('http', e.code, e.headers.get('X-Stockade-Reason'))\n"
    );
    let r = run(level, pol, &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "hello from 127.0.0.2\nhttp 403 denied:in_denylist\n"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(
        r.stderr.contains("weaker isolation: network open"),
        "{}",
        r.stderr
    );
    let created = of_type(&r, "sandbox.created");
    assert!(
        created[0]["enforced"]["weakenings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("network open")),
        "{:?}",
        created
    );
    // Control: without allow_open the same policy is refused before anything starts.
    let refused = run(
        level,
        &pol.replace("allow_open = true\n", ""),
        "print('ran')",
    );
    assert_eq!(refused.code, 125);
    assert!(refused.stderr.contains("allow_open"), "{}", refused.stderr);
    assert!(refused.events.is_empty());
}
