//! HTTP surface: the router, REST handlers (thin: parse, call a rule module, render)
//! and the GraphQL transport.

use axum::{Router, routing::get};
use tower::Layer;
use tower_http::compression::CompressionLayer;

use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{app::AppState, graphql::AppSchema};

pub mod changes;
pub mod extract;
pub mod from_memory;
pub mod front;
pub mod graphiql;
pub mod graphql;
pub mod headers;
pub mod health;
pub mod media;
pub mod middleware_layer;
pub mod openapi;
pub mod packages;
pub mod sync;

/// The REST routes, each registered together with the `#[utoipa::path]` operation of its
/// real handler (methods and path come from the annotation), so a REST route cannot be served
/// without being documented: the OpenAPI document is split off this same router.
pub fn rest_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .routes(routes!(packages::list_packages))
        .routes(routes!(packages::get_package))
        .routes(routes!(packages::get_delta))
        .routes(routes!(media::get_bundle))
        .routes(routes!(media::get_media, media::put_media))
        .routes(routes!(sync::sync_batch))
        .routes(routes!(changes::sync_changes))
}

/// The routes that are not REST operations, and so not in the OpenAPI document: Prometheus
/// text, static GraphiQL assets, the document itself, and GraphQL (described by its SDL).
pub const UNDOCUMENTED_ROUTES: [&str; 4] = [
    "/metrics",
    "/graphiql/assets/{file}",
    "/api/v1/openapi.json",
    "/graphql",
];

/// The application plus `extra` routes under the same layers (see
/// [`crate::Application::with_routes`]; tests only).
pub fn router_with(
    state: AppState,
    schema: AppSchema,
    extra: Router<AppState>,
) -> front::Front<Router> {
    let graphql_routes = Router::new()
        .route(
            "/graphql",
            get(graphql::graphql_get).post(graphql::graphql_post),
        )
        .layer(CompressionLayer::new().gzip(true).br(true))
        .layer(axum::Extension(schema));

    let (rest, _document) = rest_routes().split_for_parts();
    // With `EXAMSYNC_METRICS_BIND`, `/metrics` is served on its own listener only.
    let metrics = if state.config.metrics_bind.is_some() {
        Router::new()
    } else {
        Router::new().route("/metrics", get(health::metrics))
    };
    // Only these routes are outside the OpenAPI document (`UNDOCUMENTED_ROUTES`).
    let router = Router::new()
        .merge(rest)
        .merge(metrics)
        .route("/graphiql/assets/{file}", get(graphiql::graphiql_asset))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .merge(graphql_routes)
        .merge(extra)
        .fallback(not_found)
        .layer(middleware_layer::RequestContextLayer::new(state.clone()))
        .with_state(state.clone());
    // In front of the router: what phones ask most (see `front`).
    front::FrontLayer::new(state).layer(router)
}

/// The router of the metrics listener (`EXAMSYNC_METRICS_BIND`): `/metrics` alone.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> crate::error::AppError {
    crate::error::AppError::NotFound("no such route".into())
}
