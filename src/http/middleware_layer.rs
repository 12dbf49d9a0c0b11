//! The per-request middleware: request id, one structured log line, HTTP metrics, the
//! request's time budget, the catch-panic net, and the error envelope for error responses
//! produced outside our handlers (404 of unknown routes, 405, 413 from the body limit).
//!
//! The budget (`EXAMSYNC_REQUEST_TIMEOUT_SECS`) is a transient fault of the server once the
//! body has arrived: REST `503` + `Retry-After`, GraphQL `UNAVAILABLE` (docs/api.md §7.5). Only a
//! client still sending its body gets `408`: the body is read here, inside the budget,
//! before any handler runs. The handler's future is dropped at the
//! deadline, which rolls back an open transaction, so nothing is half-applied.
use std::{
    cell::Cell,
    convert::Infallible,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, CatchUnwind, Either},
};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::{sync::OwnedSemaphorePermit, task::futures::TaskLocalFuture};
use tower::{Layer, Service, ServiceExt};

use axum::{
    body::{Body, HttpBody},
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{
    app::AppState,
    error::{AppError, ErrorCode, REQUEST, RequestScope, current_request_id, error_body},
    metrics,
};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The same name as a `HeaderName`: a `&str` name is parsed again on every use.
pub(crate) static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Gives prebuilt response headers a slot for the request id, last, where this middleware puts
/// it: a cloned `HeaderMap` has no spare room, and growing it would cost more than the clone.
pub fn reserve_request_id(headers: &mut HeaderMap) {
    headers.insert(&REQUEST_ID_NAME, HeaderValue::from_static(""));
}

/// Fills the slot [`reserve_request_id`] made with the current request's id (outside a
/// request, removes it).
pub fn fill_request_id(headers: &mut HeaderMap) {
    match REQUEST.try_with(|scope| scope.id.clone()) {
        Ok(id) => {
            headers.insert(&REQUEST_ID_NAME, id);
        }
        Err(_) => {
            headers.remove(&REQUEST_ID_NAME);
        }
    }
}

/// Records the authenticated user for the request log.
pub fn record_user(user: Uuid) {
    let _ = REQUEST.try_with(|scope| scope.user.set(Some(user)));
}

/// Accepts a client's request id when it is short and printable; otherwise makes one.
/// Returned as the header value it goes out as: a client's is reused as it came (no
/// copy), a new one is formatted on the stack and copied once.
pub(crate) fn request_id_of(request: &Request) -> HeaderValue {
    if let Some(id) = request.headers().get(&REQUEST_ID_NAME).filter(|v| {
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

/// The rest of the stack, run within the request's budget with a net for panics: the
/// handler's future, or (for a request with a body) a boxed future that first reads the body
/// within the same budget and then runs the handler.
type Run<F> = Either<F, BoxFuture<'static, Result<Response, Infallible>>>;

pin_project! {
    /// Runs the rest of the stack within the request's budget, catching a panic; error
    /// responses made outside our handlers get the envelope.
    pub struct Guarded<F> {
        #[pin]
        run: CatchUnwind<AssertUnwindSafe<F>>,
        // Made at the first poll that finds the handler not done: most requests (a `304`,
        // anything served from memory) finish at their first poll and get no timer. Boxed,
        // so that this future's layout does not take the timer's cache-line alignment.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        deadline: tokio::time::Instant,
        budget: Duration,
        surface: Surface,
    }
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.run.poll(cx) {
            return Poll::Ready(match outcome {
                Ok(Ok(response)) => envelope_bare_errors(response),
                Ok(Err(never)) => match never {},
                Err(panic) => {
                    // The last net, never the fix: a panic here is a bug to find in this log line.
                    tracing::error!(
                        request_id = current_request_id().unwrap_or_default(),
                        panic = panic_message(panic.as_ref()),
                        "request handler panicked"
                    );
                    this.surface
                        .error(AppError::internal("request handler panicked"))
                }
            });
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The handler's future is dropped with this one: an open transaction rolls back.
        tracing::warn!(
            request_id = current_request_id().unwrap_or_default(),
            budget_secs = this.budget.as_secs_f64(),
            "request ran out of its time budget"
        );
        Poll::Ready(this.surface.error(AppError::unavailable()))
    }
}

/// Reads the body within the budget (`408` for a client too slow sending it), then runs the
/// rest of the stack.
async fn read_body_then_run<S>(
    mut inner: S,
    request: Request,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    let (parts, body) = request.into_parts();
    // Boxed for the same reason as the handler's timer.
    let body = match Box::pin(tokio::time::timeout_at(deadline, read_body(body, limit))).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            let body = error_body(
                ErrorCode::BadRequest,
                "the request body could not be read",
                serde_json::Value::Null,
            );
            return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
        }
        Err(_) => {
            // The client is too slow sending its body: its fault, not a server fault.
            let body = error_body(
                ErrorCode::RequestTimeout,
                "the request body took too long to arrive",
                serde_json::Value::Null,
            );
            return Ok((StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response());
        }
    };
    inner.ready().await?;
    inner.call(Request::from_parts(parts, body)).await
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

/// The per-request layer (see the module documentation), a hand-written `tower` layer: its
/// future is a plain state machine, not boxed, and the inner service is not cloned.
#[derive(Clone)]
pub struct RequestContextLayer {
    state: AppState,
    /// The route's template, for a service reached without the router (which would name
    /// it by `MatchedPath`).
    route: Option<&'static str>,
}

impl RequestContextLayer {
    pub fn new(state: AppState) -> Self {
        RequestContextLayer { state, route: None }
    }

    /// The layer of one route served without the router.
    pub fn for_route(state: AppState, route: &'static str) -> Self {
        RequestContextLayer {
            state,
            route: Some(route),
        }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> RequestContext<S> {
        RequestContext {
            inner,
            state: self.state.clone(),
            route: self.route,
        }
    }
}

#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
    state: AppState,
    route: Option<&'static str>,
}

impl<S> RequestContext<S> {
    /// An answer made here, before the rest of the stack, with the request id.
    fn answered(mut response: Response, request_id: HeaderValue) -> RequestContextFuture<S::Future>
    where
        S: Service<Request>,
    {
        response.headers_mut().insert(&REQUEST_ID_NAME, request_id);
        RequestContextFuture::Answered {
            response: Some(response),
        }
    }
}

impl<S> Service<Request> for RequestContext<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RequestContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id_of(&request);
        let path = request.uri().path();
        // Held until the response is made; none left means the instance is full.
        let permit = if is_exempt(path) {
            None
        } else {
            match self.state.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::load_shed();
                    let response = Surface::of(&request).error(AppError::Unavailable {
                        retry_after_secs: 1,
                    });
                    return Self::answered(response, request_id);
                }
            }
        };
        // Requests to the REST API without a token are limited per address here; a token that
        // fails verification is counted where it is verified.
        if path.starts_with("/api/v1/")
            && !request.headers().contains_key(header::AUTHORIZATION)
            && let Err(refused) = check_anonymous(&self.state, client_addr(request.extensions()))
        {
            return Self::answered(refused.into_response(), request_id);
        }
        let method = request.method().clone();
        let route = self.route.unwrap_or_else(|| {
            request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| route_template(p.as_str()))
        });
        let surface = Surface::of(&request);
        let budget = self.state.config.request_timeout();
        let deadline = tokio::time::Instant::from_std(started) + budget;
        let run = if request.body().is_end_stream() {
            // No body (most GETs): nothing to wait for. `poll_ready` readied this service.
            Either::Left(self.inner.call(request))
        } else {
            // Media uploads have their own, larger limit; every other body the 1 MiB one.
            let limit = if super::media::is_upload(request.method(), request.uri().path()) {
                self.state.config.media_max_bytes
            } else {
                self.state.config.max_body_bytes
            };
            // The extractors' limit (`ApiJson`, `Bytes`), needed only by a request with a body.
            let inner =
                DefaultBodyLimit::max(self.state.config.max_body_bytes).layer(self.inner.clone());
            Either::Right(read_body_then_run(inner, request, limit, deadline).boxed())
        };
        let guarded = Guarded {
            run: AssertUnwindSafe(run).catch_unwind(),
            timer: None,
            deadline,
            budget,
            surface,
        };
        let scope = RequestScope {
            id: request_id,
            user: Cell::new(None),
        };
        RequestContextFuture::Running {
            run: REQUEST.scope(scope, guarded),
            method,
            route,
            started,
            permit,
        }
    }
}

