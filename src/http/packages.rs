//! REST routes of test packages (SPEC section 5), a drop-in for the previous server's:
//! `GET /api/v1/tests/packages` and `GET`/`HEAD /api/v1/tests/packages/{package_id}`.
//!
//! The download is served from `PackageStore`: a revalidation that ends in `304` needs the
//! package's ETag only (cached after the first look), a full download needs the cached
//! bytes in the negotiated encoding. Compression is done here, once per package, not by
//! a compression layer, so that the ETag and `Vary` are the same for every encoding.
use std::collections::HashMap;

use axum::{
    body::Body,
    extract::{Path, Query, Request, State, rejection::PathRejection, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::{AppError, ErrorCode},
    metrics,
    packages::{
        self, ListFilter, PackageScope,
        etag::{Encoding, if_none_match_matches, negotiate_encoding},
        store::PublishedMeta,
    },
};

pub const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
pub const VARY: &str = "Authorization, Accept-Encoding";

/// `GET /api/v1/tests/packages?scope=&year_id=&block_id=&theme_id=&latest=`
pub async fn list_packages(
    State(state): State<AppState>,
    _user: AuthUser,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(params) =
        query.map_err(|e| AppError::bad_request(format!("invalid query string: {e}")))?;
    let filter = parse_list_filter(&params)?;
    let items: Vec<Value> = packages::list_published(&state.db, &filter)
        .await?
        .iter()
        .map(packages::PackageSummary::rest_list_item)
        .collect();
    let mut response = axum::Json(json!({ "items": items })).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static(VARY));
    Ok(response)
}

/// The list filters. An empty value is no filter; `0` is a filter like any number.
pub fn parse_list_filter(params: &HashMap<String, String>) -> Result<ListFilter, AppError> {
    let value = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let int = |name: &'static str| -> Result<Option<i32>, AppError> {
        value(name)
            .map(|v| {
                v.parse::<i32>().map_err(|_| {
                    AppError::bad_request_with(
                        ErrorCode::ValidationError,
                        format!("{name} must be an integer"),
                        json!({"field": name}),
                    )
                })
            })
            .transpose()
    };
    let latest = match value("latest").map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") | Some("no") => false,
        Some("true") | Some("1") | Some("yes") => true,
        Some(_) => {
            return Err(AppError::bad_request_with(
                ErrorCode::ValidationError,
                "latest must be true or false",
                json!({"field": "latest"}),
            ));
        }
    };
    Ok(ListFilter {
        scope: value("scope").map(PackageScope::parse_or_400).transpose()?,
        year_id: int("year_id")?,
        block_id: int("block_id")?,
        theme_id: int("theme_id")?,
        latest,
    })
}

/// `GET` and `HEAD /api/v1/tests/packages/{package_id}` (axum drops the body of a HEAD
/// response and keeps the GET's `Content-Length`).
pub async fn get_package(
    State(state): State<AppState>,
    _user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    // The request itself (not a `HeaderMap`, which would clone every header).
    request: Request,
) -> Result<Response, AppError> {
    let id = parse_package_id(path)?;
    let headers = request.headers();
    let not_found = || AppError::NotFound(format!("no published package {id}"));

    let if_none_match = headers.get_all(header::IF_NONE_MATCH);
    if if_none_match.iter().next().is_some() {
        let meta = state
            .packages
            .published_meta(&state.db, id)
            .await?
            .ok_or_else(not_found)?;
        if if_none_match_matches(
            if_none_match.iter().map(HeaderValue::as_bytes),
            &meta.version_hash,
        ) {
            metrics::package_download(304, "none");
            return Ok(not_modified(&meta));
        }
    }

    let bodies = state
        .packages
        .published_bodies(&state.db, id)
        .await?
        .ok_or_else(not_found)?;
    let encoding = negotiate_encoding(
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let body = bodies.get(encoding).clone();
    let length = body.len();
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if encoding != Encoding::Identity {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.as_str()),
        );
    }
    insert_validators(h, &bodies.meta);
    metrics::package_download(200, encoding.as_str());
    Ok(response)
}

/// A malformed id is `400`, never a `404` or `500`.
fn parse_package_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, AppError> {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(_) => return Err(malformed_id("")),
    };
    Uuid::try_parse(raw.trim()).map_err(|_| malformed_id(&raw))
}

fn malformed_id(raw: &str) -> AppError {
    AppError::bad_request_with(
        ErrorCode::ValidationError,
        "package_id must be a UUID",
        json!({"field": "package_id", "value": raw.chars().take(64).collect::<String>()}),
    )
}

fn insert_validators(h: &mut HeaderMap, meta: &PublishedMeta) {
    h.insert(header::ETAG, meta.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
}

/// `304`: no body, the validators the `200` would carry.
fn not_modified(meta: &PublishedMeta) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    insert_validators(response.headers_mut(), meta);
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_filters_parse() {
        let f = parse_list_filter(&params(&[("year_id", "0"), ("latest", "true")])).unwrap();
        assert_eq!(f.year_id, Some(0));
        assert!(f.latest);
        let f = parse_list_filter(&params(&[("scope", "theme"), ("block_id", "")])).unwrap();
        assert_eq!(f.scope, Some(PackageScope::Theme));
        assert_eq!(f.block_id, None);
        assert!(parse_list_filter(&params(&[("scope", "COURSE")])).is_err());
        assert!(parse_list_filter(&params(&[("theme_id", "x")])).is_err());
        assert!(parse_list_filter(&params(&[("latest", "maybe")])).is_err());
    }
}
