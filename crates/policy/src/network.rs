//! The `[network]` section: syntax of names, patterns and CIDRs, and the rules that tie the
//! mode to the lists.
//!
//! The grammar is the egress gateway's (`stockade-gateway`: `rules.rs`, `addr.rs`) or stricter,
//! so every entry that validates here is one the gateway accepts: names must already be
//! lowercase and without a trailing dot (the gateway would normalise them), `allow` may not be a
//! whole top-level domain (`*.com`), and a CIDR needs its prefix length.

use std::net::IpAddr;

use crate::error::Issue;
use crate::model::{Network, NetworkMode};

/// One `allow` or `deny` entry: `name`, `*.name` or either with `:port`.
struct HostPattern {
    /// `*.` was written: names strictly below `name` match.
    wildcard: bool,
    /// The name without `*.` and port.
    name: String,
}

/// `v` (of `bits` bits) with everything after the first `prefix` bits cleared.
fn mask(v: u128, bits: u8, prefix: u8) -> u128 {
    let host = u32::from(bits.saturating_sub(prefix));
    if host >= 128 { 0 } else { (v >> host) << host }
}

/// Parse an `allow`/`deny` entry. Errors say what is wrong and how to write it.
fn parse_host_pattern(s: &str) -> Result<HostPattern, String> {
    let host = match s.split_once(':') {
        None => s,
        Some((h, p)) => {
            parse_port(s, p)?;
            h
        }
    };
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if host == "*" {
        return Err(format!(
            "{s:?}: a lone `*` matches every name; name a domain, e.g. \"*.pypi.org\""
        ));
    }
    if name.contains('*') {
        return Err(format!(
            "{s:?}: `*` may only be the whole leftmost label, as in \"*.pypi.org\""
        ));
    }
    name_syntax(s, name)?;
    Ok(HostPattern {
        wildcard,
        name: name.to_string(),
    })
}

fn parse_port(s: &str, p: &str) -> Result<u16, String> {
    let bad = || format!("{s:?}: port {p:?} is not a number from 1 to 65535");
    if p.is_empty() || p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad()),
    }
}

/// An exact name (no pattern, no port), checked as the gateway would normalise it.
pub(crate) fn parse_name(s: &str) -> Result<(), String> {
    if s.contains(['*', ':']) {
        return Err(format!("{s:?}: write an exact name without `*` or a port"));
    }
    name_syntax(s, s)
}

/// Whether the `allow`/`deny` entry `pattern` matches the exact name `name` on some port.
pub(crate) fn host_pattern_matches(pattern: &str, name: &str) -> bool {
    let Ok(p) = parse_host_pattern(pattern) else {
        return false;
    };
    if p.wildcard {
        name.strip_suffix(p.name.as_str())
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
    } else {
        name == p.name
    }
}

/// A DNS name as the gateway matches it: lowercase ASCII labels of 1-63 `[a-z0-9-]`, no
/// leading or trailing `-`, at most 253 characters, not an IP address.
fn name_syntax(s: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "{s:?}: the name is empty; write e.g. \"api.github.com\""
        ));
    }
    if name.len() > 253 {
        return Err(format!("{s:?}: the name is longer than 253 characters"));
    }
    if name.parse::<IpAddr>().is_ok() || name.starts_with('[') {
        return Err(format!(
            "{s:?} is an IP address; the gateway allows names only (allow_private admits \
             addresses a name resolves to)"
        ));
    }
    if !name.is_ascii() {
        return Err(format!(
            "{s:?}: the name is not ASCII; write an international name in its xn-- form"
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{s:?}: write the name in lowercase, {:?}",
            s.to_ascii_lowercase()
        ));
    }
    if let Some(stripped) = name.strip_suffix('.') {
        return Err(format!(
            "{s:?}: write the name without the trailing dot, {stripped:?}"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{s:?} is not a valid name: each dot-separated label needs 1-63 lowercase \
                 letters, digits or '-', not starting or ending with '-'"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{s:?}: the last label is all digits, which is not a domain; name the host"
        ));
    }
    Ok(())
}

/// Check an `allow_private` entry: `address/prefix`, host bits clear.
fn parse_cidr(s: &str) -> Result<(), String> {
    let Some((a, p)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} has no prefix length; write a CIDR such as \"10.1.2.3/32\" or \"fd00::/8\""
        ));
    };
    let addr: IpAddr = a.parse().map_err(|_| {
        format!("{s:?}: {a:?} is not an IPv4 or IPv6 address; write e.g. \"127.0.0.0/8\"")
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p.parse::<u8>() {
        Ok(n)
            if n <= max
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0')) =>
        {
            n
        }
        _ => {
            return Err(format!(
                "{s:?}: prefix length {p:?} is not a number from 0 to {max}"
            ));
        }
    };
    if let IpAddr::V6(v6) = addr
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        let hint = match prefix.checked_sub(96) {
            Some(p4) => format!(", \"{v4}/{p4}\""),
            None => String::new(),
        };
        return Err(format!(
            "{s:?} is an IPv4-mapped IPv6 range; write it in IPv4 form{hint}"
        ));
    }
    let net = match addr {
        IpAddr::V4(v) => {
            let m = mask(u128::from(u32::from(v)), 32, prefix);
            IpAddr::V4(u32::try_from(m).unwrap_or(0).into())
        }
        IpAddr::V6(v) => IpAddr::V6(mask(u128::from(v), 128, prefix).into()),
    };
    if net != addr {
        return Err(format!(
            "{s:?} has host bits set; write the network, \"{net}/{prefix}\" (or \"{addr}/{max}\" \
             for the one address)"
        ));
    }
    Ok(())
}

