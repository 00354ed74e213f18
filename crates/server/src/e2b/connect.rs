//! The Connect protocol (<https://connectrpc.com/docs/protocol>) as envd speaks it: JSON codec,
//! no compression, unary, server-streaming and client-streaming calls over HTTP/1.1 or h2c.
//!
//! - Unary: `POST /<service>/<Method>`, `Content-Type: application/json`, the message as the
//!   body; the answer is `200` with the message, or an error status with
//!   `{"code": "<code>", "message": "..."}`.
//! - Streaming: `Content-Type: application/connect+json`; every message is an envelope (1 flag
//!   byte, 4-byte big-endian length, the JSON). The answer is `200` and a sequence of envelopes
//!   ending with an end-of-stream envelope (flag `0x02`) holding `{}` or `{"error": {...}}`.
//!
//! Every byte of a request is hostile: lengths are checked against [`MAX_MESSAGE`] before any
//! allocation, compressed envelopes and unknown flags are refused, leftover bytes are an error.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::sync::mpsc;

pub const CT_UNARY: &str = "application/json";
pub const CT_STREAM: &str = "application/connect+json";

/// Largest message accepted in either direction (envd's own read limit is 4 MiB for most calls;
/// input chunks sent by the SDK are far smaller).
pub const MAX_MESSAGE: usize = 8 << 20;

const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_END: u8 = 0x02;

/// A Connect error code (the wire names are the snake_case forms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (the protocol's table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A failed call: a code and one clear message (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::Internal, message)
    }

    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::NotFound, message)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl IntoResponse for RpcError {
    /// The unary form: the code's status and the JSON error body.
    fn into_response(self) -> Response {
        let body = self.json().to_string();
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static(CT_UNARY))],
            body,
        )
            .into_response()
    }
}

/// The answer of a unary call.
pub fn unary_ok<T: Serialize>(msg: &T) -> Response {
    match serde_json::to_vec(msg) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CT_UNARY))],
            body,
        )
            .into_response(),
        Err(e) => RpcError::internal(format!("encoding the answer: {e}")).into_response(),
    }
}

/// Checks that a request is a Connect call of the expected kind and not compressed.
pub fn check_request(headers: &HeaderMap, streaming: bool) -> Result<(), RpcError> {
    let want = if streaming { CT_STREAM } else { CT_UNARY };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(want) {
        return Err(RpcError::new(
            Code::Unimplemented,
            format!(
                "content type {ct:?} is not supported here: this call takes {want} (Connect protocol, JSON codec)"
            ),
        ));
    }
    let enc_header = if streaming {
        "connect-content-encoding"
    } else {
        "content-encoding"
    };
    if let Some(enc) = headers.get(enc_header) {
        let enc = enc.to_str().unwrap_or("?");
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("compression {enc:?} is not supported (send uncompressed messages)"),
            ));
        }
    }
    Ok(())
}

/// `Connect-Timeout-Ms`: the deadline the client set for the call (None: none).
pub fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, RpcError> {
    let Some(v) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    // The protocol allows at most 10 digits.
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(RpcError::invalid(format!(
            "Connect-Timeout-Ms {s:?} is not a whole number of milliseconds (at most 10 digits)"
        )));
    }
    let ms: u64 = s
        .parse()
        .map_err(|_| RpcError::invalid("Connect-Timeout-Ms is out of range"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// `Keepalive-Ping-Interval` (seconds), an envd extension: how often a stream sends a
/// keepalive event when it has nothing else to say. Bounded to 1 s ..= 1 h.
pub fn keepalive(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("keepalive-ping-interval")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| Duration::from_secs(secs.clamp(1, 3600)))
}

/// Decodes one JSON message (unary body or envelope payload).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RpcError> {
    // An empty unary body is the empty message.
    let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| RpcError::invalid(format!("bad request message: {e}")))
}

/// Reads a whole body up to [`MAX_MESSAGE`] bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, RpcError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        RpcError::new(
            Code::ResourceExhausted,
            format!("request body unreadable or over {limit} bytes: {e}"),
        )
    })
}

/// Reads a unary request's message.
pub async fn unary_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, RpcError> {
    check_request(headers, false)?;
    let bytes = read_body(body, MAX_MESSAGE).await?;
    decode(&bytes)
}

