//! The head of an HTTP/1.x request at the start of a connection: who the client wants to reach.
//!
//! ## What it guarantees
//!
//! - [`parse_head`] reads only from its slice, never panics, and gives up with
//!   `Malformed("head_too_large")` once [`MAX_HEAD`] bytes hold no blank line; a valid prefix is
//!   [`HeadResult::NeedMore`].
//! - Strict framing, so the gateway and the upstream server cannot read the request differently:
//!   lines end in CRLF (a bare CR or LF is refused), no NUL or other control byte, no obs-fold
//!   (continuation lines), no space before a header's colon, one `Host` header at most, `Host`
//!   required in HTTP/1.1, and no request with both `Content-Length` and `Transfer-Encoding` or
//!   with two `Content-Length` headers. Only `HTTP/1.0` and `HTTP/1.1` are accepted.
//! - [`destination`] turns a head into the `(host, port)` it names: `CONNECT host:port`
//!   (authority-form, port required), `http://host[:port]/...` (absolute-form, as proxies get
//!   it; `Host` must then name the same authority), or origin-form `/path` with `Host` (port 80
//!   unless given). User info (`user@host`) is refused. [`authority`] parses `host[:port]` with
//!   `[IPv6]` literals. Names come back as sent; [`crate::rules::Rules::decide`] checks them.
//!
//! Tested below: each form, each refusal with its code, every prefix of valid heads, and no-panic
//! loops over generated and mutated heads.

/// The largest request head (request line and headers, with the blank line) accepted.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// The `Host` header's value, trimmed; `None` only in HTTP/1.0.
    pub host: Option<String>,
    pub version: Version,
    /// Bytes up to and including the blank line; the body (or tunnelled bytes) follows.
    pub head_len: usize,
}

/// The outcome of [`parse_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadResult {
    Complete(Head),
    NeedMore,
    Malformed(&'static str),
}

/// Parses the request head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> HeadResult {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Check what we have so a bad head is refused before it is complete.
        if let Err(code) = check_bytes(window).and_then(|()| split_lines(window).map(|_| ())) {
            return HeadResult::Malformed(code);
        }
        return if buf.len() >= MAX_HEAD {
            HeadResult::Malformed("head_too_large")
        } else {
            HeadResult::NeedMore
        };
    };
    let head_len = end + 4;
    match parse_complete(&window[..end + 2], head_len) {
        Ok(h) => HeadResult::Complete(h),
        Err(code) => HeadResult::Malformed(code),
    }
}

/// The first framing fault in `b`, in byte order: a NUL, a CR not followed by LF, or an LF not
/// preceded by CR (a CR as the last byte may start a CRLF still to come). In byte order, so the
/// code is the same however the bytes were split into reads.
fn check_bytes(b: &[u8]) -> Result<(), &'static str> {
    for (i, &c) in b.iter().enumerate() {
        match c {
            0 => return Err("nul_byte"),
            b'\r' if b.get(i + 1).is_some_and(|&n| n != b'\n') => return Err("bare_cr"),
            b'\n' if i == 0 || b[i - 1] != b'\r' => return Err("bare_lf"),
            _ => {}
        }
    }
    Ok(())
}

