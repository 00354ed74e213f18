//! `stockade policy show`: the effective policy as commented TOML, and the one-line description
//! of every default that `stockade run --help` prints. Both read [`describe_defaults`], so the
//! help text and the file comments cannot drift apart; the defaults themselves come from
//! `Policy::default()`.

use std::fmt::Write as _;
use std::path::Path;

use crate::duration::format_duration;
use crate::model::{Mount, Policy};

/// What each key means, in file order. The default value is filled in from `Policy::default()`.
const MEANINGS: &[(&str, &str)] = &[
    ("version", "policy format version; only 1 exists"),
    (
        "level",
        "isolation level: container (namespaces, seccomp, Landlock; shares the host kernel), gvisor (the system's runsc: a user-space kernel) or microvm (QEMU -M microvm: its own kernel); left out, the trust level picks it (--level)",
    ),
    (
        "trust",
        "who wrote the code: trusted (container or stronger), internal (gvisor or microvm), untrusted (microvm, or gvisor with security.allow_gvisor_for_untrusted); refused when this host cannot give it, never a silent fallback (--trust)",
    ),
    (
        "workspace.path",
        "host directory that is the workspace, mounted at the same path inside; relative to the policy's base directory",
    ),
    (
        "workspace.mode",
        "how the workspace appears: rw (writable), ro, overlay (changes staged and listed, host untouched), tmp (empty)",
    ),
    (
        "workspace.protect_git",
        "keep .git/hooks and .git/config read-only inside a writable workspace",
    ),
    (
        "workspace.allow_system_path",
        "allow /, your home directory, /etc, /usr and other system directories as the workspace",
    ),
    (
        "filesystem.rootfs",
        "a directory root filesystem (absolute host path, e.g. from debootstrap or an unpacked OCI image, owned by root and not writable by others): the read-only lower layer of the sandbox's root instead of the host's /usr, /bin, /lib and curated /etc (--rootfs)",
    ),
    (
        "filesystem.mounts",
        "extra host paths: { host = \"/abs\", path = \"/inside\", mode = \"ro\" | \"rw\" }; read-only unless mode = \"rw\"; path defaults to host",
    ),
    (
        "filesystem.etc_extra",
        "extra /etc entries (relative names like \"gitconfig\") added to the curated /etc; secrets are refused",
    ),
    ("process.uid", "user id inside the sandbox"),
    ("process.gid", "group id inside the sandbox"),
    ("process.hostname", "hostname inside the sandbox"),
    (
        "process.env",
        "extra environment variables, NAME = \"value\"",
    ),
    (
        "process.env_pass",
        "host environment variables passed through by name (LANG, TERM, TZ are passed anyway; PATH and HOME are the sandbox's own)",
    ),
    (
        "limits.memory",
        "memory limit (cgroup), e.g. \"512MiB\", \"2GiB\"",
    ),
    ("limits.swap", "swap the sandbox may use on top of memory"),
    ("limits.cpus", "CPU limit in cores, e.g. 0.5 or 2.0"),
    ("limits.pids", "maximum number of processes and threads"),
    (
        "limits.timeout",
        "wall-clock limit per run, e.g. \"30s\", \"1h30m\"",
    ),
    ("limits.disk", "everything the sandbox can write, in total"),
    (
        "limits.max_output",
        "bytes of stdout plus stderr kept and streamed",
    ),
    (
        "limits.open_files",
        "open file descriptors per process (RLIMIT_NOFILE)",
    ),
    (
        "security.seccomp",
        "seccomp syscall filter; turning it off needs allow_weaker_isolation",
    ),
    (
        "security.landlock",
        "Landlock filesystem rules; turning it off needs allow_weaker_isolation",
    ),
    (
        "security.allow_weaker_isolation",
        "accept turning off seccomp or Landlock (--allow-weaker-isolation)",
    ),
    (
        "security.allow_emulated",
        "let a microVM run under QEMU's TCG software emulation when KVM is not usable here: same walls, much slower (--allow-emulated)",
    ),
    (
        "security.allow_gvisor_for_untrusted",
        "accept gVisor for trust = \"untrusted\" code, which otherwise needs a microVM (--allow-gvisor-for-untrusted)",
    ),
    (
        "network.mode",
        "network: none = loopback only; allowlist = only the names in allow, through the egress gateway; open = any public host, needs allow_open (--net)",
    ),
    (
        "network.allow",
        "names the sandbox may reach: \"api.github.com\", \"*.pypi.org\" (names below pypi.org), \"example.com:8443\"; ports 443 and 80 unless one is given (--allow-net)",
    ),
    (
        "network.deny",
        "names and patterns refused even when allow matches them (deny wins); every port unless one is given",
    ),
    (
        "network.allow_private",
        "CIDRs a name may resolve to and still be reached, e.g. \"10.1.2.3/32\"; private, loopback, link-local, CGNAT, ULA and metadata addresses are refused otherwise",
    ),
    (
        "network.allow_open",
        "accept mode = \"open\", which lets the sandbox reach any public host (--allow-open-network)",
    ),
    (
        "network.hosts",
        "static names the gateway resolves itself, \"name\" = \"IP\" (a [network.hosts] table)",
    ),
    (
        "audit.enabled",
        "write the audit trail (JSONL sinks; OTLP when configured); false is allowed but loud: the runtime prints a notice (--no-audit)",
    ),
    (
        "audit.redact_env",
        "names of environment variables whose values are replaced by [REDACTED] in every audit sink (the value comes from process.env, or from the host for env_pass names)",
    ),
    (
        "audit.sensitive",
        "paths whose reads are recorded as file.read events (where the host allows fanotify: root); relative = inside the workspace; absolute = the workspace or under it, or under a filesystem.mounts target",
    ),
];

