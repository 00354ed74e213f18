//! TLS interception for hosts that have secrets bound: the sandbox's TLS ends here with a
//! certificate minted by a per-sandbox CA (made in memory; its private key never leaves this
//! process and is dropped with the [`Interceptor`]), the request is checked and its placeholders
//! replaced by the real values where the policy allows, and it goes on to the real host over TLS
//! verified against the host's trust store. Responses are scrubbed: a real value coming back is
//! replaced by its placeholder before the sandbox sees it, across chunk and frame boundaries.
//!
//! Both sides speak the same HTTP version: the upstream is offered `h2` only when the sandbox's
//! ClientHello offered it, and the sandbox is then offered exactly what the upstream chose, so
//! HTTP/1.1 and HTTP/2 requests are proxied request by request without translation.
//!
//! ## Rules per request
//!
//! - The request's authority (`Host`, or `:authority` in HTTP/2) must be the intercepted name
//!   (and port): `421` otherwise (`denied:host_mismatch`).
//! - A placeholder of a secret not bound to this host, or in a place its `in` does not allow
//!   (header, query, body; the path never), refuses the request with `403` and an
//!   `X-Stockade-Reason` header; it is recorded as a [`SecretEvent::Refused`]. Nothing is sent.
//! - Allowed placeholders are replaced in header values (also inside `Authorization: Basic`,
//!   whose base64 is decoded, substituted and re-encoded), in the query, and in the body.
//!   Request bodies are read whole first (at most [`MAX_BODY`] bytes, `413` past it), so a
//!   refusal happens before anything is sent and `Content-Length` is exact.
//! - `Accept-Encoding` is set to `identity`, so the scrubber sees the response bytes as sent.
//! - Response headers and body are scrubbed; `Content-Length` is dropped when there is a body
//!   (its length may change).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::rules;
use crate::secrets::{Replacer, SecretSet};

/// Largest request body read for substitution and checking.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Most refusals kept per connection (the rest are counted in the last one's reason).
const MAX_REFUSALS: usize = 64;

/// What a secret did on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretEvent {
    /// The placeholder was replaced by the value `count` times in requests to `host`.
    Used {
        name: String,
        host: String,
        count: u64,
    },
    /// A request carrying the placeholder towards `destination` was refused.
    Refused {
        name: String,
        destination: String,
        reason: &'static str,
    },
}

/// A per-sandbox CA and the secrets it serves.
pub struct Interceptor {
    secrets: Arc<SecretSet>,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    leaves: Mutex<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    upstream_roots: Arc<rustls::RootCertStore>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's trust store (the system bundle; `SSL_CERT_FILE`/`SSL_CERT_DIR` in stockade's own
/// environment replace it), loaded once.
pub fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = rustls::RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted CA certificate found on the host for verifying upstream TLS ({} errors)",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn validity(params: &mut rcgen::CertificateParams) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let today = now / 86_400;
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + 30);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

