//! Extractors that turn rejections into our error envelope.
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::{
    app::AppState,
    auth::{AuthUser, bearer_token},
    error::{AppError, ErrorCode},
    http::middleware_layer::{check_anonymous, client_addr, record_user},
};

/// Package, delta and media routes: their own per-user budget, apart from sync and GraphQL.
fn is_package_path(path: &str) -> bool {
    path.starts_with("/api/v1/tests/packages") || path.starts_with("/api/v1/media")
}

/// A JSON body: malformed JSON → 400 `MALFORMED_JSON`, wrong shape → 400
/// `VALIDATION_ERROR`, too large → 413. The content type is not insisted on.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AppError> {
        let limit = state.config.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge { limit }
            } else {
                AppError::bad_request_with(
                    ErrorCode::BadRequest,
                    "could not read the request body",
                    serde_json::Value::Null,
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, telling syntax errors from shape errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => AppError::bad_request_with(
                ErrorCode::MalformedJson,
                format!("malformed JSON: {e}"),
                serde_json::json!({"line": e.line(), "column": e.column()}),
            ),
            Category::Data => AppError::bad_request(format!("invalid request body: {e}")),
        }
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let authorization = parts.headers.get(header::AUTHORIZATION);
        let remembered =
            authorization.and_then(|v| state.tokens.remembered_authorization(v.as_bytes()));
        let verified = match remembered {
            Some(user) => Ok(user),
            None => bearer_token(authorization.map(|v| v.to_str().unwrap_or("")))
                .and_then(|token| state.tokens.verify(token)),
        };
        let user = match verified {
            Ok(user) => user,
            Err(refused) => {
                // A token that fails verification counts against its address's budget (a
                // request with no `Authorization` at all was counted by the middleware).
                if authorization.is_some() {
                    check_anonymous(state, client_addr(&parts.extensions))?;
                }
                return Err(refused);
            }
        };
        if is_package_path(parts.uri.path()) {
            state.package_limiter.check(&user.id)?;
        }
        state
            .users
            .ensure(&state.db, &user, state.primary.timeline())
            .await?;
        record_user(user.id.into());
        Ok(user)
    }
}
