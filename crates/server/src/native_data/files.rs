//! Files in a sandbox: `GET|PUT|DELETE .../files?path=`, `GET .../files/list`, `.../files/stat`,
//! `POST .../files/mkdir`, `.../files/move`, `GET .../files/watch` (SSE).
//!
//! Everything goes through the sandbox's agent (the session's `fs`, `open_read`, `open_write`,
//! `watch`): paths are resolved inside the sandbox, by the sandbox's own uid and view. Transfers
//! stream through the descriptor the agent opened; neither direction is held in memory whole.
//!
//! An upload is written to `.NAME.upload-RANDOM` next to its target and renamed over it once
//! complete: over the cap (413), a full disk (507) or a broken body leaves the target as it was
//! and removes the temporary file. Missing parent directories created for it stay.

use super::{DataError, authorize, limits, resolve_path};
use crate::AppState;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use stockade_runtime::session::{EntryKind, FsOp, FsReply, SessionError, WatchEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read from a file per chunk of a download.
const CHUNK: usize = 64 * 1024;
/// Deepest `depth` a listing may ask for.
const MAX_DEPTH: u32 = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathBody {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    from: String,
    to: String,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;
type JsonResult<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn unexpected(what: &str) -> DataError {
    DataError::from(SessionError::Protocol(format!(
        "unexpected reply to {what}"
    )))
}

fn write_error(e: &std::io::Error) -> DataError {
    match e.raw_os_error() {
        Some(errno) => super::fs_error(errno, format!("writing the file: {e}")),
        None => DataError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("writing the file: {e}"),
        ),
    }
}

/// `GET .../files?path=`: the file's bytes (`application/octet-stream`).
pub async fn download(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let path = resolve_path(sb.session.home(), &q.path)?;
    let cap = limits(&st).max_download;
    let (entry, file) = sb.session.open_read(&path).await?;
    if entry.size > cap {
        return Err(DataError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{path} is {} bytes; downloads are limited to {cap} bytes (stockade serve --max-download)",
                entry.size
            ),
        ));
    }
    // A file that says size 0 may still have content (/proc): read it up to the cap. Otherwise
    // exactly the size it had when opened, announced as Content-Length.
    let (limit, length) = if entry.size == 0 {
        (cap, None)
    } else {
        (entry.size, Some(entry.size))
    };
    let reader = tokio::fs::File::from_std(file).take(limit);
    let stream = futures_util::stream::unfold(Some(reader), |r| async move {
        let mut r = r?;
        let mut buf = vec![0u8; CHUNK];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    }
    Ok(resp)
}

/// `PUT .../files?path=` with the raw bytes as the body: 201 and the entry when created, 200
/// when replaced.
pub async fn upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
    body: Body,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let path = resolve_path(sb.session.home(), &q.path)?;
    let cap = limits(&st).max_upload;
    let too_large = |n: &dyn std::fmt::Display| {
        DataError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the upload is {n} bytes; uploads are limited to {cap} bytes (stockade serve --max-upload); nothing was written"
            ),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > cap
    {
        return Err(too_large(&len));
    }
    let Some((parent, name)) = path.rsplit_once('/') else {
        return Err(DataError::bad_request("path must be absolute"));
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(DataError::bad_request(format!(
            "{path}: name a file, not a directory"
        )));
    }
    let existed = match sb.session.fs(FsOp::Stat { path: path.clone() }).await {
        Ok(FsReply::Entry { entry }) if entry.kind == EntryKind::Dir => {
            return Err(DataError::new(
                StatusCode::BAD_REQUEST,
                "is_a_directory",
                format!("{path} is a directory"),
            ));
        }
        Ok(_) => true,
        Err(SessionError::Fs { errno, .. }) if errno == libc::ENOENT => false,
        Err(e) => return Err(e.into()),
    };
    let nonce = getrandom::u64().map_err(|e| {
        DataError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("randomness: {e}"),
        )
    })?;
    let tmp = format!("{parent}/.{name}.upload-{nonce:016x}");
    let file = sb.session.open_write(&tmp).await?;
    let mut f = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    let copied: Result<(), DataError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| DataError::bad_request(format!("reading the request body: {e}")))?;
            written += chunk.len() as u64;
            if written > cap {
                return Err(too_large(&format!("more than {cap}")));
            }
            f.write_all(&chunk).await.map_err(|e| write_error(&e))?;
        }
        // tokio writes in the background: errors of the last write surface here.
        f.flush().await.map_err(|e| write_error(&e))?;
        Ok(())
    }
    .await;
    // Every byte is in the file (or the error from inside says why not: above the container
    // level a full disk inside reaches this side as a broken pipe, and its ENOSPC from here).
    if copied.is_err() {
        // The client may still be sending: read (and drop) the rest, bounded, so that it gets
        // the answer instead of a broken connection.
        crate::e2b::files::drain(std::pin::pin!(stream)).await;
    }
    let finished = sb.session.finish_write(f.into_std().await).await;
    let copied = match (copied, finished) {
        (Ok(()), Ok(())) => Ok(()),
        (_, Err(e @ SessionError::Fs { .. })) => Err(e.into()),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.into()),
    };
    let moved = match copied {
        Ok(()) => {
            sb.session
                .fs(FsOp::Move {
                    from: tmp.clone(),
                    to: path.clone(),
                })
                .await
        }
        Err(e) => {
            let _ = sb.session.fs(FsOp::Remove { path: tmp }).await;
            return Err(e);
        }
    };
    let entry = match moved {
        Ok(FsReply::Moved { entry }) => entry,
        Ok(_) => return Err(unexpected("move")),
        Err(e) => {
            let _ = sb.session.fs(FsOp::Remove { path: tmp }).await;
            return Err(e.into());
        }
    };
    sb.session.record_file_written(&path, written, !existed);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(entry)).into_response())
}

