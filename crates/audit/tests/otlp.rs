//! OTLP/HTTP export against a real receiver: a TCP listener on 127.0.0.1 that reads each HTTP/1.1
//! request (head, then a Content-Length body), decodes the body as an `ExportTraceServiceRequest`
//! and answers as told. Events come from a real `Recorder` with a `Redactor`, so what is checked is
//! what a sandbox run would send. No traffic leaves 127.0.0.1.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stockade_audit::otlp::{OtlpError, OtlpExporter};
use stockade_audit::{Event, EventKind, Recorder, Redactor, StateDir};

const CANARY: &str = "canary-SECRET-7f3a9c";

/// What the receiver does with one connection.
enum Reply {
    /// Answer with this status, content type and body.
    With(u16, &'static str, Vec<u8>),
    /// Read the request, then say nothing and hold the connection this long.
    Silence(Duration),
}

fn ok() -> Reply {
    Reply::With(200, "application/x-protobuf", Vec::new())
}

struct Received {
    head: String,
    body: Vec<u8>,
}

/// Starts a receiver that serves one connection per reply, in order, then stops; it gives up
/// waiting for a connection after 15 s. Returns the base URL and the requests it read.
fn receiver(replies: Vec<Reply>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        for reply in replies {
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let Some(req) = read_request(&mut stream) else {
                return;
            };
            tx.send(req).unwrap();
            match reply {
                Reply::With(status, ctype, body) => {
                    let head = format!(
                        "HTTP/1.1 {status} Whatever\r\nContent-Type: {ctype}\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).unwrap();
                    stream.write_all(&body).unwrap();
                }
                Reply::Silence(d) => std::thread::sleep(d),
            }
        }
    });
    (url, rx)
}

/// One HTTP/1.1 request: the head up to the blank line, then exactly Content-Length bytes.
fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("the exporter sends a Content-Length body");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "no bytes past the body");
    Some(Received { head, body })
}

fn kind(v: serde_json::Value) -> EventKind {
    serde_json::from_value(v).unwrap()
}

