//! envd's HTTP file API: `GET /files` (download) and `POST /files` (upload, `multipart/form-data`
//! or `application/octet-stream`, optionally gzip-encoded), with `path` and `username` query
//! parameters. Errors are `{"code": <status>, "message": ...}`; a full disk is 507.
//!
//! Files are opened by the sandbox's agent inside the sandbox ([`Session::open_read`],
//! [`Session::open_write`]) and only read or written here through that descriptor, so `..`,
//! symlinks and absolute paths resolve inside the sandbox. Bodies are streamed, never held
//! whole in memory; a gzip body is inflated in small steps (a compression bomb costs at most a
//! few MiB of memory at a time, and its output counts against the sandbox's disk like any
//! write). Signed URLs (`signature`, `signature_expiration`) are not supported: the server keeps
//! only a hash of the access token, which cannot check them; send `X-Access-Token` instead.
//!
//! [`Session::open_read`]: stockade_runtime::session::Session::open_read
//! [`Session::open_write`]: stockade_runtime::session::Session::open_write

use super::envd::{Target, acting_user, base_name, errno_status, plain_error, resolve_path};
use crate::service::Sandbox;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use std::io::Write;
use std::pin::{Pin, pin};
use std::time::Duration;
use stockade_runtime::session::{FsOp, FsReply, SessionError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most files one multipart upload may hold.
const MAX_PARTS: usize = 1000;
/// Compressed bytes inflated per step (deflate expands at most ~1032x).
const INFLATE_STEP: usize = 4096;
/// After a failed upload, how much of the rest of its body is read (and dropped) so that the
/// client, still sending, gets the error instead of a broken connection.
const DRAIN_BYTES: usize = 1 << 30;
const DRAIN_TIME: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
}

/// A failed file call.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        plain_error(self.0, self.1)
    }
}

fn session_fail(path: &str, e: SessionError) -> Fail {
    match e {
        SessionError::Fs { errno, message } => {
            let status = errno_status(errno);
            let msg = match status {
                StatusCode::NOT_FOUND => format!("path '{path}' does not exist"),
                StatusCode::INSUFFICIENT_STORAGE => {
                    format!("not enough disk space available: {message}")
                }
                _ => format!("{path}: {message}"),
            };
            Fail(status, msg)
        }
        SessionError::Gone => Fail(
            StatusCode::BAD_GATEWAY,
            "The sandbox was not found: it has ended".into(),
        ),
        SessionError::Invalid(m) | SessionError::ExecRefused { message: m, .. } => {
            Fail(StatusCode::BAD_REQUEST, format!("{path}: {m}"))
        }
        SessionError::Protocol(m) => {
            tracing::warn!(error = %m, "sandbox agent broke the protocol");
            Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the sandbox's agent gave a wrong answer".into(),
            )
        }
    }
}

fn check(sb: &Sandbox, q: &FilesQuery) -> Result<(), Fail> {
    if q.signature.is_some() {
        return Err(Fail(
            StatusCode::UNAUTHORIZED,
            "signed file URLs are not supported by stockade: send the X-Access-Token header".into(),
        ));
    }
    acting_user(sb, q.username.as_deref()).map_err(|e| Fail(StatusCode::UNAUTHORIZED, e.message))
}

fn resolve(sb: &Sandbox, p: &str) -> Result<String, Fail> {
    resolve_path(p, sb.session.home()).map_err(|e| Fail(StatusCode::BAD_REQUEST, e.message))
}

/// `GET /files?path=`: the file's bytes.
pub async fn download(t: Target, Query(q): Query<FilesQuery>) -> Response {
    let sb = &t.sandbox;
    let r = async {
        check(sb, &q)?;
        let path = resolve(sb, q.path.as_deref().unwrap_or(""))?;
        if let Ok(FsReply::Entry { entry }) = sb.session.fs(FsOp::Stat { path: path.clone() }).await
            && entry.kind == stockade_runtime::session::EntryKind::Dir
        {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                format!("path '{path}' is a directory"),
            ));
        }
        let (_, file) = sb
            .session
            .open_read(&path)
            .await
            .map_err(|e| session_fail(&path, e))?;
        Ok(tokio::fs::File::from_std(file))
    };
    let file = match r.await {
        Ok(f) => f,
        Err(f) => return f.into_response(),
    };
    let stream = futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `POST /files`: writes the uploaded file(s), answers `[{"name","type":"file","path"}]`.
