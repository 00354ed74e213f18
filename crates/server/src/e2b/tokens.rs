//! Extra envd access tokens, minted by `POST /sandboxes/{id}/connect`.
//!
//! The server keeps only a hash of the token returned at create, so a second client that
//! connects to a running sandbox (`Sandbox.connect(id)`) gets a token of its own: minted here,
//! kept as a SHA-256 hash next to the sandbox's own, checked in constant time, at most
//! [`MAX_PER_SANDBOX`] per sandbox (the oldest is dropped), forgotten once the sandbox ends.

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

pub const MAX_PER_SANDBOX: usize = 16;

static TOKENS: LazyLock<Mutex<HashMap<String, Vec<[u8; 32]>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A new token for sandbox `id`. `alive` says which sandboxes still run (others are forgotten).
pub fn mint(id: &str, alive: impl Fn(&str) -> bool) -> Result<String, ApiError> {
    let (token, hash) = crate::keys::new_access_token()
        .map_err(|e| ApiError::Internal(format!("minting an access token: {e}")))?;
    let mut map = TOKENS
        .lock()
        .map_err(|_| ApiError::Internal("token table poisoned".into()))?;
    map.retain(|k, _| k == id || alive(k));
    let v = map.entry(id.to_string()).or_default();
    if v.len() >= MAX_PER_SANDBOX {
        v.remove(0);
    }
    v.push(hash);
    Ok(token)
}

/// Whether `token` is one minted for sandbox `id`.
pub fn matches(id: &str, token: &str) -> bool {
    let h = crate::keys::sha256(token);
    let Ok(map) = TOKENS.lock() else {
        return false;
    };
    map.get(id)
        .is_some_and(|v| v.iter().fold(false, |m, t| m | crate::keys::hash_eq(t, &h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_match_only_their_sandbox() {
        let t = mint("aaaaaaaaaaaaaaaa", |_| true).unwrap();
        assert!(matches("aaaaaaaaaaaaaaaa", &t));
        assert!(!matches("bbbbbbbbbbbbbbbb", &t));
        assert!(!matches("aaaaaaaaaaaaaaaa", "not-the-token"));
        let mut all = vec![t];
        for _ in 0..MAX_PER_SANDBOX {
            all.push(mint("aaaaaaaaaaaaaaaa", |_| true).unwrap());
        }
        assert!(!matches("aaaaaaaaaaaaaaaa", &all[0]), "oldest dropped");
        assert!(matches("aaaaaaaaaaaaaaaa", all.last().unwrap()));
        // Minting for another sandbox forgets those that ended.
        mint("cccccccccccccccc", |_| false).unwrap();
        assert!(!matches("aaaaaaaaaaaaaaaa", all.last().unwrap()));
    }
}
