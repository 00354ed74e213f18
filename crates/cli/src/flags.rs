//! Command-line flags of `run` and `policy show`, mapped onto policy overrides.

use clap::Args;
use std::path::PathBuf;
use stockade_policy::{
    ByteSize, Level, Mount, MountMode, NetworkMode, Overrides, SecretSource, Trust, WorkspaceMode,
    parse_duration,
};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Policy file (TOML); flags override it.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Write the overlay change list as JSON to FILE (with --workspace-mode overlay).
    #[arg(long, value_name = "FILE")]
    pub changes_json: Option<PathBuf>,
    /// Print what was enforced.
    #[arg(long, short)]
    pub verbose: bool,
    /// Export the audit events as OpenTelemetry traces over OTLP/HTTP to URL [default: $OTEL_EXPORTER_OTLP_ENDPOINT]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Default)]
pub struct OverrideArgs {
    /// Isolation level: container, gvisor (the system's runsc) or microvm (QEMU -M microvm);
    /// refused when this host cannot give it [default: picked by --trust; container without]
    #[arg(long, value_name = "LEVEL", value_parser = ["container", "gvisor", "microvm"])]
    pub level: Option<String>,
    /// Who wrote the code: trusted (container or stronger), internal (gvisor or microvm),
    /// untrusted (microvm; gvisor with --allow-gvisor-for-untrusted). Picks the level.
    #[arg(long, value_name = "TRUST", value_parser = ["trusted", "internal", "untrusted"])]
    pub trust: Option<String>,
    /// Let a microVM run under QEMU's TCG software emulation when KVM is not usable (slower).
    #[arg(long)]
    pub allow_emulated: bool,
    /// Accept gVisor for --trust untrusted (which otherwise needs a microVM).
    #[arg(long)]
    pub allow_gvisor_for_untrusted: bool,
    /// Host directory mounted at the same path inside and used as the working directory [default: .]
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// rw: write through; ro: read-only; overlay: changes kept in a throwaway layer and listed; tmp: empty ephemeral dir [default: rw]
    #[arg(long, value_name = "MODE", value_parser = ["rw", "ro", "overlay", "tmp"])]
    pub workspace_mode: Option<String>,
    /// Allow /, your home directory or a system directory as the workspace.
    #[arg(long)]
    pub allow_system_path: bool,
    /// Let the sandbox write .git/hooks and .git/config (read-only by default).
    #[arg(long)]
    pub no_protect_git: bool,
    /// Set K=V inside (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Pass the host's value of K inside (repeatable).
    #[arg(long = "env-pass", value_name = "K")]
    pub env_pass: Vec<String>,
    /// Memory limit [default: 1GiB]
    #[arg(long)]
    pub memory: Option<String>,
    /// Swap allowed on top of memory [default: 0]
    #[arg(long)]
    pub swap: Option<String>,
    /// CPU limit in cores [default: 1]
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes [default: 256]
    #[arg(long)]
    pub pids: Option<u64>,
    /// Wall-clock limit, e.g. 30s, 10m [default: 10m]
    #[arg(long)]
    pub timeout: Option<String>,
    /// Everything the sandbox may write: tmpfs, overlay layer, rw workspace growth [default: 1GiB]
    #[arg(long)]
    pub disk: Option<String>,
    /// Bytes of stdout+stderr before the command is stopped [default: 16MiB]
    #[arg(long)]
    pub max_output: Option<String>,
    /// uid inside [default: 1000]
    #[arg(long)]
    pub uid: Option<u32>,
    /// gid inside [default: 1000]
    #[arg(long)]
    pub gid: Option<u32>,
    /// Directory root filesystem (e.g. from debootstrap or an unpacked OCI image; absolute, owned
    /// by root, not writable by others): the read-only lower layer of the sandbox's root, instead
    /// of the host's /usr, /bin, /lib and curated /etc.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Extra host path HOST[:PATH][:ro|rw], read-only unless :rw (repeatable).
    #[arg(long = "mount", value_name = "HOST[:PATH][:MODE]")]
    pub mounts: Vec<String>,
    /// Run even when the host cannot give a protection the policy asks for (printed).
    #[arg(long)]
    pub allow_weaker_isolation: bool,
    /// Turn the seccomp filter on or off (off needs --allow-weaker-isolation).
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub seccomp: Option<String>,
    /// Network: none (loopback only) [default], allowlist (only --allow-net names, through the
    /// egress gateway) or open (every name through the gateway; needs --allow-open-network).
    #[arg(long, value_name = "MODE", value_parser = ["none", "allowlist", "open"])]
    pub net: Option<String>,
    /// Allow NAME[:PORT] through the egress gateway (repeatable; with --net allowlist).
    #[arg(long = "allow-net", value_name = "NAME[:PORT]")]
    pub allow_net: Vec<String>,
    /// Accept --net open (every destination; audited).
    #[arg(long)]
    pub allow_open_network: bool,
    /// Inject secret NAME through the gateway, read from env:VAR (stockade's environment) or
    /// file:PATH; inside, $NAME holds a placeholder (repeatable; bind it with --secret-host).
    #[arg(long = "secret", value_name = "NAME=env:VAR|file:PATH")]
    pub secret: Vec<String>,
    /// Let secret NAME's real value be sent to HOST (an --allow-net name; repeatable).
    #[arg(long = "secret-host", value_name = "NAME=HOST")]
    pub secret_host: Vec<String>,
    /// Do not write the audit trail (printed as a notice).
    #[arg(long)]
    pub no_audit: bool,
    /// Replace the value of host/policy variable K by [REDACTED] in every audit sink (repeatable).
    #[arg(long = "redact-env", value_name = "K")]
    pub redact_env: Vec<String>,
    /// Record reads of PATH (workspace-relative or absolute) as file.read events, where fanotify is available (repeatable).
    #[arg(long = "sensitive", value_name = "PATH")]
    pub sensitive: Vec<PathBuf>,
    /// Turn Landlock on or off (off needs --allow-weaker-isolation).
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub landlock: Option<String>,
}

