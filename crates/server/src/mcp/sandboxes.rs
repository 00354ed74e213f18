//! Which sandbox a tool call works in (see the module doc of [`super`]): made on first use,
//! found by `sandbox_id`, replaced when it ended, reset, destroyed at the session's end or after
//! the idle timeout (stdio).

use super::{Backend, Current, CurrentKind, NetInfo, StockadeMcp, ToolError, http};
use crate::Service;
use crate::auth::Caller;
use rmcp::RoleServer;
use rmcp::service::RequestContext;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use stockade_audit::{DestroyReason, EventKind, Limit};
use stockade_runtime::audit::AuditOptions;
use stockade_runtime::session::{Session, SessionOptions};

impl StockadeMcp {
    /// The sandbox a call works in: `requested` by id, else the session's (made on first use),
    /// else (no session) a new one. The second value is a note for the model (a new sandbox,
    /// a replaced expired one).
    pub async fn sandbox(
        &self,
        ctx: &RequestContext<RoleServer>,
        requested: Option<&str>,
    ) -> Result<(Current, Option<String>), ToolError> {
        match &self.inner.backend {
            Backend::Local { .. } => {
                let mut cur = self.inner.current.lock().await;
                if let (Some(want), Some(c)) = (requested, cur.as_ref())
                    && want != c.id()
                {
                    return Err(ToolError::new(format!(
                        "sandbox_id {want:?} is not this server's sandbox (it is {}); omit sandbox_id",
                        c.id()
                    )));
                }
                if let Some(c) = cur.as_ref() {
                    if c.session().is_alive() {
                        return Ok((c.clone(), None));
                    }
                    let old = c.id().to_string();
                    self.remember(&old);
                    *cur = None;
                    let c = self.create(None).await?;
                    *cur = Some(c.clone());
                    return Ok((
                        c,
                        Some(format!(
                            "the previous sandbox {old} had ended (idle timeout or a limit); this is a new, empty one"
                        )),
                    ));
                }
                if let Some(want) = requested {
                    return Err(ToolError::new(format!(
                        "no sandbox {want:?} here; omit sandbox_id (this server has one sandbox, made on first use)"
                    )));
                }
                let c = self.create(None).await?;
                *cur = Some(c.clone());
                Ok((c, None))
            }
            Backend::Served { svc } => {
                let who = Self::identity(ctx)?;
                let caller = who.caller.clone();
                self.check_owner(&caller)?;
                if let Some(id) = requested {
                    return self.served(svc, &caller, id).map(|c| (c, None));
                }
                if !self.session_scoped() {
                    let c = self.create(Some(&who)).await?;
                    let note = format!(
                        "started a new sandbox {}: pass sandbox_id=\"{}\" in your next calls to keep working in it (its files persist); without it each call starts another sandbox",
                        c.id(),
                        c.id()
                    );
                    return Ok((c, Some(note)));
                }
                let mut cur = self.inner.current.lock().await;
                let mut note = None;
                if let Some(c) = cur.as_ref() {
                    match self.served(svc, &caller, c.id()) {
                        Ok(c) => return Ok((c, None)),
                        Err(_) => {
                            let old = c.id().to_string();
                            self.remember(&old);
                            note = Some(format!(
                                "the previous sandbox {old} had ended (its TTL passed without a call, or a limit); this is a new, empty one"
                            ));
                        }
                    }
                }
                *cur = None;
                let c = self.create(Some(&who)).await?;
                *cur = Some(c.clone());
                Ok((c, note))
            }
        }
    }

    /// The sandbox a call names, or the session's, without starting one (None: none yet).
    pub async fn peek(
        &self,
        ctx: &RequestContext<RoleServer>,
        requested: Option<&str>,
    ) -> Result<Option<Current>, ToolError> {
        if let Backend::Served { svc } = &self.inner.backend {
            let caller = Self::identity(ctx)?.caller;
            self.check_owner(&caller)?;
            if let Some(id) = requested {
                return self.served(svc, &caller, id).map(Some);
            }
        }
        let cur = self.inner.current.lock().await;
        match (requested, cur.as_ref()) {
            (Some(want), Some(c)) if want != c.id() => Err(ToolError::new(format!(
                "sandbox_id {want:?} is not this server's sandbox (it is {}); omit sandbox_id",
                c.id()
            ))),
            (Some(want), None) => Err(ToolError::new(format!(
                "no sandbox {want:?} here; omit sandbox_id"
            ))),
            (_, c) => Ok(c.cloned()),
        }
    }

