//! What runs in front of the router: the requests phones make most, served without its
//! matching, path parameters, extensions and per-route layers.
//!
//! - Package and media revalidations and delta downloads that memory answers
//!   ([`from_memory::answer`]): a plain function call, no future.
//! - The pull feed (`GET /api/v1/sync/changes`), which every phone sends after every sync:
//!   its handler through the same request middleware as every route (request id, budget,
//!   panic net, load shedding, log line and metrics under the route's template), with the
//!   token read by the same extractor.
//!
//! Everything else, and any other method on these paths, goes to the router, where the same
//! routes are registered (and documented) too.
use std::{
    convert::Infallible,
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use axum::{extract::Request, http::Method, response::Response};
use futures::future::{BoxFuture, Either, Ready, ready};
use tower::{Layer, Service};

use crate::{
    app::AppState,
    http::{
        changes, from_memory,
        middleware_layer::{RequestContext, RequestContextFuture, RequestContextLayer},
    },
};

const PULL_ROUTE: &str = "/api/v1/sync/changes";

/// Wraps the whole router.
#[derive(Clone)]
pub struct FrontLayer {
    state: AppState,
}

impl FrontLayer {
    pub fn new(state: AppState) -> Self {
        FrontLayer { state }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, router: S) -> Front<S> {
        Front {
            router,
            pull: RequestContextLayer::for_route(self.state.clone(), PULL_ROUTE).layer(Pull {
                state: self.state.clone(),
            }),
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Front<S> {
    router: S,
    pull: RequestContext<Pull>,
    state: AppState,
}

type PullFuture = BoxFuture<'static, Result<Response, Infallible>>;

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Ready<Result<Response, Infallible>>,
        Either<RequestContextFuture<PullFuture>, S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pull's service is always ready.
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // A panic here must not take the connection: the router then answers as usual.
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
            from_memory::answer(&self.state, &request)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("answering a request from memory panicked");
            None
        });
        if let Some(response) = answered {
            return Either::Left(ready(Ok(response)));
        }
        if request.method() == Method::GET && request.uri().path() == PULL_ROUTE {
            return Either::Right(Either::Left(self.pull.call(request)));
        }
        Either::Right(Either::Right(self.router.call(request)))
    }
}

/// The pull feed's handler as a service of its own.
#[derive(Clone)]
pub struct Pull {
    state: AppState,
}

impl Service<Request> for Pull {
    type Response = Response;
    type Error = Infallible;
    type Future = PullFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> PullFuture {
        let state = self.state.clone();
        Box::pin(async move { Ok(changes::sync_changes_unrouted(state, request).await) })
    }
}
