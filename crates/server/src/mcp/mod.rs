//! The MCP server: Stockade's sandboxes as tools for a model, over the Model Context Protocol
//! (built on `rmcp`, the official Rust SDK).
//!
//! Two transports, one tool set ([`tools`]): `stockade mcp` speaks MCP over stdio ([`stdio`],
//! for Claude Desktop/Code, Cursor and the like) and drives [`Session`]s directly;
//! `/mcp` on `stockade serve` speaks Streamable HTTP ([`http`]) with the API's authentication
//! and makes its sandboxes through the [`Service`] (owner, quotas, TTL reaper, shutdown, crash
//! recovery as for any other sandbox).
//!
//! **Which sandbox a call runs in.** Every tool takes an optional `sandbox_id` and every
//! result names the sandbox it used.
//! - stdio: one sandbox per `stockade mcp` process (one client), made on the first tool call,
//!   destroyed at end of input, on SIGTERM/SIGINT, or after `--timeout` idle seconds (the next
//!   call then starts a fresh one and says so).
//! - HTTP with a session (protocol revisions up to 2025-11-25, `Mcp-Session-Id`): one sandbox
//!   per MCP session, made on its first tool call and destroyed when the session is closed
//!   (`DELETE`, or the session expires) or when its TTL passes without a call.
//! - HTTP without sessions (revision 2026-07-28 removed them): a call without `sandbox_id`
//!   starts a new sandbox; the model passes the returned `sandbox_id` to keep using it. Such a
//!   sandbox lives until its TTL passes without a call (or `reset_sandbox`).
//!
//! **Errors** are tool results with `isError` and a message a model can act on (a denied
//! network name, a missing command, a timeout, a missing file, a refused path), never a
//! protocol error or a crash. What a command touched on the network is read back from the
//! sandbox's own audit trail, so the message says what the policy did, not a guess.
//!
//! Limits: output returned per stream, file sizes read and written, entries listed: see the
//! constants below (and the tool descriptions, which tell the model).

pub mod audit;
pub mod exec;
pub mod files;
pub mod http;
pub mod params;
pub mod sandboxes;
pub mod stdio;
pub mod tools;

use crate::Service;
use crate::auth::Caller;
use crate::service::Sandbox;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, InitializeRequestParams, InitializeResult,
    ServerCapabilities,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stockade_audit::StateDir;
use stockade_policy::{NetworkMode, Policy};
use stockade_runtime::session::Session;

/// Bytes of each of stdout and stderr a tool result carries (the head and the tail of longer
/// output, with what was left out counted).
pub const MAX_STREAM_BYTES: usize = 64 * 1024;
/// Largest file `write_file` writes (after base64 decoding).
pub const MAX_WRITE_BYTES: usize = 8 * 1024 * 1024;
/// Default and largest number of bytes one `read_file` returns.
pub const DEFAULT_READ_BYTES: u64 = 256 * 1024;
pub const MAX_READ_BYTES: u64 = 1024 * 1024;
/// Most entries one `list_files` returns.
pub const MAX_LIST_ENTRIES: usize = 1000;
/// Default command timeout (capped by the policy's `limits.timeout`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What a model is told about this server (the `instructions` of the handshake).
const INSTRUCTIONS: &str = "Stockade runs commands and code in a throwaway Linux sandbox \
(container-level isolation: its own filesystem view, no access to the host, network only as \
its policy allows, CPU/memory/process/time limits). Files you write persist between calls in \
the same sandbox; reset_sandbox starts over. Every tool result names the sandbox_id it used; \
when the server has no sessions (MCP 2026-07-28 over HTTP), pass that sandbox_id back to keep \
working in the same sandbox. get_audit shows what ran and what it touched.";

/// Where the sandboxes of an MCP server come from.
pub enum Backend {
    /// `stockade mcp`: started here with this policy, trails under this state directory.
    Local {
        policy: Box<Policy>,
        state: StateDir,
        /// Destroyed after this long without a tool call.
        idle_ttl: Duration,
    },
    /// `/mcp` on `stockade serve`: through the service, owned by the caller's API key, from
    /// the template the request names (see [`http::Identity`]).
    Served { svc: Arc<Service> },
}

/// What the network policy of a sandbox allows (for messages about denials).
#[derive(Clone, Debug)]
pub struct NetInfo {
    pub mode: NetworkMode,
    pub allow: Vec<String>,
}

impl NetInfo {
    pub fn of(p: &Policy) -> NetInfo {
        NetInfo {
            mode: p.network.mode,
            allow: p.network.allow.clone(),
        }
    }

    /// `none`, `open (any public address)`, or the allowlist.
    pub fn allows(&self) -> String {
        match self.mode {
            NetworkMode::None => "none (no network at all)".into(),
            NetworkMode::Open => "any public address".into(),
            NetworkMode::Allowlist if self.allow.is_empty() => "none".into(),
            NetworkMode::Allowlist => self.allow.join(", "),
        }
    }
}

/// The sandbox one tool call works in.
#[derive(Clone)]
pub struct Current {
    pub kind: CurrentKind,
    /// None when the policy is not known here (a sandbox made elsewhere from an inline policy).
    pub net: Option<NetInfo>,
    /// The policy's per-process timeout (the cap of a command's `timeout`).
    pub max_timeout: Duration,
    /// The policy's memory limit, when known (for the message about a killed process).
    pub memory: Option<stockade_policy::ByteSize>,
}