impl Interceptor {
    /// Makes the CA for sandbox `id`. Its name constraints permit only the hosts the secrets are
    /// bound to, so even a leaked CA could vouch for no other name.
    pub fn new(
        secrets: Arc<SecretSet>,
        id: &str,
        upstream_roots: Arc<rustls::RootCertStore>,
    ) -> Result<Interceptor, String> {
        let e = |e: rcgen::Error| format!("making the sandbox CA: {e}");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Stockade sandbox {id} secret gateway CA"),
        );
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Stockade");
        let mut hosts: Vec<String> = secrets
            .secrets
            .iter()
            .flat_map(|s| s.hosts.iter().cloned())
            .collect();
        hosts.sort();
        hosts.dedup();
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: hosts
                .into_iter()
                .map(rcgen::GeneralSubtree::DnsName)
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        validity(&mut params);
        let key = rcgen::KeyPair::generate().map_err(e)?;
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).map_err(e)?;
        Ok(Interceptor {
            secrets,
            ca,
            leaves: Mutex::new(HashMap::new()),
            upstream_roots,
        })
    }

    /// The CA certificate (PEM) the sandbox trusts.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn secrets(&self) -> &SecretSet {
        &self.secrets
    }

    /// A leaf certificate for `name`, minted once per name.
    fn leaf(&self, name: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        let mut leaves = self.leaves.lock().map_err(|_| "leaf cache poisoned")?;
        if let Some(k) = leaves.get(name) {
            return Ok(k.clone());
        }
        let e = |e: rcgen::Error| format!("minting a certificate for {name}: {e}");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(e)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = rcgen::KeyPair::generate().map_err(e)?;
        let cert = params.signed_by(&key, &self.ca).map_err(e)?;
        let chain = vec![cert.der().clone(), self.ca.der().clone()];
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| format!("loading the key for {name}: {e}"))?;
        let ck = Arc::new(rustls::sign::CertifiedKey::new(chain, signer));
        leaves.insert(name.to_string(), ck.clone());
        Ok(ck)
    }

    /// Serves one intercepted connection: `client` (whose first bytes, the ClientHello, were
    /// already read into `first`) and `upstream`, a TCP connection to `name`'s allowed address.
    /// Returns the bytes each way, the secret events, and a failure code if the connection could
    /// not be set up.
    pub fn serve(
        &self,
        client: &TcpStream,
        first: &[u8],
        upstream: TcpStream,
        name: &str,
        port: u16,
    ) -> Served {
        let mut served = Served::default();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => {
                served.failure = Some("failed:intercept_runtime");
                return served;
            }
        };
        let ctx = Arc::new(Ctx {
            secrets: self.secrets.clone(),
            name: name.to_string(),
            port,
            events: Mutex::new(Vec::new()),
            bytes_out: AtomicU64::new(0),
            bytes_in: Arc::new(AtomicU64::new(0)),
        });
        let result = rt.block_on(self.run(client, first, upstream, ctx.clone()));
        served.failure = result.err();
        served.bytes_out = ctx.bytes_out.load(Ordering::SeqCst);
        served.bytes_in = ctx.bytes_in.load(Ordering::SeqCst);
        served.events = ctx.take_events();
        served
    }

    async fn run(
        &self,
        client: &TcpStream,
        first: &[u8],
        upstream: TcpStream,
        ctx: Arc<Ctx>,
    ) -> Result<(), &'static str> {
        let client = client
            .try_clone()
            .and_then(|c| {
                c.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(c)
            })
            .map_err(|_| "failed:client_read")?;
        let upstream = upstream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(upstream))
            .map_err(|_| "failed:connect")?;
        let client = Prefixed {
            prefix: first.to_vec(),
            at: 0,
            inner: client,
        };
        // The sandbox's ClientHello first: which protocols it offers decides what the upstream
        // is offered.
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client)
                .await
                .map_err(|_| "denied:bad_tls")?;
        let offers: Vec<Vec<u8>> = start
            .client_hello()
            .alpn()
            .map(|a| a.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let wants_h2 = offers.iter().any(|p| p == b"h2");
        let mut up_cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|_| "failed:intercept_tls_config")?
            .with_root_certificates(self.upstream_roots.clone())
            .with_no_client_auth();
        up_cfg.alpn_protocols = if wants_h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let server_name = ServerName::try_from(ctx.name.clone()).map_err(|_| "denied:bad_name")?;
        let up_tls = tokio_rustls::TlsConnector::from(Arc::new(up_cfg))
            .connect(server_name, upstream)
            .await
            .map_err(|_| "failed:upstream_tls")?;
        let h2 = up_tls.get_ref().1.alpn_protocol() == Some(b"h2");

        let leaf = self.leaf(&ctx.name).map_err(|_| "failed:intercept_cert")?;
        let mut srv_cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|_| "failed:intercept_tls_config")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(leaf)));
        // Offer the sandbox exactly the protocol the upstream chose (when it offered one).
        let chosen: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        if offers.iter().any(|p| p == chosen) {
            srv_cfg.alpn_protocols = vec![chosen.to_vec()];
        }
        let cl_tls = start
            .into_stream(Arc::new(srv_cfg))
            .await
            .map_err(|_| "denied:client_tls")?;

        let sender = if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(up_tls))
                    .await
                    .map_err(|_| "failed:upstream_http")?;
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up_tls))
                .await
                .map_err(|_| "failed:upstream_http")?;
            tokio::spawn(conn);
            Sender::H1(Arc::new(tokio::sync::Mutex::new(send)))
        };
        let service = hyper::service::service_fn(move |req| {
            let (ctx, sender) = (ctx.clone(), sender.clone());
            async move { Ok::<_, Infallible>(handle(req, &ctx, &sender).await) }
        });
        let io = TokioIo::new(cl_tls);
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }
        Ok(())
    }
}

