//! Events → one OTLP `ExportTraceServiceRequest` (the mapping is documented in the parent
//! module). Pure: no I/O, no clock; the same events always give the same bytes.

use super::OtlpError;
use super::attrs::{fields, flatten_into, kv, string};
use crate::{DestroyReason, Event, EventKind};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status::StatusCode,
};
use std::collections::BTreeMap;

/// A span's identity inside the exporter: (sandbox id, exec id or None for the sandbox span).
pub(crate) type SpanKey = (String, Option<String>);

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// W3C "sampled" flag, and "the is-remote bit is known" (it is not remote: we made the span).
const SPAN_FLAGS: u32 = 0x01 | 0x100;

/// 128-bit FNV-1a: a stable, dependency-free hash for ids (not a secret, not collision-proof
/// against an adversary choosing sandbox ids; ids are made by stockade).
fn fnv128(parts: &[&str]) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator that cannot appear in an id keeps ("ab","c") apart from ("a","bc").
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
        for b in p.bytes() {
            h ^= u128::from(b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
    h
}

/// The trace id of a sandbox: 16 bytes derived from its id alone, never all zero.
pub(crate) fn trace_id(sandbox_id: &str) -> [u8; 16] {
    fnv128(&["stockade.trace", sandbox_id]).max(1).to_be_bytes()
}

/// The span id of the sandbox span (`exec_id` None) or of one exec: 8 bytes, never all zero.
pub(crate) fn span_id(sandbox_id: &str, exec_id: Option<&str>) -> [u8; 8] {
    let h = match exec_id {
        None => fnv128(&["stockade.sandbox", sandbox_id]),
        Some(e) => fnv128(&["stockade.exec", sandbox_id, e]),
    };
    // Truncation to the low 64 bits is the point.
    let low = h as u64;
    low.max(1).to_be_bytes()
}

/// `at` (RFC 3339 UTC) as nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos(e: &Event) -> Result<u64, OtlpError> {
    let bad = || OtlpError::Timestamp {
        seq: e.seq,
        at: e.at.clone(),
    };
    let t = humantime::parse_rfc3339(&e.at).map_err(|_| bad())?;
    let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad())?;
    u64::try_from(d.as_nanos()).map_err(|_| bad())
}

/// Events that open or close a span are always kept; the others may be dropped past a cap.
pub(crate) fn defines_a_span(kind: &EventKind) -> bool {
    match kind {
        EventKind::SandboxCreated { .. }
        | EventKind::SandboxDestroyed { .. }
        | EventKind::ExecStarted { .. }
        | EventKind::ExecExited { .. } => true,
        EventKind::LimitHit { .. }
        | EventKind::Violation { .. }
        | EventKind::FileChanged { .. }
        | EventKind::FileRead { .. }
        | EventKind::NetDns { .. }
        | EventKind::NetConnect { .. }
        | EventKind::SecretUsed { .. }
        | EventKind::SecretRefused { .. } => false,
    }
}

/// What one span collects before it is built.
#[derive(Default)]
struct Acc<'a> {
    /// The event opening the span (sandbox.created / exec.started), if seen.
    open: Option<&'a Event>,
    /// The event closing it (sandbox.destroyed / exec.exited), if seen.
    close: Option<&'a Event>,
    first_ns: u64,
    last_ns: u64,
    events: Vec<span::Event>,
}

impl<'a> Acc<'a> {
    fn add(&mut self, e: &'a Event, ns: u64) {
        if self.events.is_empty() {
            self.first_ns = ns;
        }
        self.last_ns = self.last_ns.max(ns);
        let mut attributes = vec![kv("stockade.seq", seq_value(e.seq))];
        flatten_into("", &fields(&e.kind), &mut attributes);
        self.events.push(span::Event {
            time_unix_nano: ns,
            name: e.kind.type_name().to_string(),
            attributes,
            dropped_attributes_count: 0,
        });
    }
    fn time_of(ev: Option<&Event>) -> Result<Option<u64>, OtlpError> {
        ev.map(unix_nanos).transpose()
    }
}