#[derive(Clone)]
pub enum CurrentKind {
    Local(Session),
    Served { sb: Arc<Sandbox>, owner: Caller },
}

impl Current {
    pub fn session(&self) -> &Session {
        match &self.kind {
            CurrentKind::Local(s) => s,
            CurrentKind::Served { sb, .. } => &sb.session,
        }
    }

    pub fn id(&self) -> &str {
        self.session().id()
    }
}

/// A tool's failure: the message a model reads, and what else it may use.
#[derive(Debug)]
pub struct ToolError {
    pub message: String,
    pub data: Value,
}

impl ToolError {
    pub fn new(message: impl Into<String>) -> ToolError {
        ToolError {
            message: message.into(),
            data: Value::Null,
        }
    }
}

/// A successful result: `text` for the model, `data` as structured content (also serialized
/// into the text, as MCP asks of servers that return structured content).
pub fn ok_result(text: String, data: Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![
        ContentBlock::text(text),
        ContentBlock::text(data.to_string()),
    ]);
    r.structured_content = Some(data);
    r
}

/// A tool error after the sandbox was resolved: with its note (a new or replaced sandbox).
pub fn error_with_note(mut e: ToolError, sandbox_id: &str, note: Option<String>) -> CallToolResult {
    if let Some(n) = note {
        e.message = format!("{}\n(note: {n})", e.message);
        if !e.data.is_object() {
            e.data = json!({});
        }
        e.data["note"] = json!(n);
    }
    error_result(e, Some(sandbox_id))
}

/// A tool error (`isError`): the message first, then the structured details.
pub fn error_result(e: ToolError, sandbox_id: Option<&str>) -> CallToolResult {
    let mut data = match e.data {
        Value::Object(m) => Value::Object(m),
        Value::Null => json!({}),
        other => json!({ "details": other }),
    };
    data["error"] = Value::String(e.message.clone());
    if let Some(id) = sandbox_id {
        data["sandbox_id"] = Value::String(id.to_string());
    }
    let mut r = CallToolResult::error(vec![
        ContentBlock::text(e.message),
        ContentBlock::text(data.to_string()),
    ]);
    r.structured_content = Some(data);
    r
}

struct Inner {
    backend: Backend,
    /// The session's sandbox (stdio: the process's; HTTP: the MCP session's).
    current: tokio::sync::Mutex<Option<Current>>,
    /// This handler serves one client for its whole life (stdio, or an HTTP session that
    /// began with `initialize`); false for a stateless HTTP request.
    session_scoped: AtomicBool,
    /// The API key of an HTTP session (set by its first call; later calls must match).
    owner: Mutex<Option<String>>,
    /// Sandboxes this session had before the current one (reset or expired).
    previous: Mutex<Vec<String>>,
    /// For the idle TTL of a local sandbox.
    last_used: Mutex<Instant>,
    in_flight: AtomicUsize,
}

/// The MCP server handler. Cheap to clone; clones share the session's sandbox.
#[derive(Clone)]
pub struct StockadeMcp {
    inner: Arc<Inner>,
}

/// Marks a tool call in progress (the idle TTL does not run out under it).
pub(crate) struct Busy<'a>(&'a Inner);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut t) = self.0.last_used.lock() {
            *t = Instant::now();
        }
    }
}

impl StockadeMcp {
    pub fn new(backend: Backend) -> StockadeMcp {
        let session_scoped = matches!(backend, Backend::Local { .. });
        StockadeMcp {
            inner: Arc::new(Inner {
                backend,
                current: tokio::sync::Mutex::new(None),
                session_scoped: AtomicBool::new(session_scoped),
                owner: Mutex::new(None),
                previous: Mutex::new(Vec::new()),
                last_used: Mutex::new(Instant::now()),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    pub(crate) fn busy(&self) -> Busy<'_> {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(&self.inner)
    }

    fn session_scoped(&self) -> bool {
        self.inner.session_scoped.load(Ordering::SeqCst)
    }

    /// The caller of an HTTP request (put there by the `/mcp` authentication layer).
    fn identity(ctx: &RequestContext<RoleServer>) -> Result<http::Identity, ToolError> {
        ctx.extensions
            .get::<::http::request::Parts>()
            .and_then(|p| p.extensions.get::<http::Identity>().cloned())
            .ok_or_else(|| {
                ToolError::new(
                    "this request carries no API key (send Authorization: Bearer KEY or X-API-Key)",
                )
            })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // An HTTP session's handler is dropped when the session closes (DELETE, expiry,
        // shutdown): its sandbox goes with it. (stdio destroys its own before exiting.)
        let Backend::Served { svc, .. } = &self.backend else {
            return;
        };
        if !self.session_scoped.load(Ordering::SeqCst) {
            return;
        }
        let Some(c) = self.current.get_mut().take() else {
            return;
        };
        let CurrentKind::Served { sb, owner } = c.kind else {
            return;
        };
        let svc = svc.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tracing::info!(sandbox_id = %sb.id, "mcp: session closed; destroying its sandbox");
                let _ = svc.kill(&owner, &sb.id).await;
            });
        }
    }
}

#[tool_handler]
impl ServerHandler for StockadeMcp {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("stockade", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // A handshake: this handler serves one session from now on.
        self.inner.session_scoped.store(true, Ordering::SeqCst);
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }
}