/// Reads a server-streaming request's single message.
pub async fn stream_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, RpcError> {
    check_request(headers, true)?;
    let bytes = read_body(body, MAX_MESSAGE + 5).await?;
    let mut dec = EnvelopeDecoder::default();
    dec.push(&bytes)?;
    let msg = match dec.next_frame()? {
        Some(Frame::Message(m)) => m,
        Some(Frame::End(_)) | None => {
            return Err(RpcError::invalid("the request stream holds no message"));
        }
    };
    if dec.next_frame()?.is_some() || !dec.is_empty() {
        return Err(RpcError::invalid(
            "a server-streaming request holds exactly one message",
        ));
    }
    decode(&msg)
}

/// One enveloped message.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[flags]);
    // Payloads we produce are bounded well under 4 GiB (output chunks, entries).
    b.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    b.extend_from_slice(payload);
    b.freeze()
}

/// The envelope of one message.
pub fn message<T: Serialize>(msg: &T) -> Result<Bytes, RpcError> {
    let json = serde_json::to_vec(msg).map_err(|e| RpcError::internal(format!("encoding: {e}")))?;
    Ok(envelope(0, &json))
}

/// The end-of-stream envelope.
pub fn end_stream(err: Option<&RpcError>) -> Bytes {
    let body = match err {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({ "error": e.json() }),
    };
    envelope(FLAG_END, body.to_string().as_bytes())
}

/// One decoded envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Message(Bytes),
    /// The end-of-stream envelope (its JSON).
    End(Bytes),
}

/// Incremental decoder of enveloped messages (a client stream arrives in arbitrary pieces).
#[derive(Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
}

impl EnvelopeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Result<(), RpcError> {
        if self.buf.len() + data.len() > MAX_MESSAGE + 5 + 64 * 1024 {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("a request message is over {MAX_MESSAGE} bytes"),
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// No partial envelope is pending.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next complete envelope, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, RpcError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("a request message of {len} bytes is over the {MAX_MESSAGE}-byte limit"),
            ));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ));
        }
        if flags & !(FLAG_COMPRESSED | FLAG_END) != 0 {
            return Err(RpcError::invalid(format!(
                "unknown envelope flags {flags:#04x}"
            )));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(if flags & FLAG_END != 0 {
            Frame::End(payload)
        } else {
            Frame::Message(payload)
        }))
    }
}

/// Reads a client stream's messages one by one.
pub struct ClientStream {
    body: axum::body::BodyDataStream,
    dec: EnvelopeDecoder,
    done: bool,
}

impl ClientStream {
    pub fn new(headers: &HeaderMap, body: Body) -> Result<ClientStream, RpcError> {
        check_request(headers, true)?;
        Ok(ClientStream {
            body: body.into_data_stream(),
            dec: EnvelopeDecoder::default(),
            done: false,
        })
    }

    /// The next message, None at the end of the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RpcError> {
        loop {
            match self.dec.next_frame()? {
                Some(Frame::Message(m)) => return decode(&m).map(Some),
                Some(Frame::End(_)) => {
                    self.done = true;
                    return Ok(None);
                }
                None => {}
            }
            if self.done {
                return Ok(None);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.dec.push(&chunk)?,
                Some(Err(e)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        format!("the request stream broke: {e}"),
                    ));
                }
                None => {
                    self.done = true;
                    if !self.dec.is_empty() {
                        return Err(RpcError::invalid(
                            "the request stream ended inside a message",
                        ));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// The sending side of a streaming answer. Dropping it without [`StreamTx::end`] ends the
/// stream with an `internal` error so a client never mistakes a cut stream for a clean end.
pub struct StreamTx {
    tx: mpsc::Sender<Bytes>,
    ended: bool,
}

impl StreamTx {
    /// Sends one message; Err when the client has gone.
    pub async fn send<T: Serialize>(&self, msg: &T) -> Result<(), Gone> {
        let frame = match message(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "encoding a stream message");
                return Err(Gone);
            }
        };
        self.tx.send(frame).await.map_err(|_| Gone)
    }

    /// Ends the stream, cleanly or with an error.
    pub async fn end(mut self, err: Option<RpcError>) {
        self.ended = true;
        let _ = self.tx.send(end_stream(err.as_ref())).await;
    }

    /// True once the client has gone (the answer's body was dropped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the client has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Drop for StreamTx {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.tx.try_send(end_stream(Some(&RpcError::internal(
                "the stream ended unexpectedly on the server",
            ))));
        }
    }
}

