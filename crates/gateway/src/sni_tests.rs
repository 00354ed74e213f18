use std::sync::Arc;

use super::*;
use crate::testutil::{Lcg, mutate_each};

/// A real ClientHello: rustls (ring provider, TLS 1.2 and 1.3) writing its first flight.
fn rustls_hello(server_name: &str) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("versions: {e}"))
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name =
        ServerName::try_from(server_name.to_string()).unwrap_or_else(|e| panic!("name: {e}"));
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .unwrap_or_else(|e| panic!("client: {e}"));
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)
            .unwrap_or_else(|e| panic!("write_tls: {e}"));
    }
    out
}

/// Splits a single-record handshake into records of at most `size` body bytes each.
fn refragment(one_record: &[u8], size: usize) -> Vec<u8> {
    let body = &one_record[5..];
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn vec16(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend(vec16(name));
    }
    (0, vec16(&list))
}

/// A minimal ClientHello record with the given extensions (`None`: no extensions block).
fn hello(exts: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0); // session id
    body.extend(vec16(&[0x13, 0x01]));
    body.extend([1, 0]); // compression: null
    if let Some(exts) = exts {
        let mut block = Vec::new();
        for (kind, data) in exts {
            block.extend(kind.to_be_bytes());
            block.extend(vec16(data));
        }
        body.extend(vec16(&block));
    }
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![22, 3, 1];
    rec.extend(vec16(&hs));
    rec
}

fn some(s: &str) -> SniResult {
    SniResult::Complete(Some(s.to_string()))
}

#[test]
fn real_client_hello_from_rustls() {
    let h = rustls_hello("api.example.com");
    assert!(
        h.len() > 100 && h[0] == 22,
        "unexpected first flight: {h:?}"
    );
    assert_eq!(parse_sni(&h), some("api.example.com"));
    // Bytes after the ClientHello (early data, the next record) are not looked at.
    let mut more = h.clone();
    more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    assert_eq!(parse_sni(&more), some("api.example.com"));
}

#[test]
fn rustls_sends_no_sni_for_an_address() {
    assert_eq!(
        parse_sni(&rustls_hello("10.1.2.3")),
        SniResult::Complete(None)
    );
}

#[test]
fn every_prefix_is_need_more_in_one_or_many_records() {
    let h = rustls_hello("files.pythonhosted.org");
    for size in [1, 2, 7, 100, 16384] {
        let r = refragment(&h, size);
        assert_eq!(
            parse_sni(&r),
            some("files.pythonhosted.org"),
            "records of {size}"
        );
        for end in 0..r.len() {
            assert_eq!(
                parse_sni(&r[..end]),
                SniResult::NeedMore,
                "records of {size}, cut at {end}"
            );
        }
    }
}

#[test]
fn split_into_two_records_at_every_byte() {
    let h = hello(Some(&[sni_ext(&[(0, b"a.example")])]));
    let body = &h[5..];
    for cut in 1..body.len() {
        let mut r = Vec::new();
        for part in [&body[..cut], &body[cut..]] {
            r.extend_from_slice(&[22, 3, 3]);
            r.extend(vec16(part));
        }
        assert_eq!(parse_sni(&r), some("a.example"), "cut at {cut}");
    }
}

#[test]
fn extensions_grease_and_name_types() {
    let grease = (0x0a0a, vec![]);
    let alpn = (16, vec16(&[2, b'h', b'2']));
    let r = hello(Some(&[
        grease.clone(),
        alpn.clone(),
        sni_ext(&[(0, b"Api.Example.COM")]),
        (0xfafa, vec![0]),
    ]));
    assert_eq!(parse_sni(&r), some("Api.Example.COM"), "returned as sent");
    assert_eq!(parse_sni(&hello(None)), SniResult::Complete(None));
    assert_eq!(parse_sni(&hello(Some(&[]))), SniResult::Complete(None));
    assert_eq!(
        parse_sni(&hello(Some(&[grease, alpn]))),
        SniResult::Complete(None)
    );
    // An unknown name type is skipped; the host_name after it is found.
    assert_eq!(
        parse_sni(&hello(Some(&[sni_ext(&[(7, b"xx"), (0, b"b.example")])]))),
        some("b.example")
    );
    assert_eq!(
        parse_sni(&hello(Some(&[sni_ext(&[(7, b"xx")])]))),
        SniResult::Complete(None)
    );
}

#[test]
fn not_tls() {
    assert_eq!(parse_sni(b""), SniResult::NeedMore);
    assert_eq!(parse_sni(b"\x16"), SniResult::NeedMore);
    assert_eq!(parse_sni(b"\x16\x03"), SniResult::NeedMore);
    assert_eq!(parse_sni(b"GET / HTTP/1.1\r\n"), SniResult::NotTls);
    assert_eq!(parse_sni(b"CONNECT a:443 HTTP/1.1\r\n"), SniResult::NotTls);
    assert_eq!(parse_sni(b"\x16\x02\x01"), SniResult::NotTls);
    assert_eq!(parse_sni(b"\x16\x03\x05"), SniResult::NotTls);
    assert_eq!(parse_sni(b"\x17\x03\x03\x00\x01x"), SniResult::NotTls);
    assert_eq!(parse_sni(b"SSH-2.0-OpenSSH_9.6\r\n"), SniResult::NotTls);
}

