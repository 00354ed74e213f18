//! The Rust API the HTTP layers (native control, native data, E2B) call: sandboxes by owner,
//! quotas, TTLs, templates, the warm pool, crash recovery and graceful shutdown.
//!
//! Every sandbox belongs to the API key that created it; another key sees 404 for it (never 403:
//! ids of others' sandboxes are not confirmed). A sandbox's row is in SQLite before its create
//! is acknowledged; it is marked destroyed (or lost) when it ends.

use crate::auth::{Caller, Credentials, KeyId};
use crate::config::Config;
use crate::error::ApiError;
use crate::lifecycle::{Busy, Quota};
use crate::pool::Pool;
use crate::store::{RowState, SandboxRow, Store};
use crate::templates;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use stockade_audit::{DestroyReason, StateDir};
use stockade_runtime::RunError;
use stockade_runtime::audit::AuditOptions;
use stockade_runtime::session::{Session, SessionOptions, Usage};

/// `POST /v1/sandboxes` (and what the E2B layer maps its create to).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A template name; default `base`. Ignored names are an error (400).
    #[serde(default)]
    pub template: Option<String>,
    /// An inline policy (TOML) instead of a template's. It may not reach host paths or the
    /// server's environment (see [`crate::templates`]).
    #[serde(default)]
    pub policy: Option<String>,
    /// Variables added to every process's environment (values are never logged or audited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds until the sandbox is destroyed; default and maximum from the server config.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Login name inside (the E2B layer asks for `user`); default `sandbox`. Not part of the
    /// native API body.
    #[serde(skip)]
    pub user: Option<String>,
}

/// A sandbox handed to one API key.
pub struct Sandbox {
    /// 16 hex characters (the session's id; the audit trail's sandbox_id).
    pub id: String,
    pub session: Session,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
    pub owner: KeyId,
    /// When it was handed to its owner (for a pooled sandbox: the hand-out, not its start).
    pub created_at: SystemTime,
    /// When the reaper destroys it; changed by set_timeout/extend.
    pub expires_at: Mutex<SystemTime>,
    /// SHA-256 of the access token (the token itself was returned once, at create).
    access_token_hash: [u8; 32],
    /// The environment given at create. Values are secret-grade: never log them.
    pub env: BTreeMap<String, String>,
}

/// What the API shows of a sandbox.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub template: String,
    /// `running` (a sandbox the API can see is running).
    pub state: &'static str,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub expires_at: String,
    pub metadata: BTreeMap<String, String>,
    /// Filled by `GET /v1/sandboxes/{id}` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A created sandbox and its access token (shown this once; only its hash is kept).
pub struct Created {
    pub sandbox: Arc<Sandbox>,
    pub access_token: String,
}

