//! `filesystem.Filesystem`: envd's file service, served through the sandbox's agent
//! ([`Session::fs`], [`Session::watch`]); the server never opens a path built from a request.
//!
//! Polling watchers (`CreateWatcher`/`GetWatcherEvents`/`RemoveWatcher`, what the sync SDK's
//! `files.watch_dir` uses) are kept here, per sandbox and bounded: at most
//! [`MAX_WATCHERS_PER_SANDBOX`] per sandbox and [`MAX_WATCHERS`] in all, each holding at most
//! [`MAX_PENDING_EVENTS`] events between two polls. Events lost to either the kernel's queue or
//! that bound are reported (an error on the next poll), never dropped silently. A watcher ends
//! with its sandbox.
//!
//! [`Session::fs`]: stockade_runtime::session::Session::fs
//! [`Session::watch`]: stockade_runtime::session::Session::watch

use super::connect::{self, Code, RpcError, StreamTx};
use super::envd::{Target, check_rpc_user, entry_info, find_running, resolve_path, rpc_error};
use super::messages::{
    FilesystemEvent, ListDirRequest, MoveRequest, PathRequest, WatchRequest, WatcherIdRequest,
    event_type,
};
use crate::AppState;
use crate::service::Sandbox;
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stockade_runtime::session::{FsOp, FsReply, SessionError, WatchEvent, WatchHandle};

pub const MAX_WATCHERS_PER_SANDBOX: usize = 32;
pub const MAX_WATCHERS: usize = 1024;
pub const MAX_PENDING_EVENTS: usize = 10_000;

async fn unary<T, F>(t: &Target, headers: &HeaderMap, body: Body, f: F) -> Response
where
    T: serde::de::DeserializeOwned,
    F: AsyncFnOnce(&Sandbox, T) -> Result<serde_json::Value, RpcError>,
{
    let r = async {
        let req: T = connect::unary_request(headers, body).await?;
        check_rpc_user(&t.sandbox, headers)?;
        f(&t.sandbox, req).await
    };
    match r.await {
        Ok(v) => connect::unary_ok(&v),
        Err(e) => e.into_response(),
    }
}

fn protocol(what: &str, got: &FsReply) -> RpcError {
    tracing::warn!(?got, "agent answered {what} with the wrong reply");
    RpcError::internal(format!("the sandbox's agent gave a wrong answer to {what}"))
}

fn home(sb: &Sandbox) -> &str {
    sb.session.home()
}

pub async fn stat(t: Target, headers: HeaderMap, body: Body) -> Response {
    unary(&t, &headers, body, async |sb, req: PathRequest| {
        let path = resolve_path(&req.path, home(sb))?;
        match sb
            .session
            .fs(FsOp::Stat { path })
            .await
            .map_err(rpc_error)?
        {
            FsReply::Entry { entry } => {
                Ok(serde_json::json!({ "entry": entry_info(&entry, sb.session.user()) }))
            }
            other => Err(protocol("stat", &other)),
        }
    })
    .await
}

pub async fn list_dir(t: Target, headers: HeaderMap, body: Body) -> Response {
    unary(&t, &headers, body, async |sb, req: ListDirRequest| {
        let path = resolve_path(&req.path, home(sb))?;
        let depth = req.depth.max(1);
        match sb
            .session
            .fs(FsOp::List {
                path: path.clone(),
                depth,
            })
            .await
            .map_err(rpc_error)?
        {
            FsReply::List { entries, truncated } => {
                if truncated {
                    return Err(RpcError::new(
                        Code::FailedPrecondition,
                        format!(
                            "{path} holds more than {} entries at depth {depth}: list a smaller depth or a subdirectory",
                            entries.len()
                        ),
                    ));
                }
                let user = sb.session.user();
                let entries: Vec<_> = entries.iter().map(|e| entry_info(e, user)).collect();
                Ok(serde_json::json!({ "entries": entries }))
            }
            other => Err(protocol("list", &other)),
        }
    })
    .await
}

pub async fn make_dir(t: Target, headers: HeaderMap, body: Body) -> Response {
    unary(&t, &headers, body, async |sb, req: PathRequest| {
        let path = resolve_path(&req.path, home(sb))?;
        match sb.session.fs(FsOp::Mkdir { path: path.clone() }).await {
            Ok(FsReply::Mkdir {
                created: true,
                entry,
            }) => Ok(serde_json::json!({ "entry": entry_info(&entry, sb.session.user()) })),
            Ok(FsReply::Mkdir { created: false, .. }) => Err(RpcError::new(
                Code::AlreadyExists,
                format!("directory already exists: {path}"),
            )),
            Ok(other) => Err(protocol("mkdir", &other)),
            Err(SessionError::Fs { errno, .. })
                if errno == libc::EEXIST || errno == libc::ENOTDIR =>
            {
                Err(RpcError::invalid(format!(
                    "path already exists but it is not a directory (or a parent is a file): {path}"
                )))
            }
            Err(e) => Err(rpc_error(e)),
        }
    })
    .await
}

