//! `/mcp` on `stockade serve`: MCP over Streamable HTTP (rmcp's `StreamableHttpService` with
//! its local session manager), behind the API's authentication.
//!
//! - Every request needs an API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`), checked
//!   like any other endpoint (401 without one, never logged). The caller rides to the tools in
//!   the request's extensions; sandboxes are made through the [`Service`] as the caller's.
//! - An MCP session (`Mcp-Session-Id`) belongs to the key that opened it: a request of another
//!   key naming it gets 404, as if it did not exist (so it can neither use nor close it).
//! - `?template=NAME` picks the template of the sandboxes a client's calls start (default
//!   `base`); an unknown one is a 400 at the first request.
//! - On shutdown every MCP stream is closed, so open connections do not hold the drain up.

use super::{Backend, StockadeMcp};
use crate::auth::Caller;
use crate::{ApiError, AppState, Service};
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Who sent an MCP request, and the template its new sandboxes use.
#[derive(Clone, Debug)]
pub struct Identity {
    pub caller: Caller,
    pub template: String,
}

/// Largest MCP request body (a `write_file` of 8 MiB is about 11 MiB of base64 in JSON).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Sessions remembered before the forgotten ones are pruned.
const PRUNE_AT: usize = 1024;

struct McpHttp {
    svc: Arc<Service>,
    sessions: Arc<LocalSessionManager>,
    /// MCP session id → the API key (id) that opened it.
    owners: Mutex<HashMap<String, String>>,
}

/// The `/mcp` routes (merged into the main router).
pub fn routes(state: &AppState) -> Router<AppState> {
    let svc = state.svc.clone();
    let config = StreamableHttpServerConfig::default()
        // Every request carries an API key, which a page a browser was tricked into loading
        // (DNS rebinding) does not have: the Host check would only refuse real deployments.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(MAX_BODY);
    let ct = config.cancellation_token.clone();
    let mut sm = LocalSessionManager::default();
    // A session idle past the sandbox TTL is closed (and its sandbox with it).
    sm.session_config.keep_alive = Some(svc.config().default_timeout + Duration::from_secs(60));
    let sessions = Arc::new(sm);
    let factory_svc = svc.clone();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(StockadeMcp::new(Backend::Served {
                svc: factory_svc.clone(),
            }))
        },
        sessions.clone(),
        config,
    );
    // Shutdown: close every MCP stream once the service starts shutting down.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let weak: Weak<Service> = Arc::downgrade(&svc);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match weak.upgrade() {
                    Some(s) if s.is_shutting_down() => {
                        ct.cancel();
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        });
    }
    let m = Arc::new(McpHttp {
        svc,
        sessions,
        owners: Mutex::new(HashMap::new()),
    });
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(m, authenticate))
}

fn template_of(q: Option<&str>) -> Result<String, ApiError> {
    let mut template = crate::templates::BASE.to_string();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("template", v)) => template = v.to_string(),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "/mcp: unknown query parameter {:?} (only template=NAME)",
                    pair.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(template)
}

async fn authenticate(State(m): State<Arc<McpHttp>>, mut req: Request, next: Next) -> Response {
    let caller = match m.svc.authenticate(req.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let template = match template_of(req.uri().query()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = crate::templates::policy_of(m.svc.store(), &template) {
        return ApiError::BadRequest(format!("/mcp?template={template}: {}", e.message()))
            .into_response();
    }
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(sid) = &session {
        let owner = m.owners.lock().ok().and_then(|o| o.get(sid).cloned());
        if owner.is_some_and(|k| k != caller.key_id) {
            return ApiError::NotFound(
                "no such MCP session (it ended, or it belongs to another API key)".into(),
            )
            .into_response();
        }
    }
    let key = caller.key_id.clone();
    let delete = req.method() == http::Method::DELETE;
    req.extensions_mut().insert(Identity { caller, template });
    let mut resp = next.run(req).await;
    if delete && resp.status() == http::StatusCode::ACCEPTED {
        // The session is closed when the DELETE is answered; MCP clients (the official Python
        // SDK) expect 200 or 204 for it and log 202 as a failure.
        *resp.status_mut() = http::StatusCode::NO_CONTENT;
    }
    if let Some(sid) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        let full = {
            let Ok(mut o) = m.owners.lock() else {
                return resp;
            };
            o.entry(sid.to_string()).or_insert(key);
            o.len() > PRUNE_AT
        };
        if full {
            let live: Vec<String> = m
                .sessions
                .sessions
                .read()
                .await
                .keys()
                .map(|k| k.to_string())
                .collect();
            if let Ok(mut o) = m.owners.lock() {
                o.retain(|k, _| live.contains(k));
            }
        }
    }
    if delete
        && resp.status().is_success()
        && let Some(sid) = session
        && let Ok(mut o) = m.owners.lock()
    {
        o.remove(&sid);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_query() {
        assert_eq!(template_of(None).unwrap(), "base");
        assert_eq!(template_of(Some("template=py")).unwrap(), "py");
        assert!(template_of(Some("x=1")).is_err());
    }
}
