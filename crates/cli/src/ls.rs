//! `stockade ls` (being written).
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct LsArgs {}

pub fn run(_state: &stockade_audit::StateDir, _args: LsArgs) -> ExitCode {
    ExitCode::from(125)
}
