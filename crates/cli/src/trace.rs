//! `stockade trace` (being written).
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct TraceArgs {}

pub fn run(_state: &stockade_audit::StateDir, _args: TraceArgs) -> ExitCode {
    ExitCode::from(125)
}
