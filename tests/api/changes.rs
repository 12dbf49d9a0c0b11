//! The pull feed (`GET /api/v1/sync/changes`, `syncChanges`, docs/api.md): shapes, paging,
//! errors, isolation, the page plan, and the adversarial walk that must never skip a change,
//! on SQLite and on PostgreSQL + Redis.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use examsync::{Application, Config};
use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::Client;
use sea_orm::{ConnectionTrait, DbBackend, QueryTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, question, spawn_app, spawn_app_with};
use crate::sync::{Surface, ago, attempt, bank, sync};

/// One REST pull from `base`: (status, body).
async fn pull_at(
    client: &Client,
    base: &str,
    token: &str,
    since: Option<&str>,
    limit: Option<&str>,
) -> (u16, Value) {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(since) = since {
        query.push(("since", since));
    }
    if let Some(limit) = limit {
        query.push(("limit", limit));
    }
    let response = client
        .get(format!("{base}/api/v1/sync/changes"))
        .query(&query)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn pull(
    app: &TestApp,
    token: &str,
    since: Option<&str>,
    limit: Option<&str>,
) -> (u16, Value) {
    pull_at(&app.client, &app.base, token, since, limit).await
}

/// The whole feed from `since` (absent: a restore), page by page; (sessions, answers, cursor).
async fn pull_all(
    app: &TestApp,
    token: &str,
    since: Option<String>,
    limit: &str,
) -> (Vec<Value>, Vec<Value>, String) {
    let mut cursor = since;
    let (mut sessions, mut answers) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        let (status, body) = pull(app, token, cursor.as_deref(), Some(limit)).await;
        assert_eq!(status, 200, "{body}");
        sessions.extend(body["sessions"].as_array().unwrap().iter().cloned());
        answers.extend(body["answers"].as_array().unwrap().iter().cloned());
        cursor = Some(body["cursor"].as_str().unwrap().to_owned());
        if !body["has_more"].as_bool().unwrap() {
            return (sessions, answers, cursor.unwrap());
        }
    }
    panic!("the feed never ended");
}

backend_tests!(
    pulls_count_against_the_sync_rate_limit,
    restore_and_incremental_pulls,
    graphql_feed_and_session_fields,
    bad_cursors_and_limits,
    users_see_only_their_own_changes,
    adversarial_walk_never_skips_a_change,
);

/// One budget for sync batches, GraphQL operations and pulls.
async fn pulls_count_against_the_sync_rate_limit(backend: Backend) {
    // A Redis call past its timeout is counted by the instance instead (a fault must not
    // refuse anyone), which splits the count; under a loaded test run the default 250 ms can
    // pass, so this test, about the shared budget and not about faults, waits longer.
    let app = spawn_app_with(backend, |c| {
        c.rate_limit_per_minute = 3;
        c.redis_timeout_ms = 10_000;
    })
    .await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let (status, _, _) = sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(pull(&app, &token, None, None).await.0, 200);
    let (_, body) = app
        .graphql(Some(&token), "{ syncChanges { hasMore } }", Value::Null)
        .await;
    assert_eq!(
        body["data"]["syncChanges"]["hasMore"],
        json!(false),
        "{body}"
    );
    let (status, body) = pull(&app, &token, None, None).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{body}"
    );
}

