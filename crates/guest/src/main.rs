//! `stockade-guest`: the only Stockade binary inside the stronger levels, built static.
//!
//! - as a microVM's `/init` (PID 1, no arguments): boots the guest (`guest_boot`), then runs the
//!   guest half of the tunnel on the control port, which starts `__launch` (the container-level
//!   jail, inside the VM), and powers the VM off at the end;
//! - `__guest gvisor [--allow-weaker-isolation]`: runsc's container init; the tunnel on fds 0/1,
//!   then `__direct`;
//! - `__launch` and `__direct`: the launcher and the agent, as `stockade __launch` on the host.

mod shim;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use stockade_agent::launcher::ALLOW_WEAKER_ARG;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let allow_weaker = args.iter().any(|a| a == ALLOW_WEAKER_ARG);
    if std::process::id() == 1 && args.len() == 1 {
        microvm_init();
    }
    match args.get(1).map(String::as_str) {
        Some("__launch") => ExitCode::from(stockade_agent::launcher::main(allow_weaker) as u8),
        Some("__direct") => ExitCode::from(stockade_agent::direct::main(allow_weaker) as u8),
        Some("__guest") if args.get(2).map(String::as_str) == Some("gvisor") => {
            // SAFETY: runsc gives the container init the transport as fds 0 and 1; nothing else
            // in this fresh process owns them.
            let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1)) };
            ExitCode::from(shim::run(rx, tx, "__direct", allow_weaker) as u8)
        }
        _ => {
            eprintln!("stockade-guest: runs only inside a Stockade sandbox");
            ExitCode::from(125)
        }
    }
}

/// PID 1 of a microVM: never returns; the VM powers off at the end, whatever happens.
fn microvm_init() -> ! {
    let port = match stockade_agent::guest_boot::boot() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("stockade-guest: boot: {e}");
            stockade_agent::guest_boot::power_off()
        }
    };
    let allow_weaker = std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "stockade.weaker=1"));
    let port = OwnedFd::from(port);
    match port.try_clone() {
        Ok(tx) => {
            let code = shim::run(port, tx, "__launch", allow_weaker);
            if code != 0 {
                eprintln!("stockade-guest: the launcher ended with {code}");
            }
        }
        Err(e) => eprintln!("stockade-guest: control port: {e}"),
    }
    stockade_agent::guest_boot::power_off()
}
