//! Every validation rule, through the TOML front door: message, key, and for several the exact
//! line and column.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stockade_policy::{Level, Policy, PolicyError, Trust};

fn errs(src: &str) -> Vec<PolicyError> {
    match Policy::from_toml(src, "policy.toml") {
        Ok(p) => panic!("expected an error for {src:?}, got {p:?}"),
        Err(e) => e.0,
    }
}

/// Exactly one error; returns it.
fn one(src: &str) -> PolicyError {
    let e = errs(src);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

/// Exactly one error, for `key`, whose message contains `needle`.
fn rejects(src: &str, key: &str, needle: &str) {
    let e = one(src);
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert!(e.message.contains(needle), "{e}");
}

fn ok(src: &str) -> Policy {
    Policy::from_toml(src, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(ok(""), Policy::default());
    assert_eq!(ok("# nothing\n\n"), Policy::default());
    Policy::default().validate().unwrap();
}

#[test]
fn memory_minimum_with_exact_position() {
    let e = one("version = 1\n[limits]\nmemory = \"10MiB\"\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:3:10: limits.memory: 10MiB is below the working minimum of 32MiB; raise it"
    );
    assert_eq!((e.line, e.column), (Some(3), Some(10)));
    ok("[limits]\nmemory = \"32MiB\"");
    ok("[limits]\nmemory = 33554432");
}

#[test]
fn version_and_level() {
    rejects("version = 2", "version", "version 2 is not supported");
    // Every level parses and validates: which one the host can give is the runtime's question.
    for l in Level::ALL {
        let p = ok(&format!("level = \"{}\"", l.as_str()));
        assert_eq!((p.level, p.trust), (Some(l), None));
        assert_eq!(p.minimum_level(), l);
    }
    let e = one("level = \"kvm\"");
    assert_eq!(e.key.as_deref(), Some("level"));
    assert!(e.message.contains("unknown variant `kvm`"), "{e}");
    assert_eq!((e.line, e.column), (Some(1), Some(9)));
    rejects("trust = \"nobody\"", "trust", "unknown variant `nobody`");
    rejects("trust = 3", "trust", "wanted string");
    rejects(
        "[security]\nallow_emulated = \"yes\"",
        "security.allow_emulated",
        "invalid type",
    );
    rejects(
        "[security]\nallow_gvisor_for_untrusted = 1",
        "security.allow_gvisor_for_untrusted",
        "invalid type",
    );
}

/// `level` with `trust`: every combination; a level weaker than the trust level allows is an
/// error at the level's value, naming both and what to do.
#[test]
fn level_against_trust() {
    let allowed = |t: Trust, l: Level, gv: bool| match t {
        Trust::Trusted => true,
        Trust::Internal => l >= Level::Gvisor,
        Trust::Untrusted => l == Level::Microvm || (gv && l == Level::Gvisor),
    };
    for t in Trust::ALL {
        for l in Level::ALL {
            for gv in [false, true] {
                let src = format!(
                    "version = 1\nlevel = \"{}\"\ntrust = \"{}\"\n[security]\nallow_gvisor_for_untrusted = {gv}\n",
                    l.as_str(),
                    t.as_str()
                );
                let r = Policy::from_toml(&src, "policy.toml");
                if allowed(t, l, gv) {
                    let p = r.unwrap_or_else(|e| panic!("{src}: {e}"));
                    assert_eq!((p.level, p.trust), (Some(l), Some(t)));
                    assert_eq!(p.minimum_level(), l);
                } else {
                    let e = r.expect_err(&src).0;
                    assert_eq!(e.len(), 1, "{e:?}");
                    let e = &e[0];
                    assert_eq!(e.key.as_deref(), Some("level"), "{e}");
                    assert_eq!((e.line, e.column), (Some(2), Some(9)), "{e}");
                    assert!(
                        e.to_string().starts_with(&format!(
                            "policy.toml:2:9: level: level \"{}\" is weaker than trust = \"{}\" allows",
                            l.as_str(),
                            t.as_str()
                        )),
                        "{e}"
                    );
                    assert!(e.message.contains("leave level out"), "{e}");
                    if t == Trust::Untrusted && !gv {
                        assert!(
                            e.message.contains("allow_gvisor_for_untrusted = true"),
                            "{e}"
                        );
                    }
                }
            }
        }
    }
    // trust alone: no level stated; the minimum follows the trust level.
    for (t, gv, min) in [
        (Trust::Trusted, false, Level::Container),
        (Trust::Internal, false, Level::Gvisor),
        (Trust::Untrusted, false, Level::Microvm),
        (Trust::Untrusted, true, Level::Gvisor),
    ] {
        let p = ok(&format!(
            "trust = \"{}\"\n[security]\nallow_gvisor_for_untrusted = {gv}\n",
            t.as_str()
        ));
        assert_eq!((p.level, p.trust), (None, Some(t)));
        assert_eq!(p.minimum_level(), min);
    }
    // The same rule without a file: no position.
    let mut p = Policy {
        level: Some(Level::Gvisor),
        trust: Some(Trust::Untrusted),
        ..Default::default()
    };
    let e = p.validate().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("policy: level: level \"gvisor\" is weaker"),
        "{e}"
    );
    p.security.allow_gvisor_for_untrusted = true;
    p.validate().unwrap();
}

/// The contract since the egress gateway's policy landed: every mode validates here when its
/// lists agree with it; the runtime (not the policy) refuses `allowlist` and `open` until the
/// gateway is wired in. See tests/network.rs for every network rule.
#[test]
fn network_modes_validate_in_the_policy() {
    let p = ok("[network]\nmode = \"allowlist\"\nallow = [\"api.github.com\"]");
    assert_eq!(p.network.mode, stockade_policy::NetworkMode::Allowlist);
    let p = ok("[network]\nmode = \"open\"\nallow_open = true");
    assert_eq!(p.network.mode, stockade_policy::NetworkMode::Open);
    ok("[network]\nmode = \"none\"");
    for src in [
        "[network]\nmode = \"allowlist\"",
        "[network]\nmode = \"open\"",
    ] {
        let e = one(src);
        assert!(!e.message.contains("not implemented"), "{e}");
    }
    rejects(
        "[network]\nmode = \"wide\"",
        "network.mode",
        "unknown variant `wide`",
    );
}

#[test]
fn unknown_keys_list_valid_keys_with_position() {
    let e = one("[limits]\nmemroy = \"1GiB\"\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:2:1: limits.memroy: unknown key `memroy` in [limits]; valid keys are: \
         memory, swap, cpus, pids, timeout, disk, max_output, open_files"
    );
    let e = one("verison = 1");
    assert!(
        e.message
            .contains("at the top level; valid keys are: version, level, trust, workspace"),
        "{e}"
    );
    let e = one("[filesystem]\nmounts = [{ host = \"/a\", mdoe = \"rw\" }]");
    assert_eq!(e.key.as_deref(), Some("filesystem.mounts[0].mdoe"));
    assert_eq!((e.line, e.column), (Some(2), Some(26)));
    assert!(e.message.contains("valid keys are: host, path, mode"));
    rejects("[nope]\n", "nope", "unknown key `nope`");
    rejects("workspace = 3", "workspace", "must be a table");
}

#[test]
fn type_errors_carry_position_and_all_are_reported() {
    let e = errs("[limits]\npids = \"many\"\nopen_files = true\n[process]\nuid = -1\n");
    let got: Vec<(Option<usize>, Option<usize>, Option<&str>)> = e
        .iter()
        .map(|e| (e.line, e.column, e.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(2), Some(8), Some("limits.pids")),
            (Some(3), Some(14), Some("limits.open_files")),
            (Some(5), Some(7), Some("process.uid")),
        ]
    );
    assert!(
        e[0].message.contains("invalid type: string \"many\""),
        "{}",
        e[0]
    );
}