fn nanos(at: &str) -> u64 {
    let t = humantime::parse_rfc3339(at).unwrap();
    u64::try_from(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> &'a Value {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .unwrap_or_else(|| panic!("no attribute {key} in {attrs:?}"))
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn strings(v: &Value) -> Vec<String> {
    let Value::ArrayValue(a) = v else {
        panic!("not an array: {v:?}")
    };
    a.values
        .iter()
        .map(|x| match &x.value {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

/// Runs a two-exec sandbox through a real Recorder with the exporter observing; returns the
/// events as recorded (after redaction).
fn record_sandbox(exp: &OtlpExporter, dir: &std::path::Path) -> Vec<Event> {
    let state = StateDir(dir.to_path_buf());
    let mut rec = Recorder::open(&state, "sb-otlp-1", Redactor::new([CANARY.to_string()])).unwrap();
    rec.add_observer(exp.observer());
    let mut out = Vec::new();
    let mut emit = |exec: Option<&str>, v: serde_json::Value| {
        out.push(rec.emit(exec, kind(v)).unwrap());
    };
    emit(
        None,
        serde_json::json!({"type": "sandbox.created", "policy_digest": "sha256:0123abcd",
            "workspace": "/home/u/proj", "workspace_mode": "overlay",
            "enforced": {"level": "strict", "namespaces": ["user", "mount", "pid", "net"],
                "seccomp": "filter", "landlock": "full", "landlock_abi": 6,
                "cgroups": [{"controller": "memory", "version": "v2"}],
                "no_new_privs": true, "capabilities_dropped": true, "uid": 1000, "gid": 1000,
                "weakenings": []}}),
    );
    emit(
        Some("e1"),
        serde_json::json!({"type": "exec.started", "argv": ["sh", "-c", format!("echo {CANARY}")],
            "cwd": "/w", "env_names": ["PATH", "API_TOKEN"]}),
    );
    emit(
        Some("e1"),
        serde_json::json!({"type": "file.changed", "path": "out/result.txt", "change": "created",
            "size": 42}),
    );
    emit(
        Some("e1"),
        serde_json::json!({"type": "violation", "kind": "syscall", "detail": "denied by seccomp",
            "syscall": "ptrace", "errno": 1}),
    );
    emit(
        Some("e1"),
        serde_json::json!({"type": "file.changed", "path": format!("leak-{CANARY}.txt"),
            "change": "modified", "size": 7}),
    );
    emit(
        Some("e1"),
        serde_json::json!({"type": "exec.exited", "exit_code": 0, "duration_ms": 12,
            "output_bytes": 5}),
    );
    emit(
        None,
        serde_json::json!({"type": "secret.used", "name": "API_TOKEN", "host": "api.example.com", "count": 2}),
    );
    emit(
        Some("e2"),
        serde_json::json!({"type": "exec.started", "argv": ["python3", "x.py"], "cwd": "/w",
            "env_names": []}),
    );
    emit(
        Some("e2"),
        serde_json::json!({"type": "limit.hit", "limit": "memory", "value": "268435456",
            "detail": "memory.max reached"}),
    );
    emit(
        Some("e2"),
        serde_json::json!({"type": "exec.exited", "signal": 9, "duration_ms": 300,
            "output_bytes": 0, "limit": "memory"}),
    );
    emit(
        None,
        serde_json::json!({"type": "sandbox.destroyed", "reason": "limit", "clean": true,
            "leftovers": [], "duration_ms": 400}),
    );
    out
}

#[test]
fn a_sandbox_arrives_as_one_decoded_trace_with_every_event() {
    let (url, rx) = receiver(vec![ok()]);
    let exp = OtlpExporter::new(&url, "stockade-test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = record_sandbox(&exp, dir.path());
    exp.flush(Duration::from_secs(5)).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let first = got.head.lines().next().unwrap();
    assert_eq!(first, "POST /v1/traces HTTP/1.1");
    assert!(
        got.head
            .to_ascii_lowercase()
            .contains("content-type: application/x-protobuf\r\n"),
        "{}",
        got.head
    );
    // The secret never reaches the receiver, though the fields that held it did.
    let raw = &got.body;
    assert!(!raw.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
    assert!(raw.windows(10).any(|w| w == b"[REDACTED]"));

    let req = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap();
    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let res = rs.resource.as_ref().unwrap();
    assert_eq!(attr(&res.attributes, "service.name"), &s("stockade-test"));
    assert_eq!(
        attr(&res.attributes, "service.version"),
        &s(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(rs.scope_spans.len(), 1);
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 3, "one sandbox span and one per exec");

    let root = &spans[0];
    assert_eq!(root.name, "sandbox");
    assert!(root.parent_span_id.is_empty());
    assert_eq!(root.trace_id.len(), 16);
    assert_ne!(root.trace_id, vec![0; 16]);
    assert_eq!(root.span_id.len(), 8);
    let exec = |id: &str| -> &Span {
        spans
            .iter()
            .find(|sp| {
                sp.name == "exec"
                    && sp.attributes.iter().any(|kv| {
                        kv.key == "stockade.exec_id"
                            && kv.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&s(id))
                    })
            })
            .unwrap_or_else(|| panic!("no exec span {id}"))
    };
    let (e1, e2) = (exec("e1"), exec("e2"));
    for child in [e1, e2] {
        assert_eq!(child.trace_id, root.trace_id, "one trace per sandbox");
        assert_eq!(child.parent_span_id, root.span_id);
        assert_eq!(child.span_id.len(), 8);
    }
    assert_ne!(e1.span_id, e2.span_id);

    // Span times are the lifecycle events' `at`.
    let at = |ty: &str, exec: Option<&str>| {
        let e = events
            .iter()
            .find(|e| e.kind.type_name() == ty && e.exec_id.as_deref() == exec)
            .unwrap();
        nanos(&e.at)
    };
    assert_eq!(root.start_time_unix_nano, at("sandbox.created", None));
    assert_eq!(root.end_time_unix_nano, at("sandbox.destroyed", None));
    assert_eq!(e1.start_time_unix_nano, at("exec.started", Some("e1")));
    assert_eq!(e1.end_time_unix_nano, at("exec.exited", Some("e1")));
    assert_eq!(e2.start_time_unix_nano, at("exec.started", Some("e2")));
    assert_eq!(e2.end_time_unix_nano, at("exec.exited", Some("e2")));

    // Span attributes and status.
    let ra = &root.attributes;
    assert_eq!(attr(ra, "stockade.sandbox_id"), &s("sb-otlp-1"));
    assert_eq!(attr(ra, "stockade.policy_digest"), &s("sha256:0123abcd"));
    assert_eq!(attr(ra, "stockade.level"), &s("strict"));
    assert_eq!(attr(ra, "stockade.enforced.seccomp"), &s("filter"));
    assert_eq!(
        attr(ra, "stockade.enforced.landlock_abi"),
        &Value::IntValue(6)
    );
    assert_eq!(
        strings(attr(ra, "stockade.enforced.namespaces")),
        ["user", "mount", "pid", "net"]
    );
    assert_eq!(attr(ra, "stockade.destroyed.reason"), &s("limit"));
    assert_eq!(
        attr(ra, "stockade.destroyed.clean"),
        &Value::BoolValue(true)
    );
    let status = root.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.contains("limit"), "{}", status.message);

    assert_eq!(
        strings(attr(&e1.attributes, "stockade.argv")),
        ["sh", "-c", "echo [REDACTED]"]
    );
    assert_eq!(
        attr(&e1.attributes, "stockade.exit_code"),
        &Value::IntValue(0)
    );
    assert!(e1.status.is_none(), "a clean exit is not an error");
    assert_eq!(attr(&e2.attributes, "stockade.signal"), &Value::IntValue(9));
    assert_eq!(attr(&e2.attributes, "stockade.limit"), &s("memory"));
    assert_eq!(
        e2.status.as_ref().map(|st| st.code),
        Some(StatusCode::Error as i32)
    );

    // Every event is a span event, on its exec's span or the sandbox span, in seq order.
    let mut seen = Vec::new();
    for sp in spans {
        let exec_id = sp
            .attributes
            .iter()
            .find(|kv| kv.key == "stockade.exec_id")
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(x)) => x.clone(),
                    other => panic!("{other:?}"),
                },
            );
        let seqs: Vec<u64> = sp
            .events
            .iter()
            .map(|ev| match attr(&ev.attributes, "stockade.seq") {
                Value::IntValue(n) => u64::try_from(*n).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seq order kept: {seqs:?}"
        );
        for (ev, seq) in sp.events.iter().zip(seqs) {
            let e = events.iter().find(|e| e.seq == seq).unwrap();
            assert_eq!(ev.name, e.kind.type_name());
            assert_eq!(ev.time_unix_nano, nanos(&e.at));
            assert_eq!(e.exec_id, exec_id, "event {seq} on the wrong span");
            seen.push((seq, ev));
        }
        assert_eq!(sp.dropped_events_count, 0);
    }
    seen.sort_by_key(|(seq, _)| *seq);
    assert_eq!(
        seen.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "every emitted event is exported once"
    );
    let ev = |seq: usize| &seen[seq - 1].1.attributes;
    // file.changed (seq 3): its fields, flattened.
    assert_eq!(attr(ev(3), "path"), &s("out/result.txt"));
    assert_eq!(attr(ev(3), "change"), &s("created"));
    assert_eq!(attr(ev(3), "size"), &Value::IntValue(42));
    // violation (seq 4).
    assert_eq!(attr(ev(4), "kind"), &s("syscall"));
    assert_eq!(attr(ev(4), "syscall"), &s("ptrace"));
    assert_eq!(attr(ev(4), "errno"), &Value::IntValue(1));
    // The redacted path (seq 5) arrived redacted.
    assert_eq!(attr(ev(5), "path"), &s("leak-[REDACTED].txt"));
    // sandbox.created (seq 1): nested objects as dotted keys, arrays of objects as kvlists.
    assert_eq!(attr(ev(1), "enforced.level"), &s("strict"));
    let Value::ArrayValue(cg) = attr(ev(1), "enforced.cgroups") else {
        panic!()
    };
    let Some(Value::KvlistValue(kvl)) = &cg.values[0].value else {
        panic!("{cg:?}")
    };
    assert_eq!(attr(&kvl.values, "controller"), &s("memory"));
    // An absent optional field is left out, not sent empty.
    assert!(ev(6).iter().all(|kv| kv.key != "signal"));

    // Sent once: nothing is left to send.
    exp.flush(Duration::from_secs(1)).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

fn one_event(exp: &OtlpExporter) {
    let mut obs = exp.observer();
    obs(&Event {
        schema_version: 1,
        seq: 1,
        at: "2026-11-27T16:20:00.123456Z".into(),
        sandbox_id: "sb-x".into(),
        exec_id: None,
        kind: kind(serde_json::json!({"type": "file.read", "path": "secrets.txt"})),
    });
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[test]
fn a_receiver_that_is_down_fails_the_flush_quickly_naming_the_url() {
    let url = dead_url();
    let exp = OtlpExporter::new(&url, "t").unwrap();
    one_event(&exp);
    let t = Instant::now();
    let err = exp.flush(Duration::from_secs(3)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(matches!(err, OtlpError::Send { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("{url}/v1/traces")),
        "{err}"
    );
}

#[test]
fn a_receiver_that_never_answers_cannot_hold_flush_past_its_timeout() {
    let (url, rx) = receiver(vec![Reply::Silence(Duration::from_secs(10))]);
    let exp = OtlpExporter::new(&url, "t").unwrap();
    one_event(&exp);
    let t = Instant::now();
    let err = exp.flush(Duration::from_millis(500)).unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(2000), "{took:?}");
    // It did connect and send: the timeout, not a refusal, ended it.
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_ok());
    assert!(
        matches!(
            err,
            OtlpError::Send {
                source: ureq::Error::Timeout(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("within 500ms"), "{err}");
}

#[test]
fn a_500_is_an_error_naming_the_status_and_a_retry_sends_the_same_trace() {
    let (url, rx) = receiver(vec![Reply::With(500, "text/plain", b"boom".to_vec()), ok()]);
    let exp = OtlpExporter::new(&url, "t").unwrap();
    one_event(&exp);
    let err = exp.flush(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(err, OtlpError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("HTTP 500 Internal Server Error"),
        "{err}"
    );
    exp.flush(Duration::from_secs(5)).unwrap();
    let (a, b) = (
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
    );
    assert_eq!(a.body, b.body, "the kept events are sent again, the same");
    let req = ExportTraceServiceRequest::decode(b.body.as_slice()).unwrap();
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.events[0].name, "file.read");
}

#[test]
fn a_redirect_is_not_followed() {
    let (url, rx) = receiver(vec![Reply::With(307, "text/plain", Vec::new())]);
    let exp = OtlpExporter::new(&url, "t").unwrap();
    one_event(&exp);
    let err = exp.flush(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(err, OtlpError::Status { status: 307, .. }),
        "{err:?}"
    );
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
}

#[test]
fn rejected_spans_in_a_200_are_an_error() {
    let answer = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 1,
            error_message: "span too old\n".into(),
        }),
    }
    .encode_to_vec();
    let (url, _rx) = receiver(vec![Reply::With(200, "application/x-protobuf", answer)]);
    let exp = OtlpExporter::new(&url, "t").unwrap();
    one_event(&exp);
    let err = exp.flush(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(err, OtlpError::Rejected { rejected: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("rejected 1 span(s): span too old"),
        "{err}"
    );
}

#[test]
fn nothing_collected_sends_nothing() {
    // Were a request attempted, the dead port would make this an error.
    let exp = OtlpExporter::new(&dead_url(), "t").unwrap();
    exp.flush(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_flag_endpoint_is_a_base_url() {
    let exp = OtlpExporter::from_flag_or_env(Some("http://127.0.0.1:4318/"))
        .unwrap()
        .unwrap();
    assert_eq!(exp.url(), "http://127.0.0.1:4318/v1/traces");
    assert!(OtlpExporter::from_flag_or_env(Some("grpc://127.0.0.1:4317")).is_err());
}