fn size(flag: &str, v: &Option<String>) -> Result<Option<ByteSize>, String> {
    v.as_deref()
        .map(|s| s.parse::<ByteSize>().map_err(|e| format!("{flag}: {e}")))
        .transpose()
}

fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut parts: Vec<&str> = s.split(':').collect();
    let mode = match parts.last() {
        Some(&"ro") if parts.len() > 1 => {
            parts.pop();
            MountMode::Ro
        }
        Some(&"rw") if parts.len() > 1 => {
            parts.pop();
            MountMode::Rw
        }
        _ => MountMode::Ro,
    };
    match parts.as_slice() {
        [host] => Ok(Mount {
            host: PathBuf::from(host),
            path: None,
            mode,
        }),
        [host, path] => Ok(Mount {
            host: PathBuf::from(host),
            path: Some(PathBuf::from(path)),
            mode,
        }),
        _ => Err(format!("--mount: {s:?} is not HOST[:PATH][:ro|rw]")),
    }
}

impl OverrideArgs {
    // `..Default::default()` keeps this building while the policy grows new override fields.
    #[allow(clippy::needless_update)]
    pub fn to_overrides(&self) -> Result<Overrides, String> {
        let mut env = Vec::new();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env: {kv:?} is not K=V"))?;
            env.push((k.to_string(), v.to_string()));
        }
        let on = |v: &Option<String>| v.as_deref().map(|s| s == "on");
        Ok(Overrides {
            level: self
                .level
                .as_deref()
                .map(str::parse::<Level>)
                .transpose()
                .map_err(|e| format!("--level: {e}"))?,
            trust: self
                .trust
                .as_deref()
                .map(str::parse::<Trust>)
                .transpose()
                .map_err(|e| format!("--trust: {e}"))?,
            allow_emulated: self.allow_emulated.then_some(true),
            allow_gvisor_for_untrusted: self.allow_gvisor_for_untrusted.then_some(true),
            workspace: self.workspace.clone(),
            workspace_mode: self.workspace_mode.as_deref().map(|m| match m {
                "ro" => WorkspaceMode::Ro,
                "overlay" => WorkspaceMode::Overlay,
                "tmp" => WorkspaceMode::Tmp,
                _ => WorkspaceMode::Rw,
            }),
            allow_system_path: self.allow_system_path.then_some(true),
            protect_git: self.no_protect_git.then_some(false),
            env,
            env_pass: self.env_pass.clone(),
            memory: size("--memory", &self.memory)?,
            swap: size("--swap", &self.swap)?,
            cpus: self.cpus,
            pids: self.pids,
            timeout: self
                .timeout
                .as_deref()
                .map(|t| parse_duration(t).map_err(|e| format!("--timeout: {e}")))
                .transpose()?,
            disk: size("--disk", &self.disk)?,
            max_output: size("--max-output", &self.max_output)?,
            uid: self.uid,
            gid: self.gid,
            rootfs: self.rootfs.clone(),
            mounts: self
                .mounts
                .iter()
                .map(|m| parse_mount(m))
                .collect::<Result<_, _>>()?,
            allow_weaker_isolation: self.allow_weaker_isolation.then_some(true),
            seccomp: on(&self.seccomp),
            landlock: on(&self.landlock),
            audit: self.no_audit.then_some(false),
            redact_env: self.redact_env.clone(),
            sensitive: self.sensitive.clone(),
            net: self.net.as_deref().map(|m| match m {
                "allowlist" => NetworkMode::Allowlist,
                "open" => NetworkMode::Open,
                _ => NetworkMode::None,
            }),
            allow_net: self.allow_net.clone(),
            allow_open_network: self.allow_open_network.then_some(true),
            secrets: self
                .secret
                .iter()
                .map(|s| SecretSource::parse_flag(s).map_err(|e| format!("--secret {e}")))
                .collect::<Result<_, _>>()?,
            secret_hosts: self
                .secret_host
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(n, h)| (n.to_string(), h.to_string()))
                        .ok_or_else(|| format!("--secret-host {s:?}: expected NAME=HOST"))
                })
                .collect::<Result<_, _>>()?,
            ..Default::default()
        })
    }
}

