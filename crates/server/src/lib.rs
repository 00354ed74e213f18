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
pub mod lifecycle;
pub mod mcp;
pub mod native_control;
pub mod native_data;
pub mod pool;
pub mod service;
pub mod store;
pub mod templates;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use std::future::{Future, IntoFuture};
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
        .merge(mcp::http::routes(&state))
        .with_state(state.clone());
    let envd = e2b::envd_routes().with_state(state);
    Router::new()
        .fallback(move |req: Request| {
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
        .layer(axum::middleware::from_fn(server_timing))
}

/// `Server-Timing: app;dur=MS` on every answer: the server's own time from the request to the
/// response head (for a stream, to its start), which the benchmarks read.
async fn server_timing(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    let t = std::time::Instant::now();
    let mut r = next.run(req).await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

/// The E2B SDK's debug-mode listener (envd at localhost:49983).
pub fn debug_router(state: AppState) -> Router {
    e2b::debug_routes().with_state(state)
}

/// Why the server could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("state directory {path}: {message}")]
    StateDir { path: String, message: String },
    #[error(
        "another `stockade serve` ({holder}) is using the state directory {path}; stop it or pick another --state-dir"
    )]
    Locked { path: String, holder: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The exclusive lock of a state directory (`<state>/server.lock`), held while serving.
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes `<state>/server.lock` (flock, exclusive, not waiting) and writes our pid into it.
pub fn lock_state(state: &std::path::Path) -> Result<StateLock, ServeError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = state.join("server.lock");
    let err = |m: String| ServeError::StateDir {
        path: state.display().to_string(),
        message: m,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            let holder = match s.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "another process".into(),
            };
            return Err(ServeError::Locked {
                path: state.display().to_string(),
                holder,
            });
        }
        Err(e) => return Err(err(format!("locking {}: {e}", path.display()))),
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(StateLock { _file: f })
}

/// Opens the state (directory, lock, database), recovers what a previous server left.
pub async fn prepare(cfg: &Config) -> Result<(StateLock, Arc<Service>), ServeError> {
    cfg.validate().map_err(ServeError::Config)?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.state_dir)
            .map_err(|e| ServeError::StateDir {
                path: cfg.state_dir.display().to_string(),
                message: e.to_string(),
            })?;
    }
    let lock = lock_state(&cfg.state_dir)?;
    let store = Arc::new(open_store(&cfg.state_dir)?);
    for p in &cfg.pools {
        if let Err(e) = templates::policy_of(&store, &p.template) {
            return Err(ServeError::Config(format!(
                "--pool {}={}: {}",
                p.template,
                p.count,
                e.message()
            )));
        }
    }
    let svc = Service::new(cfg.clone(), store);
    let found = svc.recover_lost().await?;
    if !found.is_empty() {
        let killed = found.iter().filter(|r| r.killed).count();
        let leftovers: usize = found.iter().map(|r| r.leftovers.len()).sum();
        tracing::warn!(
            sandboxes = found.len(),
            launchers_killed = killed,
            leftovers,
            "crash recovery: reaped the sandboxes of a previous server (marked lost)"
        );
    }
    Ok((lock, svc))
}

/// Opens `<state>/server.db` (owner-only permissions).
pub fn open_store(state: &std::path::Path) -> Result<store::Store, store::StoreError> {
    let path = state.join("server.db");
    let s = store::Store::open(&path)?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    Ok(s)
}

/// Runs the server until `stop` resolves, then shuts down gracefully: stop accepting, destroy
/// every sandbox (recorded in SQLite and in each audit trail), wait at most
/// `cfg.drain_timeout` for open connections. `ready` is told the bound addresses.
pub async fn serve(
    cfg: Config,
    stop: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr, Option<std::net::SocketAddr>),
) -> Result<(), ServeError> {
    let (lock, svc) = prepare(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let debug = match cfg.e2b_debug_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
    };
    svc.start_background();
    let state = AppState { svc: svc.clone() };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let closed = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    ready(
        listener.local_addr()?,
        debug.as_ref().and_then(|l| l.local_addr().ok()),
    );
    let main = tokio::spawn(
        axum::serve(
            listener,
            router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(closed(rx.clone()))
        .into_future(),
    );
    let dbg = debug.map(|l| {
        tokio::spawn(
            axum::serve(
                l,
                debug_router(state.clone())
                    .into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(closed(rx.clone()))
            .into_future(),
        )
    });
    tokio::pin!(stop);
    let mut main = main;
    tokio::select! {
        () = &mut stop => {}
        r = &mut main => {
            // The listener failed on its own: still destroy every sandbox.
            svc.shutdown().await;
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Io(e)),
                Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
            };
        }
    }
    tracing::info!("shutting down: no new connections; destroying every sandbox");
    let _ = tx.send(true);
    let n = svc.shutdown().await;
    tracing::info!(sandboxes = n, "every sandbox destroyed");
    let drain = async {
        let _ = main.await;
        if let Some(d) = dbg {
            let _ = d.await;
        }
    };
    if tokio::time::timeout(cfg.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!("open connections did not close in time; closing them");
    }
    drop(lock);
    Ok(())
}
