//! The life around the requests: quotas, the TTL reaper, ending sandboxes, crash recovery at
//! start and graceful shutdown.

use crate::auth::KeyId;
use crate::error::ApiError;
use crate::service::{Sandbox, Service, rfc3339};
use crate::store::RowState;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use stockade_audit::{DestroyReason, EventKind, Limit};
use stockade_runtime::session::{RecoveryRecord, Session};

/// Counts work under way (creates, pool refills, destroys) so shutdown can wait for it.
#[derive(Default)]
pub struct Busy(Arc<AtomicUsize>);

pub struct BusyGuard(Arc<AtomicUsize>);

impl Busy {
    pub fn enter(&self) -> BusyGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.0.clone())
    }

    /// Waits until nothing is under way, at most `limit`; false if it did not get there.
    pub async fn idle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.0.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sandboxes counted against the limits: handed out, or being created for a request. Pooled
/// sandboxes are not counted (they are the server's own, sized by `--pool`).
#[derive(Default)]
pub struct Quota {
    total: usize,
    per_key: HashMap<KeyId, usize>,
}

/// A reserved place; released when dropped unless committed (then released when it ends).
pub struct Slot<'a> {
    svc: &'a Service,
    key: KeyId,
    committed: bool,
}

impl Slot<'_> {
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.svc.release(&self.key);
        }
    }
}

