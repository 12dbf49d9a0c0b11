//! The one error type of the application layer, mapped once to the REST envelope
//! (`IntoResponse`) and once to GraphQL `extensions.code` (`ErrorExtensions`).
//!
//! Database and cache errors are classified here and never shown to clients as text.
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sea_orm::{DbErr, RuntimeErr, SqlErr};
use serde_json::Value;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware, so that error
    /// bodies carry the same id as the `X-Request-Id` header.
    pub static REQUEST_ID: String;
}

/// The current request id, when called inside a request.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Every error code this server puts on the wire: REST `error_code` and GraphQL
/// `extensions.code`. The variant names are the wire names (UPPER_SNAKE_CASE via serde), so
/// a code is written once and a typo cannot compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    // Shared by both surfaces.
    Unauthenticated,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
    InternalServerError,
    // REST.
    ValidationError,
    ValidationLimitExceeded,
    MalformedJson,
    BadRequest,
    EmptyScope,
    DeltaScopeMismatch,
    RangeNotSatisfiable,
    PayloadTooLarge,
    MethodNotAllowed,
    RequestTimeout,
    UnsupportedMediaType,
    NotAcceptable,
    // GraphQL (Apollo's names plus ours).
    BadUserInput,
    GraphqlParseFailed,
    GraphqlValidationFailed,
    PersistedQueryNotFound,
    PersistedQueryNotInList,
    QueryNotInSafelist,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::InternalServerError,
        ErrorCode::ValidationError,
        ErrorCode::ValidationLimitExceeded,
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::EmptyScope,
        ErrorCode::DeltaScopeMismatch,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::PayloadTooLarge,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::NotAcceptable,
        ErrorCode::BadUserInput,
        ErrorCode::GraphqlParseFailed,
        ErrorCode::GraphqlValidationFailed,
        ErrorCode::PersistedQueryNotFound,
        ErrorCode::PersistedQueryNotInList,
        ErrorCode::QueryNotInSafelist,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::InternalServerError => "INTERNAL_SERVER_ERROR",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::ValidationLimitExceeded => "VALIDATION_LIMIT_EXCEEDED",
            ErrorCode::MalformedJson => "MALFORMED_JSON",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::EmptyScope => "EMPTY_SCOPE",
            ErrorCode::DeltaScopeMismatch => "DELTA_SCOPE_MISMATCH",
            ErrorCode::RangeNotSatisfiable => "RANGE_NOT_SATISFIABLE",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::NotAcceptable => "NOT_ACCEPTABLE",
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::GraphqlParseFailed => "GRAPHQL_PARSE_FAILED",
            ErrorCode::GraphqlValidationFailed => "GRAPHQL_VALIDATION_FAILED",
            ErrorCode::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            ErrorCode::PersistedQueryNotInList => "PERSISTED_QUERY_NOT_IN_LIST",
            ErrorCode::QueryNotInSafelist => "QUERY_NOT_IN_SAFELIST",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for async_graphql::Value {
    fn from(code: ErrorCode) -> Self {
        async_graphql::Value::from(code.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Bad input: `code` is the REST `error_code` (GraphQL: `BAD_USER_INPUT`).
    #[error("{message}")]
    BadRequest {
        code: ErrorCode,
        message: String,
        details: Option<Value>,
    },
    /// Well-formed input refused by a business rule (REST 422).
    #[error("{message}")]
    Unprocessable {
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
            retry_after_secs: 2,
        }
    }

    /// REST status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// REST `error_code`.
    pub fn rest_code(&self) -> ErrorCode {
        match self {
            AppError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::BadRequest { code, .. }
            | AppError::Unprocessable { code, .. }
            | AppError::Conflict { code, .. } => *code,
            AppError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            AppError::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::Unavailable { .. } => ErrorCode::Unavailable,
            AppError::Internal(_) => ErrorCode::InternalServerError,
        }
    }

    /// GraphQL `extensions.code` (Apollo's names plus ours).
    pub fn graphql_code(&self) -> ErrorCode {
        match self {
            AppError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::BadRequest { .. }
            | AppError::Unprocessable { .. }
            | AppError::Conflict { .. }
            | AppError::RangeNotSatisfiable { .. }
            | AppError::PayloadTooLarge { .. } => ErrorCode::BadUserInput,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::Unavailable { .. } => ErrorCode::Unavailable,
            AppError::Internal(_) => ErrorCode::InternalServerError,
        }
    }

    pub(crate) fn details(&self) -> Value {
        match self {
            AppError::BadRequest { details, .. }
            | AppError::Unprocessable { details, .. }
            | AppError::Conflict { details, .. } => details.clone().unwrap_or(Value::Null),
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

/// The REST error envelope: the body of every REST error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error_code: ErrorCode,
    pub message: String,
    /// What exactly was wrong, when there is more to say (e.g. the field, line and column).
    pub details: Value,
    /// Equals the `X-Request-Id` response header.
    pub request_id: Option<String>,
}

/// The envelope for `code` in the current request.
pub fn error_body(code: ErrorCode, message: &str, details: Value) -> ErrorBody {
    ErrorBody {
        error_code: code,
        message: message.to_owned(),
        details,
        request_id: current_request_id(),
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let body = error_body(self.rest_code(), &self.public_message(), self.details());
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let AppError::Unauthenticated(_) = self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl AppError {
    /// Writes this error's GraphQL `extensions`: `code`, and `retryAfter` / `details`
    /// when there are any. The one place GraphQL error extensions are made.
    pub fn set_graphql_extensions(&self, ext: &mut async_graphql::ErrorExtensionValues) {
        ext.set("code", self.graphql_code());
        if let Some(secs) = self.retry_after() {
            ext.set("retryAfter", secs);
        }
        let details = self.details();
        if !details.is_null()
            && let Ok(value) = async_graphql::Value::from_json(details)
        {
            ext.set("details", value);
        }
    }
}

impl async_graphql::ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        self.log();
        async_graphql::Error::new(self.public_message())
            .extend_with(|_, ext| self.set_graphql_extensions(ext))
    }
}

/// True when a database error is a transient fault (connection lost, pool timeout,
/// database shutting down, serialization failure): the request may simply be retried.
pub fn is_transient(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            use sea_orm::sqlx::Error as Sqlx;
            match e.as_ref() {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_)
                | Sqlx::Protocol(_) => true,
                Sqlx::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    // PostgreSQL: 08xxx connection, 40001 serialization, 40P01 deadlock,
                    // 57P0x shutdown / cannot connect now, 53xxx resources.
                    // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED (and extended codes).
                    code.starts_with("08")
                        || code == "40001"
                        || code == "40P01"
                        || code.starts_with("57P")
                        || code.starts_with("53")
                        || code == "5"
                        || code == "6"
                        || code == "261"
                        || code == "517"
                }
                _ => false,
            }
        }
        _ => false,
    }
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            tracing::warn!(error = %err, "transient database error");
            return AppError::unavailable();
        }
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                AppError::internal(format!("unexpected unique violation: {err}"))
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                AppError::internal(format!("unexpected foreign key violation: {err}"))
            }
            _ => AppError::internal(err.to_string()),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod error_code_tests {
    use super::ErrorCode;

    #[test]
    fn wire_names_are_the_serde_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert!(seen.insert(code.as_str()), "{code} listed twice");
        }
    }
}