#[test]
fn syntax_error_has_position() {
    let e = one("[limits\nmemory = 1\n");
    assert_eq!(e.line, Some(1));
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    assert_eq!(e.key, None);
}

#[test]
fn limits_ranges() {
    rejects(
        "[limits]\npids = 7",
        "limits.pids",
        "below the minimum of 8",
    );
    ok("[limits]\npids = 8");
    rejects("[limits]\ncpus = 0.01", "limits.cpus", "out of range");
    rejects("[limits]\ncpus = 0", "limits.cpus", "out of range");
    rejects("[limits]\ncpus = -1.0", "limits.cpus", "out of range");
    rejects("[limits]\ncpus = 1024.5", "limits.cpus", "out of range");
    rejects("[limits]\ncpus = nan", "limits.cpus", "out of range");
    rejects("[limits]\ncpus = inf", "limits.cpus", "out of range");
    ok("[limits]\ncpus = 0.02");
    ok("[limits]\ncpus = 1024");
    ok("[limits]\ncpus = 2");
    rejects(
        "[limits]\ntimeout = \"99ms\"",
        "limits.timeout",
        "below the minimum of 100ms",
    );
    rejects(
        "[limits]\ntimeout = \"7d1ms\"",
        "limits.timeout",
        "above the maximum of 7d",
    );
    ok("[limits]\ntimeout = \"100ms\"");
    ok("[limits]\ntimeout = \"7d\"");
    ok("[limits]\ntimeout = 30");
    rejects("[limits]\ntimeout = -30", "limits.timeout", "negative");
    rejects("[limits]\ntimeout = \"1h30\"", "limits.timeout", "no unit");
    rejects(
        "[limits]\ndisk = \"1023KiB\"",
        "limits.disk",
        "below the minimum of 1MiB",
    );
    ok("[limits]\ndisk = \"1M\"");
    rejects(
        "[limits]\nmax_output = 1023",
        "limits.max_output",
        "below the minimum of 1KiB",
    );
    ok("[limits]\nmax_output = \"1K\"");
    rejects(
        "[limits]\nopen_files = 15",
        "limits.open_files",
        "use 16 to 20000",
    );
    rejects(
        "[limits]\nopen_files = 20001",
        "limits.open_files",
        "use 16 to 20000",
    );
    ok("[limits]\nopen_files = 16\n");
    ok("[limits]\nopen_files = 20000\n");
    rejects("[limits]\nmemory = \"1GB\"", "limits.memory", "ambiguous");
    rejects("[limits]\nswap = -1", "limits.swap", "negative");
    ok("[limits]\nswap = \"0\"");
}

