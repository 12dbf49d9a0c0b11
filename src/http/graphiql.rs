//! Offline GraphiQL (docs/api.md §6): `GET /graphql` from a browser serves a GraphiQL page whose
//! scripts and styles are vendored in `assets/graphiql/` and embedded in the binary, so it
//! works with no internet access. The page loads only `/graphiql/assets/<file>` and posts
//! queries to `/graphql`; its Content-Security-Policy forbids every other origin.
//!
//! Routes (mounted by the router):
//! - `GET /graphql` when the request's `Accept` contains `text/html` → [`graphiql_page`]
//! - `GET /graphiql/assets/{file}` → [`graphiql_asset`]

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The page itself. No inline script: its bootstrap is `init.js`.
pub const INDEX_HTML: &str = include_str!("../../assets/graphiql/index.html");

/// Content-Security-Policy of the page: only this origin, no inline or eval'd script.
/// `'unsafe-inline'` for styles only: GraphiQL/CodeMirror set style attributes and its
/// dialogs inject `<style>` elements. `data:` for the fonts and icons embedded in the CSS.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'self'; \
     style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; \
     img-src 'self' data:; \
     font-src 'self' data:; \
     base-uri 'none'; \
     form-action 'none'; \
     frame-ancestors 'none'";

const ASSET_CACHE_CONTROL: &str = "public, max-age=86400";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The embedded assets: exact file name → (content type, bytes).
fn asset(file: &str) -> Option<(&'static str, &'static [u8])> {
    let found: (&'static str, &'static [u8]) = match file {
        "init.js" => (JS, include_bytes!("../../assets/graphiql/init.js")),
        "graphiql.min.js" => (JS, include_bytes!("../../assets/graphiql/graphiql.min.js")),
        "graphiql.min.css" => (
            CSS,
            include_bytes!("../../assets/graphiql/graphiql.min.css"),
        ),
        "react.production.min.js" => (
            JS,
            include_bytes!("../../assets/graphiql/react.production.min.js"),
        ),
        "react-dom.production.min.js" => (
            JS,
            include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
        ),
        "LICENSE.graphiql" => (
            TEXT,
            include_bytes!("../../assets/graphiql/LICENSE.graphiql"),
        ),
        "LICENSE.react" => (TEXT, include_bytes!("../../assets/graphiql/LICENSE.react")),
        "LICENSE.react-dom" => (
            TEXT,
            include_bytes!("../../assets/graphiql/LICENSE.react-dom"),
        ),
        _ => return None,
    };
    Some(found)
}

/// `GET /graphql` for browsers: the GraphiQL page.
pub async fn graphiql_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
            // `/graphql` answers HTML or JSON depending on Accept.
            (header::VARY, "Accept"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// `GET /graphiql/assets/{file}`: one of the embedded files, else 404.
pub async fn graphiql_asset(Path(file): Path<String>) -> Response {
    match asset(&file) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static(ASSET_CACHE_CONTROL),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [
                (header::CONTENT_TYPE, TEXT),
                (header::CACHE_CONTROL, "no-store"),
            ],
            "not found\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/graphiql/assets/<file>` the page references is embedded, and the page
    /// references nothing outside this origin.
    #[test]
    fn page_references_only_embedded_assets() {
        let mut count = 0;
        for part in INDEX_HTML.split("/graphiql/assets/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | '?' | '#' | ' ' | '>'))
                .collect();
            assert!(
                asset(&name).is_some(),
                "page references missing asset {name}"
            );
            count += 1;
        }
        assert_eq!(count, 5, "page should load 4 scripts and 1 stylesheet");
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(!INDEX_HTML.contains("//cdn") && !INDEX_HTML.contains("unpkg"));
        // No inline script: script-src is 'self' only.
        assert_eq!(
            INDEX_HTML.matches("<script").count(),
            INDEX_HTML
                .matches("<script src=\"/graphiql/assets/")
                .count()
        );
    }

    #[tokio::test]
    async fn page_has_html_type_and_strict_csp() {
        let response = graphiql_page().await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }

    #[tokio::test]
    async fn assets_are_served_with_type_and_cache_control() {
        for (file, content_type) in [
            ("init.js", JS),
            ("graphiql.min.js", JS),
            ("graphiql.min.css", CSS),
            ("react.production.min.js", JS),
            ("react-dom.production.min.js", JS),
            ("LICENSE.graphiql", TEXT),
        ] {
            let response = graphiql_asset(Path(file.to_owned())).await;
            assert_eq!(response.status(), StatusCode::OK, "{file}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                content_type,
                "{file}"
            );
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                "public, max-age=86400",
                "{file}"
            );
        }
        for file in ["nope.js", "../Cargo.toml", "index.html", "README.md", ""] {
            let response = graphiql_asset(Path(file.to_owned())).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{file}");
        }
    }
}
