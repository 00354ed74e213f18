//! The name allowlist: which `(name, port)` pairs a sandbox may connect to.
//!
//! ## What it guarantees
//!
//! - **One grammar for entries and for names asked about.** An entry is `name`, `*.suffix`,
//!   `name:port` or `*.suffix:port`. Names are ASCII only (IDNA is not supported: write the
//!   `xn--` form), lowercased, one trailing dot removed; each label is 1–63 characters of
//!   `[a-z0-9-]` and neither starts nor ends with `-`; the whole name is at most 253 characters.
//!   A name whose last label is all digits (an IPv4 literal such as `1.2.3.4`) is refused: the
//!   allowlist holds host names, never addresses.
//! - **Wildcards are whole leftmost labels.** `*.pypi.org` matches `a.pypi.org` and
//!   `a.b.pypi.org` (one label or more) and never `pypi.org` itself. `*` anywhere else, a bare
//!   `*`, or `*` inside a label (`a*.b`) is an error.
//! - **Ports.** An allow entry without a port allows 443 and 80. A deny entry without a port
//!   denies **every** port (a deny list fails closed). Ports are 1–65535.
//! - **Deny wins.** [`Rules::decide`] checks the deny list first; a name that fails the grammar
//!   is [`Reason::BadName`] before either list is consulted, so no malformed name can match.
//! - **Stable reason codes** ([`Reason::code`]): `denied:not_in_allowlist`, `denied:in_denylist`,
//!   `denied:bad_name`, `denied:ip_literal`, `denied:bad_port`.
//! - **Errors name the entry.** A [`RuleError`] says which list, the entry's index and text, and
//!   the problem; the policy crate maps the index to a line and column.
//!
//! No I/O. Tested by the unit tests below (every grammar rule at its boundary, deny-wins,
//! wildcard versus bare suffix, port defaults) and a no-panic loop over generated names.

use std::collections::BTreeSet;

use thiserror::Error;

/// Longest name, without the trailing dot (RFC 1035 presentation form).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;
/// The ports an allow entry without a port covers, in order.
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// What is wrong with a name, a pattern or a port.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {0} characters long; at most 253 are allowed")]
    TooLong(usize),
    #[error(
        "the name has non-ASCII characters: internationalized names are not supported, write the xn-- (punycode) form"
    )]
    NonAscii,
    #[error("the name has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label {0:?} is longer than 63 characters")]
    LabelTooLong(String),
    #[error("character {0:?} is not allowed: labels hold only a-z, 0-9 and '-'")]
    BadChar(char),
    #[error("label {0:?} starts or ends with '-'")]
    HyphenAtEdge(String),
    #[error("'*' is allowed only as the whole leftmost label, as in *.example.com")]
    MisplacedWildcard,
    #[error("a bare '*' would allow every name; use network mode \"open\" for that")]
    BareWildcard,
    #[error(
        "an IP address is not a name: the allowlist holds host names (addresses go in allow_private)"
    )]
    IpLiteral,
    #[error("the port after ':' is empty")]
    EmptyPort,
    #[error("port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("more than one ':' (IPv6 addresses are not names)")]
    ExtraColon,
}

/// Which list an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Deny,
}

impl std::fmt::Display for ListKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListKind::Allow => "allow",
            ListKind::Deny => "deny",
        })
    }
}

/// A bad entry in an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("network.{list}[{index}] {entry:?}: {problem}")]
pub struct RuleError {
    pub list: ListKind,
    /// 0-based position in the list.
    pub index: usize,
    pub entry: String,
    pub problem: NameError,
}

/// Why a connection or lookup is refused. Closed: every refusal has one of these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotInAllowlist,
    InDenylist,
    BadName,
    IpLiteral,
    BadPort,
}

impl Reason {
    /// The stable code written to the audit trail.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotInAllowlist => "denied:not_in_allowlist",
            Reason::InDenylist => "denied:in_denylist",
            Reason::BadName => "denied:bad_name",
            Reason::IpLiteral => "denied:ip_literal",
            Reason::BadPort => "denied:bad_port",
        }
    }
}

/// The outcome of [`Rules::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied(Reason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Exactly this name.
    Exact(String),
    /// Any name ending in `.` + this suffix, with at least one label before it.
    Below(String),
}

