//! Every rule of SPEC sections 7 and 8, over real HTTP, through REST and GraphQL, on
//! SQLite and on PostgreSQL + Redis. Answers are counted in the database too.
use chrono::{Duration, SecondsFormat, Utc};
use examsync_test_support::Attempt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, count_rows, question, spawn_app};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Rest,
    Graphql,
}

const SURFACES: [Surface; 2] = [Surface::Rest, Surface::Graphql];

/// The v1 payload hash, written independently of the server's code.
pub fn v1_hash(question: Uuid, index: i64, answered_at: &str) -> String {
    Attempt::at_text(question, index, answered_at, None).payload_hash
}

/// A REST-shaped attempt with a correct v1 hash and fresh ids.
pub fn attempt(question: Uuid, index: i64, answered_at: &str, offline: Option<Uuid>) -> Value {
    Attempt::at_text(question, index, answered_at, offline).rest_item()
}

pub fn ago(minutes: i64) -> String {
    (Utc::now() - Duration::minutes(minutes)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Sends attempts through a surface; returns (HTTP status, results in REST shape, error code).
pub async fn sync(
    app: &TestApp,
    surface: Surface,
    token: &str,
    attempts: &[Value],
    sent_at: Option<&str>,
) -> (u16, Vec<Value>, Option<String>) {
    match surface {
        Surface::Rest => {
            let mut body = json!({"attempts": attempts});
            if let Some(sent_at) = sent_at {
                body["sent_at"] = json!(sent_at);
            }
            let response = app
                .post("/api/v1/sync/attempts:batch", token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let results = body["results"].as_array().cloned().unwrap_or_default();
            (
                status,
                results,
                body["error_code"].as_str().map(str::to_owned),
            )
        }
        Surface::Graphql => {
            let items: Vec<Value> = attempts
                .iter()
                .map(|a| {
                    json!({
                        "clientAttemptId": a["client_attempt_id"],
                        "idempotencyKey": a["idempotency_key"],
                        "offlineSessionId": a["offline_session_id"],
                        "sessionId": a["session_id"],
                        "questionId": a["question_id"],
                        "selectedOptionIndex": a["selected_option_index"],
                        "answeredAt": a["answered_at"],
                        "payloadHash": a["payload_hash"],
                        "packageId": a["package_id"],
                    })
                })
                .collect();
            let (status, body) = app
                .graphql(
                    Some(token),
                    "mutation($input: SyncAttemptsInput!) { syncAttempts(input: $input) { results {
                        clientAttemptId status serverAttemptId serverSessionId errorCode message } } }",
                    json!({"input": {"attempts": items, "sentAt": sent_at}}),
                )
                .await;
            let code = body["errors"][0]["extensions"]["code"]
                .as_str()
                .map(str::to_owned);
            let results = body["data"]["syncAttempts"]["results"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    json!({
                        "client_attempt_id": r["clientAttemptId"],
                        "status": r["status"].as_str().unwrap_or_default().to_lowercase(),
                        "server_attempt_id": r["serverAttemptId"],
                        "server_session_id": r["serverSessionId"],
                        "error_code": r["errorCode"],
                        "message": r["message"],
                    })
                })
                .collect();
            (status, results, code)
        }
    }
}

/// Imports three questions: 4 options (correct 1), 2 options (correct 0), 5 options (correct 4).
pub async fn bank(app: &TestApp) -> Vec<Uuid> {
    app.import_questions(json!([
        question("Q four", &["a", "b", "c", "d"], 1, 1, Some(11), Some(111)),
        question("Q two", &["a", "b"], 0, 1, Some(11), Some(112)),
        question(
            "Q five",
            &["a", "b", "c", "d", "e"],
            4,
            2,
            Some(21),
            Some(211)
        ),
    ]))
    .await
}

fn statuses(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|r| {
            let status = r["status"].as_str().unwrap_or_default().to_owned();
            match r["error_code"].as_str() {
                Some(code) => format!("{status}:{code}"),
                None => status,
            }
        })
        .collect()
}

async fn session_row(app: &TestApp, id: &str) -> (i64, i64, i64) {
    use sea_orm::EntityTrait;
    let session = entity::test_session::Entity::find_by_id(Uuid::parse_str(id).unwrap())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    (
        i64::from(session.answered_count),
        i64::from(session.correct_count),
        i64::from(session.total_questions),
    )
}

