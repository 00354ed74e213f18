//! The address policy applied after the gateway resolves an allowed name (DNS rebinding).
//!
//! ## What it guarantees
//!
//! - [`classify`] puts every IPv4 and IPv6 address in exactly one [`AddrClass`]; anything that
//!   is not plainly a global unicast address is some other class than `Public`. IPv4-mapped
//!   (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses are classified
//!   by the IPv4 address they carry, so a private IPv4 address cannot hide inside IPv6.
//! - [`AddrPolicy::check`] lets `Public` through; `Loopback`, `Private`, `LinkLocal`, `Cgnat`,
//!   `Ula`, `Documentation` and `Reserved` only when an `allow_private` CIDR contains the address;
//!   `Metadata` only when a CIDR names that exact address (`/32` or `/128`), so allowing
//!   `169.254.0.0/16` does not open the cloud metadata service; `Unspecified` (which Linux dials
//!   as loopback), `Multicast` and `Broadcast` never.
//! - CIDRs match the address as dialled (IPv4-mapped addresses are first turned into IPv4).
//! - Stable reason codes, one per class: `denied:private_address`, `denied:metadata_address`, ...
//!
//! No I/O. Tested by the unit tests below: one address per range edge (inside and just outside),
//! the mapped forms, CIDR parsing errors, and the allow rules including the metadata exception.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// What kind of address this is, for the egress decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16 and fe80::/10 (metadata addresses excepted).
    LinkLocal,
    /// 100.64/10 (shared address space, RFC 6598).
    Cgnat,
    /// fc00::/7 unique local (metadata addresses excepted).
    Ula,
    /// Cloud instance metadata: 169.254.169.254, fd00:ec2::254, 100.100.100.200.
    Metadata,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Everything else that is not global unicast: 0/8, 192.0.0/24, 192.88.99/24, 198.18/15,
    /// 240/4, the IPv4-compatible ::/96, 100::/64, 2001::/23 (Teredo and IETF), fec0::/10, and
    /// every IPv6 address outside 2000::/3 not named above.
    Reserved,
}

impl AddrClass {
    /// The stable code for refusing this class (`Public` has none and is never refused).
    pub fn code(self) -> &'static str {
        match self {
            AddrClass::Public => "allowed",
            AddrClass::Loopback => "denied:loopback_address",
            AddrClass::Private => "denied:private_address",
            AddrClass::LinkLocal => "denied:link_local_address",
            AddrClass::Cgnat => "denied:cgnat_address",
            AddrClass::Ula => "denied:ula_address",
            AddrClass::Metadata => "denied:metadata_address",
            AddrClass::Unspecified => "denied:unspecified_address",
            AddrClass::Multicast => "denied:multicast_address",
            AddrClass::Broadcast => "denied:broadcast_address",
            AddrClass::Documentation | AddrClass::Reserved => "denied:reserved_address",
        }
    }
}

const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Classifies an address; see [`AddrClass`] for the ranges.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let table: [([u8; 4], u32, AddrClass); 17] = [
        ([0, 0, 0, 0], 32, AddrClass::Unspecified),
        ([255, 255, 255, 255], 32, AddrClass::Broadcast),
        ([0, 0, 0, 0], 8, AddrClass::Reserved),
        ([10, 0, 0, 0], 8, AddrClass::Private),
        ([100, 64, 0, 0], 10, AddrClass::Cgnat),
        ([127, 0, 0, 0], 8, AddrClass::Loopback),
        ([169, 254, 0, 0], 16, AddrClass::LinkLocal),
        ([172, 16, 0, 0], 12, AddrClass::Private),
        ([192, 0, 0, 0], 24, AddrClass::Reserved),
        ([192, 0, 2, 0], 24, AddrClass::Documentation),
        ([192, 88, 99, 0], 24, AddrClass::Reserved),
        ([192, 168, 0, 0], 16, AddrClass::Private),
        ([198, 18, 0, 0], 15, AddrClass::Reserved),
        ([198, 51, 100, 0], 24, AddrClass::Documentation),
        ([203, 0, 113, 0], 24, AddrClass::Documentation),
        ([224, 0, 0, 0], 4, AddrClass::Multicast),
        ([240, 0, 0, 0], 4, AddrClass::Reserved),
    ];
    if METADATA_V4.contains(&ip) {
        return AddrClass::Metadata;
    }
    table
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map_or(AddrClass::Public, |(_, _, class)| *class)
}