pin_project! {
    /// The future of [`RequestContext`].
    #[project = ContextProjection]
    pub enum RequestContextFuture<F> {
        /// Answered before the rest of the stack (load shed, anonymous limit).
        Answered { response: Option<Response> },
        Running {
            #[pin]
            run: TaskLocalFuture<RequestScope, Guarded<Run<F>>>,
            method: Method,
            route: &'static str,
            started: Instant,
            permit: Option<OwnedSemaphorePermit>,
        },
    }
}

impl<F> Future for RequestContextFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ContextProjection::Answered { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
            ContextProjection::Running {
                mut run,
                method,
                route,
                started,
                permit,
            } => {
                let mut response = std::task::ready!(run.as_mut().poll(cx));
                drop(permit.take());
                let (request_id, user) = match run.take_value() {
                    Some(scope) => (scope.id, scope.user.get()),
                    None => (HeaderValue::from_static("unknown"), None),
                };
                let status = response.status().as_u16();
                record_request(method, route, status, *started, &request_id, user);
                response.headers_mut().insert(&REQUEST_ID_NAME, request_id);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// The request's metrics and its log line, once it is answered.
pub(crate) fn record_request(
    method: &Method,
    route: &'static str,
    status: u16,
    started: Instant,
    request_id: &HeaderValue,
    user: Option<Uuid>,
) {
    let elapsed = started.elapsed();
    metrics::http_request(method, route, status, elapsed.as_secs_f64());
    tracing::info!(
        request_id = request_id.to_str().unwrap_or_default(),
        method = %method,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        user_id = user.map(|u| u.to_string()).unwrap_or_default(),
        "request"
    );
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
