//! HTTP/1.x request heads: `http::parse_head` and `http::destination`.

use stockade_gateway::http::{Form, HeadResult, MAX_HEAD, destination, parse_head};

use crate::{contains, cuts};

/// Parses `data` as the start of a connection and checks:
///
/// - a decision is final: for a prefix of `data`, the answer is "need more" or the same answer
///   (so a prefix of a complete head, up to its blank line, always needs more);
/// - a complete head ends at the first blank line, within the input and [`MAX_HEAD`], and parses
///   the same from exactly its own bytes; method, target and `Host` are taken from those bytes;
/// - "need more" is only said below [`MAX_HEAD`] bytes;
/// - a destination has a non-empty host written in the head (as sent) and a port that is not 0;
///   `CONNECT` and only `CONNECT` is a tunnel.
pub fn http_head(data: &[u8]) {
    let r = parse_head(data);
    let extra = match &r {
        HeadResult::Complete(h) => vec![h.head_len.saturating_sub(1), h.head_len],
        _ => Vec::new(),
    };
    for k in cuts(data.len(), &extra) {
        let p = parse_head(&data[..k]);
        assert!(
            p == HeadResult::NeedMore || p == r,
            "the first {k} bytes give {p:?}, all {} give {r:?}",
            data.len()
        );
    }
    match r {
        HeadResult::NeedMore => assert!(data.len() < MAX_HEAD, "need more past MAX_HEAD"),
        HeadResult::Malformed(code) => assert!(!code.is_empty()),
        HeadResult::Complete(h) => {
            let n = h.head_len;
            assert!(n <= data.len() && n <= MAX_HEAD, "head_len {n}");
            let head = &data[..n];
            assert!(
                head.ends_with(b"\r\n\r\n"),
                "head does not end in a blank line"
            );
            assert!(
                !contains(&head[..n - 1], b"\r\n\r\n"),
                "not the first blank line"
            );
            assert_eq!(parse_head(head), HeadResult::Complete(h.clone()));
            assert!(
                contains(head, h.method.as_bytes()),
                "method not in the head"
            );
            assert!(
                contains(head, h.target.as_bytes()),
                "target not in the head"
            );
            if let Some(host) = &h.host {
                assert!(
                    !host.is_empty() && contains(head, host.as_bytes()),
                    "{host:?}"
                );
            }
            if let Ok(d) = destination(&h) {
                assert!(!d.host.is_empty(), "{d:?}");
                assert!(contains(head, d.host.as_bytes()), "{d:?} not in the head");
                assert_ne!(d.port, 0, "{d:?}");
                assert_eq!(d.form == Form::Connect, h.method == "CONNECT", "{d:?}");
            }
        }
    }
}
