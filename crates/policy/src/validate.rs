//! Semantic validation: every rule, all problems at once, each with a key path and advice.
//!
//! Rules return [`Issue`]s keyed by dotted path (`limits.memory`, `filesystem.mounts[1].path`);
//! the caller places them (file line/column, or the command-line flag that set the value).

use std::path::{Component, Path};
use std::time::Duration;

use crate::error::Issue;
use crate::model::{Policy, Trust};
use crate::size::ByteSize;

/// `/etc` entries that hold secrets and are never added, nor anything containing them.
pub const ETC_DENYLIST: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "ssl/private",
    "pki/tls/private",
    "machine-id",
    "security/opasswd",
    "krb5.keytab",
    "ipsec.secrets",
    "ppp/chap-secrets",
    "ppp/pap-secrets",
    "NetworkManager/system-connections",
    "wireguard",
    "credstore",
    "credstore.encrypted",
    "letsencrypt",
];

/// Host directories refused as the workspace unless `allow_system_path`: the path itself.
const SYSTEM_EXACT: &[&str] = &["/", "/usr", "/var", "/run", "/root", "/home"];
/// Host directories refused as the workspace unless `allow_system_path`: the path or anything under it.
const SYSTEM_TREES: &[&str] = &[
    "/etc", "/bin", "/sbin", "/boot", "/dev", "/proc", "/sys", "/lib", "/lib32", "/lib64",
    "/libx32",
];
/// Sandbox paths that a mount may not cover, nor an `audit.sensitive` path name.
const RESERVED_TARGETS: &[&str] = &["/proc", "/dev", "/sys"];

const MIN_MEMORY: ByteSize = ByteSize::mib(32);

pub(crate) fn issues(p: &Policy) -> Vec<Issue> {
    let mut out = Vec::new();
    top(p, &mut out);
    workspace(p, &mut out);
    filesystem(p, &mut out);
    process(p, &mut out);
    limits(p, &mut out);
    security(p, &mut out);
    crate::network::issues(&p.network, &mut out);
    audit(p, &mut out);
    crate::secrets::issues(p, &mut out);
    out
}

fn top(p: &Policy, out: &mut Vec<Issue>) {
    if p.version != 1 {
        out.push(Issue::new(
            "version",
            format!(
                "version {} is not supported; this Stockade reads version = 1",
                p.version
            ),
        ));
    }
    if let (Some(level), Some(trust)) = (p.level, p.trust) {
        let min = trust.minimum(p.security.allow_gvisor_for_untrusted);
        if level < min {
            let needs = match trust {
                Trust::Trusted => "container or stronger".to_string(),
                Trust::Internal => "gvisor or microvm".to_string(),
                Trust::Untrusted if p.security.allow_gvisor_for_untrusted => {
                    "microvm, or gvisor (security.allow_gvisor_for_untrusted is set)".to_string()
                }
                Trust::Untrusted => "microvm (or gvisor where the operator sets \
                                     security.allow_gvisor_for_untrusted = true)"
                    .to_string(),
            };
            out.push(Issue::new(
                "level",
                format!(
                    "level {:?} is weaker than trust = {:?} allows: {} code needs {needs}; \
                     raise the level, or leave level out and let the trust level pick one",
                    level.as_str(),
                    trust.as_str(),
                    trust.as_str(),
                ),
            ));
        }
    }
}

/// Is `path` a directory that must not be the workspace? Lexical; `home` is the user's home
/// directory if the caller knows it. Relative paths are never system paths here: resolve first.
pub fn is_system_path(path: &Path, home: Option<&Path>) -> bool {
    let norm: std::path::PathBuf = path.components().collect();
    if !norm.is_absolute() {
        return false;
    }
    if home.is_some_and(|h| h.components().collect::<std::path::PathBuf>() == norm) {
        return true;
    }
    if SYSTEM_EXACT.iter().any(|s| norm == Path::new(s)) {
        return true;
    }
    SYSTEM_TREES.iter().any(|s| norm.starts_with(s))
}

/// The workspace check the caller repeats once it has resolved the path and knows `$HOME`.
pub fn check_workspace_dir(p: &Policy, resolved: &Path, home: Option<&Path>) -> Result<(), String> {
    if !p.workspace.allow_system_path && is_system_path(resolved, home) {
        return Err(format!(
            "workspace {} is a system directory or your whole home directory; pick a project \
             directory, or set workspace.allow_system_path = true (--allow-system-path) if you mean it",
            resolved.display()
        ));
    }
    Ok(())
}

