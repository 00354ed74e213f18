//! Native data plane: exec (SSE, WebSocket), files, watch, events, usage.

use crate::AppState;
use axum::Router;

pub fn routes() -> Router<AppState> {
    Router::new()
}
