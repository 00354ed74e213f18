//! End-to-end tests of secret injection (issue 6): the sandbox holds a placeholder, the gateway
//! puts the real value into requests to the bound host only, and scrubs it from what comes back.
//!
//! The upstreams are HTTPS echo servers on 127.0.0.2/127.0.0.3 (HTTP/1.1 and HTTP/2, a test CA
//! that stockade trusts through SSL_CERT_FILE in its own environment), mapped to `api.test` and
//! `other.test`; a plain HTTP echo server on 127.0.0.4 is `plain.test`. Clients inside: curl
//! (HTTP/2 and HTTP/1.1), Python urllib and requests, Node's fetch. Nothing leaves 127.0.0.0/8.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Log = Arc<Mutex<Vec<String>>>;

struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "stockade secrets test CA");
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// What a request looked like to the server, one line per part; the response body too.
async fn echo(req: Request<Incoming>, log: Log) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
    log.lock().unwrap().push(text.clone());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// An HTTPS echo server for `name` on `ip` (ALPN h2 and http/1.1).
fn tls_echo(ca: &TestCa, ip: &str, name: &str) -> (u16, Log) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = leaf.signed_by(&key, &ca.issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let log: Log = Arc::default();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (acc, log) = (acceptor.clone(), log2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acc.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| echo(req, log.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    (port, log)
}

/// A plain HTTP/1.1 server that logs the raw bytes of each connection and answers once.
fn plain_echo(ip: &str) -> (u16, Log) {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let log = log2.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&got).into_owned());
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain",
                );
            });
        }
    });
    (port, log)
}

struct Run {
    out: Output,
    stdout: String,
    state: tempfile::TempDir,
    events: Vec<serde_json::Value>,
}

