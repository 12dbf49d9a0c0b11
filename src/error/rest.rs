//! REST rendering: the error envelope, and the one function that renders an [`AppError`]
//! as a REST response (`IntoResponse`).
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{AppError, ErrorCode, current_request_id};

impl AppError {
    /// REST status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::AccessDenied(_) => StatusCode::FORBIDDEN,
            AppError::Gone { .. } => StatusCode::GONE,
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::MediaTypeNotAllowed(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
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
            AppError::AccessDenied(_) => ErrorCode::AccessDenied,
            AppError::Gone { code, .. } => *code,
            AppError::BadRequest { code, .. } | AppError::Conflict { code, .. } => *code,
            AppError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            AppError::MediaTypeNotAllowed(_) => ErrorCode::MediaTypeNotAllowed,
            AppError::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::Unavailable { .. } => ErrorCode::Unavailable,
            AppError::Internal(_) => ErrorCode::InternalServerError,
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
