use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;

use super::*;
use crate::testutil::{Lcg, mutate_each};

/// A query built by hand: header fields as given, one question unless `qdcount` says otherwise.
fn raw(
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    labels: &[&[u8]],
    qtype: u16,
    qclass: u16,
) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [id, flags, qdcount, ancount, 0, 0] {
        b.extend(v.to_be_bytes());
    }
    for l in labels {
        b.push(l.len() as u8);
        b.extend_from_slice(l);
    }
    b.push(0);
    b.extend(qtype.to_be_bytes());
    b.extend(qclass.to_be_bytes());
    b
}

fn q(labels: &[&[u8]], qtype: u16) -> Vec<u8> {
    raw(0xbeef, 0x0100, 1, 0, labels, qtype, 1)
}

fn parsed(b: &[u8]) -> Query {
    parse_query(b).unwrap_or_else(|e| panic!("{e}"))
}

fn decode(b: &[u8]) -> Message {
    Message::from_vec(b).unwrap_or_else(|e| panic!("reply does not decode: {e}"))
}

#[test]
fn parses_a_standard_query() {
    let query = parsed(&q(&[b"Api", b"Example", b"COM"], 1));
    assert_eq!(query.id, 0xbeef);
    assert_eq!(query.name, "api.example.com");
    assert_eq!(query.qtype, QType::A);
    assert_eq!(parsed(&q(&[b"a"], 28)).qtype, QType::Aaaa);
    assert_eq!(parsed(&q(&[b"a"], 16)).qtype, QType::Other(16));
    assert_eq!(parsed(&q(&[b"a"], 255)).qtype.number(), 255);
    assert_eq!(parsed(&q(&[], 1)).name, "", "the root name");
    // An odd byte in a label is escaped, so the name grammar refuses it.
    let odd = parsed(&q(&[b"a\0b", b"com"], 1)).name;
    assert!(odd.contains('\\'), "{odd:?}");
    let rules = crate::rules::Rules::new(&["*.com".to_string()], &[]).unwrap_or_default();
    assert_eq!(
        rules.decide_name(&odd),
        crate::rules::Decision::Denied(crate::rules::Reason::BadName)
    );
    assert_eq!(
        rules.decide_name(&parsed(&q(&[b"x", b"com"], 1)).name),
        crate::rules::Decision::Allowed
    );
}

#[test]
fn refuses_what_is_not_one_plain_question() {
    assert_eq!(parse_query(b""), Err(DnsError::Undecodable));
    assert_eq!(parse_query(&[0; 11]), Err(DnsError::Undecodable));
    assert_eq!(
        parse_query(&raw(1, 0x8100, 1, 0, &[b"a"], 1, 1)),
        Err(DnsError::NotAQuery)
    );
    assert_eq!(
        parse_query(&raw(1, 0x2100, 1, 0, &[b"a"], 1, 1)),
        Err(DnsError::NotStandardQuery(4))
    );
    assert_eq!(
        parse_query(&raw(1, 0x0100, 0, 0, &[], 1, 1)[..12]),
        Err(DnsError::QuestionCount(0))
    );
    let mut two = raw(1, 0x0100, 2, 0, &[b"a"], 1, 1);
    two.extend_from_slice(&[1, b'b', 0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&two), Err(DnsError::QuestionCount(2)));
    assert_eq!(
        parse_query(&raw(1, 0x0100, 1, 0, &[b"a"], 1, 3)),
        Err(DnsError::NotInternetClass)
    );
    // The header claims an answer record that is not there.
    assert_eq!(
        parse_query(&raw(1, 0x0100, 1, 1, &[b"a"], 1, 1)),
        Err(DnsError::Undecodable)
    );
    let mut with_answer = raw(1, 0x0100, 1, 1, &[b"a"], 1, 1);
    with_answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    assert_eq!(parse_query(&with_answer), Err(DnsError::HasRecords));
    // A compression pointer that loops.
    let mut looped = raw(1, 0x0100, 1, 0, &[], 1, 1)[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse_query(&looped), Err(DnsError::Undecodable));
    assert_eq!(DnsError::NotAQuery.code(), "dns:not_a_query");
}

