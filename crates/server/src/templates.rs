//! Templates: a name → a policy (and optionally a root filesystem directory). `base` is built
//! in: the default policy with a `tmp` workspace, so nothing of the host is writable, and no
//! network. Others are added with `stockade template add` and kept in SQLite.
//!
//! Policies given inline in a create request are hostile input: they may shape the sandbox
//! (limits, network allowlist, env, seccomp/landlock on) but may not reach anything of the
//! host or of the server — no workspace path or host-backed workspace mode, no extra mounts,
//! no root filesystem, no `env_pass` (the server's environment), no secrets (read from the
//! server's environment or files), no `allow_private` networks or static `hosts` (the API
//! itself listens on a private address), no weaker isolation, no accepting gVisor for untrusted
//! code (`security.allow_gvisor_for_untrusted`), no isolation level below the template's, and no
//! switching the audit off. An administrator's template may do all of that (templates carry
//! `level` and `trust` like any policy).

use crate::error::ApiError;
use crate::store::{Store, TemplateRow, valid_template_name};
use std::path::Path;
use stockade_policy::{Policy, WorkspaceMode};

/// The built-in template.
pub const BASE: &str = "base";

/// Largest inline policy accepted (bytes).
pub const MAX_INLINE_POLICY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "template names are 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    BadName,
    #[error("`base` is built in and cannot be added or removed")]
    Builtin,
    #[error("template {0} already exists (remove it first with `stockade template rm {0}`)")]
    Exists(String),
    #[error("no template {0} (see `stockade template ls`)")]
    NoSuchTemplate(String),
    #[error("{0}")]
    Policy(String),
    #[error("--rootfs {path}: {message}")]
    Rootfs { path: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The `base` policy.
pub fn base_policy() -> Policy {
    let mut p = Policy::default();
    p.workspace.mode = WorkspaceMode::Tmp;
    p.workspace.path = None;
    p
}

/// Parses a policy TOML for serve: `workspace.mode` defaults to `tmp` (a server has no
/// meaningful current directory to expose), and `rootfs`, when given, is set as
/// `filesystem.rootfs`. Errors carry `origin:line:col`.
pub fn parse(src: &str, origin: &str, rootfs: Option<&str>) -> Result<Policy, String> {
    let table: toml::Table = match toml::from_str(src) {
        Ok(t) => t,
        // Let the policy parser report the syntax error with its position.
        Err(_) => return Policy::from_toml(src, origin).map_err(|e| e.to_string()),
    };
    let has_mode = table
        .get("workspace")
        .and_then(|w| w.as_table())
        .is_some_and(|w| w.contains_key("mode"));
    let mut policy = match rootfs {
        None => Policy::from_toml(src, origin).map_err(|e| e.to_string())?,
        Some(dir) => {
            let mut t = table.clone();
            let fs = t
                .entry("filesystem")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(fs) = fs.as_table_mut() else {
                return Err(format!("{origin}: filesystem must be a table"));
            };
            fs.insert("rootfs".into(), toml::Value::String(dir.to_string()));
            let merged = toml::to_string(&t).map_err(|e| format!("{origin}: {e}"))?;
            Policy::from_toml(&merged, origin).map_err(|e| e.to_string())?
        }
    };
    if !has_mode {
        policy.workspace.mode = WorkspaceMode::Tmp;
    }
    Ok(policy)
}

/// An inline policy from a create request: parsed (400 with line:col) and checked to reach
/// nothing of the host or the server (400 naming the key). It stands in for `base`.
pub fn inline_policy(src: &str) -> Result<Policy, ApiError> {
    inline_policy_over(src, BASE, &base_policy())
}

/// [`inline_policy`] in place of template `template_name` (`template`): besides the other
/// refusals, it may not lower the isolation level below the template's. One that states neither
/// `level` nor `trust` takes the template's (and the template's
/// `security.allow_gvisor_for_untrusted`, an operator's decision); one that states either must
/// ask for at least the template's weakest level (`Policy::minimum_level`).
pub fn inline_policy_over(
    src: &str,
    template_name: &str,
    template: &Policy,
) -> Result<Policy, ApiError> {
    let mut policy = inline_checked(src)?;
    if policy.level.is_none() && policy.trust.is_none() {
        policy.level = template.level;
        policy.trust = template.trust;
        policy.security.allow_gvisor_for_untrusted = template.security.allow_gvisor_for_untrusted;
        return Ok(policy);
    }
    let floor = template.minimum_level();
    if policy.minimum_level() < floor {
        let key = if policy.level.is_some() {
            "level"
        } else {
            "trust"
        };
        let asked = match (policy.level, policy.trust) {
            (Some(l), _) => format!("level = {:?}", l.as_str()),
            (None, Some(t)) => format!("trust = {:?}", t.as_str()),
            (None, None) => String::new(),
        };
        return Err(ApiError::BadRequest(format!(
            "policy: {key}: not allowed in an inline policy ({asked} is weaker than template \
             {template_name:?}, which runs at {} or stronger); ask for at least that, or leave \
             level and trust out to take the template's",
            floor.as_str()
        )));
    }
    Ok(policy)
}

fn inline_checked(src: &str) -> Result<Policy, ApiError> {
    if src.len() > MAX_INLINE_POLICY {
        return Err(ApiError::TooLarge(format!(
            "policy: {} bytes, the limit is {MAX_INLINE_POLICY}",
            src.len()
        )));
    }
    let policy = parse(src, "policy", None).map_err(ApiError::BadRequest)?;
    // Keys whose presence alone is refused (checked on the document: some have no field yet).
    let table: toml::Table =
        toml::from_str(src).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let has = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(|s| s.as_table())
            .is_some_and(|s| s.contains_key(key))
    };
    let refuse = |key: &str, why: &str| {
        Err(ApiError::BadRequest(format!(
            "policy: {key}: not allowed in an inline policy ({why}); an administrator can put it in a template (`stockade template add`)"
        )))
    };
    if has("workspace", "path") || policy.workspace.mode != WorkspaceMode::Tmp {
        return refuse(
            "workspace",
            "only a `tmp` workspace: a request may not expose a host directory",
        );
    }
    if !policy.filesystem.mounts.is_empty() {
        return refuse("filesystem.mounts", "host paths");
    }
    if has("filesystem", "rootfs") {
        return refuse("filesystem.rootfs", "a host directory");
    }
    if !policy.process.env_pass.is_empty() {
        return refuse("process.env_pass", "the server's environment");
    }
    if !policy.secrets.is_empty() {
        return refuse("secrets", "they read the server's environment or files");
    }
    if !policy.network.allow_private.is_empty() {
        return refuse(
            "network.allow_private",
            "the API server listens on a private address",
        );
    }
    if !policy.network.hosts.is_empty() {
        return refuse("network.hosts", "static addresses");
    }
    if policy.security.allow_weaker_isolation {
        return refuse("security.allow_weaker_isolation", "weaker isolation");
    }
    if policy.security.allow_gvisor_for_untrusted {
        return refuse(
            "security.allow_gvisor_for_untrusted",
            "accepting gVisor for untrusted code is the operator's decision",
        );
    }
    if !policy.security.seccomp || !policy.security.landlock {
        return refuse("security", "seccomp and landlock stay on");
    }
    if !policy.audit.enabled {
        return refuse("audit.enabled", "every sandbox is audited");
    }
    Ok(policy)
}

