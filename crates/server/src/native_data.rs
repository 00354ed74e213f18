//! Native data plane: everything done *inside* one sandbox, under `/v1/sandboxes/{id}/...`.
//!
//! - exec: `POST .../exec` (server-sent events, or `?wait=true` for one JSON answer), WebSocket
//!   `GET .../exec/ws` (stdin, PTY, resize, signals), re-attach `GET .../exec/{pid}/ws`,
//!   `GET .../processes`, `POST .../processes/{pid}/signal` ([`exec`]);
//! - files: `GET|PUT|DELETE .../files?path=`, `.../files/list|stat|mkdir|move|watch` ([`files`]);
//! - `GET .../events` (the sandbox's audit trail as a JSON array) and `GET .../usage`.
//!
//! Every request is authorised by the owner's API key or the sandbox's `X-Access-Token`
//! ([`Service::get_for_data`](crate::service::Service::get_for_data)).
//!
//! Guarantees: every file operation runs through the sandbox's agent
//! ([`Session::fs`](stockade_runtime::session::Session::fs), `open_read`, `open_write`, `watch`),
//! inside the sandbox, under its uid, mount namespace, Landlock and seccomp; the server never opens
//! a host path built from request input, so `..`, absolute paths and symlinks resolve in the
//! sandbox's own view. Uploads and downloads stream through the descriptor the agent opened, with
//! caps ([`Limits`]); an upload is written to a temporary file next to its target and renamed into
//! place only when complete, so a refused or failed upload leaves the target as it was.
//! The exact bodies are in `crates/server/openapi.json`; `tests` below check that every route
//! served is documented there, and `crates/cli/tests/serve_data.rs` drives each one through the
//! real binary.

pub mod exec;
pub mod files;

use crate::AppState;
use crate::error::ApiError;
use crate::service::Sandbox;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;
use stockade_runtime::session::SessionError;

/// Default cap of one upload (`stockade serve --max-upload`).
pub const DEFAULT_MAX_UPLOAD: u64 = 100 << 20;
/// Default cap of one download (`stockade serve --max-download`).
pub const DEFAULT_MAX_DOWNLOAD: u64 = 256 << 20;

/// Size caps of file transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_upload: u64,
    pub max_download: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload: DEFAULT_MAX_UPLOAD,
            max_download: DEFAULT_MAX_DOWNLOAD,
        }
    }
}

/// The caps in force for this server.
pub(crate) fn limits(st: &AppState) -> Limits {
    let c = st.svc.config();
    Limits {
        max_upload: c.max_upload,
        max_download: c.max_download,
    }
}

pub fn routes() -> Router<AppState> {
    const S: &str = "/v1/sandboxes/{id}";
    Router::new()
        .route(&format!("{S}/exec"), post(exec::exec))
        .route(&format!("{S}/exec/ws"), get(exec::exec_ws))
        .route(&format!("{S}/exec/{{pid}}/ws"), get(exec::attach_ws))
        .route(&format!("{S}/processes"), get(exec::processes))
        .route(&format!("{S}/processes/{{pid}}/signal"), post(exec::signal))
        .route(
            &format!("{S}/files"),
            get(files::download)
                .put(files::upload)
                .delete(files::remove),
        )
        .route(&format!("{S}/files/list"), get(files::list))
        .route(&format!("{S}/files/stat"), get(files::stat))
        .route(&format!("{S}/files/mkdir"), post(files::mkdir))
        .route(&format!("{S}/files/move"), post(files::move_))
        .route(&format!("{S}/files/watch"), get(files::watch))
        .route(&format!("{S}/events"), get(events))
        .route(&format!("{S}/usage"), get(usage))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A failed data-plane request: the native error shape with codes beyond [`ApiError`]'s
/// (`command_not_found`, `disk_full`, ...). Messages never carry a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl DataError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        DataError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        DataError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl IntoResponse for DataError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<ApiError> for DataError {
    fn from(e: ApiError) -> Self {
        DataError::new(e.status(), e.code(), e.message())
    }
}

impl From<axum::extract::rejection::JsonRejection> for DataError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::from(r).into()
    }
}

impl From<axum::extract::rejection::QueryRejection> for DataError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::from(r).into()
    }
}

impl From<SessionError> for DataError {
    fn from(e: SessionError) -> Self {
        session_error(e)
    }
}

