//! `POST /api/v1/sync/attempts:batch`: the previous server's route, snake_case.
use axum::{Json, extract::State};
use serde_json::Value;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::AppError,
    http::extract::ApiJson,
    sync::{self, rest},
};

pub async fn sync_batch(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, AppError> {
    state
        .rate_limiter
        .check(&state.cache, user.id, "sync")
        .await?;
    let request = rest::parse_body(&body)?;
    let results = sync::process_batch(&state, user, request.sent_at, request.attempts).await?;
    Ok(Json(rest::render_results(&results)))
}
