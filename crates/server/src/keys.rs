//! API keys and access tokens: generated from the OS's random source, shown once, stored as
//! SHA-256 hashes, compared in constant time.
//!
//! A key is `sk_` + 43 base64url characters (32 random bytes). `e2b_` + 40 hex characters is
//! the same thing spelled the way E2B's tools expect a key; both are accepted. A key's id
//! (`k` + 8 hex) names it in listings and revocation and is not secret.

use crate::store::{KeyRow, Store, StoreError};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no key {0} (see `stockade keys ls`)")]
    NoSuchKey(String),
    #[error("key {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("key names are 1-64 printable characters")]
    BadName,
}

/// Which spelling a new key gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// `sk_` + base64url.
    Native,
    /// `e2b_` + 40 hex characters (E2B's SDKs and CLI expect this shape).
    E2b,
}

/// `n` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

pub fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Constant-time equality of two hashes.
pub fn hash_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// True when `s` has the shape of a key (prefix and length), before any lookup.
pub fn looks_like_key(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("sk_") {
        rest.len() == 43
            && rest
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    } else if let Some(rest) = s.strip_prefix("e2b_") {
        rest.len() == 40 && rest.bytes().all(|c| c.is_ascii_hexdigit())
    } else {
        false
    }
}

/// A new access token for one sandbox: 43 base64url characters; returned once, kept hashed.
pub fn new_access_token() -> Result<(String, [u8; 32]), KeyError> {
    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let h = sha256(&t);
    Ok((t, h))
}

/// A created key: the secret (print it once) and its stored row.
pub struct NewKey {
    pub key: String,
    pub row: KeyRow,
}

/// Creates and stores a key named `name`.
pub fn create(store: &Store, name: &str, format: KeyFormat) -> Result<NewKey, KeyError> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(KeyError::BadName);
    }
    let key = match format {
        KeyFormat::Native => format!(
            "sk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
        ),
        // 20 bytes: E2B keys are 40 hex characters after the prefix.
        KeyFormat::E2b => format!("e2b_{}", hex(&random_bytes::<20>()?)),
    };
    let row = KeyRow {
        id: format!("k{}", hex(&random_bytes::<4>()?)),
        name: name.to_string(),
        hash: sha256(&key),
        created_at: crate::service::rfc3339(std::time::SystemTime::now()),
        revoked_at: None,
    };
    store.insert_key(&row)?;
    Ok(NewKey { key, row })
}

/// The key's row when `key` is a live (not revoked) key.
pub fn verify(store: &Store, key: &str) -> Result<Option<KeyRow>, StoreError> {
    if !looks_like_key(key) {
        return Ok(None);
    }
    let h = sha256(key);
    let Some(row) = store.key_by_hash(&h)? else {
        return Ok(None);
    };
    // The index found it by hash; compare again without an early exit.
    if !hash_eq(&row.hash, &h) || row.revoked_at.is_some() {
        return Ok(None);
    }
    Ok(Some(row))
}

pub fn revoke(store: &Store, id: &str) -> Result<(), KeyError> {
    let at = crate::service::rfc3339(std::time::SystemTime::now());
    if store.revoke_key(id, &at)? {
        return Ok(());
    }
    if store.key_exists(id)? {
        Err(KeyError::AlreadyRevoked(id.to_string()))
    } else {
        Err(KeyError::NoSuchKey(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let k = create(&s, "ci", KeyFormat::Native).unwrap();
        assert!(looks_like_key(&k.key), "{}", k.key.len());
        assert_eq!(verify(&s, &k.key).unwrap().unwrap().id, k.row.id);
        let e = create(&s, "sdk", KeyFormat::E2b).unwrap();
        assert!(e.key.starts_with("e2b_") && looks_like_key(&e.key));
        assert!(verify(&s, &e.key).unwrap().is_some());
        // A key of the right shape that was never issued, and a mangled one.
        let mut other = k.key.clone();
        other.replace_range(5..6, if &other[5..6] == "A" { "B" } else { "A" });
        assert!(verify(&s, &other).unwrap().is_none());
        assert!(verify(&s, "sk_short").unwrap().is_none());
        revoke(&s, &k.row.id).unwrap();
        assert!(verify(&s, &k.key).unwrap().is_none());
        assert!(matches!(
            revoke(&s, &k.row.id),
            Err(KeyError::AlreadyRevoked(_))
        ));
        assert!(matches!(revoke(&s, "knope"), Err(KeyError::NoSuchKey(_))));
        // Nothing secret is stored.
        let raw = std::fs::read(dir.path().join("db")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("db-wal")).unwrap_or_default();
        for b in [raw, wal] {
            assert!(!String::from_utf8_lossy(&b).contains(&k.key[3..]));
        }
        assert!(create(&s, "", KeyFormat::Native).is_err());
    }
}