    /// Keeps a served sandbox alive for a command of `timeout` (its TTL pushed to at least the
    /// command's end and a minute).
    pub fn hold(&self, c: &Current, timeout: Duration) {
        if let (Backend::Served { svc }, CurrentKind::Served { sb, owner }) =
            (&self.inner.backend, &c.kind)
        {
            let by = (timeout + Duration::from_secs(60)).min(svc.config().max_timeout);
            let _ = svc.extend(owner, &sb.id, by);
        }
    }

    /// True when this handler serves one client for its life (stdio, an HTTP session).
    pub fn has_session(&self) -> bool {
        self.session_scoped()
    }

    /// Where the full trail of a sandbox can be read.
    pub fn trail_hint(&self, c: &Current) -> String {
        match &self.inner.backend {
            Backend::Local { state, .. } => match c.session().audit_log() {
                Some(p) => format!(
                    "full trail: {} (stockade --state-dir {} trace {})",
                    p.display(),
                    state.0.display(),
                    c.id()
                ),
                None => "the policy turned auditing off".into(),
            },
            Backend::Served { .. } => format!(
                "full trail: GET /v1/sandboxes/{}/events on this server",
                c.id()
            ),
        }
    }

    fn check_owner(&self, caller: &Caller) -> Result<(), ToolError> {
        if !self.session_scoped() {
            return Ok(());
        }
        let Ok(mut o) = self.inner.owner.lock() else {
            return Err(ToolError::new("internal: session state poisoned"));
        };
        match o.as_deref() {
            Some(k) if k != caller.key_id => Err(ToolError::new(
                "this MCP session belongs to another API key; start your own session",
            )),
            Some(_) => Ok(()),
            None => {
                *o = Some(caller.key_id.clone());
                Ok(())
            }
        }
    }

    fn remember(&self, id: &str) {
        if let Ok(mut p) = self.inner.previous.lock() {
            p.push(id.to_string());
            if p.len() > 32 {
                p.remove(0);
            }
        }
    }

