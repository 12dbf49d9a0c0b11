//! Requests answered from memory in front of the router (`http::from_memory`): package
//! revalidations and delta downloads get the handler's answer and the handler's window, and
//! never past a change the handler would see (a withdrawal, a revoked grant). `answer` is
//! called directly to know which of the two answered; every other check is over HTTP. (Media
//! revalidations: `media::objects_are_served_with_validators_and_ranges`.)
use axum::{body::Body, extract::Request};
use examsync::http::from_memory::answer;
use reqwest::header::HeaderMap;
use serde_json::json;
use uuid::Uuid;

use crate::access::{bank, download, grants_app};
use crate::backend_tests;
use crate::helpers::{Backend, TestApp, question, spawn_app_with};

/// The request a phone sends to revalidate `path`.
fn revalidation(path: &str, token: &str, etag: &str) -> Request {
    with_headers(path, token, &[("if-none-match", etag)])
}

fn with_headers(path: &str, token: &str, headers: &[(&str, &str)]) -> Request {
    let mut request = Request::get(path).header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).unwrap()
}

async fn revalidate(app: &TestApp, path: &str, token: &str, etag: &str) -> (u16, HeaderMap) {
    let response = app
        .get(path, token)
        .header("if-none-match", etag)
        .header("x-request-id", "revalidation-1")
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.headers().clone())
}

/// The headers both answers must share: all but the date and the request id.
fn comparable(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    pairs.sort();
    pairs
}

async fn package_revalidations_match_the_handler(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let (student, token) = app.student();
    app.grant(student, "YEAR", Some(1)).await;
    let id = bank.year1_v2;
    let path = format!("/api/v1/tests/packages/{id}");
    // Nothing known of this caller yet: the router's.
    assert!(answer(&app.state, &revalidation(&path, &token, "\"x\"")).is_none());

    let (status, body) = download(&app, &token, id, &[]).await;
    assert_eq!(status, 200);
    let etag = format!("W/\"{}\"", body["version_hash"].as_str().unwrap());
    let from_memory = answer(&app.state, &revalidation(&path, &token, &etag)).unwrap();
    assert_eq!(from_memory.status(), 304);
    // A tag that does not match is the handler's (a full download).
    assert!(answer(&app.state, &revalidation(&path, &token, "W/\"other\"")).is_none());

    // Over HTTP, the same 304 from memory and from the handler (the id in its simple
    // form is not one this layer reads, so the router and the handler answer it).
    let (status, memory) = revalidate(&app, &path, &token, &etag).await;
    assert_eq!(status, 304);
    assert_eq!(memory["x-request-id"], "revalidation-1");
    let simple = format!("/api/v1/tests/packages/{}", id.simple());
    assert!(answer(&app.state, &revalidation(&simple, &token, &etag)).is_none());
    let (status, handler) = revalidate(&app, &simple, &token, &etag).await;
    assert_eq!(status, 304);
    assert_eq!(handler["x-request-id"], "revalidation-1");
    assert_eq!(comparable(&memory), comparable(&handler));
    assert!(memory.contains_key("etag") && memory.contains_key("last-modified"));

    // A revoked grant and a withdrawal reach the answer at once: memory no longer decides.
    let (other, other_token) = app.student();
    let grant = app.grant(other, "YEAR", Some(1)).await;
    assert_eq!(download(&app, &other_token, id, &[]).await.0, 200);
    assert!(answer(&app.state, &revalidation(&path, &other_token, &etag)).is_some());
    let (status, body) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation($id: UUID!) { revokeAccess(id: $id) { revokedAt } }",
            json!({"id": grant}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(answer(&app.state, &revalidation(&path, &other_token, &etag)).is_none());
    assert_eq!(revalidate(&app, &path, &other_token, &etag).await.0, 403);

    let (_, body) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation($id: UUID!) { withdrawPackage(id: $id, reason: \"typo\") { withdrawnAt } }",
            json!({"id": id}),
        )
        .await;
    assert!(
        body["data"]["withdrawPackage"]["withdrawnAt"].is_string(),
        "{body}"
    );
    assert!(answer(&app.state, &revalidation(&path, &token, &etag)).is_none());
    assert_eq!(revalidate(&app, &path, &token, &etag).await.0, 410);
    app.stop().await;
}

async fn revalidations_from_memory_count_against_the_window(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.package_rate_limit_per_minute = 3).await;
    app.import_questions(json!([question("Q", &["a", "b"], 0, 1, None, None)]))
        .await;
    let id: Uuid = app.publish("PROGRAM", json!({})).await;
    let path = format!("/api/v1/tests/packages/{id}");
    let (_, token) = app.student();
    let response = app.get(&path, &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    for _ in 0..2 {
        assert!(answer(&app.state, &revalidation(&path, &token, "W/\"other\"")).is_none());
        assert_eq!(revalidate(&app, &path, &token, &etag).await.0, 304);
    }
    // The window's fourth request, answered from memory: the handler's 429 and envelope.
    let response = app
        .get(&path, &token)
        .header("if-none-match", &etag)
        .header("x-request-id", "over-the-window")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["x-request-id"], "over-the-window");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "RATE_LIMITED", "{body}");
    assert_eq!(body["request_id"], "over-the-window", "{body}");
    app.stop().await;
}

