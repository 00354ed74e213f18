//! Defaults, `to_toml` round trip, `describe_defaults`, the schema, and the digest.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use stockade_policy::*;

/// A policy that differs from the default in every key, with awkward strings.
fn everything() -> Policy {
    let mut env = BTreeMap::new();
    env.insert("QUOTE".to_string(), "say \"hi\"\\n\ttab\u{7f}é".to_string());
    env.insert("with space".to_string(), String::new());
    Policy {
        version: 1,
        level: Some(Level::Microvm),
        trust: Some(Trust::Untrusted),
        workspace: Workspace {
            path: Some(PathBuf::from("projects/a \"b\"")),
            mode: WorkspaceMode::Overlay,
            protect_git: false,
            allow_system_path: true,
        },
        filesystem: Filesystem {
            rootfs: Some("/srv/rootfs/deb \"x\"".into()),
            mounts: vec![
                Mount {
                    host: "/opt/data".into(),
                    path: Some("/data".into()),
                    mode: MountMode::Ro,
                },
                Mount {
                    host: "/srv/cache".into(),
                    path: None,
                    mode: MountMode::Rw,
                },
            ],
            etc_extra: vec!["gitconfig".into(), "ssl/certs".into()],
        },
        process: Process {
            uid: 0,
            gid: 65534,
            hostname: "box-1.example".into(),
            env,
            env_pass: vec!["LC_ALL".into(), "SSH_AUTH_SOCK".into()],
        },
        limits: Limits {
            memory: ByteSize(123_456_789),
            swap: ByteSize::mib(512),
            cpus: 0.333_333_333_333_333_3,
            pids: 9,
            timeout: Duration::from_millis(5_400_250),
            disk: ByteSize::kib(1536),
            max_output: ByteSize(1025),
            open_files: 20_000,
        },
        security: Security {
            seccomp: false,
            landlock: false,
            allow_weaker_isolation: true,
            allow_emulated: true,
            allow_gvisor_for_untrusted: true,
        },
        network: Network {
            mode: NetworkMode::Allowlist,
            allow: vec![
                "api.github.com".into(),
                "*.pypi.org".into(),
                "example.com:8443".into(),
            ],
            deny: vec!["uploads.github.com".into(), "*.com".into()],
            allow_private: vec!["127.0.0.0/8".into(), "fd00::/8".into()],
            allow_open: true,
            hosts: BTreeMap::from([
                ("api.test".to_string(), "127.0.0.1".to_string()),
                ("v6.test".to_string(), "::1".to_string()),
            ]),
        },
        audit: Audit {
            enabled: false,
            redact_env: vec!["API_TOKEN".into(), "with space \"q\"".into()],
            sensitive: vec![".env".into(), "/data/keys \"x\"".into()],
        },
        secrets: BTreeMap::from([
            (
                "OPENAI_API_KEY".to_string(),
                Secret {
                    from_env: Some("OPENAI_KEY_ON_HOST".into()),
                    from_file: None,
                    hosts: vec!["files.pypi.org".into()],
                    places: vec![SecretPlace::Header, SecretPlace::Body],
                },
            ),
            (
                "FILE_KEY".to_string(),
                Secret {
                    from_env: None,
                    from_file: Some("/run/keys/a \"b\"".into()),
                    hosts: vec!["upload.pypi.org".into(), "files.pypi.org".into()],
                    places: vec![SecretPlace::Query],
                },
            ),
        ]),
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let d = Policy::default();
    assert_eq!(d.version, 1);
    assert_eq!((d.level, d.trust), (None, None));
    assert_eq!(d.stated_level(), Level::Container);
    assert!(!d.security.allow_emulated && !d.security.allow_gvisor_for_untrusted);
    assert_eq!(d.workspace.path, None);
    assert_eq!(d.workspace.mode, WorkspaceMode::Rw);
    assert!(d.workspace.protect_git && !d.workspace.allow_system_path);
    assert!(d.filesystem.mounts.is_empty() && d.filesystem.etc_extra.is_empty());
    assert_eq!(
        (d.process.uid, d.process.gid, d.process.hostname.as_str()),
        (1000, 1000, "stockade")
    );
    assert!(d.process.env.is_empty() && d.process.env_pass.is_empty());
    assert_eq!(d.limits.memory, ByteSize::gib(1));
    assert_eq!(d.limits.swap, ByteSize(0));
    assert_eq!(d.limits.cpus, 1.0);
    assert_eq!(d.limits.pids, 256);
    assert_eq!(d.limits.timeout, Duration::from_secs(600));
    assert_eq!(d.limits.disk, ByteSize::gib(1));
    assert_eq!(d.limits.max_output, ByteSize::mib(16));
    assert_eq!(d.limits.open_files, 1024);
    assert!(d.security.seccomp && d.security.landlock && !d.security.allow_weaker_isolation);
    assert_eq!(d.network.mode, NetworkMode::None);
    assert!(d.network.allow.is_empty() && d.network.deny.is_empty());
    assert!(d.network.allow_private.is_empty() && d.network.hosts.is_empty());
    assert!(!d.network.allow_open);
    assert!(d.audit.enabled && d.audit.redact_env.is_empty() && d.audit.sensitive.is_empty());
}

#[test]
fn to_toml_round_trips() {
    for p in [Policy::default(), everything()] {
        let text = p.to_toml();
        let back = Policy::from_toml(&text, "shown.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, p, "{text}");
        assert_eq!(back.digest(), p.digest());
    }
}

#[test]
fn to_toml_comments_every_key_from_describe_defaults() {
    let text = everything().to_toml();
    let defaults = describe_defaults();
    assert_eq!(defaults.len(), 37);
    for (key, default, meaning) in &defaults {
        let name = key.rsplit('.').next().unwrap();
        let comment = format!("# {meaning}. Default: {default}.\n");
        let at = text
            .find(&comment)
            .unwrap_or_else(|| panic!("no comment for {key}"));
        let next = &text[at + comment.len()..];
        // A non-empty [network.hosts] is written as a sub-table under its comment.
        let want = if *key == "network.hosts" {
            "[network.hosts]\n".to_string()
        } else {
            format!("{name} = ")
        };
        assert!(next.starts_with(&want), "{key}: {next}");
    }
    let d: BTreeMap<_, _> = defaults.iter().map(|(k, d, _)| (*k, d.as_str())).collect();
    assert_eq!(d["limits.memory"], "\"1GiB\"");
    assert_eq!(d["limits.timeout"], "\"10m\"");
    assert_eq!(d["workspace.path"], "the current directory");
    assert_eq!(d["security.seccomp"], "true");
    assert_eq!(d["audit.enabled"], "true");
    assert_eq!(d["audit.redact_env"], "[]");
    assert_eq!(d["audit.sensitive"], "[]");
    assert_eq!(d["network.mode"], "\"none\"");
    assert_eq!(d["network.allow"], "[]");
    assert_eq!(d["network.allow_open"], "false");
    assert_eq!(d["network.hosts"], "{}");
    assert_eq!(
        d["filesystem.rootfs"],
        "none (the host's system directories)"
    );
}

#[test]
fn network_section_is_written_with_hosts_as_a_sub_table() {
    let p = everything();
    let text = p.to_toml();
    let at = text.find("\n[network]\n").expect("a [network] section");
    let end = text.find("\n[audit]\n").expect("an [audit] section");
    let net = &text[at..end];
    for line in [
        "\nmode = \"allowlist\"\n",
        "\nallow = [\"api.github.com\", \"*.pypi.org\", \"example.com:8443\"]\n",
        "\ndeny = [\"uploads.github.com\", \"*.com\"]\n",
        "\nallow_private = [\"127.0.0.0/8\", \"fd00::/8\"]\n",
        "\nallow_open = true\n",
        "\n[network.hosts]\n\"api.test\" = \"127.0.0.1\"\n\"v6.test\" = \"::1\"\n",
    ] {
        assert!(net.contains(line), "{line:?} not in\n{net}");
    }
    let back = Policy::from_toml(&text, "shown.toml").unwrap();
    assert_eq!(back.network, p.network);
    // Empty hosts: an inline `hosts = {}` keeps [network] one table.
    let d = Policy::default().to_toml();
    assert!(
        d.contains("\nhosts = {}\n") && !d.contains("\n[network.hosts]\n"),
        "{d}"
    );
}

#[test]
fn audit_section_is_shown_last_and_round_trips() {
    let p = everything();
    let text = p.to_toml();
    let at = text.find("\n[audit]\n").expect("an [audit] section");
    assert!(text[..at].contains("\n[network]\n"), "{text}");
    let tail = &text[at..];
    assert!(tail.contains("\nenabled = false\n"), "{tail}");
    assert!(
        tail.contains("\nredact_env = [\"API_TOKEN\", \"with space \\\"q\\\"\"]\n"),
        "{tail}"
    );
    assert!(
        tail.contains("\nsensitive = [\".env\", \"/data/keys \\\"x\\\"\"]\n"),
        "{tail}"
    );
    let back = Policy::from_toml(&text, "shown.toml").unwrap();
    assert_eq!(back.audit, p.audit);
}

#[test]
fn default_workspace_path_is_a_comment() {
    let text = Policy::default().to_toml();
    assert!(text.contains("\n# path = \".\"\n"));
    assert!(!text.contains("\npath ="));
}

#[test]
fn rootfs_is_a_comment_by_default_and_round_trips_when_set() {
    let text = Policy::default().to_toml();
    assert!(
        text.contains("\n# rootfs = \"/srv/rootfs/debian\"\n"),
        "{text}"
    );
    assert!(!text.contains("\nrootfs ="));
    let mut p = Policy::default();
    p.filesystem.rootfs = Some("/srv/rootfs/debian".into());
    let text = p.to_toml();
    let at = text.find("\n[filesystem]\n").unwrap();
    assert!(
        text[at..].contains("\nrootfs = \"/srv/rootfs/debian\"\n"),
        "{text}"
    );
    assert_eq!(Policy::from_toml(&text, "shown.toml").unwrap(), p);
}

/// A policy without a root filesystem serializes as before the key existed (its digest, which
/// every audit record carries, does not change); one with it differs.
#[test]
fn rootfs_unset_is_left_out_of_the_digest() {
    let json = serde_json::to_string(&Policy::default()).unwrap();
    assert!(!json.contains("rootfs"), "{json}");
    let mut p = Policy::default();
    p.filesystem.rootfs = Some("/srv/rootfs/debian".into());
    assert_ne!(p.digest(), Policy::default().digest());
}

/// The key lists used for unknown-key messages match the serde field names, so the walker and
/// the derives cannot drift apart.
#[test]
fn schema_matches_serde_fields() {
    let json = serde_json::to_value(everything()).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    for (table, valid) in SCHEMA {
        let v = match *table {
            "" => &json,
            "filesystem.mounts[]" => &json["filesystem"]["mounts"][0],
            "secrets.*[]" => &json["secrets"]["FILE_KEY"],
            t => &json[t],
        };
        let mut want: Vec<String> = valid.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(keys(v), want, "table {table:?}");
    }
    let described: Vec<&str> = describe_defaults().iter().map(|(k, _, _)| *k).collect();
    let mut from_schema = Vec::new();
    // Array entries and the per-secret tables ([secrets.NAME]) are documented in their own
    // comment block, not one line per key.
    for (table, valid) in SCHEMA.iter().filter(|(t, _)| !t.ends_with("[]")) {
        for k in *valid {
            let full = if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            };
            if !SCHEMA.iter().any(|(t, _)| *t == full) {
                from_schema.push(full);
            }
        }
    }
    from_schema.retain(|k| k != "secrets");
    from_schema.sort();
    let mut described_sorted: Vec<String> = described.iter().map(|s| s.to_string()).collect();
    described_sorted.sort();
    assert_eq!(described_sorted, from_schema);
}

#[test]
fn json_form_is_accepted_too() {
    let p = everything();
    let json = serde_json::to_string(&p).unwrap();
    let back: Policy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let partial: Policy =
        serde_json::from_str(r#"{"limits":{"memory":"2G","timeout":90}}"#).unwrap();
    assert_eq!(partial.limits.memory, ByteSize::gib(2));
    assert_eq!(partial.limits.timeout, Duration::from_secs(90));
    assert!(serde_json::from_str::<Policy>(r#"{"limits":{"memroy":"2G"}}"#).is_err());
}

#[test]
fn digest_is_stable_and_sensitive() {
    let d = Policy::default().digest();
    assert_eq!(d.len(), 64);
    assert!(
        d.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    // Pinned: changing it changes every audit record's policy digest; do it on purpose.
    assert_eq!(
        d,
        "90cf0ae2cebd9eee68ac4951e3e6780a0c058cecdb3648cce168db23e3a67c2a"
    );
    let mut p = Policy::default();
    p.limits.pids += 1;
    assert_ne!(p.digest(), d);
    // Order of env insertion does not matter.
    let mut a = Policy::default();
    a.process.env.insert("A".into(), "1".into());
    a.process.env.insert("B".into(), "2".into());
    let mut b = Policy::default();
    b.process.env.insert("B".into(), "2".into());
    b.process.env.insert("A".into(), "1".into());
    assert_eq!(a.digest(), b.digest());
}
