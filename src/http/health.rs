//! `/livez`, `/readyz` (application/health+json) and `/metrics`.
use std::time::Duration;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{app::AppState, db, metrics};

const HEALTH_JSON: &str = "application/health+json";

fn health_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HEALTH_JSON),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Liveness: the process answers. Depends on nothing.
pub async fn livez() -> Response {
    health_response(StatusCode::OK, json!({"status": "pass"}))
}

/// Readiness: database reachable → pass; Redis down → warn (still 200); database down → 503 fail.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), db::ping(&state.db)).await,
        Ok(Ok(()))
    );
    let cache_result = state.cache.ping().await;
    let cache_ok = cache_result.is_ok();
    let status = match (database_ok, cache_ok) {
        (false, _) => "fail",
        (true, false) => "warn",
        (true, true) => "pass",
    };
    let check = |ok: bool, warn_only: bool| {
        let status = match (ok, warn_only) {
            (true, _) => "pass",
            (false, true) => "warn",
            (false, false) => "fail",
        };
        json!([{ "status": status }])
    };
    let mut checks = serde_json::Map::new();
    checks.insert("database:connectivity".into(), check(database_ok, false));
    if state.cache.is_redis() {
        checks.insert("redis:connectivity".into(), check(cache_ok, true));
    }
    let http_status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    health_response(
        http_status,
        json!({"status": status, "description": "examsync readiness", "checks": checks}),
    )
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(pool) = pool_stats(&state) {
        metrics::db_pool(pool.0, pool.1);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn pool_stats(state: &AppState) -> Option<(u32, usize)> {
    match state.db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = state.db.get_postgres_connection_pool();
            Some((pool.size(), pool.num_idle()))
        }
        sea_orm::DbBackend::Sqlite => {
            let pool = state.db.get_sqlite_connection_pool();
            Some((pool.size(), pool.num_idle()))
        }
        _ => None,
    }
}
