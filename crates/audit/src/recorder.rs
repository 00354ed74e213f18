//! The durable sinks: one JSONL file per sandbox and one global JSONL file, both append-only.
//!
//! Durability contract: [`Recorder::emit`] appends the whole line with a single `write(2)` to a
//! file opened `O_APPEND`, so once it returns the event is in the kernel and survives a crash of
//! stockade (even SIGKILL); lines of concurrent sandboxes never interleave inside a line.
//! [`Recorder::sync`] `fdatasync`s the sandbox's own file, the authoritative record (the global
//! file is an index of the same lines, kept by write(2) alone: a crash of the *machine* may lose
//! its tail, never a sandbox's own log); the runtime calls it before it reports an
//! operation done to its caller (the exit status of `stockade run`), so an acknowledged event
//! also survives a crash of the machine. Readers skip a torn last line with a warning.
//!
//! Redaction happens here, once, before any sink sees the event: every string field is searched
//! for each secret value and the value is replaced by `[REDACTED]`.

use crate::event::{Event, EventKind, SCHEMA_VERSION, now_rfc3339};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where stockade keeps its state (audit logs now; more later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// `explicit` (the `--state-dir` flag), else `$STOCKADE_STATE_DIR`, else `/var/lib/stockade` for
    /// root, else `$XDG_STATE_HOME/stockade`, else `$HOME/.local/state/stockade`.
    pub fn resolve(explicit: Option<&Path>) -> StateDir {
        if let Some(p) = explicit {
            return StateDir(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("STOCKADE_STATE_DIR").filter(|v| !v.is_empty()) {
            return StateDir(PathBuf::from(p));
        }
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return StateDir(PathBuf::from("/var/lib/stockade"));
        }
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return StateDir(PathBuf::from(x).join("stockade"));
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        StateDir(home.join(".local/state/stockade"))
    }
    pub fn sandboxes(&self) -> PathBuf {
        self.0.join("sandboxes")
    }
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.sandboxes().join(id)
    }
    pub fn sandbox_log(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("events.jsonl")
    }
    pub fn global_log(&self) -> PathBuf {
        self.0.join("events.jsonl")
    }
}

/// Replaces secret values wherever they appear in an event's strings.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    values: Vec<String>,
}

pub const REDACTED: &str = "[REDACTED]";

impl Redactor {
    /// Values shorter than 4 bytes are ignored: redacting "1" everywhere would destroy the trail
    /// and hide nothing (documented in docs/audit.md).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= 4).collect();
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor { values }
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    fn scrub(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                for secret in &self.values {
                    if s.contains(secret.as_str()) {
                        *s = s.replace(secret.as_str(), REDACTED);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.scrub(x)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| self.scrub(x)),
            _ => {}
        }
    }
    /// The event with every secret value replaced.
    pub fn apply(&self, e: Event) -> Event {
        if self.values.is_empty() {
            return e;
        }
        let Ok(mut v) = serde_json::to_value(&e) else {
            return e;
        };
        self.scrub(&mut v);
        serde_json::from_value(v).unwrap_or(e)
    }
}

/// A callback that sees every event after redaction (tracing, OTLP).
pub type Observer = Box<dyn FnMut(&Event) + Send>;

/// Writes one sandbox's events.
pub struct Recorder {
    sandbox_id: String,
    seq: u64,
    own: File,
    global: File,
    redactor: Redactor,
    observers: Vec<Observer>,
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
}

impl Recorder {
    /// Creates the sandbox's log (its directory must not exist yet: ids are unique).
    pub fn open(state: &StateDir, sandbox_id: &str, redactor: Redactor) -> io::Result<Recorder> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state.sandboxes())?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(state.sandbox_dir(sandbox_id))?;
        Ok(Recorder {
            sandbox_id: sandbox_id.to_string(),
            seq: 0,
            own: open_append(&state.sandbox_log(sandbox_id))?,
            global: open_append(&state.global_log())?,
            redactor,
            observers: Vec::new(),
        })
    }

    /// Reopens an existing sandbox log to append after event `last_seq` (recovery of a sandbox
    /// whose supervisor died: its log is closed with the events it is missing).
    pub fn reopen(
        state: &StateDir,
        sandbox_id: &str,
        last_seq: u64,
        redactor: Redactor,
    ) -> io::Result<Recorder> {
        let own = OpenOptions::new()
            .append(true)
            .open(state.sandbox_log(sandbox_id))?;
        Ok(Recorder {
            sandbox_id: sandbox_id.to_string(),
            seq: last_seq,
            own,
            global: open_append(&state.global_log())?,
            redactor,
            observers: Vec::new(),
        })
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    pub fn add_observer(&mut self, o: Observer) {
        self.observers.push(o);
    }

    /// Records one event; when this returns Ok the line is in both files (see the module doc).
    pub fn emit(&mut self, exec_id: Option<&str>, kind: EventKind) -> io::Result<Event> {
        self.seq += 1;
        let event = self.redactor.apply(Event {
            schema_version: SCHEMA_VERSION,
            seq: self.seq,
            at: now_rfc3339(),
            sandbox_id: self.sandbox_id.clone(),
            exec_id: exec_id.map(str::to_string),
            kind,
        });
        let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
        line.push(b'\n');
        self.own.write_all(&line)?;
        self.global.write_all(&line)?;
        for o in &mut self.observers {
            o(&event);
        }
        Ok(event)
    }

    /// Flushes the sandbox's own file to stable storage (fdatasync). One sync per run: the
    /// global index is not synced (see the module doc), which halves the cost on the hot path.
    pub fn sync(&self) -> io::Result<()> {
        self.own.sync_data()
    }
}
