//! Server configuration (the `stockade serve` flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One warm pool: `count` sandboxes of `template` (login `user`, default `sandbox`) kept ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub template: String,
    pub user: Option<String>,
    pub count: usize,
}

impl PoolSpec {
    /// Parses `TEMPLATE=N` or `TEMPLATE@USER=N` (the `--pool` flag).
    pub fn parse(s: &str) -> Result<PoolSpec, String> {
        let (name, n) = s
            .split_once('=')
            .ok_or_else(|| format!("--pool {s:?}: expected TEMPLATE=N (e.g. base=4)"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--pool {s:?}: N must be a whole number"))?;
        let (template, user) = match name.split_once('@') {
            Some((t, u)) => (t, Some(u.to_string())),
            None => (name, None),
        };
        if !crate::store::valid_template_name(template) {
            return Err(format!(
                "--pool {s:?}: template names are [a-z0-9][a-z0-9._-]{{0,62}}"
            ));
        }
        if let Some(u) = &user
            && !valid_user(u)
        {
            return Err(format!(
                "--pool {s:?}: user names are [a-z_][a-z0-9_-]{{0,31}}"
            ));
        }
        if count > 1000 {
            return Err(format!("--pool {s:?}: at most 1000 sandboxes per pool"));
        }
        Ok(PoolSpec {
            template: template.to_string(),
            user,
            count,
        })
    }
}

/// A login name the runtime accepts: `[a-z_][a-z0-9_-]{0,31}`.
pub fn valid_user(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The state directory: `server.db`, `server.lock`, and the sandboxes' audit trails.
    pub state_dir: PathBuf,
    /// The E2B SDK's debug-mode envd listener (it expects localhost:49983); off when None.
    pub e2b_debug_listen: Option<SocketAddr>,
    /// Sandboxes handed out (or being created for a request) at once, all keys together.
    pub max_sandboxes: usize,
    /// Sandboxes handed out (or being created) at once per API key.
    pub max_per_key: usize,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub pools: Vec<PoolSpec>,
    /// How long graceful shutdown waits for open connections after every sandbox is gone.
    pub drain_timeout: Duration,
    /// Largest file one upload may write (bytes); larger ones are refused with 413.
    pub max_upload: u64,
    /// Largest file one download may read (bytes); larger ones are refused with 413.
    pub max_download: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            state_dir: PathBuf::from("/var/lib/stockade"),
            e2b_debug_listen: None,
            max_sandboxes: 200,
            max_per_key: 50,
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(86_400),
            pools: Vec::new(),
            drain_timeout: Duration::from_secs(5),
            max_upload: crate::native_data::DEFAULT_MAX_UPLOAD,
            max_download: crate::native_data::DEFAULT_MAX_DOWNLOAD,
        }
    }
}

impl Config {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_timeout.is_zero() || self.max_timeout.is_zero() {
            return Err("--default-timeout and --max-timeout must be at least 1 second".into());
        }
        if self.default_timeout > self.max_timeout {
            return Err(format!(
                "--default-timeout ({}s) is over --max-timeout ({}s)",
                self.default_timeout.as_secs(),
                self.max_timeout.as_secs()
            ));
        }
        if self.max_per_key == 0 || self.max_sandboxes == 0 {
            return Err("--max-sandboxes and --max-per-key must be at least 1".into());
        }
        // Debug mode has no authentication (the SDK sends no token there): it is served on a
        // loopback address or not at all.
        if let Some(a) = self.e2b_debug_listen
            && !a.ip().is_loopback()
        {
            return Err(format!(
                "--e2b-debug-listen {a}: the E2B debug listener has no authentication, so it only \
                 listens on a loopback address (e.g. 127.0.0.1:49983)"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pools {
            if !seen.insert((&p.template, &p.user)) {
                return Err(format!("--pool {}: given twice", p.template));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_debug_listener_is_loopback_only() {
        let mut c = super::Config {
            e2b_debug_listen: Some("0.0.0.0:49983".parse().unwrap()),
            ..super::Config::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        c.e2b_debug_listen = Some("127.0.0.1:49983".parse().unwrap());
        assert_eq!(c.validate(), Ok(()));
    }

    use super::*;

    #[test]
    fn pool_flag() {
        assert_eq!(
            PoolSpec::parse("base=4").unwrap(),
            PoolSpec {
                template: "base".into(),
                user: None,
                count: 4
            }
        );
        assert_eq!(
            PoolSpec::parse("py@user=2").unwrap().user.as_deref(),
            Some("user")
        );
        assert!(PoolSpec::parse("base").is_err());
        assert!(PoolSpec::parse("base=x").is_err());
        assert!(PoolSpec::parse("../x=1").is_err());
        assert!(PoolSpec::parse("base@Root=1").is_err());
    }
}