#[test]
fn ids() {
    rejects("[process]\nuid = 4294967295", "process.uid", "no id");
    rejects("[process]\ngid = 4294967295", "process.gid", "no id");
    rejects("[process]\nuid = 4294967296", "process.uid", "");
    ok("[process]\nuid = 0\ngid = 65534");
    ok("[process]\nuid = 4294967294");
}

#[test]
fn hostname_rfc1123() {
    for good in ["a", "build-1", "a.b.c", "x0", &"a".repeat(63)] {
        ok(&format!("[process]\nhostname = \"{good}\""));
    }
    let long = "a".repeat(64);
    let many = ["abc"; 64].join(".");
    for bad in [
        "",
        "-a",
        "a-",
        "a..b",
        "a_b",
        "héllo",
        "a b",
        ".a",
        long.as_str(),
        many.as_str(),
    ] {
        rejects(
            &format!("[process]\nhostname = \"{bad}\""),
            "process.hostname",
            "hostname",
        );
    }
}

#[test]
fn env_rules() {
    let e = one("[process]\nenv = { \"A=B\" = \"x\" }");
    assert_eq!(e.key.as_deref(), Some("process.env.A=B"));
    assert_eq!((e.line, e.column), (Some(2), Some(9)));
    assert!(e.message.contains("contains '='"));
    rejects(
        "[process]\nenv = { \"\" = \"x\" }",
        "process.env.",
        "name is empty",
    );
    rejects(
        "[process]\nenv = { \"A\\u0000\" = \"x\" }",
        "process.env.A\0",
        "NUL",
    );
    rejects(
        "[process]\nenv = { A = \"x\\u0000y\" }",
        "process.env.A",
        "value contains a NUL",
    );
    rejects(
        "[process]\nenv_pass = [\"\"]",
        "process.env_pass[0]",
        "name is empty",
    );
    rejects(
        "[process]\nenv_pass = [\"OK\", \"X=1\"]",
        "process.env_pass[1]",
        "contains '='",
    );
    let e = one("[process]\nenv = { TOKEN = \"x\" }\nenv_pass = [\"PATHX\", \"TOKEN\"]");
    assert_eq!(e.key.as_deref(), Some("process.env_pass[1]"));
    assert_eq!((e.line, e.column), (Some(3), Some(22)));
    assert!(
        e.message
            .contains("TOKEN is both set in process.env and passed through"),
        "{e}"
    );
    ok("[process]\nenv = { A = \"\", B = \"=\" }\nenv_pass = [\"C\"]");
}