backend_tests!(
    acked_then_duplicate_with_the_same_ids,
    payload_hash_forms,
    idempotency_key_scope_and_reuse,
    repeated_key_inside_one_batch,
    session_rules,
    question_option_and_future_checks,
    answer_changes_and_scores,
    batch_size_limits_apply_nothing,
    rest_items_that_do_not_parse,
    concurrent_identical_batches_apply_once,
    my_sessions_and_sync_status,
    package_scoring_uses_the_snapshot,
);

async fn acked_then_duplicate_with_the_same_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, token) = app.student();
        let offline = Uuid::new_v4();
        let batch = vec![
            attempt(q[0], 1, &ago(30), Some(offline)),
            attempt(q[1], 1, &ago(29), Some(offline)),
            attempt(q[2], 4, &ago(28), Some(offline)),
        ];
        let (status, first, _) = sync(&app, surface, &token, &batch, None).await;
        assert_eq!(status, 200);
        assert_eq!(statuses(&first), ["acked", "acked", "acked"], "{surface:?}");
        for (item, result) in batch.iter().zip(&first) {
            assert_eq!(result["client_attempt_id"], item["client_attempt_id"]);
        }
        let session = first[0]["server_session_id"].as_str().unwrap().to_owned();
        assert!(
            first
                .iter()
                .all(|r| r["server_session_id"] == session.as_str())
        );
        let (_, second, _) = sync(&app, surface, &token, &batch, None).await;
        assert_eq!(statuses(&second), ["duplicate", "duplicate", "duplicate"]);
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a["server_attempt_id"], b["server_attempt_id"]);
            assert_eq!(a["server_session_id"], b["server_session_id"]);
        }
        // Scored once: 2 of 3 correct.
        assert_eq!(session_row(&app, &session).await, (3, 2, 3));
    }
    assert_eq!(count_rows(&app.db, "attempts", "").await, 6);
    assert_eq!(count_rows(&app.db, "idempotency_records", "").await, 6);
    assert_eq!(count_rows(&app.db, "session_answers", "").await, 6);
}

async fn payload_hash_forms(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, token) = app.student();
        let offline = Some(Uuid::new_v4());
        // Legacy (Python isoformat, client offset kept).
        let at = "2026-01-28T15:30:00.250+05:30";
        let mut legacy = attempt(q[0], 2, at, offline);
        let legacy_canonical = format!(
            r#"{{"answered_at": "2026-01-28T15:30:00.250000+05:30", "question_id": "{}", "selected_option_index": 2}}"#,
            q[0]
        );
        legacy["payload_hash"] = json!(hex::encode(Sha256::digest(legacy_canonical.as_bytes())));
        // Upper-case v1.
        let mut upper = attempt(q[1], 0, &ago(5), offline);
        upper["payload_hash"] = json!(upper["payload_hash"].as_str().unwrap().to_uppercase());
        // Wrong: the hash of another option, and one whose session is also missing.
        let mut wrong = attempt(q[2], 1, &ago(4), offline);
        wrong["payload_hash"] = json!(v1_hash(q[2], 2, &ago(4)));
        let mut wrong_no_session = attempt(q[2], 1, &ago(4), None);
        wrong_no_session["payload_hash"] = json!("0".repeat(64));
        let (_, results, _) = sync(
            &app,
            surface,
            &token,
            &[legacy.clone(), upper, wrong, wrong_no_session],
            None,
        )
        .await;
        assert_eq!(
            statuses(&results),
            [
                "acked",
                "acked",
                "rejected:PAYLOAD_HASH_MISMATCH",
                "rejected:PAYLOAD_HASH_MISMATCH"
            ],
            "{surface:?}"
        );
        // The payload's identity is the v1 hash: the same attempt sent with its v1 hash is a DUPLICATE.
        let mut as_v1 = legacy.clone();
        as_v1["payload_hash"] = json!(v1_hash(q[0], 2, at));
        let (_, again, _) = sync(&app, surface, &token, &[as_v1], None).await;
        assert_eq!(statuses(&again), ["duplicate"]);
        assert_eq!(
            again[0]["server_attempt_id"],
            results[0]["server_attempt_id"]
        );
    }
}

