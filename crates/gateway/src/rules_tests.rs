use super::*;
use crate::testutil::Lcg;

fn rules(allow: &[&str], deny: &[&str]) -> Rules {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match Rules::new(&s(allow), &s(deny)) {
        Ok(r) => r,
        Err(e) => panic!("rules did not parse: {e}"),
    }
}

fn entry_err(entry: &str) -> NameError {
    match Rules::new(&[entry.to_string()], &[]) {
        Ok(_) => panic!("{entry:?} parsed"),
        Err(e) => {
            assert_eq!(
                (e.list, e.index, e.entry.as_str()),
                (ListKind::Allow, 0, entry)
            );
            e.problem
        }
    }
}

const A: Decision = Decision::Allowed;
fn denied(r: Reason) -> Decision {
    Decision::Denied(r)
}

#[test]
fn exact_name_on_default_ports_only() {
    let r = rules(&["api.github.com"], &[]);
    assert_eq!(r.decide("api.github.com", 443), A);
    assert_eq!(r.decide("api.github.com", 80), A);
    assert_eq!(
        r.decide("api.github.com", 8443),
        denied(Reason::NotInAllowlist)
    );
    assert_eq!(r.decide("github.com", 443), denied(Reason::NotInAllowlist));
    assert_eq!(
        r.decide("x.api.github.com", 443),
        denied(Reason::NotInAllowlist)
    );
    assert_eq!(
        r.decide("api.github.co", 443),
        denied(Reason::NotInAllowlist)
    );
}

#[test]
fn explicit_port_replaces_the_defaults() {
    let r = rules(&["example.com:8443"], &[]);
    assert_eq!(r.decide("example.com", 8443), A);
    assert_eq!(r.decide("example.com", 443), denied(Reason::NotInAllowlist));
    assert_eq!(r.decide("example.com", 80), denied(Reason::NotInAllowlist));
    assert_eq!(r.allowed_ports("example.com"), BTreeSet::from([8443]));
}

#[test]
fn wildcard_matches_one_or_more_labels_but_not_the_bare_suffix() {
    let r = rules(&["*.pypi.org"], &[]);
    assert_eq!(r.decide("files.pypi.org", 443), A);
    assert_eq!(r.decide("a.b.pypi.org", 80), A);
    assert_eq!(r.decide("pypi.org", 443), denied(Reason::NotInAllowlist));
    assert_eq!(r.decide("xpypi.org", 443), denied(Reason::NotInAllowlist));
    assert_eq!(
        r.decide("pypi.org.evil.com", 443),
        denied(Reason::NotInAllowlist)
    );
    let r = rules(&["*.pypi.org:8080"], &[]);
    assert_eq!(r.decide("a.pypi.org", 8080), A);
    assert_eq!(r.decide("a.pypi.org", 443), denied(Reason::NotInAllowlist));
}

#[test]
fn deny_wins_over_allow_and_a_portless_deny_covers_every_port() {
    let r = rules(
        &["*.github.com", "uploads.github.com:8443"],
        &["uploads.github.com"],
    );
    assert_eq!(r.decide("api.github.com", 443), A);
    assert_eq!(
        r.decide("uploads.github.com", 443),
        denied(Reason::InDenylist)
    );
    assert_eq!(
        r.decide("uploads.github.com", 8443),
        denied(Reason::InDenylist)
    );
    assert_eq!(
        r.decide_name("uploads.github.com"),
        denied(Reason::InDenylist)
    );
    assert!(r.allowed_ports("uploads.github.com").is_empty());

    let r = rules(&["example.com", "example.com:8443"], &["example.com:80"]);
    assert_eq!(r.decide("example.com", 80), denied(Reason::InDenylist));
    assert_eq!(r.decide("example.com", 443), A);
    assert_eq!(r.allowed_ports("example.com"), BTreeSet::from([443, 8443]));
    assert_eq!(r.decide_name("example.com"), A);

    let r = rules(&["*.example.com"], &["*.internal.example.com"]);
    assert_eq!(r.decide("a.example.com", 443), A);
    assert_eq!(
        r.decide("a.internal.example.com", 443),
        denied(Reason::InDenylist)
    );
    assert_eq!(r.decide("internal.example.com", 443), A);
}

#[test]
fn names_asked_about_are_normalized_and_checked() {
    let r = rules(&["API.GitHub.com."], &[]);
    assert_eq!(r.decide("api.github.com", 443), A);
    assert_eq!(r.decide("API.GITHUB.COM.", 443), A);
    assert_eq!(r.decide("api.github.com..", 443), denied(Reason::BadName));
    assert_eq!(r.decide("", 443), denied(Reason::BadName));
    assert_eq!(r.decide(".", 443), denied(Reason::BadName));
    assert_eq!(r.decide("api.github.com\0", 443), denied(Reason::BadName));
    assert_eq!(r.decide("api_x.github.com", 443), denied(Reason::BadName));
    assert_eq!(r.decide("*.github.com", 443), denied(Reason::BadName));
    assert_eq!(r.decide("аpi.github.com", 443), denied(Reason::BadName));
    assert_eq!(r.decide("1.2.3.4", 443), denied(Reason::IpLiteral));
    assert_eq!(r.decide("api.github.com", 0), denied(Reason::BadPort));
    assert_eq!(
        r.decide_name("nothing.example"),
        denied(Reason::NotInAllowlist)
    );
    assert_eq!(r.decide_name("bad name"), denied(Reason::BadName));
}

