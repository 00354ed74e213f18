//! The TOML front door: parse with spans, walk the document against the schema, keep the span
//! of every key and value so later validation errors point at the line and column.
//!
//! The walk deserializes each value on its own (through toml's `ValueDeserializer`, which keeps
//! absolute spans), so one bad value does not hide the next: all unknown keys and all type errors
//! are reported together. Only a TOML syntax error stops the walk, since nothing after it can be
//! trusted.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{PolicyError, at_span};
use crate::model::{Mount, Policy};

/// Key path (`limits.memory`, `filesystem.mounts[0].host`, `process.env.NAME`) → byte span.
pub(crate) type SpanMap = BTreeMap<String, Range<usize>>;

/// Valid keys per table, in the order `to_toml` writes them.
pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "level",
    "trust",
    "workspace",
    "filesystem",
    "process",
    "limits",
    "security",
    "network",
    "audit",
    "secrets",
];
pub(crate) const WORKSPACE_KEYS: &[&str] = &["path", "mode", "protect_git", "allow_system_path"];
pub(crate) const FILESYSTEM_KEYS: &[&str] = &["rootfs", "mounts", "etc_extra"];
pub(crate) const MOUNT_KEYS: &[&str] = &["host", "path", "mode"];
pub(crate) const PROCESS_KEYS: &[&str] = &["uid", "gid", "hostname", "env", "env_pass"];
pub(crate) const LIMITS_KEYS: &[&str] = &[
    "memory",
    "swap",
    "cpus",
    "pids",
    "timeout",
    "disk",
    "max_output",
    "open_files",
];
pub(crate) const SECURITY_KEYS: &[&str] = &[
    "seccomp",
    "landlock",
    "allow_weaker_isolation",
    "allow_emulated",
    "allow_gvisor_for_untrusted",
];
pub(crate) const NETWORK_KEYS: &[&str] = &[
    "mode",
    "allow",
    "deny",
    "allow_private",
    "allow_open",
    "hosts",
];
pub(crate) const AUDIT_KEYS: &[&str] = &["enabled", "redact_env", "sensitive"];
pub(crate) const SECRET_KEYS: &[&str] = &["from_env", "from_file", "hosts", "in"];

type Val<'i> = Spanned<DeValue<'i>>;

struct Walk<'a> {
    src: &'a str,
    origin: &'a str,
    spans: SpanMap,
    errors: Vec<PolicyError>,
}

