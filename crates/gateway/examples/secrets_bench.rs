//! Secret-injection benchmark (issue 6): what interception costs against a plain allowed TLS
//! tunnel. One rustls+hyper client talks to one HTTPS upstream (rustls, a test CA made by rcgen,
//! HTTP/1.1 keep-alive and HTTP/2, a small JSON answer) along these paths:
//!
//! - (a) directly;
//! - (b) through `conn::Gateway` (transparent mode, no interceptor): an end-to-end TLS tunnel
//!   checked by SNI;
//! - (c) through a `Gateway` with an `Interceptor` and a secret bound to the host: TLS ends in the
//!   gateway (the client trusts `Interceptor::ca_pem()`), the placeholder the request carries in
//!   `Authorization` is replaced by the real value, and the request goes on over TLS verified
//!   against the test CA. The upstream answers `"auth":"real"` only when it got the real value;
//!   the client checks every answer.
//! - (b′), (c′): (b) and (c) with `TCP_NODELAY` set on the sandbox-side socket before it is handed
//!   to the gateway (the supervisor hands it over as the agent accepted it: Nagle on).
//!
//! Measured for each path: new-connection latency (TCP connect + full TLS handshake + one GET,
//! the paths taking turns) and requests per second on one kept-alive connection (HTTP/1.1
//! sequential, HTTP/2 with concurrent streams), with the process's CPU time per request (client,
//! gateway and upstream all run in this process, so the difference between paths is the
//! gateway's work). Everything is on 127.0.0.0/8: the upstream on 127.0.0.2, the gateways on
//! 127.0.0.1.
//!
//! Run: `cargo run --release -p stockade-gateway --example secrets_bench -- [--conns N]
//! [--requests N] [--rounds N] [--streams N] [--smoke]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use stockade_gateway::addr::{AddrPolicy, Cidr};
use stockade_gateway::conn::{Gateway, Verdict};
use stockade_gateway::intercept::{Interceptor, SecretEvent};
use stockade_gateway::rules::Rules;
use stockade_gateway::secrets::{Places, Secret, SecretSet, placeholder};
use zeroize::Zeroizing;

const NAME: &str = "api.test";
const UPSTREAM_IP: &str = "127.0.0.2";
const REAL_VALUE: &[u8] = b"sk-bench-0123456789abcdefghijklmnopqrstuvwxyz";
const ANSWER_REAL: &[u8] = br#"{"id":"bench-1","object":"ping","ok":true,"auth":"real"}"#;
const ANSWER_FAKE: &[u8] = br#"{"id":"bench-1","object":"ping","ok":true,"auth":"fake"}"#;
/// A new connection this slow waited for a delayed ACK (40 ms on Linux) at least once.
const STALL: Duration = Duration::from_millis(30);
/// Requests on a fresh kept-alive connection before the clock starts.
const WARMUP: usize = 50;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// The upstream: HTTPS on 127.0.0.2, HTTP/1.1 and HTTP/2, a small JSON answer.

/// Requests the upstream answered, by what their `Authorization` held.
#[derive(Default)]
struct Seen {
    real: AtomicU64,
    fake: AtomicU64,
}