/// `(key, default, meaning)` for every knob, in file order.
pub fn describe_defaults() -> Vec<(&'static str, String, &'static str)> {
    let d = Policy::default();
    MEANINGS
        .iter()
        .map(|(key, meaning)| (*key, value_of(&d, key), *meaning))
        .collect()
}

/// The TOML text of `key`'s value in `p` (`None` for an absent optional value).
fn value_text(p: &Policy, key: &str) -> Option<String> {
    let w = &p.workspace;
    let pr = &p.process;
    let l = &p.limits;
    let s = &p.security;
    let a = &p.audit;
    Some(match key {
        "version" => p.version.to_string(),
        "level" => quote(p.level?.as_str()),
        "trust" => quote(p.trust?.as_str()),
        "workspace.path" => quote_path(w.path.as_deref()?),
        "workspace.mode" => quote(w.mode.as_str()),
        "workspace.protect_git" => w.protect_git.to_string(),
        "workspace.allow_system_path" => w.allow_system_path.to_string(),
        "filesystem.rootfs" => quote_path(p.filesystem.rootfs.as_deref()?),
        "filesystem.mounts" => mounts(&p.filesystem.mounts),
        "filesystem.etc_extra" => array(p.filesystem.etc_extra.iter().map(|s| quote(s))),
        "process.uid" => pr.uid.to_string(),
        "process.gid" => pr.gid.to_string(),
        "process.hostname" => quote(&pr.hostname),
        "process.env" => inline_table(&pr.env),
        "process.env_pass" => array(pr.env_pass.iter().map(|s| quote(s))),
        "limits.memory" => quote(&l.memory.to_string()),
        "limits.swap" => quote(&l.swap.to_string()),
        "limits.cpus" => float(l.cpus),
        "limits.pids" => l.pids.to_string(),
        "limits.timeout" => quote(&format_duration(l.timeout)),
        "limits.disk" => quote(&l.disk.to_string()),
        "limits.max_output" => quote(&l.max_output.to_string()),
        "limits.open_files" => l.open_files.to_string(),
        "security.seccomp" => s.seccomp.to_string(),
        "security.landlock" => s.landlock.to_string(),
        "security.allow_weaker_isolation" => s.allow_weaker_isolation.to_string(),
        "security.allow_emulated" => s.allow_emulated.to_string(),
        "security.allow_gvisor_for_untrusted" => s.allow_gvisor_for_untrusted.to_string(),
        "network.mode" => quote(p.network.mode.as_str()),
        "network.allow" => array(p.network.allow.iter().map(|s| quote(s))),
        "network.deny" => array(p.network.deny.iter().map(|s| quote(s))),
        "network.allow_private" => array(p.network.allow_private.iter().map(|s| quote(s))),
        "network.allow_open" => p.network.allow_open.to_string(),
        "network.hosts" => inline_table(&p.network.hosts),
        "audit.enabled" => a.enabled.to_string(),
        "audit.redact_env" => array(a.redact_env.iter().map(|s| quote(s))),
        "audit.sensitive" => array(a.sensitive.iter().map(|p| quote_path(p))),
        _ => return None,
    })
}