/// A `[network.hosts]` name: a name without wildcard or port.
fn hosts_name_problem(k: &str) -> Option<String> {
    if k.contains('*') {
        return Some(format!(
            "{k:?}: a static host name cannot be a pattern; name one host"
        ));
    }
    if k.contains(':') {
        return Some(format!(
            "{k:?}: a static host name has no port; write the name alone"
        ));
    }
    name_syntax(k, k).err()
}

/// A `[network.hosts]` address.
fn hosts_addr_problem(v: &str) -> Option<String> {
    match v.parse::<IpAddr>() {
        Err(_) => Some(format!(
            "{v:?} is not an IPv4 or IPv6 address; write e.g. \"127.0.0.1\""
        )),
        Ok(ip) if ip.is_unspecified() => Some(format!(
            "{v:?} is the unspecified address, not a host; write e.g. \"127.0.0.1\""
        )),
        Ok(_) => None,
    }
}

/// Every `[network]` rule.
pub(crate) fn issues(n: &Network, out: &mut Vec<Issue>) {
    list(&n.allow, "network.allow", out, |s| {
        let p = parse_host_pattern(s)?;
        if p.wildcard && !p.name.contains('.') {
            return Err(format!(
                "{s:?} allows a whole top-level domain; name the domain, e.g. \"*.pypi.org\""
            ));
        }
        Ok(())
    });
    list(&n.deny, "network.deny", out, |s| {
        parse_host_pattern(s).map(|_| ())
    });
    list(&n.allow_private, "network.allow_private", out, parse_cidr);
    for (k, v) in &n.hosts {
        let key = format!("network.hosts.{k}");
        if let Some(m) = hosts_name_problem(k) {
            out.push(Issue::new(&key, m));
        }
        if let Some(m) = hosts_addr_problem(v) {
            out.push(Issue::new(&key, m));
        }
    }
    match n.mode {
        NetworkMode::None => {
            for (key, set) in [
                ("network.allow", !n.allow.is_empty()),
                ("network.deny", !n.deny.is_empty()),
                ("network.allow_private", !n.allow_private.is_empty()),
                ("network.hosts", !n.hosts.is_empty()),
            ] {
                if set {
                    out.push(Issue::new(
                        key,
                        format!(
                            "network.mode is \"none\" (loopback only), so {key} has no effect; \
                             set network.mode = \"allowlist\" (--net allowlist) or remove it"
                        ),
                    ));
                }
            }
        }
        NetworkMode::Allowlist => {
            if n.allow.is_empty() {
                out.push(Issue::new(
                    "network.allow",
                    "network.mode is \"allowlist\" but network.allow is empty, so nothing is \
                     reachable; list the names the sandbox needs, e.g. allow = \
                     [\"api.github.com\"] (--allow-net), or set network.mode = \"none\"",
                ));
            }
        }
        NetworkMode::Open => {
            if !n.allow_open {
                out.push(Issue::new(
                    "network.mode",
                    "network mode open lets the sandbox reach any public host; set \
                     network.allow_open = true (or pass --allow-open-network) to accept that, \
                     or use mode = \"allowlist\"",
                ));
            }
        }
    }
}

/// Check each entry of a list; duplicates are errors too.
fn list(
    items: &[String],
    key: &str,
    out: &mut Vec<Issue>,
    check: impl Fn(&str) -> Result<(), String>,
) {
    for (i, s) in items.iter().enumerate() {
        let k = format!("{key}[{i}]");
        if let Err(m) = check(s) {
            out.push(Issue::new(k, m));
        } else if items[..i].contains(s) {
            out.push(Issue::new(
                k,
                format!("{s:?} is listed twice in {key}; keep one"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = parse_host_pattern("*.pypi.org").unwrap();
        assert!(p.wildcard && p.name == "pypi.org");
        let p = parse_host_pattern("example.com:8443").unwrap();
        assert!(!p.wildcard && p.name == "example.com");
        assert!(parse_host_pattern("a:65535").is_ok());
        for bad in [
            "",
            "*",
            "a.*.b",
            "*a.b",
            "a*.b",
            "**.b",
            "a:0",
            "a:65536",
            "a:",
            "a:+1",
            "a:b:c",
            "A.b",
            "a.b.",
            "-a.b",
            "a-.b",
            "a..b",
            "a_b.c",
            "é.fr",
            "1.2.3.4",
            "::1",
            "[::1]:443",
            "a.123",
            "a b",
        ] {
            assert!(parse_host_pattern(bad).is_err(), "{bad:?}");
        }
        let l63 = "a".repeat(63);
        assert!(parse_host_pattern(&l63).is_ok());
        assert!(parse_host_pattern(&"a".repeat(64)).is_err());
        let n253 = [l63.as_str(); 4].join(".")[..253].to_string();
        assert!(parse_host_pattern(&n253).is_ok());
        assert!(parse_host_pattern(&format!("{n253}b")).is_err());
    }

    #[test]
    fn cidrs() {
        for good in [
            "127.0.0.0/8",
            "0.0.0.0/0",
            "fd00::/8",
            "10.1.2.3/32",
            "::1/128",
            "::/0",
            "169.254.169.254/32",
        ] {
            assert_eq!(parse_cidr(good), Ok(()), "{good}");
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "x/8",
            "10.0.0.0/8/8",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cidr("10.1.2.3/8").unwrap_err(),
            "\"10.1.2.3/8\" has host bits set; write the network, \"10.0.0.0/8\" (or \
             \"10.1.2.3/32\" for the one address)"
        );
        assert!(
            parse_cidr("fd00::1/8")
                .unwrap_err()
                .contains("\"fd00::/8\"")
        );
        assert!(parse_cidr("10.128.0.0/9").is_ok());
        assert!(parse_cidr("10.64.0.0/9").is_err());
    }
}
