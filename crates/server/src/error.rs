//! [`ApiError`]: every failure the HTTP layers answer, as the native JSON error shape
//! `{"error": {"code": "<snake_case>", "message": "..."}}` with a fitting status.
//!
//! Messages are for the client and must never carry a secret (API key, access token, env value).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A failed request: the status, a stable code and one clear message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: the request itself is wrong (body, parameter, policy...).
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: no credentials, or not valid ones.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: valid credentials that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`: no such sandbox (or not the caller's: never tell which).
    #[error("{0}")]
    NotFound(String),
    /// 409 `conflict`: the request clashes with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413 `too_large`.
    #[error("{0}")]
    TooLarge(String),
    /// 429 `too_many_sandboxes`: a quota is reached.
    #[error("{0}")]
    TooManySandboxes(String),
    /// 500 `internal`: the server failed; details are logged, not leaked.
    #[error("{0}")]
    Internal(String),
    /// 503 `unavailable`: shutting down, or a dependency is not ready.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManySandboxes(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `code` of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::TooManySandboxes(_) => "too_many_sandboxes",
            ApiError::Internal(_) => "internal",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::TooManySandboxes(m)
            | ApiError::Internal(m)
            | ApiError::Unavailable(m) => m,
        }
    }

    /// The 404 for a sandbox id the caller cannot see (unknown, ended, or another key's).
    pub fn no_sandbox(id: &str) -> ApiError {
        // The id is echoed only when it has the shape of one: request input is hostile.
        if crate::service::valid_id(id) {
            ApiError::NotFound(format!("no sandbox {id}"))
        } else {
            ApiError::NotFound("no such sandbox (ids are 16 hex characters)".into())
        }
    }

    /// The native JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code(), "message": self.message() } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

/// Axum rejections (bad JSON, missing query...) as native 400/413 errors.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(r.body_text())
        } else {
            ApiError::BadRequest(r.body_text())
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "state database");
        ApiError::Internal("the server's state database failed; see the server log".into())
    }
}