#[test]
fn mount_rules() {
    let m = |body: &str| format!("[filesystem]\nmounts = [{body}]");
    rejects(
        &m("{ host = \"data\" }"),
        "filesystem.mounts[0].host",
        "must be absolute",
    );
    rejects(
        &m("{ host = \"/a/../etc\" }"),
        "filesystem.mounts[0].host",
        "\"..\"",
    );
    rejects(
        &m("{ host = \"/a\", path = \"data\" }"),
        "filesystem.mounts[0].path",
        "must be absolute",
    );
    rejects(
        &m("{ host = \"/a\", path = \"/x/../proc\" }"),
        "filesystem.mounts[0].path",
        "\"..\"",
    );
    rejects(
        &m("{ host = \"/a\", path = \"/\" }"),
        "filesystem.mounts[0].path",
        "sandbox root",
    );
    rejects(
        &m("{ host = \"/a\", path = \"//\" }"),
        "filesystem.mounts[0].path",
        "sandbox root",
    );
    rejects(
        &m("{ host = \"/a\", path = \"/proc\" }"),
        "filesystem.mounts[0].path",
        "under /proc",
    );
    rejects(
        &m("{ host = \"/a\", path = \"/dev/shm\" }"),
        "filesystem.mounts[0].path",
        "under /dev",
    );
    rejects(
        &m("{ host = \"/sys/fs\" }"),
        "filesystem.mounts[0].host",
        "under /sys",
    );
    let e = one(&m(
        "{ host = \"/a\", path = \"/data\" },\n  { host = \"/b\", path = \"/data/\" }",
    ));
    assert_eq!(e.key.as_deref(), Some("filesystem.mounts[1].path"));
    assert_eq!((e.line, e.column), (Some(3), Some(25)));
    assert!(e.message.contains("mounted twice"));
    rejects(
        &m("{ path = \"/x\" }"),
        "filesystem.mounts[0]",
        "missing field `host`",
    );
    rejects(
        &m("{ host = \"/a\", mode = \"wr\" }"),
        "filesystem.mounts[0]",
        "unknown variant `wr`",
    );
    ok(&m(
        "{ host = \"/opt/data\", path = \"/data\", mode = \"ro\" }, { host = \"/srv\", mode = \"rw\" }, { host = \"/processes\" }",
    ));
}

#[test]
fn rootfs_rules() {
    // A relative path is refused at its value's line and column.
    let e = one("version = 1\n[filesystem]\nrootfs = \"srv/rootfs\"\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:3:10: filesystem.rootfs: root filesystem path \"srv/rootfs\" must be \
         absolute (start with /)"
    );
    assert_eq!((e.line, e.column), (Some(3), Some(10)));
    let r = |v: &str| format!("[filesystem]\nrootfs = {v}");
    rejects(&r("\"\""), "filesystem.rootfs", "path is empty");
    rejects(&r("\"./x\""), "filesystem.rootfs", "must be absolute");
    rejects(&r("\"/srv/../etc\""), "filesystem.rootfs", "\"..\"");
    rejects(&r("\"/\""), "filesystem.rootfs", "whole host");
    rejects(&r("\"//\""), "filesystem.rootfs", "whole host");
    rejects(&r("\"/proc/1/root\""), "filesystem.rootfs", "under /proc");
    rejects(&r("\"/a\\u0000b\""), "filesystem.rootfs", "NUL");
    rejects(&r("1"), "filesystem.rootfs", "invalid type");
    let p = ok(&r("\"/srv/rootfs/debian/\""));
    assert_eq!(p.filesystem.rootfs, Some("/srv/rootfs/debian/".into()));
    assert_eq!(ok("").filesystem.rootfs, None);
}

