//! Health routes, request ids, the error envelope, migrations and Redis being down.
use serde_json::Value;

use crate::backend_tests;
use crate::helpers::{Backend, count_rows, spawn_app, spawn_app_with};

backend_tests!(
    health_routes_answer,
    migrations_create_every_table,
    errors_use_the_envelope_with_request_id
);

async fn health_routes_answer(backend: Backend) {
    // About Redis's answers, not its delays: a Redis call slowed past the default timeout
    // by a loaded machine would fall back (and split the state) as a fault would.
    let app = spawn_app_with(backend, |c| c.redis_timeout_ms = 10_000).await;
    let live = app.client.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.headers()["content-type"].to_str().unwrap(),
        "application/health+json"
    );
    assert!(ready.headers().contains_key("x-request-id"));
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "pass", "{body}");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("examsync_"));
}

async fn migrations_create_every_table(backend: Backend) {
    let app = spawn_app(backend).await;
    for table in [
        "users",
        "questions",
        "test_packages",
        "test_sessions",
        "session_answers",
        "attempts",
        "idempotency_records",
    ] {
        assert_eq!(count_rows(&app.db, table, "").await, 0, "{table}");
    }
    // Running the migrations again (a second instance starting) is a no-op.
    examsync::db::migrate(&app.db).await.unwrap();
}

async fn errors_use_the_envelope_with_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(app.url("/no/such/route"))
        .header("x-request-id", "test-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "test-req-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "NOT_FOUND");
    assert_eq!(body["request_id"], "test-req-42");
    assert!(body.get("message").is_some() && body.get("details").is_some());
}

/// The server starts and serves with Redis unreachable; `/readyz` warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_with_redis_unreachable() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        // A port nothing listens on.
        config.redis_url = Some("redis://127.0.0.1:1".into());
    })
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "warn", "{body}");
    assert_eq!(body["checks"]["redis:connectivity"][0]["status"], "warn");
    // Sync and GraphQL still work (the cache falls back to the database).
    let (_, token) = app.student();
    let (status, body) = app
        .graphql(
            Some(&token),
            "{ mySessions { id } syncStatus { ackedCount } }",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
}

/// Database down → 503 fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_database_is_gone() {
    let app = spawn_app(Backend::Sqlite).await;
    app.db.clone().close().await.unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "fail");
}
