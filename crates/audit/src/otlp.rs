//! OpenTelemetry export of the audit trail over OTLP/HTTP (protobuf), for `--otlp-endpoint` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT`.
//!
//! An [`OtlpExporter`] collects the events a [`Recorder`](crate::Recorder) emits (through
//! [`OtlpExporter::observer`], so it sees them *after* redaction: no secret value handed to the
//! [`Redactor`](crate::Redactor) reaches the exporter) and [`OtlpExporter::flush`] POSTs them as
//! one `ExportTraceServiceRequest` to `{endpoint}/v1/traces`.
//!
//! # Mapping
//!
//! - **Resource**: `service.name` (the given name; `OTEL_SERVICE_NAME` or `stockade` from the
//!   environment) and `service.version`; one instrumentation scope, `stockade-audit`.
//! - **One trace per sandbox.** Its trace id is 16 bytes derived from the sandbox id alone (a
//!   128-bit FNV-1a hash), so every export of a sandbox lands in the same trace; span ids are
//!   derived the same way from (sandbox id) and (sandbox id, exec id). Ids are not secret.
//! - **Root span `sandbox`**, from `sandbox.created`'s `at` to `sandbox.destroyed`'s `at` (without
//!   those events: from the first to the last event seen). Attributes: `stockade.sandbox_id`,
//!   `stockade.level`, and the `sandbox.created` fields under `stockade.` (`stockade.policy_digest`,
//!   `stockade.workspace`, `stockade.workspace_mode`, `stockade.enforced.namespaces`,
//!   `stockade.enforced.seccomp`, `stockade.enforced.landlock_abi`, `stockade.enforced.cgroups`,
//!   `stockade.enforced.weakenings`, ...), the `sandbox.destroyed` fields under
//!   `stockade.destroyed.` (`reason`, `clean`, `leftovers`, `duration_ms`). Status ERROR when the
//!   sandbox ended by `error`, `limit` or `timeout`; unset otherwise.
//! - **Child span `exec`** per exec id, parent the sandbox span, from `exec.started`'s `at` to
//!   `exec.exited`'s `at` (an exec that never exited ends with the sandbox span). Attributes:
//!   `stockade.exec_id` and the fields of both events under `stockade.` (`stockade.argv` as a
//!   string array, `stockade.cwd`, `stockade.env_names`, `stockade.exit_code` or
//!   `stockade.signal`, `stockade.limit`, `stockade.duration_ms`, `stockade.cpu_time_ms`, ...).
//!   Status ERROR when a limit ended it.
//! - **Every event is a span event** on the exec span when it has an `exec_id`, else on the
//!   sandbox span, in `seq` order: name = its type (`file.changed`), time = its `at`, attributes
//!   = `stockade.seq` and its fields flattened (nested objects as dotted keys, `enforced.level`;
//!   arrays as array values, arrays of objects as arrays of key-value lists; absent optional
//!   fields left out; integers as `int`).
//!
//! # Guarantees
//!
//! [`OtlpExporter::flush`] returns within its timeout (connect, send and answer included) and
//! never panics; it is Ok only when the receiver answered 2xx and did not report rejected spans.
//! On an error the events are kept, so a later flush sends them again; on success they are
//! dropped. Redirects are not followed (a 3xx is an error). Proxies come from `HTTPS_PROXY` /
//! `HTTP_PROXY` / `NO_PROXY`, except that a loopback endpoint is always reached directly.
//! Tested in `tests/otlp.rs` against a real HTTP receiver on 127.0.0.1 that decodes what arrives.
//!
//! # Limitations
//!
//! - OTLP/HTTP with protobuf only: no gRPC, no JSON, no gzip, no `OTEL_EXPORTER_OTLP_HEADERS`
//!   (a receiver that needs an auth header needs a local collector in front of it).
//! - No retry with backoff on 429/503: one attempt per flush; the caller decides.
//! - `flush` is meant to be called once, after `sandbox.destroyed`. A flush before that sends a
//!   sandbox span ending at the last event so far; events after a successful flush form a new
//!   batch whose spans reuse the same ids but carry only the later events.
//! - At most [`MAX_DETAIL_EVENTS`] events that do not open or close a span are kept between two
//!   flushes; past that they are counted in the span's `dropped_events_count`, not sent.
//! - `https://` endpoints use rustls with the webpki roots, but only plain HTTP is tested here.