#[test]
fn a_dropped_mount_does_not_shift_later_positions() {
    let e = errs("[filesystem]\nmounts = [\n { host = 1 },\n { host = \"rel\" },\n]");
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        (e[0].line, e[0].key.as_deref()),
        (Some(3), Some("filesystem.mounts[0]"))
    );
    // The second file entry is the first parsed mount; its error points at line 4.
    assert_eq!(e[1].line, Some(4));
    assert!(e[1].message.contains("must be absolute"));
}

#[test]
fn etc_extra_rules() {
    let x = |v: &str| format!("[filesystem]\netc_extra = [{v}]");
    for secret in [
        "shadow",
        "gshadow",
        "sudoers",
        "sudoers.d",
        "sudoers.d/x",
        "ssh",
        "ssh/sshd_config",
        "ssl/private",
        "machine-id",
        "./shadow",
    ] {
        rejects(
            &x(&format!("\"{secret}\"")),
            "filesystem.etc_extra[0]",
            "secrets",
        );
    }
    rejects(
        &x("\"ssl\""),
        "filesystem.etc_extra[0]",
        "contains /etc/ssl/private",
    );
    rejects(
        &x("\"/etc/hosts\""),
        "filesystem.etc_extra[0]",
        "must be relative",
    );
    rejects(&x("\"../shadow\""), "filesystem.etc_extra[0]", "\"..\"");
    rejects(&x("\"\""), "filesystem.etc_extra[0]", "all of /etc");
    rejects(&x("\".\""), "filesystem.etc_extra[0]", "all of /etc");
    let e = one(&x("\"gitconfig\", \"shadow\""));
    assert_eq!((e.line, e.column), (Some(2), Some(27)));
    assert_eq!(e.key.as_deref(), Some("filesystem.etc_extra[1]"));
    ok(&x(
        "\"gitconfig\", \"ssl/certs\", \"ca-certificates\", \"hosts\"",
    ));
}

#[test]
fn weaker_isolation_needs_the_flag() {
    let e = one("[security]\nseccomp = false");
    assert!(e.message.contains("--allow-weaker-isolation"), "{e}");
    assert_eq!(e.key.as_deref(), Some("security.seccomp"));
    assert_eq!((e.line, e.column), (Some(2), Some(11)));
    rejects(
        "[security]\nlandlock = false",
        "security.landlock",
        "--allow-weaker-isolation",
    );
    assert_eq!(
        errs("[security]\nlandlock = false\nseccomp = false").len(),
        2
    );
    ok("[security]\nseccomp = false\nlandlock = false\nallow_weaker_isolation = true");
}

#[test]
fn workspace_system_paths() {
    for bad in [
        "/",
        "/etc",
        "/etc/nginx",
        "/usr",
        "/usr/",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/lib32/x",
        "/libx32",
        "/boot",
        "/dev",
        "/proc/1",
        "/sys",
        "/var",
        "/run",
        "/root",
        "/home",
        "//usr/./",
    ] {
        rejects(
            &format!("[workspace]\npath = \"{bad}\""),
            "workspace.path",
            "allow_system_path",
        );
        ok(&format!(
            "[workspace]\npath = \"{bad}\"\nallow_system_path = true"
        ));
    }
    for good in [
        ".",
        "src",
        "../x",
        "/home/me/project",
        "/usr/src/app",
        "/var/lib/ci/build",
        "/root/work",
        "/library",
        "/srv",
    ] {
        ok(&format!("[workspace]\npath = \"{good}\""));
    }
    rejects("[workspace]\npath = \"\"", "workspace.path", "empty");
    let home = std::path::Path::new("/home/me");
    assert!(stockade_policy::is_system_path(home, Some(home)));
    assert!(stockade_policy::is_system_path(
        std::path::Path::new("/home/me/"),
        Some(home)
    ));
    assert!(!stockade_policy::is_system_path(
        std::path::Path::new("/home/me/p"),
        Some(home)
    ));
    let p = Policy::default();
    assert!(stockade_policy::check_workspace_dir(&p, home, Some(home)).is_err());
    let mut allowed = p.clone();
    allowed.workspace.allow_system_path = true;
    assert!(stockade_policy::check_workspace_dir(&allowed, home, Some(home)).is_ok());
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let src = "level = \"container\"\ntrust = \"untrusted\"\n[limits]\nmemory = \"1MiB\"\npids = 1\n[security]\nseccomp = false\n[network]\nmode = \"open\"\n";
    let e = errs(src);
    let keys: Vec<&str> = e.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "level",
            "limits.memory",
            "limits.pids",
            "security.seccomp",
            "network.mode"
        ]
    );
    let text = stockade_policy::PolicyErrors(e).to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.starts_with("policy.toml:1:9: level: level \"container\" is weaker"));
}

