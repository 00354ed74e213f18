//! `stockade trace [SANDBOX_ID | --last] [--json] [--follow]`: what a sandbox did, as a timeline
//! tree (sandbox → commands → their events), or as the stored JSON lines.
//!
//! Guarantees: `--json` prints every stored line that is a complete event, byte for byte; the
//! tree shows every event of the log exactly once, with its time relative to the first event;
//! colour only on a terminal and never with `NO_COLOR`; text from the log is printed with control
//! characters escaped. A damaged log is read as far as it goes, with warnings on stderr, never a
//! failure. Tested by `crates/cli/tests/trace_cli.rs` (exact lines) and the unit tests in `tree`.

mod tree;

use crate::ls::{self, fmt_ms, printable, warn};
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};
use stockade_audit::{Event, EventKind, SCHEMA_VERSION, StateDir};
use tree::{Hint, Renderer, Style, colour_wanted, render_tree};

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The sandbox's id, or a prefix of it that names only one (as `stockade ls` shows).
    #[arg(
        value_name = "SANDBOX_ID",
        required_unless_present = "last",
        conflicts_with = "last"
    )]
    id: Option<String>,
    /// The most recently created sandbox.
    #[arg(long)]
    last: bool,
    /// The events exactly as stored: one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Keep printing new events until the sandbox is destroyed (Ctrl-C stops).
    #[arg(long, short)]
    follow: bool,
    /// Read the events from this server (`stockade serve`; API key from STOCKADE_API_KEY)
    /// instead of the state directory: a sandbox it runs, by its full id.
    #[arg(long, value_name = "URL", conflicts_with = "last")]
    server: Option<String>,
}

/// How often `--follow` looks at the log.
const POLL: Duration = Duration::from_millis(100);

pub fn run(state: &StateDir, args: TraceArgs) -> ExitCode {
    if let Some(server) = &args.server {
        return remote(server, &args);
    }
    let id = match pick(state, args.id.as_deref()) {
        Ok(id) => id,
        Err(e) => return crate::fail(e),
    };
    let style = Style {
        on: colour_wanted(
            io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ),
    };
    if args.follow {
        return follow(state, &id, args.json, style);
    }
    let path = state.sandbox_log(&id);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return crate::fail(format!("cannot read {}: {e}", path.display())),
    };
    let text = String::from_utf8_lossy(&bytes);
    let log = stockade_audit::parse_log(&text, &path.display().to_string());
    for w in &log.warnings {
        warn(w);
    }
    warn_newer(&log.events);
    let out = if args.json {
        stored_lines(&text)
    } else {
        render_tree(&id, &log.events, style)
    };
    write_stdout(&out)
}

/// `--server`: the same rendering of events fetched from a server (see `crate::remote::trace`).
fn remote(server: &str, args: &TraceArgs) -> ExitCode {
    let style = Style {
        on: colour_wanted(
            io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ),
    };
    let id = args.id.clone().unwrap_or_default();
    let mut r = Renderer::new(&id, style);
    crate::remote::trace(
        server,
        args.id.as_deref(),
        args.json,
        args.follow,
        &|id, events| render_tree(id, events, style),
        &mut |e| {
            r.event(e, Hint::streaming(e));
            std::mem::take(&mut r.out)
        },
    )
}

/// The sandbox `query` names (a whole id or a unique prefix), or the newest one for `None`.
fn pick(state: &StateDir, query: Option<&str>) -> Result<String, String> {
    let entries = ls::entries(state)?;
    let Some(q) = query else {
        return entries
            .into_iter()
            .next()
            .map(|e| e.id)
            .ok_or_else(|| format!("no sandboxes in {}", state.0.display()));
    };
    let missing = || format!("no sandbox {} in {}", printable(q), state.0.display());
    if q.is_empty() {
        return Err(missing());
    }
    if entries.iter().any(|e| e.id == q) {
        return Ok(q.to_string());
    }
    let mut hits: Vec<String> = entries
        .into_iter()
        .filter(|e| e.id.starts_with(q))
        .map(|e| e.id)
        .collect();
    match hits.len() {
        0 => Err(missing()),
        1 => Ok(hits.remove(0)),
        n => {
            hits.sort();
            Err(format!(
                "{} names {n} sandboxes in {}: {}; give more of the id",
                printable(q),
                state.0.display(),
                hits.join(", ")
            ))
        }
    }
}

