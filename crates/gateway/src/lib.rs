//! # stockade-gateway: the egress gateway's decisions and parsers
//!
//! placeholder
#![forbid(unsafe_code)]

pub mod addr;
pub mod http;
pub mod rules;
pub mod sni;

#[cfg(test)]
mod testutil;