mod attrs;
mod map;

use crate::{Event, Observer};
use map::SpanKey;
use prost::Message;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Events other than sandbox/exec start and end kept between two flushes.
pub const MAX_DETAIL_EVENTS: usize = 10_000;
/// The answer body read at most (a partial-success message is a few hundred bytes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(
        "OTLP endpoint {endpoint:?} is not usable: {reason}; give an http:// or https:// base URL \
         such as http://127.0.0.1:4318 (traces go to its /v1/traces)"
    )]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error(
        "{var}={value:?} asks for OTLP over {value}, but stockade exports only http/protobuf; \
         point the endpoint at the receiver's OTLP/HTTP port (usually 4318) and set {var} to \
         http/protobuf or unset it"
    )]
    UnsupportedProtocol { var: &'static str, value: String },
    #[error(
        "audit event {seq} has an unreadable timestamp {at:?} (expected RFC 3339 UTC); the \
         trace was not sent"
    )]
    Timestamp { seq: u64, at: String },
    #[error(
        "could not deliver the trace to {url} within {}: {source}; check that an OTLP/HTTP \
         receiver listens there", humantime::format_duration(*.timeout)
    )]
    Send {
        url: String,
        timeout: Duration,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "the OTLP receiver at {url} answered HTTP {status} {reason}; the trace was not accepted \
         (check the receiver's log)"
    )]
    Status {
        url: String,
        status: u16,
        reason: &'static str,
    },
    #[error("the OTLP receiver at {url} rejected {rejected} span(s): {message}")]
    Rejected {
        url: String,
        rejected: i64,
        message: String,
    },
}

/// Events waiting for the next flush.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    /// Of `events`, how many do not open or close a span.
    detail: usize,
    dropped: BTreeMap<SpanKey, u32>,
}

impl Pending {
    fn push(&mut self, e: &Event) {
        let opens_or_closes = map::defines_a_span(&e.kind);
        if !opens_or_closes && self.detail >= MAX_DETAIL_EVENTS {
            let n = self
                .dropped
                .entry((e.sandbox_id.clone(), e.exec_id.clone()))
                .or_default();
            *n = n.saturating_add(1);
            return;
        }
        self.detail += usize::from(!opens_or_closes);
        self.events.push(e.clone());
    }

    /// Forgets the first `n` events and the `dropped` counts that were sent with them.
    fn sent(&mut self, n: usize, dropped: &BTreeMap<SpanKey, u32>) {
        let gone = self.events.drain(..n.min(self.events.len()));
        let detail = gone.filter(|e| !map::defines_a_span(&e.kind)).count();
        self.detail = self.detail.saturating_sub(detail);
        for (k, sent) in dropped {
            if let Some(v) = self.dropped.get_mut(k) {
                *v = v.saturating_sub(*sent);
            }
        }
        self.dropped.retain(|_, v| *v > 0);
    }
}