async fn restore_and_incremental_pulls(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();

    // Nothing yet: an empty page, and a cursor to go on from.
    let (status, body) = pull(&app, &token, None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], json!([]));
    assert_eq!(body["answers"], json!([]));
    assert_eq!(body["has_more"], json!(false));
    let empty_cursor = body["cursor"].as_str().unwrap().to_owned();

    let offline = Uuid::new_v4();
    let items = [
        attempt(q[0], 1, &ago(30), Some(offline)),
        attempt(q[1], 1, &ago(29), Some(offline)),
        attempt(q[2], 4, &ago(28), Some(offline)),
    ];
    let (status, results, _) = sync(&app, Surface::Rest, &token, &items, None).await;
    assert_eq!(status, 200);
    let session_id = results[0]["server_session_id"].as_str().unwrap().to_owned();

    // From the empty cursor: the session and its three answers.
    let (sessions, answers, cursor) = pull_all(&app, &token, Some(empty_cursor), "500").await;
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s["server_session_id"], json!(session_id));
    assert_eq!(s["offline_session_id"], json!(offline));
    assert_eq!(
        (s["mode"].as_str(), s["status"].as_str()),
        (Some("TUTOR"), Some("ACTIVE"))
    );
    assert_eq!(
        (
            s["year_id"].as_i64(),
            s["block_id"].as_i64(),
            s["theme_id"].as_i64()
        ),
        (Some(1), Some(11), Some(111))
    );
    assert_eq!(
        (
            s["answered_count"].as_i64(),
            s["correct_count"].as_i64(),
            s["total_questions"].as_i64()
        ),
        (Some(3), Some(2), Some(3))
    );
    assert!(
        s["started_at"].is_string() && s["submitted_at"].is_null(),
        "{s}"
    );
    assert_eq!(answers.len(), 3);
    let by_question: HashMap<String, &Value> = answers
        .iter()
        .map(|a| (a["question_id"].as_str().unwrap().to_owned(), a))
        .collect();
    let a0 = by_question[&q[0].to_string()];
    assert_eq!(a0["server_session_id"], json!(session_id));
    assert_eq!(a0["selected_option_index"], json!(1));
    assert_eq!(a0["is_correct"], json!(true));
    assert_eq!(a0["changed_count"], json!(0));
    assert_eq!(a0["package_id"], Value::Null);
    assert_eq!(a0["server_attempt_id"], results[0]["server_attempt_id"]);
    // Written as the payload hash writes times: UTC, milliseconds, `Z`.
    assert_eq!(a0["answered_at"], items[0]["answered_at"], "{a0}");

    // Nothing new: an empty page, the same cursor.
    let (status, body) = pull(&app, &token, Some(&cursor), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["sessions"].as_array().unwrap().len(),
            body["answers"].as_array().unwrap().len()
        ),
        (0, 0)
    );
    assert_eq!(body["cursor"], json!(cursor));

    // A later answer replaces one; an older one does not: one answer and the session.
    let later = attempt(q[0], 2, &ago(10), Some(offline));
    let older = attempt(q[1], 0, &ago(50), Some(offline));
    sync(&app, Surface::Rest, &token, &[later.clone(), older], None).await;
    let (sessions, answers, cursor) = pull_all(&app, &token, Some(cursor), "500").await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["question_id"], json!(q[0]));
    assert_eq!(answers[0]["selected_option_index"], json!(2));
    assert_eq!(answers[0]["changed_count"], json!(1));
    assert_eq!(answers[0]["answered_at"], later["answered_at"]);
    // The score changed (the new option is wrong): the session comes too.
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["correct_count"], json!(1));

    // A submit is a change of the session.
    let (_, body) = app
        .graphql(
            Some(&token),
            "mutation($id: UUID!) { submitSession(id: $id) { status submittedAt } }",
            json!({"id": session_id}),
        )
        .await;
    assert_eq!(
        body["data"]["submitSession"]["status"], "SUBMITTED",
        "{body}"
    );
    let (sessions, answers, _) = pull_all(&app, &token, Some(cursor), "500").await;
    assert_eq!((sessions.len(), answers.len()), (1, 0));
    assert_eq!(sessions[0]["status"], "SUBMITTED");
    assert!(sessions[0]["submitted_at"].is_string());

    // A restore in pages of one: every item once, in any page size.
    let (sessions, answers, _) = pull_all(&app, &token, None, "1").await;
    assert_eq!((sessions.len(), answers.len()), (1, 3));
    let (_, first) = pull(&app, &token, None, Some("2")).await;
    assert_eq!(first["has_more"], json!(true));
    assert_eq!(
        first["sessions"].as_array().unwrap().len() + first["answers"].as_array().unwrap().len(),
        2
    );
}

