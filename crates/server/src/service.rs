//! The Rust API the HTTP layers (native control, native data, E2B) call: sandboxes by owner,
//! quotas, TTLs, templates, the warm pool, crash recovery and graceful shutdown.
//!
//! Every sandbox belongs to the API key that created it; another key sees 404 for it (never 403:
//! ids of others' sandboxes are not confirmed). A sandbox's row is in SQLite before its create
//! is acknowledged; it is marked destroyed (or lost) when it ends.

use crate::auth::{Caller, Credentials, KeyId};
use crate::config::Config;
use crate::error::ApiError;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use stockade_runtime::session::{Session, Usage};

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

/// The server's sandboxes and everything about them.
pub struct Service {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) sandboxes: RwLock<HashMap<String, Arc<Sandbox>>>,
}

impl Service {
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

    /// Creates a sandbox for `owner` (from the warm pool when the request allows it).
    pub async fn create(&self, owner: &Caller, req: CreateRequest) -> Result<Created, ApiError> {
        let _ = (owner, req);
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    /// Destroys the sandbox (reason `killed`) and waits until it is gone.
    pub async fn kill(&self, owner: &Caller, id: &str) -> Result<(), ApiError> {
        let _ = self.get(owner, id)?;
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    /// Sets the TTL: expires `timeout` from now (400 over the server's maximum).
    pub fn set_timeout(
        &self,
        owner: &Caller,
        id: &str,
        timeout: Duration,
    ) -> Result<Arc<Sandbox>, ApiError> {
        let _ = (owner, id, timeout);
        Err(ApiError::Unavailable("not implemented yet".into()))
    }

    /// Extends the TTL: expires at the later of its current end and `by` from now.
    pub fn extend(&self, owner: &Caller, id: &str, by: Duration) -> Result<Arc<Sandbox>, ApiError> {
        let _ = (owner, id, by);
        Err(ApiError::Unavailable("not implemented yet".into()))
    }
}

fn bad_token() -> ApiError {
    ApiError::Unauthorized("invalid access token for this sandbox (or no such sandbox)".into())
}