/// How a failure inside the sandbox is answered (also for the E2B layer).
pub fn session_error(e: SessionError) -> DataError {
    match e {
        SessionError::Gone => DataError::new(
            StatusCode::GONE,
            "sandbox_ended",
            "the sandbox has ended (destroyed, expired, or its agent is gone)",
        ),
        SessionError::ExecRefused { code, message } => match code {
            127 => DataError::new(StatusCode::BAD_REQUEST, "command_not_found", message),
            126 => DataError::new(StatusCode::BAD_REQUEST, "command_not_executable", message),
            _ => DataError::new(StatusCode::BAD_REQUEST, "exec_failed", message),
        },
        SessionError::Fs { errno, message } => fs_error(errno, message),
        SessionError::Invalid(m) => DataError::bad_request(m),
        SessionError::Protocol(m) => {
            tracing::error!(error = %m, "agent protocol");
            DataError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the sandbox's agent answered out of protocol; see the server log",
            )
        }
    }
}

/// A file operation's errno inside the sandbox as a status and code.
pub fn fs_error(errno: i32, message: String) -> DataError {
    let (status, code) = match errno {
        libc::ENOENT => (StatusCode::NOT_FOUND, "not_found"),
        libc::EACCES | libc::EPERM | libc::EROFS => (StatusCode::FORBIDDEN, "forbidden"),
        libc::EEXIST | libc::ENOTEMPTY => (StatusCode::CONFLICT, "already_exists"),
        libc::ENOTDIR => (StatusCode::BAD_REQUEST, "not_a_directory"),
        libc::EISDIR => (StatusCode::BAD_REQUEST, "is_a_directory"),
        libc::EINVAL | libc::ELOOP | libc::ENAMETOOLONG | libc::EXDEV => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        libc::ENOSPC | libc::EDQUOT => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
        libc::EFBIG => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let code = if errno == libc::ENOTEMPTY {
        "not_empty"
    } else {
        code
    };
    DataError::new(status, code, message)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// The sandbox a data-plane request may use (401/404 otherwise).
pub(crate) fn authorize(
    st: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Arc<Sandbox>, DataError> {
    let creds = crate::auth::credentials(headers)?;
    Ok(st.svc.get_for_data(id, creds)?)
}

/// A path from a request as an absolute path inside the sandbox: absolute paths are taken as
/// they are, `~` and `~/x` and relative paths are under the sandbox's home. Nothing is
/// normalised here: `..` and symlinks are resolved by the agent, inside.
pub fn resolve_path(home: &str, p: &str) -> Result<String, DataError> {
    if p.is_empty() {
        return Err(DataError::bad_request(
            "path is empty: give an absolute path inside the sandbox, or one relative to its home",
        ));
    }
    if p.contains('\0') {
        return Err(DataError::bad_request("path contains a NUL byte"));
    }
    if p.len() > 4096 {
        return Err(DataError::bad_request("path is longer than 4096 bytes"));
    }
    let home = home.trim_end_matches('/');
    Ok(if p.starts_with('/') {
        p.to_string()
    } else if p == "~" {
        if home.is_empty() {
            "/".into()
        } else {
            home.to_string()
        }
    } else if let Some(rest) = p.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else {
        format!("{home}/{p}")
    })
}

// ---------------------------------------------------------------------------------------------
// Events, usage

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only events with a greater `seq`.
    since: Option<u64>,
}

async fn events(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let Some(log) = sb.session.audit_log() else {
        return Err(DataError::new(
            StatusCode::CONFLICT,
            "audit_disabled",
            "this sandbox's policy turned auditing off (audit.enabled = false): it has no events",
        ));
    };
    let read = tokio::task::spawn_blocking(move || stockade_audit::read_log(&log)).await;
    let events = match read {
        Ok(Ok(l)) => l.events,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Ok(Err(e)) => {
            tracing::error!(sandbox_id = %sb.id, error = %e, "reading the audit log");
            return Err(DataError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the sandbox's audit log could not be read; see the server log",
            ));
        }
        Err(e) => {
            return Err(DataError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("reading the audit log: {e}"),
            ));
        }
    };
    let since = q.since.unwrap_or(0);
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| q.since.is_none() || e.seq > since)
        .collect();
    Ok(Json(events).into_response())
}

