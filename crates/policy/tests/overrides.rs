//! Command-line overrides: flags win, errors name the flag, a failed apply changes nothing.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use stockade_policy::*;

fn file() -> Policy {
    Policy::from_toml(
        "[workspace]\npath = \"proj\"\nmode = \"ro\"\n\
         [filesystem]\nmounts = [{ host = \"/opt/a\", path = \"/data\" }, { host = \"/opt/b\" }]\n\
         [process]\nenv = { A = \"file\", B = \"file\" }\nenv_pass = [\"LC_ALL\"]\n\
         [limits]\nmemory = \"512MiB\"\npids = 100\n\
         [audit]\nredact_env = [\"TOKEN\"]\nsensitive = [\".env\"]\n",
        "policy.toml",
    )
    .unwrap()
}

#[test]
fn empty_overrides_change_nothing() {
    let mut p = file();
    p.apply(&Overrides::default()).unwrap();
    assert_eq!(p, file());
}

#[test]
fn flags_win_over_the_file() {
    let mut p = file();
    let o = Overrides {
        level: Some(Level::Gvisor),
        trust: Some(Trust::Internal),
        allow_emulated: Some(true),
        allow_gvisor_for_untrusted: Some(true),
        workspace: Some(PathBuf::from("other")),
        workspace_mode: Some(WorkspaceMode::Overlay),
        allow_system_path: Some(true),
        protect_git: Some(false),
        env: vec![("A".into(), "flag".into()), ("C".into(), "flag".into())],
        env_pass: vec!["LC_ALL".into(), "TERM_PROGRAM".into()],
        memory: Some(ByteSize::gib(2)),
        swap: Some(ByteSize::mib(64)),
        cpus: Some(3.5),
        pids: Some(500),
        timeout: Some(Duration::from_secs(90)),
        disk: Some(ByteSize::gib(8)),
        max_output: Some(ByteSize::mib(1)),
        uid: Some(0),
        gid: Some(0),
        rootfs: Some("/srv/rootfs/flag".into()),
        mounts: vec![Mount {
            host: "/opt/c".into(),
            path: Some("/data".into()),
            mode: MountMode::Rw,
        }],
        allow_weaker_isolation: Some(true),
        seccomp: Some(false),
        landlock: Some(false),
        audit: Some(false),
        redact_env: vec!["TOKEN".into(), "AWS_SECRET_ACCESS_KEY".into()],
        sensitive: vec!["secrets/key.pem".into()],
        net: Some(NetworkMode::Allowlist),
        allow_net: vec!["api.github.com".into(), "example.com:8443".into()],
        allow_open_network: Some(true),
        secrets: vec![("GH_TOKEN".into(), SecretSource::Env("GITHUB_TOKEN".into()))],
        secret_hosts: vec![("GH_TOKEN".into(), "api.github.com".into())],
    };
    p.apply(&o).unwrap();
    assert_eq!(
        p.secrets["GH_TOKEN"].from_env.as_deref(),
        Some("GITHUB_TOKEN")
    );
    assert_eq!(p.secrets["GH_TOKEN"].hosts, ["api.github.com"]);
    assert_eq!(p.secrets["GH_TOKEN"].places, [SecretPlace::Header]);
    assert_eq!(p.workspace.path, Some(PathBuf::from("other")));
    assert_eq!(p.workspace.mode, WorkspaceMode::Overlay);
    assert!(p.workspace.allow_system_path && !p.workspace.protect_git);
    assert_eq!(p.process.env["A"], "flag");
    assert_eq!(p.process.env["B"], "file");
    assert_eq!(p.process.env["C"], "flag");
    assert_eq!(p.process.env_pass, ["LC_ALL", "TERM_PROGRAM"]);
    assert_eq!(
        (p.level, p.trust),
        (Some(Level::Gvisor), Some(Trust::Internal))
    );
    assert!(p.security.allow_emulated && p.security.allow_gvisor_for_untrusted);
    assert_eq!(p.limits.memory, ByteSize::gib(2));
    assert_eq!(p.limits.swap, ByteSize::mib(64));
    assert_eq!(p.limits.cpus, 3.5);
    assert_eq!(p.limits.pids, 500);
    assert_eq!(p.limits.timeout, Duration::from_secs(90));
    assert_eq!(p.limits.disk, ByteSize::gib(8));
    assert_eq!(p.limits.max_output, ByteSize::mib(1));
    assert_eq!((p.process.uid, p.process.gid), (0, 0));
    assert_eq!(p.filesystem.rootfs, Some("/srv/rootfs/flag".into()));
    // The flag mount replaced the file mount with the same target; the other file mount stays.
    let targets: Vec<(&str, MountMode)> = p
        .filesystem
        .mounts
        .iter()
        .map(|m| (m.host.to_str().unwrap(), m.mode))
        .collect();
    assert_eq!(
        targets,
        [("/opt/b", MountMode::Ro), ("/opt/c", MountMode::Rw)]
    );
    assert!(!p.security.seccomp && !p.security.landlock && p.security.allow_weaker_isolation);
    assert!(!p.audit.enabled);
    // Appended after the file's entries; a name already listed is not repeated.
    assert_eq!(p.audit.redact_env, ["TOKEN", "AWS_SECRET_ACCESS_KEY"]);
    assert_eq!(
        p.audit.sensitive,
        [PathBuf::from(".env"), PathBuf::from("secrets/key.pem")]
    );
    assert_eq!(p.network.mode, NetworkMode::Allowlist);
    assert_eq!(p.network.allow, ["api.github.com", "example.com:8443"]);
    assert!(p.network.allow_open);
    // Untouched keys keep the file's values.
    assert_eq!(p.process.hostname, "stockade");
}

