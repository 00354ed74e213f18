//! `stockade serve` (sandboxes as a service over HTTP), `stockade keys create|ls|revoke` and
//! `stockade template add|ls|rm`. The key and template commands work on the state directory's
//! database directly, whether a server is running on it or not.

use clap::{Args, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use stockade_audit::StateDir;
use stockade_server::{Config, PoolSpec};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the API (native and E2B-compatible).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Also serve envd for the E2B SDK's debug mode here (it expects 127.0.0.1:49983) [default: off]
    #[arg(long, value_name = "ADDR")]
    e2b_debug_listen: Option<SocketAddr>,
    /// Sandboxes at once, all keys together (pooled ones not counted).
    #[arg(long, value_name = "N", default_value_t = 200)]
    max_sandboxes: usize,
    /// Sandboxes at once per API key.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_per_key: usize,
    /// TTL of a sandbox whose create gives none (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    default_timeout: u64,
    /// Largest TTL a request may ask for (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    max_timeout: u64,
    /// Keep N sandboxes of TEMPLATE started ahead (TEMPLATE@USER=N for another login name);
    /// creates without env or inline policy take one at once. Repeatable.
    #[arg(long = "pool", value_name = "TEMPLATE=N", value_parser = PoolSpec::parse)]
    pools: Vec<PoolSpec>,
    /// Largest file one upload may write (native API and E2B /files); larger: 413.
    #[arg(long, value_name = "SIZE", default_value = "100MiB")]
    max_upload: stockade_policy::ByteSize,
    /// Largest file one download may read; larger: 413.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    max_download: stockade_policy::ByteSize,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create an API key and print it (once: only its hash is kept).
    Create {
        /// A name to recognise it by.
        #[arg(long, default_value = "default")]
        name: String,
        /// Spell it the way E2B's tools expect (`e2b_` + 40 hex) instead of `sk_...`.
        #[arg(long)]
        e2b: bool,
    },
    /// List keys (ids, names, dates; never the keys).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: it stops working at once.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// Add a template: a name for a policy (and optionally a root filesystem directory).
    Add {
        name: String,
        /// Policy file (TOML). Without workspace.mode the workspace is an empty tmpfs.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Directory holding a root filesystem (debootstrap, unpacked OCI image): the
        /// read-only lower layer of each sandbox.
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
    },
    /// List templates (`base` is built in).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a template (sandboxes already made from it keep running).
    Rm { name: String },
}

fn store(state: &StateDir) -> Result<stockade_server::store::Store, String> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state.0)
            .map_err(|e| format!("{}: {e}", state.0.display()))?;
    }
    stockade_server::open_store(&state.0).map_err(|e| e.to_string())
}

pub fn serve(state: &StateDir, a: ServeArgs) -> ExitCode {
    if std::env::var_os("STOCKADE_LOG").is_none() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("stockade_server=info"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let cfg = Config {
        listen: a.listen,
        state_dir: state.0.clone(),
        e2b_debug_listen: a.e2b_debug_listen,
        max_sandboxes: a.max_sandboxes,
        max_per_key: a.max_per_key,
        default_timeout: Duration::from_secs(a.default_timeout),
        max_timeout: Duration::from_secs(a.max_timeout),
        pools: a.pools,
        max_upload: a.max_upload.0,
        max_download: a.max_download.0,
        ..Config::default()
    };
    if let Err(e) = cfg.validate() {
        return crate::fail(e);
    }
    // SIGINT/SIGTERM are blocked in every thread (main did it first); one thread waits for them.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel();
    stockade_runtime::relay::signals(sig_tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<i32>();
    std::thread::spawn(move || {
        let mut stop_tx = Some(stop_tx);
        while let Ok(ev) = sig_rx.recv() {
            let stockade_runtime::relay::Event::Signal(sig) = ev else {
                continue;
            };
            if sig == libc::SIGHUP {
                continue;
            }
            match stop_tx.take() {
                Some(t) => {
                    let _ = t.send(sig);
                }
                None => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "stockade: already shutting down (destroying the sandboxes)"
                    );
                }
            }
        }
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stockade-serve")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::fail(format!("starting the runtime: {e}")),
    };
    let stop = async move {
        if let Ok(sig) = stop_rx.await {
            tracing::info!(signal = sig, "termination signal");
        }
    };
    let state_shown = state.0.display().to_string();
    let r = rt.block_on(stockade_server::serve(cfg, stop, move |addr, dbg| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "stockade: serving on http://{addr} (state {state_shown})"
        );
        if let Some(d) = dbg {
            let _ = writeln!(err, "stockade: E2B debug-mode envd on http://{d}");
        }
    }));
    rt.shutdown_timeout(Duration::from_secs(5));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}