fn run(policy: &str, env: &[(&str, &str)], script: &str, ca_file: &Path) -> Run {
    let state = tempfile::Builder::new()
        .prefix("stockade-secrets-state-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let pol = ws.path().join("policy.toml");
    std::fs::write(&pol, policy).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_stockade"));
    c.arg("--state-dir")
        .arg(state.path())
        .arg("run")
        .arg("--policy")
        .arg(&pol)
        .arg("--workspace")
        .arg(ws.path())
        .args(["--timeout", "120s", "--", "bash", "-c", script])
        // Upstream TLS is verified against the operator's trust store: here, the test CA.
        .env("SSL_CERT_FILE", ca_file);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert_ne!(out.status.code(), Some(127), "{out:?}");
    let mut events = Vec::new();
    for d in std::fs::read_dir(state.path().join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let t = std::fs::read_to_string(d.path().join("events.jsonl")).unwrap_or_default();
        events.extend(t.lines().map(|l| serde_json::from_str(l).unwrap()));
    }
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        out,
        state,
        events,
    }
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Every file under `dir` (and its names) as one string, for leak checks.
fn tree_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push_str(&p.display().to_string());
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

fn policy(api: u16, other: u16, plain: u16, api_in: &str) -> String {
    format!(
        "[network]\nmode = \"allowlist\"\n\
         allow = [\"api.test:{api}\", \"other.test:{other}\", \"plain.test:{plain}\"]\n\
         allow_private = [\"127.0.0.2/32\", \"127.0.0.3/32\", \"127.0.0.4/32\"]\n\
         [network.hosts]\n\"api.test\" = \"127.0.0.2\"\n\"other.test\" = \"127.0.0.3\"\n\
         \"plain.test\" = \"127.0.0.4\"\n\
         [secrets.API_KEY]\nfrom_env = \"STOCKADE_TEST_API_KEY\"\nhosts = [\"api.test\"]\n\
         in = [{api_in}]\n\
         [secrets.OTHER_KEY]\nfrom_file = \"{{OTHER_FILE}}\"\nhosts = [\"other.test\"]\n"
    )
}

/// Inside: curl over HTTP/2 and HTTP/1.1, Python urllib (query) and requests, Node's fetch,
/// each sending $API_KEY to api.test; then everything the sandbox can read that is not a host
/// file it shares read-only: its environment, every /proc/*/environ and cmdline, /etc, /tmp,
/// HOME and the workspace.
const CLIENTS: &str = r#"
set -u
U="https://api.test:$API_PORT"
echo "== placeholder: $API_KEY"
echo "== curl h2"; curl -sS --http2 -H "Authorization: Bearer $API_KEY" "$U/h2"
echo "== curl h1"; curl -sS --http1.1 -H "X-Api-Key: $API_KEY" "$U/h1"
echo "== curl basic"; curl -sS -u "user:$API_KEY" "$U/basic"
echo "== urllib"; /usr/bin/python3 -c '
import os, urllib.request
print(urllib.request.urlopen(os.environ["U"] + "/q?key=" + os.environ["API_KEY"], timeout=20).read().decode())' 
echo "== requests"; /usr/bin/python3 -c '
import os, requests
print(requests.get(os.environ["U"] + "/r", headers={"Authorization": "Bearer " + os.environ["API_KEY"]}, timeout=20).text)'
echo "== node"; node -e '
fetch(process.env.U + "/n", {headers: {authorization: "Bearer " + process.env.API_KEY}}).then(r => r.text()).then(t => console.log(t), e => { console.log("node error", e); process.exit(3) })'
echo "== dump"
env
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do echo "-- $f"; tr '\0' '\n' < "$f" 2>&1; done
find /etc /tmp "$HOME" "$PWD" -type f -readable 2>/dev/null | while read -r f; do echo "-- $f"; cat "$f"; done
echo "== done"
"#;

#[test]
fn the_real_value_reaches_only_its_host_and_never_the_sandbox() {
    let ca = test_ca();
    let (api, api_log) = tls_echo(&ca, "127.0.0.2", "api.test");
    let (other, _other_log) = tls_echo(&ca, "127.0.0.3", "other.test");
    let (plain, _plain_log) = plain_echo("127.0.0.4");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_file = dir.path().join("other-key");
    let other_value = unique("OTHER-REAL-VALUE");
    std::fs::write(&other_file, format!("{other_value}\n")).unwrap();
    let value = unique("sk-live-REAL-VALUE");

    let pol = policy(api, other, plain, "\"header\", \"query\"")
        .replace("{OTHER_FILE}", other_file.to_str().unwrap());
    let script = format!("export API_PORT={api} U=https://api.test:{api}\n{CLIENTS}");
    let r = run(
        &pol,
        &[("STOCKADE_TEST_API_KEY", &value)],
        &script,
        &ca_file,
    );
    assert_eq!(
        r.out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        String::from_utf8_lossy(&r.out.stderr)
    );
    let placeholder = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("== placeholder: "))
        .unwrap()
        .to_string();
    assert!(
        placeholder.starts_with("STOCKADE_PLACEHOLDER_API_KEY_") && placeholder.len() == 61,
        "{placeholder}"
    );

    // The server saw the real value in every request, in the place each client put it.
    let seen = api_log.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    let find = |path: &str| {
        seen.iter()
            .find(|s| s.lines().next().is_some_and(|l| l.contains(path)))
            .unwrap_or_else(|| panic!("no request for {path}: {seen:#?}"))
            .clone()
    };
    assert!(
        find("/h2 ").contains("HTTP/2.0")
            && find("/h2").contains(&format!("authorization: Bearer {value}"))
    );
    assert!(
        find("/h1").contains("HTTP/1.1") && find("/h1").contains(&format!("x-api-key: {value}"))
    );
    let basic = base64_of(&format!("user:{value}"));
    assert!(
        find("/basic").contains(&format!("authorization: Basic {basic}")),
        "{}",
        find("/basic")
    );
    assert!(find("/q?key=").contains(&format!("/q?key={value}")));
    assert!(find("/r").contains(&format!("authorization: Bearer {value}")));
    assert!(find("/n").contains(&format!("authorization: Bearer {value}")));
    for s in &seen {
        assert!(
            !s.contains(&placeholder),
            "the placeholder reached the server: {s}"
        );
        assert!(s.contains("accept-encoding: identity"), "{s}");
    }

    // The sandbox read the echoes: the placeholder, never the value (scrubbed both in the
    // echoed headers and the Basic credentials' base64 is the server's own text).
    for section in [
        "== curl h2",
        "== curl h1",
        "== urllib",
        "== requests",
        "== node",
    ] {
        assert!(
            r.stdout.contains(section),
            "{section} missing:\n{}",
            r.stdout
        );
    }
    assert!(
        r.stdout
            .contains(&format!("authorization: Bearer {placeholder}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("== done"));
    for v in [&value, &other_value] {
        assert!(
            !r.stdout.contains(v.as_str()),
            "a real value reached the sandbox:\n{}",
            r.stdout
        );
        assert!(!String::from_utf8_lossy(&r.out.stderr).contains(v.as_str()));
        assert!(
            !tree_text(r.state.path()).contains(v.as_str()),
            "a real value is in the state dir"
        );
    }

    // Audit: used, by name and host only.
    let used: Vec<&serde_json::Value> = r
        .events
        .iter()
        .filter(|e| e["type"] == "secret.used")
        .collect();
    assert!(!used.is_empty(), "{:#?}", r.events);
    let total: u64 = used.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 6, "{used:#?}");
    for e in &used {
        assert_eq!(e["name"], "API_KEY");
        assert_eq!(e["host"], "api.test");
    }
    assert!(
        r.events.iter().all(|e| e["type"] != "secret.refused"),
        "{:#?}",
        r.events
    );
}

fn base64_of(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The placeholder on its way to another host (TLS, bound to another secret), in a place its
/// policy does not allow (the body), over plaintext HTTP, and in the path: each refused and
/// recorded as `secret.refused`; the same requests without it go through (control).
const MISUSE: &str = r#"
set -u
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; echo; }
echo "other: $(code -H "Authorization: Bearer $API_KEY" https://other.test:$OTHER_PORT/x)"
echo "other-control: $(code -H 'Authorization: Bearer nothing' https://other.test:$OTHER_PORT/x)"
echo "body: $(code --data "key=$API_KEY" https://api.test:$API_PORT/b)"
echo "body-control: $(code --data 'key=none' https://api.test:$API_PORT/b)"
echo "path: $(code https://api.test:$API_PORT/p/$API_KEY)"
echo "plain: $(code --noproxy '*' -H "X-Key: $API_KEY" http://plain.test:$PLAIN_PORT/x)"
echo "plain-control: $(code --noproxy '*' -H 'X-Key: none' http://plain.test:$PLAIN_PORT/x)"
"#;

#[test]
fn a_placeholder_sent_anywhere_else_is_refused_and_audited() {
    let ca = test_ca();
    let (api, api_log) = tls_echo(&ca, "127.0.0.2", "api.test");
    let (other, other_log) = tls_echo(&ca, "127.0.0.3", "other.test");
    let (plain, plain_log) = plain_echo("127.0.0.4");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_file = dir.path().join("other-key");
    std::fs::write(&other_file, "other-value\n").unwrap();
    let value = unique("sk-REAL");
    let pol = policy(api, other, plain, "\"header\"")
        .replace("{OTHER_FILE}", other_file.to_str().unwrap());
    let script = format!("export API_PORT={api} OTHER_PORT={other} PLAIN_PORT={plain}\n{MISUSE}");
    let r = run(
        &pol,
        &[("STOCKADE_TEST_API_KEY", &value)],
        &script,
        &ca_file,
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "other: 403",
            "other-control: 200",
            "body: 403",
            "body-control: 200",
            "path: 403",
            "plain: 000",
            "plain-control: 200",
        ],
        "stderr: {}",
        String::from_utf8_lossy(&r.out.stderr)
    );
    // Nothing carrying the placeholder (or the value) reached any server.
    for (name, log) in [
        ("api", &api_log),
        ("other", &other_log),
        ("plain", &plain_log),
    ] {
        for s in log.lock().unwrap().iter() {
            assert!(
                !s.contains("STOCKADE_PLACEHOLDER_API_KEY"),
                "{name} got {s}"
            );
            assert!(!s.contains(&value), "{name} got the value: {s}");
        }
    }
    let refused: Vec<(String, String, String)> = r
        .events
        .iter()
        .filter(|e| e["type"] == "secret.refused")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["destination"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("API_KEY", "other.test", "denied:secret_not_bound"),
        ("API_KEY", "api.test", "denied:secret_in_body"),
        ("API_KEY", "api.test", "denied:secret_in_path"),
        ("API_KEY", "plain.test", "denied:secret_not_bound"),
    ] {
        assert!(
            refused
                .iter()
                .any(|(n, d, r)| (n.as_str(), d.as_str(), r.as_str()) == want),
            "{want:?} not in {refused:?}"
        );
    }
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(!tree_text(r.state.path()).contains(&value));
}

#[test]
fn a_missing_source_or_an_unlisted_host_is_an_error_before_anything_runs() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_file = dir.path().join("other-key");
    std::fs::write(&other_file, "other-value\n").unwrap();
    let pol = policy(1443, 2443, 2080, "\"header\"")
        .replace("{OTHER_FILE}", other_file.to_str().unwrap());
    // STOCKADE_TEST_API_KEY not set: refused at start, naming the variable.
    let r = run(&pol, &[], "echo ran", &ca_file);
    let err = String::from_utf8_lossy(&r.out.stderr);
    assert_eq!(r.out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("secret API_KEY: the environment variable STOCKADE_TEST_API_KEY is not set"),
        "{err}"
    );
    assert!(!r.stdout.contains("ran"));
    // Empty file: refused too.
    std::fs::write(&other_file, "\n").unwrap();
    let r = run(
        &pol,
        &[("STOCKADE_TEST_API_KEY", "v")],
        "echo ran",
        &ca_file,
    );
    let err = String::from_utf8_lossy(&r.out.stderr);
    assert_eq!(r.out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("secret OTHER_KEY: the value is empty"),
        "{err}"
    );
    // A host outside the allowlist: a policy error at its line and column.
    let bad = pol.replace("hosts = [\"api.test\"]", "hosts = [\"api.example\"]");
    let r = run(
        &bad,
        &[("STOCKADE_TEST_API_KEY", "v")],
        "echo ran",
        &ca_file,
    );
    let err = String::from_utf8_lossy(&r.out.stderr);
    assert_eq!(r.out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("policy.toml:11:10: secrets.API_KEY.hosts[0]"),
        "{err}"
    );
    assert!(err.contains("--allow-net api.example"), "{err}");
}
