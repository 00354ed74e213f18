//! Warm pools: per template (and login user), N sandboxes started ahead so a create can hand
//! one out at once. A pooled sandbox is owned by no key until it is handed out; from then on it
//! is an ordinary sandbox of its owner (its TTL starts at the hand-out) and it never returns to
//! the pool. Refilled in the background, one start at a time per pool.
//!
//! A request with `env` or an inline policy bypasses the pool (the pooled sandbox's processes
//! could not get that environment or policy). Pooled sandboxes do not count against
//! `--max-sandboxes`/`--max-per-key` (they are the server's own, sized by `--pool`); once
//! handed out they do. A pooled sandbox started from a template that has since changed (its
//! policy digest differs) is destroyed instead of handed out.

use crate::config::PoolSpec;
use crate::service::{Service, rfc3339};
use crate::store::{RowState, SandboxRow};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stockade_audit::DestroyReason;
use stockade_runtime::session::Session;
use tokio::sync::Notify;

pub struct Pool {
    pub spec: PoolSpec,
    ready: Mutex<VecDeque<Pooled>>,
    pub(crate) wake: Notify,
}

struct Pooled {
    session: Session,
    /// Digest of the policy it was started with.
    digest: String,
}

impl Pool {
    pub fn new(spec: PoolSpec) -> Pool {
        Pool {
            spec,
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        }
    }

    /// Sandboxes ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Everything in the pool, taken out (shutdown).
    pub(crate) fn drain(&self) -> Vec<Session> {
        self.ready
            .lock()
            .map(|mut r| r.drain(..).map(|p| p.session).collect())
            .unwrap_or_default()
    }
}

impl Service {
    /// A ready sandbox of `template` for `user` started with the policy whose digest is
    /// `digest`, taken out of its pool (never to return), or None.
    pub(crate) fn take_pooled(
        self: &Service,
        template: &str,
        user: Option<&str>,
        digest: &str,
    ) -> Option<Session> {
        let pool = self
            .pools
            .iter()
            .find(|p| p.spec.template == template && p.spec.user.as_deref() == user)?;
        let mut stale = Vec::new();
        let found = {
            let mut ready = pool.ready.lock().ok()?;
            loop {
                let Some(p) = ready.pop_front() else {
                    break None;
                };
                if p.digest == digest && p.session.is_alive() {
                    break Some(p.session);
                }
                stale.push(p.session);
            }
        };
        pool.wake.notify_one();
        for s in stale {
            tracing::info!(sandbox_id = %s.id(), template, "pooled sandbox is stale (template changed or it ended); destroying it");
            self.spawn_end(s);
        }
        found
    }

    /// Destroys a session in the background (it holds the busy count while it does).
    fn spawn_end(&self, s: Session) {
        let store = self.store.clone();
        let busy = self.busy.enter();
        tokio::spawn(async move {
            let _busy = busy;
            let id = s.id().to_string();
            let _ = tokio::task::spawn_blocking(move || s.destroy(DestroyReason::Error)).await;
            if let Err(e) = store.mark_ended(
                &id,
                RowState::Destroyed,
                "error (stale pooled sandbox)",
                &rfc3339(SystemTime::now()),
            ) {
                tracing::error!(sandbox_id = %id, error = %e, "marking the sandbox destroyed");
            }
        });
    }

    /// Keeps `pool` full until shutdown.
    pub(crate) async fn refill_loop(self: Arc<Self>, pool: Arc<Pool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = {
                let _busy = self.busy.enter();
                if self.is_shutting_down() {
                    return;
                }
                self.prune(&pool);
                if pool.ready() >= pool.spec.count {
                    None
                } else {
                    match self.add_one(&pool).await {
                        Ok(()) => {
                            backoff = Duration::from_secs(1);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(template = %pool.spec.template, error = %e, retry_in_s = backoff.as_secs(), "warm pool: could not start a sandbox");
                            let b = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                            Some(b)
                        }
                    }
                }
            };
            let wait = wait.unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = pool.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Ends pooled sandboxes that died while waiting.
    fn prune(&self, pool: &Pool) {
        let dead: Vec<Session> = match pool.ready.lock() {
            Ok(mut r) => {
                let (alive, dead): (VecDeque<Pooled>, VecDeque<Pooled>) =
                    r.drain(..).partition(|p| p.session.is_alive());
                *r = alive;
                dead.into_iter().map(|p| p.session).collect()
            }
            Err(_) => Vec::new(),
        };
        for s in dead {
            tracing::warn!(sandbox_id = %s.id(), "pooled sandbox ended by itself; replacing it");
            self.spawn_end(s);
        }
    }

    async fn add_one(&self, pool: &Pool) -> Result<(), String> {
        let policy = crate::templates::policy_of(&self.store, &pool.spec.template)
            .map_err(|e| e.message().to_string())?;
        let digest = policy.digest();
        let session = self
            .start_session(policy, Vec::new(), pool.spec.user.clone())
            .await
            .map_err(|e| e.message().to_string())?;
        let recovery = match serde_json::to_string(&session.recovery_record()) {
            Ok(r) => r,
            Err(e) => {
                self.discard(session, "recovery record").await;
                return Err(e.to_string());
            }
        };
        let now = rfc3339(SystemTime::now());
        let row = SandboxRow {
            id: session.id().to_string(),
            owner: None,
            template: pool.spec.template.clone(),
            metadata: "{}".into(),
            created_at: now,
            expires_at: None,
            state: RowState::Pooled,
            recovery: Some(recovery),
            destroyed_at: None,
            reason: None,
        };
        if let Err(e) = self.store.insert_sandbox(&row) {
            self.discard(session, "its row could not be written").await;
            return Err(e.to_string());
        }
        // Under the pool's lock, which shutdown's drain also takes: either it is drained, or
        // shutdown has begun and it is destroyed here.
        let late = match pool.ready.lock() {
            Ok(mut r) if !self.is_shutting_down() => {
                r.push_back(Pooled {
                    session: session.clone(),
                    digest,
                });
                false
            }
            _ => true,
        };
        if late {
            self.end_row(session, DestroyReason::Killed).await;
        }
        Ok(())
    }
}
