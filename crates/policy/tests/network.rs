//! The `[network]` section through the TOML front door: every rule with its exact message, and
//! positions for entries, hosts, unknown keys and type errors.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use stockade_policy::{NetworkMode, Policy, PolicyError};

fn errs(src: &str) -> Vec<PolicyError> {
    match Policy::from_toml(src, "policy.toml") {
        Ok(p) => panic!("expected an error for {src:?}, got {p:?}"),
        Err(e) => e.0,
    }
}

fn one(src: &str) -> PolicyError {
    let e = errs(src);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

fn ok(src: &str) -> Policy {
    Policy::from_toml(src, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// `[network]` in allowlist mode with `allow = [<entry>]`: the one error, as displayed.
fn allow_error(entry: &str) -> String {
    let src = format!("[network]\nmode = \"allowlist\"\nallow = [{entry:?}]\n");
    let e = one(&src);
    assert_eq!(e.key.as_deref(), Some("network.allow[0]"), "{e}");
    assert_eq!((e.line, e.column), (Some(3), Some(10)), "{e}");
    e.message
}

const ALLOWLIST: &str = "[network]\nmode = \"allowlist\"\nallow = [\"api.github.com\"]\n";

#[test]
fn the_issue_example_parses() {
    let p = ok("[network]\n\
                mode = \"allowlist\"\n\
                allow = [\"api.github.com\", \"*.pypi.org\", \"files.pythonhosted.org\", \"example.com:8443\"]\n\
                deny  = [\"uploads.github.com\"]\n\
                allow_private = []\n\
                [network.hosts]\n\
                \"api.test\" = \"127.0.0.1\"\n");
    let n = &p.network;
    assert_eq!(n.mode, NetworkMode::Allowlist);
    assert_eq!(n.allow.len(), 4);
    assert_eq!(n.deny, ["uploads.github.com"]);
    assert!(n.allow_private.is_empty() && !n.allow_open);
    assert_eq!(
        n.hosts,
        BTreeMap::from([("api.test".to_string(), "127.0.0.1".to_string())])
    );
}

#[test]
fn mode_none_with_lists_is_a_contradiction() {
    let e = one("[network]\nallow = [\"api.github.com\"]\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:2:9: network.allow: network.mode is \"none\" (loopback only), so \
         network.allow has no effect; set network.mode = \"allowlist\" (--net allowlist) or remove it"
    );
    let e = errs(
        "[network]\nmode = \"none\"\ndeny = [\"a.example\"]\nallow_private = [\"10.0.0.0/8\"]\n\
         [network.hosts]\n\"api.test\" = \"127.0.0.1\"\n",
    );
    let got: Vec<(Option<usize>, Option<usize>, Option<&str>)> = e
        .iter()
        .map(|e| (e.line, e.column, e.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(3), Some(8), Some("network.deny")),
            (Some(4), Some(17), Some("network.allow_private")),
            (Some(5), Some(1), Some("network.hosts")),
        ]
    );
    assert!(
        e.iter()
            .all(|e| e.message.contains("set network.mode = \"allowlist\""))
    );
    // Empty lists and allow_open = true are fine with mode none (nothing to contradict).
    ok("[network]\nallow = []\ndeny = []\nallow_private = []\nallow_open = true\nhosts = {}\n");
}

#[test]
fn open_needs_allow_open() {
    let e = one("[network]\nmode = \"open\"\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:2:8: network.mode: network mode open lets the sandbox reach any public host; \
         set network.allow_open = true (or pass --allow-open-network) to accept that, or use \
         mode = \"allowlist\""
    );
    let p = ok("[network]\nmode = \"open\"\nallow_open = true\ndeny = [\"*.example.com\"]\n");
    assert_eq!(p.network.mode, NetworkMode::Open);
}

#[test]
fn allowlist_needs_allow() {
    let e = one("[network]\nmode = \"allowlist\"\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:1:1: network.allow: network.mode is \"allowlist\" but network.allow is empty, \
         so nothing is reachable; list the names the sandbox needs, e.g. allow = \
         [\"api.github.com\"] (--allow-net), or set network.mode = \"none\""
    );
    // Pointed at the empty list when it is written.
    let e = one("[network]\nmode = \"allowlist\"\nallow = []\ndeny = [\"a.example\"]\n");
    assert_eq!((e.line, e.column), (Some(3), Some(9)));
    // A type error in allow is reported once, not also as "empty".
    let e = one("[network]\nmode = \"allowlist\"\nallow = [\"a.example\", 3]\n");
    assert_eq!(e.key.as_deref(), Some("network.allow"));
    assert_eq!((e.line, e.column), (Some(3), Some(23)));
    assert!(e.message.contains("invalid type: integer `3`"), "{e}");
    let e = one("[network]\nmode = \"allowlist\"\nallow = \"a.example\"\n");
    assert_eq!((e.line, e.column), (Some(3), Some(9)));
    assert!(e.message.contains("expected a sequence"), "{e}");
}

#[test]
fn allow_entries_that_parse() {
    let p = ok(
        "[network]\nmode = \"allowlist\"\nallow = [\"a\", \"x-1.b2.example\", \"*.pypi.org\", \
                \"example.com:1\", \"example.com:65535\", \"*.a.b:8443\", \"xn--bcher-kva.example\"]\n",
    );
    assert_eq!(p.network.allow.len(), 7);
    let l63 = "a".repeat(63);
    ok(&format!(
        "[network]\nmode = \"allowlist\"\nallow = [\"{l63}.example\"]\n"
    ));
    // 253 characters in total is the limit; the port does not count.
    let long = format!("{0}.{0}.{0}.{1}", l63, "a".repeat(61));
    assert_eq!(long.len(), 253);
    ok(&format!(
        "[network]\nmode = \"allowlist\"\nallow = [\"{long}:443\"]\n"
    ));
}

#[test]
fn allow_entry_messages() {
    assert_eq!(
        allow_error("Api.GitHub.com"),
        "\"Api.GitHub.com\": write the name in lowercase, \"api.github.com\""
    );
    assert_eq!(
        allow_error("a.*.b"),
        "\"a.*.b\": `*` may only be the whole leftmost label, as in \"*.pypi.org\""
    );
    assert_eq!(
        allow_error("*pypi.org"),
        "\"*pypi.org\": `*` may only be the whole leftmost label, as in \"*.pypi.org\""
    );
    assert_eq!(
        allow_error("*"),
        "\"*\": a lone `*` matches every name; name a domain, e.g. \"*.pypi.org\""
    );
    assert_eq!(
        allow_error("*.com"),
        "\"*.com\" allows a whole top-level domain; name the domain, e.g. \"*.pypi.org\""
    );
    assert_eq!(
        allow_error("example.com:0"),
        "\"example.com:0\": port \"0\" is not a number from 1 to 65535"
    );
    assert_eq!(
        allow_error("example.com:65536"),
        "\"example.com:65536\": port \"65536\" is not a number from 1 to 65535"
    );
    assert_eq!(
        allow_error("example.com:"),
        "\"example.com:\": port \"\" is not a number from 1 to 65535"
    );
    assert_eq!(
        allow_error("1.2.3.4"),
        "\"1.2.3.4\" is an IP address; the gateway allows names only (allow_private admits \
         addresses a name resolves to)"
    );
    assert_eq!(
        allow_error("example.com."),
        "\"example.com.\": write the name without the trailing dot, \"example.com\""
    );
    assert_eq!(
        allow_error("bücher.example"),
        "\"bücher.example\": the name is not ASCII; write an international name in its xn-- form"
    );
    assert_eq!(
        allow_error(""),
        "\"\": the name is empty; write e.g. \"api.github.com\""
    );
    let label = "\"-a.example\" is not a valid name: each dot-separated label needs 1-63 lowercase \
                 letters, digits or '-', not starting or ending with '-'";
    assert_eq!(allow_error("-a.example"), label);
    for bad in [
        "a-.example",
        "a..example",
        "a_b.example",
        "a b.example",
        ".example",
    ] {
        assert!(
            allow_error(bad).contains("is not a valid name: each dot-separated label"),
            "{bad}"
        );
    }
    assert!(allow_error(&format!("{}.example", "a".repeat(64))).contains("1-63"));
    assert_eq!(
        allow_error(&"a.".repeat(127)[..254]),
        format!(
            "{:?}: the name is longer than 253 characters",
            &"a.".repeat(127)[..254]
        )
    );
    assert_eq!(
        allow_error("example.com:0443"),
        "\"example.com:0443\": port \"0443\" is not a number from 1 to 65535"
    );
    assert!(allow_error("host.123").contains("the last label is all digits"));
    assert!(allow_error("::1").contains("port"));
    assert!(allow_error("a:b:c").contains("port \"b:c\""));
}

#[test]
fn deny_parses_like_allow_and_may_be_broad() {
    let p = ok(&format!(
        "{ALLOWLIST}deny = [\"uploads.github.com\", \"*.com\", \"api.github.com:8443\"]\n"
    ));
    assert_eq!(p.network.deny.len(), 3);
    let e = one(&format!(
        "{ALLOWLIST}deny = [\"ok.example\", \"UP.example\"]\n"
    ));
    assert_eq!(
        e.to_string(),
        "policy.toml:4:23: network.deny[1]: \"UP.example\": write the name in lowercase, \"up.example\""
    );
    let e = one(&format!("{ALLOWLIST}deny = [\"*\"]\n"));
    assert_eq!(e.key.as_deref(), Some("network.deny[0]"));
    // An entry in both lists is allowed: deny wins at the gateway.
    ok(&format!("{ALLOWLIST}deny = [\"api.github.com\"]\n"));
}

#[test]
fn duplicates_are_reported_at_the_second() {
    let e = one(
        "[network]\nmode = \"allowlist\"\nallow = [\"a.example\", \"b.example\", \"a.example\"]\n",
    );
    assert_eq!(
        e.to_string(),
        "policy.toml:3:36: network.allow[2]: \"a.example\" is listed twice in network.allow; keep one"
    );
    let e = one(&format!(
        "{ALLOWLIST}allow_private = [\"10.0.0.0/8\", \"10.0.0.0/8\"]\n"
    ));
    assert_eq!(e.key.as_deref(), Some("network.allow_private[1]"));
}

#[test]
fn allow_private_cidrs() {
    let p = ok(&format!(
        "{ALLOWLIST}allow_private = [\"127.0.0.0/8\", \"10.1.2.3/32\", \"fd00::/8\", \"::1/128\", \"0.0.0.0/0\"]\n"
    ));
    assert_eq!(p.network.allow_private.len(), 5);
    let cidr_error = |c: &str| {
        let e = one(&format!("{ALLOWLIST}allow_private = [{c:?}]\n"));
        assert_eq!(e.key.as_deref(), Some("network.allow_private[0]"), "{e}");
        assert_eq!((e.line, e.column), (Some(4), Some(18)), "{e}");
        e.message
    };
    assert_eq!(
        cidr_error("10.1.2.3/8"),
        "\"10.1.2.3/8\" has host bits set; write the network, \"10.0.0.0/8\" (or \"10.1.2.3/32\" \
         for the one address)"
    );
    assert_eq!(
        cidr_error("fd00::1/8"),
        "\"fd00::1/8\" has host bits set; write the network, \"fd00::/8\" (or \"fd00::1/128\" \
         for the one address)"
    );
    assert_eq!(
        cidr_error("10.1.2.3"),
        "\"10.1.2.3\" has no prefix length; write a CIDR such as \"10.1.2.3/32\" or \"fd00::/8\""
    );
    assert_eq!(
        cidr_error("10.0.0.0/33"),
        "\"10.0.0.0/33\": prefix length \"33\" is not a number from 0 to 32"
    );
    assert_eq!(
        cidr_error("fd00::/129"),
        "\"fd00::/129\": prefix length \"129\" is not a number from 0 to 128"
    );
    assert_eq!(
        cidr_error("10.0.0.0/08"),
        "\"10.0.0.0/08\": prefix length \"08\" is not a number from 0 to 32"
    );
    assert_eq!(
        cidr_error("localhost/8"),
        "\"localhost/8\": \"localhost\" is not an IPv4 or IPv6 address; write e.g. \"127.0.0.0/8\""
    );
    for bad in [
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0/8",
        "010.0.0.0/8",
        "10.0.0.0/8/8",
        "fe80::1%lo/64",
    ] {
        assert!(cidr_error(bad).contains(&format!("{bad:?}")), "{bad}");
    }
    assert_eq!(
        cidr_error("::ffff:10.0.0.0/104"),
        "\"::ffff:10.0.0.0/104\" is an IPv4-mapped IPv6 range; write it in IPv4 form, \
         \"10.0.0.0/8\""
    );
}

#[test]
fn hosts_entries() {
    let p = ok(&format!(
        "{ALLOWLIST}[network.hosts]\n\"api.test\" = \"127.0.0.1\"\n\"v6.test\" = \"::1\"\nplain = \"127.0.0.2\"\n"
    ));
    assert_eq!(p.network.hosts.len(), 3);
    assert_eq!(p.network.hosts["plain"], "127.0.0.2");
    // Inline form too.
    ok(&format!(
        "{ALLOWLIST}hosts = {{ \"api.test\" = \"127.0.0.1\" }}\n"
    ));

    let e = errs(&format!(
        "{ALLOWLIST}[network.hosts]\n\"api.test\" = \"127.0.0\"\n\"*.test\" = \"127.0.0.1\"\n\
         \"b.test:80\" = \"127.0.0.1\"\n\"Up.test\" = \"127.0.0.1\"\n\"z.test\" = \"0.0.0.0\"\n"
    ));
    let got: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "policy.toml:5:1: network.hosts.api.test: \"127.0.0\" is not an IPv4 or IPv6 address; \
             write e.g. \"127.0.0.1\"",
            "policy.toml:6:1: network.hosts.*.test: \"*.test\": a static host name cannot be a \
             pattern; name one host",
            "policy.toml:7:1: network.hosts.b.test:80: \"b.test:80\": a static host name has no \
             port; write the name alone",
            "policy.toml:8:1: network.hosts.Up.test: \"Up.test\": write the name in lowercase, \
             \"up.test\"",
            "policy.toml:9:1: network.hosts.z.test: \"0.0.0.0\" is the unspecified address, not a \
             host; write e.g. \"127.0.0.1\"",
        ]
    );
}