impl Service {
    /// Reserves a place for one more sandbox of `key`, or 429.
    pub(crate) fn reserve(&self, key: &KeyId) -> Result<Slot<'_>, ApiError> {
        let mut q = self
            .quota
            .lock()
            .map_err(|_| ApiError::Internal("quota table poisoned".into()))?;
        let max_total = self.cfg.max_sandboxes;
        let max_key = self.cfg.max_per_key;
        if q.total >= max_total {
            return Err(ApiError::TooManySandboxes(format!(
                "this server already runs {max_total} sandboxes, its limit; destroy some (DELETE /v1/sandboxes/{{id}}) or start the server with a higher --max-sandboxes"
            )));
        }
        let mine = q.per_key.get(key).copied().unwrap_or(0);
        if mine >= max_key {
            return Err(ApiError::TooManySandboxes(format!(
                "this API key already has {max_key} sandboxes, the limit per key; destroy some (DELETE /v1/sandboxes/{{id}}) or start the server with a higher --max-per-key"
            )));
        }
        q.total += 1;
        *q.per_key.entry(key.clone()).or_insert(0) += 1;
        Ok(Slot {
            svc: self,
            key: key.clone(),
            committed: false,
        })
    }

    pub(crate) fn release(&self, key: &KeyId) {
        if let Ok(mut q) = self.quota.lock() {
            q.total = q.total.saturating_sub(1);
            if let Some(n) = q.per_key.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.per_key.remove(key);
                }
            }
        }
    }

    /// Destroys a sandbox taken out of the table, marks its row and frees its place.
    pub(crate) async fn end(&self, sb: Arc<Sandbox>, reason: DestroyReason) {
        self.end_row(sb.session.clone(), reason).await;
        self.release(&sb.owner);
    }

    /// Destroys a session (blocking pool) and marks its row destroyed.
    pub(crate) async fn end_row(&self, session: Session, reason: DestroyReason) {
        let _busy = self.busy.enter();
        let id = session.id().to_string();
        let s = session.clone();
        let report = tokio::task::spawn_blocking(move || s.destroy(reason)).await;
        match &report {
            Ok(r) if r.leftovers.is_empty() => {
                tracing::info!(sandbox_id = %id, reason = reason_str(reason), ms = r.duration.as_millis() as u64, "sandbox destroyed");
            }
            Ok(r) => {
                tracing::warn!(sandbox_id = %id, reason = reason_str(reason), leftovers = ?r.leftovers, "sandbox destroyed with leftovers");
            }
            Err(e) => {
                tracing::error!(sandbox_id = %id, error = %e, "destroying the sandbox panicked")
            }
        }
        let why = match &report {
            Ok(r) if !r.leftovers.is_empty() => {
                format!(
                    "{} (leftovers: {})",
                    reason_str(reason),
                    r.leftovers.join(", ")
                )
            }
            _ => reason_str(reason).to_string(),
        };
        if let Err(e) =
            self.store
                .mark_ended(&id, RowState::Destroyed, &why, &rfc3339(SystemTime::now()))
        {
            tracing::error!(sandbox_id = %id, error = %e, "marking the sandbox destroyed");
        }
    }

    /// A session made for a request that fails after all: destroyed (reason error).
    pub(crate) async fn discard(&self, session: Session, why: &str) {
        tracing::warn!(sandbox_id = %session.id(), why, "discarding a new sandbox");
        self.end_row(session, DestroyReason::Error).await;
    }

    /// One pass of the reaper: expired sandboxes (reason timeout, after a `limit.hit` timeout
    /// event) and those whose sandbox ended by itself (reason error) are destroyed.
    pub(crate) async fn reap_once(self: &Arc<Self>) {
        let now = SystemTime::now();
        let due: Vec<(String, bool)> = self
            .sandboxes
            .read()
            .map(|m| {
                m.values()
                    .filter_map(|s| {
                        if s.expires_at() <= now {
                            Some((s.id.clone(), true))
                        } else if !s.session.is_alive() {
                            Some((s.id.clone(), false))
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut set = tokio::task::JoinSet::new();
        for (id, expired) in due {
            let Some(sb) = self.take(&id) else { continue };
            let svc = self.clone();
            set.spawn(async move {
                if expired {
                    let lived = SystemTime::now()
                        .duration_since(sb.created_at)
                        .unwrap_or_default();
                    sb.session.record(EventKind::LimitHit {
                        limit: Limit::Timeout,
                        value: format!("{}s", lived.as_secs()),
                        detail: format!(
                            "sandbox TTL expired at {} (set at create or by the timeout API)",
                            rfc3339(sb.expires_at())
                        ),
                    });
                    svc.end(sb, DestroyReason::Timeout).await;
                } else {
                    tracing::warn!(sandbox_id = %sb.id, "sandbox ended by itself (its agent is gone); reaping");
                    svc.end(sb, DestroyReason::Error).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Starts the reaper (every second) and the warm pools' refillers.
    pub fn start_background(self: &Arc<Self>) {
        let mut tasks = Vec::new();
        let svc = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Busy before the flag: shutdown either waits for this pass or it sees the flag.
                let _busy = svc.busy.enter();
                if svc.is_shutting_down() {
                    return;
                }
                svc.reap_once().await;
            }
        }));
        for p in &self.pools {
            tasks.push(tokio::spawn(self.clone().refill_loop(p.clone())));
        }
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Crash recovery: every row still alive belongs to a server that is gone (the caller
    /// holds the state directory's lock). Each is cleaned up with `session::recover` (its
    /// launcher killed if it is still the same process, its cgroups removed, its audit log
    /// closed with `sandbox.destroyed`) and marked `lost`.
    pub async fn recover_lost(&self) -> Result<Vec<Recovered>, crate::store::StoreError> {
        let rows = self.store.alive_rows()?;
        let mut set = tokio::task::JoinSet::new();
        for row in rows {
            let record: Option<RecoveryRecord> = row
                .recovery
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok());
            set.spawn_blocking(move || {
                let report = record.as_ref().map(stockade_runtime::session::recover);
                (row, report)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            let Ok((row, report)) = r else { continue };
            let reason = match &report {
                None => "server lost; no recovery record (nothing could be cleaned)".to_string(),
                Some(rep) => format!(
                    "server lost; recovered at start: launcher {}{}",
                    if rep.killed { "killed" } else { "already gone" },
                    if rep.leftovers.is_empty() {
                        String::new()
                    } else {
                        format!(", leftovers: {}", rep.leftovers.join(", "))
                    }
                ),
            };
            self.store.mark_ended(
                &row.id,
                RowState::Lost,
                &reason,
                &rfc3339(SystemTime::now()),
            )?;
            tracing::warn!(sandbox_id = %row.id, was = row.state.as_str(), owner = row.owner.as_deref().unwrap_or("-"), %reason, "recovered a sandbox of a previous server");
            out.push(Recovered {
                id: row.id,
                was: row.state,
                killed: report.as_ref().is_some_and(|r| r.killed),
                leftovers: report.map(|r| r.leftovers).unwrap_or_default(),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Graceful shutdown: no new sandboxes; every sandbox (handed out or pooled) destroyed in
    /// parallel with reason `killed` and marked in SQLite. Returns how many were destroyed.
    pub async fn shutdown(self: &Arc<Self>) -> usize {
        self.shutting_down.store(true, Ordering::SeqCst);
        for p in &self.pools {
            p.wake.notify_waiters();
        }
        let mut total = 0;
        // Twice: work that began before the flag was seen finishes (creates destroy what they
        // made themselves once they see it), then whatever is left is destroyed.
        for _ in 0..2 {
            if !self.busy.idle(Duration::from_secs(60)).await {
                tracing::warn!("shutdown: work still under way after 60 s; destroying what exists");
            }
            let handed: Vec<Arc<Sandbox>> = self
                .sandboxes
                .write()
                .map(|mut m| m.drain().map(|(_, s)| s).collect())
                .unwrap_or_default();
            let pooled: Vec<Session> = self.pools.iter().flat_map(|p| p.drain()).collect();
            total += handed.len() + pooled.len();
            let mut set = tokio::task::JoinSet::new();
            for sb in handed {
                let svc = self.clone();
                set.spawn(async move { svc.end(sb, DestroyReason::Killed).await });
            }
            for s in pooled {
                let svc = self.clone();
                set.spawn(async move { svc.end_row(s, DestroyReason::Killed).await });
            }
            while set.join_next().await.is_some() {}
        }
        total
    }
}

/// One sandbox crash recovery found.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub id: String,
    /// `running` (handed out) or `pooled`.
    pub was: RowState,
    /// Its launcher was still alive and was killed.
    pub killed: bool,
    pub leftovers: Vec<String>,
}

pub fn reason_str(r: DestroyReason) -> &'static str {
    match r {
        DestroyReason::Exit => "exit",
        DestroyReason::Timeout => "timeout",
        DestroyReason::Limit => "limit",
        DestroyReason::Killed => "killed",
        DestroyReason::Error => "error",
    }
}