impl Sandbox {
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            id: self.id.clone(),
            template: self.template.clone(),
            state: "running",
            created_at: rfc3339(self.created_at),
            expires_at: rfc3339(self.expires_at()),
            metadata: self.metadata.clone(),
            usage: None,
        }
    }

    /// [`Sandbox::info`] with the cgroup's usage.
    pub fn info_with_usage(&self) -> SandboxInfo {
        let mut i = self.info();
        i.usage = Some(self.session.usage());
        i
    }

    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
            .lock()
            .map(|t| *t)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Constant-time check of an access token.
    pub fn token_matches(&self, token: &str) -> bool {
        crate::keys::hash_eq(&self.access_token_hash, &crate::keys::sha256(token))
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A sandbox id: 16 lowercase hex characters.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Limits on what a create request may carry.
pub const MAX_ENV_VARS: usize = 256;
pub const MAX_ENV_BYTES: usize = 128 * 1024;
pub const MAX_METADATA: usize = 64;
pub const MAX_METADATA_KEY: usize = 128;
pub const MAX_METADATA_VALUE: usize = 1024;

/// The server's sandboxes and everything about them.
pub struct Service {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) state: StateDir,
    /// Sandboxes handed to a key and not ended. Removing an entry is what claims the right to
    /// destroy it (kill, reaper and shutdown race through this map).
    pub(crate) sandboxes: RwLock<HashMap<String, Arc<Sandbox>>>,
    pub(crate) quota: Mutex<Quota>,
    pub(crate) pools: Vec<Arc<Pool>>,
    pub(crate) shutting_down: AtomicBool,
    /// Creates, refills and destroys under way (shutdown waits for them).
    pub(crate) busy: Busy,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Service {
    /// A service over an opened store. Call [`Service::recover_lost`] and then
    /// [`Service::start_background`] before serving requests.
    pub fn new(cfg: Config, store: Arc<Store>) -> Arc<Service> {
        let pools = cfg
            .pools
            .iter()
            .filter(|p| p.count > 0)
            .map(|p| Arc::new(Pool::new(p.clone())))
            .collect();
        Arc::new(Service {
            state: StateDir(cfg.state_dir.clone()),
            cfg,
            store,
            sandboxes: RwLock::new(HashMap::new()),
            quota: Mutex::new(Quota::default()),
            pools,
            shutting_down: AtomicBool::new(false),
            busy: Busy::default(),
            tasks: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the sandboxes' audit trails are (`<state>/sandboxes/<id>/events.jsonl`).
    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// The sandbox `id` if `owner` owns it (404 otherwise).
    pub fn get(&self, owner: &Caller, id: &str) -> Result<Arc<Sandbox>, ApiError> {
        let sb = self.lookup(id)?;
        if sb.owner != owner.key_id {
            return Err(ApiError::no_sandbox(id));
        }
        Ok(sb)
    }

    /// The sandbox `id` for a data-plane request: its owner's API key or its access token.
    pub fn get_for_data(&self, id: &str, creds: Credentials) -> Result<Arc<Sandbox>, ApiError> {
        match creds {
            Credentials::Key(k) => {
                let caller = self.authenticate_key(&k)?;
                self.get(&caller, id)
            }
            Credentials::AccessToken(t) => {
                let sb = self.lookup(id).map_err(|_| bad_token())?;
                if sb.token_matches(&t) {
                    Ok(sb)
                } else {
                    Err(bad_token())
                }
            }
        }
    }

    /// The caller's sandboxes, oldest first.
    pub fn list(&self, owner: &Caller) -> Vec<Arc<Sandbox>> {
        let mut v: Vec<Arc<Sandbox>> = self
            .sandboxes
            .read()
            .map(|m| {
                m.values()
                    .filter(|s| s.owner == owner.key_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// The caller behind a request's API key (401 without a valid one).
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        let key = crate::auth::require_api_key(headers)?;
        self.authenticate_key(&key)
    }

    /// The caller behind an API key (401 unless it is a live key).
    pub fn authenticate_key(&self, key: &str) -> Result<Caller, ApiError> {
        match crate::keys::verify(&self.store, key)? {
            Some(row) => Ok(Caller {
                key_id: row.id,
                key_name: row.name,
            }),
            None => Err(crate::auth::bad_key()),
        }
    }

    fn lookup(&self, id: &str) -> Result<Arc<Sandbox>, ApiError> {
        self.sandboxes
            .read()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .ok_or_else(|| ApiError::no_sandbox(id))
    }

    /// Sandboxes handed out and alive, all keys together.
    pub fn running(&self) -> usize {
        self.sandboxes.read().map(|m| m.len()).unwrap_or(0)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<(), ApiError> {
        if self.is_shutting_down() {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        Ok(())
    }

    /// The TTL a request asks for (default from the config; 400 over the maximum or zero).
    pub fn ttl(&self, secs: Option<u64>) -> Result<Duration, ApiError> {
        let Some(s) = secs else {
            return Ok(self.cfg.default_timeout);
        };
        let max = self.cfg.max_timeout.as_secs();
        if s == 0 {
            return Err(ApiError::BadRequest(
                "timeout: must be at least 1 second".into(),
            ));
        }
        if s > max {
            return Err(ApiError::BadRequest(format!(
                "timeout: {s} s is over this server's maximum of {max} s (stockade serve --max-timeout)"
            )));
        }
        Ok(Duration::from_secs(s))
    }

    /// Creates a sandbox for `owner`: from the warm pool when the request has no inline
    /// policy and no env (a pooled sandbox was started before the request, so per-request env
    /// cannot be put in its processes' environment), else started now. Its row is in SQLite
    /// before this returns.
    pub async fn create(&self, owner: &Caller, req: CreateRequest) -> Result<Created, ApiError> {
        let _busy = self.busy.enter();
        self.check_open()?;
        let ttl = self.ttl(req.timeout)?;
        check_env(&req.env)?;
        check_metadata(&req.metadata)?;
        if let Some(u) = &req.user
            && !crate::config::valid_user(u)
        {
            return Err(ApiError::BadRequest(format!(
                "user {u:?}: login names are 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'"
            )));
        }
        let (policy, template) = match (&req.policy, &req.template) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give either template or policy, not both".into(),
                ));
            }
            (Some(src), None) => (templates::inline_policy(src)?, "inline".to_string()),
            (None, t) => {
                let name = t.clone().unwrap_or_else(|| templates::BASE.to_string());
                (templates::policy_of(&self.store, &name)?, name)
            }
        };
        let slot = self.reserve(&owner.key_id)?;
        let pooled = if req.policy.is_none() && req.env.is_empty() {
            self.take_pooled(&template, req.user.as_deref(), &policy.digest())
        } else {
            None
        };
        let from_pool = pooled.is_some();
        let session = match pooled {
            Some(s) => s,
            None => {
                let env: Vec<(String, String)> = req.env.clone().into_iter().collect();
                self.start_session(policy, env, req.user.clone()).await?
            }
        };
        let (access_token, token_hash) = match crate::keys::new_access_token() {
            Ok(t) => t,
            Err(e) => {
                self.discard(session, &e.to_string()).await;
                return Err(ApiError::Internal(e.to_string()));
            }
        };
        let now = SystemTime::now();
        let sb = Arc::new(Sandbox {
            id: session.id().to_string(),
            session,
            template,
            metadata: req.metadata,
            owner: owner.key_id.clone(),
            created_at: now,
            expires_at: Mutex::new(now + ttl),
            access_token_hash: token_hash,
            env: req.env,
        });
        if let Err(e) = self.persist_created(&sb, from_pool) {
            self.discard(sb.session.clone(), "its row could not be written")
                .await;
            return Err(e);
        }
        {
            let mut map = self
                .sandboxes
                .write()
                .map_err(|_| ApiError::Internal("sandbox table poisoned".into()))?;
            if !self.is_shutting_down() {
                map.insert(sb.id.clone(), sb.clone());
                slot.commit();
                drop(map);
                tracing::info!(sandbox_id = %sb.id, key = %owner.key_id, template = %sb.template, pooled = from_pool, "sandbox created");
                return Ok(Created {
                    sandbox: sb,
                    access_token,
                });
            }
        }
        // Shutdown began while it was being made: it is not handed out.
        self.end_row(sb.session.clone(), DestroyReason::Killed)
            .await;
        Err(ApiError::Unavailable("the server is shutting down".into()))
    }

    fn persist_created(&self, sb: &Sandbox, from_pool: bool) -> Result<(), ApiError> {
        let metadata =
            serde_json::to_string(&sb.metadata).map_err(|e| ApiError::Internal(e.to_string()))?;
        let created = rfc3339(sb.created_at);
        let expires = rfc3339(sb.expires_at());
        if from_pool {
            if !self
                .store
                .hand_out(&sb.id, &sb.owner, &metadata, &created, &expires)?
            {
                return Err(ApiError::Internal(format!(
                    "pooled sandbox {} has no pooled row",
                    sb.id
                )));
            }
            return Ok(());
        }
        let recovery = serde_json::to_string(&sb.session.recovery_record())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.store.insert_sandbox(&SandboxRow {
            id: sb.id.clone(),
            owner: Some(sb.owner.clone()),
            template: sb.template.clone(),
            metadata,
            created_at: created,
            expires_at: Some(expires),
            state: RowState::Running,
            recovery: Some(recovery),
            destroyed_at: None,
            reason: None,
        })?;
        Ok(())
    }

    /// Starts a session (blocking work on the blocking pool).
    pub(crate) async fn start_session(
        &self,
        policy: stockade_policy::Policy,
        env: Vec<(String, String)>,
        user: Option<String>,
    ) -> Result<Session, ApiError> {
        let audit = policy.audit.enabled.then(|| AuditOptions {
            state: self.state.clone(),
            observers: Vec::new(),
        });
        let opts = SessionOptions {
            base_dir: None,
            audit,
            user,
            env,
        };
        let r = tokio::task::spawn_blocking(move || Session::start(&policy, opts))
            .await
            .map_err(|e| ApiError::Internal(format!("starting the sandbox: {e}")))?;
        r.map_err(|e| {
            tracing::warn!(error = %e, "sandbox start failed");
            match e {
                RunError::Usage(m) | RunError::Workspace(m) => ApiError::BadRequest(m),
                RunError::Unsupported(m) => ApiError::Unavailable(format!(
                    "this host cannot give the sandbox's isolation: {m}"
                )),
                other => ApiError::Internal(format!("the sandbox could not start: {other}")),
            }
        })
    }

    /// Destroys the sandbox (reason `killed`) and waits until it is gone.
    ///
    /// The answer comes once every process of the sandbox is dead (the agent killed and reaped
    /// them all; if it does not confirm within 3 s its launcher is killed, which takes PID 1
    /// and the whole PID namespace with it). The verified teardown (launcher reaped, cgroup
    /// removed, `sandbox.destroyed` synced, row marked) then finishes in the background;
    /// graceful shutdown waits for it.
    pub async fn kill(self: &Arc<Self>, owner: &Caller, id: &str) -> Result<(), ApiError> {
        let busy = self.busy.enter();
        self.get(owner, id)?;
        let sb = self.take(id).ok_or_else(|| ApiError::no_sandbox(id))?;
        let s = sb.session.clone();
        let stopped = tokio::task::spawn_blocking(move || s.stop())
            .await
            .unwrap_or(false);
        if !stopped {
            // Not confirmed: tear it down before answering (destroy kills the launcher).
            self.end(sb, DestroyReason::Killed).await;
            return Ok(());
        }
        // Nothing of it runs any more: its place is free now.
        self.release(&sb.owner);
        let svc = self.clone();
        tokio::spawn(async move {
            let _busy = busy;
            svc.end_row(sb.session.clone(), DestroyReason::Killed).await;
        });
        Ok(())
    }

    /// Sets the TTL: it expires `timeout` from now (400 over the server's maximum).
    pub fn set_timeout(
        &self,
        owner: &Caller,
        id: &str,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let ttl = self.ttl(Some(timeout.as_secs()))?;
        let sb = self.get(owner, id)?;
        self.set_expiry(&sb, SystemTime::now() + ttl)?;
        Ok(sb)
    }

    /// Extends the TTL: it expires at the later of its current end and `by` from now (`by`
    /// at most the server's maximum timeout).
    pub fn extend(&self, owner: &Caller, id: &str, by: Duration) -> Result<Arc<Sandbox>, ApiError> {
        let by = self.ttl(Some(by.as_secs()))?;
        let sb = self.get(owner, id)?;
        let t = (SystemTime::now() + by).max(sb.expires_at());
        self.set_expiry(&sb, t)?;
        Ok(sb)
    }

    fn set_expiry(&self, sb: &Sandbox, t: SystemTime) -> Result<(), ApiError> {
        self.store.set_expires(&sb.id, &rfc3339(t))?;
        if let Ok(mut e) = sb.expires_at.lock() {
            *e = t;
        }
        Ok(())
    }

    /// Removes a sandbox from the table: whoever gets it destroys it.
    pub(crate) fn take(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes.write().ok().and_then(|mut m| m.remove(id))
    }
}

fn bad_token() -> ApiError {
    ApiError::Unauthorized("invalid access token for this sandbox (or no such sandbox)".into())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::BadRequest(format!(
            "env: {} variables, at most {MAX_ENV_VARS}",
            env.len()
        )));
    }
    let mut total = 0usize;
    for (k, v) in env {
        let b = k.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 256
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "env: {:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 256)",
                k.chars().take(64).collect::<String>()
            )));
        }
        if v.contains('\0') {
            // The value is never echoed: it may be a secret.
            return Err(ApiError::BadRequest(format!(
                "env: the value of {k} contains a NUL byte"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ENV_BYTES {
        return Err(ApiError::BadRequest(format!(
            "env: {total} bytes, at most {MAX_ENV_BYTES}"
        )));
    }
    Ok(())
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_METADATA {
        return Err(ApiError::BadRequest(format!(
            "metadata: {} entries, at most {MAX_METADATA}",
            m.len()
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return Err(ApiError::BadRequest(format!(
                "metadata: keys are 1-{MAX_METADATA_KEY} bytes"
            )));
        }
        if v.len() > MAX_METADATA_VALUE {
            return Err(ApiError::BadRequest(format!(
                "metadata: the value of {:?} is over {MAX_METADATA_VALUE} bytes",
                k
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_env_metadata() {
        assert!(valid_id("0123456789abcdef"));
        assert!(!valid_id("0123456789ABCDEF"));
        assert!(!valid_id("../../etc/passwd"));
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(check_env(&env("A_1", "x")).is_ok());
        assert!(check_env(&env("1A", "x")).is_err());
        assert!(check_env(&env("A=B", "x")).is_err());
        let e = check_env(&env("K", "sec\0ret")).unwrap_err();
        assert!(!e.message().contains("sec"), "{}", e.message());
        assert!(check_metadata(&env("k", &"v".repeat(MAX_METADATA_VALUE + 1))).is_err());
        assert!(check_metadata(&env("", "v")).is_err());
    }
}
