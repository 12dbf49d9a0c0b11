//! The OpenAPI 3 document of the REST routes, served at `GET /api/v1/openapi.json`.
//!
//! Nothing here repeats a route or a shape: the operations come from the `#[utoipa::path]`
//! annotations of the real handlers, registered with their routes in
//! [`crate::http::rest_routes`], and the schemas from the serde types those handlers read and
//! write (`ToSchema`). This module adds only what belongs to the whole document: its title and
//! the bearer-token security scheme. Schemathesis checks real responses against it in the tests.
use std::sync::LazyLock;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// The error envelope, under the name the handlers' annotations use.
pub use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "examsync REST API",
        description = "Test packages with HTTP caching, deltas and dictionary transport, and exactly-once attempt sync. The reference is docs/api.md."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document of the routes the server serves, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> =
        LazyLock::new(|| crate::http::rest_routes().split_for_parts().1);
    &DOCUMENT
}

/// `GET /api/v1/openapi.json`
pub async fn openapi_json() -> Response {
    static JSON: LazyLock<String> =
        LazyLock::new(|| serde_json::to_string(document()).unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the router is either a documented REST operation or one of the few
    /// listed non-REST routes: a `.route(` added to the router without going through
    /// `rest_routes` (and so without a `#[utoipa::path]`) fails here.
    #[test]
    fn every_route_is_documented_or_listed() {
        let source = include_str!("mod.rs");
        let documented: Vec<String> = document().paths.paths.keys().cloned().collect();
        let mut plain = Vec::new();
        for piece in source.split(".route(").skip(1) {
            let path = piece
                .trim_start()
                .trim_start_matches('"')
                .split('"')
                .next()
                .unwrap_or_default();
            plain.push(path.to_owned());
        }
        assert!(
            !plain.is_empty(),
            "no .route( calls found: the test lost track of mod.rs"
        );
        for path in plain {
            assert!(
                crate::http::UNDOCUMENTED_ROUTES.contains(&path.as_str()),
                "{path} is routed with .route( but is neither documented nor listed in UNDOCUMENTED_ROUTES; register it in rest_routes with #[utoipa::path]"
            );
        }
        for path in [
            "/livez",
            "/readyz",
            "/api/v1/tests/packages",
            "/api/v1/tests/packages/{package_id}",
            "/api/v1/tests/packages/{package_id}/delta",
            "/api/v1/sync/attempts:batch",
        ] {
            assert!(
                documented.iter().any(|p| p == path),
                "{path} missing from {documented:?}"
            );
        }
    }

    #[test]
    fn downloads_document_get_and_head_and_every_schema_resolves() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        for path in [
            "/api/v1/tests/packages/{package_id}",
            "/api/v1/tests/packages/{package_id}/delta",
        ] {
            assert!(doc["paths"][path]["get"].is_object(), "{path} GET");
            assert!(doc["paths"][path]["head"].is_object(), "{path} HEAD");
        }
        // Every $ref points at a schema the document defines.
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref to {name}"
            );
        }
    }
}
