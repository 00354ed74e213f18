//! Secrets the gateway injects: each has a placeholder (what the sandbox holds), the real value
//! (held here only, zeroed on drop, never printed), the hosts it is bound to and the places of a
//! request where it may be substituted.
//!
//! The byte-level machinery is here too: [`Replacer`] rewrites a stream chunk by chunk, holding
//! back just enough bytes that a match split across chunk (or frame) boundaries is still found.

use std::fmt;

use zeroize::Zeroizing;

/// Where in a request a placeholder may be replaced by the real value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Places {
    pub header: bool,
    pub query: bool,
    pub body: bool,
}

/// One secret. `Debug` shows the name, placeholder and hosts, never the value.
pub struct Secret {
    pub name: String,
    pub placeholder: String,
    value: Zeroizing<Vec<u8>>,
    /// Normalized host names where the real value may appear.
    pub hosts: Vec<String>,
    pub places: Places,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("placeholder", &self.placeholder)
            .field("value", &"<hidden>")
            .field("hosts", &self.hosts)
            .field("places", &self.places)
            .finish()
    }
}

/// The prefix every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "STOCKADE_PLACEHOLDER_";

impl Secret {
    /// `placeholder` must start with [`PLACEHOLDER_PREFIX`] (see [`placeholder`]); `value` must
    /// not be empty and must not contain the placeholder (or the other way round), else the
    /// substitution would not be reversible.
    pub fn new(
        name: &str,
        placeholder: String,
        value: Zeroizing<Vec<u8>>,
        hosts: Vec<String>,
        places: Places,
    ) -> Result<Secret, String> {
        if value.is_empty() {
            return Err(format!("secret {name}: the value is empty"));
        }
        if !placeholder.starts_with(PLACEHOLDER_PREFIX) {
            return Err(format!("secret {name}: malformed placeholder"));
        }
        let p = placeholder.as_bytes();
        if memchr::memmem::find(&value, p).is_some() || memchr::memmem::find(p, &value).is_some() {
            return Err(format!(
                "secret {name}: the value and its placeholder overlap"
            ));
        }
        if hosts.is_empty() {
            return Err(format!("secret {name}: bound to no host"));
        }
        let hosts = hosts
            .into_iter()
            .map(|h| crate::rules::normalize_name(&h).map_err(|e| format!("secret {name}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Secret {
            name: name.to_string(),
            placeholder,
            value,
            hosts,
            places,
        })
    }

    pub fn value(&self) -> &[u8] {
        &self.value
    }

    pub fn bound_to(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }
}

/// A placeholder for secret `name`: `STOCKADE_PLACEHOLDER_<NAME>_<32 hex digits>`, made only of
/// characters that URL encoding, header folding and JSON escaping leave alone. `random` must be
/// 16 bytes from the OS random source, fresh per sandbox and secret.
pub fn placeholder(name: &str, random: &[u8; 16]) -> String {
    let mut s = format!("{PLACEHOLDER_PREFIX}{name}_");
    for b in random {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The secrets of one sandbox.
#[derive(Debug, Default)]
pub struct SecretSet {
    pub secrets: Vec<Secret>,
}

impl SecretSet {
    pub fn new(secrets: Vec<Secret>) -> SecretSet {
        SecretSet { secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether any secret is bound to `host` (normalized): its connections are intercepted.
    pub fn bound(&self, host: &str) -> bool {
        self.secrets.iter().any(|s| s.bound_to(host))
    }

    /// The secrets whose placeholder appears in `bytes`.
    pub fn placeholders_in(&self, bytes: &[u8]) -> Vec<&Secret> {
        if memchr::memmem::find(bytes, PLACEHOLDER_PREFIX.as_bytes()).is_none() {
            return Vec::new();
        }
        self.secrets
            .iter()
            .filter(|s| memchr::memmem::find(bytes, s.placeholder.as_bytes()).is_some())
            .collect()
    }

    /// A replacer turning every secret's real value back into its placeholder (responses).
    pub fn scrubber(&self) -> Replacer {
        Replacer::new(
            self.secrets
                .iter()
                .enumerate()
                .map(|(i, s)| (s.value.to_vec(), s.placeholder.as_bytes().to_vec(), i))
                .collect(),
        )
    }

    /// A replacer of placeholders by values, for the secrets in `which` (indices).
    pub fn injector(&self, which: &[usize]) -> Replacer {
        Replacer::new(
            which
                .iter()
                .filter_map(|&i| self.secrets.get(i).map(|s| (i, s)))
                .map(|(i, s)| (s.placeholder.as_bytes().to_vec(), s.value.to_vec(), i))
                .collect(),
        )
    }

    /// A replacer that finds every placeholder (and replaces it by itself): for scanning.
    pub fn scanner(&self) -> Replacer {
        Replacer::new(
            self.secrets
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        s.placeholder.as_bytes().to_vec(),
                        s.placeholder.as_bytes().to_vec(),
                        i,
                    )
                })
                .collect(),
        )
    }
}

/// One pattern: (from, to, tag).
type Pair = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>, usize);

/// A streaming multi-pattern replacement. Patterns are non-empty; the earliest match wins (the
/// longest at a tie). Output bytes from [`Replacer::feed`] are final; up to `longest - 1` bytes
/// are held back until more input or [`Replacer::finish`] shows they start no match. Buffers that
/// may hold a secret value are zeroed when dropped.
pub struct Replacer {
    pairs: Vec<Pair>,
    carry: Zeroizing<Vec<u8>>,
    longest: usize,
    /// Matches per tag (the third element of each pair).
    pub counts: Vec<(usize, u64)>,
}

impl Replacer {
    pub fn new(pairs: Vec<(Vec<u8>, Vec<u8>, usize)>) -> Replacer {
        let pairs: Vec<_> = pairs
            .into_iter()
            .filter(|(from, _, _)| !from.is_empty())
            .map(|(f, t, i)| (Zeroizing::new(f), Zeroizing::new(t), i))
            .collect();
        let longest = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
        Replacer {
            pairs,
            carry: Zeroizing::new(Vec::new()),
            longest,
            counts: Vec::new(),
        }
    }

