//! `stockade ls` (alias `runs`): the sandboxes in the state directory, newest first, with status,
//! duration and first command. Also the model every reader shares (`trace`, `gc`): which
//! sandboxes exist, when each was created, how its log says it ended, and the small formatters
//! (times, sizes, argv) their outputs have in common.
//!
//! Guarantees: reading never fails because of a damaged log (unreadable lines are skipped with a
//! warning); strings from a log reach a terminal only with control characters escaped, so a
//! hostile file name cannot drive the terminal. Tested by `crates/cli/tests/trace_cli.rs`.

use std::borrow::Cow;
use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stockade_audit::{DestroyReason, Event, EventKind, Limit, StateDir};

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// One JSON object per sandbox per line.
    #[arg(long)]
    json: bool,
    /// Show at most N sandboxes, newest first (0: all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
    /// The caller's sandboxes on this server (`stockade serve`; API key from STOCKADE_API_KEY)
    /// instead of the state directory's.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

/// A sandbox with no `sandbox.destroyed` whose log was written less than this long ago is
/// running: `ls` says so and `gc` never removes it (docs/audit.md, "Retention").
pub(crate) const RUNNING_WINDOW: Duration = Duration::from_secs(600);

/// How many characters of the command `ls` shows.
const COMMAND_WIDTH: usize = 60;

pub fn run(state: &StateDir, args: LsArgs) -> ExitCode {
    if let Some(server) = &args.server {
        return crate::remote::ls(server, args.json);
    }
    let mut entries = match entries(state) {
        Ok(e) => e,
        Err(e) => return crate::fail(e),
    };
    if args.limit > 0 {
        entries.truncate(args.limit);
    }
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut out = String::new();
    for entry in &entries {
        let loaded = load(entry);
        for w in &loaded.warnings {
            warn(w);
        }
        let s = summarize_loaded(&loaded, now);
        if args.json {
            out.push_str(&json_row(entry, &loaded, &s).to_string());
            out.push('\n');
        } else {
            rows.push(row(entry, &s));
        }
    }
    if !args.json {
        out = if entries.is_empty() {
            format!("no sandboxes in {}\n", state.0.display())
        } else {
            table(&rows)
        };
    }
    crate::trace::write_stdout(&out)
}

/// One sandbox directory under `<state>/sandboxes`.
pub(crate) struct Entry {
    pub id: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Microseconds since the epoch: the `at` of the log's first event, else the directory's mtime.
    pub created_us: i64,
}

/// Every sandbox directory (not symlinks, not files), newest first.
pub(crate) fn entries(state: &StateDir) -> Result<Vec<Entry>, String> {
    let root = state.sandboxes();
    let rd = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", root.display())),
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de.map_err(|e| format!("cannot read {}: {e}", root.display()))?;
        if !de.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(id) = de.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let dir = de.path();
        let log = state.sandbox_log(&id);
        let created_us = first_at(&log)
            .or_else(|| {
                fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(micros)
            })
            .unwrap_or(0);
        out.push(Entry {
            id,
            dir,
            log,
            created_us,
        });
    }
    out.sort_by(|a, b| b.created_us.cmp(&a.created_us).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// The `at` of a log's first complete line, read without loading the whole log.
fn first_at(log: &Path) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct At {
        at: String,
    }
    let f = fs::File::open(log).ok()?;
    let mut line = Vec::new();
    io::BufReader::new(f.take(1 << 20))
        .read_until(b'\n', &mut line)
        .ok()?;
    if line.last() != Some(&b'\n') {
        return None;
    }
    parse_at(&serde_json::from_slice::<At>(&line).ok()?.at)
}

/// A sandbox's log, read whole.
pub(crate) struct Loaded {
    pub events: Vec<Event>,
    pub warnings: Vec<String>,
    /// When the log was last written (the directory's mtime while there is no log yet).
    pub modified: Option<SystemTime>,
    /// The supervisor the sandbox recorded (`supervisor`: pid and start time) no longer runs:
    /// a sandbox without `sandbox.destroyed` is then unfinished (its supervisor was killed; its
    /// guardian tore the sandbox down), not running.
    pub supervisor_gone: bool,
}

