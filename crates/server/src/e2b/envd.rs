//! What every envd call shares: finding the sandbox a request is for, the acting user, paths
//! inside, errors, and entries in envd's shape.
//!
//! On the main listener a request names its sandbox with `E2b-Sandbox-Id` and proves access with
//! `X-Access-Token` (the `envdAccessToken` returned at create). A sandbox that does not exist or
//! has ended answers 502 "... was not found", as E2B's edge proxy does (the SDK reads that as
//! "the sandbox is not running"); a wrong token answers 401. On the debug listener the sandbox is
//! the debug sandbox (see [`super::debug`]) and there is no token (the SDK sends none).

use super::connect::{Code, RpcError};
use super::messages::EntryInfo;
use crate::AppState;
use crate::service::Sandbox;
use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::sync::Arc;
use stockade_runtime::session::{Entry, EntryKind, SessionError};

/// The port envd listens on inside an E2B sandbox; the only one Stockade serves.
pub const ENVD_PORT: u16 = 49983;

/// The sandbox a request is for (an extractor: see [`Mode`]).
#[derive(Clone)]
pub struct Target {
    pub sandbox: Arc<Sandbox>,
}

/// An error answered before the call is dispatched, as plain JSON `{"code": <status>,
/// "message": ...}` (what envd's HTTP API and E2B's proxy send; the SDK maps it for RPCs too).
pub fn plain_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": status.as_u16(), "message": message.into() })),
    )
        .into_response()
}

/// A request refused before its call runs (answered with [`plain_error`]).
#[derive(Debug)]
pub struct Reject(pub StatusCode, pub String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        plain_error(self.0, self.1)
    }
}

/// The 502 E2B's proxy answers for a sandbox that is gone (the SDK matches "was not found").
pub fn sandbox_not_found(id: &str) -> Response {
    not_found_reject(id).into_response()
}

fn not_found_reject(id: &str) -> Reject {
    let shown = if crate::service::valid_id(id) {
        id
    } else {
        "(malformed id)"
    };
    Reject(
        StatusCode::BAD_GATEWAY,
        format!("The sandbox {shown} was not found"),
    )
}

/// Finds a running sandbox by id (any owner: the caller proves access with its token).
pub fn find_running(st: &AppState, id: &str) -> Option<Arc<Sandbox>> {
    let sb = st.svc.sandboxes.read().ok()?.get(id).cloned()?;
    sb.session.is_alive().then_some(sb)
}

/// How a router finds the sandbox of a request (a request extension set by the router).
#[derive(Clone)]
pub enum Mode {
    /// The main listener: `E2b-Sandbox-Id` and `X-Access-Token`.
    Main,
    /// The debug listener: its one sandbox, no token.
    Debug(Arc<super::debug::DebugSandbox>),
}

impl FromRequestParts<AppState> for Target {
    type Rejection = Reject;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Target, Reject> {
        match parts.extensions.get::<Mode>().cloned() {
            Some(Mode::Debug(d)) => {
                // The debug listener has no authentication: only this host may use it, whatever
                // address it was told to listen on.
                let peer = parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip());
                if !peer.is_some_and(|ip| ip.is_loopback()) {
                    return Err(Reject(
                        StatusCode::FORBIDDEN,
                        "the E2B debug listener serves loopback clients only".into(),
                    ));
                }
                d.target(st).await
            }
            Some(Mode::Main) | None => resolve_main(st, &parts.headers),
        }
    }
}

/// The main listener: checks the port, finds the sandbox, checks the access token.
pub fn resolve_main(st: &AppState, headers: &HeaderMap) -> Result<Target, Reject> {
    if let Some(port) = headers.get("e2b-sandbox-port") {
        let port = port.to_str().unwrap_or("?").trim();
        if port != ENVD_PORT.to_string() {
            let shown: String = port.chars().take(8).collect();
            return Err(Reject(
                StatusCode::BAD_GATEWAY,
                format!(
                    "port {shown}: stockade does not expose sandbox ports (only envd, port {ENVD_PORT}, is served)"
                ),
            ));
        }
    }
    let id = headers
        .get(crate::E2B_SANDBOX_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    let Some(sb) = find_running(st, id) else {
        return Err(not_found_reject(id));
    };
    let Some(token) = headers.get("x-access-token").and_then(|v| v.to_str().ok()) else {
        return Err(Reject(
            StatusCode::UNAUTHORIZED,
            "missing X-Access-Token: send the sandbox's envdAccessToken (returned when it was created)".into(),
        ));
    };
    let token = token.trim();
    if !sb.token_matches(token) && !super::tokens::matches(&sb.id, token) {
        return Err(Reject(
            StatusCode::UNAUTHORIZED,
            "invalid access token for this sandbox".into(),
        ));
    }
    Ok(Target { sandbox: sb })
}

/// `GET /health`: 204 while the sandbox runs.
pub async fn health(t: Target) -> Response {
    if t.sandbox.session.is_alive() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        sandbox_not_found(&t.sandbox.id)
    }
}