#[test]
fn validate_without_a_file_has_no_position() {
    let mut p = Policy::default();
    p.limits.pids = 1;
    p.process.hostname = "no_good".into();
    let e = p.validate().unwrap_err();
    assert_eq!(e.0.len(), 2);
    assert!(e.0.iter().all(|e| e.line.is_none() && e.origin == "policy"));
    assert!(e.to_string().contains("policy: limits.pids: "));
}

#[test]
fn non_utf8_paths_from_code_are_rejected() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
    let mut p = Policy::default();
    p.workspace.path = Some(bad.clone());
    p.filesystem.mounts.push(stockade_policy::Mount {
        host: bad,
        path: None,
        mode: Default::default(),
    });
    let e = p.validate().unwrap_err();
    assert!(e.0.iter().all(|e| e.message.contains("UTF-8")), "{e}");
    assert_eq!(e.0.len(), 2);
    assert_eq!(p.digest().len(), 64);
}

#[test]
fn workspace_resolves_lexically_against_the_base() {
    use std::path::{Path, PathBuf};
    let base = Path::new("/home/me/repo");
    let mut p = Policy::default();
    assert_eq!(p.workspace.resolve(base), PathBuf::from("/home/me/repo"));
    p.workspace.path = Some("./src/.".into());
    assert_eq!(
        p.workspace.resolve(base),
        PathBuf::from("/home/me/repo/src")
    );
    p.workspace.path = Some("/abs/dir".into());
    assert_eq!(p.workspace.resolve(base), PathBuf::from("/abs/dir"));
    p.workspace.path = Some("..".into());
    assert_eq!(p.workspace.resolve(base), PathBuf::from("/home/me/repo/.."));
}

#[test]
fn audit_section_parses() {
    let p = ok(
        "[audit]\nenabled = false\nredact_env = [\"API_TOKEN\", \"GH_TOKEN\"]\n\
                sensitive = [\".env\", \"secrets/\", \"/data/keys\"]\n",
    );
    assert!(!p.audit.enabled);
    assert_eq!(p.audit.redact_env, ["API_TOKEN", "GH_TOKEN"]);
    let want: Vec<std::path::PathBuf> = vec![".env".into(), "secrets/".into(), "/data/keys".into()];
    assert_eq!(p.audit.sensitive, want);
    // Absent keys keep their defaults; turning the audit off is allowed without an opt-in.
    let p = ok("[audit]\nredact_env = [\"X\"]\n");
    assert!(p.audit.enabled && p.audit.sensitive.is_empty());
    ok("[audit]\nenabled = false\n");
    ok("[audit]\nsensitive = [\".\", \"./a/./b\", \"/procfs/x\", \"/devices\"]\n");
    rejects("[audit]\nenabled = \"no\"", "audit.enabled", "invalid type");
    rejects("audit = true", "audit", "must be a table");
}

#[test]
fn audit_unknown_key_lists_valid_keys() {
    let e = one("[audit]\nenabled = true\nredact = [\"X\"]\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:3:1: audit.redact: unknown key `redact` in [audit]; valid keys are: \
         enabled, redact_env, sensitive"
    );
}