/// Parse `src` into a policy (defaults for absent keys), the span map, and the errors found
/// while reading it (syntax, unknown keys, wrong types). Validation is not done here.
pub(crate) fn read(src: &str, origin: &str) -> (Policy, SpanMap, Vec<PolicyError>) {
    let mut w = Walk {
        src,
        origin,
        spans: SpanMap::new(),
        errors: Vec::new(),
    };
    let mut p = Policy::default();
    let root = match DeTable::parse(src) {
        Ok(root) => root,
        Err(e) => {
            let msg = format!("invalid TOML: {}", e.message().trim_end());
            w.errors.push(at_span(src, origin, e.span(), None, msg));
            return (p, w.spans, w.errors);
        }
    };
    for (k, v) in root.get_ref() {
        let name: &str = k.get_ref();
        match name {
            "version" => w.field(&mut p.version, "version", v),
            "level" => w.field(&mut p.level, "level", v),
            "trust" => w.field(&mut p.trust, "trust", v),
            "workspace" => w.table("workspace", v, WORKSPACE_KEYS, |w, k, v| match k {
                "path" => w.field(&mut p.workspace.path, "workspace.path", v),
                "mode" => w.field(&mut p.workspace.mode, "workspace.mode", v),
                "protect_git" => w.field(&mut p.workspace.protect_git, "workspace.protect_git", v),
                _ => w.field(
                    &mut p.workspace.allow_system_path,
                    "workspace.allow_system_path",
                    v,
                ),
            }),
            "filesystem" => w.table("filesystem", v, FILESYSTEM_KEYS, |w, k, v| match k {
                "rootfs" => w.field(&mut p.filesystem.rootfs, "filesystem.rootfs", v),
                "mounts" => w.mounts(&mut p.filesystem.mounts, v),
                _ => {
                    w.field(&mut p.filesystem.etc_extra, "filesystem.etc_extra", v);
                    w.element_spans("filesystem.etc_extra", v);
                }
            }),
            "process" => w.table("process", v, PROCESS_KEYS, |w, k, v| match k {
                "uid" => w.field(&mut p.process.uid, "process.uid", v),
                "gid" => w.field(&mut p.process.gid, "process.gid", v),
                "hostname" => w.field(&mut p.process.hostname, "process.hostname", v),
                "env" => {
                    w.field(&mut p.process.env, "process.env", v);
                    if let DeValue::Table(t) = v.get_ref() {
                        for (ek, _) in t {
                            w.spans
                                .insert(format!("process.env.{}", ek.get_ref()), ek.span());
                        }
                    }
                }
                _ => {
                    w.field(&mut p.process.env_pass, "process.env_pass", v);
                    w.element_spans("process.env_pass", v);
                }
            }),
            "limits" => w.table("limits", v, LIMITS_KEYS, |w, k, v| {
                let l = &mut p.limits;
                match k {
                    "memory" => w.field(&mut l.memory, "limits.memory", v),
                    "swap" => w.field(&mut l.swap, "limits.swap", v),
                    "cpus" => w.field(&mut l.cpus, "limits.cpus", v),
                    "pids" => w.field(&mut l.pids, "limits.pids", v),
                    "timeout" => w.duration(&mut l.timeout, "limits.timeout", v),
                    "disk" => w.field(&mut l.disk, "limits.disk", v),
                    "max_output" => w.field(&mut l.max_output, "limits.max_output", v),
                    _ => w.field(&mut l.open_files, "limits.open_files", v),
                }
            }),
            "security" => w.table("security", v, SECURITY_KEYS, |w, k, v| match k {
                "seccomp" => w.field(&mut p.security.seccomp, "security.seccomp", v),
                "landlock" => w.field(&mut p.security.landlock, "security.landlock", v),
                "allow_emulated" => {
                    w.field(&mut p.security.allow_emulated, "security.allow_emulated", v)
                }
                "allow_gvisor_for_untrusted" => w.field(
                    &mut p.security.allow_gvisor_for_untrusted,
                    "security.allow_gvisor_for_untrusted",
                    v,
                ),
                _ => w.field(
                    &mut p.security.allow_weaker_isolation,
                    "security.allow_weaker_isolation",
                    v,
                ),
            }),
            "network" => w.table("network", v, NETWORK_KEYS, |w, k, v| {
                let n = &mut p.network;
                match k {
                    "mode" => w.field(&mut n.mode, "network.mode", v),
                    "allow" => w.list(&mut n.allow, "network.allow", v),
                    "deny" => w.list(&mut n.deny, "network.deny", v),
                    "allow_private" => w.list(&mut n.allow_private, "network.allow_private", v),
                    "allow_open" => w.field(&mut n.allow_open, "network.allow_open", v),
                    _ => w.hosts(&mut n.hosts, v),
                }
            }),
            "audit" => w.table("audit", v, AUDIT_KEYS, |w, k, v| match k {
                "enabled" => w.field(&mut p.audit.enabled, "audit.enabled", v),
                "redact_env" => {
                    w.field(&mut p.audit.redact_env, "audit.redact_env", v);
                    w.element_spans("audit.redact_env", v);
                }
                _ => {
                    w.field(&mut p.audit.sensitive, "audit.sensitive", v);
                    w.element_spans("audit.sensitive", v);
                }
            }),
            "secrets" => w.secrets(&mut p.secrets, v),
            _ => w.unknown("", name, k.span(), TOP_KEYS),
        }
    }
    (p, w.spans, w.errors)
}

