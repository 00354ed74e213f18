//! The server name a TLS client asks for, read from the ClientHello at the start of a connection.
//!
//! ## What it guarantees
//!
//! - [`parse_sni`] reads only from the slice it is given, never panics, and never allocates more
//!   than the ClientHello it reassembles (at most [`MAX_CLIENT_HELLO`] bytes).
//! - The ClientHello may be split across TLS records and the buffer may end at any byte: a prefix
//!   of a valid ClientHello is [`SniResult::NeedMore`], never `Malformed` nor `Complete`.
//! - Every length field is checked against the bytes that hold it; a length that points past its
//!   container, trailing bytes inside a structure, a second `server_name` extension or a second
//!   `host_name` entry are [`SniResult::Malformed`] with a stable code. Unknown and GREASE
//!   extensions are skipped.
//! - A first byte other than the handshake record type (22) or a record version other than
//!   3.0–3.4 is [`SniResult::NotTls`] (a plain-HTTP request, for instance).
//! - The name is returned as sent (ASCII, not yet normalized); [`crate::rules::Rules::decide`]
//!   checks and lowercases it. A ClientHello without the extension is `Complete(None)`.
//!
//! ## What it does not do
//!
//! Encrypted Client Hello: only the outer (public) name is visible. The caller decides what a
//! missing SNI means (the gateway refuses it).
//!
//! Tested below with a ClientHello made by rustls (split at every byte, across records), hand-built
//! ones for each error path, and no-panic loops over generated and mutated input.

/// The largest ClientHello handshake message accepted (post-quantum key shares make them ~2 KiB).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// The outcome of [`parse_sni`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniResult {
    /// A whole ClientHello was read; the `host_name`, if it had one.
    Complete(Option<String>),
    /// A valid prefix: read more bytes and call again with the whole buffer.
    NeedMore,
    /// The connection does not start with a TLS handshake record.
    NotTls,
    /// A TLS handshake that cannot be trusted; the code says where it broke.
    Malformed(&'static str),
}

/// Reads the SNI `host_name` from the TLS records at the start of `buf`.
pub fn parse_sni(buf: &[u8]) -> SniResult {
    match reassemble(buf) {
        Ok(hello) => match client_hello_sni(&hello) {
            Ok(name) => SniResult::Complete(name),
            Err(code) => SniResult::Malformed(code),
        },
        Err(r) => r,
    }
}

/// Collects the ClientHello body (without its 4-byte handshake header) from one or more
/// handshake records.
fn reassemble(buf: &[u8]) -> Result<Vec<u8>, SniResult> {
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    let mut first = true;
    loop {
        // Record header, checked byte by byte so a short buffer is told apart from a wrong one.
        match rest.first() {
            None => return Err(SniResult::NeedMore),
            Some(&HANDSHAKE) => {}
            Some(_) if first => return Err(SniResult::NotTls),
            Some(_) => return Err(SniResult::Malformed("record_not_handshake")),
        }
        match rest.get(1) {
            None => return Err(SniResult::NeedMore),
            Some(3) => {}
            Some(_) if first => return Err(SniResult::NotTls),
            Some(_) => return Err(SniResult::Malformed("record_version")),
        }
        match rest.get(2) {
            None => return Err(SniResult::NeedMore),
            Some(0..=4) => {}
            Some(_) if first => return Err(SniResult::NotTls),
            Some(_) => return Err(SniResult::Malformed("record_version")),
        }
        let Some(len) = rest.get(3..5) else {
            return Err(SniResult::NeedMore);
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 {
            return Err(SniResult::Malformed("empty_record"));
        }
        if len > 16 * 1024 {
            return Err(SniResult::Malformed("record_too_long"));
        }
        first = false;
        let body = &rest[RECORD_HEADER..];
        let take = len.min(body.len());
        hs.extend_from_slice(&body[..take]);

        if hs.first().is_some_and(|&t| t != CLIENT_HELLO) {
            return Err(SniResult::Malformed("not_client_hello"));
        }
        if let Some(h) = hs.get(1..4) {
            let want = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if want > MAX_CLIENT_HELLO {
                return Err(SniResult::Malformed("client_hello_too_long"));
            }
            if hs.len() >= 4 + want {
                if hs.len() > 4 + want || take < len {
                    // Bytes after the ClientHello in the same record: a second handshake message,
                    // which a client may not send before the server's reply.
                    return Err(SniResult::Malformed("trailing_handshake_data"));
                }
                hs.drain(..4);
                return Ok(hs);
            }
        }
        if take < len {
            return Err(SniResult::NeedMore);
        }
        rest = &body[take..];
    }
}

/// A cursor that never reads past its slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, code: &'static str) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err(code);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, code: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, code)?[0])
    }

    fn u16(&mut self, code: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, code)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self, code: &'static str) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u8(code)?);
        self.take(n, code)
    }

    fn vec16(&mut self, code: &'static str) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u16(code)?);
        self.take(n, code)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn client_hello_sni(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    let version = r.u16("short_client_hello")?;
    if version >> 8 != 3 {
        return Err("client_hello_version");
    }
    r.take(32, "short_random")?;
    let session_id = r.vec8("bad_session_id")?;
    if session_id.len() > 32 {
        return Err("bad_session_id");
    }
    let suites = r.vec16("bad_cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad_cipher_suites");
    }
    if r.vec8("bad_compression_methods")?.is_empty() {
        return Err("bad_compression_methods");
    }
    if r.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut exts = Reader(r.vec16("bad_extensions_length")?);
    if !r.is_empty() {
        return Err("trailing_client_hello_data");
    }
    let mut name = None;
    let mut seen_sni = false;
    while !exts.is_empty() {
        let kind = exts.u16("bad_extension")?;
        let data = exts.vec16("bad_extension")?;
        if kind == EXT_SERVER_NAME {
            if seen_sni {
                return Err("duplicate_server_name");
            }
            seen_sni = true;
            name = server_name(data)?;
        }
    }
    Ok(name)
}

fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16("bad_server_name_list")?);
    if !outer.is_empty() || list.is_empty() {
        return Err("bad_server_name_list");
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("bad_server_name_list")?;
        let value = list.vec16("bad_server_name_list")?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err("duplicate_host_name");
        }
        if value.is_empty() {
            return Err("empty_host_name");
        }
        if !value.is_ascii() {
            return Err("host_name_not_ascii");
        }
        host = Some(String::from_utf8_lossy(value).into_owned());
    }
    Ok(host)
}

#[cfg(test)]
#[path = "sni_tests.rs"]
mod tests;