fn in_v6(ip: Ipv6Addr, net: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip == METADATA_V6 {
        return AddrClass::Metadata;
    }
    // NAT64 well-known prefix: the IPv4 address is the low 32 bits.
    if in_v6(ip, 0x0064_ff9b << 96, 96) {
        return classify_v4(Ipv4Addr::from(bits as u32));
    }
    // 6to4: the IPv4 address is bits 16..48.
    if in_v6(ip, 0x2002 << 112, 16) {
        return classify_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    let table: [(u128, u32, AddrClass); 11] = [
        (0, 128, AddrClass::Unspecified),
        (1, 128, AddrClass::Loopback),
        (0, 96, AddrClass::Reserved),
        (0x0100 << 112, 64, AddrClass::Reserved),
        (0x2001_0db8 << 96, 32, AddrClass::Documentation),
        (0x3fff << 112, 20, AddrClass::Documentation),
        (0x2001 << 112, 23, AddrClass::Reserved),
        (0xfc00 << 112, 7, AddrClass::Ula),
        (0xfe80 << 112, 10, AddrClass::LinkLocal),
        (0xfec0 << 112, 10, AddrClass::Reserved),
        (0xff00 << 112, 8, AddrClass::Multicast),
    ];
    if let Some((_, _, class)) = table.iter().find(|(net, len, _)| in_v6(ip, *net, *len)) {
        return *class;
    }
    if in_v6(ip, 0x2000 << 112, 3) {
        AddrClass::Public
    } else {
        AddrClass::Reserved
    }
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address (write e.g. 10.0.0.0/8 or fd00::/8)")]
    BadAddress(String),
    #[error("prefix length {0:?} is not a number from 0 to {1}")]
    BadPrefix(String, u8),
    #[error("{given} has bits set after the prefix; did you mean {suggested}?")]
    HostBitsSet { given: String, suggested: String },
    #[error("{0} is an IPv4-mapped IPv6 range: write it in IPv4 form")]
    Mapped(String),
}

/// An address range such as `10.0.0.0/8`; a bare address is a `/32` or `/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `addr/len` or a bare address. Bits after the prefix must be zero.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| CidrError::BadAddress(a.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                match l.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(CidrError::BadPrefix(l.to_string(), max)),
                }
            }
            Some(l) => return Err(CidrError::BadPrefix(l.to_string(), max)),
        };
        if matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
            return Err(CidrError::Mapped(s.to_string()));
        }
        let masked = Cidr { addr, len }.network();
        if masked != addr {
            return Err(CidrError::HostBitsSet {
                given: s.to_string(),
                suggested: format!("{masked}/{len}"),
            });
        }
        Ok(Cidr { addr, len })
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Does the range hold `ip`? Families never mix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => in_v4(a, net.octets(), u32::from(self.len)),
            (IpAddr::V6(net), IpAddr::V6(a)) => in_v6(a, u128::from(net), u32::from(self.len)),
            _ => false,
        }
    }

    /// Is this range exactly the one address `ip`?
    pub fn is_exactly(&self, ip: IpAddr) -> bool {
        self.addr == ip && self.len == if ip.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The post-resolution check: public addresses pass; others only as `allow_private` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddrPolicy {
    allow_private: Vec<Cidr>,
}

impl AddrPolicy {
    pub fn new(allow_private: Vec<Cidr>) -> AddrPolicy {
        AddrPolicy { allow_private }
    }

    /// `Ok` when the gateway may dial `ip`; otherwise the class's stable reason code.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let ip = ip.to_canonical();
        let class = classify(ip);
        let allowed = match class {
            AddrClass::Public => true,
            AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Broadcast => false,
            AddrClass::Metadata => self.allow_private.iter().any(|c| c.is_exactly(ip)),
            AddrClass::Loopback
            | AddrClass::Private
            | AddrClass::LinkLocal
            | AddrClass::Cgnat
            | AddrClass::Ula
            | AddrClass::Documentation
            | AddrClass::Reserved => self.allow_private.iter().any(|c| c.contains(ip)),
        };
        if allowed { Ok(()) } else { Err(class.code()) }
    }
}

#[cfg(test)]
#[path = "addr_tests.rs"]
mod tests;
