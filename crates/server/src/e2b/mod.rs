//! E2B-compatible API: existing code written against E2B's SDKs runs against Stockade with two
//! environment variables (`E2B_API_URL` and `E2B_SANDBOX_URL`, both the server's URL) and a
//! Stockade API key as `E2B_API_KEY`.
//!
//! - **Control plane** ([`control`], [`list`]): `POST /sandboxes` (and `/v2/sandboxes`), `GET
//!   /v2/sandboxes` (and the deprecated `GET /sandboxes`), `GET`/`DELETE /sandboxes/{id}`,
//!   `POST /sandboxes/{id}/timeout`, `/refreshes`, `/connect` (and `/v2/.../connect`), with
//!   `X-API-Key`.
//! - **envd**, E2B's in-sandbox daemon, served by Stockade itself: there is no daemon inside
//!   the sandbox; every call maps to the sandbox's [`Session`] (processes through its agent,
//!   files through descriptors the agent opens inside). The Connect protocol with the JSON
//!   codec ([`connect`]), services `process.Process` ([`process`]) and `filesystem.Filesystem`
//!   ([`filesystem`]), and `GET /health`, `GET`/`POST /files` ([`files`]). A request carrying
//!   `E2b-Sandbox-Id` is routed here by [`crate::router`] whatever its path; it needs
//!   `X-Access-Token` ([`envd`]). HTTP/1.1 and HTTP/2 (h2c, what the SDK uses by default) are
//!   both served.
//! - **Debug mode** ([`debug`]): the listener the SDK's `E2B_DEBUG=true` talks to.
//!
//! ## The envd version reported
//!
//! The SDK switches features on by the `envdVersion` a sandbox reports. Stockade reports
//! [`ENVD_VERSION`] = 0.6.1, the highest version whose gated features all work here: recursive
//! watch (0.1.4), stdin off by default (0.3.0), a default user (0.4.0), closing stdin
//! (0.5.2), octet-stream and gzip uploads (0.5.7). File metadata (0.6.2: `user.e2b.*` xattrs)
//! is not implemented, so the SDK refuses `files.write(..., metadata=...)` itself; watch entry
//! info (0.6.3) and network-mount watches (0.6.4) sit above it and are off too (entry info is
//! served anyway when asked, as in debug mode where the SDK assumes 99.99.99).
//!
//! ## Differences from E2B (honest list)
//!
//! - Sandboxes run as login `user` (uid 1000 inside, home `/home/user`). Asking for `root`
//!   runs as that same login: uid 0 inside a sandbox is not available, so root-only actions
//!   fail with permission errors.
//! - A template's policy decides the network; `base` has none. Requests that would widen or
//!   need narrowing are refused (see [`control`]). No sandbox ports are exposed: a request for
//!   a port other than envd's answers 502.
//! - No pause/resume, snapshots, fork, volumes, MCP, metrics, logs, templates API or signed
//!   file URLs (501 or 400 with a message).
//! - A process started without a timeout is still bounded by the template policy's
//!   `limits.timeout`; output is bounded by `limits.max_output`.
//!
//! [`Session`]: stockade_runtime::session::Session

pub mod connect;
pub mod control;
pub mod debug;
pub mod envd;
pub mod files;
pub mod filesystem;
pub mod list;
pub mod messages;
pub mod pbjson;
pub mod process;
pub mod tokens;

use crate::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::sync::Arc;

/// The envd version reported to the SDK (see the module documentation).
pub const ENVD_VERSION: &str = "0.6.1";

/// E2B control plane (`/sandboxes`, `/v2/sandboxes`, ...), merged with the native routes.
pub fn routes() -> Router<AppState> {
    control::routes()
}

/// envd (Connect protocol, `/files`, `/health`): every request that carries an
/// `E2b-Sandbox-Id` header is routed here instead of the main routes (see `crate::router`).
pub fn envd_routes() -> Router<AppState> {
    envd_router(envd::Mode::Main)
}

/// The SDK's debug-mode listener (`--e2b-debug-listen`, envd at localhost:49983): envd for the
/// debug sandbox (see [`debug`]), whatever `E2b-Sandbox-Id` says, with no token.
pub fn debug_routes() -> Router<AppState> {
    envd_router(envd::Mode::Debug(Arc::new(debug::DebugSandbox::default())))
}

fn envd_router(mode: envd::Mode) -> Router<AppState> {
    const P: &str = "/process.Process/";
    const F: &str = "/filesystem.Filesystem/";
    let rpc = |svc: &str, m: &str| format!("{svc}{m}");
    Router::new()
        .route("/health", get(envd::health))
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                // Uploads stream into the sandbox; its disk budget bounds them (507 when full).
                .layer(DefaultBodyLimit::disable()),
        )
        .route(&rpc(P, "Start"), post(process::start))
        .route(&rpc(P, "Connect"), post(process::connect_))
        .route(&rpc(P, "List"), post(process::list))
        .route(&rpc(P, "SendInput"), post(process::send_input))
        .route(&rpc(P, "StreamInput"), post(process::stream_input))
        .route(&rpc(P, "SendSignal"), post(process::send_signal))
        .route(&rpc(P, "CloseStdin"), post(process::close_stdin))
        .route(&rpc(P, "Update"), post(process::update))
        .route(&rpc(F, "Stat"), post(filesystem::stat))
        .route(&rpc(F, "ListDir"), post(filesystem::list_dir))
        .route(&rpc(F, "MakeDir"), post(filesystem::make_dir))
        .route(&rpc(F, "Move"), post(filesystem::move_))
        .route(&rpc(F, "Remove"), post(filesystem::remove))
        .route(&rpc(F, "WatchDir"), post(filesystem::watch_dir))
        .route(&rpc(F, "CreateWatcher"), post(filesystem::create_watcher))
        .route(&rpc(F, "GetWatcherEvents"), post(filesystem::get_watcher_events))
        .route(&rpc(F, "RemoveWatcher"), post(filesystem::remove_watcher))
        .fallback(|| async {
            envd::plain_error(
                StatusCode::NOT_FOUND,
                "no such envd endpoint in stockade (served: /health, /files, process.Process, filesystem.Filesystem)",
            )
        })
        .layer(axum::Extension(Arc::new(filesystem::Watchers::default())))
        .layer(axum::Extension(mode))
}