async fn answer(
    req: Request<Incoming>,
    want: Arc<HeaderValue>,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let real = req.headers().get(AUTHORIZATION) == Some(&*want);
    let body = if real {
        seen.real.fetch_add(1, Ordering::Relaxed);
        ANSWER_REAL
    } else {
        seen.fake.fetch_add(1, Ordering::Relaxed);
        ANSWER_FAKE
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// A test CA (its issuer and certificate) and an HTTPS server for [`NAME`] on [`UPSTREAM_IP`].
fn upstream(seen: Arc<Seen>) -> (u16, CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "stockade secrets bench CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![NAME.to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, NAME);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

    let mut auth = b"Bearer ".to_vec();
    auth.extend_from_slice(REAL_VALUE);
    let want = Arc::new(HeaderValue::from_bytes(&auth).unwrap());
    let l = TcpListener::bind((UPSTREAM_IP, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
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
                let _ = s.set_nodelay(true);
                let (acc, want, seen) = (acceptor.clone(), want.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acc.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, want.clone(), seen.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    (port, ca_cert.der().clone())
}

// ---------------------------------------------------------------------------------------------
// The gateways: a listener on 127.0.0.1, one thread per connection (as the supervisor runs them).

/// What the gateway's records said.
#[derive(Default)]
struct Records {
    connections: AtomicU64,
    not_allowed: AtomicU64,
    substituted: AtomicU64,
}

fn policy(port: u16) -> Gateway {
    let rules = Rules::new(&[format!("{NAME}:{port}")], &[]).unwrap();
    let addrs = AddrPolicy::new(vec![Cidr::parse(&format!("{UPSTREAM_IP}/32")).unwrap()]);
    let hosts: BTreeMap<String, IpAddr> = [(NAME.to_string(), UPSTREAM_IP.parse().unwrap())].into();
    Gateway::new(rules, addrs, hosts)
}

/// A listener handing each connection to `gw` on a thread of its own, with `TCP_NODELAY` set on
/// it first when `nodelay` (the supervisor hands it over as accepted: not set).
fn gateway(gw: Gateway, port: u16, nodelay: bool) -> (SocketAddr, Arc<Records>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let recs = Arc::new(Records::default());
    let recs2 = recs.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (gw, recs) = (gw.clone(), recs2.clone());
            if nodelay {
                s.set_nodelay(true).unwrap();
            }
            std::thread::spawn(move || {
                let rec = gw.handle_transparent(s, NAME, port);
                recs.connections.fetch_add(1, Ordering::Relaxed);
                if rec.verdict != Verdict::Allowed {
                    eprintln!("gateway: {} {}", rec.name, rec.reason);
                    recs.not_allowed.fetch_add(1, Ordering::Relaxed);
                }
                for e in &rec.secrets {
                    if let SecretEvent::Used { count, .. } = e {
                        recs.substituted.fetch_add(*count, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (addr, recs)
}

// ---------------------------------------------------------------------------------------------
// The client: rustls + hyper's connection API, full handshakes (no session resumption).

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

struct Target {
    label: &'static str,
    addr: SocketAddr,
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    /// What the answer must say the upstream got: `"real"` or `"fake"`.
    expect: &'static [u8],
}

fn client_config(ca: &CertificateDer<'static>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    // Every new connection is a full handshake, as a new process in a sandbox makes it.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

impl Target {
    fn new(
        label: &'static str,
        addr: SocketAddr,
        ca: &CertificateDer<'static>,
        expect: &'static [u8],
    ) -> Target {
        Target {
            label,
            addr,
            h1: client_config(ca, b"http/1.1"),
            h2: client_config(ca, b"h2"),
            expect,
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

async fn connect(t: &Target, proto: Proto) -> Conn {
    let tcp = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let cfg = match proto {
        Proto::H1 => t.h1.clone(),
        Proto::H2 => t.h2.clone(),
    };
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("{}: TLS: {e}", t.label));
    let io = TokioIo::new(tls);
    match proto {
        Proto::H1 => {
            let (s, c) = http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            Conn::H1(s)
        }
        Proto::H2 => {
            let (s, c) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(c);
            Conn::H2(s)
        }
    }
}

fn request(proto: Proto, auth: &HeaderValue) -> Request<Empty<Bytes>> {
    let b = match proto {
        Proto::H1 => Request::get("/v1/ping").header(HOST, NAME),
        Proto::H2 => Request::get(format!("https://{NAME}/v1/ping")),
    };
    b.header(AUTHORIZATION, auth.clone())
        .header(ACCEPT, "application/json")
        .body(Empty::new())
        .unwrap()
}

async fn check(resp: Response<Incoming>, t: &Target) {
    assert_eq!(resp.status(), StatusCode::OK, "{}", t.label);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], t.expect, "{}", t.label);
}

async fn h1_send(s: &mut http1::SendRequest<Empty<Bytes>>, t: &Target, auth: &HeaderValue) {
    s.ready().await.unwrap();
    let resp = s.send_request(request(Proto::H1, auth)).await.unwrap();
    check(resp, t).await;
}

async fn h2_send(s: &mut http2::SendRequest<Empty<Bytes>>, t: &Target, auth: &HeaderValue) {
    let resp = s.send_request(request(Proto::H2, auth)).await.unwrap();
    check(resp, t).await;
}

/// TCP connect, TLS handshake and one request on a new connection, timed; then it is closed.
async fn new_connection(t: &Target, proto: Proto, auth: &HeaderValue) -> Duration {
    let start = Instant::now();
    match connect(t, proto).await {
        Conn::H1(mut s) => h1_send(&mut s, t, auth).await,
        Conn::H2(mut s) => h2_send(&mut s, t, auth).await,
    }
    start.elapsed()
}

/// This process's CPU time (all threads, also those that ended).
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What one path did on kept-alive connections, summed over the rounds.
#[derive(Default)]
struct KeptAlive {
    h1_lat: Vec<Duration>,
    h1_wall: Duration,
    h1_cpu: Duration,
    h1_n: usize,
    h2_wall: Duration,
    h2_cpu: Duration,
    h2_n: usize,
}

/// `n` sequential HTTP/1.1 requests on one connection (after [`WARMUP`]).
async fn h1_keepalive(t: &Target, n: usize, auth: &HeaderValue, k: &mut KeptAlive) {
    let Conn::H1(mut s) = connect(t, Proto::H1).await else {
        unreachable!()
    };
    for _ in 0..WARMUP {
        h1_send(&mut s, t, auth).await;
    }
    let (wall, cpu) = (Instant::now(), cpu_time());
    for _ in 0..n {
        let r = Instant::now();
        h1_send(&mut s, t, auth).await;
        k.h1_lat.push(r.elapsed());
    }
    k.h1_wall += wall.elapsed();
    k.h1_cpu += cpu_time().saturating_sub(cpu);
    k.h1_n += n;
}

/// `n` HTTP/2 requests on one connection, `streams` at a time (after [`WARMUP`]).
async fn h2_keepalive(
    t: &Arc<Target>,
    n: usize,
    streams: usize,
    auth: &HeaderValue,
    k: &mut KeptAlive,
) {
    let Conn::H2(mut s) = connect(t, Proto::H2).await else {
        unreachable!()
    };
    for _ in 0..WARMUP {
        h2_send(&mut s, t, auth).await;
    }
    let (wall, cpu) = (Instant::now(), cpu_time());
    let per = n / streams;
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (mut s, t, auth) = (s.clone(), t.clone(), auth.clone());
            tokio::spawn(async move {
                for _ in 0..per {
                    h2_send(&mut s, &t, &auth).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    k.h2_wall += wall.elapsed();
    k.h2_cpu += cpu_time().saturating_sub(cpu);
    k.h2_n += per * streams;
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else {
        format!("{x:.0} µs")
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

struct Args {
    conns: usize,
    requests: usize,
    rounds: usize,
    streams: usize,
}

fn args() -> Args {
    let mut a = Args {
        conns: 1000,
        requests: 40_000,
        rounds: 5,
        streams: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .unwrap_or_else(|| panic!("{k} needs a positive number"))
        };
        match k.as_str() {
            "--conns" => a.conns = num(),
            "--requests" => a.requests = num(),
            "--rounds" => a.rounds = num(),
            "--streams" => a.streams = num(),
            "--smoke" => {
                a = Args {
                    conns: 20,
                    requests: 400,
                    rounds: 1,
                    streams: 16,
                };
            }
            _ => panic!(
                "usage: secrets_bench [--conns N] [--requests N] [--rounds N] [--streams N] [--smoke]"
            ),
        }
    }
    a
}

/// The comparisons printed under each table: (path, baseline, what).
const COMPARE: &[(usize, usize, &str)] = &[
    (C, B, "−"),
    (C, B, "÷"),
    (C, A, "÷"),
    (C_ND, B_ND, "−"),
    (C_ND, B_ND, "÷"),
    (C_ND, A, "÷"),
];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const B_ND: usize = 3;
const C_ND: usize = 4;
const SHORT: [&str; 5] = ["(a)", "(b)", "(c)", "(b′)", "(c′)"];

/// The comparison rows: `cell(path value, baseline value, op)` per column.
fn compare_rows(v: &[Vec<f64>], cell: &dyn Fn(usize, f64, f64, &str) -> String) {
    for &(x, base, op) in COMPARE {
        let label = if op == "−" {
            format!("added by interception, {} − {}", SHORT[x], SHORT[base])
        } else {
            format!("{} ÷ {}", SHORT[x], SHORT[base])
        };
        let cells: Vec<String> = (0..v[x].len())
            .map(|j| cell(j, v[x][j], v[base][j], op))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}

fn main() {
    let a = args();
    let started = Instant::now();
    let seen = Arc::new(Seen::default());
    let (port, test_ca) = upstream(seen.clone());

    // (c): the gateway with a secret bound to the host.
    let ph = placeholder("API_KEY", &[0x5a; 16]);
    let secret = Secret::new(
        "API_KEY",
        ph.clone(),
        Zeroizing::new(REAL_VALUE.to_vec()),
        vec![NAME.to_string()],
        Places {
            header: true,
            query: false,
            body: false,
        },
    )
    .unwrap();
    let mut up_roots = rustls::RootCertStore::empty();
    up_roots.add(test_ca.clone()).unwrap();
    let interceptor = Arc::new(
        Interceptor::new(
            Arc::new(SecretSet::new(vec![secret])),
            "bench",
            Arc::new(up_roots),
        )
        .unwrap(),
    );
    let sandbox_ca = CertificateDer::from_pem_slice(interceptor.ca_pem().as_bytes()).unwrap();
    let intercepting = policy(port).with_interceptor(interceptor);

    // (b): the plain gateway, a TLS tunnel checked by SNI. (b′), (c′): the same two with
    // TCP_NODELAY on the sandbox-side socket.
    let mut recs = Vec::new();
    let mut gw = |g: Gateway, nodelay: bool| {
        let (addr, r) = gateway(g, port, nodelay);
        recs.push(r.clone());
        (addr, r)
    };
    let (b_addr, _) = gw(policy(port), false);
    let (c_addr, c_recs) = gw(intercepting.clone(), false);
    let (b_nd_addr, _) = gw(policy(port), true);
    let (c_nd_addr, c_nd_recs) = gw(intercepting, true);

    let direct_addr: SocketAddr = (UPSTREAM_IP.parse::<IpAddr>().unwrap(), port).into();
    let targets: Vec<Arc<Target>> = [
        (
            "(a) direct to the upstream",
            direct_addr,
            &test_ca,
            ANSWER_FAKE,
        ),
        (
            "(b) gateway, plain TLS tunnel",
            b_addr,
            &test_ca,
            ANSWER_FAKE,
        ),
        (
            "(c) gateway, intercepting, secret injected",
            c_addr,
            &sandbox_ca,
            ANSWER_REAL,
        ),
        (
            "(b′) = (b), sandbox socket TCP_NODELAY",
            b_nd_addr,
            &test_ca,
            ANSWER_FAKE,
        ),
        (
            "(c′) = (c), sandbox socket TCP_NODELAY",
            c_nd_addr,
            &sandbox_ca,
            ANSWER_REAL,
        ),
    ]
    .into_iter()
    .map(|(label, addr, ca, expect)| Arc::new(Target::new(label, addr, ca, expect)))
    .collect();
    let auth = HeaderValue::from_str(&format!("Bearer {ph}")).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let n = targets.len();
    let (mut new_h1, mut new_h2) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut kept: Vec<KeptAlive> = (0..n).map(|_| KeptAlive::default()).collect();
    rt.block_on(async {
        // One of each first, unmeasured: every path works, and the leaf certificate is minted.
        for t in &targets {
            new_connection(t, Proto::H1, &auth).await;
            new_connection(t, Proto::H2, &auth).await;
        }
        for _ in 0..a.conns {
            for (i, t) in targets.iter().enumerate() {
                new_h1[i].push(new_connection(t, Proto::H1, &auth).await);
                new_h2[i].push(new_connection(t, Proto::H2, &auth).await);
            }
        }
        let per_round = (a.requests / a.rounds).max(a.streams);
        for _ in 0..a.rounds {
            for (i, t) in targets.iter().enumerate() {
                h1_keepalive(t, per_round, &auth, &mut kept[i]).await;
                h2_keepalive(t, per_round, a.streams, &auth, &mut kept[i]).await;
            }
        }
    });
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // Closes the connections still open; their records come when the gateway's threads end.
    drop(rt);
    std::thread::sleep(Duration::from_millis(300));

    println!(
        "New connection: TCP connect + full TLS handshake (no session resumption) + one `GET` with \
         a small JSON answer, then closed; {} per path and protocol, the paths taking turns. \
         (b) and (c) get the sandbox's socket as the supervisor hands it over today (Nagle's \
         algorithm on); (b′) and (c′) get it with `TCP_NODELAY` set.\n",
        a.conns
    );
    println!("| path | HTTP/1.1 p50 | p95 | p99 | HTTP/2 p50 | p95 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    let mut q = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let v = vec![
            pct(&mut new_h1[i], 0.5),
            pct(&mut new_h1[i], 0.95),
            pct(&mut new_h1[i], 0.99),
            pct(&mut new_h2[i], 0.5),
            pct(&mut new_h2[i], 0.95),
            pct(&mut new_h2[i], 0.99),
        ];
        let cells: Vec<String> = v.iter().map(|&x| us(x)).collect();
        println!("| {} | {} |", t.label, cells.join(" | "));
        q.push(v);
    }
    compare_rows(&q, &|_, x, b, op| {
        if op == "−" { us(x - b) } else { ratio(x, b) }
    });
    let stalled = |v: &[Duration]| {
        let n = v.iter().filter(|d| **d >= STALL).count();
        format!("{:.0}%", n as f64 * 100.0 / v.len() as f64)
    };
    let shares: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{} {} and {}",
                SHORT[i],
                stalled(&new_h1[i]),
                stalled(&new_h2[i])
            )
        })
        .collect();
    println!(
        "\nNew connections that took {} ms or more (HTTP/1.1 and HTTP/2): {}.",
        STALL.as_millis(),
        shares.join(", ")
    );

    println!(
        "\nOne kept-alive connection: {} requests per path and protocol in {} round(s), the paths \
         taking turns, each on a new connection after {WARMUP} unmeasured requests. HTTP/1.1: one \
         request at a time (with its latency); HTTP/2: {} streams at a time. CPU per request: \
         this process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`: client, gateway and upstream \
         together) over the requests, so a difference between paths is the gateway's work.\n",
        kept[0].h1_n, a.rounds, a.streams
    );
    println!(
        "| path | HTTP/1.1 req/s | per request p50 | p99 | CPU per request | HTTP/2 ({} streams) req/s | CPU per request |",
        a.streams
    );
    println!("|---|---|---|---|---|---|---|");
    let mut r = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let k = &mut kept[i];
        let v = vec![
            k.h1_n as f64 / k.h1_wall.as_secs_f64(),
            pct(&mut k.h1_lat, 0.5),
            pct(&mut k.h1_lat, 0.99),
            k.h1_cpu.as_secs_f64() * 1e6 / k.h1_n as f64,
            k.h2_n as f64 / k.h2_wall.as_secs_f64(),
            k.h2_cpu.as_secs_f64() * 1e6 / k.h2_n as f64,
        ];
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.0} | {} |",
            t.label,
            v[0],
            us(v[1]),
            us(v[2]),
            us(v[3]),
            v[4],
            us(v[5])
        );
        r.push(v);
    }
    compare_rows(&r, &|j, x, b, op| match (op, j) {
        ("−", 0 | 4) => format!("{:+.0}", x - b),
        ("−", _) => us(x - b),
        _ => ratio(x, b),
    });

    let (real, fake) = (
        seen.real.load(Ordering::Relaxed),
        seen.fake.load(Ordering::Relaxed),
    );
    let subst =
        c_recs.substituted.load(Ordering::Relaxed) + c_nd_recs.substituted.load(Ordering::Relaxed);
    let conns: u64 = recs
        .iter()
        .map(|r| r.connections.load(Ordering::Relaxed))
        .sum();
    let bad: u64 = recs
        .iter()
        .map(|r| r.not_allowed.load(Ordering::Relaxed))
        .sum();
    let load = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    println!(
        "\nChecked: the upstream got the real value in {real} requests (every one through (c) and \
         (c′)) and the placeholder in {fake} (through (a), (b) and (b′)); the intercepting \
         gateways recorded {subst} substitutions (`secret.used`); the gateways handled {conns} \
         connections, {bad} of them not allowed. Load average before/after: {} / {}. Run time \
         {:.0} s.",
        load(&load_before),
        load(&load_after),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        subst, real,
        "every request through (c) had its placeholder replaced"
    );
    assert_eq!(bad, 0);
}
