//! The sandbox side of the egress gateway (network mode `allowlist`): a DNS server on
//! 127.0.0.53:53 that asks the supervisor about every name, a per-name loopback address in
//! 127.1.0.0/16 with listeners on the name's allowed ports, and a proxy port on 127.0.0.1:3128.
//! Every accepted connection is handed, as the socket itself, to the supervisor's gateway; no
//! byte of it is read here. Unlisted names get NXDOMAIN, other query types per
//! `stockade_gateway::dns::reply_kind`.

use crate::protocol::{AgentMsg, write_frame, write_frame_with_fd};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use stockade_gateway::dns::{self, QType, Query, ReplyKind};

pub const DNS_ADDR: &str = "127.0.0.53:53";
pub const PROXY_ADDR: &str = "127.0.0.1:3128";
const TTL: u32 = 60;

pub struct Bridge {
    dns: UdpSocket,
    proxy: TcpListener,
    pending: HashMap<u64, (SocketAddr, Query)>,
    next_token: u64,
    names: HashMap<String, Ipv4Addr>,
    listeners: Vec<(TcpListener, String, u16)>,
    next_host: u32,
}

/// Lets the unprivileged agent bind ports 80/443 on its own loopback later. Must run while the
/// host's /proc is still mounted (it names the current network namespace's sysctl).
pub fn allow_low_ports() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
}

impl Bridge {
    /// Binds the DNS and proxy sockets (loopback must be up).
    pub fn bind() -> io::Result<Bridge> {
        let dns = UdpSocket::bind(DNS_ADDR)?;
        dns.set_nonblocking(true)?;
        let proxy = TcpListener::bind(PROXY_ADDR)?;
        proxy.set_nonblocking(true)?;
        Ok(Bridge {
            dns,
            proxy,
            pending: HashMap::new(),
            next_token: 1,
            names: HashMap::new(),
            listeners: Vec::new(),
            next_host: 1,
        })
    }

    pub fn fds(&self) -> Vec<RawFd> {
        let mut v = vec![self.dns.as_raw_fd(), self.proxy.as_raw_fd()];
        v.extend(self.listeners.iter().map(|(l, _, _)| l.as_raw_fd()));
        v
    }

    /// Handles whatever is ready on `fd`.
    pub fn ready(&mut self, fd: RawFd, ctrl: &mut UnixStream) {
        if fd == self.dns.as_raw_fd() {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = self.dns.recv_from(&mut buf) {
                let q = match dns::parse_query(&buf[..n]) {
                    Ok(q) => q,
                    Err(e) => {
                        // No reply (nothing to answer), but the attempt is written down.
                        let msg = AgentMsg::DnsMalformed {
                            code: e.code().to_string(),
                        };
                        let _ = write_frame(ctrl, &msg);
                        continue;
                    }
                };
                let token = self.next_token;
                self.next_token += 1;
                let qtype = match q.qtype {
                    QType::A => "A".to_string(),
                    QType::Aaaa => "AAAA".to_string(),
                    QType::Other(n) => format!("TYPE{n}"),
                };
                let msg = AgentMsg::DnsQuery {
                    token,
                    name: q.name.clone(),
                    qtype,
                };
                if write_frame(ctrl, &msg).is_ok() && self.pending.len() < 1024 {
                    self.pending.insert(token, (from, q));
                }
            }
        } else if fd == self.proxy.as_raw_fd() {
            while let Ok((s, _)) = self.proxy.accept() {
                let _ = write_frame_with_fd(ctrl, &AgentMsg::Proxy, s.as_raw_fd());
            }
        } else if let Some((l, name, port)) =
            self.listeners.iter().find(|(l, _, _)| l.as_raw_fd() == fd)
        {
            while let Ok((s, _)) = l.accept() {
                let msg = AgentMsg::Connect {
                    name: name.clone(),
                    port: *port,
                };
                let _ = write_frame_with_fd(ctrl, &msg, s.as_raw_fd());
            }
        }
    }

    /// The gateway's answer to query `token`.
    pub fn reply(&mut self, token: u64, allowed: bool, ports: &[u16]) {
        let Some((to, q)) = self.pending.remove(&token) else {
            return;
        };
        let bytes = match dns::reply_kind(q.qtype, allowed) {
            ReplyKind::Answer if q.qtype == QType::A => match self.address_for(&q.name, ports) {
                Some(ip) => dns::answer_a(&q, ip, TTL),
                None => dns::refused(&q),
            },
            // No IPv6 egress: an allowed name has no AAAA record.
            ReplyKind::Answer | ReplyKind::NoData => dns::nodata(&q),
            ReplyKind::NxDomain => dns::nxdomain(&q),
            ReplyKind::Refused => dns::refused(&q),
        };
        if let Ok(b) = bytes {
            let _ = self.dns.send_to(&b, to);
        }
    }

    /// The loopback address of `name`, creating it and its listeners on first use.
    fn address_for(&mut self, name: &str, ports: &[u16]) -> Option<Ipv4Addr> {
        if let Some(ip) = self.names.get(name) {
            return Some(*ip);
        }
        if self.next_host >= 0xfffe {
            return None;
        }
        let n = self.next_host;
        self.next_host += 1;
        let ip = Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8);
        for &port in ports {
            let l = TcpListener::bind((ip, port)).ok()?;
            l.set_nonblocking(true).ok()?;
            self.listeners.push((l, name.to_string(), port));
        }
        self.names.insert(name.to_string(), ip);
        Some(ip)
    }
}
