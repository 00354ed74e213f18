//! `stockade doctor` (placeholder until the full report lands).
use std::process::ExitCode;
pub fn run(_json: bool) -> ExitCode {
    ExitCode::SUCCESS
}
