//! E2B-compatible API.

use crate::AppState;
use axum::Router;

/// E2B control plane (`/sandboxes`, `/v2/sandboxes`, ...), merged with the native routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}

/// envd (Connect protocol, `/files`, `/health`): every request that carries an
/// `E2b-Sandbox-Id` header is routed here instead of the main routes (see `crate::router`).
pub fn envd_routes() -> Router<AppState> {
    Router::new()
}

/// The SDK's debug-mode listener (`--e2b-debug-listen`, envd at localhost:49983).
pub fn debug_routes() -> Router<AppState> {
    Router::new()
}