/// What one intercepted connection did.
#[derive(Debug, Default)]
pub struct Served {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub events: Vec<SecretEvent>,
    /// Why the connection could not be set up (a `denied:*`/`failed:*` code).
    pub failure: Option<&'static str>,
}

struct Ctx {
    secrets: Arc<SecretSet>,
    name: String,
    port: u16,
    events: Mutex<Vec<SecretEvent>>,
    bytes_out: AtomicU64,
    bytes_in: Arc<AtomicU64>,
}

impl Ctx {
    fn used(&self, counts: &[(usize, u64)]) {
        let Ok(mut ev) = self.events.lock() else {
            return;
        };
        for &(i, n) in counts {
            let Some(s) = self.secrets.secrets.get(i) else {
                continue;
            };
            let found = ev.iter_mut().find_map(|e| match e {
                SecretEvent::Used { name, count, .. } if *name == s.name => Some(count),
                _ => None,
            });
            match found {
                Some(c) => *c += n,
                None => ev.push(SecretEvent::Used {
                    name: s.name.clone(),
                    host: self.name.clone(),
                    count: n,
                }),
            }
        }
    }

    fn refused(&self, secret: &str, reason: &'static str) {
        if let Ok(mut ev) = self.events.lock() {
            let n = ev
                .iter()
                .filter(|e| matches!(e, SecretEvent::Refused { .. }))
                .count();
            if n < MAX_REFUSALS {
                ev.push(SecretEvent::Refused {
                    name: secret.to_string(),
                    destination: self.name.clone(),
                    reason,
                });
            }
        }
    }

    fn take_events(&self) -> Vec<SecretEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

#[derive(Clone)]
enum Sender {
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

type Out = Response<BoxBody<Bytes, hyper::Error>>;

fn plain(status: StatusCode, reason: &'static str) -> Out {
    let body = Full::new(Bytes::from(format!("{reason}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-stockade-reason", HeaderValue::from_static(reason));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Hop-by-hop headers that are not forwarded.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Where a placeholder was found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Header,
    Query,
    Body,
    Path,
}

impl Place {
    fn refusal(self) -> &'static str {
        match self {
            Place::Header => "denied:secret_in_header",
            Place::Query => "denied:secret_in_query",
            Place::Body => "denied:secret_in_body",
            Place::Path => "denied:secret_in_path",
        }
    }
}

/// The placeholders found at `place` in `bytes`: Ok(indices to inject) or Err(refusal).
fn check(
    ctx: &Ctx,
    bytes: &[u8],
    place: Place,
    inject: &mut Vec<usize>,
) -> Result<(), &'static str> {
    for s in ctx.secrets.placeholders_in(bytes) {
        let i = ctx
            .secrets
            .secrets
            .iter()
            .position(|x| std::ptr::eq(x, s))
            .unwrap_or(usize::MAX);
        let allowed_here = match place {
            Place::Header => s.places.header,
            Place::Query => s.places.query,
            Place::Body => s.places.body,
            Place::Path => false,
        };
        let reason = if !s.bound_to(&ctx.name) {
            "denied:secret_not_bound"
        } else if !allowed_here {
            place.refusal()
        } else {
            if !inject.contains(&i) {
                inject.push(i);
            }
            continue;
        };
        ctx.refused(&s.name, reason);
        return Err(reason);
    }
    Ok(())
}

/// `Authorization: Basic <base64>` decoded, when it is that.
fn basic_credentials(v: &HeaderValue) -> Option<Vec<u8>> {
    let s = v.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
}

fn authority_ok(ctx: &Ctx, req: &Request<Incoming>) -> bool {
    let auth = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => match req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(h) => h.to_string(),
            None => return false,
        },
    };
    let Ok((host, port)) = crate::http::authority(&auth) else {
        return false;
    };
    rules::normalize_name(&host).is_ok_and(|h| h == ctx.name) && port.is_none_or(|p| p == ctx.port)
}