#[test]
fn audit_redact_env_rules() {
    let e = one("[audit]\nredact_env = [\"OK\", \"A=B\"]\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:2:21: audit.redact_env[1]: environment variable name contains '='; \
         list variable names only, e.g. \"API_TOKEN\""
    );
    rejects(
        "[audit]\nredact_env = [\"\"]",
        "audit.redact_env[0]",
        "name is empty",
    );
    rejects(
        "[audit]\nredact_env = [\"A\\u0000\"]",
        "audit.redact_env[0]",
        "NUL",
    );
    let e = one("[audit]\nredact_env = [\n  \"TOKEN\",\n  \"PATH\",\n  \"TOKEN\",\n]\n");
    assert_eq!(e.key.as_deref(), Some("audit.redact_env[2]"));
    assert_eq!((e.line, e.column), (Some(5), Some(3)));
    assert_eq!(
        e.message,
        "TOKEN is listed twice in audit.redact_env; keep one"
    );
    rejects(
        "[audit]\nredact_env = \"TOKEN\"",
        "audit.redact_env",
        "invalid type",
    );
}

#[test]
fn audit_sensitive_rules() {
    let e = one("[audit]\nsensitive = [\".env\", \"/sys/kernel\"]\n");
    assert_eq!(
        e.to_string(),
        "policy.toml:2:22: audit.sensitive[1]: /sys/kernel is under /sys, which the sandbox \
         manages itself; list a path in the workspace or under a filesystem.mounts target"
    );
    for reserved in ["/proc", "/proc/self/environ", "/dev/shm", "//sys/./fs"] {
        let src = format!("[audit]\nsensitive = [\"{reserved}\"]");
        rejects(
            &src,
            "audit.sensitive[0]",
            "which the sandbox manages itself",
        );
    }
    let e = one("[audit]\nsensitive = [\n  \"a\",\n  \"../outside\",\n]\n");
    assert_eq!(e.key.as_deref(), Some("audit.sensitive[1]"));
    assert_eq!((e.line, e.column), (Some(4), Some(3)));
    assert!(e.message.contains("must not contain \"..\""), "{e}");
    rejects(
        "[audit]\nsensitive = [\"/data/../etc/shadow\"]",
        "audit.sensitive[0]",
        "must not contain \"..\"",
    );
    rejects(
        "[audit]\nsensitive = [\"\"]",
        "audit.sensitive[0]",
        "path is empty; name a file or directory",
    );
    rejects(
        "[audit]\nsensitive = [\"a\\u0000b\"]",
        "audit.sensitive[0]",
        "NUL byte; remove it",
    );
}

#[test]
fn audit_sensitive_non_utf8_from_code_is_rejected() {
    use std::os::unix::ffi::OsStrExt;
    let mut p = Policy::default();
    p.audit
        .sensitive
        .push(std::ffi::OsStr::from_bytes(b"/tmp/\xff").into());
    let e = p.validate().unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].key.as_deref(), Some("audit.sensitive[0]"));
    assert!(e.0[0].message.contains("UTF-8"));
}

#[test]
fn absolute_sensitive_paths_must_be_in_the_workspace_or_a_mount() {
    use std::path::Path;
    let p = ok(
        "[filesystem]\nmounts = [{ host = \"/opt/data\", path = \"/data\" }]\n\
                [audit]\nsensitive = [\".env\", \"/home/me/repo/secrets\", \"/home/me/repo\", \"/data/keys\"]\n",
    );
    stockade_policy::check_sensitive_paths(&p, Path::new("/home/me/repo")).unwrap();
    let e = stockade_policy::check_sensitive_paths(&p, Path::new("/home/me/other")).unwrap_err();
    assert!(
        e.starts_with(
            "audit.sensitive[1]: /home/me/repo/secrets is neither in the workspace /home/me/other"
        ),
        "{e}"
    );
    // A path that only shares a prefix string is not under the mount target.
    let p = ok(
        "[filesystem]\nmounts = [{ host = \"/opt/data\", path = \"/data\" }]\n\
                [audit]\nsensitive = [\"/database\"]\n",
    );
    assert!(stockade_policy::check_sensitive_paths(&p, Path::new("/w")).is_err());
}