/// The acting user of a call, from `Authorization: Basic base64("<user>:")` (RPCs) or the
/// `username` query parameter (`/files`).
///
/// A sandbox has one login (`user` for sandboxes made through this API). No name means that
/// login. `root` is accepted and also means that login: uid 0 inside a sandbox is not
/// available, so root-only operations fail with permission errors instead of being refused
/// up front. Any other name is refused (401), as envd refuses an unknown user.
pub fn acting_user(sb: &Sandbox, requested: Option<&str>) -> Result<(), RpcError> {
    match requested {
        None | Some("") | Some("root") => Ok(()),
        Some(u) if u == sb.session.user() => Ok(()),
        Some(u) => {
            let shown: String = u.chars().take(32).collect();
            Err(RpcError::new(
                Code::Unauthenticated,
                format!(
                    "no user {shown:?} in this sandbox: its login is {:?} (\"root\" is accepted and runs as that login too)",
                    sb.session.user()
                ),
            ))
        }
    }
}

/// The user named by an RPC's `Authorization: Basic` header, if any.
pub fn basic_user(headers: &HeaderMap) -> Result<Option<String>, RpcError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        RpcError::new(
            Code::Unauthenticated,
            "the Authorization header must be `Basic base64(\"<user>:\")`",
        )
    };
    let v = v.to_str().map_err(|_| bad())?;
    let (scheme, rest) = v.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let user = s.split(':').next().unwrap_or("");
    Ok(Some(user.to_string()))
}

/// Checks an RPC's user and returns nothing more (every call runs as the sandbox's login).
pub fn check_rpc_user(sb: &Sandbox, headers: &HeaderMap) -> Result<(), RpcError> {
    let u = basic_user(headers)?;
    acting_user(sb, u.as_deref())
}

