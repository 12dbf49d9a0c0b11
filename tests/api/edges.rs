//! Edges of issue 11 outside the sync engine: concurrent `submitSession`, the request
//! budget on a hung database (503 / `UNAVAILABLE`, not 408), the catch-panic net, and the
//! cache namespace after a restore.
use futures::future::join_all;
use sea_orm::ConnectionTrait;
use serde_json::json;
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, spawn_app};
use crate::sync::{Surface, ago, attempt, bank, sync};

backend_tests!(concurrent_submits_close_a_session_once);

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