/// Whether the process recorded in `dir/supervisor` ("PID STARTTIME") is gone: no such pid, or
/// a pid reused by a process that started at another time. No file: not known, so not gone.
pub(crate) fn supervisor_gone(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("supervisor")) else {
        return false;
    };
    let mut it = text.split_whitespace();
    let (Some(pid), Some(start)) = (it.next(), it.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 22 (starttime); fields after the command's closing parenthesis start at 3.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .is_none_or(|s| s != start),
        Err(_) => true,
    }
}

pub(crate) fn load(entry: &Entry) -> Loaded {
    let (events, mut warnings) = match stockade_audit::read_log(&entry.log) {
        Ok(l) => (l.events, l.warnings),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), Vec::new()),
        Err(e) => (
            Vec::new(),
            vec![format!("cannot read {}: {e}", entry.log.display())],
        ),
    };
    let modified = fs::metadata(&entry.log)
        .or_else(|_| fs::metadata(&entry.dir))
        .and_then(|m| m.modified());
    if let Err(e) = &modified {
        warnings.push(format!("{}: {e}", entry.dir.display()));
    }
    Loaded {
        events,
        warnings,
        modified: modified.ok(),
        supervisor_gone: supervisor_gone(&entry.dir),
    }
}

/// [`summarize`], knowing whether the supervisor is gone.
pub(crate) fn summarize_loaded(loaded: &Loaded, now: SystemTime) -> Summary {
    let mut s = summarize(&loaded.events, loaded.modified, now);
    if s.status == Status::Running && loaded.supervisor_gone {
        s.status = Status::Unfinished;
    }
    s
}

/// How a sandbox stands, from its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// No `sandbox.destroyed`, log written within [`RUNNING_WINDOW`].
    Running,
    /// No `sandbox.destroyed` and a quiet log: stockade died, or a long command is silent.
    Unfinished,
    Exit(i32),
    Signal(i32),
    /// Destroyed with reason `exit` but no `exec.exited` to say how.
    Ended,
    Timeout,
    Limit(Option<Limit>),
    Killed,
    Error,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Running => f.write_str("running"),
            Status::Unfinished => f.write_str("unfinished"),
            Status::Exit(c) => write!(f, "exit {c}"),
            Status::Signal(s) => write!(f, "signal {s}"),
            Status::Ended => f.write_str("ended"),
            Status::Timeout => f.write_str("timeout"),
            Status::Limit(Some(l)) => write!(f, "limit:{}", limit_name(*l)),
            Status::Limit(None) => f.write_str("limit"),
            Status::Killed => f.write_str("killed"),
            Status::Error => f.write_str("error"),
        }
    }
}

pub(crate) struct Summary {
    pub status: Status,
    pub reason: Option<DestroyReason>,
    /// The cleanup verdict of `sandbox.destroyed`.
    pub clean: Option<bool>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub limit: Option<Limit>,
    /// Final for an ended sandbox; so far for a running one; first to last event otherwise.
    pub duration_ms: Option<u64>,
    /// The first command's argv.
    pub argv: Option<Vec<String>>,
}