fn workspace(p: &Policy, out: &mut Vec<Issue>) {
    if let Some(path) = &p.workspace.path {
        if path.to_str().is_none() {
            out.push(Issue::new("workspace.path", "path is not valid UTF-8"));
        } else if path.as_os_str().is_empty() {
            out.push(Issue::new(
                "workspace.path",
                "path is empty; leave it out for the current directory, or write \".\"",
            ));
        } else if let Err(m) = check_workspace_dir(p, path, None) {
            out.push(Issue::new("workspace.path", m));
        }
    }
}

fn has_dotdot(p: &Path) -> bool {
    p.components().any(|c| c == Component::ParentDir)
}

fn filesystem(p: &Policy, out: &mut Vec<Issue>) {
    if let Some(r) = &p.filesystem.rootfs
        && let Some(m) = rootfs_problem(r)
    {
        out.push(Issue::new("filesystem.rootfs", m));
    }
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    for (i, m) in p.filesystem.mounts.iter().enumerate() {
        let hk = format!("filesystem.mounts[{i}].host");
        if m.host.to_str().is_none() {
            out.push(Issue::new(&hk, "path is not valid UTF-8"));
        } else if !m.host.is_absolute() {
            out.push(Issue::new(
                &hk,
                format!(
                    "host path {:?} must be absolute (start with /)",
                    m.host.display().to_string()
                ),
            ));
        } else if has_dotdot(&m.host) {
            out.push(Issue::new(
                &hk,
                "host path must not contain \"..\"; write the real path",
            ));
        }
        let tk = if m.path.is_some() {
            format!("filesystem.mounts[{i}].path")
        } else {
            hk.clone()
        };
        let t = m.target();
        if t.to_str().is_none() {
            if m.path.is_some() {
                out.push(Issue::new(&tk, "path is not valid UTF-8"));
            }
            continue;
        }
        if !t.is_absolute() {
            if m.path.is_some() {
                out.push(Issue::new(
                    &tk,
                    "target path must be absolute (start with /)",
                ));
            }
            continue;
        }
        if has_dotdot(t) {
            if m.path.is_some() {
                out.push(Issue::new(&tk, "target path must not contain \"..\""));
            }
            continue;
        }
        let norm: std::path::PathBuf = t.components().collect();
        if norm == Path::new("/") {
            out.push(Issue::new(
                &tk,
                "a mount cannot replace the sandbox root \"/\"; pick a directory such as /data",
            ));
        } else if let Some(r) = RESERVED_TARGETS.iter().find(|r| norm.starts_with(r)) {
            out.push(Issue::new(
                &tk,
                format!(
                    "target {} is under {r}, which the sandbox manages itself; pick another path",
                    norm.display()
                ),
            ));
        } else if seen.contains(&norm) {
            out.push(Issue::new(
                &tk,
                format!(
                    "target {} is mounted twice; keep one mount per target",
                    norm.display()
                ),
            ));
        }
        seen.push(norm);
    }
    for (i, e) in p.filesystem.etc_extra.iter().enumerate() {
        let key = format!("filesystem.etc_extra[{i}]");
        if let Some(m) = etc_entry_problem(e) {
            out.push(Issue::new(key, m));
        }
    }
}

/// Why `path` cannot be a directory root filesystem, if it cannot (lexical: whether it exists,
/// is a directory owned by root and not writable by others is checked when a sandbox starts).
fn rootfs_problem(path: &Path) -> Option<String> {
    let Some(text) = path.to_str() else {
        return Some("path is not valid UTF-8".into());
    };
    if text.is_empty() {
        return Some(
            "path is empty; name a directory holding a root filesystem, e.g. \"/srv/rootfs/debian\", \
             or leave rootfs out for the host's read-only system directories"
                .into(),
        );
    }
    if text.contains('\0') {
        return Some("path contains a NUL byte; remove it".into());
    }
    if !path.is_absolute() {
        return Some(format!(
            "root filesystem path {text:?} must be absolute (start with /)"
        ));
    }
    if has_dotdot(path) {
        return Some(format!(
            "root filesystem path {text:?} must not contain \"..\"; write the real path"
        ));
    }
    let norm: std::path::PathBuf = path.components().collect();
    if norm == Path::new("/") {
        return Some(
            "the host's own root \"/\" cannot be a root filesystem: it would show the whole host; \
             name a directory holding one (e.g. from debootstrap), or leave rootfs out"
                .into(),
        );
    }
    if let Some(r) = RESERVED_TARGETS.iter().find(|r| norm.starts_with(r)) {
        return Some(format!(
            "{} is under {r}, which is not a root filesystem; name a directory holding one",
            norm.display()
        ));
    }
    None
}

