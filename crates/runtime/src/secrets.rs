//! The supervisor's side of `[secrets]` (issue 6): read each value from where the policy says,
//! give the sandbox a placeholder in its place, make the per-sandbox CA, and tell the plan how
//! the sandbox comes to trust it.
//!
//! Values are read into memory that is zeroed on drop and handed to the gateway's
//! [`Interceptor`]; they are never put in an error, a log line, an event, the plan or a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stockade_gateway::intercept::{Interceptor, system_roots};
use stockade_gateway::secrets::{Places, Secret, SecretSet, placeholder};
use stockade_policy::{Policy, SecretPlace};
use zeroize::Zeroizing;

use crate::error::RunError;

/// Where the sandbox's CA bundle is, inside.
pub const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The sandbox CA alone, inside (for NODE_EXTRA_CA_CERTS, which adds to Node's own roots).
pub const CA_FILE: &str = "/etc/ssl/certs/stockade-sandbox-ca.pem";
/// The line before the sandbox CA in the bundle.
pub const CA_MARKER: &str = "# Stockade: this sandbox's secret gateway CA\n";

/// How the sandbox trusts its CA: /etc/ssl/certs rebuilt from the host's entries, with the
/// bundle file replaced by the host's bundle plus the sandbox CA.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Entries of the host's /etc/ssl/certs: name → symlink target (None: a regular file, copied;
    /// directories are bound).
    pub entries: Vec<(String, Entry)>,
    pub bundle: String,
    pub ca_pem: String,
}

#[derive(Clone, Debug)]
pub enum Entry {
    Link(PathBuf),
    File,
    Dir,
}

/// What a run with secrets needs.
pub struct Prepared {
    pub interceptor: Arc<Interceptor>,
    /// NAME = placeholder, and the CA variables, for the sandbox's environment.
    pub env: Vec<(String, String)>,
    pub trust: Trust,
}

fn random16() -> Result<[u8; 16], RunError> {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `b`.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RunError::Unsupported(format!("getrandom: {e}")));
        }
        got += n as usize;
    }
    Ok(b)
}

/// Reads secret `name`'s value; errors say where it was looked for, never what was found.
fn load(name: &str, s: &stockade_policy::Secret) -> Result<Zeroizing<Vec<u8>>, RunError> {
    let mut v = Zeroizing::new(match (&s.from_env, &s.from_file) {
        (Some(var), _) => match std::env::var_os(var) {
            Some(v) => std::os::unix::ffi::OsStringExt::into_vec(v),
            None => {
                return Err(RunError::Usage(format!(
                    "secret {name}: the environment variable {var} is not set in stockade's \
                     environment"
                )));
            }
        },
        (None, Some(path)) => std::fs::read(path).map_err(|e| {
            RunError::Usage(format!(
                "secret {name}: cannot read {}: {}",
                path.display(),
                e.kind()
            ))
        })?,
        (None, None) => {
            return Err(RunError::Usage(format!("secret {name}: no source")));
        }
    });
    // One trailing newline, as `echo` and editors leave it, is not part of the value.
    if v.ends_with(b"\r\n") {
        let n = v.len() - 2;
        v.truncate(n);
    } else if v.ends_with(b"\n") {
        let n = v.len() - 1;
        v.truncate(n);
    }
    if v.is_empty() {
        return Err(RunError::Usage(format!(
            "secret {name}: the value is empty (from {})",
            s.from_env.as_ref().map_or_else(
                || s.from_file
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
                    .to_string(),
                |e| format!("${e}")
            )
        )));
    }
    // A value that goes into a header or a URL must not be able to break out of it.
    if v.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(RunError::Usage(format!(
            "secret {name}: the value contains a control character (line break, NUL, ...); \
             it could not be sent safely in a header or URL"
        )));
    }
    Ok(v)
}

fn host_trust(ca_pem: String) -> Result<Trust, RunError> {
    let dir = Path::new("/etc/ssl/certs");
    let bundle = std::fs::read_to_string(dir.join("ca-certificates.crt")).map_err(|e| {
        RunError::Unsupported(format!(
            "secrets: cannot read the host's CA bundle /etc/ssl/certs/ca-certificates.crt ({e}); \
             the sandbox needs it to trust its gateway CA alongside the usual roots"
        ))
    })?;
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| RunError::Unsupported(format!("secrets: reading /etc/ssl/certs: {e}")))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "ca-certificates.crt" || name == "stockade-sandbox-ca.pem" {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        let entry = if ft.is_symlink() {
            match std::fs::read_link(e.path()) {
                Ok(t) => Entry::Link(t),
                Err(_) => continue,
            }
        } else if ft.is_dir() {
            Entry::Dir
        } else if ft.is_file() {
            Entry::File
        } else {
            continue;
        };
        entries.push((name, entry));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut all = bundle;
    if !all.ends_with('\n') {
        all.push('\n');
    }
    all.push_str(CA_MARKER);
    all.push_str(&ca_pem);
    Ok(Trust {
        entries,
        bundle: all,
        ca_pem,
    })
}

/// Everything a run with secrets needs; None when the policy has none.
pub fn prepare(policy: &Policy, id: &str) -> Result<Option<Prepared>, RunError> {
    if policy.secrets.is_empty() {
        return Ok(None);
    }
    let mut secrets = Vec::new();
    let mut env = Vec::new();
    for (name, s) in &policy.secrets {
        let value = load(name, s)?;
        let ph = placeholder(name, &random16()?);
        let places = Places {
            header: s.places.contains(&SecretPlace::Header),
            query: s.places.contains(&SecretPlace::Query),
            body: s.places.contains(&SecretPlace::Body),
        };
        let secret = Secret::new(name, ph.clone(), value, s.hosts.clone(), places)
            .map_err(RunError::Usage)?;
        secrets.push(secret);
        env.push((name.clone(), ph));
    }
    let roots = system_roots().map_err(RunError::Unsupported)?;
    let interceptor = Interceptor::new(Arc::new(SecretSet::new(secrets)), id, roots)
        .map_err(RunError::Unsupported)?;
    let trust = host_trust(interceptor.ca_pem())?;
    for k in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        env.push((k.to_string(), BUNDLE.to_string()));
    }
    env.push(("NODE_EXTRA_CA_CERTS".to_string(), CA_FILE.to_string()));
    Ok(Some(Prepared {
        interceptor: Arc::new(interceptor),
        env,
        trust,
    }))
}