pub(crate) fn summarize(
    events: &[Event],
    modified: Option<SystemTime>,
    now: SystemTime,
) -> Summary {
    let mut s = Summary {
        status: Status::Running,
        reason: None,
        clean: None,
        exit_code: None,
        signal: None,
        limit: None,
        duration_ms: None,
        argv: None,
    };
    let mut destroyed = None;
    for e in events {
        match &e.kind {
            EventKind::ExecStarted { argv, .. } if s.argv.is_none() => s.argv = Some(argv.clone()),
            EventKind::ExecExited {
                exit_code,
                signal,
                limit,
                ..
            } => {
                s.exit_code = *exit_code;
                s.signal = *signal;
                s.limit = limit.or(s.limit);
            }
            EventKind::LimitHit { limit, .. } => s.limit = Some(*limit),
            EventKind::SandboxDestroyed {
                reason,
                clean,
                duration_ms,
                ..
            } => destroyed = Some((*reason, *clean, *duration_ms)),
            _ => {}
        }
    }
    let first = events.first().and_then(|e| parse_at(&e.at));
    if let Some((reason, clean, duration_ms)) = destroyed {
        s.reason = Some(reason);
        s.clean = Some(clean);
        s.duration_ms = Some(duration_ms);
        s.status = match reason {
            DestroyReason::Exit => match (s.exit_code, s.signal) {
                (Some(c), _) => Status::Exit(c),
                (None, Some(sig)) => Status::Signal(sig),
                (None, None) => Status::Ended,
            },
            DestroyReason::Timeout => Status::Timeout,
            DestroyReason::Limit => Status::Limit(s.limit),
            DestroyReason::Killed => Status::Killed,
            DestroyReason::Error => Status::Error,
        };
        return s;
    }
    // A log written "in the future" (clock stepped back) counts as recent: never remove in doubt.
    let quiet_for = modified.and_then(|m| now.duration_since(m).ok());
    if quiet_for.is_some_and(|q| q >= RUNNING_WINDOW) {
        s.status = Status::Unfinished;
        let last = events.last().and_then(|e| parse_at(&e.at));
        if let (Some(a), Some(b)) = (first, last) {
            s.duration_ms = u64::try_from((b - a) / 1000).ok();
        }
    } else if let Some(a) = first {
        s.duration_ms = u64::try_from((micros(now) - a) / 1000).ok();
    }
    s
}

fn row(entry: &Entry, s: &Summary) -> [String; 5] {
    let mut status = s.status.to_string();
    if s.clean == Some(false) {
        status.push_str(" (unclean)");
    }
    let command = s
        .argv
        .as_deref()
        .map_or_else(|| "-".to_string(), shell_join);
    [
        printable(&entry.id).into_owned(),
        format_utc(entry.created_us, false),
        status,
        s.duration_ms.map_or_else(|| "-".to_string(), fmt_ms),
        truncate(&command, COMMAND_WIDTH),
    ]
}

fn table(rows: &[[String; 5]]) -> String {
    const HEAD: [&str; 5] = ["SANDBOX", "STARTED", "STATUS", "DURATION", "COMMAND"];
    let mut width = HEAD.map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head = HEAD.map(str::to_string);
    for r in std::iter::once(&head).chain(rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn json_row(entry: &Entry, loaded: &Loaded, s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "sandbox_id": entry.id,
        "created_at": format_utc(entry.created_us, true),
        "status": s.status.to_string(),
        "running": s.status == Status::Running,
        "reason": s.reason,
        "clean": s.clean,
        "exit_code": s.exit_code,
        "signal": s.signal,
        "limit": s.limit,
        "duration_ms": s.duration_ms,
        "argv": s.argv,
        "events": loaded.events.len(),
    })
}

/// `stockade: warning: MSG` on stderr.
pub(crate) fn warn(msg: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "stockade: warning: {msg}");
}

pub(crate) fn limit_name(l: Limit) -> &'static str {
    match l {
        Limit::Memory => "memory",
        Limit::Pids => "pids",
        Limit::Timeout => "timeout",
        Limit::Output => "output",
        Limit::Disk => "disk",
    }
}

// ---------------------------------------------------------------------------------------------
// Time

