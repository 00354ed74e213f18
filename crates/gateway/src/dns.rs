//! DNS for the sandbox: read one query, write the gateway's answer. Decoding and encoding are
//! hickory-proto's; this module decides what is a query the gateway will answer and builds the
//! reply.
//!
//! ## What it guarantees
//!
//! - [`parse_query`] accepts only a standard query (QR=0, opcode QUERY) with exactly one question
//!   of class IN and empty answer and authority sections; anything else is a [`DnsError`]. It
//!   never panics on any input. The name comes back lowercased, without the root's trailing dot,
//!   with unusual bytes escaped (`\000`, and a dot inside a label as `\.`, which may then end the
//!   name), so [`crate::rules::Rules::decide_name`] refuses it.
//! - Replies ([`answer_a`], [`answer_aaaa`], [`nodata`], [`nxdomain`], [`refused`]) echo the id,
//!   the RD bit and the question exactly as asked (letter case included: resolvers that randomise
//!   case check it), are authoritative, and carry at most one answer record.
//! - What is answered, as [`reply_kind`] says:
//!
//!   | name          | A / AAAA          | any other type (TXT, NULL, ANY, HTTPS, ...) |
//!   |---------------|-------------------|---------------------------------------------|
//!   | allowed       | an answer         | NOERROR with no records (NODATA)            |
//!   | not allowed   | NXDOMAIN          | REFUSED                                     |
//!
//!   Only A and AAAA are ever answered ([`refuse_type`] is true for every other type). An allowed
//!   name's other types get NODATA rather than an error, so resolvers that also ask for HTTPS or
//!   SVCB records carry on with the address. Nothing is forwarded upstream, so a query name
//!   cannot carry data out whatever its type.
//!
//! ## What it does not do
//!
//! No EDNS in replies (a reply without OPT is valid for any query), no DNSSEC, no TCP framing
//! (the caller strips the two-byte length).
//!
//! Tested below with queries built by hickory and by hand (each refusal), replies decoded again
//! and checked field by field, and no-panic loops over generated and mutated queries.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use thiserror::Error;

/// A query type, as far as the gateway cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    /// Any other type, by number (16 TXT, 10 NULL, 255 ANY, 65 HTTPS, ...).
    Other(u16),
}

impl QType {
    fn from_record_type(t: RecordType) -> QType {
        match t {
            RecordType::A => QType::A,
            RecordType::AAAA => QType::Aaaa,
            other => QType::Other(u16::from(other)),
        }
    }

    /// The type's number, for the audit record.
    pub fn number(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
            QType::Other(n) => n,
        }
    }
}

/// Why bytes are not a query the gateway answers, or a reply could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DnsError {
    #[error("not a DNS message")]
    Undecodable,
    #[error("a DNS response, not a query")]
    NotAQuery,
    #[error("opcode {0} is not a standard query")]
    NotStandardQuery(u8),
    #[error("{0} questions; exactly one is answered")]
    QuestionCount(usize),
    #[error("query class is not IN")]
    NotInternetClass,
    #[error("a query with records in its answer or authority section")]
    HasRecords,
    #[error("an {asked:?} query cannot get an {given:?} answer")]
    TypeMismatch { asked: QType, given: QType },
    #[error("the reply could not be encoded")]
    Encode,
}

impl DnsError {
    /// A stable code for the audit record.
    pub fn code(&self) -> &'static str {
        match self {
            DnsError::Undecodable => "dns:undecodable",
            DnsError::NotAQuery => "dns:not_a_query",
            DnsError::NotStandardQuery(_) => "dns:not_standard_query",
            DnsError::QuestionCount(_) => "dns:question_count",
            DnsError::NotInternetClass => "dns:not_internet_class",
            DnsError::HasRecords => "dns:has_records",
            DnsError::TypeMismatch { .. } => "dns:type_mismatch",
            DnsError::Encode => "dns:encode",
        }
    }
}

/// One parsed question, with what is needed to reply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lowercased, no trailing dot; not yet checked against the name grammar.
    pub name: String,
    pub qtype: QType,
    question: Question,
    recursion_desired: bool,
}