async fn idempotency_key_scope_and_reuse(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, alice) = app.student();
        let (_, bob) = app.student();
        let offline = Some(Uuid::new_v4());
        let first = attempt(q[0], 1, &ago(10), offline);
        let (_, r, _) = sync(&app, surface, &alice, std::slice::from_ref(&first), None).await;
        assert_eq!(statuses(&r), ["acked"]);
        // Same key, different payload → REUSED.
        let mut changed = attempt(q[0], 2, &ago(9), offline);
        changed["idempotency_key"] = first["idempotency_key"].clone();
        let (_, r2, _) = sync(&app, surface, &alice, &[changed], None).await;
        assert_eq!(statuses(&r2), ["rejected:IDEMPOTENCY_KEY_REUSED"]);
        // Another user's key is a different key; and bob never sees alice's ids.
        let (_, r3, _) = sync(&app, surface, &bob, std::slice::from_ref(&first), None).await;
        assert_eq!(statuses(&r3), ["acked"]);
        assert_ne!(r3[0]["server_attempt_id"], r[0]["server_attempt_id"]);
        assert_ne!(r3[0]["server_session_id"], r[0]["server_session_id"]);
        // A rejected item does not use up its key.
        let unknown = Uuid::new_v4();
        let mut rejected = attempt(unknown, 0, &ago(8), offline);
        let key = rejected["idempotency_key"].clone();
        let (_, r4, _) = sync(&app, surface, &alice, &[rejected.clone()], None).await;
        assert_eq!(statuses(&r4), ["rejected:QUESTION_NOT_FOUND"]);
        rejected = attempt(q[1], 0, &ago(8), offline);
        rejected["idempotency_key"] = key;
        let (_, r5, _) = sync(&app, surface, &alice, &[rejected], None).await;
        assert_eq!(statuses(&r5), ["acked"]);
    }
}

async fn repeated_key_inside_one_batch(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, token) = app.student();
        let offline = Some(Uuid::new_v4());
        let a = attempt(q[0], 1, &ago(10), offline);
        let mut same = a.clone();
        same["client_attempt_id"] = json!(Uuid::new_v4());
        let mut different = attempt(q[1], 1, &ago(9), offline);
        different["idempotency_key"] = a["idempotency_key"].clone();
        // A first item that is rejected does not use the key: the repeat is judged on its own.
        let mut bad_first = attempt(Uuid::new_v4(), 0, &ago(7), offline);
        let good_second = {
            let mut g = attempt(q[2], 3, &ago(7), offline);
            g["idempotency_key"] = bad_first["idempotency_key"].clone();
            g
        };
        bad_first["client_attempt_id"] = json!(Uuid::new_v4());
        let (_, r, _) = sync(
            &app,
            surface,
            &token,
            &[a, same, different, bad_first, good_second],
            None,
        )
        .await;
        assert_eq!(
            statuses(&r),
            [
                "acked",
                "duplicate",
                "rejected:IDEMPOTENCY_KEY_REUSED",
                "rejected:QUESTION_NOT_FOUND",
                "acked"
            ],
            "{surface:?}"
        );
        assert_eq!(r[0]["server_attempt_id"], r[1]["server_attempt_id"]);
    }
    assert_eq!(count_rows(&app.db, "attempts", "").await, 4);
}

