//! `/livez`, `/readyz` (application/health+json) and `/metrics`.
use std::time::Duration;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::{app::AppState, metrics, primary};

const HEALTH_JSON: &str = "application/health+json";

/// The state of the service or of one dependency (draft-inadarei-api-health-check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Pass,
    Warn,
    Fail,
}

/// One check of a dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthCheck {
    pub status: HealthStatus,
}

/// The `application/health+json` body of `/livez` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'static str>,
    /// By component, e.g. `database:connectivity`, `redis:connectivity`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<&'static str, Vec<HealthCheck>>,
}

fn health_response(status: StatusCode, body: &Health) -> Response {
    let text = serde_json::to_string(body).unwrap_or_default();
    (
        status,
        [
            (header::CONTENT_TYPE, HEALTH_JSON),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// Liveness: the process answers. Depends on nothing.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "health",
    security(()),
    responses((status = 200, description = "The process answers", body = Health, content_type = "application/health+json"))
)]
pub async fn livez() -> Response {
    let body = Health {
        status: HealthStatus::Pass,
        description: None,
        checks: BTreeMap::new(),
    };
    health_response(StatusCode::OK, &body)
}

/// Readiness: a writable database → pass; Redis down → warn (still 200); database down,
/// read-only or a standby in recovery → 503 fail.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready: the database answers (`warn` when Redis does not)", body = Health, content_type = "application/health+json"),
        (status = 503, description = "Not ready: the database does not answer or does not accept writes", body = Health, content_type = "application/health+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // Writable, not only reachable: during a failover the old primary is gone and the
    // standby still in recovery; a load balancer should send no traffic here until one
    // accepts writes again. The probe also refreshes what sync knows (timeline).
    let probe = tokio::time::timeout(Duration::from_secs(2), state.primary.refresh(&state.db))
        .await
        .ok();
    let database_ok = matches!(
        probe,
        Some(primary::Probe {
            role: primary::Role::Writable { .. },
            ..
        })
    );
    let cache_result = state.cache.ping().await;
    let cache_ok = cache_result.is_ok();
    let status = match (database_ok, cache_ok) {
        (false, _) => HealthStatus::Fail,
        (true, false) => HealthStatus::Warn,
        (true, true) => HealthStatus::Pass,
    };
    let check = |ok: bool, warn_only: bool| {
        let status = match (ok, warn_only) {
            (true, _) => HealthStatus::Pass,
            (false, true) => HealthStatus::Warn,
            (false, false) => HealthStatus::Fail,
        };
        vec![HealthCheck { status }]
    };
    let mut checks = BTreeMap::new();
    checks.insert("database:connectivity", check(database_ok, false));
    if state.cache.is_redis() {
        checks.insert("redis:connectivity", check(cache_ok, true));
    }
    let http_status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status,
        description: Some("examsync readiness"),
        checks,
    };
    health_response(http_status, &body)
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
