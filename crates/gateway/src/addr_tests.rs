use super::*;

fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn cidr(s: &str) -> Cidr {
    match Cidr::parse(s) {
        Ok(c) => c,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn ipv4_ranges_at_their_edges() {
    use AddrClass::*;
    let cases = [
        ("0.0.0.0", Unspecified),
        ("0.0.0.1", Reserved),
        ("0.255.255.255", Reserved),
        ("1.0.0.0", Public),
        ("8.8.8.8", Public),
        ("9.255.255.255", Public),
        ("10.0.0.0", Private),
        ("10.255.255.255", Private),
        ("11.0.0.0", Public),
        ("100.63.255.255", Public),
        ("100.64.0.0", Cgnat),
        ("100.127.255.255", Cgnat),
        ("100.128.0.0", Public),
        ("100.100.100.200", Metadata),
        ("126.255.255.255", Public),
        ("127.0.0.1", Loopback),
        ("127.255.255.254", Loopback),
        ("169.253.255.255", Public),
        ("169.254.0.1", LinkLocal),
        ("169.254.169.254", Metadata),
        ("169.254.169.253", LinkLocal),
        ("169.255.0.0", Public),
        ("172.15.255.255", Public),
        ("172.16.0.0", Private),
        ("172.31.255.255", Private),
        ("172.32.0.0", Public),
        ("192.0.0.8", Reserved),
        ("192.0.2.1", Documentation),
        ("192.88.99.1", Reserved),
        ("192.167.255.255", Public),
        ("192.168.0.0", Private),
        ("192.168.255.255", Private),
        ("192.169.0.0", Public),
        ("198.17.255.255", Public),
        ("198.18.0.0", Reserved),
        ("198.19.255.255", Reserved),
        ("198.20.0.0", Public),
        ("198.51.100.7", Documentation),
        ("203.0.113.9", Documentation),
        ("223.255.255.255", Public),
        ("224.0.0.1", Multicast),
        ("239.255.255.255", Multicast),
        ("240.0.0.1", Reserved),
        ("255.255.255.254", Reserved),
        ("255.255.255.255", Broadcast),
    ];
    for (a, want) in cases {
        assert_eq!(classify(ip(a)), want, "{a}");
    }
}

#[test]
fn ipv6_ranges_and_embedded_ipv4() {
    use AddrClass::*;
    let cases = [
        ("::", Unspecified),
        ("::1", Loopback),
        ("::2", Reserved),
        ("::ffff:10.1.2.3", Private),
        ("::ffff:127.0.0.1", Loopback),
        ("::ffff:169.254.169.254", Metadata),
        ("::ffff:8.8.8.8", Public),
        ("::10.1.2.3", Reserved),
        ("64:ff9b::10.0.0.1", Private),
        ("64:ff9b::8.8.8.8", Public),
        ("64:ff9b::a9fe:a9fe", Metadata),
        ("2002:0a00:0001::1", Private),
        ("2002:0808:0808::1", Public),
        ("100::1", Reserved),
        ("2001::1", Reserved),
        ("2001:1ff:ffff::1", Reserved),
        ("2001:200::1", Public),
        ("2001:db8::1", Documentation),
        ("3fff::1", Documentation),
        ("3fff:1000::1", Public),
        ("2606:4700::1111", Public),
        ("fc00::1", Ula),
        ("fdff:ffff::1", Ula),
        ("fd00:ec2::254", Metadata),
        ("fd00:ec2::253", Ula),
        ("fe80::1", LinkLocal),
        ("febf::1", LinkLocal),
        ("fec0::1", Reserved),
        ("ff02::1", Multicast),
        ("4000::1", Reserved),
        ("1fff::1", Reserved),
    ];
    for (a, want) in cases {
        assert_eq!(classify(ip(a)), want, "{a}");
    }
}

#[test]
fn cidr_parsing_and_errors() {
    assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
    assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
    assert_eq!(cidr("::1").to_string(), "::1/128");
    assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
    assert_eq!(
        Cidr::parse("10.0.0.1/8"),
        Err(CidrError::HostBitsSet {
            given: "10.0.0.1/8".into(),
            suggested: "10.0.0.0/8".into()
        })
    );
    assert_eq!(
        Cidr::parse("10.0.0.0/33"),
        Err(CidrError::BadPrefix("33".into(), 32))
    );
    assert_eq!(
        Cidr::parse("::/129"),
        Err(CidrError::BadPrefix("129".into(), 128))
    );
    assert_eq!(
        Cidr::parse("10.0.0.0/"),
        Err(CidrError::BadPrefix("".into(), 32))
    );
    assert_eq!(
        Cidr::parse("10.0.0.0/+8"),
        Err(CidrError::BadPrefix("+8".into(), 32))
    );
    assert_eq!(
        Cidr::parse("10.0.0.0/8/8"),
        Err(CidrError::BadPrefix("8/8".into(), 32))
    );
    assert_eq!(
        Cidr::parse("10.0.0/8"),
        Err(CidrError::BadAddress("10.0.0".into()))
    );
    assert_eq!(
        Cidr::parse("example.com"),
        Err(CidrError::BadAddress("example.com".into()))
    );
    assert_eq!(Cidr::parse(""), Err(CidrError::BadAddress("".into())));
    assert_eq!(
        Cidr::parse("::ffff:10.0.0.0/104"),
        Err(CidrError::Mapped("::ffff:10.0.0.0/104".into()))
    );
    let msg = Cidr::parse("10.0.0.1/8")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        msg,
        "10.0.0.1/8 has bits set after the prefix; did you mean 10.0.0.0/8?"
    );
}

#[test]
fn cidr_contains_at_edges_and_never_across_families() {
    let c = cidr("172.16.0.0/12");
    assert!(c.contains(ip("172.16.0.0")));
    assert!(c.contains(ip("172.31.255.255")));
    assert!(!c.contains(ip("172.32.0.0")));
    assert!(!c.contains(ip("::ffff:172.16.0.1")));
    assert!(cidr("0.0.0.0/0").contains(ip("1.2.3.4")));
    assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
    assert!(cidr("::/0").contains(ip("::1")));
    assert!(cidr("127.0.0.2").contains(ip("127.0.0.2")));
    assert!(!cidr("127.0.0.2").contains(ip("127.0.0.1")));
}

#[test]
fn policy_refuses_non_public_unless_named() {
    let none = AddrPolicy::default();
    assert_eq!(none.check(ip("8.8.8.8")), Ok(()));
    assert_eq!(none.check(ip("2606:4700::1111")), Ok(()));
    assert_eq!(none.check(ip("10.0.0.1")), Err("denied:private_address"));
    assert_eq!(
        none.check(ip("::ffff:10.0.0.1")),
        Err("denied:private_address")
    );
    assert_eq!(none.check(ip("127.0.0.1")), Err("denied:loopback_address"));
    assert_eq!(none.check(ip("::1")), Err("denied:loopback_address"));
    assert_eq!(
        none.check(ip("169.254.1.1")),
        Err("denied:link_local_address")
    );
    assert_eq!(none.check(ip("100.64.0.1")), Err("denied:cgnat_address"));
    assert_eq!(none.check(ip("fd12::1")), Err("denied:ula_address"));
    assert_eq!(
        none.check(ip("169.254.169.254")),
        Err("denied:metadata_address")
    );
    assert_eq!(none.check(ip("0.0.0.0")), Err("denied:unspecified_address"));
    assert_eq!(none.check(ip("224.0.0.1")), Err("denied:multicast_address"));
    assert_eq!(
        none.check(ip("255.255.255.255")),
        Err("denied:broadcast_address")
    );
    assert_eq!(none.check(ip("192.0.2.1")), Err("denied:reserved_address"));
    assert_eq!(none.check(ip("240.0.0.1")), Err("denied:reserved_address"));

    let p = AddrPolicy::new(vec![
        cidr("127.0.0.0/8"),
        cidr("10.0.0.0/8"),
        cidr("169.254.0.0/16"),
        cidr("::/0"),
    ]);
    assert_eq!(p.check(ip("127.0.0.2")), Ok(()));
    assert_eq!(
        p.check(ip("::ffff:127.0.0.2")),
        Ok(()),
        "mapped form matches the IPv4 CIDR"
    );
    assert_eq!(p.check(ip("10.9.9.9")), Ok(()));
    assert_eq!(p.check(ip("169.254.1.1")), Ok(()));
    assert_eq!(p.check(ip("fd12::1")), Ok(()));
    assert_eq!(p.check(ip("192.168.1.1")), Err("denied:private_address"));
    // A range that contains the metadata address does not open it, nor do wide v6 ranges.
    assert_eq!(
        p.check(ip("169.254.169.254")),
        Err("denied:metadata_address")
    );
    assert_eq!(p.check(ip("fd00:ec2::254")), Err("denied:metadata_address"));
    // Never, whatever the CIDRs say.
    let all = AddrPolicy::new(vec![cidr("0.0.0.0/0"), cidr("::/0")]);
    assert_eq!(all.check(ip("0.0.0.0")), Err("denied:unspecified_address"));
    assert_eq!(all.check(ip("::")), Err("denied:unspecified_address"));
    assert_eq!(all.check(ip("239.1.1.1")), Err("denied:multicast_address"));
    assert_eq!(
        all.check(ip("255.255.255.255")),
        Err("denied:broadcast_address")
    );

    let meta = AddrPolicy::new(vec![cidr("169.254.169.254/32"), cidr("fd00:ec2::254")]);
    assert_eq!(meta.check(ip("169.254.169.254")), Ok(()));
    assert_eq!(meta.check(ip("fd00:ec2::254")), Ok(()));
    assert_eq!(
        meta.check(ip("100.100.100.200")),
        Err("denied:metadata_address")
    );
    assert_eq!(
        meta.check(ip("169.254.169.253")),
        Err("denied:link_local_address")
    );
}

#[test]
fn no_panic_on_generated_cidrs_and_addresses() {
    let mut rng = crate::testutil::Lcg(0x5eed_0002);
    let p = AddrPolicy::new(vec![cidr("10.0.0.0/8"), cidr("fc00::/7")]);
    for _ in 0..5000 {
        let v4 = Ipv4Addr::from(rng.next_u32());
        let v6 = Ipv6Addr::from(
            (u128::from(rng.next_u32()) << 96)
                | (u128::from(rng.next_u32()) << 32)
                | u128::from(rng.next_u32()),
        );
        for a in [IpAddr::V4(v4), IpAddr::V6(v6)] {
            let class = classify(a);
            let _ = p.check(a);
            assert_eq!(
                class == AddrClass::Public,
                AddrPolicy::default().check(a).is_ok(),
                "{a}"
            );
        }
        let s = String::from_utf8_lossy(&rng.bytes(24, b"0123456789abcdef:./")).into_owned();
        let _ = Cidr::parse(&s);
    }
}
