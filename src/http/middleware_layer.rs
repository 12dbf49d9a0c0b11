//! The per-request middleware: request id, one structured log line, HTTP metrics, the
//! request's time budget, the catch-panic net, and the error envelope for error responses
//! produced outside our handlers (404 of unknown routes, 405, 413 from the body limit).
//!
//! The budget (`EXAMSYNC_REQUEST_TIMEOUT_SECS`) is a transient fault of the server once the
//! body has arrived: REST `503` + `Retry-After`, GraphQL `UNAVAILABLE` (docs/api.md §7.5). Only a
//! client still sending its body gets `408`: the body is read here, inside the budget,
//! before any handler runs. The handler's future is dropped at the
//! deadline, which rolls back an open transaction, so nothing is half-applied.
use std::{cell::Cell, panic::AssertUnwindSafe, time::Instant};

use futures::FutureExt;
use http_body_util::BodyExt;

use axum::{
    body::{Body, HttpBody},
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{
    app::AppState,
    config::Config,
    error::{AppError, ErrorCode, REQUEST_ID, error_body},
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
/// Returned as the header value it goes out as: a client's is reused as it came (no
/// copy), a new one is formatted on the stack and copied once.
fn request_id_of(request: &Request) -> HeaderValue {
    if let Some(id) = request.headers().get(REQUEST_ID_HEADER).filter(|v| {
        let v = v.as_bytes();
        !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
    }) {
        return id.clone();
    }
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Which error shape a request gets: the REST envelope or a GraphQL `{"errors": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    Rest,
    /// With the response media type the client accepts.
    Graphql(super::graphql::ResponseMedia),
}

impl Surface {
    fn of(request: &Request) -> Self {
        let path = request.uri().path();
        if path == "/graphql" || path.starts_with("/graphql/") {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            Surface::Graphql(
                super::graphql::negotiate(accept).unwrap_or(super::graphql::ResponseMedia::Json),
            )
        } else {
            Surface::Rest
        }
    }

    fn error(self, error: AppError) -> Response {
        match self {
            Surface::Rest => error.into_response(),
            Surface::Graphql(media) => super::graphql::app_error_response(media, error),
        }
    }
}

/// Reads the request body into memory, at most `limit + 1` bytes: a body past the limit
/// reaches the handler one byte too long, so its extractor answers the usual 413. Buffering
/// here tells a client still sending its body (408) from a server that is slow (503).
async fn read_body(body: Body, limit: usize) -> Result<Body, axum::Error> {
    let mut body = body;
    let mut buffer = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = (limit + 1).saturating_sub(buffer.len());
            buffer.extend_from_slice(&data[..data.len().min(room)]);
            if buffer.len() > limit {
                break;
            }
        }
    }
    Ok(Body::from(buffer))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Runs the rest of the stack within the request's budget, catching a panic.
async fn run_guarded(
    request: Request,
    next: Next,
    config: &Config,
    request_id: &HeaderValue,
) -> Response {
    let surface = Surface::of(&request);
    let budget = config.request_timeout();
    let deadline = tokio::time::Instant::now() + budget;
    let (parts, body) = request.into_parts();
    // Media uploads have their own, larger limit; every other body the 1 MiB one.
    let body_limit = if super::media::is_upload(&parts.method, parts.uri.path()) {
        config.media_max_bytes
    } else {
        config.max_body_bytes
    };
    let body = if body.is_end_stream() {
        // No body (most GETs): nothing to wait for, so no timer for it.
        body
    } else {
        // Boxed for the same reason as the handler's timer below.
        match Box::pin(tokio::time::timeout_at(
            deadline,
            read_body(body, body_limit),
        ))
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                let body = error_body(
                    ErrorCode::BadRequest,
                    "the request body could not be read",
                    serde_json::Value::Null,
                );
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
            Err(_) => {
                // The client is too slow sending its body: its fault, not a server fault.
                let body = error_body(
                    ErrorCode::RequestTimeout,
                    "the request body took too long to arrive",
                    serde_json::Value::Null,
                );
                return (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response();
            }
        }
    };
    let run = AssertUnwindSafe(next.run(Request::from_parts(parts, body))).catch_unwind();
    let mut run = std::pin::pin!(run);
    // Most requests (a `304`, anything served from memory) finish at their first poll:
    // they get no timer at all. The timer is boxed, so this future's layout does not take
    // the timer's cache-line alignment, which would make every allocation holding it
    // (the middleware's boxed future) take the allocator's slow aligned path.
    let outcome = match futures::poll!(run.as_mut()) {
        std::task::Poll::Ready(outcome) => Ok(outcome),
        std::task::Poll::Pending => {
            let timer = Box::pin(tokio::time::sleep_until(deadline));
            match futures::future::select(run, timer).await {
                futures::future::Either::Left((outcome, _)) => Ok(outcome),
                futures::future::Either::Right(_) => Err(()),
            }
        }
    };
    match outcome {
        Ok(Ok(response)) => envelope_bare_errors(response),
        Ok(Err(panic)) => {
            // The last net, never the fix: a panic here is a bug to find in this log line.
            tracing::error!(
                request_id = request_id.to_str().unwrap_or_default(),
                panic = panic_message(panic.as_ref()),
                "request handler panicked"
            );
            surface.error(AppError::internal("request handler panicked"))
        }
        Err(_) => {
            tracing::warn!(
                request_id = request_id.to_str().unwrap_or_default(),
                budget_secs = budget.as_secs_f64(),
                "request ran out of its time budget"
            );
            surface.error(AppError::unavailable())
        }
    }
}

/// The route templates seen so far, each stored once for the life of the process: the
/// router's templates are a fixed, small set, and a `'static` template is a metric label
/// and a log field without copying it on every request.
fn route_template(matched: &str) -> &'static str {
    static TEMPLATES: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());
    let find = |templates: &[&'static str]| templates.iter().copied().find(|t| *t == matched);
    if let Some(template) = find(&TEMPLATES.read().unwrap_or_else(|e| e.into_inner())) {
        return template;
    }
    let mut templates = TEMPLATES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(template) = find(&templates) {
        return template;
    }
    // Bounded by the router's routes (a matched path is always one of its templates).
    let template: &'static str = Box::leak(matched.to_owned().into_boxed_str());
    templates.push(template);
    template
}

/// The client's address (the TCP peer), for the per-address limit of requests without a
/// valid token.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::IpAddr);

/// The TCP peer of a request, when the server was started with connect info.
pub fn client_addr(extensions: &axum::http::Extensions) -> Option<ClientAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| ClientAddr(info.0.ip()))
}