/// Splits CRLF-terminated lines (the last, unterminated piece is left out).
fn split_lines(b: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut lines = Vec::new();
    let mut rest = b;
    while let Some(i) = rest.iter().position(|&c| c == b'\n') {
        let line = &rest[..i];
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err("bare_lf");
        };
        if line.contains(&b'\r') {
            return Err("bare_cr");
        }
        lines.push(line);
        rest = &rest[i + 1..];
    }
    // The unterminated rest may end in the CR of a CRLF still to come; no CR elsewhere.
    if rest
        .iter()
        .position(|&c| c == b'\r')
        .is_some_and(|i| i + 1 != rest.len())
    {
        return Err("bare_cr");
    }
    Ok(lines)
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn parse_complete(head: &[u8], head_len: usize) -> Result<Head, &'static str> {
    check_bytes(head)?;
    let lines = split_lines(head)?;
    let mut lines = lines.into_iter();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&c| c == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("bad_request_line");
    };
    if method.is_empty() || !method.iter().all(|&c| is_tchar(c)) {
        return Err("bad_method");
    }
    if target.is_empty() || !target.iter().all(|&c| c.is_ascii_graphic()) {
        return Err("bad_target");
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err("unsupported_version"),
    };
    let mut host: Option<String> = None;
    let mut content_length: Option<&[u8]> = None;
    let mut transfer_encoding = false;
    for line in lines {
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            return Err("obs_fold");
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return Err("bad_header_line");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err("bad_header_name");
        }
        if !value
            .iter()
            .all(|&c| c == b'\t' || c == b' ' || c.is_ascii_graphic() || c >= 0x80)
        {
            return Err("bad_header_value");
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err("duplicate_host");
            }
            if value.is_empty() || !value.is_ascii() {
                return Err("bad_host");
            }
            host = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err("duplicate_content_length");
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
    }
    if content_length.is_some() && transfer_encoding {
        return Err("content_length_and_transfer_encoding");
    }
    if content_length.is_some_and(|cl| cl.is_empty() || !cl.iter().all(u8::is_ascii_digit)) {
        return Err("bad_content_length");
    }
    if version == Version::Http11 && host.is_none() {
        return Err("missing_host");
    }
    Ok(Head {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        host,
        version,
        head_len,
    })
}

/// Parses `host[:port]` or `[v6]:port`. The host comes back without brackets, as sent.
pub fn authority(s: &str) -> Result<(String, Option<u16>), &'static str> {
    if s.contains('@') {
        return Err("userinfo_not_allowed");
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("bad_authority");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("bad_authority");
        }
        match after {
            "" => (v6, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (v6, Some(p)),
                None => return Err("bad_authority"),
            },
        }
    } else {
        match s.split_once(':') {
            Some((_, p)) if p.contains(':') => return Err("bad_authority"),
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("bad_authority");
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err("bad_port"),
            }
        }
        Some(_) => return Err("bad_port"),
    };
    Ok((host.to_string(), port))
}

/// How the request named its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `CONNECT host:port`: a tunnel.
    Connect,
    /// `GET http://host/path`: a plain-HTTP proxy request.
    Absolute,
    /// `GET /path` with `Host`: a request that reached the gateway without a proxy.
    Origin,
}

/// Where the request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    pub form: Form,
}

/// The destination a head names; the codes are stable (`host_mismatch`, `connect_needs_port`, ...).
pub fn destination(head: &Head) -> Result<Destination, &'static str> {
    if head.method == "CONNECT" {
        let (host, port) = authority(&head.target)?;
        let port = port.ok_or("connect_needs_port")?;
        return Ok(Destination {
            host,
            port,
            form: Form::Connect,
        });
    }
    if head.target.starts_with('/') {
        let (host, port) = authority(head.host.as_deref().ok_or("missing_host")?)?;
        return Ok(Destination {
            host,
            port: port.unwrap_or(80),
            form: Form::Origin,
        });
    }
    let lower = head.target.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("http://") else {
        // https:// through a plain proxy request, ftp://, `*`: not forwarded.
        return Err("unsupported_target");
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The target is ASCII (checked by the parser), so indices into `lower` fit it too.
    let raw = head
        .target
        .get("http://".len()..)
        .and_then(|t| t.get(..auth_end))
        .ok_or("bad_target")?;
    let (host, port) = authority(raw)?;
    if let Some(h) = &head.host {
        let (hh, hp) = authority(h)?;
        if !hh.eq_ignore_ascii_case(&host) || hp.unwrap_or(80) != port.unwrap_or(80) {
            return Err("host_mismatch");
        }
    }
    Ok(Destination {
        host,
        port: port.unwrap_or(80),
        form: Form::Absolute,
    })
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
