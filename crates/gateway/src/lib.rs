//! # stockade-gateway: the egress gateway's decisions and parsers
//!
//! The host-side gateway decides, per DNS query and per connection, whether a sandbox may reach
//! a name (see `DESIGN.md`, "Network design", and issue 4). This crate holds the pure part of that
//! decision: everything that reads bytes the sandbox controls, and every rule applied to them.
//! Nothing here does I/O; the gateway's sockets, the agent bridge and the audit events are wired
//! on top of it.
//!
//! | module    | reads                               | answers                                        |
//! |-----------|-------------------------------------|------------------------------------------------|
//! | [`rules`] | `network.allow` / `network.deny`    | may `(name, port)` go out? stable reason code  |
//! | [`addr`]  | a resolved address, `allow_private` | may the gateway dial it? (DNS rebinding)       |
//! | [`sni`]   | first bytes of a TLS connection     | the ClientHello's `server_name`                |
//! | [`http`]  | first bytes of an HTTP/1.x request  | method, target, `Host`, destination            |
//! | [`dns`]   | a DNS query                         | the query, and the reply bytes                 |
//!
//! ## What it guarantees
//!
//! - `#![forbid(unsafe_code)]`, no I/O, no global state.
//! - Parsers of untrusted bytes (`sni`, `http`, `dns`) never panic and never read past their
//!   input; partial input is "need more", never a wrong answer; their inputs are capped (16 KiB
//!   for a ClientHello or a request head).
//! - Refusals carry stable `&'static str` codes (`denied:not_in_allowlist`,
//!   `denied:private_address`, ...), for the `net.dns` / `net.connect` audit events.
//! - Fail closed: a name outside the grammar, a missing SNI or `Host`, an address of an unknown
//!   class: refused.
//!
//! ## What it does not do (yet)
//!
//! It does not compare the three names (DNS mapping, SNI, `Host`) of one connection: that needs
//! the connection state, which the wiring holds. No Encrypted Client Hello, no HTTP/2 preface,
//! no IDNA.
//!
//! ## How it is tested
//!
//! Unit tests beside each module with exact expectations (valid and invalid inputs, boundaries),
//! a real ClientHello made by rustls, and for each parser a no-panic loop over thousands of
//! generated inputs plus every truncation and random byte flips of valid inputs.
#![forbid(unsafe_code)]

pub mod addr;
pub mod conn;
pub mod dns;
pub mod http;
pub mod rules;
pub mod sni;

#[cfg(test)]
mod testutil;
