//! E2B's REST control plane (`X-API-Key`), mapped onto [`Service`](crate::service::Service).
//!
//! Bodies and answers follow the models of the `e2b` Python SDK (2.63.0): `NewSandbox`,
//! `Sandbox`, `SandboxDetail`, `ListedSandbox`; errors are `{"code": <status>, "message"}`.
//!
//! What a create request asks for is honoured or refused (400 naming the field), never
//! silently dropped:
//! - `templateID` is a Stockade template (`base` when the SDK's default is used); `timeout`,
//!   `metadata` and `envVars` map directly; sandboxes run as login `user` (home `/home/user`).
//! - Network: a template's policy decides what a sandbox may reach, and a request may not
//!   widen it, nor can Stockade narrow it per request. So `allow_internet_access: false` and
//!   `network.denyOut` are accepted when the template already has no network; `true` only when
//!   its policy is `network.mode = "open"`; `network.allowOut` only when every entry is already
//!   reachable (mode `open`, or verbatim in the template's allowlist) and nothing is denied;
//!   anything else is a 400 that says which template to use instead.
//! - Refused outright (400): `autoPause`/`autoResume` (no pause), `mcp`, `iam`,
//!   `volumeMounts`, `network.egressProxy`/`rules`/`maskRequestHost`/`dnsServers`/
//!   `httpsPorts`, `network.allowPublicTraffic: true` (no sandbox ports are exposed), and any
//!   field this server does not know.
//! - `secure` is accepted either way: every sandbox needs its access token.

use crate::AppState;
use crate::error::ApiError;
use crate::service::{CreateRequest, Sandbox, rfc3339};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use stockade_policy::{NetworkMode, Policy};

/// `clientID` in answers (E2B's is the node; there is one here).
pub const CLIENT_ID: &str = "stockade";

/// `domain` in answers: a name that never resolves (RFC 2606), so an SDK that was not given
/// `E2B_SANDBOX_URL` fails to connect instead of sending its calls to E2B's cloud.
pub const DOMAIN: &str = "stockade.invalid";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create).get(super::list::list_v1))
        .route("/v2/sandboxes", post(create).get(super::list::list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(unsupported))
        .route("/sandboxes/{id}/resume", post(unsupported))
        .route("/sandboxes/{id}/snapshots", post(unsupported))
        .route("/sandboxes/{id}/fork", post(unsupported))
        .route("/sandboxes/{id}/network", axum::routing::put(unsupported))
}

/// An E2B API error: `{"code": <status>, "message": ...}`.
#[derive(Debug)]
pub struct E2bError(StatusCode, String);

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        E2bError(e.status(), e.message().to_string())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        super::envd::plain_error(self.0, self.1)
    }
}

pub(super) fn bad(msg: impl Into<String>) -> E2bError {
    E2bError(StatusCode::BAD_REQUEST, msg.into())
}

fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, E2bError> {
    body.map(|Json(b)| b).map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            E2bError(StatusCode::PAYLOAD_TOO_LARGE, r.body_text())
        } else {
            bad(r.body_text())
        }
    })
}

