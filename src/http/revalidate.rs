//! Revalidations answered from memory, in front of the router.
//!
//! What a phone asks most is whether what it holds is still current: a `GET` of a package or
//! a media object with `If-None-Match`, nearly always answered `304`. When every fact that
//! answer rests on is already in memory — the token remembered as verified, the user's row
//! known, the caller's access to the package remembered, the validators cached — this layer
//! answers before routing, so that the commonest request skips the router's matching, its
//! path parameters and extensions, and the per-route middleware.
//!
//! It takes no decision of its own: it asks the same caches, through the same rule functions,
//! as the handlers ([`packages::not_modified_from_memory`], [`media::not_modified_from_memory`]),
//! and counts the request against the same per-user window. Anything it cannot answer from
//! memory — a cold cache, another method or path, an id that does not parse, a tag that does
//! not match — goes on to the router unchanged, and its handler fills the caches read here.
//! The answer carries the request id, is counted in the HTTP metrics under its route and gets
//! the request log line, as through the middleware.
use std::{
    cell::Cell,
    convert::Infallible,
    panic::AssertUnwindSafe,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::Request,
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};
use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};
use uuid::Uuid;

use entity::PackageId;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::{REQUEST, RequestScope},
    http::{
        media,
        middleware_layer::{REQUEST_ID_NAME, record_request, request_id_of},
        packages,
    },
    media::MediaSha256,
    metrics,
};

const PACKAGE_PREFIX: &str = "/api/v1/tests/packages/";
/// The routes' templates, as the router names them in metrics and logs.
const PACKAGE_ROUTE: &str = "/api/v1/tests/packages/{package_id}";
const MEDIA_ROUTE: &str = "/api/v1/media/{sha256}";

/// Wraps the whole router (see the module documentation).
#[derive(Clone)]
pub struct RevalidateLayer {
    state: AppState,
}

impl RevalidateLayer {
    pub fn new(state: AppState) -> Self {
        RevalidateLayer { state }
    }
}

impl<S> Layer<S> for RevalidateLayer {
    type Service = Revalidate<S>;

    fn layer(&self, inner: S) -> Revalidate<S> {
        Revalidate {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Revalidate<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Revalidate<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // A panic here must not take the connection: the router then answers as usual.
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| answer(&self.state, &request)));
        match answered {
            Ok(Some(response)) => Either::Left(ready(Ok(response))),
            Ok(None) => Either::Right(self.inner.call(request)),
            Err(_) => {
                tracing::error!("answering a revalidation from memory panicked");
                Either::Right(self.inner.call(request))
            }
        }
    }
}

/// What a revalidation asks about.
enum Target {
    Package(PackageId),
    Media(MediaSha256),
}

impl Target {
    /// The target of a `GET` or `HEAD` of a package or object, in exactly the form clients
    /// send (anything else is the router's to parse and, if need be, refuse).
    fn of(method: &Method, path: &str) -> Option<Target> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        if let Some(id) = path.strip_prefix(PACKAGE_PREFIX) {
            // The download itself, not `…/delta` or `…/media`.
            return (id.len() == 36)
                .then(|| Uuid::try_parse(id).ok())
                .flatten()
                .map(|id| Target::Package(PackageId::from(id)));
        }
        let sha = path.strip_prefix(media::OBJECT_PREFIX)?;
        MediaSha256::parse(sha).map(Target::Media)
    }

    fn route(&self) -> &'static str {
        match self {
            Target::Package(_) => PACKAGE_ROUTE,
            Target::Media(_) => MEDIA_ROUTE,
        }
    }

    fn not_modified(
        &self,
        state: &AppState,
        user: &AuthUser,
        headers: &HeaderMap,
    ) -> Option<HeaderMap> {
        match self {
            Target::Package(id) => packages::not_modified_from_memory(state, user, *id, headers),
            Target::Media(sha) => media::not_modified_from_memory(state, user, sha, headers),
        }
    }
}

/// The `304` (or the per-user window's `429`) for `request` when memory decides it; `None`:
/// the router's. Public for the tests that hold it to the handlers' answers.
pub fn answer(state: &AppState, request: &Request) -> Option<Response> {
    let target = Target::of(request.method(), request.uri().path())?;
    let headers = request.headers();
    if !headers.contains_key(header::IF_NONE_MATCH) {
        return None;
    }
    let started = Instant::now();
    let user = state
        .tokens
        .remembered_authorization(headers.get(header::AUTHORIZATION)?.as_bytes())?;
    if !state.users.is_known(&user, state.primary.timeline()) {
        return None;
    }
    let not_modified = target.not_modified(state, &user, headers)?;
    // Decided: the request counts against the caller's window, as the handler's would.
    let request_id = request_id_of(request);
    let mut response = match state.package_limiter.check(&user.id) {
        Ok(()) => {
            if let Target::Package(_) = target {
                metrics::package_download(304, "none");
            }
            metrics::revalidated_from_memory(target.route());
            packages::not_modified_with(not_modified)
        }
        // Rendered in the request's scope, so that the error body carries its id.
        Err(refused) => REQUEST.sync_scope(
            RequestScope {
                id: request_id.clone(),
                user: Cell::new(Some(user.id.into())),
            },
            || refused.into_response(),
        ),
    };
    record_request(
        request.method(),
        target.route(),
        response.status().as_u16(),
        started,
        &request_id,
        Some(user.id.into()),
    );
    response.headers_mut().insert(&REQUEST_ID_NAME, request_id);
    Some(response)
}