/// Resolves a path as envd does: `~` and `~/x` are under the home, a relative path is relative
/// to the home, and the result is made absolute and lexically clean (`.` and `..` folded; `..`
/// at `/` stays at `/`). The agent resolves the result again inside the sandbox's mount
/// namespace, so nothing here is a security boundary; it only gives envd's answers.
pub fn resolve_path(path: &str, home: &str) -> Result<String, RpcError> {
    if path.contains('\0') {
        return Err(RpcError::invalid("a path may not contain a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(RpcError::invalid("a path may be at most 4096 bytes"));
    }
    let joined = if path.is_empty() {
        home.to_string()
    } else if let Some(rest) = path.strip_prefix('~') {
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(RpcError::invalid(format!(
                "cannot expand {path:?}: only `~` (this sandbox's user) is known"
            )));
        }
        format!("{home}/{rest}")
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{home}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The last component of an absolute path (`/` for the root).
pub fn base_name(path: &str) -> String {
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("/")
        .to_string()
}

/// A session failure as a Connect error.
pub fn rpc_error(e: SessionError) -> RpcError {
    match e {
        SessionError::Gone => {
            RpcError::new(Code::Unavailable, "the sandbox was not found: it has ended")
        }
        SessionError::ExecRefused { message, .. } => RpcError::invalid(message),
        SessionError::Fs { errno, message } => RpcError::new(errno_code(errno), message),
        SessionError::Invalid(m) => RpcError::invalid(m),
        SessionError::Protocol(m) => {
            tracing::warn!(error = %m, "sandbox agent broke the protocol");
            RpcError::internal(format!("the sandbox's agent answered wrongly: {m}"))
        }
    }
}

/// The Connect code for a failed file operation's errno.
pub fn errno_code(errno: i32) -> Code {
    match errno {
        libc::ENOENT => Code::NotFound,
        libc::EEXIST => Code::AlreadyExists,
        libc::EACCES | libc::EPERM | libc::EROFS => Code::PermissionDenied,
        libc::ENOTDIR | libc::EISDIR | libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP => {
            Code::InvalidArgument
        }
        libc::ENOSPC | libc::EDQUOT | libc::ENOTEMPTY | libc::EXDEV | libc::EBUSY => {
            Code::FailedPrecondition
        }
        _ => Code::Internal,
    }
}

/// The HTTP status `/files` answers for a failed file operation's errno.
pub fn errno_status(errno: i32) -> StatusCode {
    match errno {
        libc::ENOENT => StatusCode::NOT_FOUND,
        libc::ENOSPC | libc::EDQUOT => StatusCode::INSUFFICIENT_STORAGE,
        libc::EACCES | libc::EPERM | libc::EROFS => StatusCode::FORBIDDEN,
        libc::ENOTDIR | libc::EISDIR | libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A name for a uid/gid inside: 0 is root, 1000 is the sandbox's login, others are numbers.
fn id_name(id: u32, login: &str) -> String {
    match id {
        0 => "root".into(),
        1000 => login.into(),
        n => n.to_string(),
    }
}

/// Go's `os.FileMode.String()` for the kinds an [`Entry`] has (envd's `permissions`).
pub fn permissions(kind: EntryKind, mode: u32) -> String {
    let mut s = String::new();
    match kind {
        EntryKind::Dir => s.push('d'),
        EntryKind::Symlink => s.push('L'),
        EntryKind::File => {}
        EntryKind::Other => s.push('?'),
    }
    if mode & 0o4000 != 0 {
        s.push('u');
    }
    if mode & 0o2000 != 0 {
        s.push('g');
    }
    if mode & 0o1000 != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    const RWX: &[u8; 9] = b"rwxrwxrwx";
    for (i, c) in RWX.iter().enumerate() {
        if mode & (1 << (8 - i)) != 0 {
            s.push(char::from(*c));
        } else {
            s.push('-');
        }
    }
    s
}

/// An agent entry in envd's `EntryInfo` shape.
pub fn entry_info(e: &Entry, login: &str) -> EntryInfo {
    let kind = match e.kind {
        EntryKind::File => "FILE_TYPE_FILE",
        EntryKind::Dir => "FILE_TYPE_DIRECTORY",
        EntryKind::Symlink => "FILE_TYPE_SYMLINK",
        EntryKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    EntryInfo {
        name: e.name.clone(),
        kind,
        path: e.path.clone(),
        size: i64::try_from(e.size).unwrap_or(i64::MAX),
        mode: e.mode & 0o777,
        permissions: permissions(e.kind, e.mode),
        owner: id_name(e.uid, login),
        group: id_name(e.gid, login),
        modified_time: super::pbjson::timestamp(e.mtime, e.mtime_nsec),
        symlink_target: e.symlink_target.clone(),
        is_symlink: e.kind == EntryKind::Symlink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_envd() {
        let h = "/home/user";
        assert_eq!(resolve_path("", h).unwrap(), "/home/user");
        assert_eq!(resolve_path("a.txt", h).unwrap(), "/home/user/a.txt");
        assert_eq!(resolve_path("~", h).unwrap(), "/home/user");
        assert_eq!(resolve_path("~/x/./y", h).unwrap(), "/home/user/x/y");
        assert_eq!(resolve_path("/tmp/../etc//x", h).unwrap(), "/etc/x");
        assert_eq!(resolve_path("../../../../x", h).unwrap(), "/x");
        assert!(resolve_path("~root/x", h).is_err());
        assert!(resolve_path("a\0b", h).is_err());
        assert_eq!(base_name("/home/user/a.txt"), "a.txt");
        assert_eq!(base_name("/"), "/");
    }

    /// Whatever a client sends, a resolved path is absolute and clean: no `.`/`..` component,
    /// no empty one, nothing above `/`.
    #[test]
    fn random_paths_resolve_to_clean_absolute_paths() {
        let alphabet = ["/", ".", "..", "a", "~", "b/", "//", "\\", "é", " "];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            let mut p = String::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push_str(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let Ok(r) = resolve_path(&p, "/home/user") else {
                assert!(p.starts_with('~'), "{p:?} refused");
                continue;
            };
            assert!(r.starts_with('/'), "{p:?} -> {r:?}");
            assert!(
                r == "/"
                    || r[1..]
                        .split('/')
                        .all(|c| !c.is_empty() && c != "." && c != ".."),
                "{p:?} -> {r:?}"
            );
        }
    }

    #[test]
    fn go_file_modes() {
        assert_eq!(permissions(EntryKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(EntryKind::Symlink, 0o777), "Lrwxrwxrwx");
        assert_eq!(permissions(EntryKind::Dir, 0o1777), "dtrwxrwxrwx");
        assert_eq!(permissions(EntryKind::File, 0o4755), "urwxr-xr-x");
    }

    #[test]
    fn basic_auth_user() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h).unwrap(), None);
        // base64("user:")
        h.insert("authorization", "Basic dXNlcjo=".parse().unwrap());
        assert_eq!(basic_user(&h).unwrap().as_deref(), Some("user"));
        h.insert("authorization", "Bearer x".parse().unwrap());
        assert_eq!(basic_user(&h).unwrap_err().code, Code::Unauthenticated);
    }
}
