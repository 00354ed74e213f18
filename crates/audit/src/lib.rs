//! Stockade's boundary audit trail: the event schema, the durable JSONL sinks and redaction.
//!
//! Guarantees: every event carries `schema_version`, a per-sandbox monotonic `seq`, a UTC `at`
//! and its `sandbox_id`; an event [`Recorder::emit`] returned Ok for is in the kernel (survives a
//! crash of stockade) and, after [`Recorder::sync`], on stable storage; no secret value handed to
//! the [`Redactor`] reaches any sink. Not guaranteed: events the kernel never reports (see
//! docs/audit.md, "What is observed"). Tested by unit tests here and end to end through the binary.

pub mod event;
pub mod otlp;
pub mod reader;
pub mod recorder;

pub use event::{
    CgroupEnforced, Change, Decision, DestroyReason, Enforcement, Event, EventKind, Limit,
    SCHEMA_VERSION, ViolationKind,
};
pub use reader::{Log, parse_log, read_log};
pub use recorder::{Observer, REDACTED, Recorder, Redactor, StateDir};

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> EventKind {
        EventKind::ExecStarted {
            argv: vec!["echo".into(), "tok-SECRET-123".into()],
            cwd: "/w".into(),
            env_names: vec!["K".into()],
        }
    }

    #[test]
    fn emit_writes_both_logs_with_sequence_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir(dir.path().to_path_buf());
        let mut r =
            Recorder::open(&state, "abc", Redactor::new(["SECRET-123".to_string()])).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        r.add_observer(Box::new(move |e: &Event| s2.lock().unwrap().push(e.seq)));
        r.emit(None, kind()).unwrap();
        r.emit(
            Some("e1"),
            EventKind::FileRead {
                path: "SECRET-123.txt".into(),
            },
        )
        .unwrap();
        r.sync().unwrap();
        let own = std::fs::read_to_string(state.sandbox_log("abc")).unwrap();
        let global = std::fs::read_to_string(state.global_log()).unwrap();
        assert_eq!(own, global);
        assert!(
            !own.contains("SECRET-123"),
            "secret value reached a sink: {own}"
        );
        assert!(own.contains("tok-[REDACTED]"));
        let log = parse_log(&own, "own");
        assert!(log.warnings.is_empty());
        assert_eq!(
            log.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(log.events[1].exec_id.as_deref(), Some("e1"));
        assert_eq!(log.events[0].schema_version, SCHEMA_VERSION);
        assert!(log.events[0].at.ends_with('Z'));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
        // A second recorder for the same id is refused: ids are unique, logs are never shared.
        assert!(Recorder::open(&state, "abc", Redactor::default()).is_err());
    }

    #[test]
    fn torn_and_corrupt_lines_are_skipped_with_warnings() {
        let good = serde_json::to_string(&Event {
            schema_version: 1,
            seq: 1,
            at: "2026-01-01T00:00:00.000000Z".into(),
            sandbox_id: "x".into(),
            exec_id: None,
            kind: kind(),
        })
        .unwrap();
        let text = format!("{good}\nnot json\n{good}\n{{\"schema_ver");
        let log = parse_log(&text, "f");
        assert_eq!(log.events.len(), 2);
        assert_eq!(log.warnings.len(), 2, "{:?}", log.warnings);
        assert!(log.warnings[0].starts_with("f:2: unreadable"));
        assert!(log.warnings[1].starts_with("f:4: torn last line"));
        assert!(parse_log("", "f").events.is_empty());
    }

    #[test]
    fn short_values_are_not_redacted_and_longest_wins() {
        let r = Redactor::new(["ab".to_string(), "abcd".to_string(), "abcdef".to_string()]);
        let e = r.apply(Event {
            schema_version: 1,
            seq: 1,
            at: String::new(),
            sandbox_id: "s".into(),
            exec_id: None,
            kind: EventKind::FileRead {
                path: "xabcdefx ab abcd".into(),
            },
        });
        assert_eq!(
            e.kind,
            EventKind::FileRead {
                path: "x[REDACTED]x ab [REDACTED]".into()
            }
        );
    }
}
