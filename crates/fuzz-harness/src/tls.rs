//! TLS ClientHello: `sni::parse_sni` on the first bytes of a connection.

use stockade_gateway::sni::{MAX_CLIENT_HELLO, SniResult, parse_sni};

use crate::{contains, cuts};

/// Parses `data` as the first bytes of a TLS connection and checks:
///
/// - a decision is final: for a prefix of `data`, the answer is "need more" or the same answer;
/// - a name is non-empty ASCII and really was sent: it is a run of bytes of the records' bodies
///   put end to end (of `data` itself when the ClientHello came in one record);
/// - a complete ClientHello split again into records of other sizes (1 byte, a few bytes, as
///   large as allowed) gives the same answer.
pub fn tls_client_hello(data: &[u8]) {
    let r = parse_sni(data);
    for k in cuts(data.len(), &[5, 9]) {
        let p = parse_sni(&data[..k]);
        assert!(
            p == SniResult::NeedMore || p == r,
            "the first {k} bytes give {p:?}, all {} give {r:?}",
            data.len()
        );
    }
    let SniResult::Complete(name) = &r else {
        return;
    };
    let (bodies, records) = record_bodies(data);
    if let Some(name) = name {
        assert!(!name.is_empty() && name.is_ascii(), "{name:?}");
        assert!(contains(&bodies, name.as_bytes()), "{name:?} was not sent");
        if records == 1 {
            assert!(
                contains(data, name.as_bytes()),
                "{name:?} not in the record"
            );
        }
    }
    let hello = handshake(&bodies);
    for size in [1, 3, 250, 16 * 1024] {
        let again = parse_sni(&refragment(hello, [data[1], data[2]], size));
        assert_eq!(again, r, "split into records of {size} bytes");
    }
}

/// The bodies of the handshake records at the start of `data` put end to end, and how many
/// records there were (the last one may be cut short).
fn record_bodies(data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut rest = data;
    let mut records = 0;
    while rest.len() >= 5 && rest[0] == 22 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let body = &rest[5..];
        let take = len.min(body.len());
        out.extend_from_slice(&body[..take]);
        records += 1;
        rest = &body[take..];
    }
    (out, records)
}

/// The whole handshake message (4-byte header and body) at the start of `bodies`.
fn handshake(bodies: &[u8]) -> &[u8] {
    let want = bodies.get(1..4).map_or(0, |h| {
        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2])
    });
    assert!(
        want <= MAX_CLIENT_HELLO,
        "a complete ClientHello of {want} bytes"
    );
    &bodies[..(4 + want).min(bodies.len())]
}

fn refragment(hello: &[u8], version: [u8; 2], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in hello.chunks(size) {
        out.extend_from_slice(&[22, version[0], version[1]]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
