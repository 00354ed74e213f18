//! `stockade serve`: sandboxes as a service on one Linux host.
//!
//! One process (tokio + axum) serves the native API (`/v1/...`, [`native_control`] and
//! [`native_data`]) and the E2B-compatible API ([`e2b`]) on one listener, over the sandboxes
//! of [`service::Service`]. State is in SQLite under the state directory ([`store`]).
//!
//! Routing: a request carrying an `E2b-Sandbox-Id` header is E2B's in-sandbox daemon protocol
//! (envd) and goes to [`e2b::envd_routes`]; every other request goes to the merged native and
//! E2B control-plane routes. The optional debug listener (E2B SDK debug mode) serves
//! [`e2b::debug_routes`].

pub mod auth;
pub mod config;
pub mod e2b;
pub mod error;
pub mod keys;
pub mod native_control;
pub mod native_data;
pub mod service;
pub mod store;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use std::sync::Arc;
use tower::ServiceExt;

pub use config::{Config, PoolSpec};
pub use error::ApiError;
pub use service::Service;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub svc: Arc<Service>,
}

/// The header E2B's SDK routes envd requests by.
pub const E2B_SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";

/// The whole API on one listener.
pub fn router(state: AppState) -> Router {
    let main = Router::new()
        .merge(native_control::routes())
        .merge(native_data::routes())
        .merge(e2b::routes())
        .with_state(state.clone());
    let envd = e2b::envd_routes().with_state(state);
    Router::new().fallback(move |req: Request| {
        let to = if req.headers().contains_key(E2B_SANDBOX_ID_HEADER) {
            envd.clone()
        } else {
            main.clone()
        };
        async move {
            match to.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
            .into_response()
        }
    })
}

/// The E2B SDK's debug-mode listener (envd at localhost:49983).
pub fn debug_router(state: AppState) -> Router {
    e2b::debug_routes().with_state(state)
}