async fn unsupported() -> E2bError {
    E2bError(
        StatusCode::NOT_IMPLEMENTED,
        "not supported by stockade: sandboxes cannot be paused, resumed, snapshotted, forked or have their network changed"
            .into(),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    auto_pause: Option<bool>,
    #[allow(dead_code)]
    auto_pause_memory: Option<bool>,
    auto_resume: Option<serde_json::Value>,
    #[allow(dead_code)]
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    network: Option<NetworkConfig>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    mcp: Option<serde_json::Value>,
    iam: Option<serde_json::Value>,
    volume_mounts: Option<Vec<serde_json::Value>>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkConfig {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
    allow_public_traffic: Option<bool>,
    egress_proxy: Option<serde_json::Value>,
    rules: Option<serde_json::Value>,
    mask_request_host: Option<serde_json::Value>,
    dns_servers: Option<serde_json::Value>,
    https_ports: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

fn set(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn unknown_fields(
    prefix: &str,
    other: &BTreeMap<String, serde_json::Value>,
) -> Result<(), E2bError> {
    if let Some((k, _)) = other.iter().find(|(_, v)| !v.is_null()) {
        let k: String = k.chars().take(64).collect();
        return Err(bad(format!(
            "{prefix}{k}: not supported by stockade (refused rather than ignored)"
        )));
    }
    Ok(())
}

fn mode_name(m: NetworkMode) -> &'static str {
    match m {
        NetworkMode::None => "none",
        NetworkMode::Allowlist => "allowlist",
        NetworkMode::Open => "open",
    }
}

/// True for an entry that means "all IPv4/IPv6 traffic".
fn all_traffic(e: &str) -> bool {
    matches!(e.trim(), "0.0.0.0/0" | "::/0")
}

/// Checks a create request's network wishes against the template's policy (see the module doc).
fn check_network(
    template: &str,
    policy: &Policy,
    allow_internet: Option<bool>,
    net: Option<&NetworkConfig>,
) -> Result<(), E2bError> {
    let mode = policy.network.mode;
    let use_instead = "(`stockade template ls` lists the templates; an administrator adds one with `stockade template add`)";
    if let Some(n) = net {
        unknown_fields("network.", &n.other)?;
        for (name, v) in [
            ("egressProxy", &n.egress_proxy),
            ("rules", &n.rules),
            ("maskRequestHost", &n.mask_request_host),
            ("dnsServers", &n.dns_servers),
            ("httpsPorts", &n.https_ports),
        ] {
            if set(v) {
                return Err(bad(format!(
                    "network.{name}: not supported by stockade (egress is the template policy's egress gateway)"
                )));
            }
        }
        if n.allow_public_traffic == Some(true) {
            return Err(bad(
                "network.allowPublicTraffic: stockade does not expose sandbox ports, so it cannot allow public traffic to them",
            ));
        }
    }
    let deny_all = allow_internet == Some(false)
        || net.is_some_and(|n| n.deny_out.iter().any(|e| all_traffic(e)));
    let some_deny = net.is_some_and(|n| !n.deny_out.is_empty());
    if allow_internet == Some(true) && mode != NetworkMode::Open {
        return Err(bad(format!(
            "allow_internet_access: template {template:?} gives no full internet access (its policy's network.mode is {:?}); use a template whose policy has network.mode = \"open\", or leave allow_internet_access out {use_instead}",
            mode_name(mode)
        )));
    }
    if (deny_all || some_deny) && mode != NetworkMode::None {
        return Err(bad(format!(
            "{}: template {template:?} allows network access (network.mode {:?}) and stockade cannot narrow a template's network per sandbox; use a template without network {use_instead}",
            if allow_internet == Some(false) {
                "allow_internet_access"
            } else {
                "network.denyOut"
            },
            mode_name(mode)
        )));
    }
    if let Some(n) = net
        && !n.allow_out.is_empty()
    {
        if deny_all {
            return Err(bad(
                "network.allowOut with denyOut 0.0.0.0/0 (only these hosts): stockade cannot narrow a template's network per sandbox; use a template whose policy allows exactly these hosts",
            ));
        }
        let reachable = |e: &String| match mode {
            NetworkMode::Open => true,
            NetworkMode::Allowlist => policy.network.allow.iter().any(|a| a == e),
            NetworkMode::None => false,
        };
        if let Some(e) = n.allow_out.iter().find(|e| !reachable(e)) {
            let e: String = e.chars().take(100).collect();
            return Err(bad(format!(
                "network.allowOut {e:?}: template {template:?} does not allow it (network.mode {:?}) and a request may not widen a template's network {use_instead}",
                mode_name(mode)
            )));
        }
    }
    Ok(())
}

/// What a template's policy says, for answers.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    cpus: i64,
    memory_mb: i64,
    disk_mb: i64,
    mode: Option<NetworkMode>,
}

fn shape_of(p: &Policy) -> Shape {
    Shape {
        cpus: (p.limits.cpus.ceil() as i64).max(1),
        memory_mb: i64::try_from(p.limits.memory.0 >> 20).unwrap_or(i64::MAX),
        disk_mb: i64::try_from(p.limits.disk.0 >> 20).unwrap_or(i64::MAX),
        mode: Some(p.network.mode),
    }
}

/// Template shapes, looked up once per request.
pub(super) struct Shapes<'a> {
    st: &'a AppState,
    cache: HashMap<String, Shape>,
}

impl Shapes<'_> {
    pub(super) fn get(&mut self, template: &str) -> Shape {
        if let Some(s) = self.cache.get(template) {
            return *s;
        }
        let s = match crate::templates::policy_of(self.st.svc.store(), template) {
            Ok(p) => shape_of(&p),
            // An inline policy or a template removed since: the defaults.
            Err(_) => Shape {
                mode: None,
                ..shape_of(&Policy::default())
            },
        };
        self.cache.insert(template.to_string(), s);
        s
    }
}

