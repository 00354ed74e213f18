//! The `[secrets.NAME]` tables: where each value comes from, the hosts it is bound to (each one
//! the network policy lets the sandbox reach) and where in a request it may be substituted.

use std::path::Component;

use crate::error::Issue;
use crate::model::{NetworkMode, Policy};
use crate::network::{host_pattern_matches, parse_name};

/// A secret's name is the variable that holds its placeholder inside; it is also embedded in the
/// placeholder, so it is limited to `[A-Za-z_][A-Za-z0-9_]*`.
fn name_problem(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') || name.len() > 128 {
        return Some(format!(
            "secret name {name:?} must be an environment variable name: letters, digits and \
             '_', not starting with a digit, at most 128 characters"
        ));
    }
    None
}

pub(crate) fn issues(p: &Policy, out: &mut Vec<Issue>) {
    for (name, s) in &p.secrets {
        let key = format!("secrets.{name}");
        if let Some(m) = name_problem(name) {
            out.push(Issue::new(&key, m));
        }
        if p.process.env.contains_key(name) {
            out.push(Issue::new(
                &key,
                format!(
                    "{name} is also set in process.env; inside, a secret's variable holds its \
                     placeholder: remove one of them"
                ),
            ));
        }
        if p.process.env_pass.contains(name) {
            out.push(Issue::new(
                &key,
                format!(
                    "{name} is also in process.env_pass, which would pass the host's value \
                     inside: remove it from env_pass"
                ),
            ));
        }
        match (&s.from_env, &s.from_file) {
            (None, None) => out.push(Issue::new(
                &key,
                format!(
                    "secret {name} has no source: set from_env = \"VAR\" (a variable of \
                     stockade's environment) or from_file = \"/path\" (--secret {name}=env:VAR)"
                ),
            )),
            (Some(_), Some(_)) => out.push(Issue::new(
                &key,
                format!("secret {name} has both from_env and from_file; keep one"),
            )),
            (Some(v), None) => {
                if name_problem(v).is_some() {
                    out.push(Issue::new(
                        format!("{key}.from_env"),
                        format!("from_env {v:?} is not an environment variable name"),
                    ));
                }
            }
            (None, Some(f)) => {
                if !f.is_absolute() || f.components().any(|c| c == Component::ParentDir) {
                    out.push(Issue::new(
                        format!("{key}.from_file"),
                        format!(
                            "from_file {:?} must be an absolute path without '..'",
                            f.display()
                        ),
                    ));
                }
            }
        }
        if s.hosts.is_empty() {
            out.push(Issue::new(
                format!("{key}.hosts"),
                format!(
                    "secret {name} is bound to no host, so it could never be used: list where \
                     the value may be sent, e.g. hosts = [\"api.openai.com\"] (--secret-host \
                     {name}=HOST)"
                ),
            ));
        }
        for (i, h) in s.hosts.iter().enumerate() {
            let hk = format!("{key}.hosts[{i}]");
            if let Err(m) = parse_name(h) {
                out.push(Issue::new(
                    &hk,
                    format!("{m} (a secret's host is an exact name)"),
                ));
                continue;
            }
            if s.hosts[..i].contains(h) {
                out.push(Issue::new(&hk, format!("{h:?} is listed twice; keep one")));
                continue;
            }
            let n = &p.network;
            let denied = n.deny.iter().any(|d| host_pattern_matches(d, h));
            let allowed = match n.mode {
                NetworkMode::None => false,
                NetworkMode::Allowlist => n.allow.iter().any(|a| host_pattern_matches(a, h)),
                NetworkMode::Open => true,
            };
            if n.mode == NetworkMode::None {
                out.push(Issue::new(
                    &hk,
                    format!(
                        "secret {name} is bound to {h:?}, but network.mode is \"none\": set \
                         network.mode = \"allowlist\" with {h:?} in network.allow"
                    ),
                ));
            } else if denied || !allowed {
                out.push(Issue::new(
                    &hk,
                    format!(
                        "secret {name} is bound to {h:?}, which the network policy does not \
                         let the sandbox reach: add it to network.allow (--allow-net {h})"
                    ),
                ));
            }
        }
        if s.places.is_empty() {
            out.push(Issue::new(
                format!("{key}.in"),
                format!(
                    "secret {name} may be substituted nowhere: in = [\"header\"] (the default), \
                     \"query\" and/or \"body\""
                ),
            ));
        }
        for (i, pl) in s.places.iter().enumerate() {
            if s.places[..i].contains(pl) {
                out.push(Issue::new(
                    format!("{key}.in[{i}]"),
                    format!("{:?} is listed twice; keep one", pl.as_str()),
                ));
            }
        }
    }
}