fn etc_entry_problem(e: &str) -> Option<String> {
    let path = Path::new(e);
    if e.contains('\0') {
        return Some("entry contains a NUL byte".into());
    }
    if path.is_absolute() {
        return Some(format!(
            "entry {e:?} must be relative to /etc, e.g. \"gitconfig\""
        ));
    }
    if has_dotdot(path) {
        return Some(format!("entry {e:?} must not contain \"..\""));
    }
    let norm: std::path::PathBuf = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    if norm.as_os_str().is_empty() {
        return Some(
            "entry names all of /etc; name the entries you need, e.g. \"gitconfig\"".into(),
        );
    }
    for d in ETC_DENYLIST {
        if norm.starts_with(d) {
            return Some(format!(
                "/etc/{} holds secrets and is never added to the sandbox",
                norm.display()
            ));
        }
        if Path::new(d).starts_with(&norm) {
            return Some(format!(
                "/etc/{} contains /etc/{d}, which holds secrets; name the entries you need inside it instead",
                norm.display()
            ));
        }
    }
    None
}

/// Why `name` is not a usable environment variable name, if it is not.
pub(crate) fn env_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("environment variable name is empty")
    } else if name.contains('=') {
        Some("environment variable name contains '='")
    } else if name.contains('\0') {
        Some("environment variable name contains a NUL byte")
    } else {
        None
    }
}

fn hostname_problem(h: &str) -> Option<String> {
    if h.is_empty() {
        return Some("hostname is empty; use e.g. \"stockade\"".into());
    }
    if h.len() > 253 {
        return Some("hostname is longer than 253 characters".into());
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Some(format!(
                "hostname {h:?} is not valid: each dot-separated label needs 1-63 letters, digits or \
                 '-', not starting or ending with '-'"
            ));
        }
    }
    None
}

fn process(p: &Policy, out: &mut Vec<Issue>) {
    let pr = &p.process;
    for (key, id) in [("process.uid", pr.uid), ("process.gid", pr.gid)] {
        if id == u32::MAX {
            out.push(Issue::new(
                key,
                "4294967295 is the kernel's \"no id\" value (-1); pick another id",
            ));
        }
    }
    if let Some(m) = hostname_problem(&pr.hostname) {
        out.push(Issue::new("process.hostname", m));
    }
    for (k, v) in &pr.env {
        let key = format!("process.env.{k}");
        if let Some(m) = env_name_problem(k) {
            out.push(Issue::new(&key, m));
        }
        if v.contains('\0') {
            out.push(Issue::new(
                &key,
                "environment variable value contains a NUL byte",
            ));
        }
    }
    for (i, name) in pr.env_pass.iter().enumerate() {
        let key = format!("process.env_pass[{i}]");
        if let Some(m) = env_name_problem(name) {
            out.push(Issue::new(key, m));
        } else if pr.env.contains_key(name) {
            out.push(Issue::new(
                key,
                format!(
                    "{name} is both set in process.env and passed through from the host in \
                     process.env_pass; keep one"
                ),
            ));
        }
    }
}

fn limits(p: &Policy, out: &mut Vec<Issue>) {
    let l = &p.limits;
    if l.memory < MIN_MEMORY {
        out.push(Issue::new(
            "limits.memory",
            format!(
                "{} is below the working minimum of 32MiB; raise it",
                l.memory
            ),
        ));
    }
    if l.pids < 8 {
        out.push(Issue::new(
            "limits.pids",
            format!("{} processes is below the minimum of 8; raise it", l.pids),
        ));
    }
    if !(l.cpus.is_finite() && l.cpus > 0.01 && l.cpus <= 1024.0) {
        out.push(Issue::new(
            "limits.cpus",
            format!("cpus = {} is out of range; use a number above 0.01 and at most 1024, e.g. 0.5 or 2", l.cpus),
        ));
    }
    if l.timeout < Duration::from_millis(100) {
        out.push(Issue::new(
            "limits.timeout",
            format!(
                "timeout {} is below the minimum of 100ms; raise it",
                crate::duration::format_duration(l.timeout)
            ),
        ));
    } else if l.timeout > Duration::from_secs(7 * 86_400) {
        out.push(Issue::new(
            "limits.timeout",
            format!(
                "timeout {} is above the maximum of 7d; lower it",
                crate::duration::format_duration(l.timeout)
            ),
        ));
    }
    if l.disk < ByteSize::mib(1) {
        out.push(Issue::new(
            "limits.disk",
            format!("disk {} is below the minimum of 1MiB; raise it", l.disk),
        ));
    }
    if l.max_output < ByteSize::kib(1) {
        out.push(Issue::new(
            "limits.max_output",
            format!(
                "max_output {} is below the minimum of 1KiB; raise it",
                l.max_output
            ),
        ));
    }
    if !(16..=20_000).contains(&l.open_files) {
        out.push(Issue::new(
            "limits.open_files",
            format!(
                "open_files = {} is out of range; use 16 to 20000",
                l.open_files
            ),
        ));
    }
}