pub(super) fn shapes(st: &AppState) -> Shapes<'_> {
    Shapes {
        st,
        cache: HashMap::new(),
    }
}

/// The fields `ListedSandbox` and `SandboxDetail` share.
pub(super) fn listed(sb: &Sandbox, shape: Shape) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "templateID": sb.template,
        "alias": sb.template,
        "sandboxID": sb.id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(sb.created_at),
        "endAt": rfc3339(sb.expires_at()),
        "cpuCount": shape.cpus,
        "memoryMB": shape.memory_mb,
        "diskSizeMB": shape.disk_mb,
        "metadata": sb.metadata,
        "state": "running",
        "envdVersion": super::ENVD_VERSION,
        "volumeMounts": [],
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The `Sandbox` answer of create and connect.
fn created(sb: &Sandbox, token: &str) -> serde_json::Value {
    serde_json::json!({
        "templateID": sb.template,
        "alias": sb.template,
        "sandboxID": sb.id,
        "clientID": CLIENT_ID,
        "envdVersion": super::ENVD_VERSION,
        "envdAccessToken": token,
        "trafficAccessToken": null,
        "domain": DOMAIN,
    })
}

async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewSandbox>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let b = json_body(body)?;
    unknown_fields("", &b.other)?;
    if b.auto_pause == Some(true) {
        return Err(bad(
            "autoPause: stockade cannot pause sandboxes; a sandbox is killed at its timeout",
        ));
    }
    if b.auto_resume
        .as_ref()
        .is_some_and(|v| v.get("enabled").and_then(|e| e.as_bool()) == Some(true))
    {
        return Err(bad("autoResume: stockade cannot pause or resume sandboxes"));
    }
    if set(&b.mcp) {
        return Err(bad("mcp: the MCP gateway is not supported by stockade"));
    }
    if set(&b.iam) {
        return Err(bad(
            "iam: workload identity tokens are not supported by stockade",
        ));
    }
    if b.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(bad("volumeMounts: volumes are not supported by stockade"));
    }
    let template = b
        .template_id
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| crate::templates::BASE.to_string());
    let policy = crate::templates::policy_of(st.svc.store(), &template)?;
    check_network(
        &template,
        &policy,
        b.allow_internet_access,
        b.network.as_ref(),
    )?;
    let timeout = match b.timeout {
        None => None,
        Some(t) if t < 0 => return Err(bad("timeout: must be a positive number of seconds")),
        Some(t) => Some(u64::try_from(t).unwrap_or(0)),
    };
    let req = CreateRequest {
        template: Some(template),
        policy: None,
        env: b.env_vars.unwrap_or_default(),
        timeout,
        metadata: b.metadata.unwrap_or_default(),
        user: Some("user".into()),
    };
    let c = st.svc.create(&caller, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(created(&c.sandbox, &c.access_token)),
    )
        .into_response())
}

async fn detail(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let sb = st.svc.get(&caller, &id)?;
    let shape = shapes(&st).get(&sb.template);
    let mut m = listed(&sb, shape);
    m.insert("domain".into(), DOMAIN.into());
    match shape.mode {
        Some(NetworkMode::None) => {
            m.insert("allowInternetAccess".into(), false.into());
        }
        Some(NetworkMode::Open) => {
            m.insert("allowInternetAccess".into(), true.into());
        }
        _ => {}
    }
    Ok(Json(serde_json::Value::Object(m)).into_response())
}