pub async fn upload(t: Target, Query(q): Query<FilesQuery>, req: Request) -> Response {
    match upload_inner(&t.sandbox, &q, req).await {
        Ok(written) => {
            let v: Vec<_> = written
                .iter()
                .map(|p| serde_json::json!({ "name": base_name(p), "type": "file", "path": p }))
                .collect();
            (StatusCode::OK, axum::Json(v)).into_response()
        }
        Err(f) => f.into_response(),
    }
}

async fn upload_inner(sb: &Sandbox, q: &FilesQuery, req: Request) -> Result<Vec<String>, Fail> {
    check(sb, q)?;
    let headers = req.headers().clone();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let gzip = content_gzip(&headers)?;
    if media == "application/octet-stream" {
        let Some(p) = q.path.as_deref() else {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                "path query parameter is required for raw body upload".into(),
            ));
        };
        let path = resolve(sb, p)?;
        let mut body = pin!(
            req.into_body()
                .into_data_stream()
                .map(|r| r.map_err(std::io::Error::other))
        );
        if let Err(f) = write_file(sb, &path, body.as_mut(), gzip).await {
            drain(body).await;
            return Err(f);
        }
        return Ok(vec![path]);
    }
    if !media.starts_with("multipart/") {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported content type: {ct:?}, expected multipart/form-data or application/octet-stream"
            ),
        ));
    }
    if gzip {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            "a gzip-encoded upload must be application/octet-stream".into(),
        ));
    }
    let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("bad multipart body: {}", e.body_text()),
        )
    })?;
    let r = multipart_parts(sb, q, &mut mp).await;
    if r.is_err() {
        drain_multipart(&mut mp).await;
    }
    r
}

async fn multipart_parts(
    sb: &Sandbox,
    q: &FilesQuery,
    mp: &mut Multipart,
) -> Result<Vec<String>, Fail> {
    let mut written: Vec<String> = Vec::new();
    let mut parts = 0usize;
    while let Some(field) = mp.next_field().await.map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("bad multipart body: {}", e.body_text()),
        )
    })? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_PARTS} parts per upload"),
            ));
        }
        if field.name() != Some("file") {
            continue;
        }
        let given = match (q.path.as_deref(), field.file_name()) {
            (Some(p), _) if written.is_empty() => p.to_string(),
            (_, Some(f)) => f.to_string(),
            (None, None) => {
                return Err(Fail(
                    StatusCode::BAD_REQUEST,
                    "a file part needs a filename (its path) when no path parameter is given"
                        .into(),
                ));
            }
            (Some(_), None) => {
                return Err(Fail(
                    StatusCode::BAD_REQUEST,
                    "the path parameter names one file: give the others a filename".into(),
                ));
            }
        };
        let path = resolve(sb, &given)?;
        if written.contains(&path) {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "you cannot upload multiple files to the same path '{path}' in one upload request, only the first specified file was uploaded"
                ),
            ));
        }
        let body = pin!(field.map(|r| r.map_err(std::io::Error::other)));
        write_file(sb, &path, body, false).await?;
        written.push(path);
    }
    if written.is_empty() {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            "the upload holds no part named \"file\"".into(),
        ));
    }
    Ok(written)
}

fn content_gzip(headers: &HeaderMap) -> Result<bool, Fail> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    match v
        .to_str()
        .unwrap_or("?")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        other => Err(Fail(
            StatusCode::BAD_REQUEST,
            format!("unsupported Content-Encoding {other:?} (gzip and identity are)"),
        )),
    }
}

fn io_fail(path: &str, e: &std::io::Error) -> Fail {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Fail(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("not enough disk space available writing '{path}'"),
        ),
        _ => Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("error writing file '{path}': {e}"),
        ),
    }
}