fn seq_value(seq: u64) -> opentelemetry_proto::tonic::common::v1::any_value::Value {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    i64::try_from(seq).map_or_else(|_| string(seq.to_string()), Value::IntValue)
}

/// One sandbox's spans.
#[derive(Default)]
struct Sandbox<'a> {
    root: Acc<'a>,
    /// Execs in order of their first event.
    execs: Vec<(&'a str, Acc<'a>)>,
}

/// Builds the request: one resource, one scope, per sandbox one "sandbox" span and one "exec"
/// span per exec id. `dropped` counts span events left out past the cap, per span.
pub(crate) fn request(
    events: &[Event],
    dropped: &BTreeMap<SpanKey, u32>,
    service_name: &str,
) -> Result<ExportTraceServiceRequest, OtlpError> {
    // Group by sandbox in order of first appearance, each in `seq` order.
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        let g = groups.entry(e.sandbox_id.as_str()).or_default();
        if g.is_empty() {
            order.push(&e.sandbox_id);
        }
        g.push(e);
    }
    let mut spans = Vec::new();
    for id in order {
        let mut group = groups.remove(id).unwrap_or_default();
        group.sort_by_key(|e| e.seq);
        let mut sb = Sandbox::default();
        for e in group {
            let ns = unix_nanos(e)?;
            let acc = match &e.exec_id {
                None => &mut sb.root,
                Some(x) => match sb.execs.iter().position(|(k, _)| k == x) {
                    Some(i) => &mut sb.execs[i].1,
                    None => {
                        sb.execs.push((x.as_str(), Acc::default()));
                        let last = sb.execs.len() - 1;
                        &mut sb.execs[last].1
                    }
                },
            };
            match e.kind {
                EventKind::SandboxCreated { .. } | EventKind::ExecStarted { .. } => {
                    acc.open.get_or_insert(e);
                }
                EventKind::SandboxDestroyed { .. } | EventKind::ExecExited { .. } => {
                    acc.close = Some(e);
                }
                EventKind::LimitHit { .. }
                | EventKind::Violation { .. }
                | EventKind::FileChanged { .. }
                | EventKind::FileRead { .. }
                | EventKind::NetDns { .. }
                | EventKind::NetConnect { .. }
                | EventKind::SecretUsed { .. }
                | EventKind::SecretRefused { .. } => {}
            }
            acc.add(e, ns);
        }
        spans.extend(sandbox_spans(id, sb, dropped)?);
    }
    Ok(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", string(service_name)),
                    kv("service.version", string(VERSION)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "stockade-audit".into(),
                    version: VERSION.into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    })
}