#[test]
fn flag_errors_name_the_flag_and_leave_the_policy_alone() {
    let mut p = file();
    let o = Overrides {
        memory: Some(ByteSize::mib(1)),
        pids: Some(2),
        ..Default::default()
    };
    let e = p.apply(&o).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--memory: 1MiB is below the working minimum of 32MiB; raise it\n\
         --pids: 2 processes is below the minimum of 8; raise it"
    );
    assert_eq!(e.0[0].key.as_deref(), Some("limits.memory"));
    assert_eq!(p, file(), "a failed apply must not change the policy");
}

#[test]
fn turning_off_seccomp_by_flag_needs_the_opt_in() {
    let mut p = Policy::default();
    let e = p
        .apply(&Overrides {
            seccomp: Some(false),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].origin, "--seccomp");
    assert!(e.0[0].message.contains("--allow-weaker-isolation"));
    p.apply(&Overrides {
        seccomp: Some(false),
        allow_weaker_isolation: Some(true),
        ..Default::default()
    })
    .unwrap();
    assert!(!p.security.seccomp);
}

#[test]
fn env_pass_flag_contradicting_file_env() {
    let mut p = file();
    let e = p
        .apply(&Overrides {
            env_pass: vec!["A".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].origin, "--env-pass");
    assert!(e.0[0].message.contains("A is both set"));
    let e = p
        .apply(&Overrides {
            env: vec![("X=Y".into(), "1".into())],
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--env: environment variable name contains '='"
    );
}

#[test]
fn bad_flag_mount_and_workspace() {
    let mut p = file();
    let o = Overrides {
        mounts: vec![Mount {
            host: "rel".into(),
            path: Some("/proc/x".into()),
            mode: MountMode::Ro,
        }],
        workspace: Some("/etc".into()),
        ..Default::default()
    };
    let e = p.apply(&o).unwrap_err();
    let origins: Vec<&str> = e.0.iter().map(|e| e.origin.as_str()).collect();
    assert_eq!(origins, ["--workspace", "--mount", "--mount"], "{e}");
    // allowing system paths on the command line fixes the workspace error
    let o2 = Overrides {
        workspace: Some("/etc".into()),
        allow_system_path: Some(true),
        ..Default::default()
    };
    p.apply(&o2).unwrap();
}

#[test]
fn rootfs_flag_wins_over_the_file_and_errors_name_it() {
    let mut p =
        Policy::from_toml("[filesystem]\nrootfs = \"/srv/rootfs/a\"\n", "policy.toml").unwrap();
    let before = p.clone();
    let e = p
        .apply(&Overrides {
            rootfs: Some("rootfs".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--rootfs: root filesystem path \"rootfs\" must be absolute (start with /)"
    );
    assert_eq!(p, before, "a refused flag changes nothing");
    p.apply(&Overrides {
        rootfs: Some("/srv/rootfs/b".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.filesystem.rootfs, Some("/srv/rootfs/b".into()));
}

#[test]
fn problems_not_from_a_flag_are_reported_against_the_policy() {
    let mut p = Policy::default();
    p.limits.open_files = 1; // set in code, not by a flag
    let e = p
        .apply(&Overrides {
            pids: Some(64),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "policy: limits.open_files: open_files = 1 is out of range; use 16 to 20000"
    );
}

#[test]
fn flags_table_covers_every_override() {
    let keys: Vec<&str> = FLAGS.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys.len(), 30);
    let described: Vec<&str> = describe_defaults().iter().map(|(k, _, _)| *k).collect();
    for k in keys {
        assert!(described.contains(&k), "{k}");
    }
}

#[test]
fn audit_flags_override_the_file_and_errors_name_them() {
    let mut p = Policy::from_toml("[audit]\nenabled = false\n", "policy.toml").unwrap();
    // No flag: the file's value stands. A flag wins over the file in either direction.
    p.apply(&Overrides::default()).unwrap();
    assert!(!p.audit.enabled);
    p.apply(&Overrides {
        audit: Some(true),
        ..Default::default()
    })
    .unwrap();
    assert!(p.audit.enabled);
    let mut q = file();
    q.apply(&Overrides {
        audit: Some(false),
        ..Default::default()
    })
    .unwrap();
    assert!(!q.audit.enabled);

    let mut p = file();
    let e = p
        .apply(&Overrides {
            redact_env: vec!["A=B".into()],
            sensitive: vec!["/proc/self/environ".into(), "../up".into()],
            ..Default::default()
        })
        .unwrap_err();
    let got: Vec<(&str, &str)> =
        e.0.iter()
            .map(|e| (e.origin.as_str(), e.key.as_deref().unwrap()))
            .collect();
    assert_eq!(
        got,
        [
            ("--redact-env", "audit.redact_env[1]"),
            ("--sensitive", "audit.sensitive[1]"),
            ("--sensitive", "audit.sensitive[2]"),
        ],
        "{e}"
    );
    assert!(e.0[1].message.contains("under /proc"), "{e}");
    assert_eq!(p, file(), "a failed apply must not change the policy");
}

fn net_file() -> Policy {
    Policy::from_toml(
        "[network]\nmode = \"allowlist\"\nallow = [\"api.github.com\"]\n",
        "policy.toml",
    )
    .unwrap()
}

#[test]
fn allow_net_appends_after_the_file_and_skips_duplicates() {
    let mut p = net_file();
    p.apply(&Overrides {
        allow_net: vec![
            "*.pypi.org".into(),
            "api.github.com".into(),
            "example.com:8443".into(),
        ],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        p.network.allow,
        ["api.github.com", "*.pypi.org", "example.com:8443"]
    );
    assert_eq!(p.network.mode, NetworkMode::Allowlist, "mode from the file");
}

#[test]
fn net_flag_wins_over_the_file_in_both_directions() {
    let mut p = net_file();
    // --net none with the file's allow list: the contradiction is the flag's doing.
    let e = p
        .apply(&Overrides {
            net: Some(NetworkMode::None),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--net: network.mode is \"none\" (loopback only), so network.allow has no effect; set \
         network.mode = \"allowlist\" (--net allowlist) or remove it"
    );
    assert_eq!(p, net_file(), "a failed apply must not change the policy");

    let mut q = Policy::default();
    q.apply(&Overrides {
        net: Some(NetworkMode::Allowlist),
        allow_net: vec!["api.github.com".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(q.network.mode, NetworkMode::Allowlist);
    assert_eq!(q.network.allow, ["api.github.com"]);
}

#[test]
fn network_flag_errors_name_the_flag() {
    // --net allowlist with nothing to allow.
    let e = Policy::default()
        .apply(&Overrides {
            net: Some(NetworkMode::Allowlist),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].origin, "--net");
    assert_eq!(e.0[0].key.as_deref(), Some("network.allow"));
    assert!(e.0[0].message.contains("(--allow-net)"), "{e}");

    // --allow-net without a mode that uses it.
    let e = Policy::default()
        .apply(&Overrides {
            allow_net: vec!["api.github.com".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].origin, "--allow-net");
    assert!(
        e.0[0].message.contains("set network.mode = \"allowlist\""),
        "{e}"
    );

    // A malformed --allow-net entry names the flag and the entry.
    let mut p = net_file();
    let e = p
        .apply(&Overrides {
            allow_net: vec!["Example.com".into(), "ok.example:0".into()],
            ..Default::default()
        })
        .unwrap_err();
    let got: Vec<(&str, &str)> =
        e.0.iter()
            .map(|e| (e.origin.as_str(), e.key.as_deref().unwrap()))
            .collect();
    assert_eq!(
        got,
        [
            ("--allow-net", "network.allow[1]"),
            ("--allow-net", "network.allow[2]"),
        ],
        "{e}"
    );
    assert_eq!(
        e.0[0].to_string(),
        "--allow-net: \"Example.com\": write the name in lowercase, \"example.com\""
    );
    assert_eq!(p, net_file());
}

#[test]
fn open_network_needs_the_flag() {
    let mut p = Policy::default();
    let e = p
        .apply(&Overrides {
            net: Some(NetworkMode::Open),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--net: network mode open lets the sandbox reach any public host; set \
         network.allow_open = true (or pass --allow-open-network) to accept that, or use \
         mode = \"allowlist\""
    );
    p.apply(&Overrides {
        net: Some(NetworkMode::Open),
        allow_open_network: Some(true),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.network.mode, NetworkMode::Open);
    assert!(p.network.allow_open);
    // The opt-in from the file is enough too.
    let mut f = Policy::from_toml("[network]\nallow_open = true\n", "policy.toml").unwrap();
    f.apply(&Overrides {
        net: Some(NetworkMode::Open),
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn secret_flags_parse_and_errors_name_the_flag() {
    assert_eq!(
        SecretSource::parse_flag("K=env:VAR").unwrap(),
        ("K".to_string(), SecretSource::Env("VAR".into()))
    );
    assert_eq!(
        SecretSource::parse_flag("K=file:/run/k").unwrap(),
        ("K".to_string(), SecretSource::File("/run/k".into()))
    );
    let e = SecretSource::parse_flag("K=sk-live-123").unwrap_err();
    assert!(e.contains("env:VAR or file:PATH"), "{e}");
    assert!(SecretSource::parse_flag("novalue").is_err());

    // A secret bound to a host the network policy does not allow: the error names the flag.
    let mut p = Policy::default();
    let o = Overrides {
        net: Some(NetworkMode::Allowlist),
        allow_net: vec!["api.github.com".into()],
        secrets: vec![("K".into(), SecretSource::Env("V".into()))],
        secret_hosts: vec![("K".into(), "api.openai.com".into())],
        ..Overrides::default()
    };
    let errs = p.apply(&o).unwrap_err();
    let text = errs.to_string();
    assert!(text.contains("--secret-host"), "{text}");
    assert!(text.contains("api.openai.com"), "{text}");
    assert!(text.contains("--allow-net api.openai.com"), "{text}");
    assert_eq!(p, Policy::default(), "nothing applied on error");
}

#[test]
fn level_and_trust_flags() {
    // --trust on a policy that states no level: the trust level will pick one.
    let mut p = Policy::default();
    p.apply(&Overrides {
        trust: Some(Trust::Untrusted),
        ..Default::default()
    })
    .unwrap();
    assert_eq!((p.level, p.trust), (None, Some(Trust::Untrusted)));
    assert_eq!(p.minimum_level(), Level::Microvm);
    // --trust against a file's weaker level: refused, and the error names --trust.
    let file = Policy::from_toml("level = \"container\"\n", "policy.toml").unwrap();
    let mut q = file.clone();
    let e = q
        .apply(&Overrides {
            trust: Some(Trust::Internal),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].origin, "--trust");
    assert_eq!(e.0[0].key.as_deref(), Some("level"));
    assert!(
        e.to_string()
            .starts_with("--trust: level \"container\" is weaker than trust = \"internal\""),
        "{e}"
    );
    assert_eq!(q, file, "a failed apply changes nothing");
    // --level too weak for the file's trust: the error names --level.
    let file = Policy::from_toml("trust = \"untrusted\"\n", "policy.toml").unwrap();
    let mut q = file.clone();
    let e = q
        .apply(&Overrides {
            level: Some(Level::Gvisor),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.0[0].origin, "--level", "{e}");
    // ... which --allow-gvisor-for-untrusted makes acceptable.
    q.apply(&Overrides {
        level: Some(Level::Gvisor),
        allow_gvisor_for_untrusted: Some(true),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(q.level, Some(Level::Gvisor));
    assert_eq!(q.minimum_level(), Level::Gvisor);
    // Both flags, consistent.
    let mut r = Policy::default();
    r.apply(&Overrides {
        level: Some(Level::Microvm),
        trust: Some(Trust::Trusted),
        allow_emulated: Some(true),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (r.level, r.trust),
        (Some(Level::Microvm), Some(Trust::Trusted))
    );
    assert!(r.security.allow_emulated);
    let names: Vec<&str> = FLAGS.iter().map(|(_, f)| *f).collect();
    for f in [
        "--level",
        "--trust",
        "--allow-emulated",
        "--allow-gvisor-for-untrusted",
    ] {
        assert!(names.contains(&f), "{f}");
    }
}