async fn kill(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    st.svc.kill(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct TimeoutBody {
    timeout: i64,
}

async fn set_timeout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TimeoutBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let b = json_body(body)?;
    let secs = u64::try_from(b.timeout).map_err(|_| bad("timeout: must be positive"))?;
    st.svc
        .set_timeout(&caller, &id, Duration::from_secs(secs))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
struct RefreshBody {
    duration: Option<i64>,
}

async fn refresh(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RefreshBody>>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let by = match body.and_then(|Json(b)| b.duration) {
        None => st.svc.config().default_timeout,
        Some(d) => {
            Duration::from_secs(u64::try_from(d).map_err(|_| bad("duration: must be positive"))?)
        }
    };
    st.svc.extend(&caller, &id, by)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
struct ConnectBody {
    timeout: Option<i64>,
}

/// Connecting to a running sandbox: its timeout is raised (never lowered) to `timeout`, and the
/// caller gets an envd access token of its own (see [`super::tokens`]).
async fn connect(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ConnectBody>>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let mut sb = st.svc.get(&caller, &id)?;
    if let Some(t) = body.and_then(|Json(b)| b.timeout) {
        let t = u64::try_from(t).map_err(|_| bad("timeout: must be positive"))?;
        sb = st.svc.extend(&caller, &id, Duration::from_secs(t))?;
    }
    let token = super::tokens::mint(&sb.id, |other| {
        super::envd::find_running(&st, other).is_some()
    })?;
    Ok((StatusCode::OK, Json(created(&sb, &token))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(allow: &[&str], deny: &[&str]) -> NetworkConfig {
        NetworkConfig {
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
            ..NetworkConfig::default()
        }
    }

    fn policy(mode: NetworkMode, allow: &[&str]) -> Policy {
        let mut p = Policy::default();
        p.network.mode = mode;
        p.network.allow = allow.iter().map(|s| s.to_string()).collect();
        p
    }

    #[test]
    fn network_wishes_are_honoured_or_refused() {
        let none = policy(NetworkMode::None, &[]);
        let open = policy(NetworkMode::Open, &[]);
        let list = policy(NetworkMode::Allowlist, &["pypi.org"]);
        // Already true of the template: accepted.
        assert!(check_network("t", &none, Some(false), None).is_ok());
        assert!(check_network("t", &none, None, Some(&net(&[], &["0.0.0.0/0"]))).is_ok());
        assert!(check_network("t", &open, Some(true), None).is_ok());
        assert!(check_network("t", &list, None, Some(&net(&["pypi.org"], &[]))).is_ok());
        assert!(check_network("t", &open, None, Some(&net(&["x.org"], &[]))).is_ok());
        // Would widen: refused.
        let e = check_network("base", &none, Some(true), None)
            .err()
            .unwrap();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert!(e.1.contains("allow_internet_access"), "{}", e.1);
        assert!(check_network("t", &none, None, Some(&net(&["x.org"], &[]))).is_err());
        assert!(check_network("t", &list, None, Some(&net(&["x.org"], &[]))).is_err());
        assert!(check_network("t", &list, Some(true), None).is_err());
        // Would need narrowing: refused.
        assert!(check_network("t", &open, Some(false), None).is_err());
        assert!(check_network("t", &list, None, Some(&net(&[], &["10.0.0.0/8"]))).is_err());
        assert!(check_network("t", &open, None, Some(&net(&["x.org"], &["0.0.0.0/0"]))).is_err());
        // Unsupported knobs.
        let mut n = net(&[], &[]);
        n.allow_public_traffic = Some(true);
        assert!(check_network("t", &none, None, Some(&n)).is_err());
        let mut n = net(&[], &[]);
        n.egress_proxy = Some(serde_json::json!({"url": "http://p"}));
        assert!(check_network("t", &none, None, Some(&n)).is_err());
        let mut n = net(&[], &[]);
        n.allow_public_traffic = Some(false);
        assert!(check_network("t", &none, None, Some(&n)).is_ok());
    }

    #[test]
    fn create_body_as_the_sdk_sends_it() {
        let b: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","autoPause":false,"autoPauseMemory":true,"metadata":{"a":"b"},"timeout":300,"envVars":{"K":"v"},"allow_internet_access":false}"#,
        )
        .unwrap();
        assert_eq!(b.template_id.as_deref(), Some("base"));
        assert_eq!(b.allow_internet_access, Some(false));
        assert!(b.other.is_empty());
        let b: NewSandbox =
            serde_json::from_str(r#"{"templateID":"base","snapshot":true}"#).unwrap();
        assert!(unknown_fields("", &b.other).is_err());
    }
}
