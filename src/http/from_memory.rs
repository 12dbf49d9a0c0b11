//! The commonest package and media requests answered from memory, in front of the router
//! (`http::front` asks [`answer`] first).
//!
//! What a phone asks most is whether what it holds is still current (a `GET` of a package or
//! a media object with `If-None-Match`, nearly always a `304`) and, when a new version of its
//! scope appears, the delta to it. When every fact such an answer rests on is already in
//! memory — the token remembered as verified, the user's row known, the caller's access
//! remembered, the validators or the delta's bodies cached — this layer answers before
//! routing, so that these requests skip the router's matching, its path parameters and
//! extensions, and the per-route middleware.
//!
//! It takes no decision of its own: it asks the same caches, through the same rule functions,
//! as the handlers (`*_from_memory` in [`packages`] and [`media`]), renders through the same
//! functions, and counts the request against the same per-user window. Anything it cannot
//! answer from memory — a cold cache, another method or path, an id or a query that is not
//! in the exact form clients send, a tag that does not match — goes on to the router
//! unchanged, and its handler fills the caches read here. The answer carries the request id,
//! is counted in the HTTP metrics under its route and gets the request log line, as through
//! the middleware.
use std::{cell::Cell, sync::Arc, time::Instant};

use axum::{
    extract::Request,
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};
use entity::PackageId;
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::AuthUser,
    error::{AppError, REQUEST, RequestScope},
    http::{
        media,
        middleware_layer::{REQUEST_ID_NAME, record_request, request_id_of},
        packages,
    },
    media::MediaSha256,
    metrics,
    packages::store::DeltaBodies,
};

const PACKAGE_PREFIX: &str = "/api/v1/tests/packages/";
/// The routes' templates, as the router names them in metrics and logs.
const PACKAGE_ROUTE: &str = "/api/v1/tests/packages/{package_id}";
const DELTA_ROUTE: &str = "/api/v1/tests/packages/{package_id}/delta";
const MEDIA_ROUTE: &str = "/api/v1/media/{sha256}";

/// What a request asks for, in the exact form clients send it.
enum Target {
    /// `GET`/`HEAD` of a package with `If-None-Match`.
    PackageRevalidation(PackageId),
    /// `GET`/`HEAD` of a media object with `If-None-Match`.
    MediaRevalidation(MediaSha256),
    /// `GET` of a delta (`?from=` alone) without `If-None-Match`.
    Delta { id: PackageId, from: PackageId },
}

impl Target {
    fn of(request: &Request) -> Option<Target> {
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let revalidation = request.headers().contains_key(header::IF_NONE_MATCH);
        let path = request.uri().path();
        if let Some(rest) = path.strip_prefix(PACKAGE_PREFIX) {
            let (id, rest) = rest.split_at_checked(36)?;
            let id = PackageId::from(Uuid::try_parse(id).ok()?);
            return match rest {
                "" if revalidation => Some(Target::PackageRevalidation(id)),
                // A `HEAD` drops the body: the router's to do.
                "/delta" if !revalidation && method == Method::GET => {
                    let from = packages::delta_from(request.uri().query()).ok()?;
                    Some(Target::Delta { id, from })
                }
                _ => None,
            };
        }
        let sha = path.strip_prefix(media::OBJECT_PREFIX)?;
        revalidation
            .then(|| MediaSha256::parse(sha))
            .flatten()
            .map(Target::MediaRevalidation)
    }

    fn route(&self) -> &'static str {
        match self {
            Target::PackageRevalidation(_) => PACKAGE_ROUTE,
            Target::MediaRevalidation(_) => MEDIA_ROUTE,
            Target::Delta { .. } => DELTA_ROUTE,
        }
    }

    /// What the answer needs, when memory holds all of it.
    fn prepare(&self, state: &AppState, user: &AuthUser, headers: &HeaderMap) -> Option<Prepared> {
        match self {
            Target::PackageRevalidation(id) => {
                packages::not_modified_from_memory(state, user, *id, headers)
                    .map(Prepared::PackageNotModified)
            }
            Target::MediaRevalidation(sha) => {
                media::not_modified_from_memory(state, user, sha, headers)
                    .map(Prepared::NotModified)
            }
            Target::Delta { id, from } => {
                packages::delta_from_memory(state, user, *id, *from).map(Prepared::Delta)
            }
        }
    }
}

/// An answer decided from memory, not yet counted or rendered.
enum Prepared {
    /// The headers of a package `304`.
    PackageNotModified(HeaderMap),
    /// The headers of another `304`.
    NotModified(HeaderMap),
    Delta(Arc<DeltaBodies>),
}

impl Prepared {
    fn respond(self, request_headers: &HeaderMap) -> Result<Response, AppError> {
        match self {
            Prepared::PackageNotModified(headers) => {
                metrics::package_download(304, "none");
                Ok(packages::not_modified_with(headers))
            }
            Prepared::NotModified(headers) => Ok(packages::not_modified_with(headers)),
            Prepared::Delta(delta) => packages::delta_response(&delta, request_headers),
        }
    }
}

/// The answer to `request` when memory decides it (the handler's, or the per-user window's
/// `429`); `None`: the router's. Public for the tests that hold it to the handlers' answers.
pub fn answer(state: &AppState, request: &Request) -> Option<Response> {
    let target = Target::of(request)?;
    let started = Instant::now();
    let headers = request.headers();
    let user = state
        .tokens
        .remembered_authorization(headers.get(header::AUTHORIZATION)?.as_bytes())?;
    if !state.users.is_known(&user, state.primary.timeline()) {
        return None;
    }
    let prepared = target.prepare(state, &user, headers)?;
    // Decided: the request counts against the caller's window, as the handler's would.
    let request_id = request_id_of(request);
    let rendered = state
        .package_limiter
        .check(&user.id)
        .and_then(|()| prepared.respond(headers));
    let mut response = match rendered {
        Ok(response) => {
            metrics::answered_from_memory(target.route());
            response
        }
        // Rendered in the request's scope, so that the error body carries its id.
        Err(error) => REQUEST.sync_scope(
            RequestScope {
                id: request_id.clone(),
                user: Cell::new(Some(user.id.into())),
            },
            || error.into_response(),
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