impl Walk<'_> {
    fn push(&mut self, span: Range<usize>, key: &str, message: String) {
        let key = (!key.is_empty()).then(|| key.to_string());
        self.errors
            .push(at_span(self.src, self.origin, Some(span), key, message));
    }

    fn unknown(&mut self, table: &str, name: &str, span: Range<usize>, valid: &[&str]) {
        let (key, place) = if table.is_empty() {
            (name.to_string(), "at the top level".to_string())
        } else {
            let place = if table.contains('[') {
                format!("in {table}")
            } else {
                format!("in [{table}]")
            };
            (format!("{table}.{name}"), place)
        };
        let msg = format!(
            "unknown key `{name}` {place}; valid keys are: {}",
            valid.join(", ")
        );
        self.push(span, &key, msg);
    }

    /// Deserialize one value into `slot`, recording its span; on error leave the default.
    fn field<T: DeserializeOwned>(&mut self, slot: &mut T, key: &str, v: &Val<'_>) {
        self.spans.insert(key.to_string(), v.span());
        match T::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(x) => *slot = x,
            Err(e) => {
                let span = e.span().unwrap_or_else(|| v.span());
                self.push(span, key, e.message().trim_end().to_string());
            }
        }
    }

    fn duration(&mut self, slot: &mut std::time::Duration, key: &str, v: &Val<'_>) {
        self.spans.insert(key.to_string(), v.span());
        match crate::duration::humane::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(x) => *slot = x,
            Err(e) => {
                let span = e.span().unwrap_or_else(|| v.span());
                self.push(span, key, e.message().trim_end().to_string());
            }
        }
    }

    /// Walk a section: it must be a table; unknown keys are errors; known keys go to `each`
    /// (which may rely on `k` being one of `valid`).
    fn table<'i>(
        &mut self,
        name: &str,
        v: &Val<'i>,
        valid: &[&str],
        mut each: impl FnMut(&mut Self, &str, &Val<'i>),
    ) {
        self.spans.insert(name.to_string(), v.span());
        let DeValue::Table(t) = v.get_ref() else {
            let msg = format!(
                "`{name}` must be a table ([{name}]), not {}",
                v.get_ref().type_str()
            );
            self.push(v.span(), name, msg);
            return;
        };
        for (k, val) in t {
            let key: &str = k.get_ref();
            if valid.contains(&key) {
                each(self, key, val);
            } else {
                self.unknown(name, key, k.span(), valid);
            }
        }
    }

    fn element_spans(&mut self, key: &str, v: &Val<'_>) {
        if let DeValue::Array(a) = v.get_ref() {
            for (i, el) in a.iter().enumerate() {
                self.spans.insert(format!("{key}[{i}]"), el.span());
            }
        }
    }

    /// An array of strings, with the span of each element.
    fn list(&mut self, slot: &mut Vec<String>, key: &str, v: &Val<'_>) {
        self.field(slot, key, v);
        self.element_spans(key, v);
    }

    /// `[network.hosts]`: entry by entry, so each value that is not a string is reported at its
    /// place and the good entries are kept. Spans are recorded at each entry's name.
    fn hosts(&mut self, slot: &mut BTreeMap<String, String>, v: &Val<'_>) {
        let DeValue::Table(t) = v.get_ref() else {
            self.field(slot, "network.hosts", v);
            return;
        };
        self.spans.insert("network.hosts".into(), v.span());
        let mut out = BTreeMap::new();
        for (k, val) in t {
            let key = format!("network.hosts.{}", k.get_ref());
            self.spans.insert(key.clone(), k.span());
            match String::deserialize(ValueDeserializer::from(val.clone())) {
                Ok(ip) => {
                    out.insert(k.get_ref().to_string(), ip);
                }
                Err(_) => self.push(
                    val.span(),
                    &key,
                    format!(
                        "the address must be a string such as \"127.0.0.1\", not {}",
                        val.get_ref().type_str()
                    ),
                ),
            }
        }
        *slot = out;
    }

    /// `[secrets.NAME]` tables, one by one: each unknown key and bad value is reported at its
    /// place and the good entries are kept.
    fn secrets(&mut self, slot: &mut BTreeMap<String, crate::model::Secret>, v: &Val<'_>) {
        self.spans.insert("secrets".into(), v.span());
        let DeValue::Table(t) = v.get_ref() else {
            let msg = format!(
                "`secrets` must be a table of [secrets.NAME] tables, not {}",
                v.get_ref().type_str()
            );
            self.push(v.span(), "secrets", msg);
            return;
        };
        let mut out = BTreeMap::new();
        for (k, val) in t {
            let name: &str = k.get_ref();
            let key = format!("secrets.{name}");
            self.spans.insert(key.clone(), k.span());
            let mut s = crate::model::Secret::default();
            let DeValue::Table(fields) = val.get_ref() else {
                let msg = format!(
                    "[secrets.{name}] must be a table with from_env or from_file, hosts and in,                      not {}",
                    val.get_ref().type_str()
                );
                self.push(val.span(), &key, msg);
                continue;
            };
            for (fk, fv) in fields {
                let f: &str = fk.get_ref();
                let fkey = format!("{key}.{f}");
                match f {
                    "from_env" => self.field(&mut s.from_env, &fkey, fv),
                    "from_file" => self.field(&mut s.from_file, &fkey, fv),
                    "hosts" => self.list(&mut s.hosts, &fkey, fv),
                    "in" => {
                        self.field(&mut s.places, &fkey, fv);
                        self.element_spans(&fkey, fv);
                    }
                    _ => self.unknown(&key, f, fk.span(), SECRET_KEYS),
                }
            }
            out.insert(name.to_string(), s);
        }
        *slot = out;
    }

    /// Mounts one by one, so each bad entry is reported with its index and the good ones kept.
    fn mounts(&mut self, slot: &mut Vec<Mount>, v: &Val<'_>) {
        let DeValue::Array(a) = v.get_ref() else {
            // Not an array: let serde produce the type error.
            self.field(slot, "filesystem.mounts", v);
            return;
        };
        self.spans.insert("filesystem.mounts".into(), v.span());
        let mut out = Vec::new();
        for (i, el) in a.iter().enumerate() {
            // Errors name the entry's place in the file (`[i]`); spans are recorded under its
            // index in the parsed policy (`[j]`), which differs once an earlier entry is dropped.
            let file_key = format!("filesystem.mounts[{i}]");
            let policy_key = format!("filesystem.mounts[{}]", out.len());
            let mut spans = vec![(policy_key, el.span())];
            let mut clean = true;
            if let DeValue::Table(t) = el.get_ref() {
                for (k, fv) in t {
                    let name: &str = k.get_ref();
                    if MOUNT_KEYS.contains(&name) {
                        spans.push((format!("{}.{name}", spans[0].0), fv.span()));
                    } else {
                        self.unknown(&file_key, name, k.span(), MOUNT_KEYS);
                        clean = false;
                    }
                }
            }
            if !clean {
                continue;
            }
            match Mount::deserialize(ValueDeserializer::from(el.clone())) {
                Ok(m) => {
                    out.push(m);
                    self.spans.extend(spans);
                }
                Err(e) => {
                    let span = e.span().unwrap_or_else(|| el.span());
                    self.push(span, &file_key, e.message().trim_end().to_string());
                }
            }
        }
        *slot = out;
    }
}

/// The span for an issue key: the key itself, else the nearest enclosing key that has one.
pub(crate) fn find_span(spans: &SpanMap, key: &str) -> Option<Range<usize>> {
    let mut k = key;
    loop {
        if let Some(s) = spans.get(k) {
            return Some(s.clone());
        }
        let cut = k.rfind(['.', '['])?;
        k = &k[..cut];
    }
}