/// Collects audit events and exports them as OTLP traces (see the module doc for the mapping).
pub struct OtlpExporter {
    url: String,
    service_name: String,
    /// Loopback endpoints never go through an environment proxy.
    direct: bool,
    pending: Arc<Mutex<Pending>>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("url", &self.url)
            .field("service_name", &self.service_name)
            .finish_non_exhaustive()
    }
}

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // A panic elsewhere while holding the lock leaves a Vec that is still whole.
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OtlpExporter {
    /// `endpoint` is a base URL like `http://127.0.0.1:4318` (as `OTEL_EXPORTER_OTLP_ENDPOINT`):
    /// traces go to `{endpoint}/v1/traces`. Errors when it is not an http(s) URL with a host, or
    /// carries credentials, a query or a fragment.
    pub fn new(endpoint: &str, service_name: &str) -> Result<OtlpExporter, OtlpError> {
        let base = endpoint.trim();
        if base.contains(['?', '#']) {
            return Err(invalid(endpoint, "a base URL has no query or fragment"));
        }
        let url = format!("{}/v1/traces", base.trim_end_matches('/'));
        OtlpExporter::build(endpoint, url, service_name)
    }

    /// `url` is the exact URL traces are POSTed to (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub fn for_traces_url(url: &str, service_name: &str) -> Result<OtlpExporter, OtlpError> {
        OtlpExporter::build(url, url.trim().to_string(), service_name)
    }

    /// The endpoint from the flag (a base URL) or, when None, from the environment:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (exact URL) before `OTEL_EXPORTER_OTLP_ENDPOINT` (base
    /// URL); the service name from `OTEL_SERVICE_NAME`, else `stockade`. Ok(None) when neither
    /// is set (or set empty). An endpoint from the environment with
    /// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` other than `http/protobuf` is an error.
    pub fn from_flag_or_env(flag: Option<&str>) -> Result<Option<OtlpExporter>, OtlpError> {
        resolve(flag, &|k| {
            std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
        })
    }

    fn build(shown: &str, url: String, service_name: &str) -> Result<OtlpExporter, OtlpError> {
        if !url.contains("://") {
            return Err(invalid(shown, "no scheme"));
        }
        let uri: ureq::http::Uri = url.parse().map_err(|e| invalid(shown, &format!("{e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(other) => return Err(invalid(shown, &format!("scheme {other:?}"))),
            None => return Err(invalid(shown, "no scheme")),
        }
        let Some(authority) = uri.authority() else {
            return Err(invalid(shown, "no host"));
        };
        if authority.as_str().contains('@') {
            return Err(invalid(
                shown,
                "credentials in the URL would be written to logs; use a local collector",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid(shown, "no host"));
        }
        let direct = host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        Ok(OtlpExporter {
            url,
            service_name: service_name.to_string(),
            direct,
            pending: Arc::default(),
        })
    }

    /// The URL traces are POSTed to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An observer for [`Recorder::add_observer`](crate::Recorder::add_observer); it only
    /// collects (no I/O). Several recorders may share one exporter: each sandbox is its own trace.
    pub fn observer(&self) -> Observer {
        let pending = Arc::clone(&self.pending);
        Box::new(move |e: &Event| lock(&pending).push(e))
    }

    /// Builds the trace of the events collected so far and POSTs it (protobuf,
    /// `Content-Type: application/x-protobuf`), all within `timeout`. Ok without any request
    /// when nothing was collected. Err, keeping the events, when the receiver cannot be reached
    /// in time, answers other than 2xx, or reports rejected spans. The lock is not held while
    /// sending, so a recorder still emitting is never blocked by a slow receiver.
    pub fn flush(&self, timeout: Duration) -> Result<(), OtlpError> {
        let (n, dropped, body) = {
            let p = lock(&self.pending);
            if p.events.is_empty() && p.dropped.is_empty() {
                return Ok(());
            }
            let req = map::request(&p.events, &p.dropped, &self.service_name)?;
            (p.events.len(), p.dropped.clone(), req.encode_to_vec())
        };
        self.post(&body, timeout)?;
        lock(&self.pending).sent(n, &dropped);
        Ok(())
    }

    fn post(&self, body: &[u8], timeout: Duration) -> Result<(), OtlpError> {
        let send_err = |source| OtlpError::Send {
            url: self.url.clone(),
            timeout,
            source,
        };
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0);
        if self.direct {
            config = config.proxy(None);
        }
        let agent = ureq::Agent::new_with_config(config.build());
        let mut answer = agent
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf")
            .header(
                "User-Agent",
                concat!("stockade/", env!("CARGO_PKG_VERSION")),
            )
            .send(body)
            .map_err(send_err)?;
        let status = answer.status();
        if !status.is_success() {
            return Err(OtlpError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or(""),
            });
        }
        let protobuf = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-protobuf"));
        let bytes = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(send_err)?;
        if !protobuf {
            return Ok(());
        }
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        // An answer we cannot decode is not a rejection: the status already said 2xx.
        let partial = ExportTraceServiceResponse::decode(bytes.as_slice())
            .ok()
            .and_then(|r| r.partial_success);
        match partial {
            Some(p) if p.rejected_spans > 0 => Err(OtlpError::Rejected {
                url: self.url.clone(),
                rejected: p.rejected_spans,
                message: printable(&p.error_message),
            }),
            _ => Ok(()),
        }
    }
}

fn invalid(endpoint: &str, reason: &str) -> OtlpError {
    OtlpError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    }
}

