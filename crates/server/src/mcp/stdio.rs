//! `stockade mcp`: MCP over stdin/stdout for one client (Claude Desktop/Code, Cursor...), with
//! one sandbox made on its first tool call and destroyed at the end (end of input, `stop`), or
//! after `idle_ttl` without a tool call. No HTTP server: sessions are driven directly, and
//! their audit trails go to the state directory as for `stockade run`.
//!
//! Standard output carries the protocol only: diagnostics go to standard error.

use super::{Backend, StockadeMcp};
use rmcp::ServiceExt;
use std::future::Future;
use std::time::Duration;
use stockade_audit::{DestroyReason, StateDir};
use stockade_policy::Policy;

pub struct StdioOptions {
    pub policy: Policy,
    pub state: StateDir,
    /// Destroy the sandbox after this long without a tool call.
    pub idle_ttl: Duration,
}

/// Serves MCP on stdin/stdout until the client closes its end or `stop` resolves; then the
/// sandbox (if one was made) is destroyed and its trail synced.
pub async fn serve_stdio(
    opts: StdioOptions,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let handler = StockadeMcp::new(Backend::Local {
        policy: Box::new(opts.policy),
        state: opts.state,
        idle_ttl: opts.idle_ttl,
    });
    tokio::pin!(stop);
    let running = tokio::select! {
        r = handler.clone().serve(rmcp::transport::stdio()) => r,
        () = &mut stop => {
            handler.close(DestroyReason::Killed).await;
            return Ok(());
        }
    };
    let reaper = {
        let h = handler.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if h.reap_idle().await {
                    tracing::info!("mcp: sandbox destroyed after its idle timeout");
                }
            }
        })
    };
    let result = match running {
        // The client went away before its first request: nothing was made.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => Ok(()),
        Err(e) => Err(format!("MCP on stdio: {e}")),
        Ok(running) => {
            tokio::select! {
                r = running.waiting() => match r {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("MCP service: {e}")),
                },
                // Dropping the running service (inside `waiting`) cancels it.
                () = &mut stop => Ok(()),
            }
        }
    };
    reaper.abort();
    handler.close(DestroyReason::Killed).await;
    result
}