async fn usage(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    Ok(Json(sb.session.usage()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn paths_resolve_against_home() {
        let h = "/home/sandbox";
        assert_eq!(resolve_path(h, "/etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(resolve_path(h, "a/b").unwrap(), "/home/sandbox/a/b");
        assert_eq!(resolve_path(h, "~").unwrap(), "/home/sandbox");
        assert_eq!(resolve_path(h, "~/x").unwrap(), "/home/sandbox/x");
        // `..` is left to the agent, which resolves it inside the sandbox's own view.
        assert_eq!(
            resolve_path(h, "../../etc/shadow").unwrap(),
            "/home/sandbox/../../etc/shadow"
        );
        assert_eq!(resolve_path("/home/u/", "x").unwrap(), "/home/u/x");
        assert_eq!(resolve_path(h, "").unwrap_err().code, "bad_request");
        assert_eq!(resolve_path(h, "a\0b").unwrap_err().code, "bad_request");
        assert_eq!(
            resolve_path(h, &"a".repeat(5000)).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn errors_map_to_status_and_code() {
        let f = |errno| {
            let e = fs_error(errno, "m".into());
            (e.status.as_u16(), e.code)
        };
        assert_eq!(f(libc::ENOENT), (404, "not_found"));
        assert_eq!(f(libc::EACCES), (403, "forbidden"));
        assert_eq!(f(libc::EPERM), (403, "forbidden"));
        assert_eq!(f(libc::EROFS), (403, "forbidden"));
        assert_eq!(f(libc::EEXIST), (409, "already_exists"));
        assert_eq!(f(libc::ENOTDIR), (400, "not_a_directory"));
        assert_eq!(f(libc::EISDIR), (400, "is_a_directory"));
        assert_eq!(f(libc::EINVAL), (400, "bad_request"));
        assert_eq!(f(libc::ENOSPC), (507, "disk_full"));
        assert_eq!(f(libc::EIO), (500, "internal"));
        let e = session_error(SessionError::ExecRefused {
            code: 127,
            message: "nope: not found".into(),
        });
        assert_eq!((e.status.as_u16(), e.code), (400, "command_not_found"));
        let e = session_error(SessionError::ExecRefused {
            code: 126,
            message: "x".into(),
        });
        assert_eq!(e.code, "command_not_executable");
        assert_eq!(session_error(SessionError::Gone).status.as_u16(), 410);
        let e = session_error(SessionError::Protocol("secret detail".into()));
        assert!(!e.message.contains("secret detail"));
    }

    /// `(METHOD, path)` of every `.route(...)` in a source file (paths as written, with `{S}`
    /// expanded to `/v1/sandboxes/{id}` and `{{`/`}}` unescaped).
    fn routes_in(src: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        // Only the code, not its tests (which mention `.route(` themselves).
        let mut rest = src.split("#[cfg(test)]").next().unwrap();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            // The call's text, up to its closing parenthesis.
            let mut depth = 1;
            let mut end = 0;
            for (j, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[..end];
            let q1 = call.find('"').unwrap();
            let q2 = q1 + 1 + call[q1 + 1..].find('"').unwrap();
            let path = call[q1 + 1..q2]
                .replace("{S}", "/v1/sandboxes/{id}")
                .replace("{{", "{")
                .replace("}}", "}");
            let handlers = &call[q2 + 1..];
            for m in ["get", "post", "put", "delete", "patch"] {
                let found = handlers.match_indices(&format!("{m}(")).any(|(k, _)| {
                    k == 0 || {
                        let prev = handlers.as_bytes()[k - 1];
                        !(prev.is_ascii_alphanumeric() || prev == b'_')
                    }
                });
                if found {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
            rest = &rest[end..];
        }
        out
    }

    #[test]
    fn openapi_documents_every_native_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json parses");
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "an OpenAPI 3.1 document"
        );
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (p, ops) in paths {
            for m in ops.as_object().unwrap().keys() {
                documented.insert((m.to_uppercase(), p.clone()));
            }
        }
        let mut served = routes_in(include_str!("native_control.rs"));
        served.extend(routes_in(include_str!("native_data.rs")));
        // The parser must see the routes it is meant to (else this test proves nothing).
        assert!(served.contains(&("POST".into(), "/v1/sandboxes".into())));
        assert!(served.contains(&("PUT".into(), "/v1/sandboxes/{id}/files".into())));
        assert!(served.contains(&("GET".into(), "/v1/sandboxes/{id}/exec/{pid}/ws".into())));
        assert!(served.len() >= 20, "{served:?}");
        let missing: Vec<_> = served.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes served but not in openapi.json: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            extra.is_empty(),
            "openapi.json documents routes not served: {extra:?}"
        );
        // Every operation has an id, a summary and responses; every $ref resolves.
        let mut ids = BTreeMap::new();
        for (p, ops) in paths {
            for (m, op) in ops.as_object().unwrap() {
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m} {p}: operationId"));
                assert!(
                    ids.insert(id.to_string(), p.clone()).is_none(),
                    "operationId {id} twice"
                );
                assert!(op["summary"].is_string(), "{m} {p}: summary");
                assert!(op["responses"].is_object(), "{m} {p}: responses");
            }
        }
        let text = include_str!("../openapi.json");
        for (i, _) in text.match_indices("\"$ref\": \"#/") {
            let r = &text[i + "\"$ref\": \"#/".len()..];
            let r = &r[..r.find('"').unwrap()];
            let mut v = &doc;
            for part in r.split('/') {
                v = &v[part];
            }
            assert!(!v.is_null(), "$ref #/{r} does not resolve");
        }
    }
}
