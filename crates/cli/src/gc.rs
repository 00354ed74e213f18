//! `stockade gc` (being written).
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct GcArgs {}

pub fn run(_state: &stockade_audit::StateDir, _args: GcArgs) -> ExitCode {
    ExitCode::from(125)
}
