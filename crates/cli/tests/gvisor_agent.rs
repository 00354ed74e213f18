//! The agent's protection at the gvisor level, through `stockade run`. gVisor (runsc 2022)
//! gives a nested PID 1 no protection from signals of its own namespace, so the agent cannot be
//! made unkillable by the command (same uid) there; what holds instead:
//! - the guest shim (the container's init, root) keeps only CAP_KILL once the agent runs, and
//!   the agent holds no capability at all;
//! - when the command kills the agent, the shim's kill(-1) ends every process of the sandbox at
//!   once: the command does not run on without its agent, and the run fails closed (exit 125,
//!   "the sandbox ended without reporting the command's status").
//!
//! Runs as root (runsc) with the static guest build (scripts/setup-microvm).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stockade");

fn run_gvisor(ws: &std::path::Path, script: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["run", "--level", "gvisor", "--workspace"])
        .arg(ws)
        .args(["--", "python3", "-c", script])
        .output()
        .unwrap()
}

fn cap_line(status: &str, key: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn the_init_keeps_only_cap_kill_and_the_agent_none() {
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = run_gvisor(
        ws.path(),
        "import sys\nfor p in (1, 2):\n    sys.stdout.write(open(f'/proc/{p}/cmdline').read().replace('\\0', ' ') + '\\n' + open(f'/proc/{p}/status').read() + '----\\n')\n",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: Vec<&str> = text.split("----\n").collect();
    assert!(parts[0].contains("__guest gvisor"), "{text}");
    assert!(parts[1].contains("__direct"), "{text}");
    // CAP_KILL is bit 5.
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            cap_line(parts[0], key),
            "0000000000000020",
            "init {key}\n{text}"
        );
        assert_eq!(
            cap_line(parts[1], key),
            "0000000000000000",
            "agent {key}\n{text}"
        );
    }
}

#[test]
fn killing_the_agent_ends_the_whole_sandbox_and_fails_closed() {
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    let script = "import os, signal, time\n\
        f = open('log', 'a')\n\
        os.kill(2, signal.SIGKILL)\n\
        f.write('killed\\n'); f.flush()\n\
        for i in range(100):\n    time.sleep(0.1)\n    f.write('alive\\n'); f.flush()\n\
        f.write('finished\\n'); f.flush()\n";
    // Control: the same probe without the kill runs to its end.
    let control = run_gvisor(
        ws.path(),
        &script.replace("os.kill(2, signal.SIGKILL)", "pass"),
    );
    assert!(control.status.success(), "{control:?}");
    let log = std::fs::read_to_string(ws.path().join("log")).unwrap();
    assert!(log.ends_with("finished\n"), "{log}");
    std::fs::remove_file(ws.path().join("log")).unwrap();

    let out = run_gvisor(ws.path(), script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("the sandbox ended without reporting the command's status"),
        "{err}"
    );
    let log = std::fs::read_to_string(ws.path().join("log")).unwrap();
    assert!(
        log.starts_with("killed\n"),
        "the kill reached the agent: {log}"
    );
    assert!(
        !log.contains("finished"),
        "the command ran on to its end without its agent: {log}"
    );
}