/// Decodes one DNS query message (UDP payload, or a TCP message without its length prefix).
pub fn parse_query(bytes: &[u8]) -> Result<Query, DnsError> {
    let msg = Message::from_vec(bytes).map_err(|_| DnsError::Undecodable)?;
    if msg.message_type() != MessageType::Query {
        return Err(DnsError::NotAQuery);
    }
    if msg.op_code() != OpCode::Query {
        return Err(DnsError::NotStandardQuery(u8::from(msg.op_code())));
    }
    if !msg.answers().is_empty() || !msg.name_servers().is_empty() {
        return Err(DnsError::HasRecords);
    }
    let [question] = msg.queries() else {
        return Err(DnsError::QuestionCount(msg.queries().len()));
    };
    if question.query_class() != DNSClass::IN {
        return Err(DnsError::NotInternetClass);
    }
    let mut name = question.name().to_ascii().to_ascii_lowercase();
    if name.ends_with('.') {
        name.pop();
    }
    Ok(Query {
        id: msg.id(),
        name,
        qtype: QType::from_record_type(question.query_type()),
        question: question.clone(),
        recursion_desired: msg.recursion_desired(),
    })
}

/// True for every type but A and AAAA: the gateway never answers those with records.
pub fn refuse_type(qtype: QType) -> bool {
    !matches!(qtype, QType::A | QType::Aaaa)
}

/// Which reply a query gets; see the table in the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Answer with an address ([`answer_a`] / [`answer_aaaa`]).
    Answer,
    /// NOERROR without records ([`nodata`]).
    NoData,
    /// NXDOMAIN ([`nxdomain`]).
    NxDomain,
    /// REFUSED ([`refused`]).
    Refused,
}

/// The reply for a query of type `qtype` whose name the rules allow (`name_allowed`) or not.
pub fn reply_kind(qtype: QType, name_allowed: bool) -> ReplyKind {
    match (name_allowed, refuse_type(qtype)) {
        (true, false) => ReplyKind::Answer,
        (true, true) => ReplyKind::NoData,
        (false, false) => ReplyKind::NxDomain,
        (false, true) => ReplyKind::Refused,
    }
}

fn reply(
    query: &Query,
    code: ResponseCode,
    answer: Option<(u32, RData)>,
) -> Result<Vec<u8>, DnsError> {
    let mut msg = Message::new();
    msg.set_id(query.id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired)
        .set_recursion_available(true)
        .set_response_code(code)
        .add_query(query.question.clone());
    if let Some((ttl, rdata)) = answer {
        msg.add_answer(Record::from_rdata(
            query.question.name().clone(),
            ttl,
            rdata,
        ));
    }
    msg.to_vec().map_err(|_| DnsError::Encode)
}

fn expect_type(query: &Query, given: QType) -> Result<(), DnsError> {
    if query.qtype == given {
        Ok(())
    } else {
        Err(DnsError::TypeMismatch {
            asked: query.qtype,
            given,
        })
    }
}

/// NOERROR with one A record; [`DnsError::TypeMismatch`] if the query did not ask for A.
pub fn answer_a(query: &Query, ip: Ipv4Addr, ttl: u32) -> Result<Vec<u8>, DnsError> {
    expect_type(query, QType::A)?;
    reply(query, ResponseCode::NoError, Some((ttl, RData::A(A(ip)))))
}

/// NOERROR with one AAAA record; [`DnsError::TypeMismatch`] if the query did not ask for AAAA.
pub fn answer_aaaa(query: &Query, ip: Ipv6Addr, ttl: u32) -> Result<Vec<u8>, DnsError> {
    expect_type(query, QType::Aaaa)?;
    reply(
        query,
        ResponseCode::NoError,
        Some((ttl, RData::AAAA(AAAA(ip)))),
    )
}

/// NOERROR with no records: the name exists, not with this type.
pub fn nodata(query: &Query) -> Result<Vec<u8>, DnsError> {
    reply(query, ResponseCode::NoError, None)
}

/// NXDOMAIN: no such name (for the sandbox).
pub fn nxdomain(query: &Query) -> Result<Vec<u8>, DnsError> {
    reply(query, ResponseCode::NXDomain, None)
}

/// REFUSED.
pub fn refused(query: &Query) -> Result<Vec<u8>, DnsError> {
    reply(query, ResponseCode::Refused, None)
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