fn security(p: &Policy, out: &mut Vec<Issue>) {
    let s = &p.security;
    if s.allow_weaker_isolation {
        return;
    }
    for (key, name, on) in [
        ("security.seccomp", "seccomp", s.seccomp),
        ("security.landlock", "landlock", s.landlock),
    ] {
        if !on {
            out.push(Issue::new(
                key,
                format!(
                    "{name} is turned off, which weakens isolation; set security.allow_weaker_isolation = true \
                     (or pass --allow-weaker-isolation) to accept that, or set {name} = true"
                ),
            ));
        }
    }
}

fn audit(p: &Policy, out: &mut Vec<Issue>) {
    let a = &p.audit;
    for (i, name) in a.redact_env.iter().enumerate() {
        let key = format!("audit.redact_env[{i}]");
        if let Some(m) = env_name_problem(name) {
            out.push(Issue::new(
                key,
                format!("{m}; list variable names only, e.g. \"API_TOKEN\""),
            ));
        } else if a.redact_env[..i].contains(name) {
            out.push(Issue::new(
                key,
                format!("{name} is listed twice in audit.redact_env; keep one"),
            ));
        }
    }
    for (i, path) in a.sensitive.iter().enumerate() {
        if let Some(m) = sensitive_problem(path) {
            out.push(Issue::new(format!("audit.sensitive[{i}]"), m));
        }
    }
}

fn sensitive_problem(path: &Path) -> Option<String> {
    let Some(text) = path.to_str() else {
        return Some("path is not valid UTF-8".into());
    };
    if text.is_empty() {
        return Some(
            "path is empty; name a file or directory, relative to the workspace (e.g. \".env\") \
             or absolute"
                .into(),
        );
    }
    if text.contains('\0') {
        return Some("path contains a NUL byte; remove it".into());
    }
    if has_dotdot(path) {
        return Some(format!(
            "path {text:?} must not contain \"..\"; write it without (relative paths are inside \
             the workspace)"
        ));
    }
    let norm: std::path::PathBuf = path.components().collect();
    if let Some(r) = RESERVED_TARGETS.iter().find(|r| norm.starts_with(r)) {
        return Some(format!(
            "{} is under {r}, which the sandbox manages itself; list a path in the workspace or \
             under a filesystem.mounts target",
            norm.display()
        ));
    }
    None
}

/// The `audit.sensitive` check the caller repeats once it has resolved the workspace directory
/// (`workspace`, absolute): every absolute entry must be the workspace or under it, or under a
/// `filesystem.mounts` target. Lexical, like [`check_workspace_dir`]; relative entries always
/// pass (they are inside the workspace by construction, `..` being refused by validation).
pub fn check_sensitive_paths(p: &Policy, workspace: &Path) -> Result<(), String> {
    let ws: std::path::PathBuf = workspace.components().collect();
    for (i, path) in p.audit.sensitive.iter().enumerate() {
        if !path.is_absolute() {
            continue;
        }
        let norm: std::path::PathBuf = path.components().collect();
        let inside = norm.starts_with(&ws)
            || p.filesystem.mounts.iter().any(|m| {
                let t: std::path::PathBuf = m.target().components().collect();
                norm.starts_with(t)
            });
        if !inside {
            return Err(format!(
                "audit.sensitive[{i}]: {} is neither in the workspace {} nor under a \
                 filesystem.mounts target, so the sandbox cannot read it; make it relative to the \
                 workspace, or add a mount that covers it",
                norm.display(),
                ws.display()
            ));
        }
    }
    Ok(())
}