impl Host {
    fn matches(&self, name: &str) -> bool {
        match self {
            Host::Exact(n) => n == name,
            Host::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: Host,
    /// `None`: the list's default (443 and 80 for allow, every port for deny).
    port: Option<u16>,
}

/// A parsed allow and deny list. Build with [`Rules::new`]; ask with [`Rules::decide`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
    /// Network mode `open`: every valid name is allowed on every port, unless denied.
    open: bool,
}

impl Rules {
    /// Parses both lists; the first bad entry is the error (allow list first).
    pub fn new(allow: &[String], deny: &[String]) -> Result<Rules, RuleError> {
        let parse_list = |list: ListKind, entries: &[String]| {
            entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    parse_pattern(entry).map_err(|problem| RuleError {
                        list,
                        index,
                        entry: entry.clone(),
                        problem,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Rules {
            allow: parse_list(ListKind::Allow, allow)?,
            deny: parse_list(ListKind::Deny, deny)?,
            open: false,
        })
    }

    /// Network mode `open`: every valid name on every port, except what `deny` names. Names are
    /// still checked against the grammar (IP literals stay refused), and the address policy
    /// still applies after resolution.
    pub fn open(deny: &[String]) -> Result<Rules, RuleError> {
        let mut r = Rules::new(&[], deny)?;
        r.open = true;
        Ok(r)
    }

    /// May a connection to `name` on `port` go out? `name` is checked against the same grammar
    /// as entries (after lowercasing and removing one trailing dot). Deny wins over allow.
    pub fn decide(&self, name: &str, port: u16) -> Decision {
        let name = match normalize_name(name) {
            Ok(n) => n,
            Err(e) => return Decision::Denied(reason_for(&e)),
        };
        if port == 0 {
            return Decision::Denied(Reason::BadPort);
        }
        if self
            .deny
            .iter()
            .any(|p| p.host.matches(&name) && p.port.is_none_or(|q| q == port))
        {
            return Decision::Denied(Reason::InDenylist);
        }
        let allowed = self.open
            || self.allow.iter().any(|p| {
                p.host.matches(&name) && p.port.map_or(DEFAULT_PORTS.contains(&port), |q| q == port)
            });
        if allowed {
            Decision::Allowed
        } else {
            Decision::Denied(Reason::NotInAllowlist)
        }
    }

    /// Every port on which [`Rules::decide`] allows `name` (empty when none). This is the DNS
    /// view: a name gets an answer only when this set is not empty.
    pub fn allowed_ports(&self, name: &str) -> BTreeSet<u16> {
        let mut candidates = BTreeSet::new();
        if self.open {
            // Transparent listeners on the default ports; any other port goes through the proxy.
            candidates.extend(DEFAULT_PORTS);
        }
        for p in &self.allow {
            match p.port {
                Some(q) => {
                    candidates.insert(q);
                }
                None => candidates.extend(DEFAULT_PORTS),
            }
        }
        candidates.retain(|&port| self.decide(name, port) == Decision::Allowed);
        candidates
    }

    /// The name-only decision used for DNS: allowed when some port is, otherwise the reason the
    /// default HTTPS port is refused.
    pub fn decide_name(&self, name: &str) -> Decision {
        if self.allowed_ports(name).is_empty() {
            match self.decide(name, DEFAULT_PORTS[0]) {
                Decision::Allowed => Decision::Denied(Reason::NotInAllowlist),
                denied => denied,
            }
        } else {
            Decision::Allowed
        }
    }
}

fn reason_for(e: &NameError) -> Reason {
    match e {
        NameError::IpLiteral => Reason::IpLiteral,
        _ => Reason::BadName,
    }
}

/// Checks `name` against the grammar and returns its canonical form (lowercase, no trailing
/// dot). Wildcards are not names: `*` is a [`NameError::BadChar`] here.
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    if !name.is_ascii() {
        return Err(NameError::NonAscii);
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    let mut last = "";
    for label in name.split('.') {
        check_label(label)?;
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::IpLiteral);
    }
    Ok(name)
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong(label.to_string()));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(NameError::BadChar(c));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtEdge(label.to_string()));
    }
    Ok(())
}

fn parse_pattern(entry: &str) -> Result<Pattern, NameError> {
    if !entry.is_ascii() {
        return Err(NameError::NonAscii);
    }
    let (host, port) = match entry.split_once(':') {
        None => (entry, None),
        Some((_, rest)) if rest.contains(':') => return Err(NameError::ExtraColon),
        Some((host, port)) => (host, Some(parse_port(port)?)),
    };
    let host = match host.strip_prefix("*.") {
        Some(suffix) => {
            if suffix.contains('*') {
                return Err(NameError::MisplacedWildcard);
            }
            Host::Below(normalize_name(suffix)?)
        }
        None if host == "*" => return Err(NameError::BareWildcard),
        None if host.contains('*') => return Err(NameError::MisplacedWildcard),
        None => Host::Exact(normalize_name(host)?),
    };
    Ok(Pattern { host, port })
}

fn parse_port(s: &str) -> Result<u16, NameError> {
    if s.is_empty() {
        return Err(NameError::EmptyPort);
    }
    if s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::BadPort(s.to_string()));
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(NameError::BadPort(s.to_string())),
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn open_allows_every_valid_name_and_port_but_the_denied() {
        let r = Rules::open(&["uploads.example.com".to_string()]).unwrap();
        assert_eq!(r.decide("anything.example.org", 8443), Decision::Allowed);
        assert_eq!(
            r.decide("uploads.example.com", 443),
            Decision::Denied(Reason::InDenylist)
        );
        assert_eq!(
            r.decide("1.2.3.4", 443),
            Decision::Denied(Reason::IpLiteral)
        );
        assert_eq!(
            r.allowed_ports("a.example.org"),
            BTreeSet::from(DEFAULT_PORTS)
        );
        assert_eq!(
            r.decide_name("uploads.example.com"),
            Decision::Denied(Reason::InDenylist)
        );
        // Control: the same name under an empty allowlist is refused.
        let closed = Rules::new(&[], &[]).unwrap();
        assert_eq!(
            closed.decide("anything.example.org", 8443),
            Decision::Denied(Reason::NotInAllowlist)
        );
    }
}