async fn handle(req: Request<Incoming>, ctx: &Ctx, sender: &Sender) -> Out {
    if !authority_ok(ctx, &req) {
        return plain(StatusCode::MISDIRECTED_REQUEST, "denied:host_mismatch");
    }
    let (mut parts, body) = req.into_parts();
    let mut inject = Vec::new();
    // Path and query.
    if let Some(pq) = parts.uri.path_and_query() {
        if let Err(r) = check(ctx, pq.path().as_bytes(), Place::Path, &mut inject) {
            return plain(StatusCode::FORBIDDEN, r);
        }
        if let Some(q) = pq.query()
            && let Err(r) = check(ctx, q.as_bytes(), Place::Query, &mut inject)
        {
            return plain(StatusCode::FORBIDDEN, r);
        }
    }
    // Headers (and what Basic credentials hide).
    for (name, v) in &parts.headers {
        if let Err(r) = check(ctx, v.as_bytes(), Place::Header, &mut inject) {
            return plain(StatusCode::FORBIDDEN, r);
        }
        if name == header::AUTHORIZATION
            && let Some(creds) = basic_credentials(v)
            && let Err(r) = check(ctx, &creds, Place::Header, &mut inject)
        {
            return plain(StatusCode::FORBIDDEN, r);
        }
    }
    // Body, read whole.
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "denied:body_too_large");
        }
        Err(_) => return plain(StatusCode::BAD_REQUEST, "denied:bad_request"),
    };
    if let Err(r) = check(ctx, &body, Place::Body, &mut inject) {
        return plain(StatusCode::FORBIDDEN, r);
    }
    // Substitute.
    let mut total: Vec<(usize, u64)> = Vec::new();
    let mut add = |r: &Replacer| {
        for &(i, n) in &r.counts {
            match total.iter_mut().find(|(t, _)| *t == i) {
                Some((_, c)) => *c += n,
                None => total.push((i, n)),
            }
        }
    };
    if !inject.is_empty() {
        if let Some(pq) = parts.uri.path_and_query()
            && pq.query().is_some()
        {
            let mut r = ctx.secrets.injector(&inject);
            let new = r.apply(pq.as_str().as_bytes());
            add(&r);
            let mut up = parts.uri.clone().into_parts();
            up.path_and_query = match String::from_utf8(new).ok().and_then(|s| s.parse().ok()) {
                Some(pq) => Some(pq),
                None => return plain(StatusCode::BAD_REQUEST, "denied:bad_request"),
            };
            parts.uri = match Uri::from_parts(up) {
                Ok(u) => u,
                Err(_) => return plain(StatusCode::BAD_REQUEST, "denied:bad_request"),
            };
        }
        let names: Vec<HeaderName> = parts.headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = parts.headers.get_all(&name).iter().cloned().collect();
            let mut changed = false;
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                let mut r = ctx.secrets.injector(&inject);
                let mut nv = r.apply(v.as_bytes());
                if name == header::AUTHORIZATION
                    && let Some(creds) = basic_credentials(&v)
                {
                    let mut rc = ctx.secrets.injector(&inject);
                    let c = rc.apply(&creds);
                    if !rc.counts.is_empty() {
                        nv = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(c)
                        )
                        .into_bytes();
                        add(&rc);
                    }
                }
                if !r.counts.is_empty() || nv != v.as_bytes() {
                    changed = true;
                    add(&r);
                }
                match HeaderValue::from_bytes(&nv) {
                    Ok(mut hv) => {
                        hv.set_sensitive(true);
                        out.push(hv);
                    }
                    Err(_) => return plain(StatusCode::BAD_REQUEST, "denied:bad_header"),
                }
            }
            if changed {
                parts.headers.remove(&name);
                for v in out {
                    parts.headers.append(name.clone(), v);
                }
            }
        }
    }
    let body = if inject.is_empty() {
        body
    } else {
        let mut r = ctx.secrets.injector(&inject);
        let b = r.apply(&body);
        add(&r);
        Bytes::from(b)
    };
    for h in HOP {
        parts.headers.remove(*h);
    }
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if !body.is_empty() || parts.headers.contains_key(header::CONTENT_LENGTH) {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    ctx.bytes_out.fetch_add(body.len() as u64, Ordering::SeqCst);
    let is_head = parts.method == hyper::Method::HEAD;
    let req = Request::from_parts(parts, Full::new(body));
    let sent = match sender {
        Sender::H2(s) => s.clone().send_request(req).await,
        Sender::H1(s) => {
            let mut s = s.lock().await;
            if s.ready().await.is_err() {
                return plain(StatusCode::BAD_GATEWAY, "failed:upstream_closed");
            }
            s.send_request(req).await
        }
    };
    ctx.used(&total);
    let resp = match sent {
        Ok(r) => r,
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "failed:upstream_http"),
    };
    let (mut parts, body) = resp.into_parts();
    for h in HOP {
        parts.headers.remove(*h);
    }
    let names: Vec<HeaderName> = parts.headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = parts.headers.get_all(&name).iter().cloned().collect();
        let scrubbed: Vec<Vec<u8>> = values
            .iter()
            .map(|v| ctx.secrets.scrubber().apply(v.as_bytes()))
            .collect();
        if scrubbed.iter().zip(&values).any(|(s, v)| s != v.as_bytes()) {
            parts.headers.remove(&name);
            for s in scrubbed {
                if let Ok(hv) = HeaderValue::from_bytes(&s) {
                    parts.headers.append(name.clone(), hv);
                }
            }
        }
    }
    let no_body = is_head
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if !no_body {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let body = CountIn {
        inner: Scrub {
            inner: body,
            rep: ctx.secrets.scrubber(),
            trailers: None,
            done: false,
        },
        counter: ctx.bytes_in.clone(),
    };
    Response::from_parts(parts, body.boxed())
}

/// A response body with every secret value replaced by its placeholder.
struct Scrub {
    inner: Incoming,
    rep: Replacer,
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl Body for Scrub {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(t)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.rep.feed(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(other) => {
                        // Trailers end the data: flush what was held back first.
                        let tail = this.rep.finish();
                        if tail.is_empty() {
                            return Poll::Ready(Some(Ok(other)));
                        }
                        this.trailers = Some(other);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))));
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let tail = this.rep.finish();
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))));
                    }
                }
            }
        }
    }
}

/// Counts the data bytes passing through.
struct CountIn<B> {
    inner: B,
    counter: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountIn<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            this.counter.fetch_add(d.len() as u64, Ordering::SeqCst);
        }
        r
    }
}

/// A stream whose first bytes were already read: they are served again before the socket's.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: tokio::net::TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The one certificate of an intercepted connection.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}