    /// Sandboxes this session had before its current one.
    pub fn previous(&self) -> Vec<String> {
        self.inner
            .previous
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// An existing sandbox of the caller's, its TTL pushed back by the server's default.
    fn served(&self, svc: &Arc<Service>, caller: &Caller, id: &str) -> Result<Current, ToolError> {
        let gone = || {
            ToolError::new(format!(
                "no sandbox {id:?}: it ended (its TTL passed without a call, it was reset or killed) or it belongs to another API key; omit sandbox_id to start a new sandbox"
            ))
        };
        if !crate::service::valid_id(id) {
            return Err(ToolError::new(format!(
                "sandbox_id {id:?} is not a sandbox id (16 hex characters, as returned in a result's sandbox_id)"
            )));
        }
        let sb = svc
            .extend(caller, id, svc.config().default_timeout)
            .map_err(|_| gone())?;
        if !sb.session.is_alive() {
            return Err(gone());
        }
        let policy = crate::templates::policy_of(svc.store(), &sb.template).ok();
        Ok(Current {
            net: policy.as_ref().map(NetInfo::of),
            memory: policy.as_ref().map(|p| p.limits.memory),
            max_timeout: policy
                .map(|p| p.limits.timeout)
                .unwrap_or(Duration::from_secs(600)),
            kind: CurrentKind::Served {
                sb,
                owner: caller.clone(),
            },
        })
    }

    /// Starts a sandbox with the server's default policy.
    async fn create(&self, who: Option<&http::Identity>) -> Result<Current, ToolError> {
        match (&self.inner.backend, who) {
            (
                Backend::Local {
                    policy,
                    state,
                    idle_ttl: _,
                },
                _,
            ) => {
                let p = (**policy).clone();
                let audit = p.audit.enabled.then(|| AuditOptions {
                    state: state.clone(),
                    observers: Vec::new(),
                });
                let opts = SessionOptions {
                    base_dir: None,
                    audit,
                    user: None,
                    env: Vec::new(),
                };
                let started = tokio::task::spawn_blocking(move || Session::start(&p, opts))
                    .await
                    .map_err(|e| ToolError::new(format!("starting the sandbox: {e}")))?;
                let s = started.map_err(|e| {
                    ToolError::new(format!(
                        "the sandbox could not start: {e} (this is a problem of the host or of the server's policy, not of your request; `stockade doctor` on the host says what is missing)"
                    ))
                })?;
                tracing::info!(sandbox_id = %s.id(), "mcp: sandbox started");
                Ok(Current {
                    net: Some(NetInfo::of(policy)),
                    memory: Some(policy.limits.memory),
                    max_timeout: policy.limits.timeout,
                    kind: CurrentKind::Local(s),
                })
            }
            (Backend::Served { svc }, Some(who)) => {
                let caller = &who.caller;
                let req = crate::service::CreateRequest {
                    template: Some(who.template.clone()),
                    ..Default::default()
                };
                let created = svc.create(caller, req).await.map_err(|e| {
                    ToolError::new(format!("could not start a sandbox: {}", e.message()))
                })?;
                let policy = crate::templates::policy_of(svc.store(), &who.template).ok();
                tracing::info!(sandbox_id = %created.sandbox.id, key = %caller.key_id, "mcp: sandbox started");
                Ok(Current {
                    net: policy.as_ref().map(NetInfo::of),
                    memory: policy.as_ref().map(|p| p.limits.memory),
                    max_timeout: policy
                        .map(|p| p.limits.timeout)
                        .unwrap_or(Duration::from_secs(600)),
                    kind: CurrentKind::Served {
                        sb: created.sandbox,
                        owner: caller.clone(),
                    },
                })
            }
            (Backend::Served { .. }, None) => Err(ToolError::new("no caller")),
        }
    }

    /// Destroys a sandbox and waits until it is gone.
    async fn destroy(&self, c: &Current, reason: DestroyReason) {
        match &c.kind {
            CurrentKind::Local(s) => {
                let s = s.clone();
                let _ = tokio::task::spawn_blocking(move || s.destroy(reason)).await;
            }
            CurrentKind::Served { sb, owner } => {
                if let Backend::Served { svc, .. } = &self.inner.backend {
                    let _ = svc.kill(owner, &sb.id).await;
                }
            }
        }
    }

    /// `reset_sandbox`: destroys the sandbox the call names (or the session's) and starts a new
    /// one, which becomes the session's. Returns (old id, new sandbox).
    pub async fn reset(
        &self,
        ctx: &RequestContext<RoleServer>,
        requested: Option<&str>,
    ) -> Result<(Option<String>, Current), ToolError> {
        let who = match &self.inner.backend {
            Backend::Served { .. } => {
                let w = Self::identity(ctx)?;
                self.check_owner(&w.caller)?;
                Some(w)
            }
            Backend::Local { .. } => None,
        };
        let mut cur = self.inner.current.lock().await;
        let old = match (requested, &self.inner.backend, who.as_ref()) {
            (Some(id), Backend::Served { svc }, Some(w)) => {
                let c = self.served(svc, &w.caller, id)?;
                if cur.as_ref().is_some_and(|x| x.id() == id) {
                    *cur = None;
                }
                Some(c)
            }
            (Some(id), _, _) if cur.as_ref().is_some_and(|x| x.id() != id) || cur.is_none() => {
                return Err(ToolError::new(format!(
                    "no sandbox {id:?} here; omit sandbox_id to reset this server's sandbox"
                )));
            }
            _ => cur.take(),
        };
        let old_id = old.as_ref().map(|c| c.id().to_string());
        if let Some(c) = &old {
            self.remember(c.id());
            self.destroy(c, DestroyReason::Killed).await;
        }
        let c = self.create(who.as_ref()).await?;
        if self.session_scoped() {
            *cur = Some(c.clone());
        }
        Ok((old_id, c))
    }

    /// Destroys the session's sandbox (end of the session).
    pub async fn close(&self, reason: DestroyReason) {
        let c = self.inner.current.lock().await.take();
        if let Some(c) = c {
            tracing::info!(sandbox_id = %c.id(), "mcp: session ended; destroying its sandbox");
            self.destroy(&c, reason).await;
        }
    }

    /// Local backend: destroys the sandbox when it has been idle past the TTL (checked by
    /// [`stdio`] once a second). True when it did.
    pub async fn reap_idle(&self) -> bool {
        let Backend::Local { idle_ttl, .. } = &self.inner.backend else {
            return false;
        };
        if self.inner.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let idle = self
            .inner
            .last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if idle < *idle_ttl {
            return false;
        }
        let mut cur = self.inner.current.lock().await;
        if self.inner.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let Some(c) = cur.take() else {
            return false;
        };
        c.session().record(EventKind::LimitHit {
            limit: Limit::Timeout,
            value: format!("{}s", idle_ttl.as_secs()),
            detail: format!(
                "idle for {} s without an MCP tool call (stockade mcp --timeout)",
                idle.as_secs()
            ),
        });
        self.remember(c.id());
        self.destroy(&c, DestroyReason::Timeout).await;
        true
    }
}