async fn graphql_feed_and_session_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let offline = Uuid::new_v4();
    let items = [
        attempt(q[0], 1, &ago(30), Some(offline)),
        attempt(q[2], 4, &ago(28), Some(offline)),
    ];
    let (_, results, _) = sync(&app, Surface::Graphql, &token, &items, None).await;
    let session_id = results[0]["server_session_id"].as_str().unwrap().to_owned();
    let query = "query($since: String, $first: Int) { syncChanges(since: $since, first: $first) {
        sessions { id offlineSessionId mode status year blockId themeId totalQuestions answeredCount
                   correctCount startedAt submittedAt }
        answers { id sessionId questionId packageId selectedOptionIndex answeredAt isCorrect
                  changedCount serverAttemptId }
        cursor hasMore } }";
    let (status, body) = app.graphql(Some(&token), query, json!({"first": 1})).await;
    assert_eq!(status, 200, "{body}");
    let page = &body["data"]["syncChanges"];
    assert_eq!(page["hasMore"], json!(true), "{body}");
    let s = &page["sessions"][0];
    assert_eq!(s["id"], json!(session_id));
    assert_eq!(
        (s["blockId"].as_i64(), s["themeId"].as_i64()),
        (Some(11), Some(111))
    );
    assert!(s["submittedAt"].is_null());
    let (_, body) = app
        .graphql(Some(&token), query, json!({"since": page["cursor"]}))
        .await;
    let page = &body["data"]["syncChanges"];
    assert_eq!(page["hasMore"], json!(false), "{body}");
    let answers = page["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "{body}");
    let a = answers
        .iter()
        .find(|a| a["questionId"] == json!(q[0]))
        .unwrap();
    assert_eq!(a["id"], json!(format!("{session_id}:{}", q[0])));
    assert_eq!(a["sessionId"], json!(session_id));
    assert_eq!(
        (a["selectedOptionIndex"].as_i64(), a["isCorrect"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(a["serverAttemptId"], results[0]["server_attempt_id"]);

    // An answer scored against a package names it.
    let (_, body) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation { buildPackage(input: {name: \"p\", scope: PROGRAM, publish: true}) { id } }",
            Value::Null,
        )
        .await;
    let package = body["data"]["buildPackage"]["id"].clone();
    assert!(package.is_string(), "{body}");
    let mut scored = attempt(q[1], 0, &ago(1), Some(offline));
    scored["package_id"] = package.clone();
    let (_, results, _) = sync(&app, Surface::Rest, &token, &[scored], None).await;
    assert_eq!(results[0]["status"], "acked", "{results:?}");
    let (_, body) = app
        .graphql(Some(&token), query, json!({"since": page["cursor"]}))
        .await;
    let answers = body["data"]["syncChanges"]["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 1, "{body}");
    assert_eq!(answers[0]["packageId"], package);

    // mySessions carries the new fields too.
    let (_, body) = app
        .graphql(
            Some(&token),
            "{ mySessions { blockId themeId submittedAt } }",
            Value::Null,
        )
        .await;
    assert_eq!(
        body["data"]["mySessions"][0]["themeId"],
        json!(111),
        "{body}"
    );
}

/// A cursor as the server mints it, for another epoch.
fn cursor_of_epoch(epoch: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("1.{epoch}.0.2.{}", Uuid::nil().simple()))
}

async fn bad_cursors_and_limits(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.student();
    for limit in ["0", "1001", "-1", "ten", "1.5", "99999999999999999999"] {
        let (status, body) = pull(&app, &token, None, Some(limit)).await;
        assert_eq!(status, 400, "limit={limit}: {body}");
        assert_eq!(body["error_code"], "VALIDATION_ERROR", "{body}");
    }
    for limit in ["1", "1000"] {
        assert_eq!(pull(&app, &token, None, Some(limit)).await.0, 200);
    }
    // An empty `since` is no `since`: a restore from the beginning.
    assert_eq!(pull(&app, &token, Some(""), None).await.0, 200);
    let too_long = "A".repeat(5000);
    for since in ["not-a-cursor", "%%%", too_long.as_str()] {
        let (status, body) = pull(&app, &token, Some(since), None).await;
        assert_eq!(status, 400, "since={since}: {body}");
        assert_eq!(body["error_code"], "VALIDATION_ERROR", "{body}");
        assert!(!body["message"].as_str().unwrap().contains("SELECT"));
    }
    let (status, body) = pull(
        &app,
        &token,
        Some(&cursor_of_epoch("0123456789abcdef")),
        None,
    )
    .await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error_code"], "CURSOR_EXPIRED", "{body}");
    let unauthenticated = app
        .client
        .get(app.url("/api/v1/sync/changes"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);

    let query = "query($since: String, $first: Int) { syncChanges(since: $since, first: $first) { cursor } }";
    for (variables, code) in [
        (json!({"first": 0}), "BAD_USER_INPUT"),
        (json!({"first": 1001}), "BAD_USER_INPUT"),
        (json!({"since": "garbage"}), "BAD_USER_INPUT"),
        (
            json!({"since": cursor_of_epoch("fedcba9876543210")}),
            "CURSOR_EXPIRED",
        ),
    ] {
        let (_, body) = app.graphql(Some(&token), query, variables.clone()).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], code,
            "{variables}: {body}"
        );
    }

    // A real restore: `examsync cache reset`, then an instance started after it refuses
    // the cursors minted before.
    let (_, body) = pull(&app, &token, None, None).await;
    let old = body["cursor"].as_str().unwrap().to_owned();
    examsync::cache::reset_epoch(&app.db).await.unwrap();
    let restarted = Instance::start(app.config.clone()).await;
    let (status, body) = pull_at(&app.client, &restarted.base, &token, Some(&old), None).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (410, Some("CURSOR_EXPIRED")),
        "{body}"
    );
    let (status, _) = pull_at(&app.client, &restarted.base, &token, None, None).await;
    assert_eq!(status, 200);
}

async fn users_see_only_their_own_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, alice) = app.student();
    let (_, bob) = app.student();
    let offline = Uuid::new_v4();
    sync(
        &app,
        Surface::Rest,
        &alice,
        &[attempt(q[0], 1, &ago(5), Some(offline))],
        None,
    )
    .await;
    sync(
        &app,
        Surface::Rest,
        &bob,
        &[attempt(q[1], 0, &ago(5), Some(offline))],
        None,
    )
    .await;
    let (a_sessions, a_answers, a_cursor) = pull_all(&app, &alice, None, "500").await;
    let (b_sessions, b_answers, _) = pull_all(&app, &bob, None, "500").await;
    assert_eq!((a_sessions.len(), a_answers.len()), (1, 1));
    assert_eq!((b_sessions.len(), b_answers.len()), (1, 1));
    assert_eq!(a_answers[0]["question_id"], json!(q[0]));
    assert_eq!(b_answers[0]["question_id"], json!(q[1]));
    assert_ne!(
        a_sessions[0]["server_session_id"],
        b_sessions[0]["server_session_id"]
    );
    // Alice's cursor in Bob's hands is only a position: Bob still sees only his own rows.
    sync(
        &app,
        Surface::Rest,
        &alice,
        &[attempt(q[2], 4, &ago(4), Some(offline))],
        None,
    )
    .await;
    let (sessions, answers, _) = pull_all(&app, &bob, Some(a_cursor), "500").await;
    assert!(
        sessions
            .iter()
            .chain(&answers)
            .all(|v| v["server_session_id"] == b_sessions[0]["server_session_id"])
    );
}

// ---------------------------------------------------------------------------------------
// A second in-process instance on the same database.

struct Instance {
    base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    async fn start(config: Config) -> Instance {
        let application = Application::build(config).await.expect("instance starts");
        let addr = application.local_addr().expect("bound address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = application
                .run_until_stopped(async {
                    let _ = rx.await;
                })
                .await;
        });
        Instance {
            base: format!("http://{addr}"),
            shutdown: Some(tx),
            server: Some(server),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// What a puller holds: sessions by id and answers by (session, question), last seen wins.
#[derive(Default, Debug, PartialEq)]
struct Picture {
    sessions: BTreeMap<String, Value>,
    answers: BTreeMap<(String, String), Value>,
}

impl Picture {
    fn merge(&mut self, page: &Value) {
        for s in page["sessions"].as_array().unwrap() {
            self.sessions.insert(
                s["server_session_id"].as_str().unwrap().to_owned(),
                s.clone(),
            );
        }
        for a in page["answers"].as_array().unwrap() {
            let key = (
                a["server_session_id"].as_str().unwrap().to_owned(),
                a["question_id"].as_str().unwrap().to_owned(),
            );
            self.answers.insert(key, a.clone());
        }
    }
}

/// Two instances on one database; writers send batches (new answers, later and earlier
/// replacements) and submits through both; a puller walks from its cursor through both
/// the whole time, in small pages. After the writers stop and one last walk, the
/// puller's picture is the server's state.
async fn adversarial_walk_never_skips_a_change(backend: Backend) {
    let first = spawn_app_with(backend, |c| c.rate_limit_per_minute = 0).await;
    let second = Instance::start(first.config.clone()).await;
    let bases = Arc::new([first.base.clone(), second.base.clone()]);
    let client = first.client.clone();
    let mut questions = bank(&first).await;
    questions.extend(
        first
            .import_questions(json!([
                question("Q6", &["a", "b", "c"], 2, 1, Some(11), Some(111)),
                question("Q7", &["a", "b", "c"], 0, 1, Some(11), Some(111)),
                question("Q8", &["a", "b"], 1, 1, Some(11), Some(111)),
            ]))
            .await,
    );
    let questions = Arc::new(questions);
    let (_, token) = first.student();
    let token = Arc::new(token);
    let stop = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (bases, client, questions, token) =
                (bases.clone(), client.clone(), questions.clone(), token.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(w);
                let offline: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
                for round in 0..25 {
                    let base = &bases[(w as usize + round) % 2];
                    if round % 9 == 8 {
                        // Close one of the sessions seen so far (later items to it are
                        // SESSION_CLOSED, which changes nothing).
                        let target = offline[rng.random_range(0..offline.len())];
                        let item = attempt(questions[0], 0, &ago(200), Some(target));
                        let body = json!({"attempts": [item]});
                        let r = client.post(format!("{base}/api/v1/sync/attempts:batch")).bearer_auth(&*token).json(&body).send().await.unwrap();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = v["results"][0]["server_session_id"].as_str() {
                            let _ = client
                                .post(format!("{base}/graphql"))
                                .bearer_auth(&*token)
                                .json(&json!({"query": "mutation($id: UUID!) { submitSession(id: $id) { id } }", "variables": {"id": id}}))
                                .send()
                                .await;
                        }
                        continue;
                    }
                    let n = rng.random_range(1..8);
                    let items: Vec<Value> = (0..n)
                        .map(|_| {
                            let q = questions[rng.random_range(0..questions.len())];
                            let minutes = rng.random_range(1..120);
                            attempt(q, rng.random_range(0..2), &ago(minutes), Some(offline[rng.random_range(0..offline.len())]))
                        })
                        .collect();
                    let _ = client
                        .post(format!("{base}/api/v1/sync/attempts:batch"))
                        .bearer_auth(&*token)
                        .json(&json!({"attempts": items}))
                        .send()
                        .await;
                }
            })
        })
        .collect();

    let puller = {
        let (bases, client, token, stop) =
            (bases.clone(), client.clone(), token.clone(), stop.clone());
        tokio::spawn(async move {
            let mut picture = Picture::default();
            let mut cursor: Option<String> = None;
            let mut pulls = 0usize;
            loop {
                let done = stop.load(Ordering::SeqCst);
                let base = &bases[pulls % 2];
                pulls += 1;
                let (status, page) =
                    pull_at(&client, base, &token, cursor.as_deref(), Some("3")).await;
                if status != 200 {
                    // A transient refusal (SQLite busy) changes nothing: pull again.
                    assert_eq!(status, 503, "{page}");
                    continue;
                }
                picture.merge(&page);
                cursor = Some(page["cursor"].as_str().unwrap().to_owned());
                // After the writers stopped: walk until the feed says it is done.
                if done && !page["has_more"].as_bool().unwrap() {
                    return (picture, pulls);
                }
            }
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (picture, pulls) = puller.await.unwrap();

    let server = server_picture(&first).await;
    assert!(
        !server.answers.is_empty() && pulls > 10,
        "the test exercised nothing"
    );
    assert_eq!(picture.sessions.len(), server.sessions.len());
    assert_eq!(picture.answers.len(), server.answers.len());
    for (id, expected) in &server.sessions {
        let got = &picture.sessions[id];
        for field in [
            "status",
            "answered_count",
            "correct_count",
            "total_questions",
        ] {
            assert_eq!(got[field], expected[field], "session {id} {field}");
        }
    }
    for (key, expected) in &server.answers {
        let got = &picture.answers[key];
        for field in [
            "selected_option_index",
            "is_correct",
            "changed_count",
            "server_attempt_id",
            "answered_at",
        ] {
            assert_eq!(got[field], expected[field], "answer {key:?} {field}");
        }
    }
    drop(second);
}

/// The server's current state, read straight from the database.
async fn server_picture(app: &TestApp) -> Picture {
    use sea_orm::EntityTrait;
    let mut picture = Picture::default();
    for s in entity::test_session::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
    {
        picture.sessions.insert(
            s.id.to_string(),
            json!({
                "status": s.status,
                "answered_count": s.answered_count,
                "correct_count": s.correct_count,
                "total_questions": s.total_questions,
            }),
        );
    }
    for a in entity::session_answer::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
    {
        picture.answers.insert(
            (a.session_id.to_string(), a.question_id.to_string()),
            json!({
                "selected_option_index": a.selected_option_index,
                "is_correct": a.is_correct,
                "changed_count": a.changed_count,
                "server_attempt_id": a.attempt_id,
                "answered_at": examsync::sync::payload_hash::to_iso_string(&a.answered_at),
            }),
        );
    }
    picture
}

// ---------------------------------------------------------------------------------------
// The page plan: an index range on (user_id, change_seq, id), whatever the history.

backend_tests!(page_queries_use_the_change_index);

async fn page_queries_use_the_change_index(backend: Backend) {
    use examsync::sync::changes::{Kind, Position, answers_page, sessions_page};
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (user, token) = app.student();
    sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    let db = &app.db;
    let db_backend = db.get_database_backend();
    if backend == Backend::Postgres {
        // A long history of this user and of others, with no statistics gathered.
        let other = Uuid::new_v4();
        db.execute_unprepared(&format!(
            "INSERT INTO users (id, role, created_at, acked_count, duplicate_count, rejected_count, change_seq)
             VALUES ('{other}', 'STUDENT', now(), 0, 0, 0, 0);
             ALTER TABLE session_answers SET (autovacuum_enabled = false);
             ALTER TABLE test_sessions SET (autovacuum_enabled = false);
             INSERT INTO test_sessions (id, user_id, offline_session_id, mode, status, year,
               total_questions, answered_count, correct_count, started_at, updated_at, change_seq)
             SELECT gen_random_uuid(), CASE WHEN g % 2 = 0 THEN '{user}'::uuid ELSE '{other}'::uuid END,
               gen_random_uuid(), 'TUTOR', 'ACTIVE', 1, 3, 3, 0, now(), now(), g -- answered_count 3: the seeded ones
             FROM generate_series(1, 17000) AS g;
             INSERT INTO session_answers (id, session_id, user_id, question_id, attempt_id,
               selected_option_index, is_correct, answered_at, changed_count, created_at, updated_at, change_seq)
             SELECT gen_random_uuid(), s.id, s.user_id, q.id, gen_random_uuid(), 0, false, now(), 0, now(), now(), s.change_seq
             FROM test_sessions s CROSS JOIN questions q
             WHERE s.answered_count = 3;
             UPDATE users SET change_seq = 17000 WHERE id = '{user}'"
        ))
        .await
        .unwrap();
    }
    if backend == Backend::Postgres {
        // The largest page over the long history: its package lookups stay small.
        let (status, body) = pull(&app, &token, None, Some("1000")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["sessions"].as_array().unwrap().len() + body["answers"].as_array().unwrap().len(),
            1000
        );
    }
    let after = Position {
        seq: 8000,
        kind: Kind::Answer,
        id: Uuid::new_v4(),
    };
    let statements = [
        (
            "idx_test_sessions_user_change",
            sessions_page(user.into(), after, 20_000, 501).build(db_backend),
        ),
        (
            "idx_session_answers_user_change",
            answers_page(user.into(), after, 20_000, 501).build(db_backend),
        ),
    ];
    for (index, statement) in statements {
        let explain = match db_backend {
            DbBackend::Postgres => format!("EXPLAIN (FORMAT JSON) {}", statement.sql),
            _ => format!("EXPLAIN QUERY PLAN {}", statement.sql),
        };
        let rows = db
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                db_backend,
                explain,
                statement.values.map(|v| v.0).unwrap_or_default(),
            ))
            .await
            .unwrap();
        let text = match db_backend {
            DbBackend::Postgres => rows[0]
                .try_get::<Value>("", "QUERY PLAN")
                .unwrap()
                .to_string(),
            _ => rows
                .iter()
                .map(|r| r.try_get::<String>("", "detail").unwrap())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        assert!(text.contains(index), "{index} not used: {text}");
        if db_backend == DbBackend::Postgres {
            let cond = text
                .split("\"Index Cond\":")
                .nth(1)
                .unwrap_or_else(|| panic!("no index condition: {text}"));
            let cond = cond.split("\",").next().unwrap_or_default();
            assert!(
                cond.contains("user_id") && cond.contains("change_seq"),
                "{text}"
            );
            assert!(!text.contains("\"Sort\""), "sorted after reading: {text}");
        } else {
            assert!(
                !text.contains("TEMP B-TREE"),
                "sorted after reading: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The JavaScript recipe of docs/mobile/offline.md against this server.

backend_tests!(javascript_pull_recipe_restores_from_a_live_server);

async fn javascript_pull_recipe_restores_from_a_live_server(backend: Backend) {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        if crate::helpers::services_required() {
            panic!("node is required");
        }
        examsync_test_support::report_skip("node missing");
        return;
    }
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let offline = Uuid::new_v4();
    let items = [
        attempt(q[0], 1, &ago(30), Some(offline)),
        attempt(q[1], 0, &ago(29), Some(offline)),
        attempt(q[0], 3, &ago(20), Some(offline)),
    ];
    sync(&app, Surface::Rest, &token, &items, None).await;
    let expected: serde_json::Map<String, Value> = server_picture(&app)
        .await
        .answers
        .into_iter()
        .map(|((session, question), a)| (format!("{session}:{question}"), a))
        .collect();
    assert_eq!(expected.len(), 2);
    let output = tokio::process::Command::new("node")
        .args(["--test", "tests/node/pull-live.test.mjs"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("EXAMSYNC_URL", &app.base)
        .env("EXAMSYNC_TOKEN", &token)
        .env("EXAMSYNC_EXPECT", Value::Object(expected).to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("# pass 1"),
        "the live test did not run: {stdout}"
    );
}