#[test]
fn hosts_values_that_are_not_strings_are_reported_at_the_value() {
    let e = errs(&format!(
        "{ALLOWLIST}[network.hosts]\n\"a.test\" = 127\n\"b.test\" = \"127.0.0.1\"\n\"c.test\" = [\"127.0.0.1\"]\n"
    ));
    let got: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "policy.toml:5:12: network.hosts.a.test: the address must be a string such as \
             \"127.0.0.1\", not integer",
            "policy.toml:7:12: network.hosts.c.test: the address must be a string such as \
             \"127.0.0.1\", not array",
        ]
    );
    let e = one(&format!("{ALLOWLIST}hosts = 3\n"));
    assert_eq!(e.key.as_deref(), Some("network.hosts"));
    assert_eq!((e.line, e.column), (Some(4), Some(9)));
}

#[test]
fn unknown_and_mistyped_network_keys() {
    let e = one(&format!("{ALLOWLIST}alow = [\"x.example\"]\n"));
    assert_eq!(
        e.to_string(),
        "policy.toml:4:1: network.alow: unknown key `alow` in [network]; valid keys are: mode, \
         allow, deny, allow_private, allow_open, hosts"
    );
    let e = one(&format!("{ALLOWLIST}allow_open = \"yes\"\n"));
    assert_eq!(e.key.as_deref(), Some("network.allow_open"));
    assert_eq!((e.line, e.column), (Some(4), Some(14)));
    assert!(e.message.contains("expected a boolean"), "{e}");
    let e = one("network = \"open\"\n");
    assert_eq!(e.key.as_deref(), Some("network"));
    assert!(e.message.contains("must be a table"), "{e}");
}

#[test]
fn validate_from_code_checks_network_too() {
    let mut p = Policy::default();
    p.network.mode = NetworkMode::Allowlist;
    p.network.allow = vec!["ok.example".into(), "*.x.*".into()];
    p.network.hosts.insert("h.test".into(), "nope".into());
    let e = p.validate().unwrap_err();
    let keys: Vec<&str> = e.0.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(keys, ["network.allow[1]", "network.hosts.h.test"]);
    assert!(e.0.iter().all(|e| e.line.is_none()));
}
