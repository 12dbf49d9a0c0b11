//! REST routes of media (docs/api.md §4.1, §5): upload, read one object, and the bundle of
//! a package's objects. Thin: the rules live in `crate::media`.
use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::AppError,
    http::headers::{RangeRequest, if_none_match_matches, parse_range},
    media::{self, MediaObjectBody, MediaSha256, bundle::Piece, cache::Bundle},
    packages::store::http_date,
};

pub use super::packages::CACHE_CONTROL;

/// The prefix of the object routes.
pub(crate) const OBJECT_PREFIX: &str = "/api/v1/media/";

/// Whether a request is a media upload, which has its own body limit.
pub fn is_upload(method: &Method, path: &str) -> bool {
    method == Method::PUT && path.starts_with(OBJECT_PREFIX)
}

fn parse_sha(path: Result<Path<String>, PathRejection>) -> Result<MediaSha256, AppError> {
    let raw = path.map(|Path(raw)| raw).unwrap_or_default();
    MediaSha256::parse_field(&raw, "sha256")
}

/// `PUT /api/v1/media/{sha256}`
#[utoipa::path(
    put,
    path = "/api/v1/media/{sha256}",
    tag = "media",
    params(("sha256" = String, Path, description = "lowercase hex SHA-256 of the body", pattern = "^[0-9a-f]{64}$")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the object's bytes; the type is sniffed from them, never taken from Content-Type"),
    responses(
        (status = 201, description = "stored", body = MediaObjectBody),
        (status = 200, description = "already stored (the same bytes)", body = MediaObjectBody),
        (status = 400, description = "malformed hash, or MEDIA_HASH_MISMATCH: nothing stored", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "not an admin", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "larger than EXAMSYNC_MEDIA_MAX_BYTES", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "MEDIA_TYPE_NOT_ALLOWED", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_media(
    State(state): State<AppState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, AppError> {
    user.require_admin()?;
    let sha = parse_sha(path)?;
    let limit = state.config.media_max_bytes;
    let data = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| AppError::PayloadTooLarge { limit })?;
    let (meta, created) = media::store_object(&state.db, Some(sha), data.to_vec(), limit).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(meta.body())).into_response())
}

/// `GET` and `HEAD /api/v1/media/{sha256}`
#[utoipa::path(
    method(get, head),
    path = "/api/v1/media/{sha256}",
    tag = "media",
    params(("sha256" = String, Path, description = "lowercase hex SHA-256 of the object", pattern = "^[0-9a-f]{64}$")),
    responses(
        (status = 200, description = "the bytes, with their detected Content-Type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "one byte range"),
        (status = 304, description = "If-None-Match matched: no body"),
        (status = 400, description = "malformed hash", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "unknown, or no published package the caller may read refers to it", body = crate::http::openapi::ErrorBody),
        (status = 416, description = "unsatisfiable range", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_media(
    State(state): State<AppState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, AppError> {
    let sha = parse_sha(path)?;
    let meta = media::readable_by(&state, &user, &sha)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no media object {sha}")))?;
    let validators = Validators {
        etag: sha.etag(),
        last_modified: None,
        content_type: meta.content_type.as_str(),
    };
    let headers = request.headers();
    if validators.not_modified(headers) {
        return Ok(validators.not_modified_response());
    }
    let range = validators.range(headers, meta.bytes);
    if request.method() == Method::HEAD {
        return validators.respond(range, meta.bytes, Body::empty());
    }
    let data = media::object_data(&state, &sha)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no media object {sha}")))?;
    let body = match range {
        RangeRequest::Part { start, end } => data.slice(start as usize..=end as usize),
        _ => data,
    };
    validators.respond(range, meta.bytes, Body::from(body))
}

/// [`get_media`]'s `304` when every fact it rests on is in memory (the object's metadata,
/// the packages referring to it, the caller's remembered access to one of them) and
/// `If-None-Match` names it: the headers. `None` means "ask [`get_media`]", never a refusal.
pub(crate) fn not_modified_from_memory(
    state: &AppState,
    user: &AuthUser,
    sha: &MediaSha256,
    request_headers: &HeaderMap,
) -> Option<HeaderMap> {
    let meta = media::readable_from_memory(state, user, sha)?;
    let validators = Validators {
        etag: sha.etag(),
        last_modified: None,
        content_type: meta.content_type.as_str(),
    };
    validators
        .not_modified(request_headers)
        .then(|| validators.not_modified_headers())
}

/// `?from=` of the bundle route (optional).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BundleQuery {
    /// The id of a published package of the same scope the phone holds: only the objects it
    /// does not refer to are bundled.
    #[param(value_type = Option<Uuid>)]
    pub from: Option<String>,
}

fn bundle_from(query: Option<&str>) -> Result<Option<Uuid>, AppError> {
    let mut values = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "from")
        .map(|(_, value)| value);
    let malformed = |raw: &str| {
        AppError::bad_request_with(
            crate::error::ErrorCode::ValidationError,
            "from must be a UUID",
            serde_json::json!({"field": "from", "value": raw.chars().take(64).collect::<String>()}),
        )
    };
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(from), None) => Uuid::try_parse(from.trim())
            .map(Some)
            .map_err(|_| malformed(&from)),
        (Some(from), Some(_)) => Err(malformed(&from)),
    }
}

/// `GET` and `HEAD /api/v1/tests/packages/{package_id}/media[?from={held_package_id}]`
#[utoipa::path(
    method(get, head),
    path = "/api/v1/tests/packages/{package_id}/media",
    tag = "packages",
    params(("package_id" = Uuid, Path, description = "the package"), BundleQuery),
    responses(
        (status = 200, description = "the ZIP of the package's objects (stored entries named by SHA-256, sorted)", content_type = "application/zip", body = Vec<u8>),
        (status = 206, description = "one byte range"),
        (status = 304, description = "If-None-Match matched: no body"),
        (status = 400, description = "malformed id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "either package unknown or unpublished", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "DELTA_SCOPE_MISMATCH: another scope or scope_data", body = crate::http::openapi::ErrorBody),
        (status = 416, description = "unsatisfiable range", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_bundle(
    State(state): State<AppState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, AppError> {
    let id = super::packages::parse_package_id(path)?;
    let from = bundle_from(request.uri().query())?;
    let bundle = media::bundle(&state, &user, id, from.map(Into::into))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no published package {id}")))?;
    let layout = &bundle.layout;
    let validators = Validators {
        etag: header_value(layout.etag().to_owned())?,
        last_modified: bundle.published_at.map(http_date),
        content_type: "application/zip",
    };
    let headers = request.headers();
    if validators.not_modified(headers) {
        return Ok(validators.not_modified_response());
    }
    let total = layout.len();
    let range = validators.range(headers, total);
    if request.method() == Method::HEAD {
        return validators.respond(range, total, Body::empty());
    }
    let (start, end) = match range {
        RangeRequest::Part { start, end } => (start, end),
        _ => (0, total - 1),
    };
    validators.respond(
        range,
        total,
        stream_bundle(state.clone(), bundle.clone(), start, end),
    )
}

/// How many pieces of a bundle are read ahead of the one being sent: the next object is
/// fetched from the store while this one goes out, and at most this many are in memory.
const BUNDLE_READ_AHEAD: usize = 2;

/// Bytes `start..=end` of a bundle, streamed piece by piece: headers from the layout, each
/// object's bytes read (from memory, or the store) only shortly before they are reached,
/// never the whole bundle in memory.
fn stream_bundle(state: AppState, bundle: Arc<Bundle>, start: u64, end: u64) -> Body {
    let pieces = bundle.layout.pieces_in(start, end);
    let stream = futures::stream::iter(pieces)
        .map(move |(piece, from, to)| {
            let state = state.clone();
            let bundle = bundle.clone();
            async move {
                let layout = &bundle.layout;
                let bytes = match piece {
                    Piece::Data { index } => {
                        let object = layout.object(index);
                        media::object_data(&state, &object.sha256)
                            .await
                            .map_err(|e| std::io::Error::other(e.operator_message()))?
                            .filter(|d| d.len() as u64 == object.bytes)
                            .ok_or_else(|| {
                                std::io::Error::other(format!("media {} changed", object.sha256))
                            })?
                    }
                    header => Bytes::from(layout.header_bytes(header)),
                };
                // `from..to` lies within the piece (`Layout::pieces_in`).
                Ok::<Bytes, std::io::Error>(bytes.slice(from as usize..to as usize))
            }
        })
        .buffered(BUNDLE_READ_AHEAD);
    Body::from_stream(stream)
}

fn header_value(text: String) -> Result<HeaderValue, AppError> {
    HeaderValue::try_from(text).map_err(|e| AppError::internal(e.to_string()))
}

/// The validators of an immutable representation and how conditional requests use them.
struct Validators {
    /// A strong ETag: the bytes are fixed by it.
    etag: HeaderValue,
    last_modified: Option<HeaderValue>,
    content_type: &'static str,
}

impl Validators {
    fn not_modified(&self, headers: &HeaderMap) -> bool {
        let values = headers.get_all(header::IF_NONE_MATCH);
        // The ETag is a quoted strong tag: its opaque part is between the quotes.
        let etag = self.etag.as_bytes();
        let opaque = etag.strip_prefix(b"\"").unwrap_or(etag);
        let opaque = opaque.strip_suffix(b"\"").unwrap_or(opaque);
        values.iter().next().is_some()
            && if_none_match_matches(values.iter().map(HeaderValue::as_bytes), opaque)
    }

    /// `If-Range` (RFC 9110 §13.1.5): the strong ETag exactly, or the `Last-Modified` date
    /// exactly; anything else gets the whole representation.
    fn if_range_holds(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::IF_RANGE) {
            None => true,
            Some(value) => {
                let value = value.as_bytes().trim_ascii();
                value == self.etag.as_bytes()
                    || self
                        .last_modified
                        .as_ref()
                        .is_some_and(|date| value == date.as_bytes())
            }
        }
    }

    fn range(&self, headers: &HeaderMap, total: u64) -> RangeRequest {
        match headers.get(header::RANGE) {
            Some(range) if self.if_range_holds(headers) => parse_range(range.as_bytes(), total),
            _ => RangeRequest::Whole,
        }
    }

    fn insert(&self, h: &mut HeaderMap) {
        h.insert(header::ETAG, self.etag.clone());
        if let Some(date) = &self.last_modified {
            h.insert(header::LAST_MODIFIED, date.clone());
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
        // Who asks decides whether it is readable at all.
        h.insert(header::VARY, HeaderValue::from_static("Authorization"));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }

    fn not_modified_headers(&self) -> HeaderMap {
        // Sized for the headers set below and by the middleware: no regrowth.
        let mut headers = HeaderMap::with_capacity(super::packages::RESPONSE_HEADERS);
        self.insert(&mut headers);
        headers
    }

    fn not_modified_response(&self) -> Response {
        super::packages::not_modified_with(self.not_modified_headers())
    }

    /// The `200`, `206` or `416` for `range` of a representation of `total` bytes; `body`
    /// holds exactly the bytes the range names (empty for `HEAD`).
    fn respond(&self, range: RangeRequest, total: u64, body: Body) -> Result<Response, AppError> {
        let (status, length) = match range {
            RangeRequest::Whole => (StatusCode::OK, total),
            RangeRequest::Part { start, end } => (StatusCode::PARTIAL_CONTENT, end - start + 1),
            RangeRequest::Unsatisfiable => {
                let mut response = AppError::RangeNotSatisfiable { length: total }.into_response();
                let h = response.headers_mut();
                h.insert(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes */{total}"))?,
                );
                self.insert(h);
                return Ok(response);
            }
        };
        let mut response = Response::new(body);
        // Sized for the headers set below and by the middleware: no regrowth.
        *response.headers_mut() = HeaderMap::with_capacity(super::packages::RESPONSE_HEADERS);
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let RangeRequest::Part { start, end } = range {
            h.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes {start}-{end}/{total}"))?,
            );
        }
        self.insert(h);
        Ok(response)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bundle_from_is_optional_but_well_formed() {
        assert_eq!(bundle_from(None).unwrap(), None);
        assert_eq!(bundle_from(Some("x=1")).unwrap(), None);
        let id = Uuid::from_u128(5);
        assert_eq!(bundle_from(Some(&format!("from={id}"))).unwrap(), Some(id));
        assert!(bundle_from(Some("from=")).is_err());
        assert!(bundle_from(Some("from=nope")).is_err());
        assert!(bundle_from(Some(&format!("from={id}&from={id}"))).is_err());
    }

    #[test]
    fn only_media_puts_get_the_media_limit() {
        assert!(is_upload(&Method::PUT, "/api/v1/media/abc"));
        assert!(!is_upload(&Method::GET, "/api/v1/media/abc"));
        assert!(!is_upload(&Method::PUT, "/api/v1/sync/attempts:batch"));
    }
}