#[test]
fn malformed_with_codes() {
    let m = SniResult::Malformed;
    let ok = hello(Some(&[sni_ext(&[(0, b"a.example")])]));
    assert_eq!(parse_sni(&ok), some("a.example"));

    assert_eq!(parse_sni(b"\x16\x03\x01\x00\x00"), m("empty_record"));
    assert_eq!(parse_sni(b"\x16\x03\x01\x40\x01"), m("record_too_long"));
    assert_eq!(
        parse_sni(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"),
        m("not_client_hello")
    );
    assert_eq!(
        parse_sni(b"\x16\x03\x01\x00\x04\x01\x00\x40\x01"),
        m("client_hello_too_long")
    );
    // Handshake message says 16 KiB exactly: allowed, so only more bytes are needed.
    assert_eq!(
        parse_sni(b"\x16\x03\x01\x00\x04\x01\x00\x40\x00"),
        SniResult::NeedMore
    );

    // A second record that is not a handshake record.
    let mut two = refragment(&ok, 10);
    two[15] = 23;
    assert_eq!(parse_sni(&two), m("record_not_handshake"));
    let mut two = refragment(&ok, 10);
    two[17] = 9;
    assert_eq!(parse_sni(&two), m("record_version"));

    // Trailing bytes after the ClientHello inside the same record.
    let mut t = ok.clone();
    t.push(0);
    let rec_len = (t.len() - 5) as u16;
    t[3..5].copy_from_slice(&rec_len.to_be_bytes());
    assert_eq!(parse_sni(&t), m("trailing_handshake_data"));

    assert_eq!(
        parse_sni(&hello(Some(&[sni_ext(&[(0, b"a"), (0, b"b")])]))),
        m("duplicate_host_name")
    );
    assert_eq!(
        parse_sni(&hello(Some(&[
            sni_ext(&[(0, b"a")]),
            sni_ext(&[(0, b"b")])
        ]))),
        m("duplicate_server_name")
    );
    assert_eq!(
        parse_sni(&hello(Some(&[sni_ext(&[(0, b"")])]))),
        m("empty_host_name")
    );
    assert_eq!(
        parse_sni(&hello(Some(&[sni_ext(&[(0, "é.example".as_bytes())])]))),
        m("host_name_not_ascii")
    );
    assert_eq!(
        parse_sni(&hello(Some(&[(0, vec16(&[]))]))),
        m("bad_server_name_list")
    );
    assert_eq!(
        parse_sni(&hello(Some(&[(0, vec![])]))),
        m("bad_server_name_list")
    );
    // The list length claims more than the extension holds.
    assert_eq!(
        parse_sni(&hello(Some(&[(0, vec![0, 9, 0, 0, 1, b'a'])]))),
        m("bad_server_name_list")
    );
    // A name length that runs past the list.
    assert_eq!(
        parse_sni(&hello(Some(&[(0, vec16(&[0, 0, 9, b'a']))]))),
        m("bad_server_name_list")
    );
    // Bytes after the list inside the extension.
    let mut ext = sni_ext(&[(0, b"a")]).1;
    ext.push(0);
    assert_eq!(
        parse_sni(&hello(Some(&[(0, ext)]))),
        m("bad_server_name_list")
    );
}

/// Rewrites the ClientHello body of a single-record hello and fixes both outer lengths.
fn with_body(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let h = hello(Some(&[sni_ext(&[(0, b"a.example")])]));
    let mut body = h[9..].to_vec();
    f(&mut body);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![22, 3, 1];
    rec.extend(vec16(&hs));
    rec
}

#[test]
fn client_hello_fields_that_lie() {
    let m = SniResult::Malformed;
    assert_eq!(
        parse_sni(&with_body(|b| b[0] = 2)),
        m("client_hello_version")
    );
    assert_eq!(parse_sni(&with_body(|b| b.truncate(20))), m("short_random"));
    assert_eq!(
        parse_sni(&with_body(|b| b.truncate(1))),
        m("short_client_hello")
    );
    assert_eq!(parse_sni(&with_body(|b| b[34] = 33)), m("bad_session_id"));
    assert_eq!(parse_sni(&with_body(|b| b[34] = 200)), m("bad_session_id"));
    assert_eq!(parse_sni(&with_body(|b| b[36] = 3)), m("bad_cipher_suites"));
    assert_eq!(parse_sni(&with_body(|b| b[36] = 0)), m("bad_cipher_suites"));
    assert_eq!(
        parse_sni(&with_body(|b| b[36] = 255)),
        m("bad_cipher_suites")
    );
    assert_eq!(
        parse_sni(&with_body(|b| b[39] = 0)),
        m("bad_compression_methods")
    );
    assert_eq!(
        parse_sni(&with_body(|b| b[39] = 250)),
        m("bad_compression_methods")
    );
    assert_eq!(
        parse_sni(&with_body(|b| b[42] = 0xff)),
        m("bad_extensions_length")
    );
    assert_eq!(
        parse_sni(&with_body(|b| b.push(0))),
        m("trailing_client_hello_data")
    );
    // Extensions block shorter than the extension inside it says.
    assert_eq!(
        parse_sni(&with_body(|b| {
            b[42] -= 2;
            b.pop();
            b.pop();
        })),
        m("bad_extension")
    );
}

#[test]
fn no_panic_on_generated_input() {
    let mut rng = Lcg(0x5eed_0003);
    for _ in 0..4000 {
        let mut b = rng.bytes(300, &[]);
        if rng.below(2) == 0 && b.len() >= 3 {
            b[0] = 22;
            b[1] = 3;
            b[2] = 1;
        }
        let _ = parse_sni(&b);
    }
}

#[test]
fn no_panic_on_mutated_hellos() {
    let real = rustls_hello("api.example.com");
    for (seed, valid) in [
        (1, real.clone()),
        (2, refragment(&real, 50)),
        (3, hello(Some(&[sni_ext(&[(0, b"a")])]))),
    ] {
        mutate_each(&valid, 3000, seed, |b| {
            let _ = parse_sni(b);
        });
    }
}