/// The client went away.
#[derive(Debug)]
pub struct Gone;

/// A streaming answer: the response to return now and the sender to feed it from a task.
pub fn stream_response() -> (Response, StreamTx) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    let resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CT_STREAM))],
        Body::from_stream(stream),
    )
        .into_response();
    (resp, StreamTx { tx, ended: false })
}

/// A streaming answer that is only an error (the call failed before its first message).
pub fn stream_error(err: RpcError) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CT_STREAM))],
        end_stream(Some(&err)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_in_pieces() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&envelope(0, b"{\"a\":1}"));
        wire.extend_from_slice(&envelope(0, b"{}"));
        wire.extend_from_slice(&end_stream(None));
        let mut dec = EnvelopeDecoder::default();
        let mut frames = Vec::new();
        for byte in wire {
            dec.push(&[byte]).unwrap();
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Message(Bytes::from_static(b"{\"a\":1}")),
                Frame::Message(Bytes::from_static(b"{}")),
                Frame::End(Bytes::from_static(b"{}")),
            ]
        );
        assert!(dec.is_empty());
    }

    #[test]
    fn hostile_envelopes_are_refused() {
        let mut dec = EnvelopeDecoder::default();
        dec.push(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(dec.next_frame().unwrap_err().code, Code::ResourceExhausted);
        let mut dec = EnvelopeDecoder::default();
        dec.push(&envelope(FLAG_COMPRESSED, b"x")).unwrap();
        assert_eq!(dec.next_frame().unwrap_err().code, Code::Unimplemented);
        let mut dec = EnvelopeDecoder::default();
        dec.push(&envelope(0x80, b"x")).unwrap();
        assert_eq!(dec.next_frame().unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn end_stream_carries_the_error() {
        let e = RpcError::not_found("process with pid 7 not found");
        let b = end_stream(Some(&e));
        assert_eq!(b[0], FLAG_END);
        let v: serde_json::Value = serde_json::from_slice(&b[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "process with pid 7 not found");
    }

    /// A deterministic xorshift generator for the random-input tests.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Hostile bytes in hostile pieces: the decoder never panics, never holds more than its
    /// bound, and gives the same frames whatever the split.
    #[test]
    fn random_streams_decode_the_same_in_any_pieces() {
        let mut next = rng(0x5eed);
        for round in 0..2000 {
            let len = (next() % 64) as usize;
            let mut wire: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Mostly well-formed: real envelopes with small random payloads.
                wire = Vec::new();
                for _ in 0..(next() % 4) {
                    let n = (next() % 20) as usize;
                    let payload: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                    let flags = [0u8, FLAG_END, FLAG_COMPRESSED, 0x80][(next() % 4) as usize];
                    wire.extend_from_slice(&envelope(flags, &payload));
                }
            }
            let whole = {
                let mut d = EnvelopeDecoder::default();
                d.push(&wire).unwrap();
                let mut out = Vec::new();
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => out.push(Ok(f)),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(Err(e.code));
                            break;
                        }
                    }
                }
                out
            };
            let mut d = EnvelopeDecoder::default();
            let mut pieces = Vec::new();
            let mut rest: &[u8] = &wire;
            'feed: while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len());
                d.push(&rest[..n]).unwrap();
                rest = &rest[n..];
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => pieces.push(Ok(f)),
                        Ok(None) => break,
                        Err(e) => {
                            pieces.push(Err(e.code));
                            break 'feed;
                        }
                    }
                }
            }
            assert_eq!(whole, pieces, "round {round}: {wire:?}");
        }
    }

    #[test]
    fn timeout_header() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout(&h).unwrap(), None);
        h.insert("connect-timeout-ms", HeaderValue::from_static("60000"));
        assert_eq!(timeout(&h).unwrap(), Some(Duration::from_secs(60)));
        h.insert("connect-timeout-ms", HeaderValue::from_static("-1"));
        assert!(timeout(&h).is_err());
        h.insert(
            "connect-timeout-ms",
            HeaderValue::from_static("12345678901"),
        );
        assert!(timeout(&h).is_err());
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(check_request(&h, false).is_ok());
        assert!(check_request(&h, true).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/connect+json"),
        );
        assert!(check_request(&h, true).is_ok());
        h.insert("connect-content-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(
            check_request(&h, true).unwrap_err().code,
            Code::Unimplemented
        );
    }
}