async fn session_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, alice) = app.student();
        let (_, bob) = app.student();
        let offline = Uuid::new_v4();
        // SESSION_REQUIRED beats QUESTION_NOT_FOUND (check order).
        let none = attempt(Uuid::new_v4(), 0, &ago(5), None);
        let (_, r, _) = sync(&app, surface, &alice, &[none], None).await;
        assert_eq!(statuses(&r), ["rejected:SESSION_REQUIRED"]);
        // Offline session → one server session, stable across batches.
        let (_, r1, _) = sync(
            &app,
            surface,
            &alice,
            &[attempt(q[0], 0, &ago(5), Some(offline))],
            None,
        )
        .await;
        let (_, r2, _) = sync(
            &app,
            surface,
            &alice,
            &[attempt(q[1], 0, &ago(4), Some(offline))],
            None,
        )
        .await;
        let session = r1[0]["server_session_id"].clone();
        assert_eq!(r2[0]["server_session_id"], session);
        // Another user's identical offline id is another session.
        let (_, rb, _) = sync(
            &app,
            surface,
            &bob,
            &[attempt(q[0], 0, &ago(5), Some(offline))],
            None,
        )
        .await;
        assert_ne!(rb[0]["server_session_id"], session);
        // session_id wins over offline_session_id; another user's session is NOT_FOUND.
        let mut explicit = attempt(q[2], 0, &ago(3), Some(Uuid::new_v4()));
        explicit["session_id"] = session.clone();
        let (_, r3, _) = sync(&app, surface, &alice, &[explicit.clone()], None).await;
        assert_eq!(statuses(&r3), ["acked"]);
        assert_eq!(r3[0]["server_session_id"], session);
        let mut foreign = attempt(q[2], 0, &ago(3), None);
        foreign["session_id"] = session.clone();
        let (_, r4, _) = sync(&app, surface, &bob, &[foreign], None).await;
        assert_eq!(statuses(&r4), ["rejected:SESSION_NOT_FOUND"]);
        let mut random = attempt(q[2], 0, &ago(3), None);
        random["session_id"] = json!(Uuid::new_v4());
        let (_, r5, _) = sync(&app, surface, &alice, &[random], None).await;
        assert_eq!(statuses(&r5), ["rejected:SESSION_NOT_FOUND"]);
        // Submitted: both the explicit id and the offline mapping are SESSION_CLOSED.
        let (_, body) = app
            .graphql(
                Some(&alice),
                "mutation($id: UUID!) { submitSession(id: $id) { id status } }",
                json!({"id": session}),
            )
            .await;
        assert_eq!(
            body["data"]["submitSession"]["status"], "SUBMITTED",
            "{body}"
        );
        let (_, again) = app
            .graphql(
                Some(&alice),
                "mutation($id: UUID!) { submitSession(id: $id) { status } }",
                json!({"id": session}),
            )
            .await;
        assert_eq!(again["data"]["submitSession"]["status"], "SUBMITTED");
        let (_, other) = app
            .graphql(
                Some(&bob),
                "mutation($id: UUID!) { submitSession(id: $id) { status } }",
                json!({"id": session}),
            )
            .await;
        assert_eq!(other["errors"][0]["extensions"]["code"], "NOT_FOUND");
        let mut closed = attempt(q[2], 1, &ago(2), None);
        closed["session_id"] = session.clone();
        let (_, r6, _) = sync(
            &app,
            surface,
            &alice,
            &[closed, attempt(q[2], 1, &ago(2), Some(offline))],
            None,
        )
        .await;
        assert_eq!(
            statuses(&r6),
            ["rejected:SESSION_CLOSED", "rejected:SESSION_CLOSED"]
        );
    }
}

async fn question_option_and_future_checks(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, token) = app.student();
        let offline = Some(Uuid::new_v4());
        let in_future =
            (Utc::now() + Duration::minutes(10)).to_rfc3339_opts(SecondsFormat::Millis, true);
        let near_future =
            (Utc::now() + Duration::minutes(4)).to_rfc3339_opts(SecondsFormat::Millis, true);
        let batch = vec![
            attempt(Uuid::new_v4(), 0, &ago(5), offline),
            attempt(q[1], 2, &ago(5), offline),
            attempt(q[1], -1, &ago(5), offline),
            attempt(q[0], 4, &in_future, offline),
            attempt(q[0], 3, &in_future, offline),
            attempt(q[2], 4, &near_future, offline),
        ];
        let (_, r, _) = sync(&app, surface, &token, &batch, None).await;
        assert_eq!(
            statuses(&r),
            [
                "rejected:QUESTION_NOT_FOUND",
                "rejected:INVALID_OPTION_INDEX",
                "rejected:INVALID_OPTION_INDEX",
                "rejected:INVALID_OPTION_INDEX",
                "rejected:ANSWERED_AT_IN_FUTURE",
                "acked"
            ],
            "{surface:?}"
        );
        // A device whose clock runs 10 minutes fast: sent_at corrects the skew.
        let (_, token2) = app.student();
        let device_now =
            (Utc::now() + Duration::minutes(10)).to_rfc3339_opts(SecondsFormat::Millis, true);
        let fast = attempt(q[0], 1, &in_future, Some(Uuid::new_v4()));
        let (_, r2, _) = sync(&app, surface, &token2, &[fast], Some(&device_now)).await;
        assert_eq!(statuses(&r2), ["acked"]);
    }
    let skews = count_rows(
        &app.db,
        "attempts",
        "clock_skew_ms IS NOT NULL AND clock_skew_ms < -500000",
    )
    .await;
    assert_eq!(skews, 2, "the skew is kept with the attempt");
}