/// Microseconds since the epoch (negative before it).
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// An event's `at` (`2026-11-27T16:20:00.123456Z`; any fraction; `Z` or `+00:00`) in
/// microseconds since the epoch.
pub(crate) fn parse_at(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if !seps.iter().all(|&(i, c)| b.get(i) == Some(&c)) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac_us = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let digits = format!("{:0<6}", &f[..n.min(6)]);
        frac_us = digits.parse().ok()?;
        rest = &f[n..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00") {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec;
    Some(secs * 1_000_000 + frac_us)
}

/// `2026-11-27T16:20:00Z`, or with `.123456` when `fraction`.
pub(crate) fn format_utc(us: i64, fraction: bool) -> String {
    let secs = us.div_euclid(1_000_000);
    let (days, tod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let base = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    );
    if fraction {
        format!("{base}.{:06}Z", us.rem_euclid(1_000_000))
    } else {
        format!("{base}Z")
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

// ---------------------------------------------------------------------------------------------
// Formatting shared by ls, trace and gc

/// `319ms`, `1.250s`, `2m03s`, `1h02m03s`.
pub(crate) fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{:03}s", ms / 1000, ms % 1000),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!(
            "{}h{:02}m{:02}s",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60
        ),
    }
}

/// `6 B`, `12.0 KiB`, `1.5 GiB`.
pub(crate) fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scaled = n;
    while scaled >= 1024 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    // One decimal, from integers: scaled is n / 1024^unit, at least 1024.
    let tenths = (u128::from(scaled) * 10 + 512) / 1024;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// `s` with every control character escaped (`\n`, `\t`, `\x1b`, `\u{9b}`): text from a log may
/// come from the sandbox, and must not move the cursor or recolour the terminal reading it.
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// An argv as a shell would take it back: plain words bare, others in single quotes, and words
/// with control characters as `$'...'` with escapes.
pub(crate) fn shell_join(argv: &[String]) -> String {
    let word = |a: &String| -> String {
        let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
        if !a.is_empty() && a.chars().all(plain) {
            a.clone()
        } else if a.chars().any(char::is_control) {
            let esc = printable(a).replace('\'', "\\'");
            format!("$'{esc}'")
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// At most `max` characters, the last one `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_garbage() {
        let us = parse_at("2026-11-27T16:20:00.123456Z").unwrap();
        assert_eq!(format_utc(us, true), "2026-11-27T16:20:00.123456Z");
        assert_eq!(format_utc(us, false), "2026-11-27T16:20:00Z");
        assert_eq!(parse_at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_at("1970-01-01T00:00:01.5+00:00"), Some(1_500_000));
        assert_eq!(parse_at("2000-02-29T00:00:00Z"), Some(951_782_400_000_000));
        assert_eq!(format_utc(-1, true), "1969-12-31T23:59:59.999999Z");
        for bad in [
            "",
            "2026-11-27 16:20:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-27T16:20:00",
            "2026-11-27T16:20:00.Z",
            "2026-11-27T16:20:00+01:00",
        ] {
            assert_eq!(parse_at(bad), None, "{bad:?}");
        }
        let now = micros(SystemTime::now());
        assert_eq!(parse_at(&format_utc(now, true)), Some(now));
    }

    #[test]
    fn formatters() {
        assert_eq!(fmt_ms(0), "0ms");
        assert_eq!(fmt_ms(999), "999ms");
        assert_eq!(fmt_ms(1250), "1.250s");
        assert_eq!(fmt_ms(123_456), "2m03s");
        assert_eq!(fmt_ms(3_723_000), "1h02m03s");
        assert_eq!(fmt_bytes(6), "6 B");
        assert_eq!(fmt_bytes(1024), "1.0 KiB");
        assert_eq!(fmt_bytes(12 << 20), "12.0 MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.5 GiB");
        assert_eq!(
            shell_join(&["python3".into(), "-c".into(), "print('hi')\nx".into()]),
            r"python3 -c $'print(\'hi\')\nx'"
        );
        assert_eq!(
            shell_join(&["a b".into(), "it's".into()]),
            r"'a b' 'it'\''s'"
        );
        assert_eq!(shell_join(&[String::new()]), "''");
        assert_eq!(printable("a\x1b[31mb\u{9b}c"), r"a\x1b[31mb\u{9b}c");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
    }
}
