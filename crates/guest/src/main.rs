//! `stockade-guest`: the only Stockade binary inside the stronger levels, built static.
//!
//! - as a microVM's `/init` (PID 1, no arguments): boots the guest (`guest_boot`), then runs the
//!   guest half of the tunnel, which starts `__launch` (the container-level jail, inside the VM);
//! - `__guest gvisor`: runsc's container init; the tunnel on fds 0/1, then `__direct`;
//! - `__launch` and `__direct`: the launcher and the agent, as `stockade __launch` on the host.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__launch") => {
            let allow_weaker = args
                .iter()
                .any(|a| a == stockade_agent::launcher::ALLOW_WEAKER_ARG);
            ExitCode::from(stockade_agent::launcher::main(allow_weaker) as u8)
        }
        _ => {
            eprintln!("stockade-guest: runs only inside a Stockade sandbox");
            ExitCode::from(125)
        }
    }
}
