//! Domain patterns and names: the gateway's `Rules` grammar and matching, and the policy's
//! `[network]` checks that must never accept what the gateway refuses.

use std::collections::BTreeMap;

use stockade_gateway::rules::{Decision, Reason, Rules, normalize_name};
use stockade_policy::{NetworkMode, Policy};

/// Reads `data` as up to three lines: an allow/deny entry, a name asked about, and a port
/// (decimal; 443 when absent or not a number). Checks:
///
/// - `normalize_name` is idempotent and its output is in the grammar (lowercase `[a-z0-9-.]`,
///   at most 253 bytes, no trailing dot, the input up to case and one trailing dot);
/// - every entry the policy accepts in `allow`, `deny` or as a `[network.hosts]` name, the
///   gateway accepts too (the policy's grammar is the gateway's or stricter);
/// - a name that fails the grammar is never allowed, and port 0 never is;
/// - deny wins: with the entry in both lists, nothing is allowed, and what the entry allows
///   alone, `open` mode with the entry denied refuses as `denied:in_denylist`;
/// - `allowed_ports` and `decide_name` agree with `decide`;
/// - an exact entry allows its own name on 443; `*.x` allows `a.x` and never `x` itself.
pub fn domain_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let entry = parts.next().unwrap_or_default().to_string();
    let name = parts.next().unwrap_or_default().to_string();
    let port = parts
        .next()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(443);

    check_normalize(&entry);
    check_normalize(&name);
    check_policy_is_stricter(&entry, &name);

    let Ok(rules) = Rules::new(std::slice::from_ref(&entry), &[]) else {
        return;
    };
    let decision = rules.decide(&name, port);
    if decision == Decision::Allowed {
        assert!(
            normalize_name(&name).is_ok(),
            "{name:?} allowed but not a name"
        );
        assert_ne!(port, 0, "port 0 allowed");
    }
    if normalize_name(&name).is_err() {
        assert!(
            matches!(
                decision,
                Decision::Denied(Reason::BadName | Reason::IpLiteral)
            ),
            "{name:?} is not a name but got {decision:?}"
        );
    }
    let both = Rules::new(std::slice::from_ref(&entry), std::slice::from_ref(&entry));
    let Ok(both) = both else {
        panic!("{entry:?} parses as an allow entry but not as allow + deny");
    };
    assert_ne!(
        both.decide(&name, port),
        Decision::Allowed,
        "deny did not win"
    );
    let Ok(open) = Rules::open(std::slice::from_ref(&entry)) else {
        panic!("{entry:?} parses as an allow entry but not as a deny entry");
    };
    if decision == Decision::Allowed {
        assert_eq!(
            open.decide(&name, port),
            Decision::Denied(Reason::InDenylist),
            "{entry:?} allows ({name:?}, {port}) but does not deny it"
        );
    }
    let ports = rules.allowed_ports(&name);
    for &p in &ports {
        assert_eq!(
            rules.decide(&name, p),
            Decision::Allowed,
            "allowed_ports {p}"
        );
    }
    assert_eq!(
        rules.decide_name(&name) == Decision::Allowed,
        !ports.is_empty(),
        "decide_name disagrees with allowed_ports for {name:?}"
    );
    check_own_name(&rules, &entry);
}

fn check_normalize(s: &str) {
    let Ok(n) = normalize_name(s) else {
        return;
    };
    assert_eq!(
        normalize_name(&n).as_ref(),
        Ok(&n),
        "not idempotent on {s:?}"
    );
    assert!(n.len() <= 253 && !n.is_empty(), "{n:?}");
    assert!(!n.ends_with('.'), "{n:?}");
    assert!(
        n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{n:?} has a byte outside the grammar"
    );
    assert!(
        n.eq_ignore_ascii_case(s.strip_suffix('.').unwrap_or(s)),
        "{s:?} normalised to {n:?}"
    );
}

/// Whatever the policy accepts, the gateway must accept (issue keys are `network.allow[0]`,
/// `network.deny[0]`, `network.hosts.NAME`).
fn check_policy_is_stricter(entry: &str, name: &str) {
    let mut p = Policy::default();
    p.network.mode = NetworkMode::Allowlist;
    p.network.allow = vec![entry.to_string()];
    p.network.deny = vec![entry.to_string()];
    p.network.hosts = BTreeMap::from([(name.to_string(), "127.0.0.1".to_string())]);
    let errors = match p.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    let refused = |key: &str| errors.iter().any(|e| e.key.as_deref() == Some(key));
    if !refused("network.allow[0]") {
        assert!(
            Rules::new(&[entry.to_string()], &[]).is_ok(),
            "the policy accepts allow entry {entry:?}, the gateway refuses it"
        );
    }
    if !refused("network.deny[0]") {
        assert!(
            Rules::new(&[], &[entry.to_string()]).is_ok(),
            "the policy accepts deny entry {entry:?}, the gateway refuses it"
        );
    }
    if !refused(&format!("network.hosts.{name}")) {
        assert_eq!(
            normalize_name(name).as_deref(),
            Ok(name),
            "the policy accepts host name {name:?}, the gateway does not take it as is"
        );
    }
}

/// An exact entry without a port allows its own name on 443; `*.x` allows `a.x`, not `x`.
fn check_own_name(rules: &Rules, entry: &str) {
    if entry.contains(':') {
        return;
    }
    match entry.strip_prefix("*.") {
        Some(suffix) => {
            assert_ne!(
                rules.decide(suffix, 443),
                Decision::Allowed,
                "{entry:?} allows its bare suffix"
            );
            let below = format!("a.{suffix}");
            if below.strip_suffix('.').unwrap_or(&below).len() <= 253 {
                assert_eq!(
                    rules.decide(&below, 443),
                    Decision::Allowed,
                    "{entry:?} does not allow {below:?}"
                );
            }
        }
        None => assert_eq!(
            rules.decide(entry, 443),
            Decision::Allowed,
            "{entry:?} does not allow itself"
        ),
    }
}
