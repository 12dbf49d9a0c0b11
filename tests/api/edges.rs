//! Edges of issue 11 outside the sync engine: concurrent `submitSession`, the request
//! budget on a hung database (503 / `UNAVAILABLE`, not 408), the catch-panic net, and the
//! cache namespace after a restore.
use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database, DatabaseTransaction, TransactionTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, test_config};
use crate::sync::{Surface, ago, attempt, bank, sync};

backend_tests!(
    concurrent_submits_close_a_session_once,
    request_budget_on_a_locked_database_is_unavailable,
    statement_timeout_on_a_locked_database_is_unavailable,
);

/// Takes the write lock the sync path needs, from a connection of the test's own, and
/// holds it until the transaction is dropped or rolled back.
async fn hold_write_lock(app: &TestApp) -> (sea_orm::DatabaseConnection, DatabaseTransaction) {
    let conn = Database::connect(&app.database.url).await.unwrap();
    let txn = conn.begin().await.unwrap();
    match app.backend {
        // Any write takes SQLite's one database-wide write lock.
        Backend::Sqlite => txn
            .execute_unprepared("CREATE TABLE lock_holder (x INTEGER)")
            .await
            .unwrap(),
        Backend::Postgres => txn
            .execute_unprepared("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap(),
    };
    (conn, txn)
}

/// Syncs one fresh attempt on each surface while the database is locked: both must be
/// refused as a whole (503 + Retry-After / UNAVAILABLE) within `bound`; after the lock is
/// gone the same requests are ACKED (nothing was half-applied) and then DUPLICATE.
async fn locked_database_is_unavailable(app: TestApp, bound: Duration) {
    let q = bank(&app).await;
    let (_, token) = app.student();
    let rest_batch = [attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))];
    let graphql_batch = [attempt(q[1], 0, &ago(5), Some(Uuid::new_v4()))];
    let (_conn, txn) = hold_write_lock(&app).await;

    let started = Instant::now();
    let response = app
        .post("/api/v1/sync/attempts:batch", &token)
        .json(&json!({"attempts": rest_batch}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503, "REST on a locked database");
    assert_eq!(
        response.headers().get("retry-after").unwrap(),
        &examsync::error::RETRY_AFTER.as_secs().to_string()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "UNAVAILABLE", "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    assert!(elapsed < bound, "answered after {elapsed:?}");

    let started = Instant::now();
    let (status, results, code) = sync(&app, Surface::Graphql, &token, &graphql_batch, None).await;
    assert!(
        results.is_empty(),
        "no item result on a transient fault: {results:?}"
    );
    assert_eq!(code.as_deref(), Some("UNAVAILABLE"));
    // A resolver's error rides a 200 GraphQL response; the request budget's is a 503.
    assert!(status == 503 || status == 200, "{status}");
    assert!(
        started.elapsed() < bound,
        "answered after {:?}",
        started.elapsed()
    );

    txn.rollback().await.unwrap();
    for (surface, batch) in [
        (Surface::Rest, &rest_batch),
        (Surface::Graphql, &graphql_batch),
    ] {
        let (status, results, _) = sync(&app, surface, &token, batch, None).await;
        assert_eq!(status, 200);
        assert_eq!(results[0]["status"], "acked", "{surface:?}: {results:?}");
        let (_, again, _) = sync(&app, surface, &token, batch, None).await;
        assert_eq!(again[0]["status"], "duplicate", "{surface:?}: {again:?}");
    }
    assert_eq!(app.count("attempts").await, 2);
}

/// The request budget runs out first (the statement timeout is longer): 503, not 408.
async fn request_budget_on_a_locked_database_is_unavailable(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.request_timeout_secs = 1;
        c.db_statement_timeout_ms = 20_000;
    })
    .await;
    locked_database_is_unavailable(app, Duration::from_secs(4)).await;
}

/// The database-side statement timeout fires well inside the budget: 503 at once.
async fn statement_timeout_on_a_locked_database_is_unavailable(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.db_statement_timeout_ms = 300).await;
    locked_database_is_unavailable(app, Duration::from_secs(4)).await;
}

