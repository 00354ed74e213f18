//! The `stockade` binary: `run`, `policy check|show`, `doctor`, and the hidden `__launch` helper
//! the supervisor re-executes to build a sandbox.

mod doctor;
mod flags;
mod gc;
mod ls;
mod mcp;
mod remote;
mod serve;
mod trace;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use stockade_policy::Policy;

/// Exit code for stockade's own failures (docker/podman convention).
const EXIT_STOCKADE: u8 = 125;

#[derive(Parser)]
#[command(name = "stockade", version, about = "Run code an AI agent wrote in a throwaway sandbox", long_about = None)]
struct Cli {
    /// State directory (audit logs) [default: $STOCKADE_STATE_DIR, /var/lib/stockade for root,
    /// else $XDG_STATE_HOME/stockade or ~/.local/state/stockade]
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run CMD in a fresh container-level sandbox; exits with CMD's status (128+N if killed by signal N).
    #[command(after_long_help = flags::defaults_help())]
    Run(Box<flags::RunArgs>),
    /// Check or show policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Report what this host supports and which isolation levels follow.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what a sandbox did, as a timeline tree (sandbox → commands → their events).
    Trace(trace::TraceArgs),
    /// List recent sandboxes with status and duration.
    #[command(alias = "runs")]
    Ls(ls::LsArgs),
    /// Remove old audit logs from the state directory (by age and total size).
    Gc(gc::GcArgs),
    /// Serve sandboxes over HTTP: the native API and an E2B-compatible one (SIGTERM: graceful stop).
    Serve(Box<serve::ServeArgs>),
    /// Manage the API keys of `stockade serve` (in the state directory).
    #[command(subcommand)]
    Keys(serve::KeysCmd),
    /// Manage the templates of `stockade serve` (name → policy and root filesystem).
    #[command(subcommand)]
    Template(serve::TemplateCmd),
    /// Serve MCP on stdin/stdout (Claude Desktop/Code, Cursor...): tools to run commands and code
    /// in one sandbox, made on the first call.
    Mcp(mcp::McpArgs),
    /// Clients of a server: create, exec, cp, kill (--server URL; key from STOCKADE_API_KEY).
    #[command(flatten)]
    Remote(remote::RemoteCmd),
    #[command(name = "__launch", hide = true)]
    Launch {
        #[arg(long = "allow-weaker-isolation")]
        allow_weaker: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Report every error in FILE with its line and column.
    Check { file: PathBuf },
    /// Print the effective policy (defaults + FILE + flags) as TOML.
    Show {
        file: Option<PathBuf>,
        #[command(flatten)]
        overrides: Box<flags::OverrideArgs>,
    },
}

fn state_dir(explicit: Option<&std::path::Path>) -> stockade_audit::StateDir {
    stockade_audit::StateDir::resolve(explicit)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "stockade: {msg}");
    ExitCode::from(EXIT_STOCKADE)
}