/// Streams `body` (inflated when `gzip`) into `path` inside the sandbox. A failed upload leaves
/// nothing behind: a new file is removed again; an existing one is replaced only once the whole
/// body is written (the new content goes to a temporary file beside it, renamed over it), so it
/// keeps its old content. A new file is written in place, so a watcher sees it created and
/// written, as with envd.
async fn write_file<S: Stream<Item = std::io::Result<Bytes>>>(
    sb: &Sandbox,
    path: &str,
    body: Pin<&mut S>,
    gzip: bool,
) -> Result<(), Fail> {
    let existed = match sb
        .session
        .fs(FsOp::Stat {
            path: path.to_string(),
        })
        .await
    {
        Ok(FsReply::Entry { entry }) => {
            if entry.kind == stockade_runtime::session::EntryKind::Dir {
                return Err(Fail(
                    StatusCode::BAD_REQUEST,
                    format!("path is a directory: {path}"),
                ));
            }
            true
        }
        _ => false,
    };
    let target = if existed {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).map_err(|e| {
            Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("no randomness: {e}"),
            )
        })?;
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        format!("{dir}/.{name}.stockade-upload-{hex}")
    } else {
        path.to_string()
    };
    let file = sb
        .session
        .open_write(&target)
        .await
        .map_err(|e| session_fail(path, e))?;
    let mut file = tokio::fs::File::from_std(file);
    let result = copy_body(path, &mut file, body, gzip).await;
    // Every byte is in the file, or the error from inside says why not (above the container
    // level a full disk inside reaches this side as a broken pipe; its ENOSPC comes from here).
    let finished = sb.session.finish_write(file.into_std().await).await;
    let result = match (result, finished) {
        (Ok(size), Ok(())) => Ok(size),
        (_, Err(e @ SessionError::Fs { .. })) => Err(session_fail(path, e)),
        (Err(f), _) => Err(f),
        (Ok(_), Err(e)) => Err(session_fail(path, e)),
    };
    let result = match result {
        Ok(size) if existed => match sb
            .session
            .fs(FsOp::Move {
                from: target.clone(),
                to: path.to_string(),
            })
            .await
        {
            Ok(_) => Ok(size),
            Err(e) => Err(session_fail(path, e)),
        },
        other => other,
    };
    match result {
        Ok(size) => {
            sb.session.record_file_written(path, size, !existed);
            Ok(())
        }
        Err(f) => {
            if let Err(e) = sb.session.fs(FsOp::Remove { path: target }).await {
                tracing::warn!(error = %e, "removing a failed upload");
            }
            Err(f)
        }
    }
}

/// Copies the body into the file; the bytes written.
async fn copy_body<S: Stream<Item = std::io::Result<Bytes>>>(
    path: &str,
    file: &mut tokio::fs::File,
    mut body: Pin<&mut S>,
    gzip: bool,
) -> Result<u64, Fail> {
    let inflate_fail = |e: std::io::Error| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("error decompressing request body: {e}"),
        )
    };
    let mut inflater = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Fail(
                StatusCode::BAD_REQUEST,
                format!("the upload body broke: {e}"),
            )
        })?;
        match inflater.as_mut() {
            None => {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io_fail(path, &e))?;
                size += chunk.len() as u64;
            }
            Some(dec) => {
                for piece in chunk.chunks(INFLATE_STEP) {
                    dec.write_all(piece).map_err(inflate_fail)?;
                    let out = std::mem::take(dec.get_mut());
                    file.write_all(&out).await.map_err(|e| io_fail(path, &e))?;
                    size += out.len() as u64;
                }
            }
        }
    }
    if let Some(dec) = inflater.as_mut() {
        dec.try_finish().map_err(inflate_fail)?;
        let out = std::mem::take(dec.get_mut());
        file.write_all(&out).await.map_err(|e| io_fail(path, &e))?;
        size += out.len() as u64;
    }
    file.flush().await.map_err(|e| io_fail(path, &e))?;
    Ok(size)
}

/// Reads and drops the rest of a failed upload's body (bounded by [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`]).
/// Also the native API's upload's, after a failure.
pub(crate) async fn drain<S: Stream<Item = Result<Bytes, E>>, E>(mut body: Pin<&mut S>) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut n = 0usize;
    while let Ok(Some(Ok(c))) = tokio::time::timeout_at(deadline, body.next()).await {
        n += c.len();
        if n > DRAIN_BYTES {
            return;
        }
    }
}

/// [`drain`] for a multipart body: the rest of every part.
async fn drain_multipart(mp: &mut Multipart) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut n = 0usize;
    while let Ok(Ok(Some(mut f))) = tokio::time::timeout_at(deadline, mp.next_field()).await {
        while let Ok(Ok(Some(c))) = tokio::time::timeout_at(deadline, f.chunk()).await {
            n += c.len();
            if n > DRAIN_BYTES {
                return;
            }
        }
    }
}
