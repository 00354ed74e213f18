//! Gateway benchmark (issue 4): added latency per connection through `conn::Gateway` against a
//! direct loopback connection, and bulk throughput through it. All on 127.0.0.0/8.
//! Run: `cargo run --release -p stockade-gateway --example gateway_bench [CONNS] [MIB]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use stockade_gateway::addr::{AddrPolicy, Cidr};
use stockade_gateway::conn::Gateway;
use stockade_gateway::rules::Rules;

fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    port
}

/// Reads a request head; a `POST` body is drained to EOF; then a small reply.
fn serve(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.starts_with(b"POST") {
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

fn gateway(port: u16) -> u16 {
    let rules = Rules::new(&[format!("api.test:{port}")], &[]).unwrap();
    let addrs = AddrPolicy::new(vec![Cidr::parse("127.0.0.2/32").unwrap()]);
    let hosts: BTreeMap<String, IpAddr> =
        [("api.test".to_string(), "127.0.0.2".parse().unwrap())].into();
    let gw = Gateway::new(rules, addrs, hosts);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let gport = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let gw = gw.clone();
            std::thread::spawn(move || {
                let _ = gw.handle_transparent(s, "api.test", port);
            });
        }
    });
    gport
}

fn request(addr: (&str, u16), port: u16) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: api.test:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.ends_with(b"ok"));
    t.elapsed()
}

fn bulk(addr: (&str, u16), port: u16, mib: usize) -> f64 {
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: api.test:{port}\r\nContent-Length: {}\r\n\r\n",
        mib << 20
    )
    .unwrap();
    for _ in 0..mib {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    (mib as f64 / 1024.0) / t.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

fn main() {
    let mut args = std::env::args().skip(1);
    let conns: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2048);
    let port = upstream();
    let gport = gateway(port);
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..conns {
        direct.push(request(("127.0.0.2", port), port));
        through.push(request(("127.0.0.1", gport), port));
    }
    let (d50, d95) = (pct(&mut direct, 0.5), pct(&mut direct, 0.95));
    let (g50, g95) = (pct(&mut through, 0.5), pct(&mut through, 0.95));
    let bd = bulk(("127.0.0.2", port), port, mib);
    let bg = bulk(("127.0.0.1", gport), port, mib);
    println!("| path | connect+request p50 | p95 | bulk throughput ({mib} MiB) |");
    println!("|---|---|---|---|");
    println!("| direct loopback | {d50:.0} µs | {d95:.0} µs | {bd:.2} GiB/s |");
    println!("| through the gateway | {g50:.0} µs | {g95:.0} µs | {bg:.2} GiB/s |");
    println!(
        "| added by the gateway | {:.0} µs | {:.0} µs | {:.0}% of direct |",
        g50 - d50,
        g95 - d95,
        bg / bd * 100.0
    );
    println!("\n({conns} sequential connections each)");
}