/// The receiver's words, bounded and without control characters, for an error message.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// [`OtlpExporter::from_flag_or_env`] with the environment as a function (for tests).
fn resolve(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<OtlpExporter>, OtlpError> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let service = set("OTEL_SERVICE_NAME").unwrap_or_else(|| "stockade".into());
    if let Some(f) = flag {
        return OtlpExporter::new(f, &service).map(Some);
    }
    let traces = set(TRACES_ENDPOINT_VAR);
    let base = set(ENDPOINT_VAR);
    if traces.is_none() && base.is_none() {
        return Ok(None);
    }
    if let Some((var, value)) = PROTOCOL_VARS
        .iter()
        .find_map(|v| set(v).map(|value| (*v, value)))
        && value.trim() != "http/protobuf"
    {
        return Err(OtlpError::UnsupportedProtocol { var, value });
    }
    match (traces, base) {
        (Some(url), _) => OtlpExporter::for_traces_url(&url, &service).map(Some),
        (None, Some(b)) => OtlpExporter::new(&b, &service).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)], flag: Option<&str>) -> Result<Option<OtlpExporter>, OtlpError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(flag, &|k| m.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_no_exporter() {
        assert!(with(&[], None).unwrap().is_none());
        assert!(with(&[(ENDPOINT_VAR, " ")], None).unwrap().is_none());
    }

    #[test]
    fn flag_beats_env_and_traces_endpoint_beats_base() {
        let env = [
            (ENDPOINT_VAR, "http://127.0.0.1:1/"),
            (TRACES_ENDPOINT_VAR, "http://127.0.0.1:2/custom"),
            ("OTEL_SERVICE_NAME", "agentbox"),
        ];
        let e = with(&env, Some("http://localhost:3/otlp/"))
            .unwrap()
            .unwrap();
        assert_eq!(e.url(), "http://localhost:3/otlp/v1/traces");
        assert_eq!(e.service_name, "agentbox");
        assert!(e.direct);
        let e = with(&env, None).unwrap().unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:2/custom");
        let e = with(&env[..1], None).unwrap().unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:1/v1/traces");
        assert_eq!(e.service_name, "stockade");
    }

    #[test]
    fn a_grpc_protocol_from_the_env_is_refused_with_the_variable_named() {
        let env = [
            (ENDPOINT_VAR, "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let err = with(&env, None).unwrap_err().to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\""),
            "{err}"
        );
        let ok = [
            (ENDPOINT_VAR, "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert!(with(&ok, None).unwrap().is_some());
        // The flag says where and how: a protocol meant for other tools does not stop it.
        assert!(with(&env[1..], Some("http://127.0.0.1:4318")).is_ok());
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "no scheme"),
            ("127.0.0.1:4318", "no scheme"),
            ("ftp://127.0.0.1", "scheme \"ftp\""),
            ("http://user:pw@collector:4318", "credentials"),
            ("http://collector:4318/?x=1", "query"),
            ("http://", "not usable"),
        ] {
            let err = OtlpExporter::new(bad, "s").unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let remote = OtlpExporter::new("https://collector.example:4318", "s").unwrap();
        assert!(!remote.direct);
        assert!(OtlpExporter::new("http://[::1]:4318", "s").unwrap().direct);
    }

    #[test]
    fn detail_events_past_the_cap_are_counted_not_kept_and_forgotten_once_sent() {
        let mut p = Pending::default();
        let mut e = Event {
            schema_version: 1,
            seq: 0,
            at: String::new(),
            sandbox_id: "s".into(),
            exec_id: Some("x".into()),
            kind: crate::EventKind::FileRead { path: "p".into() },
        };
        for i in 0..MAX_DETAIL_EVENTS + 3 {
            e.seq = i as u64;
            p.push(&e);
        }
        e.kind = crate::EventKind::ExecExited {
            exit_code: Some(0),
            signal: None,
            duration_ms: 1,
            cpu_time_ms: None,
            peak_memory_bytes: None,
            output_bytes: 0,
            limit: None,
        };
        p.push(&e);
        assert_eq!(p.events.len(), MAX_DETAIL_EVENTS + 1);
        let key = ("s".to_string(), Some("x".to_string()));
        assert_eq!(p.dropped.get(&key), Some(&3));
        let dropped = p.dropped.clone();
        p.push(&e);
        p.sent(MAX_DETAIL_EVENTS + 1, &dropped);
        assert_eq!((p.events.len(), p.detail), (1, 0));
        assert!(p.dropped.is_empty());
    }
}