fn sandbox_spans(
    id: &str,
    sb: Sandbox<'_>,
    dropped: &BTreeMap<SpanKey, u32>,
) -> Result<Vec<Span>, OtlpError> {
    let trace = trace_id(id).to_vec();
    let root_id = span_id(id, None);
    // Events arriving only for execs still give the root span a time range.
    let all_first = sb
        .execs
        .iter()
        .map(|(_, a)| a.first_ns)
        .chain((!sb.root.events.is_empty()).then_some(sb.root.first_ns))
        .min()
        .unwrap_or(0);
    let all_last = sb
        .execs
        .iter()
        .map(|(_, a)| a.last_ns)
        .chain([sb.root.last_ns])
        .max()
        .unwrap_or(0);
    let start = Acc::time_of(sb.root.open)?.unwrap_or(all_first);
    let end = Acc::time_of(sb.root.close)?.unwrap_or(all_last).max(start);

    let mut attributes = vec![kv("stockade.sandbox_id", string(id))];
    let mut status = None;
    if let Some(EventKind::SandboxCreated { enforced, .. }) = sb.root.open.map(|e| &e.kind) {
        attributes.push(kv("stockade.level", string(enforced.level.clone())));
    }
    if let Some(e) = sb.root.open {
        flatten_into("stockade", &fields(&e.kind), &mut attributes);
    }
    if let Some(e) = sb.root.close {
        flatten_into("stockade.destroyed", &fields(&e.kind), &mut attributes);
        if let EventKind::SandboxDestroyed { reason, .. } = &e.kind {
            let detail = fields(&e.kind)
                .get("error")
                .and_then(|v| v.as_str().map(str::to_string));
            status = sandbox_status(*reason, detail);
        }
    }
    let mut out = vec![Span {
        trace_id: trace.clone(),
        span_id: root_id.to_vec(),
        flags: SPAN_FLAGS,
        name: "sandbox".into(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        dropped_events_count: dropped_for(dropped, id, None),
        events: sb.root.events,
        status,
        ..Default::default()
    }];
    for (exec, acc) in sb.execs {
        let start = Acc::time_of(acc.open)?.unwrap_or(acc.first_ns);
        // An exec that never exited ran until the sandbox ended.
        let end = Acc::time_of(acc.close)?.unwrap_or(end).max(start);
        let mut attributes = vec![kv("stockade.exec_id", string(exec))];
        let mut status = None;
        for e in [acc.open, acc.close].into_iter().flatten() {
            flatten_into("stockade", &fields(&e.kind), &mut attributes);
            if let EventKind::ExecExited {
                limit: Some(limit), ..
            } = &e.kind
            {
                let name = serde_json::to_value(limit)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                status = Some(error(format!("exec ended by the {name} limit")));
            }
        }
        out.push(Span {
            trace_id: trace.clone(),
            span_id: span_id(id, Some(exec)).to_vec(),
            parent_span_id: root_id.to_vec(),
            flags: SPAN_FLAGS,
            name: "exec".into(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            dropped_events_count: dropped_for(dropped, id, Some(exec)),
            events: acc.events,
            status,
            ..Default::default()
        });
    }
    Ok(out)
}

fn dropped_for(dropped: &BTreeMap<SpanKey, u32>, id: &str, exec: Option<&str>) -> u32 {
    dropped
        .get(&(id.to_string(), exec.map(str::to_string)))
        .copied()
        .unwrap_or(0)
}

fn error(message: String) -> Status {
    Status {
        message,
        code: StatusCode::Error as i32,
    }
}

/// ERROR when the sandbox ended by an error, a limit or a timeout; unset otherwise. `detail` is
/// the event's `error` field, when it has one.
fn sandbox_status(reason: DestroyReason, detail: Option<String>) -> Option<Status> {
    let message = match reason {
        DestroyReason::Error => "sandbox ended by an error",
        DestroyReason::Limit => "sandbox ended by a limit",
        DestroyReason::Timeout => "sandbox ended by its timeout",
        DestroyReason::Exit | DestroyReason::Killed => return None,
    };
    Some(error(match detail {
        Some(d) => format!("{message}: {d}"),
        None => message.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, Enforcement, SCHEMA_VERSION};

    fn ev(seq: u64, exec: Option<&str>, at: &str, kind: EventKind) -> Event {
        Event {
            schema_version: SCHEMA_VERSION,
            seq,
            at: at.into(),
            sandbox_id: "sb1".into(),
            exec_id: exec.map(str::to_string),
            kind,
        }
    }

    fn file(path: &str) -> EventKind {
        EventKind::FileChanged {
            path: path.into(),
            change: Change::Created,
            size: 1,
        }
    }

    /// Built from JSON so fields added to the schema later (with defaults) need no change here.
    fn destroyed(reason: DestroyReason) -> EventKind {
        serde_json::from_value(serde_json::json!({
            "type": "sandbox.destroyed", "reason": reason, "clean": true,
            "leftovers": [], "duration_ms": 1000, "error": "cgroup gone"
        }))
        .unwrap()
    }

    #[test]
    fn ids_are_deterministic_distinct_and_nonzero() {
        assert_eq!(trace_id("a"), trace_id("a"));
        assert_ne!(trace_id("a"), trace_id("b"));
        assert_ne!(trace_id(""), [0; 16]);
        assert_ne!(span_id("a", None), span_id("a", Some("")));
        assert_ne!(span_id("ab", Some("c")), span_id("a", Some("bc")));
        assert_eq!(span_id("a", Some("e")), span_id("a", Some("e")));
    }

    #[test]
    fn timestamps_parse_to_nanos_and_garbage_is_named() {
        let e = ev(3, None, "1970-01-01T00:00:01.000002Z", file("x"));
        assert_eq!(unix_nanos(&e).unwrap(), 1_000_002_000);
        let bad = ev(4, None, "yesterday", file("x"));
        let err = unix_nanos(&bad).unwrap_err().to_string();
        assert!(
            err.contains("event 4") && err.contains("yesterday"),
            "{err}"
        );
    }

    #[test]
    fn without_lifecycle_events_spans_cover_the_events_seen() {
        // No sandbox.created/destroyed, no exec.started/exited: times come from the events.
        let events = vec![
            ev(2, Some("e"), "2026-01-01T00:00:02Z", file("b")),
            ev(1, None, "2026-01-01T00:00:01Z", file("a")),
            ev(3, Some("e"), "2026-01-01T00:00:03Z", file("c")),
        ];
        let req = request(&events, &BTreeMap::new(), "s").unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let base = 1_767_225_600_000_000_000u64;
        assert_eq!(spans[0].start_time_unix_nano, base + 1_000_000_000);
        assert_eq!(spans[0].end_time_unix_nano, base + 3_000_000_000);
        assert_eq!(spans[1].start_time_unix_nano, base + 2_000_000_000);
        // Never exited: it ends with the sandbox span.
        assert_eq!(spans[1].end_time_unix_nano, base + 3_000_000_000);
        assert!(spans[0].status.is_none() && spans[1].status.is_none());
    }

    #[test]
    fn status_is_error_only_for_error_limit_timeout() {
        for (reason, is_error) in [
            (DestroyReason::Exit, false),
            (DestroyReason::Killed, false),
            (DestroyReason::Error, true),
            (DestroyReason::Limit, true),
            (DestroyReason::Timeout, true),
        ] {
            let events = vec![
                ev(
                    1,
                    None,
                    "2026-01-01T00:00:01Z",
                    EventKind::SandboxCreated {
                        policy_digest: "d".into(),
                        workspace: "/w".into(),
                        workspace_mode: "overlay".into(),
                        enforced: Enforcement::default(),
                    },
                ),
                ev(2, None, "2026-01-01T00:00:02Z", destroyed(reason)),
            ];
            let req = request(&events, &BTreeMap::new(), "s").unwrap();
            let span = &req.resource_spans[0].scope_spans[0].spans[0];
            assert_eq!(
                span.status.as_ref().map(|s| s.code),
                is_error.then_some(StatusCode::Error as i32),
                "{reason:?}"
            );
            if let Some(s) = &span.status {
                assert!(s.message.starts_with("sandbox ended by "), "{}", s.message);
            }
        }
    }

    #[test]
    fn sandboxes_get_their_own_traces_and_dropped_counts_land_on_their_span() {
        let mut other = ev(1, None, "2026-01-01T00:00:01Z", file("z"));
        other.sandbox_id = "sb2".into();
        let events = vec![ev(1, None, "2026-01-01T00:00:01Z", file("a")), other];
        let dropped = BTreeMap::from([(("sb2".to_string(), None), 7)]);
        let req = request(&events, &dropped, "s").unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_ne!(spans[0].trace_id, spans[1].trace_id);
        assert_eq!(spans[0].trace_id, trace_id("sb1").to_vec());
        assert_eq!(
            (spans[0].dropped_events_count, spans[1].dropped_events_count),
            (0, 7)
        );
    }
}