pub async fn move_(t: Target, headers: HeaderMap, body: Body) -> Response {
    unary(&t, &headers, body, async |sb, req: MoveRequest| {
        let from = resolve_path(&req.source, home(sb))?;
        let to = resolve_path(&req.destination, home(sb))?;
        match sb
            .session
            .fs(FsOp::Move { from, to })
            .await
            .map_err(rpc_error)?
        {
            FsReply::Moved { entry } => {
                Ok(serde_json::json!({ "entry": entry_info(&entry, sb.session.user()) }))
            }
            other => Err(protocol("move", &other)),
        }
    })
    .await
}

pub async fn remove(t: Target, headers: HeaderMap, body: Body) -> Response {
    unary(&t, &headers, body, async |sb, req: PathRequest| {
        let path = resolve_path(&req.path, home(sb))?;
        match sb
            .session
            .fs(FsOp::Remove { path })
            .await
            .map_err(rpc_error)?
        {
            FsReply::Removed => Ok(serde_json::json!({})),
            other => Err(protocol("remove", &other)),
        }
    })
    .await
}

/// Starts a watch the way envd checks it: the path must be a directory.
async fn open_watch(sb: &Sandbox, req: &WatchRequest) -> Result<(String, WatchHandle), RpcError> {
    let root = resolve_path(&req.path, home(sb))?;
    match sb.session.watch(&root, req.recursive).await {
        Ok(h) => Ok((root, h)),
        Err(SessionError::Fs { errno, .. }) if errno == libc::ENOENT => {
            Err(RpcError::not_found(format!("path {root} not found")))
        }
        Err(SessionError::Fs { errno, .. }) if errno == libc::ENOTDIR => {
            Err(RpcError::invalid(format!("path {root} is not a directory")))
        }
        Err(e) => Err(rpc_error(e)),
    }
}

/// The envd event of one agent change, or the error that ends the watch.
async fn convert(
    sb: &Sandbox,
    root: &str,
    include_entry: bool,
    ev: WatchEvent,
) -> Result<FilesystemEvent, RpcError> {
    match ev {
        WatchEvent::Change { op, path } => {
            let name = match path.strip_prefix(root) {
                Some("") => ".".to_string(),
                Some(rest) if root == "/" => rest.to_string(),
                Some(rest) => match rest.strip_prefix('/') {
                    Some(r) => r.to_string(),
                    None => path.clone(),
                },
                None => path.clone(),
            };
            let entry = if include_entry {
                match sb.session.fs(FsOp::Stat { path }).await {
                    Ok(FsReply::Entry { entry }) => Some(entry_info(&entry, sb.session.user())),
                    _ => None,
                }
            } else {
                None
            };
            Ok(FilesystemEvent {
                name,
                kind: event_type(op),
                entry,
            })
        }
        WatchEvent::Overflow => Err(RpcError::new(
            Code::DataLoss,
            "filesystem events were lost: the kernel's event queue overflowed",
        )),
        WatchEvent::Gone => Err(RpcError::not_found(format!(
            "the watched directory {root} was removed"
        ))),
    }
}

/// `WatchDir` (server stream): a start event, then one event per change.
pub async fn watch_dir(t: Target, headers: HeaderMap, body: Body) -> Response {
    let req: WatchRequest = match connect::stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return connect::stream_error(e),
    };
    if let Err(e) = check_rpc_user(&t.sandbox, &headers) {
        return connect::stream_error(e);
    }
    let (root, handle) = match open_watch(&t.sandbox, &req).await {
        Ok(w) => w,
        Err(e) => return connect::stream_error(e),
    };
    let (resp, tx) = connect::stream_response();
    let keepalive = connect::keepalive(&headers);
    let sb = t.sandbox.clone();
    tokio::spawn(async move {
        stream_watch(sb, root, req.include_entry, handle, tx, keepalive).await;
    });
    resp
}