fn load_policy(file: Option<&PathBuf>) -> Result<Policy, String> {
    match file {
        None => Ok(Policy::default()),
        Some(f) => {
            let src = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            Policy::from_toml(&src, &f.display().to_string()).map_err(|e| e.to_string())
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists, so only the signal thread of a run sees termination signals.
    stockade_runtime::relay::block_termination_signals();
    // The launcher is on every sandbox's start-up path: skip building the whole CLI for it.
    let mut raw = std::env::args_os().skip(1);
    if raw.next().is_some_and(|a| a == "__launch") {
        let allow_weaker = raw
            .next()
            .is_some_and(|a| a == stockade_agent::launcher::ALLOW_WEAKER_ARG);
        return ExitCode::from(stockade_agent::launcher::main(allow_weaker) as u8);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "__vmm") {
        let allow_weaker = std::env::args_os()
            .nth(2)
            .is_some_and(|a| a == stockade_agent::launcher::ALLOW_WEAKER_ARG);
        return ExitCode::from(stockade_runtime::backend::vmm::main(allow_weaker) as u8);
    }
    // Diagnostics (spans per sandbox and exec, one line per audit event) on stderr when asked.
    if let Ok(filter) = std::env::var("STOCKADE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_STOCKADE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.cmd {
        Cmd::Launch { allow_weaker } => {
            ExitCode::from(stockade_agent::launcher::main(allow_weaker) as u8)
        }
        Cmd::Run(args) => run(*args, state_dir(cli.state_dir.as_deref())),
        Cmd::Policy(PolicyCmd::Check { file }) => match load_policy(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "{e}");
                ExitCode::from(EXIT_STOCKADE)
            }
        },
        Cmd::Policy(PolicyCmd::Show { file, overrides }) => {
            let mut p = match load_policy(file.as_ref()) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let o = match overrides.to_overrides() {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            if let Err(e) = p.apply(&o) {
                return fail(e);
            }
            print!("{}", p.to_toml());
            ExitCode::SUCCESS
        }
        Cmd::Doctor { json } => doctor::run(json),
        Cmd::Trace(a) => trace::run(&state_dir(cli.state_dir.as_deref()), a),
        Cmd::Ls(a) => ls::run(&state_dir(cli.state_dir.as_deref()), a),
        Cmd::Gc(a) => gc::run(&state_dir(cli.state_dir.as_deref()), a),
        Cmd::Serve(a) => serve::serve(&state_dir(cli.state_dir.as_deref()), *a),
        Cmd::Keys(c) => serve::keys(&state_dir(cli.state_dir.as_deref()), c),
        Cmd::Template(c) => serve::template(&state_dir(cli.state_dir.as_deref()), c),
        Cmd::Mcp(a) => mcp::run(&state_dir(cli.state_dir.as_deref()), a),
        Cmd::Remote(c) => remote::run(c),
    }
}

fn run(args: flags::RunArgs, state: stockade_audit::StateDir) -> ExitCode {
    let mut policy = match load_policy(args.policy.as_ref()) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let o = match args.overrides.to_overrides() {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if let Err(e) = policy.apply(&o) {
        return fail(e);
    }
    // A relative workspace in a policy file is relative to the file; on the command line, to the cwd.
    let base_dir = match (&args.policy, &args.overrides.workspace) {
        (Some(f), None)
            if policy
                .workspace
                .path
                .as_ref()
                .is_some_and(|p| p.is_relative()) =>
        {
            f.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                }
            })
        }
        _ => None,
    };
    // A bad endpoint fails the run up front, before any sandbox exists.
    let otlp =
        match stockade_audit::otlp::OtlpExporter::from_flag_or_env(args.otlp_endpoint.as_deref()) {
            Ok(o) => o.filter(|_| policy.audit.enabled),
            Err(e) => return fail(format!("otlp: {e}")),
        };
    let audit = policy
        .audit
        .enabled
        .then(|| stockade_runtime::audit::AuditOptions {
            state,
            observers: otlp.iter().map(|e| e.observer()).collect(),
        });
    let opts = stockade_runtime::RunOptions { base_dir, audit };
    let report = match stockade_runtime::run(&policy, &args.command, opts) {
        Ok(r) => r,
        Err(e) => {
            let code = e.exit_code();
            let _ = writeln!(std::io::stderr(), "stockade: {e}");
            return ExitCode::from(code as u8);
        }
    };
    // After sandbox.destroyed and the fsync: the JSONL log stays the durable record, so an
    // unreachable collector is a warning, not a different exit status.
    if let Some(exp) = &otlp
        && let Err(e) = exp.flush(std::time::Duration::from_secs(5))
    {
        let _ = writeln!(
            std::io::stderr(),
            "stockade: warning: otlp export failed: {e}"
        );
    }
    let mut err = std::io::stderr().lock();
    if args.verbose
        && let Some(e) = &report.enforced
    {
        let _ = writeln!(
            err,
            "stockade: sandbox {} enforced: uid {} gid {}, landlock {} (kernel ABI {}), seccomp {}, no_new_privs {}, capabilities dropped {}",
            report.id,
            e.uid,
            e.gid,
            e.landlock,
            e.landlock_kernel_abi,
            e.seccomp,
            e.no_new_privs,
            e.capabilities_dropped
        );
    }
    for n in &report.notices {
        let _ = writeln!(err, "stockade: {n}");
    }
    if let Some(changes) = &report.changes {
        let _ = writeln!(err, "stockade: overlay changes ({}):", changes.len());
        for c in changes {
            let kind = serde_json::to_value(c.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(err, "  {kind:<8} {} ({} bytes)", c.path, c.size);
        }
        if let Some(path) = &args.changes_json {
            let body = serde_json::json!({ "sandbox_id": report.id, "changes": changes });
            if let Err(e) = std::fs::write(path, format!("{body:#}\n")) {
                let _ = writeln!(err, "stockade: writing {}: {e}", path.display());
                return ExitCode::from(EXIT_STOCKADE);
            }
        }
    } else if args.changes_json.is_some() {
        let _ = writeln!(
            err,
            "stockade: --changes-json needs --workspace-mode overlay; nothing written"
        );
    }
    if !report.leftovers.is_empty() {
        return ExitCode::from(EXIT_STOCKADE);
    }
    ExitCode::from(report.exit_code.clamp(0, 255) as u8)
}