/// A default as shown in help text.
fn value_of(p: &Policy, key: &str) -> String {
    match (key, value_text(p, key)) {
        ("workspace.path", None) => "the current directory".into(),
        ("filesystem.rootfs", None) => "none (the host's system directories)".into(),
        ("level", None) => "picked by trust; container without one".into(),
        ("trust", None) => "none (the level is used as given)".into(),
        (_, Some(v)) => v,
        (_, None) => "none".into(),
    }
}

impl Policy {
    /// The effective policy as TOML, with a comment above each key saying what it means and
    /// its default. Parsing the result gives back an equal policy. Paths that are not UTF-8
    /// (only possible through code, and rejected by validation) are written lossily.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Stockade policy (version 1). Every key is optional; absent keys take the default shown.\n",
        );
        let mut section = "";
        for (key, default, meaning) in describe_defaults() {
            let (sec, name) = key.split_once('.').unwrap_or(("", key));
            if sec != section {
                section = sec;
                let _ = write!(out, "\n[{sec}]\n");
            }
            let _ = writeln!(out, "# {meaning}. Default: {default}.");
            if key == "network.hosts" && !self.network.hosts.is_empty() {
                // A sub-table; `hosts` is the last key of [network], so nothing follows it there.
                out.push_str("[network.hosts]\n");
                for (k, v) in &self.network.hosts {
                    let _ = writeln!(out, "{} = {}", quote(k), quote(v));
                }
                continue;
            }
            match value_text(self, key) {
                Some(v) => {
                    let _ = writeln!(out, "{name} = {v}");
                }
                None => {
                    let example = match key {
                        "filesystem.rootfs" => "/srv/rootfs/debian",
                        "level" => "microvm",
                        "trust" => "untrusted",
                        _ => ".",
                    };
                    let _ = writeln!(out, "# {name} = \"{example}\"");
                }
            }
        }
        out.push_str(
            "\n# Secrets the egress gateway injects (--secret NAME=env:VAR|file:PATH, --secret-host \
             NAME=HOST).\n# Inside, NAME holds a placeholder; the real value is substituted only in \
             requests to the\n# hosts listed (each one in network.allow), only in the places listed \
             (header, query, body).\n",
        );
        if self.secrets.is_empty() {
            out.push_str(
                "# [secrets.OPENAI_API_KEY]\n# from_env = \"OPENAI_API_KEY\"\n# hosts = \
                 [\"api.openai.com\"]\n# in = [\"header\"]\n",
            );
        }
        for (name, s) in &self.secrets {
            let _ = writeln!(out, "[secrets.{}]", quote_key(name));
            if let Some(v) = &s.from_env {
                let _ = writeln!(out, "from_env = {}", quote(v));
            }
            if let Some(f) = &s.from_file {
                let _ = writeln!(out, "from_file = {}", quote_path(f));
            }
            let _ = writeln!(out, "hosts = {}", array(s.hosts.iter().map(|h| quote(h))));
            let _ = writeln!(
                out,
                "in = {}",
                array(s.places.iter().map(|p| quote(p.as_str())))
            );
        }
        out
    }
}

fn mounts(ms: &[Mount]) -> String {
    if ms.is_empty() {
        return "[]".into();
    }
    let mut out = String::from("[\n");
    for m in ms {
        let _ = write!(out, "  {{ host = {}", quote_path(&m.host));
        if let Some(p) = &m.path {
            let _ = write!(out, ", path = {}", quote_path(p));
        }
        let _ = writeln!(out, ", mode = {} }},", quote(m.mode.as_str()));
    }
    out.push(']');
    out
}

fn inline_table(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "{}".into();
    }
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

fn array(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    format!("[{}]", v.join(", "))
}

/// A TOML float that reads back as the same `f64`.
fn float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        // `{:?}` is the shortest round-trip form and always has a '.' or an exponent.
        format!("{x:?}")
    }
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A TOML basic string.
/// A table key: bare when it can be, quoted otherwise.
fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
