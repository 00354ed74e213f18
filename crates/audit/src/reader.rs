//! Reading JSONL logs back: every complete line that parses is an event; a torn last line (no
//! trailing newline, as left by a crash mid-write) is skipped with a warning; an unparsable line
//! elsewhere is skipped with a warning naming its line number. Never a failure.

use crate::event::Event;
use std::io;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<Event>,
    pub warnings: Vec<String>,
}

pub fn parse_log(text: &str, origin: &str) -> Log {
    let mut log = Log::default();
    let complete = text.ends_with('\n') || text.is_empty();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if last && !complete {
            log.warnings.push(format!(
                "{origin}:{}: torn last line skipped ({} bytes)",
                i + 1,
                line.len()
            ));
            break;
        }
        let body = line.trim_end_matches('\n');
        if body.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(body) {
            Ok(e) => log.events.push(e),
            Err(e) => log
                .warnings
                .push(format!("{origin}:{}: unreadable line skipped: {e}", i + 1)),
        }
    }
    log
}

pub fn read_log(path: &Path) -> io::Result<Log> {
    let bytes = std::fs::read(path)?;
    Ok(parse_log(
        &String::from_utf8_lossy(&bytes),
        &path.display().to_string(),
    ))
}
