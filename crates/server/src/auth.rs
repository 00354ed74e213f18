//! Credentials from request headers: `Authorization: Bearer <key>` or `X-API-Key: <key>` for
//! API keys, `X-Access-Token: <token>` for one sandbox's data plane. Values are never logged.

use crate::error::ApiError;
use axum::http::HeaderMap;

/// The key-holder behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: KeyId,
    /// The key's name (for logs; not secret).
    pub key_name: String,
}

/// The id of an API key (`k` + 8 hex), not secret.
pub type KeyId = String;

/// What a data-plane request presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An API key (must own the sandbox).
    Key(String),
    /// The sandbox's access token.
    AccessToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Key(_) => f.write_str("Credentials::Key(..)"),
            Credentials::AccessToken(_) => f.write_str("Credentials::AccessToken(..)"),
        }
    }
}

const MISSING: &str = "this endpoint needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>` (create one with `stockade keys create`)";

/// The API key a request carries, if any. A header that is present but unreadable is an error.
pub fn api_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| {
            ApiError::Unauthorized("the Authorization header is not valid text".into())
        })?;
        let Some((scheme, token)) = v.split_once(' ') else {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <key>`".into(),
            ));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <key>`".into(),
            ));
        }
        return Ok(Some(token.trim().to_string()));
    }
    if let Some(v) = headers.get("x-api-key") {
        let v = v
            .to_str()
            .map_err(|_| ApiError::Unauthorized("the X-API-Key header is not valid text".into()))?;
        return Ok(Some(v.trim().to_string()));
    }
    Ok(None)
}

/// The API key a request must carry, or 401.
pub fn require_api_key(headers: &HeaderMap) -> Result<String, ApiError> {
    api_key(headers)?.ok_or_else(|| ApiError::Unauthorized(MISSING.into()))
}

/// Data-plane credentials: an API key when one is sent, else `X-Access-Token`, else 401.
pub fn credentials(headers: &HeaderMap) -> Result<Credentials, ApiError> {
    if let Some(k) = api_key(headers)? {
        return Ok(Credentials::Key(k));
    }
    if let Some(v) = headers.get("x-access-token") {
        let v = v.to_str().map_err(|_| {
            ApiError::Unauthorized("the X-Access-Token header is not valid text".into())
        })?;
        return Ok(Credentials::AccessToken(v.trim().to_string()));
    }
    Err(ApiError::Unauthorized(
        "this endpoint needs the sandbox's access token (`X-Access-Token: <token>`, returned when it was created) or its owner's API key (`Authorization: Bearer <key>`)".into(),
    ))
}

/// The 401 for a key that is not (or no longer) valid. Says nothing about which case it was.
pub fn bad_key() -> ApiError {
    ApiError::Unauthorized(
        "invalid or revoked API key (keys are created with `stockade keys create`)".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn headers() {
        assert_eq!(
            api_key(&h(&[("authorization", "Bearer sk_x")])).unwrap(),
            Some("sk_x".into())
        );
        assert_eq!(
            api_key(&h(&[("x-api-key", "e2b_y")])).unwrap(),
            Some("e2b_y".into())
        );
        assert!(api_key(&h(&[("authorization", "Basic abc")])).is_err());
        assert_eq!(api_key(&h(&[])).unwrap(), None);
        assert!(require_api_key(&h(&[])).is_err());
        assert_eq!(
            credentials(&h(&[("x-access-token", "t")])).unwrap(),
            Credentials::AccessToken("t".into())
        );
        assert!(!format!("{:?}", Credentials::Key("sk_secret".into())).contains("secret"));
    }
}