#[test]
fn reason_codes_are_stable() {
    let codes = [
        Reason::NotInAllowlist,
        Reason::InDenylist,
        Reason::BadName,
        Reason::IpLiteral,
        Reason::BadPort,
    ]
    .map(Reason::code);
    assert_eq!(
        codes,
        [
            "denied:not_in_allowlist",
            "denied:in_denylist",
            "denied:bad_name",
            "denied:ip_literal",
            "denied:bad_port"
        ]
    );
}

#[test]
fn label_and_name_length_boundaries() {
    let l63 = "a".repeat(63);
    assert_eq!(
        normalize_name(&format!("{l63}.com")),
        Ok(format!("{l63}.com"))
    );
    let l64 = "a".repeat(64);
    assert_eq!(
        entry_err(&format!("{l64}.com")),
        NameError::LabelTooLong(l64)
    );
    // 63+1+63+1+63+1+61 = 253
    let n253 = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
    assert_eq!(n253.len(), 253);
    assert_eq!(normalize_name(&n253), Ok(n253.clone()));
    assert_eq!(normalize_name(&format!("{n253}.")), Ok(n253.clone()));
    let n254 = format!("{n253}b");
    assert_eq!(entry_err(&n254), NameError::TooLong(254));
    assert_eq!(normalize_name("a"), Ok("a".to_string()));
    assert_eq!(normalize_name("a-b.c0"), Ok("a-b.c0".to_string()));
}

#[test]
fn bad_entries_say_why() {
    assert_eq!(entry_err(""), NameError::Empty);
    assert_eq!(entry_err("."), NameError::Empty);
    assert_eq!(entry_err("a..b"), NameError::EmptyLabel);
    assert_eq!(entry_err(".a.b"), NameError::EmptyLabel);
    assert_eq!(entry_err("bücher.de"), NameError::NonAscii);
    assert_eq!(entry_err("a_b.com"), NameError::BadChar('_'));
    assert_eq!(entry_err("a b.com"), NameError::BadChar(' '));
    assert_eq!(entry_err("-a.com"), NameError::HyphenAtEdge("-a".into()));
    assert_eq!(entry_err("a-.com"), NameError::HyphenAtEdge("a-".into()));
    assert_eq!(entry_err("*"), NameError::BareWildcard);
    assert_eq!(entry_err("*:443"), NameError::BareWildcard);
    assert_eq!(entry_err("*."), NameError::Empty);
    assert_eq!(entry_err("a.*.com"), NameError::MisplacedWildcard);
    assert_eq!(entry_err("*.*.com"), NameError::MisplacedWildcard);
    assert_eq!(entry_err("a*.com"), NameError::MisplacedWildcard);
    assert_eq!(entry_err("**.com"), NameError::MisplacedWildcard);
    assert_eq!(entry_err("1.2.3.4"), NameError::IpLiteral);
    assert_eq!(entry_err("1.2.3.4:443"), NameError::IpLiteral);
    assert_eq!(entry_err("::1"), NameError::ExtraColon);
    assert_eq!(entry_err("[::1]:443"), NameError::ExtraColon);
    assert_eq!(entry_err("a.com:"), NameError::EmptyPort);
    assert_eq!(entry_err("a.com:0"), NameError::BadPort("0".into()));
    assert_eq!(entry_err("a.com:65536"), NameError::BadPort("65536".into()));
    assert_eq!(entry_err("a.com:+80"), NameError::BadPort("+80".into()));
    assert_eq!(entry_err("a.com:443x"), NameError::BadPort("443x".into()));
    assert_eq!(
        entry_err("a.com:000443"),
        NameError::BadPort("000443".into())
    );
    let r = rules(&["a.com:65535", "b.com:1"], &[]);
    assert_eq!(r.decide("a.com", 65535), A);
    assert_eq!(r.decide("b.com", 1), A);
}

#[test]
fn errors_name_the_list_index_and_entry() {
    let allow = vec!["ok.com".to_string()];
    let deny = vec!["fine.com".to_string(), "bad..com".to_string()];
    let e = Rules::new(&allow, &deny).err();
    let e = e.unwrap_or_else(|| panic!("bad deny entry accepted"));
    assert_eq!((e.list, e.index), (ListKind::Deny, 1));
    assert_eq!(
        e.to_string(),
        "network.deny[1] \"bad..com\": the name has an empty label (two dots in a row, or a leading dot)"
    );
    let msg = entry_err("bücher.de").to_string();
    assert!(msg.contains("xn--"), "{msg}");
}

#[test]
fn empty_rules_deny_everything() {
    let r = Rules::default();
    assert_eq!(r.decide("example.com", 443), denied(Reason::NotInAllowlist));
    assert!(r.allowed_ports("example.com").is_empty());
}

#[test]
fn no_panic_on_generated_entries_and_names() {
    let alphabet = b"ab-.*:09Z_\xc3\xa9 ";
    let mut rng = Lcg(0x5eed_0001);
    for _ in 0..5000 {
        let bytes = rng.bytes(24, alphabet);
        let s = String::from_utf8_lossy(&bytes).into_owned();
        let parsed = Rules::new(std::slice::from_ref(&s), &[]);
        if let Ok(r) = &parsed {
            // Whatever parsed, a name built from it decides without panicking.
            let name = s.split(':').next().unwrap_or("").replace('*', "x");
            let _ = r.decide(&name, 443);
            let _ = r.allowed_ports(&name);
        }
        let _ = normalize_name(&s);
        let _ = rules(&["a.com"], &[]).decide(&s, rng.next_u32() as u16);
    }
}
