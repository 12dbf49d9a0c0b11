//! The per-request middleware: request id, one structured log line, HTTP metrics, and the
//! error envelope for error responses produced outside our handlers (404 of unknown
//! routes, 405, 408 timeouts, 413 from the body limit).
use std::{cell::Cell, time::Instant};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{
    app::AppState,
    error::{ErrorCode, REQUEST_ID, error_body},
    metrics,
};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The authenticated user of the current request, for the request log line.
    pub static REQUEST_USER: Cell<Option<Uuid>>;
}

/// Records the authenticated user for the request log.
pub fn record_user(user: Uuid) {
    let _ = REQUEST_USER.try_with(|cell| cell.set(Some(user)));
}

/// Accepts a client's request id when it is short and printable; otherwise makes one.
fn request_id_of(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

pub async fn request_context(
    State(_state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id_of(&request);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());

    let (mut response, user) = REQUEST_ID
        .scope(request_id.clone(), async {
            REQUEST_USER
                .scope(Cell::new(None), async {
                    let response = next.run(request).await;
                    let response = envelope_bare_errors(response);
                    (response, REQUEST_USER.with(|u| u.get()))
                })
                .await
        })
        .await;

    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::http_request(method.as_str(), &route, status, elapsed.as_secs_f64());
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        user_id = user.map(|u| u.to_string()).unwrap_or_default(),
        "request"
    );
    response
}

/// Error responses without a JSON body (made by axum or tower layers) get the envelope.
fn envelope_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        return response;
    }
    let (code, message) = match status.as_u16() {
        404 => (ErrorCode::NotFound, "not found"),
        405 => (
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        ),
        408 => (ErrorCode::RequestTimeout, "the request took too long"),
        413 => (ErrorCode::PayloadTooLarge, "request body is too large"),
        415 => (ErrorCode::UnsupportedMediaType, "unsupported content type"),
        s if s >= 500 => (ErrorCode::InternalServerError, "internal error"),
        _ => (ErrorCode::BadRequest, "bad request"),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    let body = axum::Json(error_body(code, message, serde_json::Value::Null)).into_response();
    let (body_parts, body) = body.into_parts();
    if let Some(ct) = body_parts.headers.get(header::CONTENT_TYPE) {
        parts.headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    Response::from_parts(parts, Body::new(body))
}