async fn answer_changes_and_scores(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    for surface in SURFACES {
        let (_, token) = app.student();
        let offline = Some(Uuid::new_v4());
        // Wrong first (index 0; correct is 1), then the student changes their mind.
        let (_, r, _) = sync(
            &app,
            surface,
            &token,
            &[attempt(q[0], 0, &ago(30), offline)],
            None,
        )
        .await;
        let session = r[0]["server_session_id"].as_str().unwrap().to_owned();
        assert_eq!(session_row(&app, &session).await, (1, 0, 1));
        let (_, r, _) = sync(
            &app,
            surface,
            &token,
            &[attempt(q[0], 1, &ago(20), offline)],
            None,
        )
        .await;
        assert_eq!(statuses(&r), ["acked"]);
        assert_eq!(
            session_row(&app, &session).await,
            (1, 1, 1),
            "later answer replaces"
        );
        // An older attempt arriving late is history only.
        let (_, r, _) = sync(
            &app,
            surface,
            &token,
            &[attempt(q[0], 3, &ago(25), offline)],
            None,
        )
        .await;
        assert_eq!(statuses(&r), ["acked"]);
        assert_eq!(
            session_row(&app, &session).await,
            (1, 1, 1),
            "earlier answer does not replace"
        );
        // Within one batch, in any order: the latest wins, each question counted once.
        let batch = vec![
            attempt(q[1], 0, &ago(10), offline),
            attempt(q[1], 1, &ago(12), offline),
            attempt(q[2], 0, &ago(11), offline),
            attempt(q[2], 4, &ago(9), offline),
        ];
        let (_, r, _) = sync(&app, surface, &token, &batch, None).await;
        assert_eq!(statuses(&r), ["acked", "acked", "acked", "acked"]);
        assert_eq!(session_row(&app, &session).await, (3, 3, 3));
    }
    assert_eq!(count_rows(&app.db, "attempts", "").await, 14);
    assert_eq!(count_rows(&app.db, "session_answers", "").await, 6);
    // Per surface: q0 replaced once, q1 and q2 once each inside the batch.
    assert_eq!(
        count_rows(&app.db, "session_answers", "changed_count = 1").await,
        6
    );
}

async fn batch_size_limits_apply_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let offline = Some(Uuid::new_v4());
    let too_many: Vec<Value> = (0..101)
        .map(|i| attempt(q[i % 3], 0, &ago(5), offline))
        .collect();
    let (status, _, code) = sync(&app, Surface::Rest, &token, &[], None).await;
    assert_eq!(
        (status, code.as_deref()),
        (400, Some("VALIDATION_LIMIT_EXCEEDED"))
    );
    let (status, _, _) = sync(&app, Surface::Rest, &token, &too_many, None).await;
    assert_eq!(status, 400);
    let (_, results, code) = sync(&app, Surface::Graphql, &token, &too_many, None).await;
    assert!(results.is_empty());
    assert_eq!(code.as_deref(), Some("BAD_USER_INPUT"));
    let (_, _, code) = sync(&app, Surface::Graphql, &token, &[], None).await;
    assert_eq!(code.as_deref(), Some("BAD_USER_INPUT"));
    assert_eq!(count_rows(&app.db, "attempts", "").await, 0);
    // Exactly 100 is fine.
    let hundred: Vec<Value> = (0..100)
        .map(|i| attempt(q[i % 3], 0, &ago(100 - i as i64), offline))
        .collect();
    let (status, results, _) = sync(&app, Surface::Rest, &token, &hundred, None).await;
    assert_eq!(status, 200);
    assert!(results.iter().all(|r| r["status"] == "acked"));
    assert_eq!(count_rows(&app.db, "attempts", "").await, 100);
}

