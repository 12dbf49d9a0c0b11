//! GraphQL rendering: `extensions.code` and the one function that writes an [`AppError`]'s
//! extensions.
use super::{AppError, ErrorCode};

impl From<ErrorCode> for async_graphql::Value {
    fn from(code: ErrorCode) -> Self {
        async_graphql::Value::from(code.as_str())
    }
}

impl AppError {
    /// GraphQL `extensions.code` (Apollo's names plus ours).
    pub fn graphql_code(&self) -> ErrorCode {
        match self {
            AppError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::NotFound(_) => ErrorCode::NotFound,
            // GraphQL shows a withdrawn package as not found; other codes say what to do.
            AppError::Gone {
                code: ErrorCode::PackageWithdrawn,
                ..
            } => ErrorCode::NotFound,
            AppError::Gone { code, .. } => *code,
            AppError::AccessDenied(_) => ErrorCode::Forbidden,
            AppError::BadRequest { .. }
            | AppError::Conflict { .. }
            | AppError::RangeNotSatisfiable { .. }
            | AppError::PayloadTooLarge { .. }
            | AppError::MediaTypeNotAllowed(_) => ErrorCode::BadUserInput,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::Unavailable { .. } => ErrorCode::Unavailable,
            AppError::Internal(_) => ErrorCode::InternalServerError,
        }
    }

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