/// `DELETE .../files?path=`: a file, a symlink, or a directory with everything under it.
pub async fn remove(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let path = resolve_path(sb.session.home(), &q.path)?;
    match sb.session.fs(FsOp::Remove { path }).await? {
        FsReply::Removed => Ok(StatusCode::NO_CONTENT.into_response()),
        _ => Err(unexpected("remove")),
    }
}

/// `GET .../files/list?path=&depth=1`
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<ListQuery>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let path = resolve_path(sb.session.home(), &q.path)?;
    let depth = q.depth.unwrap_or(1);
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(DataError::bad_request(format!(
            "depth {depth}: expected 1 to {MAX_DEPTH}"
        )));
    }
    match sb.session.fs(FsOp::List { path, depth }).await? {
        FsReply::List { entries, truncated } => Ok(Json(
            serde_json::json!({ "entries": entries, "truncated": truncated }),
        )
        .into_response()),
        _ => Err(unexpected("list")),
    }
}

/// `GET .../files/stat?path=` (does not follow a final symlink).
pub async fn stat(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<PathQuery>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let path = resolve_path(sb.session.home(), &q.path)?;
    match sb.session.fs(FsOp::Stat { path }).await? {
        FsReply::Entry { entry } => Ok(Json(entry).into_response()),
        _ => Err(unexpected("stat")),
    }
}

/// `POST .../files/mkdir {path}`: with missing parents; 201 when created, 200 when it existed.
pub async fn mkdir(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: JsonResult<PathBody>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Json(b) = body?;
    let path = resolve_path(sb.session.home(), &b.path)?;
    match sb.session.fs(FsOp::Mkdir { path }).await? {
        FsReply::Mkdir { created, entry } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(serde_json::json!({ "created": created, "entry": entry })),
            )
                .into_response())
        }
        _ => Err(unexpected("mkdir")),
    }
}

/// `POST .../files/move {from, to}`: rename(2), creating the destination's missing parents.
pub async fn move_(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: JsonResult<MoveBody>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Json(b) = body?;
    let home = sb.session.home();
    let from = resolve_path(home, &b.from)?;
    let to = resolve_path(home, &b.to)?;
    match sb.session.fs(FsOp::Move { from, to }).await? {
        FsReply::Moved { entry } => Ok(Json(entry).into_response()),
        _ => Err(unexpected("move")),
    }
}

/// `GET .../files/watch?path=&recursive=`: SSE, `watching` once the watch is in place, then
/// `change` `{op, path}`, `overflow` (events were lost), `gone` (the directory went away; the
/// stream ends).
pub async fn watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<WatchQuery>,
) -> Result<Response, DataError> {
    let sb = authorize(&st, &headers, &id)?;
    let Query(q) = q?;
    let path = resolve_path(sb.session.home(), &q.path)?;
    let w = sb.session.watch(&path, q.recursive).await?;
    let first = SseEvent::default()
        .event("watching")
        .data(serde_json::json!({ "path": path, "recursive": q.recursive }).to_string());
    // The stream owns the watch: when the client goes away, it is dropped and removed.
    let stream =
        futures_util::stream::unfold((Some(first), w, false), |(first, mut w, done)| async move {
            if let Some(f) = first {
                return Some((Ok::<_, Infallible>(f), (None, w, false)));
            }
            if done {
                return None;
            }
            let ev = w.events.recv().await?;
            let (ev, done) = match ev {
                WatchEvent::Change { op, path } => (
                    SseEvent::default()
                        .event("change")
                        .data(serde_json::json!({ "op": op, "path": path }).to_string()),
                    false,
                ),
                WatchEvent::Overflow => (SseEvent::default().event("overflow").data("{}"), false),
                WatchEvent::Gone => (SseEvent::default().event("gone").data("{}"), true),
            };
            Some((Ok(ev), (None, w, done)))
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