/// The "Defaults" section of `stockade run --help`, from the policy crate so they never drift.
pub fn defaults_help() -> String {
    let mut s =
        String::from("Defaults (each a key of the policy file; flags override the file):\n");
    for (key, default, meaning) in stockade_policy::describe_defaults() {
        s.push_str(&format!("  {key:<34} {default:<24} {meaning}\n"));
    }
    s.push_str("\nExit status: CMD's status; 128+N when killed by signal N; 125 stockade failed; 126 not executable; 127 not found.\n");
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        o: OverrideArgs,
    }

    fn parse(args: &[&str]) -> Result<Overrides, String> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        t.o.to_overrides()
    }

    #[test]
    fn level_and_trust_flags() {
        let o = parse(&[
            "--level",
            "microvm",
            "--trust",
            "untrusted",
            "--allow-emulated",
            "--allow-gvisor-for-untrusted",
        ])
        .unwrap();
        assert_eq!(o.level, Some(Level::Microvm));
        assert_eq!(o.trust, Some(Trust::Untrusted));
        assert_eq!(o.allow_emulated, Some(true));
        assert_eq!(o.allow_gvisor_for_untrusted, Some(true));
        let none = parse(&[]).unwrap();
        assert_eq!(
            (
                none.level,
                none.trust,
                none.allow_emulated,
                none.allow_gvisor_for_untrusted
            ),
            (None, None, None, None)
        );
        for l in ["container", "gvisor", "microvm"] {
            assert_eq!(parse(&["--level", l]).unwrap().level.unwrap().as_str(), l);
        }
        for t in ["trusted", "internal", "untrusted"] {
            assert_eq!(parse(&["--trust", t]).unwrap().trust.unwrap().as_str(), t);
        }
        let e = parse(&["--level", "kvm"]).unwrap_err();
        assert!(
            e.contains("invalid value 'kvm' for '--level <LEVEL>'"),
            "{e}"
        );
        let e = parse(&["--trust", "nobody"]).unwrap_err();
        assert!(
            e.contains("invalid value 'nobody' for '--trust <TRUST>'"),
            "{e}"
        );
        // Applied: a file's level weaker than --trust is refused, naming the flag.
        let mut p =
            stockade_policy::Policy::from_toml("level = \"container\"\n", "p.toml").unwrap();
        let e = p
            .apply(&parse(&["--trust", "untrusted"]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--trust: level \"container\" is weaker than trust = \"untrusted\""),
            "{e}"
        );
    }
}
