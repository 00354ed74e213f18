//! # stockade-gateway: the egress gateway's decisions and parsers
//!
//! The host-side gateway decides, per DNS query and per connection, whether a sandbox may reach
//! a name (see `DESIGN.md`, "Network design", and issue 4). This crate holds the pure part of that
//! decision: everything that reads bytes the sandbox controls, and every rule applied to them,
//! and [`conn`], the per-connection handler that applies them to a live socket (blocking std I/O).
//! Not wired into sandboxes yet: the agent bridge (DNS and loopback acceptors inside the sandbox),
//! the listener loop and the `net.*` audit events come next; until then the runtime refuses any
//! network mode but `none`.
//!
//! | module    | reads                               | answers                                        |
//! |-----------|-------------------------------------|------------------------------------------------|
//! | [`rules`] | `network.allow` / `network.deny`    | may `(name, port)` go out? stable reason code  |
//! | [`addr`]  | a resolved address, `allow_private` | may the gateway dial it? (DNS rebinding)       |
//! | [`sni`]   | first bytes of a TLS connection     | the ClientHello's `server_name`                |
//! | [`http`]  | first bytes of an HTTP/1.x request  | method, target, `Host`, destination            |
//! | [`dns`]   | a DNS query                         | the query, and the reply bytes                 |
//! | [`conn`]  | one client connection               | checked, resolved, dialled, relayed; a record  |
//!
//! ## What it guarantees
//!
//! - `#![forbid(unsafe_code)]`, no global state; only [`conn`] does I/O.
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
//! [`conn`] checks the SNI and `Host` of a connection against the name the sandbox's DNS query
//! was mapped to; the mapping itself lives in the agent bridge, not built yet. No Encrypted
//! Client Hello, no HTTP/2 preface, no IDNA.
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
pub mod intercept;
pub mod rules;
pub mod secrets;
pub mod sni;

#[cfg(test)]
mod testutil;