/// A handler that panics (a route mounted only by this test) answers the REST envelope or
/// a GraphQL error with the request id, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_500_with_the_request_id() {
    async fn boom() -> &'static str {
        panic!("planted panic")
    }
    let (config, database, redis) = test_config(Backend::Sqlite).await;
    let application = examsync::Application::build(config)
        .await
        .unwrap()
        .with_routes(
            Router::new()
                .route("/test/panic", get(boom))
                .route("/graphql/test-panic", get(boom)),
        );
    let base = format!("http://{}", application.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();

    let response = client
        .get(format!("{base}/test/panic"))
        .header("x-request-id", "panic-rest-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-request-id"], "panic-rest-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "INTERNAL_SERVER_ERROR", "{body}");
    assert_eq!(body["request_id"], "panic-rest-1", "{body}");
    assert!(
        !body["message"].as_str().unwrap().contains("planted"),
        "{body}"
    );

    let response = client
        .get(format!("{base}/graphql/test-panic"))
        .header("x-request-id", "panic-gql-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "panic-gql-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INTERNAL_SERVER_ERROR",
        "{body}"
    );
    assert!(!body.to_string().contains("planted"), "{body}");

    let live = client.get(format!("{base}/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200, "the server still serves after a panic");
    let _ = tx.send(());
    let _ = server.await;
    drop((database, redis));
}

/// Sixteen concurrent `submitSession` calls: every one answers SUBMITTED, and the row is
/// closed by exactly one statement (a trigger counts the writes that change
/// `submitted_at`); a later submit changes nothing.
async fn concurrent_submits_close_a_session_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let (status, results, _) = sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let session = results[0]["server_session_id"].as_str().unwrap().to_owned();

    app.db
        .execute_unprepared("CREATE TABLE submit_writes (n INTEGER)")
        .await
        .unwrap();
    let trigger = match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER count_submit_writes AFTER UPDATE ON test_sessions
             WHEN OLD.submitted_at IS NOT NEW.submitted_at
             BEGIN INSERT INTO submit_writes VALUES (1); END"
        }
        Backend::Postgres => {
            "CREATE FUNCTION count_submit_writes() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO submit_writes VALUES (1); RETURN NEW; END $$;
             CREATE TRIGGER count_submit_writes AFTER UPDATE ON test_sessions FOR EACH ROW
             WHEN (OLD.submitted_at IS DISTINCT FROM NEW.submitted_at)
             EXECUTE FUNCTION count_submit_writes()"
        }
    };
    app.db.execute_unprepared(trigger).await.unwrap();

    let submit = || {
        app.graphql(
            Some(&token),
            "mutation($id: UUID!) { submitSession(id: $id) { id status answeredCount } }",
            json!({"id": session}),
        )
    };
    let answers = join_all((0..16).map(|_| submit())).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body["data"]["submitSession"]["status"], "SUBMITTED",
            "{body}"
        );
        assert_eq!(body["data"]["submitSession"]["answeredCount"], 1, "{body}");
    }
    assert_eq!(
        app.count("submit_writes").await,
        1,
        "one write closes the session"
    );
    let before = app.count("submit_writes").await;
    let (_, again) = submit().await;
    assert_eq!(again["data"]["submitSession"]["status"], "SUBMITTED");
    assert_eq!(
        app.count("submit_writes").await,
        before,
        "a second submit changes nothing"
    );

    // Another user's session stays NOT_FOUND through the guarded path.
    let (_, other) = app.student();
    let (_, body) = app
        .graphql(
            Some(&other),
            "mutation($id: UUID!) { submitSession(id: $id) { id } }",
            json!({"id": session}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );
}

/// A second server on `config` (same database and Redis prefix), stopped by the sender.
async fn instance(
    config: examsync::Config,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let application = examsync::Application::build(config).await.unwrap();
    let base = format!("http://{}", application.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = application
            .run_until_stopped(async {
                let _ = rx.await;
            })
            .await;
    });
    (base, tx, server)
}

async fn replay(base: &str, token: &str, batch: &[Value]) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/sync/attempts:batch"))
        .bearer_auth(token)
        .json(&json!({"attempts": batch}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["results"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A cached DUPLICATE never outlives the database contents it was cached for: after a
/// restore (rows gone, then `examsync cache reset`) and on a new database behind the same
/// Redis prefix, a replay of the attempt is ACKED again instead of DUPLICATE (which would
/// make the phone delete an answer the server no longer holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_does_not_reuse_cached_duplicates() {
    if crate::helpers::skip_postgres() {
        return;
    }
    let (config, database, redis) = test_config(Backend::Postgres).await;
    if redis.is_none() {
        eprintln!("SKIPPED: TEST_REDIS_URL not set");
        return;
    }
    let app = crate::helpers::start(Backend::Postgres, config.clone(), database, redis).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let batch = [attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))];
    assert_eq!(replay(&app.base, &token, &batch).await, "acked");
    assert_eq!(replay(&app.base, &token, &batch).await, "duplicate");

    // Restore in place to a backup taken before that sync: its rows are gone.
    for table in [
        "session_answers",
        "attempts",
        "idempotency_records",
        "test_sessions",
    ] {
        app.db
            .execute_unprepared(&format!("DELETE FROM {table}"))
            .await
            .unwrap();
    }
    let out = std::process::Command::new(crate::helpers::binary())
        .args(["cache", "reset"])
        .env("DATABASE_URL", &app.database.url)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cache epoch"));
    let (base, stop, server) = instance(config.clone()).await;
    assert_eq!(replay(&base, &token, &batch).await, "acked", "after reset");
    assert_eq!(replay(&base, &token, &batch).await, "duplicate");
    let _ = stop.send(());
    let _ = server.await;

    // A new database behind the same Redis prefix (a new deployment, or a dump restored
    // into a fresh database) is a new namespace by itself.
    let fresh = crate::helpers::TestDatabase::new(Backend::Postgres).await;
    let mut other = config.clone();
    other.database_url = fresh.url.clone();
    let (base, stop, server) = instance(other).await;
    let imported: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(app.admin_token())
        .json(&json!({
            "query": "mutation($input: [QuestionInput!]!) { importQuestions(input: $input) { ids } }",
            "variables": {"input": [{"id": q[0], "stem": "Q four", "options": ["a", "b", "c", "d"],
                "correctIndex": 1, "yearId": 1}]},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        imported["data"]["importQuestions"]["ids"][0],
        json!(q[0]),
        "{imported}"
    );
    assert_eq!(replay(&base, &token, &batch).await, "acked", "new database");
    let _ = stop.send(());
    let _ = server.await;
}