async fn stream_watch(
    sb: Arc<Sandbox>,
    root: String,
    include_entry: bool,
    mut handle: WatchHandle,
    tx: StreamTx,
    keepalive: Option<std::time::Duration>,
) {
    if tx.send(&serde_json::json!({ "start": {} })).await.is_err() {
        return;
    }
    let mut ka = keepalive.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    loop {
        let tick = async {
            match ka.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = handle.events.recv() => {
                let Some(ev) = ev else {
                    tx.end(Some(RpcError::new(Code::Unavailable, "the sandbox was not found: it has ended"))).await;
                    return;
                };
                match convert(&sb, &root, include_entry, ev).await {
                    Ok(e) => {
                        if tx.send(&serde_json::json!({ "filesystem": e })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tx.end(Some(e)).await;
                        return;
                    }
                }
            }
            () = tick => {
                if tx.send(&serde_json::json!({ "keepalive": {} })).await.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// The polling watchers of every sandbox served by one router.
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, Arc<PollWatcher>>>,
}

pub struct PollWatcher {
    sandbox_id: String,
    state: Arc<Mutex<PollState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct PollState {
    events: Vec<FilesystemEvent>,
    /// Reported on the next poll: events lost (then cleared), or the end of the watch (kept).
    error: Option<(RpcError, bool)>,
}

impl Drop for PollWatcher {
    fn drop(&mut self) {
        // Ends the task, which drops its WatchHandle (that removes the agent's watch).
        self.task.abort();
    }
}

impl Watchers {
    fn lock(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, Arc<PollWatcher>>>, RpcError> {
        self.map
            .lock()
            .map_err(|_| RpcError::internal("watcher table poisoned"))
    }

    fn get(&self, sandbox_id: &str, id: &str) -> Result<Arc<PollWatcher>, RpcError> {
        self.lock()?
            .get(id)
            .filter(|w| w.sandbox_id == sandbox_id)
            .cloned()
            .ok_or_else(|| RpcError::not_found(format!("watcher with id {id:?} not found")))
    }
}

/// Collects one watch's events for polling.
async fn collect(
    sb: Arc<Sandbox>,
    root: String,
    include_entry: bool,
    mut handle: WatchHandle,
    state: Arc<Mutex<PollState>>,
) {
    while let Some(ev) = handle.events.recv().await {
        let r = convert(&sb, &root, include_entry, ev).await;
        let Ok(mut st) = state.lock() else { return };
        match r {
            Ok(e) if st.events.len() < MAX_PENDING_EVENTS => st.events.push(e),
            Ok(_) => {
                if st.error.is_none() {
                    st.error = Some((
                        RpcError::new(
                            Code::DataLoss,
                            format!(
                                "filesystem events were lost: more than {MAX_PENDING_EVENTS} since the last poll"
                            ),
                        ),
                        false,
                    ));
                }
            }
            Err(e) => {
                let lasting = e.code != Code::DataLoss;
                st.error = Some((e, lasting));
                if lasting {
                    return;
                }
            }
        }
    }
    if let Ok(mut st) = state.lock() {
        st.error = Some((
            RpcError::new(Code::Unavailable, "the sandbox was not found: it has ended"),
            true,
        ));
    }
}

pub async fn create_watcher(
    State(app): State<AppState>,
    t: Target,
    Extension(ws): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let sb = t.sandbox.clone();
    unary(&t, &headers, body, async |_, req: WatchRequest| {
        {
            let mut map = ws.lock()?;
            // Watchers of sandboxes that ended are gone for good.
            map.retain(|_, w| find_running(&app, &w.sandbox_id).is_some());
            let mine = map.values().filter(|w| w.sandbox_id == sb.id).count();
            if mine >= MAX_WATCHERS_PER_SANDBOX || map.len() >= MAX_WATCHERS {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!(
                        "too many watchers (at most {MAX_WATCHERS_PER_SANDBOX} per sandbox): remove one first"
                    ),
                ));
            }
        }
        let (root, handle) = open_watch(&sb, &req).await?;
        let id = format!("w{}", random_hex()?);
        let state = Arc::new(Mutex::new(PollState::default()));
        let task = tokio::spawn(collect(
            sb.clone(),
            root,
            req.include_entry,
            handle,
            state.clone(),
        ));
        let w = Arc::new(PollWatcher {
            sandbox_id: sb.id.clone(),
            state,
            task,
        });
        ws.lock()?.insert(id.clone(), w);
        Ok(serde_json::json!({ "watcherId": id }))
    })
    .await
}

pub async fn get_watcher_events(
    t: Target,
    Extension(ws): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    unary(&t, &headers, body, async |sb, req: WatcherIdRequest| {
        let w = ws.get(&sb.id, &req.watcher_id)?;
        let mut st = w
            .state
            .lock()
            .map_err(|_| RpcError::internal("watcher poisoned"))?;
        if let Some((e, lasting)) = st.error.take() {
            if lasting {
                // Events seen before the watch ended come first; the end on the next poll.
                st.error = Some((e.clone(), true));
                if !st.events.is_empty() {
                    let events = std::mem::take(&mut st.events);
                    return Ok(serde_json::json!({ "events": events }));
                }
            } else {
                st.events.clear();
            }
            return Err(e);
        }
        let events = std::mem::take(&mut st.events);
        Ok(serde_json::json!({ "events": events }))
    })
    .await
}

pub async fn remove_watcher(
    t: Target,
    Extension(ws): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    unary(&t, &headers, body, async |sb, req: WatcherIdRequest| {
        ws.get(&sb.id, &req.watcher_id)?;
        ws.lock()?.remove(&req.watcher_id);
        Ok(serde_json::json!({}))
    })
    .await
}

fn random_hex() -> Result<String, RpcError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| RpcError::internal(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