/// The policy of template `name` (`base` or a stored one). 400 for an unknown name.
pub fn policy_of(store: &Store, name: &str) -> Result<Policy, ApiError> {
    if name == BASE {
        return Ok(base_policy());
    }
    let row = if valid_template_name(name) {
        store.template(name)?
    } else {
        None
    };
    let Some(row) = row else {
        return Err(ApiError::BadRequest(format!(
            "no template {name:?} (the server has `base` and those added with `stockade template add`)"
        )));
    };
    parse(
        &row.policy,
        &format!("template {name}"),
        row.rootfs.as_deref(),
    )
    .map_err(|e| {
        tracing::error!(template = name, error = %e, "stored template no longer parses");
        ApiError::Internal(format!(
            "template {name} is stored with a policy this server cannot use: {e}"
        ))
    })
}

/// `stockade template add NAME --policy FILE [--rootfs DIR]`: checks everything, then stores.
pub fn add(
    store: &Store,
    name: &str,
    policy_src: &str,
    policy_origin: &str,
    rootfs: Option<&Path>,
) -> Result<TemplateRow, TemplateError> {
    if name == BASE {
        return Err(TemplateError::Builtin);
    }
    if !valid_template_name(name) {
        return Err(TemplateError::BadName);
    }
    let rootfs = match rootfs {
        None => None,
        Some(p) => Some(check_rootfs(p)?),
    };
    let policy =
        parse(policy_src, policy_origin, rootfs.as_deref()).map_err(TemplateError::Policy)?;
    if policy.workspace.mode != WorkspaceMode::Tmp && policy.workspace.path.is_none() {
        return Err(TemplateError::Policy(format!(
            "{policy_origin}: workspace.mode = {:?} needs a workspace.path (the server's current directory is not a workspace); or leave workspace.mode out for an empty tmp workspace",
            policy.workspace.mode.as_str()
        )));
    }
    if let Some(p) = &policy.workspace.path
        && policy.workspace.mode != WorkspaceMode::Tmp
        && p.is_relative()
    {
        return Err(TemplateError::Policy(format!(
            "{policy_origin}: workspace.path must be absolute in a template"
        )));
    }
    let row = TemplateRow {
        name: name.to_string(),
        policy: policy_src.to_string(),
        rootfs,
        created_at: crate::service::rfc3339(std::time::SystemTime::now()),
    };
    if !store.insert_template(&row)? {
        return Err(TemplateError::Exists(name.to_string()));
    }
    Ok(row)
}