pub fn keys(state: &StateDir, cmd: KeysCmd) -> ExitCode {
    let s = match store(state) {
        Ok(s) => s,
        Err(e) => return crate::fail(e),
    };
    match cmd {
        KeysCmd::Create { name, e2b } => {
            let fmt = if e2b {
                stockade_server::keys::KeyFormat::E2b
            } else {
                stockade_server::keys::KeyFormat::Native
            };
            match stockade_server::keys::create(&s, &name, fmt) {
                Ok(k) => {
                    println!("{}", k.key);
                    let _ = writeln!(
                        std::io::stderr(),
                        "stockade: key {} ({}) created; it is shown only this once",
                        k.row.id,
                        k.row.name
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => crate::fail(e),
            }
        }
        KeysCmd::Ls { json } => match s.list_keys() {
            Ok(rows) => {
                if json {
                    let v: Vec<_> = rows
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "id": r.id, "name": r.name, "created_at": r.created_at,
                                "revoked_at": r.revoked_at,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                } else {
                    println!("{:<10} {:<24} {:<26} REVOKED", "ID", "NAME", "CREATED");
                    for r in rows {
                        println!(
                            "{:<10} {:<24} {:<26} {}",
                            r.id,
                            r.name,
                            r.created_at,
                            r.revoked_at.as_deref().unwrap_or("-")
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        },
        KeysCmd::Revoke { id } => match stockade_server::keys::revoke(&s, &id) {
            Ok(()) => {
                println!("revoked {id}");
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        },
    }
}

pub fn template(state: &StateDir, cmd: TemplateCmd) -> ExitCode {
    let s = match store(state) {
        Ok(s) => s,
        Err(e) => return crate::fail(e),
    };
    match cmd {
        TemplateCmd::Add {
            name,
            policy,
            rootfs,
        } => {
            let src = match std::fs::read_to_string(&policy) {
                Ok(s) => s,
                Err(e) => return crate::fail(format!("{}: {e}", policy.display())),
            };
            match stockade_server::templates::add(
                &s,
                &name,
                &src,
                &policy.display().to_string(),
                rootfs.as_deref(),
            ) {
                Ok(_) => {
                    println!("added template {name}");
                    ExitCode::SUCCESS
                }
                Err(e) => crate::fail(e),
            }
        }
        TemplateCmd::Ls { json } => match s.list_templates() {
            Ok(rows) => {
                if json {
                    let mut v = vec![serde_json::json!({
                        "name": "base", "builtin": true, "rootfs": null, "created_at": null,
                    })];
                    v.extend(rows.iter().map(|r| {
                        serde_json::json!({
                            "name": r.name, "builtin": false, "rootfs": r.rootfs,
                            "created_at": r.created_at,
                        })
                    }));
                    println!("{}", serde_json::Value::Array(v));
                } else {
                    println!("{:<24} {:<26} ROOTFS", "NAME", "CREATED");
                    println!("{:<24} {:<26} - (host, read-only)", "base", "(built in)");
                    for r in rows {
                        println!(
                            "{:<24} {:<26} {}",
                            r.name,
                            r.created_at,
                            r.rootfs.as_deref().unwrap_or("-")
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        },
        TemplateCmd::Rm { name } => match stockade_server::templates::remove(&s, &name) {
            Ok(()) => {
                println!("removed template {name}");
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(e),
        },
    }
}
