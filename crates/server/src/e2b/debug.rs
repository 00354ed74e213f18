//! The E2B SDK's debug mode (`E2B_DEBUG=true`): the SDK skips the control plane, calls its
//! sandbox `debug_sandbox_id`, and talks to envd at `http://localhost:49983` with no access
//! token. `stockade serve --e2b-debug-listen 127.0.0.1:49983` serves that listener.
//!
//! The debug listener serves one sandbox of its own: made from template `base` (login `user`)
//! on the first request, kept alive while it is used (each request pushes its end to at least
//! half the server's default timeout away), and made anew if it ended (its files are then gone).
//! It belongs to no API key (owner `debug`: `Sandbox.list()` with a key does not show it); it
//! ends at its timeout or when the server stops. The listener has no authentication at all —
//! anyone who can connect to it runs commands in that sandbox — so it is off unless asked for,
//! and answers only clients connecting from a loopback address (403 otherwise, whatever address
//! it listens on).

use super::envd::{Reject, Target};
use crate::AppState;
use crate::auth::Caller;
use crate::service::{CreateRequest, Sandbox};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Default)]
pub struct DebugSandbox {
    current: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
}

/// The owner of the debug sandbox (not an API key: no key can see it).
pub fn debug_caller() -> Caller {
    Caller {
        key_id: "debug".into(),
        key_name: "e2b-debug-listener".into(),
    }
}

impl DebugSandbox {
    pub async fn target(&self, st: &AppState) -> Result<Target, Reject> {
        let mut cur = self.current.lock().await;
        let caller = debug_caller();
        if let Some(sb) = cur.as_ref()
            && super::envd::find_running(st, &sb.id).is_some()
        {
            let keep = st.svc.config().default_timeout;
            let left = sb
                .expires_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left < keep / 2
                && let Err(e) = st.svc.extend(&caller, &sb.id, keep)
            {
                tracing::warn!(error = %e, "extending the debug sandbox");
            }
            return Ok(Target {
                sandbox: sb.clone(),
            });
        }
        let req = CreateRequest {
            template: Some(crate::templates::BASE.into()),
            user: Some("user".into()),
            ..CreateRequest::default()
        };
        match st.svc.create(&caller, req).await {
            Ok(c) => {
                tracing::info!(sandbox_id = %c.sandbox.id, "E2B debug listener: sandbox created");
                *cur = Some(c.sandbox.clone());
                Ok(Target { sandbox: c.sandbox })
            }
            Err(e) => Err(Reject(
                e.status(),
                format!("the debug sandbox could not be created: {}", e.message()),
            )),
        }
    }
}