#[test]
fn answers_echo_the_question_and_carry_one_record() {
    let bytes = q(&[b"Api", b"Example", b"com"], 1);
    let query = parsed(&bytes);
    let reply = decode(&answer_a(&query, Ipv4Addr::new(127, 0, 3, 7), 5).unwrap_or_default());
    assert_eq!(reply.id(), 0xbeef);
    assert_eq!(reply.message_type(), MessageType::Response);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.authoritative() && reply.recursion_desired() && reply.recursion_available());
    assert_eq!(reply.queries().len(), 1);
    assert_eq!(
        reply.queries()[0].name().to_ascii(),
        "Api.Example.com.",
        "case kept"
    );
    assert_eq!(reply.answers().len(), 1);
    let rec = &reply.answers()[0];
    assert_eq!(
        (rec.ttl(), rec.name().to_ascii()),
        (5, "Api.Example.com.".to_string())
    );
    assert_eq!(rec.data(), &RData::A(A(Ipv4Addr::new(127, 0, 3, 7))));

    let q6 = parsed(&raw(9, 0, 1, 0, &[b"a", b"b"], 28, 1));
    let reply = decode(&answer_aaaa(&q6, Ipv6Addr::LOCALHOST, 60).unwrap_or_default());
    assert!(!reply.recursion_desired());
    assert_eq!(
        reply.answers()[0].data(),
        &RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))
    );

    assert_eq!(
        answer_a(&q6, Ipv4Addr::LOCALHOST, 1),
        Err(DnsError::TypeMismatch {
            asked: QType::Aaaa,
            given: QType::A
        })
    );
    assert_eq!(
        answer_aaaa(&query, Ipv6Addr::LOCALHOST, 1),
        Err(DnsError::TypeMismatch {
            asked: QType::A,
            given: QType::Aaaa
        })
    );
}

#[test]
fn refusals_have_the_right_codes_and_no_records() {
    let query = parsed(&q(&[b"exfil-data", b"evil", b"com"], 16));
    for (bytes, code) in [
        (nxdomain(&query), ResponseCode::NXDomain),
        (refused(&query), ResponseCode::Refused),
        (nodata(&query), ResponseCode::NoError),
    ] {
        let m = decode(&bytes.unwrap_or_default());
        assert_eq!((m.id(), m.response_code()), (0xbeef, code));
        assert!(
            m.answers().is_empty() && m.name_servers().is_empty() && m.additionals().is_empty()
        );
        assert_eq!(m.queries()[0].query_type(), RecordType::TXT);
    }
}

#[test]
fn only_a_and_aaaa_are_answered() {
    assert!(!refuse_type(QType::A));
    assert!(!refuse_type(QType::Aaaa));
    for n in [16, 10, 255, 65, 64, 15, 5, 12, 2, 0, 65535] {
        assert!(refuse_type(QType::Other(n)), "{n}");
    }
    assert_eq!(reply_kind(QType::A, true), ReplyKind::Answer);
    assert_eq!(reply_kind(QType::Aaaa, true), ReplyKind::Answer);
    assert_eq!(reply_kind(QType::Other(65), true), ReplyKind::NoData);
    assert_eq!(reply_kind(QType::A, false), ReplyKind::NxDomain);
    assert_eq!(reply_kind(QType::Aaaa, false), ReplyKind::NxDomain);
    assert_eq!(reply_kind(QType::Other(16), false), ReplyKind::Refused);
    assert_eq!(reply_kind(QType::Other(10), false), ReplyKind::Refused);
    assert_eq!(reply_kind(QType::Other(255), false), ReplyKind::Refused);
}

#[test]
fn query_from_hickory_round_trips() {
    use hickory_proto::op::Query as Question;
    use hickory_proto::rr::Name;
    let mut m = Message::new();
    let name = Name::from_ascii("files.pythonhosted.org.").unwrap_or_default();
    m.set_id(77)
        .set_recursion_desired(true)
        .add_query(Question::query(name, RecordType::AAAA));
    let query = parsed(&m.to_vec().unwrap_or_default());
    assert_eq!(
        (query.id, query.name.as_str(), query.qtype),
        (77, "files.pythonhosted.org", QType::Aaaa)
    );
}

#[test]
fn no_panic_on_generated_queries() {
    let mut rng = Lcg(0x5eed_0005);
    for _ in 0..4000 {
        let mut b = rng.bytes(80, &[]);
        if b.len() >= 12 && rng.below(2) == 0 {
            b[2] = 1; // RD, QR=0, opcode 0
            b[3] = 0;
            b[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        }
        if let Ok(query) = parse_query(&b) {
            let _ = nxdomain(&query);
            let _ = answer_a(&query, Ipv4Addr::LOCALHOST, 1);
        }
    }
}

#[test]
fn no_panic_on_mutated_queries() {
    for (seed, valid) in [
        (21, q(&[b"api", b"example", b"com"], 1)),
        (22, q(&[&b"x"[..]; 20], 28)),
    ] {
        mutate_each(&valid, 3000, seed, |b| {
            if let Ok(query) = parse_query(b) {
                let _ = refused(&query);
                let _ = answer_aaaa(&query, Ipv6Addr::LOCALHOST, 1);
            }
        });
    }
}