pub fn remove(store: &Store, name: &str) -> Result<(), TemplateError> {
    if name == BASE {
        return Err(TemplateError::Builtin);
    }
    if !store.remove_template(name)? {
        return Err(TemplateError::NoSuchTemplate(name.to_string()));
    }
    Ok(())
}

fn check_rootfs(p: &Path) -> Result<String, TemplateError> {
    let err = |m: &str| TemplateError::Rootfs {
        path: p.display().to_string(),
        message: m.to_string(),
    };
    let abs = std::fs::canonicalize(p).map_err(|e| err(&e.to_string()))?;
    if !abs.is_dir() {
        return Err(err("not a directory"));
    }
    if abs == Path::new("/") {
        return Err(err(
            "the host's / is what `base` already shows; give an unpacked root filesystem",
        ));
    }
    abs.to_str()
        .map(String::from)
        .ok_or_else(|| err("not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_tmp_without_network() {
        let p = base_policy();
        assert_eq!(p.workspace.mode, WorkspaceMode::Tmp);
        assert_eq!(p.network.mode, stockade_policy::NetworkMode::None);
    }

    #[test]
    fn inline_policies() {
        let p = inline_policy("[limits]\nmemory = \"256MiB\"\n").unwrap();
        assert_eq!(p.workspace.mode, WorkspaceMode::Tmp);
        let e = inline_policy("[limits]\nmemory = \"lots\"\n").unwrap_err();
        assert_eq!(e.code(), "bad_request");
        assert!(e.message().starts_with("policy:2:"), "{}", e.message());
        let e = inline_policy("[limits\n").unwrap_err();
        assert!(e.message().starts_with("policy:1:"), "{}", e.message());
        for bad in [
            "[workspace]\npath = \"/srv/project\"\n",
            "[filesystem]\nrootfs = \"/srv/rootfs\"\n",
            "[network]\nmode = \"allowlist\"\nallow = [\"example.com\"]\n[secrets.T]\nfrom_env = \"HOME\"\nhosts = [\"example.com\"]\n",
            "[network]\nmode = \"allowlist\"\nallow = [\"example.com\"]\nallow_private = [\"127.0.0.1/32\"]\n",
            "[workspace]\nmode = \"rw\"\n",
            "[[filesystem.mounts]]\nhost = \"/etc\"\n",
            "[process]\nenv_pass = [\"HOME\"]\n",
            "[security]\nallow_weaker_isolation = true\n",
            "[security]\nallow_gvisor_for_untrusted = true\n",
            "trust = \"untrusted\"\nlevel = \"gvisor\"\n[security]\nallow_gvisor_for_untrusted = true\n",
            "[audit]\nenabled = false\n",
        ] {
            let e = inline_policy(bad).unwrap_err();
            assert!(
                e.message().contains("not allowed in an inline policy"),
                "{bad}: {}",
                e.message()
            );
        }
        assert_eq!(
            inline_policy(&"#".repeat(MAX_INLINE_POLICY + 1))
                .unwrap_err()
                .code(),
            "too_large"
        );
    }

    #[test]
    fn inline_levels() {
        use stockade_policy::{Level, Trust};
        // Against base: any level or trust, stronger is fine; emulation is not a weakening.
        let p =
            inline_policy("trust = \"untrusted\"\n[security]\nallow_emulated = true\n").unwrap();
        assert_eq!((p.level, p.trust), (None, Some(Trust::Untrusted)));
        assert!(p.security.allow_emulated);
        assert_eq!(
            inline_policy("level = \"microvm\"\n").unwrap().level,
            Some(Level::Microvm)
        );
        assert_eq!(
            inline_policy("level = \"container\"\n").unwrap().level,
            Some(Level::Container)
        );
        // The key named in the refusal.
        let e = inline_policy("[security]\nallow_gvisor_for_untrusted = true\n").unwrap_err();
        assert_eq!(e.code(), "bad_request");
        assert!(
            e.message().starts_with(
                "policy: security.allow_gvisor_for_untrusted: not allowed in an inline policy"
            ),
            "{}",
            e.message()
        );
        // Explicitly false is the default: accepted.
        inline_policy("[security]\nallow_gvisor_for_untrusted = false\n").unwrap();
        // A level weaker than the trust: the policy's own error, with its position.
        let e = inline_policy("trust = \"untrusted\"\nlevel = \"container\"\n").unwrap_err();
        assert!(
            e.message()
                .starts_with("policy:2:9: level: level \"container\" is weaker"),
            "{}",
            e.message()
        );

        // In place of a template with trust = "untrusted": not lowered.
        let tpl = parse("trust = \"untrusted\"\n", "t.toml", None).unwrap();
        for (src, key) in [
            ("level = \"container\"\n", "level"),
            ("level = \"gvisor\"\n", "level"),
            ("trust = \"trusted\"\n", "trust"),
            ("trust = \"internal\"\n", "trust"),
        ] {
            let e = inline_policy_over(src, "py", &tpl).unwrap_err();
            assert_eq!(e.code(), "bad_request");
            assert!(
                e.message()
                    .starts_with(&format!("policy: {key}: not allowed in an inline policy ("))
                    && e.message()
                        .contains("weaker than template \"py\", which runs at microvm or stronger"),
                "{src}: {}",
                e.message()
            );
        }
        // Stating the same or more is fine; stating nothing takes the template's.
        for src in [
            "level = \"microvm\"\n",
            "trust = \"untrusted\"\n",
            "trust = \"trusted\"\nlevel = \"microvm\"\n",
        ] {
            let p = inline_policy_over(src, "py", &tpl).unwrap();
            assert_eq!(p.minimum_level(), Level::Microvm, "{src}");
        }
        let p = inline_policy_over("[limits]\npids = 64\n", "py", &tpl).unwrap();
        assert_eq!(
            (p.level, p.trust, p.limits.pids),
            (None, Some(Trust::Untrusted), 64)
        );
        // A template whose operator accepted gVisor for untrusted code: gvisor is its floor,
        // and an inline policy that states nothing inherits the acceptance.
        let tpl = parse(
            "trust = \"untrusted\"\n[security]\nallow_gvisor_for_untrusted = true\n",
            "t.toml",
            None,
        )
        .unwrap();
        assert_eq!(
            inline_policy_over("level = \"gvisor\"\n", "g", &tpl)
                .unwrap()
                .level,
            Some(Level::Gvisor)
        );
        assert!(inline_policy_over("level = \"container\"\n", "g", &tpl).is_err());
        let p = inline_policy_over("", "g", &tpl).unwrap();
        assert!(p.security.allow_gvisor_for_untrusted);
        assert_eq!(p.minimum_level(), Level::Gvisor);
        // Templates carry level and trust.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        add(
            &s,
            "vm",
            "trust = \"untrusted\"\n[security]\nallow_emulated = true\n",
            "vm.toml",
            None,
        )
        .unwrap();
        let p = policy_of(&s, "vm").unwrap();
        assert_eq!(
            (p.trust, p.security.allow_emulated),
            (Some(Trust::Untrusted), true)
        );
        let e = add(
            &s,
            "bad",
            "trust = \"internal\"\nlevel = \"container\"\n",
            "bad.toml",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("bad.toml:2:9: level:"), "{e}");
    }

    #[test]
    fn add_ls_rm() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        assert!(matches!(
            add(&s, "base", "", "f", None),
            Err(TemplateError::Builtin)
        ));
        assert!(matches!(
            add(&s, "Bad/Name", "", "f", None),
            Err(TemplateError::BadName)
        ));
        let e = add(&s, "py", "[limits]\nmemory = 1\n", "py.toml", None).unwrap_err();
        assert!(e.to_string().starts_with("py.toml:2:"), "{e}");
        let e = add(&s, "py", "[workspace]\nmode = \"rw\"\n", "py.toml", None).unwrap_err();
        assert!(e.to_string().contains("needs a workspace.path"), "{e}");
        add(&s, "py", "[limits]\nmemory = \"1GiB\"\n", "py.toml", None).unwrap();
        assert!(matches!(
            add(&s, "py", "", "f", None),
            Err(TemplateError::Exists(_))
        ));
        assert_eq!(policy_of(&s, "py").unwrap().limits.memory.0, 1 << 30);
        assert_eq!(
            policy_of(&s, "py").unwrap().workspace.mode,
            WorkspaceMode::Tmp
        );
        assert_eq!(policy_of(&s, "nope").unwrap_err().code(), "bad_request");
        assert!(matches!(
            add(&s, "r", "", "f", Some(Path::new("/nonexistent-rootfs"))),
            Err(TemplateError::Rootfs { .. })
        ));
        // A root filesystem directory becomes the policy's filesystem.rootfs.
        let root = tempfile::tempdir().unwrap();
        add(
            &s,
            "deb",
            "[limits]\npids = 64\n",
            "deb.toml",
            Some(root.path()),
        )
        .unwrap();
        let p = policy_of(&s, "deb").unwrap();
        assert_eq!(
            p.filesystem.rootfs.as_deref(),
            Some(std::fs::canonicalize(root.path()).unwrap().as_path())
        );
        assert_eq!(p.limits.pids, 64);
        assert!(matches!(
            add(&s, "slash", "", "f", Some(Path::new("/"))),
            Err(TemplateError::Rootfs { .. })
        ));
        remove(&s, "py").unwrap();
        assert!(matches!(
            remove(&s, "py"),
            Err(TemplateError::NoSuchTemplate(_))
        ));
        assert!(matches!(remove(&s, "base"), Err(TemplateError::Builtin)));
    }
}
