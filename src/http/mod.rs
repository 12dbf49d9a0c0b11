//! HTTP surface: the router, REST handlers (thin: parse, call a rule module, render)
//! and the GraphQL transport.

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post},
};
use tower_http::compression::CompressionLayer;

use crate::{app::AppState, graphql::AppSchema};

pub mod extract;
pub mod graphiql;
pub mod graphql;
pub mod health;
pub mod middleware_layer;
pub mod openapi;
pub mod packages;
pub mod sync;

/// The whole HTTP application.
pub fn router(state: AppState, schema: AppSchema) -> Router {
    router_with(state, schema, Router::new())
}

/// The application plus `extra` routes under the same layers (see
/// [`crate::Application::with_routes`]; tests only).
pub fn router_with(state: AppState, schema: AppSchema, extra: Router<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;

    let graphql_routes = Router::new()
        .route(
            "/graphql",
            get(graphql::graphql_get).post(graphql::graphql_post),
        )
        .layer(CompressionLayer::new().gzip(true).br(true))
        .layer(axum::Extension(schema));

    Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/graphiql/assets/{file}", get(graphiql::graphiql_asset))
        .route("/api/v1/tests/packages", get(packages::list_packages))
        .route(
            "/api/v1/tests/packages/{package_id}",
            get(packages::get_package).head(packages::get_package),
        )
        .route(
            "/api/v1/tests/packages/{package_id}/delta",
            get(packages::get_delta).head(packages::get_delta),
        )
        .route("/api/v1/sync/attempts:batch", post(sync::sync_batch))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .merge(graphql_routes)
        .merge(extra)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            middleware_layer::request_context,
        ))
        .with_state(state)
}

async fn not_found() -> crate::error::AppError {
    crate::error::AppError::NotFound("no such route".into())
}