async fn delta_downloads_match_the_handler(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let (student, token) = app.student();
    app.grant(student, "YEAR", Some(1)).await;
    let path = format!(
        "/api/v1/tests/packages/{}/delta?from={}",
        bank.year1_v2, bank.year1_v1
    );
    let identity = [("accept-encoding", "identity")];
    assert!(answer(&app.state, &with_headers(&path, &token, &identity)).is_none());
    // The handler builds the delta; from then on memory holds everything.
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = app.get(&path, &token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    let handler = get(&[("accept-encoding", "identity")]).await.unwrap();
    assert_eq!(handler.status(), 200);
    let handler_headers = handler.headers().clone();
    let handler_body = handler.bytes().await.unwrap();
    for headers in [
        &identity[..],
        &[("accept-encoding", "identity"), ("range", "bytes=5-24")],
    ] {
        let memory = answer(&app.state, &with_headers(&path, &token, headers)).unwrap();
        let status = memory.status().as_u16();
        let memory_headers = memory.headers().clone();
        let body = axum::body::to_bytes(memory.into_body(), usize::MAX)
            .await
            .unwrap();
        if headers.len() == 1 {
            assert_eq!(status, 200);
            assert_eq!(body, handler_body);
        } else {
            assert_eq!(status, 206);
            assert_eq!(body, handler_body.slice(5..25));
        }
        assert_eq!(memory_headers["etag"], handler_headers["etag"]);
        assert_eq!(memory_headers["vary"], handler_headers["vary"]);
    }
    // Over HTTP, answered from memory: the same body and headers as the handler's.
    let memory = get(&[("accept-encoding", "identity")]).await.unwrap();
    assert_eq!(comparable(memory.headers()), comparable(&handler_headers));
    assert_eq!(memory.bytes().await.unwrap(), handler_body);
    // Not for this layer: a revalidation, a HEAD, a `from` that does not parse (the
    // handler's 400).
    let etag = handler_headers["etag"].to_str().unwrap();
    assert!(answer(&app.state, &revalidation(&path, &token, etag)).is_none());
    let head = Request::head(&path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert!(answer(&app.state, &head).is_none());
    let malformed = format!("{}?from=not-a-uuid", path.split('?').next().unwrap());
    assert!(answer(&app.state, &with_headers(&malformed, &token, &identity)).is_none());
    assert_eq!(get_status(&app, &malformed, &token).await, 400);
    // Another student without a grant to the year: never from memory, and refused.
    let (_, stranger) = app.student();
    assert_eq!(get_status(&app, &path, &stranger).await, 403);
    assert!(answer(&app.state, &with_headers(&path, &stranger, &identity)).is_none());
    app.stop().await;
}

async fn get_status(app: &TestApp, path: &str, token: &str) -> u16 {
    app.get(path, token).send().await.unwrap().status().as_u16()
}

backend_tests!(
    delta_downloads_match_the_handler,
    package_revalidations_match_the_handler,
    revalidations_from_memory_count_against_the_window
);