/// Paths that answer whatever the load and are never limited: probes and metrics must
/// keep working when the instance is busiest.
fn is_exempt(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/metrics")
}

/// Counts a request without a valid token against its client address's budget.
pub fn check_anonymous(state: &AppState, client: Option<ClientAddr>) -> Result<(), AppError> {
    match client {
        Some(ClientAddr(ip)) => state.anonymous_limiter.check(&ip),
        // No peer address (an in-process router without connect info): nothing to key on.
        None => Ok(()),
    }
}

pub async fn request_context(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id_of(&request);
    let client = client_addr(request.extensions());
    let path = request.uri().path();
    let exempt = is_exempt(path);
    // Held until the response is made; none left means the instance is full.
    let _permit = if exempt {
        None
    } else {
        match state.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics::load_shed();
                let mut response = Surface::of(&request).error(AppError::Unavailable {
                    retry_after_secs: 1,
                });
                response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
                return response;
            }
        }
    };
    // Requests to the REST API without a token are limited per address here; a token that
    // fails verification is counted where it is verified.
    if path.starts_with("/api/v1/")
        && !request.headers().contains_key(header::AUTHORIZATION)
        && let Err(refused) = check_anonymous(&state, client)
    {
        let mut response = refused.into_response();
        response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        return response;
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_template(p.as_str()));

    let (mut response, user) = REQUEST_ID
        .scope(request_id.clone(), async {
            REQUEST_USER
                .scope(Cell::new(None), async {
                    let response = run_guarded(request, next, &state.config, &request_id).await;
                    (response, REQUEST_USER.with(|u| u.get()))
                })
                .await
        })
        .await;

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::http_request(&method, route, status, elapsed.as_secs_f64());
    tracing::info!(
        request_id = request_id.to_str().unwrap_or_default(),
        method = %method,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        user_id = user.map(|u| u.to_string()).unwrap_or_default(),
        "request"
    );
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
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
