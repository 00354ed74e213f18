//! `stockade gc [--max-age DURATION] [--max-size SIZE] [--dry-run]`: retention for the state
//! directory. First every sandbox whose log was last written more than `--max-age` ago (default
//! 30d) is removed, then the oldest (by creation) until the sandboxes together take at most
//! `--max-size` (default 1GiB); then the global log is rewritten to hold only the lines of the
//! sandboxes that remain, through a temp file and a rename, so a crash leaves the old or the new
//! log and never half of one.
//!
//! Guarantees: a running sandbox (no `sandbox.destroyed` and a log written in the last
//! [`RUNNING_WINDOW`](crate::ls::RUNNING_WINDOW) (10 minutes)) is never removed; only directories directly under `<state>/sandboxes` are
//! removed, never what a symlink points to; `--dry-run` changes nothing. Not guaranteed: events a
//! sandbox running during gc appends to the global log after the rewrite reach only its own log
//! (its recorder holds the old file; docs/audit.md, "Retention"). Tested by
//! `crates/cli/tests/trace_cli.rs`.

use crate::ls::{self, Entry, Status, fmt_bytes, fmt_ms, format_utc, micros, warn};
use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use stockade_audit::StateDir;
use stockade_policy::{ByteSize, format_duration, parse_duration};

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Remove the logs of sandboxes last written longer ago than this, e.g. 7d, 12h.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    max_age: Duration,
    /// Then remove the oldest until all sandboxes' logs take at most this, e.g. 512MiB.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    max_size: ByteSize,
    /// Print what would be removed and change nothing.
    #[arg(long)]
    dry_run: bool,
}

struct Candidate {
    entry: Entry,
    status: Status,
    /// When the log (or the directory) was last written.
    modified: Option<SystemTime>,
    quiet_for: Duration,
    bytes: u64,
}

pub fn run(state: &StateDir, args: GcArgs) -> ExitCode {
    let entries = match ls::entries(state) {
        Ok(e) => e,
        Err(e) => return crate::fail(e),
    };
    let now = SystemTime::now();
    let mut all: Vec<Candidate> = entries
        .into_iter()
        .map(|entry| {
            let loaded = ls::load(&entry);
            let status = ls::summarize_loaded(&loaded, now).status;
            let quiet_for = loaded
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let bytes = dir_size(&entry.dir);
            Candidate {
                entry,
                status,
                modified: loaded.modified,
                quiet_for,
                bytes,
            }
        })
        .collect();
    // Oldest first, for the size pass.
    all.reverse();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = String::new();
    let mut failed = false;
    let mut removed = (0usize, 0u64);
    let mut kept_running = HashSet::new();
    let mut gone = vec![false; all.len()];
    let mut total: u64 = all.iter().map(|c| c.bytes).sum();
    let max_age = format_duration(args.max_age);
    let max_size = args.max_size.to_string();
    for pass in [Pass::Age, Pass::Size] {
        for (i, c) in all.iter().enumerate() {
            let due = match pass {
                Pass::Age => c.quiet_for >= args.max_age,
                Pass::Size => total > args.max_size.bytes(),
            };
            if gone[i] || !due {
                continue;
            }
            if c.status == Status::Running {
                kept_running.insert(i);
                continue;
            }
            let why = match pass {
                Pass::Age => format!("older than {max_age}"),
                Pass::Size => format!("over the {max_size} total"),
            };
            if !args.dry_run
                && let Err(e) = fs::remove_dir_all(&c.entry.dir)
            {
                warn(format!("cannot remove {}: {e}", c.entry.dir.display()));
                failed = true;
                continue;
            }
            gone[i] = true;
            total -= c.bytes;
            removed = (removed.0 + 1, removed.1 + c.bytes);
            out.push_str(&format!(
                "{verb} {} ({}, {}, last written {}): {why}\n",
                c.entry.id,
                c.status,
                fmt_bytes(c.bytes),
                c.modified
                    .map_or_else(|| "unknown".into(), |m| format_utc(micros(m), false))
            ));
        }
    }
    let mut kept: Vec<usize> = kept_running.into_iter().collect();
    kept.sort_unstable();
    for i in kept {
        let c = &all[i];
        out.push_str(&format!(
            "kept {} (running: no sandbox.destroyed, log written {} ago)\n",
            c.entry.id,
            fmt_ms(u64::try_from(c.quiet_for.as_millis()).unwrap_or(u64::MAX))
        ));
    }
    let left = all.len() - removed.0;
    let removed_ids: HashSet<&str> = all
        .iter()
        .zip(&gone)
        .filter(|(_, g)| **g)
        .map(|(c, _)| c.entry.id.as_str())
        .collect();
    match rewrite_global(state, &removed_ids, args.dry_run) {
        Ok(Some((kept, of))) => out.push_str(&format!(
            "global log: {} {kept} of {of} lines\n",
            if args.dry_run { "would keep" } else { "kept" }
        )),
        Ok(None) => {}
        Err(e) => {
            warn(format!(
                "cannot rewrite {}: {e}",
                state.global_log().display()
            ));
            failed = true;
        }
    }
    out.push_str(&format!(
        "gc: {verb} {} sandbox{} ({}), {} {left} ({})\n",
        removed.0,
        if removed.0 == 1 { "" } else { "es" },
        fmt_bytes(removed.1),
        if args.dry_run { "would keep" } else { "kept" },
        fmt_bytes(total)
    ));
    if total > args.max_size.bytes() {
        out.push_str(&format!(
            "gc: still over {max_size}: what is left is running\n"
        ));
    }
    let code = crate::trace::write_stdout(&out);
    if failed {
        return ExitCode::from(crate::EXIT_STOCKADE);
    }
    code
}

#[derive(Clone, Copy)]
enum Pass {
    Age,
    Size,
}

/// Bytes of the files under `dir` (apparent size; symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|de| match de.file_type() {
            Ok(t) if t.is_dir() => dir_size(&de.path()),
            Ok(_) => de.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Keeps the global log's lines of the sandboxes whose directory exists and is not in `removed`
/// (so also those of a sandbox started during gc). Returns (kept, total) lines when the log
/// changes (or would, with `dry_run`), None when it is absent or already holds only those.
fn rewrite_global(
    state: &StateDir,
    removed: &HashSet<&str>,
    dry_run: bool,
) -> io::Result<Option<(usize, usize)>> {
    #[derive(serde::Deserialize)]
    struct Id {
        sandbox_id: String,
    }
    let path = state.global_log();
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Listed again just before the rewrite, so a sandbox created meanwhile keeps its lines.
    let present: HashSet<String> = fs::read_dir(state.sandboxes())
        .map(|rd| {
            rd.flatten()
                .filter_map(|d| d.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut kept = Vec::with_capacity(text.len());
    let mut total = 0;
    let mut n_kept = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        total += 1;
        // A torn last line cannot be attributed; an unreadable line belongs to no one.
        let owner = line
            .ends_with(b"\n")
            .then(|| serde_json::from_slice::<Id>(line).ok())
            .flatten();
        if let Some(Id { sandbox_id }) = owner
            && present.contains(&sandbox_id)
            && !removed.contains(sandbox_id.as_str())
        {
            kept.extend_from_slice(line);
            n_kept += 1;
        }
    }
    if n_kept == total {
        return Ok(None);
    }
    if dry_run {
        return Ok(Some((n_kept, total)));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".events.jsonl.gc-{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&kept)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| Some((n_kept, total)))
}