async fn rest_items_that_do_not_parse(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let offline = Some(Uuid::new_v4());
    let good = attempt(q[0], 1, &ago(5), offline);
    let mut missing = attempt(q[1], 0, &ago(5), offline);
    missing.as_object_mut().unwrap().remove("payload_hash");
    let mut bad_uuid = attempt(q[1], 0, &ago(5), offline);
    bad_uuid["question_id"] = json!("not-a-uuid");
    let mut bad_time = attempt(q[1], 0, &ago(5), offline);
    bad_time["answered_at"] = json!("yesterday");
    let mut bad_index = attempt(q[1], 0, &ago(5), offline);
    bad_index["selected_option_index"] = json!("zero");
    let body = json!({"attempts": [good, missing, 42, bad_uuid, bad_time, bad_index, null]});
    let response = app
        .post("/api/v1/sync/attempts:batch", &token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let results = response.json::<Value>().await.unwrap()["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 7);
    assert_eq!(results[0]["status"], "acked");
    for (i, field) in [
        (1, "payload_hash"),
        (3, "question_id"),
        (4, "answered_at"),
        (5, "selected_option_index"),
    ] {
        assert_eq!(results[i]["error_code"], "INVALID_ATTEMPT");
        assert!(
            results[i]["message"].as_str().unwrap().contains(field),
            "{}",
            results[i]
        );
    }
    assert_eq!(results[2]["error_code"], "INVALID_ATTEMPT");
    assert_eq!(results[6]["status"], "rejected");
    assert_eq!(
        results[1]["client_attempt_id"],
        body["attempts"][1]["client_attempt_id"]
    );
    // Whole-request errors: malformed JSON, wrong shape, oversized body; nothing leaks SQL.
    let raw = |body: String| {
        app.post("/api/v1/sync/attempts:batch", &token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = raw("{\"attempts\": [".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error_code"], "MALFORMED_JSON");
    let r = raw("{\"attempts\": 5}".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error_code"],
        "VALIDATION_ERROR"
    );
    let r = raw(format!(
        "{{\"attempts\": [], \"pad\": \"{}\"}}",
        "x".repeat(1_100_000)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error_code"],
        "PAYLOAD_TOO_LARGE"
    );
    assert_eq!(count_rows(&app.db, "attempts", "").await, 1);
}

async fn concurrent_identical_batches_apply_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let offline = Some(Uuid::new_v4());
    let batch: Vec<Value> = (0..30)
        .map(|i| attempt(q[i % 3], (i % 2) as i64, &ago(60 - i as i64), offline))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let surface = if i % 2 == 0 {
            Surface::Rest
        } else {
            Surface::Graphql
        };
        let (app, token, batch) = (&app, token.clone(), batch.clone());
        tasks.push(async move { sync(app, surface, &token, &batch, None).await });
    }
    let responses = futures::future::join_all(tasks).await;
    for item in 0..batch.len() {
        let results: Vec<&Value> = responses
            .iter()
            .map(|(s, r, _)| {
                assert_eq!(*s, 200);
                &r[item]
            })
            .collect();
        let acked = results.iter().filter(|r| r["status"] == "acked").count();
        assert_eq!(acked, 1, "item {item}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| r["status"] == "acked" || r["status"] == "duplicate")
        );
        assert!(
            results
                .iter()
                .all(|r| r["server_attempt_id"] == results[0]["server_attempt_id"])
        );
        assert!(
            results
                .iter()
                .all(|r| r["server_session_id"] == results[0]["server_session_id"])
        );
    }
    assert_eq!(count_rows(&app.db, "attempts", "").await, 30);
    assert_eq!(count_rows(&app.db, "idempotency_records", "").await, 30);
    assert_eq!(count_rows(&app.db, "test_sessions", "").await, 1);
    assert_eq!(count_rows(&app.db, "session_answers", "").await, 3);
}

async fn my_sessions_and_sync_status(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let (_, other) = app.student();
    let offline = Uuid::new_v4();
    let a = attempt(q[0], 1, &ago(5), Some(offline));
    let mut bad = attempt(q[1], 1, &ago(5), Some(offline));
    bad["payload_hash"] = json!("ab".repeat(32));
    sync(&app, Surface::Rest, &token, &[a.clone(), bad], None).await;
    sync(&app, Surface::Rest, &token, &[a], None).await;
    sync(
        &app,
        Surface::Rest,
        &other,
        &[attempt(q[0], 1, &ago(5), Some(offline))],
        None,
    )
    .await;
    let (_, body) = app
        .graphql(
            Some(&token),
            "{ mySessions { id offlineSessionId mode status year totalQuestions answeredCount correctCount startedAt }
               syncStatus { lastSyncAt ackedCount duplicateCount rejectedCount } }",
            Value::Null,
        )
        .await;
    let sessions = body["data"]["mySessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "only the caller's own sessions: {body}");
    let s = &sessions[0];
    assert_eq!(s["offlineSessionId"], json!(offline));
    assert_eq!(
        (s["mode"].as_str(), s["status"].as_str()),
        (Some("TUTOR"), Some("ACTIVE"))
    );
    assert_eq!(
        (
            s["year"].as_i64(),
            s["answeredCount"].as_i64(),
            s["correctCount"].as_i64(),
            s["totalQuestions"].as_i64()
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    let status = &body["data"]["syncStatus"];
    assert_eq!(
        (
            status["ackedCount"].as_i64(),
            status["duplicateCount"].as_i64(),
            status["rejectedCount"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert!(status["lastSyncAt"].is_string());
}

async fn package_scoring_uses_the_snapshot(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token();
    let ids = app
        .import_questions(json!([question(
            "Snap",
            &["a", "b", "c"],
            0,
            7,
            Some(71),
            None
        )]))
        .await;
    let (_, built) = app
        .graphql(
            Some(&admin),
            "mutation { buildPackage(input: {name: \"Y7\", scope: YEAR, yearId: 7, publish: true}) { id } }",
            Value::Null,
        )
        .await;
    let package = built["data"]["buildPackage"]["id"].clone();
    assert!(package.is_string(), "{built}");
    // The question changes after the package was built: the correct answer is now 2 (of 4).
    app.import_questions(json!([{
        "id": ids[0], "stem": "Snap", "options": ["a", "b", "c", "d"], "correctIndex": 2, "yearId": 7, "blockId": 71
    }]))
    .await;
    let (_, token) = app.student();
    let offline = Some(Uuid::new_v4());
    let mut with_package = attempt(ids[0], 0, &ago(10), offline);
    with_package["package_id"] = package.clone();
    let mut index_only_now = attempt(ids[0], 3, &ago(9), offline);
    index_only_now["package_id"] = package.clone();
    let mut unknown_package = attempt(ids[0], 0, &ago(9), offline);
    unknown_package["package_id"] = json!(Uuid::new_v4());
    let (_, r, _) = sync(
        &app,
        Surface::Rest,
        &token,
        &[with_package, index_only_now, unknown_package],
        None,
    )
    .await;
    assert_eq!(
        statuses(&r),
        [
            "acked",
            "rejected:INVALID_OPTION_INDEX",
            "rejected:PACKAGE_MISMATCH"
        ]
    );
    let session = r[0]["server_session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        session_row(&app, &session).await,
        (1, 1, 1),
        "scored against the snapshot"
    );
    // Without a package: against the question as it is now (index 3 exists now; 2 is correct).
    let (_, token2) = app.student();
    let (_, r2, _) = sync(
        &app,
        Surface::Graphql,
        &token2,
        &[attempt(ids[0], 2, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    assert_eq!(statuses(&r2), ["acked"]);
    let s2 = r2[0]["server_session_id"].as_str().unwrap().to_owned();
    assert_eq!(session_row(&app, &s2).await, (1, 1, 1));
}

/// A transient database fault fails the request as a whole: 503 + Retry-After / UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_503_not_rejected() {
    let app = spawn_app(Backend::Sqlite).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    // Warm the user row, then take the database away.
    let (_, ok, _) = sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    assert_eq!(statuses(&ok), ["acked"]);
    app.db.clone().close().await.unwrap();
    let response = app
        .post("/api/v1/sync/attempts:batch", &token)
        .json(&json!({"attempts": [attempt(q[1], 0, &ago(5), Some(Uuid::new_v4()))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "UNAVAILABLE");
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("sql")
    );
    let (_, _, code) = sync(
        &app,
        Surface::Graphql,
        &token,
        &[attempt(q[1], 0, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    assert_eq!(code.as_deref(), Some("UNAVAILABLE"));
}
