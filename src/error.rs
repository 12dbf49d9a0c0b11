//! The one error type of the application layer, mapped once to the REST envelope
//! (`IntoResponse`, in `rest`) and once to GraphQL `extensions.code` (`ErrorExtensions`, in
//! `graphql`); the wire codes are in `code`.
//!
//! Database errors are classified in `db` and never shown to clients as text.
use serde_json::Value;

mod code;
mod db;
mod graphql;
mod rest;

pub use code::ErrorCode;
pub use db::{is_transient, is_transient_code};
pub use rest::{ErrorBody, error_body};

/// How long a client should wait before retrying after a transient fault (the
/// `Retry-After` of every 503 and GraphQL `UNAVAILABLE`).
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What the request middleware knows of the current request, for code running inside it.
pub struct RequestScope {
    /// The request id, as the `X-Request-Id` header value it goes out as (a cheap clone);
    /// turned into text only when an error body or a log line needs it.
    pub id: axum::http::HeaderValue,
    /// The authenticated user, once the token is verified, for the request log line.
    pub user: std::cell::Cell<Option<uuid::Uuid>>,
}

tokio::task_local! {
    /// The current request, set by the request middleware, so that error bodies carry the
    /// same id as the `X-Request-Id` header.
    pub static REQUEST: RequestScope;
}

/// The current request id, when called inside a request.
pub fn current_request_id() -> Option<String> {
    REQUEST
        .try_with(|scope| scope.id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The caller's grants do not cover what they ask for (REST 403 `ACCESS_DENIED`,
    /// GraphQL `FORBIDDEN`).
    #[error("{0}")]
    AccessDenied(String),
    /// What was asked for existed and is gone for good (REST 410); the code says what to
    /// do instead (a withdrawn package, an expired pull cursor).
    #[error("{message}")]
    Gone { code: ErrorCode, message: String },
    /// Bad input: `code` is the REST `error_code` (GraphQL: `BAD_USER_INPUT`).
    #[error("{message}")]
    BadRequest {
        code: ErrorCode,
        message: String,
        details: Option<Value>,
    },
    /// Well-formed input that conflicts with the state of what it names (REST 409).
    #[error("{message}")]
    Conflict {
        code: ErrorCode,
        message: String,
        details: Option<Value>,
    },
    /// A `Range` none of whose bytes exist (REST 416).
    #[error("the range is outside the {length} bytes of this representation")]
    RangeNotSatisfiable { length: u64 },
    /// Bytes of a type that may not be stored (REST 415 `MEDIA_TYPE_NOT_ALLOWED`).
    #[error("{0}")]
    MediaTypeNotAllowed(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("rate limit exceeded, retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A transient fault (database down or timing out): the client retries later.
    #[error("service temporarily unavailable, retry later")]
    Unavailable { retry_after_secs: u64 },
    /// A bug or an unexpected fault. The message is logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        AppError::BadRequest {
            code: ErrorCode::ValidationError,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request_with(code: ErrorCode, message: impl Into<String>, details: Value) -> Self {
        AppError::BadRequest {
            code,
            message: message.into(),
            details: Some(details),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        AppError::Internal(message.into())
    }

    pub fn unavailable() -> Self {
        AppError::Unavailable {
            retry_after_secs: RETRY_AFTER.as_secs(),
        }
    }

    pub(crate) fn details(&self) -> Value {
        match self {
            AppError::BadRequest { details, .. } | AppError::Conflict { details, .. } => {
                details.clone().unwrap_or(Value::Null)
            }
            _ => Value::Null,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            AppError::RateLimited { retry_after_secs }
            | AppError::Unavailable { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The message for an operator at a terminal (the CLI): unlike
    /// [`AppError::public_message`], it names the cause of an internal error.
    pub fn operator_message(&self) -> String {
        match self {
            AppError::Internal(detail) => format!("internal error: {detail}"),
            other => other.to_string(),
        }
    }

    /// The client-facing message: internal details are never shown.
    pub fn public_message(&self) -> String {
        self.to_string()
    }

    pub(crate) fn log(&self) {
        match self {
            AppError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            AppError::Unavailable { .. } => tracing::warn!("request failed: service unavailable"),
            _ => {}
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_the_one_retry_after() {
        assert_eq!(
            AppError::unavailable().retry_after(),
            Some(RETRY_AFTER.as_secs())
        );
    }
}