    pub fn is_noop(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The tags matched so far.
    pub fn matched(&self) -> impl Iterator<Item = usize> + '_ {
        self.counts.iter().map(|(t, _)| *t)
    }

    fn count(&mut self, tag: usize) {
        match self.counts.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((tag, 1)),
        }
    }

    /// The earliest match in `buf` at or after `from`: (position, pair index).
    fn next_match(&self, buf: &[u8], from: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (i, (pat, _, _)) in self.pairs.iter().enumerate() {
            if let Some(p) = memchr::memmem::find(&buf[from..], pat) {
                let at = from + p;
                let better = match best {
                    None => true,
                    Some((b, j)) => at < b || (at == b && pat.len() > self.pairs[j].0.len()),
                };
                if better {
                    best = Some((at, i));
                }
            }
        }
        best
    }

    /// The length of the longest suffix of `buf` that is a proper prefix of some pattern.
    fn partial_suffix(&self, buf: &[u8]) -> usize {
        let max = self.longest.saturating_sub(1).min(buf.len());
        (1..=max)
            .rev()
            .find(|&n| {
                let suffix = &buf[buf.len() - n..];
                self.pairs
                    .iter()
                    .any(|(p, _, _)| p.len() > n && p.starts_with(suffix))
            })
            .unwrap_or(0)
    }

    /// Feeds `chunk`; returns the bytes that are final.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.pairs.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut *self.carry);
        buf.extend_from_slice(chunk);
        self.run(Zeroizing::new(buf), false)
    }

    /// Ends the stream: the held-back bytes, replaced.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut *self.carry);
        self.run(Zeroizing::new(buf), true)
    }

    fn run(&mut self, buf: Zeroizing<Vec<u8>>, last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        let mut pending = None;
        while let Some((at, i)) = self.next_match(&buf, pos) {
            // A longer pattern could still start here once more bytes come: wait for them.
            if !last && at + self.longest > buf.len() {
                pending = Some(at);
                break;
            }
            out.extend_from_slice(&buf[pos..at]);
            out.extend_from_slice(&self.pairs[i].1);
            pos = at + self.pairs[i].0.len();
            let tag = self.pairs[i].2;
            self.count(tag);
        }
        let cut = if last {
            buf.len()
        } else {
            // Hold back only a tail that is the start of some pattern: anything else is final
            // now (a stream must not lag one chunk behind).
            let tail = buf.len() - self.partial_suffix(&buf[pos..]);
            pending.map_or(tail, |at| at.min(tail))
        };
        out.extend_from_slice(&buf[pos..cut]);
        self.carry.extend_from_slice(&buf[cut..]);
        out
    }

    /// Runs the whole of `data` through.
    pub fn apply(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = self.feed(data);
        out.extend(self.finish());
        out
    }
}

#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
