//! `stockade mcp`: an MCP server on stdin/stdout (for Claude Desktop/Code, Cursor and other MCP
//! clients), one sandbox per client, made on its first tool call (see
//! `stockade_server::mcp`). Standard output carries the protocol only; diagnostics go to
//! standard error (`STOCKADE_LOG=info` for more).

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use stockade_audit::StateDir;
use stockade_server::mcp::stdio::{StdioOptions, serve_stdio};

#[derive(Args, Debug)]
pub struct McpArgs {
    /// Policy of the sandbox (TOML) [default: the built-in one with an empty temporary
    /// workspace and no network, as `stockade serve`'s `base` template]. Without
    /// workspace.mode, the workspace is an empty tmpfs.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Destroy the sandbox after SECS without a tool call (the next call starts a new one).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
}

pub fn run(state: &StateDir, a: McpArgs) -> ExitCode {
    if std::env::var_os("STOCKADE_LOG").is_none() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("stockade_server=warn"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    if a.timeout == 0 {
        return crate::fail("--timeout: must be at least 1 second");
    }
    let policy = match &a.policy {
        None => stockade_server::templates::base_policy(),
        Some(f) => {
            let src = match std::fs::read_to_string(f) {
                Ok(s) => s,
                Err(e) => return crate::fail(format!("{}: {e}", f.display())),
            };
            match stockade_server::templates::parse(&src, &f.display().to_string(), None) {
                Ok(p) => p,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "{e}");
                    return ExitCode::from(crate::EXIT_STOCKADE);
                }
            }
        }
    };
    // SIGINT/SIGTERM are blocked in every thread (main did it first); one thread waits for them.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel();
    stockade_runtime::relay::signals(sig_tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<i32>();
    std::thread::spawn(move || {
        let mut stop_tx = Some(stop_tx);
        while let Ok(ev) = sig_rx.recv() {
            if let stockade_runtime::relay::Event::Signal(sig) = ev
                && sig != libc::SIGHUP
                && let Some(t) = stop_tx.take()
            {
                let _ = t.send(sig);
            }
        }
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stockade-mcp")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::fail(format!("starting the runtime: {e}")),
    };
    let opts = StdioOptions {
        policy,
        state: state.clone(),
        idle_ttl: Duration::from_secs(a.timeout),
    };
    let stop = async move {
        if let Ok(sig) = stop_rx.await {
            tracing::info!(signal = sig, "termination signal");
        }
    };
    let r = rt.block_on(serve_stdio(opts, stop));
    rt.shutdown_timeout(Duration::from_secs(5));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}
