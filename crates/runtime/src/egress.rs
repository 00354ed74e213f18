//! The supervisor's side of network mode `allowlist`: the gateway built from the policy, the
//! answer to each DNS question of the agent, and one thread per connection the agent hands over.
//! Every answer and every connection is a `net.dns` / `net.connect` audit event.

use crate::audit::Emitter;
use std::collections::BTreeMap;
use std::net::{IpAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use stockade_audit::{Decision, EventKind};
use stockade_gateway::addr::{AddrPolicy, Cidr};
use stockade_gateway::conn::{Gateway, Verdict};
use stockade_gateway::intercept::SecretEvent;
use stockade_gateway::rules::{self, Rules};
use stockade_policy::Policy;

/// Connections served at once per sandbox; past it new ones are closed and recorded as refused,
/// so a sandbox cannot make the supervisor start threads without bound.
pub const MAX_CONNECTIONS: usize = 256;
/// `net.dns` events recorded per sandbox; past it decisions go on but only the count of the
/// suppressed ones is kept, so DNS queries cannot grow the host's audit log without bound.
pub const MAX_DNS_EVENTS: usize = 10_000;

pub struct Egress {
    rules: Rules,
    gateway: Arc<Gateway>,
    active: Arc<AtomicUsize>,
    dns_events: AtomicUsize,
}

/// Gives a connection slot back when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Egress {
    /// `interceptor`: the secret injector, when the policy has secrets.
    pub fn from_policy(
        p: &Policy,
        interceptor: Option<Arc<stockade_gateway::intercept::Interceptor>>,
    ) -> Result<Egress, String> {
        let n = &p.network;
        let rules = match n.mode {
            stockade_policy::NetworkMode::Open => Rules::open(&n.deny),
            _ => Rules::new(&n.allow, &n.deny),
        }
        .map_err(|e| e.to_string())?;
        let cidrs = n
            .allow_private
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("network.allow_private {c:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut hosts = BTreeMap::new();
        for (name, ip) in &n.hosts {
            let ip: IpAddr = ip
                .parse()
                .map_err(|e| format!("network.hosts {name:?}: {e}"))?;
            hosts.insert(name.to_ascii_lowercase(), ip);
        }
        let mut gateway = Gateway::new(rules.clone(), AddrPolicy::new(cidrs), hosts);
        if let Some(i) = interceptor {
            gateway = gateway.with_interceptor(i);
        }
        Ok(Egress {
            rules,
            gateway: Arc::new(gateway),
            active: Arc::default(),
            dns_events: AtomicUsize::new(0),
        })
    }

    /// Decides a DNS question: (allowed, ports) and records `net.dns`.
    pub fn dns(
        &self,
        name: &str,
        qtype: &str,
        audit: Option<&Emitter>,
        exec_id: &str,
    ) -> (bool, Vec<u16>) {
        let (allowed, reason) = match self.rules.decide_name(name) {
            rules::Decision::Allowed => (true, "allowed"),
            rules::Decision::Denied(r) => (false, r.code()),
        };
        let ports: Vec<u16> = if allowed {
            self.rules.allowed_ports(name).into_iter().collect()
        } else {
            Vec::new()
        };
        let recorded = self.dns_events.fetch_add(1, Ordering::SeqCst);
        if let Some(a) = audit.filter(|_| recorded < MAX_DNS_EVENTS) {
            a.emit(
                Some(exec_id),
                EventKind::NetDns {
                    name: name.to_string(),
                    qtype: qtype.to_string(),
                    decision: if allowed {
                        Decision::Allowed
                    } else {
                        Decision::Denied
                    },
                    reason: reason.to_string(),
                    answers: Vec::new(),
                },
            );
        }
        (allowed, ports)
    }

    /// Records a DNS message from inside that was not a question (no reply was sent): `net.dns`
    /// denied with the parser's `dns:*` code, under the same cap as the other DNS events.
    pub fn dns_malformed(&self, code: &str, audit: Option<&Emitter>, exec_id: &str) {
        let recorded = self.dns_events.fetch_add(1, Ordering::SeqCst);
        if let Some(a) = audit.filter(|_| recorded < MAX_DNS_EVENTS) {
            a.emit(
                Some(exec_id),
                EventKind::NetDns {
                    name: String::new(),
                    qtype: String::new(),
                    decision: Decision::Denied,
                    reason: code.to_string(),
                    answers: Vec::new(),
                },
            );
        }
    }

    /// Serves one connection the agent handed over, on its own thread.
    /// DNS questions answered but not recorded (past [`MAX_DNS_EVENTS`]).
    pub fn dns_suppressed(&self) -> usize {
        self.dns_events
            .load(Ordering::SeqCst)
            .saturating_sub(MAX_DNS_EVENTS)
    }

    pub fn serve(
        &self,
        fd: OwnedFd,
        target: Option<(String, u16)>,
        audit: Option<Emitter>,
        exec_id: String,
    ) {
        if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::SeqCst);
            drop(fd);
            if let Some(a) = audit {
                let (name, port) = target.unwrap_or_default();
                a.emit(
                    Some(&exec_id),
                    EventKind::NetConnect {
                        name,
                        port,
                        decision: Decision::Denied,
                        reason: "denied:too_many_connections".into(),
                        bytes_out: 0,
                        bytes_in: 0,
                        duration_ms: 0,
                    },
                );
            }
            return;
        }
        let slot = Slot(self.active.clone());
        let gw = self.gateway.clone();
        std::thread::spawn(move || {
            let _slot = slot;
            let client = TcpStream::from(fd);
            // No Nagle on the sandbox's side either (40 ms stalls of TLS handshakes otherwise).
            let _ = client.set_nodelay(true);
            let rec = match &target {
                Some((name, port)) => gw.handle_transparent(client, name, *port),
                None => gw.handle_proxy(client),
            };
            if let Some(a) = audit {
                for s in &rec.secrets {
                    a.emit(
                        Some(&exec_id),
                        match s {
                            SecretEvent::Used { name, host, count } => EventKind::SecretUsed {
                                name: name.clone(),
                                host: host.clone(),
                                count: *count,
                            },
                            SecretEvent::Refused {
                                name,
                                destination,
                                reason,
                            } => EventKind::SecretRefused {
                                name: name.clone(),
                                destination: destination.clone(),
                                reason: (*reason).to_string(),
                            },
                        },
                    );
                }
                a.emit(
                    Some(&exec_id),
                    EventKind::NetConnect {
                        name: rec.name.clone(),
                        port: rec.port,
                        decision: if rec.verdict == Verdict::Allowed {
                            Decision::Allowed
                        } else {
                            Decision::Denied
                        },
                        reason: rec.reason.to_string(),
                        bytes_out: rec.bytes_out,
                        bytes_in: rec.bytes_in,
                        duration_ms: rec.duration_ms,
                    },
                );
            }
        });
    }
}
