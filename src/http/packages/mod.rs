//! REST routes of test packages (docs/api.md section 5), a drop-in for the previous server's:
//! `GET /api/v1/tests/packages` and `GET`/`HEAD /api/v1/tests/packages/{package_id}`.
//!
//! The download is served from `PackageStore`: a revalidation that ends in `304` needs the
//! package's ETag only (cached after the first look), a full download needs the cached
//! bytes in the negotiated encoding. Compression is done here, once per package, not by
//! a compression layer, so that the ETag and `Vary` are the same for every encoding.
pub mod wire;

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use axum::{
    body::Body,
    extract::{Path, Query, Request, State, rejection::PathRejection, rejection::QueryRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use entity::PackageId;
use serde_json::json;
use uuid::Uuid;

use crate::{
    access,
    app::AppState,
    auth::AuthUser,
    error::{AppError, ErrorCode},
    http::headers::{
        RangeRequest, accepts_dcz, if_none_match_matches, negotiate_encoding,
        parse_available_dictionary, parse_range,
    },
    http::middleware_layer::{fill_request_id, reserve_request_id},
    metrics,
    packages::{
        self, ListFilter, dcz,
        store::{self, PackageBodies},
    },
};

use wire::{PackageList, PackageListItem};

/// Room for the headers of a package or media response: validators, caching, `Vary`,
/// coding, range and dictionary headers, and the request id the middleware adds.
pub const RESPONSE_HEADERS: usize = 12;

pub const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
/// Package responses vary by user (authorization), coding and the RFC 9842 dictionary.
pub const VARY: &str = "Authorization, Accept-Encoding, Available-Dictionary";
/// The list does not use dictionaries.
pub const LIST_VARY: &str = "Authorization, Accept-Encoding";

/// `GET /api/v1/tests/packages?scope=&year_id=&block_id=&theme_id=&latest=`
#[utoipa::path(
    get,
    path = "/api/v1/tests/packages",
    tag = "packages",
    params(
        ("scope" = Option<String>, Query, pattern = r"^\s*([Pp][Rr][Oo][Gg][Rr][Aa][Mm]|[Yy][Ee][Aa][Rr]|[Bb][Ll][Oo][Cc][Kk]|[Tt][Hh][Ee][Mm][Ee])\s*$", description = "PROGRAM, YEAR, BLOCK or THEME (any case); anything else, the empty value included, is 400 naming them"),
        ("year_id" = Option<i32>, Query),
        ("block_id" = Option<i32>, Query),
        ("theme_id" = Option<i32>, Query),
        ("latest" = Option<bool>, Query, description = "only the newest published version of each scope")
    ),
    responses(
        (status = 200, description = "Published packages, newest first", body = PackageList),
        (status = 400, description = "Bad filter", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_packages(
    State(state): State<AppState>,
    user: AuthUser,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(params) =
        query.map_err(|e| AppError::bad_request(format!("invalid query string: {e}")))?;
    let filter = parse_list_filter(&params)?;
    let items = access::gate::list_readable(&state, &user, &filter)
        .await?
        .iter()
        .map(PackageListItem::from)
        .collect();
    let mut response = axum::Json(PackageList { items }).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static(LIST_VARY));
    Ok(response)
}

/// The list filters. An absent parameter is no filter; `0` is a filter like any number, and
/// an empty value (`year_id=`) is not a number: `400`, as the OpenAPI document says.
pub fn parse_list_filter(params: &HashMap<String, String>) -> Result<ListFilter, AppError> {
    let value = |name: &str| params.get(name).map(|v| v.trim());
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
        // `scope=` (empty) is not one of the documented values: 400 like any other.
        scope: params
            .get("scope")
            .map(|v| packages::parse_scope(v))
            .transpose()?,
        year_id: int("year_id")?,
        block_id: int("block_id")?,
        theme_id: int("theme_id")?,
        latest,
    })
}

/// `GET` and `HEAD /api/v1/tests/packages/{package_id}` (axum drops the body of a HEAD
/// response and keeps the GET's `Content-Length`).
#[utoipa::path(
    method(get, head),
    path = "/api/v1/tests/packages/{package_id}",
    tag = "packages",
    params(("package_id" = Uuid, Path, description = "the package id")),
    responses(
        (status = 200, description = "the package (identity, gzip, br or dcz)", body = wire::PackageDownload),
        (status = 206, description = "one byte range of the chosen encoding"),
        (status = 304, description = "If-None-Match matched: no body"),
        (status = 400, description = "malformed id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "ACCESS_DENIED: the caller's grants do not cover the package", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "unknown or unpublished", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "PACKAGE_WITHDRAWN", body = crate::http::openapi::ErrorBody),
        (status = 416, description = "unsatisfiable range", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_package(
    State(state): State<AppState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    // The request itself (not a `HeaderMap`, which would clone every header).
    request: Request,
) -> Result<Response, AppError> {
    let id = parse_package_id(path)?;
    // Before any validator is compared: a revalidation never extends access.
    access::may_read_package(&state, &user, id).await?;
    let headers = request.headers();
    let not_found = || AppError::NotFound(format!("no published package {id}"));

    let if_none_match = headers.get_all(header::IF_NONE_MATCH);
    if if_none_match.iter().next().is_some() {
        let meta = state
            .packages
            .published_meta(&state.db, id)
            .await?
            .ok_or_else(not_found)?;
        if let Some(mut headers) = revalidated(&meta, headers) {
            metrics::package_download(304, "none");
            fill_request_id(&mut headers);
            return Ok(not_modified_with(headers));
        }
    }

    let bodies = state
        .packages
        .published_bodies(&state.db, id)
        .await?
        .ok_or_else(not_found)?;
    let (body, coding, whole_headers) = match dcz_body(&state, headers, id, &bodies).await? {
        Some(body) => (body, "dcz", None),
        None => {
            let encoding = negotiate_encoding(accept_encodings(headers));
            (
                bodies.get(encoding).clone(),
                encoding.as_str(),
                Some(bodies.bodies.whole_headers(encoding)),
            )
        }
    };
    let representation = Representation {
        etag: &bodies.meta.etag,
        last_modified: &bodies.meta.last_modified,
        coding,
        use_as_dictionary: true,
        whole_headers,
    };
    let response = representation.respond(headers, body)?;
    metrics::package_download(response.status().as_u16(), coding);
    Ok(response)
}

/// The `dcz` body when the request announces `dcz` and a dictionary this server knows
/// (a published package's download); `None`: serve the usual encodings.
async fn dcz_body(
    state: &AppState,
    headers: &HeaderMap,
    id: PackageId,
    target: &Arc<PackageBodies>,
) -> Result<Option<Bytes>, AppError> {
    let Some(digest) = headers
        .get(&AVAILABLE_DICTIONARY)
        .and_then(|v| parse_available_dictionary(v.as_bytes()))
    else {
        return Ok(None);
    };
    if !accepts_dcz(accept_encodings(headers)) {
        return Ok(None);
    }
    let Some(dictionary_id) = state.packages.dictionary(&state.db, &digest).await? else {
        return Ok(None);
    };
    let Some(dictionary) = state
        .packages
        .published_bodies(&state.db, dictionary_id)
        .await?
    else {
        return Ok(None);
    };
    // The digest names exactly these bytes (a row is only written for them), but check:
    // a dictionary that is not byte-for-byte what the client holds would garble the body.
    if dictionary.sha256 != digest || !dcz::dictionary_allowed(dictionary.bodies.identity.len()) {
        return Ok(None);
    }
    let body = state
        .packages
        .dcz_body(target, id, &dictionary, dictionary_id)
        .await?;
    Ok(Some(body))
}

/// `?from=`, the delta route's one parameter, read straight from the query string (a
/// deserializer would cost this hot route more than the rest of its parsing).
pub(crate) fn delta_from(query: Option<&str>) -> Result<PackageId, AppError> {
    // What clients send, `from=<uuid>`, read without decoding: nothing in it is encoded.
    if let Some(value) = query.and_then(|q| q.strip_prefix("from="))
        && !value
            .bytes()
            .any(|b| matches!(b, b'&' | b'%' | b'+' | b';'))
    {
        return Uuid::try_parse(value.trim())
            .map(PackageId::from)
            .map_err(|_| malformed("from", value));
    }
    let mut values = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "from")
        .map(|(_, value)| value);
    match (values.next(), values.next()) {
        (Some(from), None) => Uuid::try_parse(from.trim())
            .map(PackageId::from)
            .map_err(|_| malformed("from", &from)),
        // Missing, or given twice.
        _ => Err(malformed("from", "")),
    }
}

/// `?from=` of the delta route, as the OpenAPI document describes it (`delta_from` reads it).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeltaQuery {
    /// The id of the published package the phone holds (required; a missing or malformed one
    /// is `400`).
    #[param(value_type = Uuid, required = true)]
    pub from: Option<String>,
}

/// `GET` and `HEAD /api/v1/tests/packages/{package_id}/delta?from={held_package_id}`
/// (docs/api.md §5.5).
#[utoipa::path(
    method(get, head),
    path = "/api/v1/tests/packages/{package_id}/delta",
    tag = "packages",
    params(("package_id" = Uuid, Path, description = "the package to reach"), DeltaQuery),
    responses(
        (status = 200, description = "the delta (identity, gzip or br)", body = packages::delta::DeltaBody),
        (status = 206, description = "one byte range of the chosen encoding"),
        (status = 304, description = "If-None-Match matched: no body"),
        (status = 400, description = "malformed id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "ACCESS_DENIED: the caller's grants do not cover both packages", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "either package unknown or unpublished", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "PACKAGE_WITHDRAWN: the package to reach is withdrawn", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "DELTA_SCOPE_MISMATCH: another scope or scope_data", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_delta(
    State(state): State<AppState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, AppError> {
    let id = parse_package_id(path)?;
    let from = delta_from(request.uri().query())?;
    access::may_read_delta(&state, &user, id, from).await?;
    let headers = request.headers();
    let not_found = || AppError::NotFound(format!("no published package pair {id}, {from}"));

    let if_none_match = headers.get_all(header::IF_NONE_MATCH);
    if if_none_match.iter().next().is_some() {
        // Validators from the two versions alone: a `304` computes no delta.
        let (to_meta, from_meta) = state
            .packages
            .delta_ends(&state.db, id, from)
            .await?
            .ok_or_else(not_found)?;
        let etag = store::delta_etag(
            from_meta.version_hash.as_str(),
            to_meta.version_hash.as_str(),
        )?;
        let opaque = &etag.as_bytes()[3..etag.len() - 1];
        if if_none_match_matches(
            if_none_match.iter().map(HeaderValue::as_bytes),
            std::str::from_utf8(opaque).unwrap_or_default(),
        ) {
            metrics::package_delta(304, "none");
            let last_modified = store::http_date(to_meta.published_at.max(from_meta.published_at));
            return Ok(not_modified(&etag, &last_modified));
        }
    }

    let Some(delta) = state.packages.delta_bodies(&state.db, id, from).await? else {
        return Err(not_found());
    };
    delta_response(&delta, headers)
}

/// The delta in the encoding the request accepts (whole, or the range it asks for).
pub(crate) fn delta_response(
    delta: &store::DeltaBodies,
    request_headers: &HeaderMap,
) -> Result<Response, AppError> {
    let encoding = negotiate_encoding(accept_encodings(request_headers));
    let representation = Representation {
        etag: &delta.etag,
        last_modified: &delta.last_modified,
        coding: encoding.as_str(),
        use_as_dictionary: false,
        whole_headers: Some(delta.bodies.whole_headers(encoding)),
    };
    let response = representation.respond(request_headers, delta.bodies.get(encoding).clone())?;
    metrics::package_delta(response.status().as_u16(), encoding.as_str());
    Ok(response)
}

/// The delta [`get_delta`] would send to a request without `If-None-Match` when every fact
/// it rests on is in memory (the caller's remembered access to both packages, the delta's
/// bodies). `None` means "ask [`get_delta`]", never a refusal.
pub(crate) fn delta_from_memory(
    state: &AppState,
    user: &AuthUser,
    id: PackageId,
    from: PackageId,
) -> Option<Arc<store::DeltaBodies>> {
    if !access::may_read_delta_from_memory(state, user, id, from) {
        return None;
    }
    state.packages.cached_delta(id, from)
}

/// Every `Accept-Encoding` line of the request, as raw bytes (the parsers in `headers.rs` read
/// bytes, so nothing is copied or checked for UTF-8).
fn accept_encodings(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .map(HeaderValue::as_bytes)
}

/// The header RFC 9842 clients send naming the dictionary they hold.
static AVAILABLE_DICTIONARY: HeaderName = HeaderName::from_static("available-dictionary");

/// One encoded representation of a package or delta, and how to answer with it.
struct Representation<'a> {
    etag: &'a HeaderValue,
    last_modified: &'a HeaderValue,
    /// `Content-Encoding` token (`identity`: none sent).
    coding: &'static str,
    /// Downloads are dictionaries for later downloads (RFC 9842); deltas are not.
    use_as_dictionary: bool,
    /// Where the headers of a whole `200` of this body are kept, when it is a cached one.
    whole_headers: Option<&'a OnceLock<HeaderMap>>,
}

impl Representation<'_> {
    /// `200` with `body`, or `206`/`416` for a single `Range` (honoured only when an
    /// `If-Range` is absent or carries exactly our `Last-Modified`).
    fn respond(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, AppError> {
        let total = body.len() as u64;
        let range = match headers.get(header::RANGE) {
            Some(range) if self.if_range_holds(headers) => parse_range(range.as_bytes(), total),
            _ => RangeRequest::Whole,
        };
        let (status, body, content_range) = match range {
            RangeRequest::Whole => (StatusCode::OK, body, None),
            RangeRequest::Part { start, end } => (
                StatusCode::PARTIAL_CONTENT,
                // `end < total ≤ usize::MAX`, so the casts are lossless.
                body.slice(start as usize..=end as usize),
                Some(
                    HeaderValue::try_from(format!("bytes {start}-{end}/{total}"))
                        .map_err(|e| AppError::internal(e.to_string()))?,
                ),
            ),
            RangeRequest::Unsatisfiable => {
                let mut response = AppError::RangeNotSatisfiable { length: total }.into_response();
                let h = response.headers_mut();
                h.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::try_from(format!("bytes */{total}"))
                        .map_err(|e| AppError::internal(e.to_string()))?,
                );
                self.insert_validators(h);
                return Ok(response);
            }
        };
        let length = body.len();
        let headers = match (content_range, self.whole_headers) {
            // A whole body's headers depend on nothing of the request: made once.
            (None, Some(whole)) => {
                let mut headers = whole
                    .get_or_init(|| {
                        let mut headers = self.headers(status, length, None);
                        reserve_request_id(&mut headers);
                        headers
                    })
                    .clone();
                fill_request_id(&mut headers);
                headers
            }
            (content_range, _) => self.headers(status, length, content_range),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// The headers of a `200` or `206` of `length` bytes.
    fn headers(
        &self,
        status: StatusCode,
        length: usize,
        content_range: Option<HeaderValue>,
    ) -> HeaderMap {
        // Sized for the headers set below and by the middleware: no regrowth.
        let mut h = HeaderMap::with_capacity(RESPONSE_HEADERS);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if self.coding != "identity" {
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(self.coding),
            );
        }
        if let Some(content_range) = content_range {
            h.insert(header::CONTENT_RANGE, content_range);
        }
        self.insert_validators(&mut h);
        if self.use_as_dictionary && status == StatusCode::OK {
            h.insert(
                USE_AS_DICTIONARY,
                HeaderValue::from_static(USE_AS_DICTIONARY_VALUE),
            );
        }
        h
    }

    /// `If-Range` (RFC 9110 §13.1.5): our ETags are weak, so only the date can match,
    /// and only exactly (the client echoes the `Last-Modified` it got).
    fn if_range_holds(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::IF_RANGE) {
            None => true,
            Some(value) => value.as_bytes().trim_ascii() == self.last_modified.as_bytes(),
        }
    }

    fn insert_validators(&self, h: &mut HeaderMap) {
        insert_validators(h, self.etag, self.last_modified);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
}

pub const USE_AS_DICTIONARY: &str = "use-as-dictionary";
pub const USE_AS_DICTIONARY_VALUE: &str = "match=\"/api/v1/tests/packages/*\"";

/// A malformed id is `400`, never a `404` or `500`.
pub(crate) fn parse_package_id(
    path: Result<Path<String>, PathRejection>,
) -> Result<PackageId, AppError> {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(_) => return Err(malformed("package_id", "")),
    };
    Uuid::try_parse(raw.trim())
        .map(PackageId::from)
        .map_err(|_| malformed("package_id", &raw))
}

fn malformed(field: &'static str, raw: &str) -> AppError {
    AppError::bad_request_with(
        ErrorCode::ValidationError,
        format!("{field} must be a UUID"),
        json!({"field": field, "value": raw.chars().take(64).collect::<String>()}),
    )
}

fn insert_validators(h: &mut HeaderMap, etag: &HeaderValue, last_modified: &HeaderValue) {
    h.insert(header::ETAG, etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
    h.insert(header::LAST_MODIFIED, last_modified.clone());
}

/// `304`: no body, the validators the `200` would carry.
fn not_modified(etag: &HeaderValue, last_modified: &HeaderValue) -> Response {
    not_modified_with(not_modified_headers(etag, last_modified))
}

/// The headers of the package's `304` when `If-None-Match` names its version (`None`: the
/// request gets the package). Made once per package and cloned, with the slot for the
/// request id ([`reserve_request_id`]).
fn revalidated(meta: &store::PublishedMeta, request_headers: &HeaderMap) -> Option<HeaderMap> {
    let if_none_match = request_headers.get_all(header::IF_NONE_MATCH);
    if !if_none_match_matches(
        if_none_match.iter().map(HeaderValue::as_bytes),
        meta.version_hash.as_str(),
    ) {
        return None;
    }
    Some(
        meta.not_modified
            .get_or_init(|| {
                let mut headers = not_modified_headers(&meta.etag, &meta.last_modified);
                reserve_request_id(&mut headers);
                headers
            })
            .clone(),
    )
}

/// [`get_package`]'s `304` when every fact it rests on is in memory (the caller's remembered
/// access to the package, its cached validators) and `If-None-Match` names it: the headers,
/// with an empty request id slot. `None` means "ask [`get_package`]", never a refusal.
pub(crate) fn not_modified_from_memory(
    state: &AppState,
    user: &AuthUser,
    id: PackageId,
    request_headers: &HeaderMap,
) -> Option<HeaderMap> {
    if !access::may_read_package_from_memory(state, user, id) {
        return None;
    }
    revalidated(&*state.packages.cached_meta(id)?, request_headers)
}

/// The headers of a `304`: the validators the `200` would carry.
fn not_modified_headers(etag: &HeaderValue, last_modified: &HeaderValue) -> HeaderMap {
    // Sized for the headers set below and by the middleware: no regrowth.
    let mut headers = HeaderMap::with_capacity(RESPONSE_HEADERS);
    insert_validators(&mut headers, etag, last_modified);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers
}

pub(crate) fn not_modified_with(headers: HeaderMap) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.headers_mut() = headers;
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
    fn delta_from_reads_one_uuid() {
        let id = "5f0c1b2e-8d4a-4c3b-9a1e-2b3c4d5e6f70";
        assert_eq!(
            delta_from(Some(&format!("from={id}"))).unwrap().to_string(),
            id
        );
        // Percent-encoded, padded, among other parameters.
        let padded = format!("x=1&from=%20{}&y=", id.to_uppercase());
        assert_eq!(delta_from(Some(&padded)).unwrap().to_string(), id);
        for bad in [
            None,
            Some(""),
            Some("from="),
            Some("from=nope"),
            Some("from=%FF"),
            Some("fro=1"),
        ] {
            assert!(delta_from(bad).is_err(), "{bad:?}");
        }
        let twice = format!("from={id}&from={id}");
        assert!(delta_from(Some(&twice)).is_err());
    }

    #[test]
    fn list_filters_parse() {
        let f = parse_list_filter(&params(&[("year_id", "0"), ("latest", "true")])).unwrap();
        assert_eq!(f.year_id, Some(0));
        assert!(f.latest);
        let f = parse_list_filter(&params(&[("scope", "theme")])).unwrap();
        assert_eq!(f.scope, Some(packages::PackageScope::Theme));
        assert_eq!(f.block_id, None);
        // An empty value is not a number (the OpenAPI document says integer).
        assert!(parse_list_filter(&params(&[("block_id", "")])).is_err());
        assert!(parse_list_filter(&params(&[("latest", "")])).is_err());
        assert!(parse_list_filter(&params(&[("scope", "COURSE")])).is_err());
        assert!(parse_list_filter(&params(&[("scope", "")])).is_err());
        assert!(parse_list_filter(&params(&[("theme_id", "x")])).is_err());
        assert!(parse_list_filter(&params(&[("latest", "maybe")])).is_err());
    }
}
