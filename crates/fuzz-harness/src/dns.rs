//! DNS queries: `dns::parse_query` and the replies built from what it parsed.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::{Name, RData};
use stockade_gateway::dns::{
    self, DnsError, QType, Query, answer_a, answer_aaaa, nodata, nxdomain, parse_query, refused,
};
use stockade_gateway::rules::{Decision, Rules};

const V4: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 2);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// Parses `data` as a query; when it is one, checks:
///
/// - the name is the question's (ASCII, escaped), lowercase, less the root's trailing dot; the
///   type number is the wire's;
/// - hickory's own decoding re-encoded parses again to an equal query;
/// - a name the rules could allow (`open` mode: any name in the grammar) is exactly the wire
///   labels joined by dots: no label with a dot or an escaped byte inside passes as another name;
/// - each reply (NODATA, NXDOMAIN, REFUSED, and an A or AAAA answer for those types) encodes,
///   decodes as a response with the same id, RD bit and question (labels byte for byte, letter
///   case included), the right code and at most one answer, for the asked name; it is not
///   itself taken as a query; the answer for the other address family is refused.
pub fn dns_message(data: &[u8]) {
    let q = match parse_query(data) {
        Ok(q) => q,
        Err(e) => {
            assert!(e.code().starts_with("dns:"), "{e:?}");
            assert!(!matches!(
                e,
                DnsError::TypeMismatch { .. } | DnsError::Encode
            ));
            return;
        }
    };
    let msg = match Message::from_vec(data) {
        Ok(m) => m,
        Err(e) => panic!("parse_query accepted what hickory cannot decode: {e}"),
    };
    let [asked] = msg.queries() else {
        panic!("parse_query accepted {} questions", msg.queries().len());
    };
    check_name(&q, asked);
    if let Ok(bytes) = msg.to_vec() {
        assert_eq!(
            parse_query(&bytes).as_ref(),
            Ok(&q),
            "re-encoded query differs"
        );
    }
    check_reply(&q, asked, nodata(&q), ResponseCode::NoError, None);
    check_reply(&q, asked, nxdomain(&q), ResponseCode::NXDomain, None);
    check_reply(&q, asked, refused(&q), ResponseCode::Refused, None);
    let a = answer_a(&q, V4, 60);
    let aaaa = answer_aaaa(&q, V6, 60);
    match q.qtype {
        QType::A => {
            check_reply(
                &q,
                asked,
                a,
                ResponseCode::NoError,
                Some(RData::A(V4.into())),
            );
            assert!(aaaa.is_err(), "an AAAA answer to an A query");
        }
        QType::Aaaa => {
            check_reply(
                &q,
                asked,
                aaaa,
                ResponseCode::NoError,
                Some(RData::AAAA(V6.into())),
            );
            assert!(a.is_err(), "an A answer to an AAAA query");
        }
        QType::Other(_) => {
            assert!(
                a.is_err() && aaaa.is_err(),
                "an address answer to {:?}",
                q.qtype
            );
            assert!(dns::refuse_type(q.qtype));
        }
    }
}

fn labels(name: &Name) -> Vec<Vec<u8>> {
    name.iter().map(<[u8]>::to_vec).collect()
}

fn check_name(q: &Query, asked: &Question) {
    assert!(q.name.is_ascii(), "{:?}", q.name);
    assert!(
        !q.name.bytes().any(|b| b.is_ascii_uppercase()),
        "{:?}",
        q.name
    );
    // Exactly the root's dot is removed (a label's own dot stays, escaped as `\.`).
    assert!(
        asked.name().is_fqdn(),
        "a question name off the wire is absolute"
    );
    assert_eq!(
        format!("{}.", q.name),
        asked.name().to_ascii().to_ascii_lowercase(),
        "the name is not the question's, less the root's dot"
    );
    assert_eq!(q.qtype.number(), u16::from(asked.query_type()));
    if Rules::open(&[]).map(|r| r.decide_name(&q.name)) == Ok(Decision::Allowed) {
        let joined = labels(asked.name())
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(".");
        assert_eq!(joined, q.name, "an allowed name is not the wire's labels");
    }
}

fn check_reply(
    q: &Query,
    asked: &Question,
    reply: Result<Vec<u8>, DnsError>,
    code: ResponseCode,
    answer: Option<RData>,
) {
    let bytes = match reply {
        Ok(b) => b,
        Err(e) => panic!("no {code:?} reply to a parsed query: {e}"),
    };
    let m = match Message::from_vec(&bytes) {
        Ok(m) => m,
        Err(e) => panic!("our {code:?} reply does not decode: {e}"),
    };
    assert_eq!(m.id(), q.id);
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.op_code(), OpCode::Query);
    assert_eq!(m.response_code(), code);
    assert!(m.authoritative());
    let [echoed] = m.queries() else {
        panic!("the reply has {} questions", m.queries().len());
    };
    assert_eq!(labels(echoed.name()), labels(asked.name()), "question name");
    assert_eq!(echoed.name().is_fqdn(), asked.name().is_fqdn());
    assert_eq!(echoed.query_type(), asked.query_type());
    assert_eq!(echoed.query_class(), asked.query_class());
    match answer {
        None => assert!(m.answers().is_empty(), "records in a {code:?} reply"),
        Some(rdata) => {
            let [record] = m.answers() else {
                panic!("{} answers", m.answers().len());
            };
            assert_eq!(labels(record.name()), labels(asked.name()), "answer name");
            assert_eq!(record.data(), &rdata);
        }
    }
    assert_eq!(
        parse_query(&bytes),
        Err(DnsError::NotAQuery),
        "a reply read as a query"
    );
}