/// The complete lines of `text` that are events, exactly as stored.
fn stored_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && serde_json::from_str::<Event>(l).is_ok())
        .collect()
}

fn warn_newer(events: &[Event]) {
    if let Some(v) = events.iter().map(|e| e.schema_version).max()
        && v > SCHEMA_VERSION
    {
        warn(format!(
            "this log has schema version {v}; this stockade reads version {SCHEMA_VERSION} and may not show every field"
        ));
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> ExitCode {
    let mut o = io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => crate::fail(format!("writing the output: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// --follow

fn follow(state: &StateDir, id: &str, json: bool, style: Style) -> ExitCode {
    // Termination signals are blocked process-wide (see main); take them here so Ctrl-C ends the
    // wait with the usual 128+N instead of being held pending forever.
    let (tx, rx) = mpsc::channel();
    stockade_runtime::relay::signals(tx);
    let path = state.sandbox_log(id);
    let origin = path.display().to_string();
    let quiet = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok());
    if let Some(q) = quiet.filter(|q| *q >= ls::RUNNING_WINDOW) {
        warn(format!(
            "{id} has not written for {} and may never end (its stockade may have died); following anyway",
            fmt_ms(u64::try_from(q.as_millis()).unwrap_or(u64::MAX))
        ));
    }
    let mut file: Option<File> = None;
    let mut pending = Vec::new();
    let mut lineno = 0usize;
    let mut newest = SCHEMA_VERSION;
    let mut r = Renderer::new(id, style);
    loop {
        if file.is_none() {
            match File::open(&path) {
                Ok(f) => file = Some(f),
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && path.parent().is_some_and(|d| d.is_dir()) => {}
                Err(e) => return crate::fail(format!("cannot read {origin}: {e}")),
            }
        }
        if let Some(f) = &mut file
            && let Err(e) = f.read_to_end(&mut pending)
        {
            return crate::fail(format!("cannot read {origin}: {e}"));
        }
        let mut out = String::new();
        let mut done = false;
        // Only whole lines: a line still being written waits for its newline.
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            lineno += 1;
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(&text) {
                Ok(e) => {
                    if e.schema_version > newest {
                        newest = e.schema_version;
                        warn_newer(std::slice::from_ref(&e));
                    }
                    done |= matches!(e.kind, EventKind::SandboxDestroyed { .. });
                    if json {
                        out.push_str(&text);
                    } else {
                        r.event(&e, Hint::streaming(&e));
                        out.push_str(&std::mem::take(&mut r.out));
                    }
                }
                Err(e) => warn(format!("{origin}:{lineno}: unreadable line skipped: {e}")),
            }
        }
        let mut o = io::stdout().lock();
        match o.write_all(out.as_bytes()).and_then(|()| o.flush()) {
            Ok(()) if done => return ExitCode::SUCCESS,
            Ok(()) => {}
            // The reader went away (`| head`): nothing more to follow for.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Err(e) => return crate::fail(format!("writing the output: {e}")),
        }
        drop(o);
        if file.is_some() && !path.exists() {
            return crate::fail(format!(
                "{origin} was removed while following it (stockade gc?)"
            ));
        }
        match rx.recv_timeout(POLL) {
            Ok(stockade_runtime::relay::Event::Signal(s)) => {
                return ExitCode::from(128u8.saturating_add(u8::try_from(s).unwrap_or(0)));
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
    }
}
