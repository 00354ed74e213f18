//! The sample policies in `policies/` at the repository root.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use stockade_policy::{ByteSize, NetworkMode, Policy, WorkspaceMode};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap()
}

/// `policies/default.toml` is exactly what `stockade policy show` prints for the defaults.
/// Regenerate with `STOCKADE_BLESS=1 cargo test -p stockade-policy --test samples`.
#[test]
fn default_toml_is_generated() {
    let want = Policy::default().to_toml();
    if std::env::var_os("STOCKADE_BLESS").is_some() {
        std::fs::write(dir().join("default.toml"), &want).unwrap();
    }
    assert_eq!(
        read("default.toml"),
        want,
        "policies/default.toml is stale; see this test's doc"
    );
    assert_eq!(
        Policy::from_toml(&want, "default.toml").unwrap(),
        Policy::default()
    );
}

#[test]
fn every_sample_parses_and_round_trips() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "allowlist.toml",
            "default.toml",
            "overlay.toml",
            "strict.toml"
        ]
    );
    for name in names {
        let p = Policy::from_toml(&read(&name), &name).unwrap_or_else(|e| panic!("{e}"));
        p.validate().unwrap();
        assert_eq!(Policy::from_toml(&p.to_toml(), &name).unwrap(), p, "{name}");
    }
}

#[test]
fn samples_say_what_they_claim() {
    let strict = Policy::from_toml(&read("strict.toml"), "strict.toml").unwrap();
    assert_eq!(strict.workspace.mode, WorkspaceMode::Ro);
    assert_eq!(strict.limits.memory, ByteSize::mib(256));
    assert!(strict.limits.memory < Policy::default().limits.memory);
    assert!(strict.limits.pids < Policy::default().limits.pids);
    assert!(strict.audit.enabled);
    assert_eq!(
        strict.audit.redact_env,
        ["API_TOKEN", "AWS_SECRET_ACCESS_KEY"]
    );
    assert_eq!(strict.audit.sensitive, [PathBuf::from(".env")]);
    let overlay = Policy::from_toml(&read("overlay.toml"), "overlay.toml").unwrap();
    assert_eq!(overlay.workspace.mode, WorkspaceMode::Overlay);
    assert_eq!(overlay.process.env.get("CI").map(String::as_str), Some("1"));
    let net = Policy::from_toml(&read("allowlist.toml"), "allowlist.toml")
        .unwrap()
        .network;
    assert_eq!(net.mode, NetworkMode::Allowlist);
    assert!(net.allow.iter().any(|a| a == "*.pypi.org"));
    assert!(net.allow.iter().any(|a| a == "api.test"));
    assert_eq!(net.deny, ["uploads.github.com"]);
    assert_eq!(net.allow_private, ["127.0.0.0/8"]);
    assert_eq!(net.hosts["api.test"], "127.0.0.1");
    assert!(!net.allow_open);
}
