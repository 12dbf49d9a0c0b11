//! `POST /api/v1/sync/attempts:batch`: the previous server's route, snake_case.
pub mod wire;

use axum::{Json, extract::State};

use crate::{app::AppState, auth::AuthUser, error::AppError, http::extract::ApiJson, sync};
use wire::{SyncBatchRequest, SyncBatchResponse};

/// Applies queued offline attempts exactly once; one result per attempt, in order.
#[utoipa::path(
    post,
    path = "/api/v1/sync/attempts:batch",
    request_body = SyncBatchRequest,
    responses(
        (status = 200, description = "One result per attempt, in request order", body = SyncBatchResponse),
        (status = 400, description = "Malformed JSON, wrong shape, `sent_at` malformed or outside 1970..9999, or not 1 to 100 attempts; nothing applied", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body over the limit", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Transient fault; retry after Retry-After (what committed comes back DUPLICATE)", body = crate::http::openapi::ErrorBody)
    )
)]
pub async fn sync_batch(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<SyncBatchRequest>,
) -> Result<Json<SyncBatchResponse>, AppError> {
    state
        .rate_limiter
        .check(&state.cache, user.id, "sync")
        .await?;
    let request = body.into_batch()?;
    let results = sync::process_batch(&state, user, request.sent_at, request.attempts).await?;
    Ok(Json(SyncBatchResponse {
        results: results.into_iter().map(Into::into).collect(),
    }))
}
