//! Every rule of docs/api.md sections 7 and 8, over real HTTP, through REST and GraphQL, on
//! SQLite and on PostgreSQL + Redis. Answers are counted in the database too.
use chrono::{Duration, SecondsFormat, Utc};
use examsync_test_support::Attempt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{
    Backend, TestApp, assert_no_orphans, count_rows, question, spawn_app, spawn_app_with,
};

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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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
    assert_no_orphans(&app.db).await;
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

// ---- Times, drafts, claim first, exact counters, fallback, round-trip budget ----

backend_tests!(
    times_outside_1970_to_9999,
    a_reset_phone_clock_is_corrected_not_refused,
    drafts_are_not_answerable,
    round_trip_budget,
    references_that_do_not_exist_write_nothing,
);

/// The first result's (status, error code, message) through a surface.
async fn one(
    app: &TestApp,
    surface: Surface,
    token: &str,
    item: &Value,
    sent_at: Option<&str>,
) -> (u16, Vec<String>, Option<String>, Option<String>) {
    let (status, results, code) =
        sync(app, surface, token, std::slice::from_ref(item), sent_at).await;
    let message = results
        .first()
        .and_then(|r| r["message"].as_str())
        .map(str::to_owned);
    (status, statuses(&results), code, message)
}

async fn times_outside_1970_to_9999(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    for surface in SURFACES {
        // answered_at out of range: INVALID_ATTEMPT naming the field (was ACKED for 1969).
        for at in ["1969-12-31T23:59:59.999Z", "1970-01-01T00:30:00+01:00"] {
            let item = attempt(q[0], 1, at, Some(Uuid::new_v4()));
            let (status, s, _, message) = one(&app, surface, &token, &item, None).await;
            assert_eq!(status, 200, "{surface:?} {at}");
            assert_eq!(s, ["rejected:INVALID_ATTEMPT"], "{surface:?} {at}");
            assert!(
                message.unwrap_or_default().contains("answered_at"),
                "{surface:?}"
            );
        }
        // The range's ends are accepted (1970 with a skew from the same clock).
        let item = attempt(q[0], 1, "1970-01-01T00:00:00.000Z", Some(Uuid::new_v4()));
        let (_, s, _, _) = one(&app, surface, &token, &item, Some("1970-01-01T00:01:00Z")).await;
        assert_eq!(s, ["acked"], "{surface:?}");
        // sent_at out of range or malformed refuses the whole request; nothing applied.
        let before = app.count("attempts").await;
        let mut refused = vec![
            "1969-12-31T23:59:59Z",
            "-262000-01-01T00:00:00Z",
            "+262000-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "",
        ];
        if surface == Surface::Graphql {
            // GraphQL: an empty string is refused by the scalar itself.
            refused.pop();
        }
        for sent_at in refused {
            let item = attempt(q[0], 1, &ago(1), Some(Uuid::new_v4()));
            let (status, s, code, _) = one(&app, surface, &token, &item, Some(sent_at)).await;
            match surface {
                Surface::Rest => {
                    assert_eq!(
                        (status, code.as_deref()),
                        (400, Some("VALIDATION_ERROR")),
                        "{sent_at}"
                    );
                }
                Surface::Graphql => {
                    assert_eq!(code.as_deref(), Some("BAD_USER_INPUT"), "{sent_at}");
                }
            }
            assert!(s.is_empty(), "{surface:?} {sent_at}: {s:?}");
        }
        assert_eq!(app.count("attempts").await, before, "{surface:?}");
    }
    // The widest skew in range cannot overflow: a phone claiming 9999 at send time.
    let item = attempt(q[0], 1, "1970-01-01T00:00:00Z", Some(Uuid::new_v4()));
    let (status, s, _, _) = one(
        &app,
        Surface::Graphql,
        &token,
        &item,
        Some("9999-12-31T23:59:59Z"),
    )
    .await;
    assert_eq!(
        (status, s),
        (200, vec!["rejected:INVALID_ATTEMPT".to_owned()])
    );
    let item = attempt(q[0], 1, "9999-12-31T23:59:59Z", Some(Uuid::new_v4()));
    let (status, s, _, _) = one(
        &app,
        Surface::Rest,
        &token,
        &item,
        Some("1970-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].starts_with("rejected:"), "{s:?}");
    assert_no_orphans(&app.db).await;
}

async fn a_reset_phone_clock_is_corrected_not_refused(backend: Backend) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    for surface in SURFACES {
        // The phone's clock restarted at 1970: answered 3 minutes before sending.
        let offline = Uuid::new_v4();
        let item = attempt(q[0], 1, "1970-01-01T00:07:00.000Z", Some(offline));
        let (status, s, _, _) = one(
            &app,
            surface,
            &token,
            &item,
            Some("1970-01-01T00:10:00.000Z"),
        )
        .await;
        assert_eq!((status, s), (200, vec!["acked".to_owned()]), "{surface:?}");
        let session = entity::test_session::Entity::find()
            .filter(entity::test_session::Column::OfflineSessionId.eq(offline))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let answer = entity::session_answer::Entity::find()
            .filter(entity::session_answer::Column::SessionId.eq(session.id))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let age = Utc::now() - answer.answered_at;
        assert!(
            age > Duration::minutes(2) && age < Duration::minutes(4),
            "{surface:?}: corrected to {}",
            answer.answered_at
        );
        // The history keeps the time as sent, not corrected.
        let history = entity::attempt::Entity::find()
            .filter(entity::attempt::Column::SessionId.eq(session.id))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                history.answered_at.to_rfc3339(),
                history.answered_at_raw.as_str()
            ),
            (
                "1970-01-01T00:07:00+00:00".to_owned(),
                "1970-01-01T00:07:00+00:00"
            )
        );
    }
    // The client's offset and microseconds are kept in the history.
    let at = (Utc::now() - Duration::minutes(2))
        .with_timezone(&chrono::FixedOffset::east_opt(19_800).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false);
    let offline = Uuid::new_v4();
    let (_, s, _, _) = one(
        &app,
        Surface::Rest,
        &token,
        &attempt(q[0], 1, &at, Some(offline)),
        None,
    )
    .await;
    assert_eq!(s, ["acked"]);
    let history = entity::attempt::Entity::find()
        .filter(entity::attempt::Column::ClientAttemptId.is_not_null())
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.answered_at_raw == at)
        .unwrap_or_else(|| panic!("no attempt with answered_at_raw {at}"));
    assert_eq!(
        history.answered_at,
        chrono::DateTime::parse_from_rfc3339(&at)
            .unwrap()
            .with_timezone(&Utc)
    );
    assert_no_orphans(&app.db).await;
}

async fn drafts_are_not_answerable(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token();
    let ids = app
        .import_questions(json!([
            {"stem": "Draft", "options": ["a", "b"], "correctIndex": 1, "yearId": 8, "status": "DRAFT"},
            {"stem": "Retired", "options": ["a", "b", "c"], "correctIndex": 2, "yearId": 9},
        ]))
        .await;
    let (_, built) = app
        .graphql(
            Some(&admin),
            "mutation { buildPackage(input: {name: \"Y9\", scope: YEAR, yearId: 9, publish: true}) { id } }",
            Value::Null,
        )
        .await;
    let package = built["data"]["buildPackage"]["id"].clone();
    assert!(package.is_string(), "{built}");
    // Back to review after publication: still in a published package, so answerable.
    app.import_questions(json!([
        {"id": ids[1], "stem": "Retired", "options": ["a", "b", "c"], "correctIndex": 2, "yearId": 9, "status": "IN_REVIEW"},
    ]))
    .await;
    let (_, token) = app.student();
    for surface in SURFACES {
        let offline = Some(Uuid::new_v4());
        let draft = attempt(ids[0], 1, &ago(5), offline);
        let (_, s, _, _) = one(&app, surface, &token, &draft, None).await;
        assert_eq!(
            s,
            ["rejected:QUESTION_NOT_FOUND"],
            "{surface:?}: a draft is private"
        );
        let retired = attempt(ids[1], 2, &ago(4), offline);
        let (_, s, _, _) = one(&app, surface, &token, &retired, None).await;
        assert_eq!(s, ["acked"], "{surface:?}");
        let mut in_package = attempt(ids[1], 2, &ago(3), offline);
        in_package["package_id"] = package.clone();
        let (_, s, _, _) = one(&app, surface, &token, &in_package, None).await;
        assert_eq!(s, ["acked"], "{surface:?}");
    }
    // Nothing of the draft leaks through the score.
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let draft_attempts = entity::attempt::Entity::find()
        .filter(entity::attempt::Column::QuestionId.eq(ids[0]))
        .count(&app.db)
        .await
        .unwrap();
    let retired_attempts = entity::attempt::Entity::find()
        .filter(entity::attempt::Column::QuestionId.eq(ids[1]))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!((draft_attempts, retired_attempts), (0, 4));
    assert_no_orphans(&app.db).await;
}

/// Statements and commits of the sync path, pinned: a fresh batch, a replay, a batch that
/// creates a session. The counts do not depend on the batch size.
/// The rules the foreign keys of `attempts` and `session_answers` held (PostgreSQL has
/// none since migration 8): an item naming a question or session that does not exist, or
/// another user's session, is rejected and writes no row; a batch of a user whose row is
/// gone is a transient fault and writes nothing. The item beside them is applied.
async fn references_that_do_not_exist_write_nothing(backend: Backend) {
    use sea_orm::EntityTrait;
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, alice) = app.student();
    let (_, bob) = app.student();
    let offline = Uuid::new_v4();
    let (_, first, _) = sync(
        &app,
        Surface::Rest,
        &bob,
        &[attempt(q[0], 1, &ago(9), Some(offline))],
        None,
    )
    .await;
    let bobs_session = first[0]["server_session_id"].clone();
    let rows = || async {
        (
            app.count("attempts").await,
            app.count("session_answers").await,
            app.count("idempotency_records").await,
            app.count("test_sessions").await,
        )
    };
    for surface in SURFACES {
        let before = rows().await;
        let unknown_question = attempt(Uuid::new_v4(), 0, &ago(8), Some(offline));
        let mut unknown_session = attempt(q[1], 0, &ago(8), None);
        unknown_session["session_id"] = json!(Uuid::new_v4());
        let mut foreign_session = attempt(q[1], 0, &ago(8), None);
        foreign_session["session_id"] = bobs_session.clone();
        let good = attempt(q[2], 4, &ago(8), Some(Uuid::new_v4()));
        let batch = [
            unknown_question.clone(),
            unknown_session.clone(),
            foreign_session.clone(),
            good,
        ];
        let (status, results, _) = sync(&app, surface, &alice, &batch, None).await;
        assert_eq!(status, 200, "{surface:?}");
        assert_eq!(
            statuses(&results),
            [
                "rejected:QUESTION_NOT_FOUND",
                "rejected:SESSION_NOT_FOUND",
                "rejected:SESSION_NOT_FOUND",
                "acked"
            ],
            "{surface:?}"
        );
        // The applied item only: one attempt, one answer, one record, its new session.
        let (attempts, answers, records, sessions) = before;
        assert_eq!(
            rows().await,
            (attempts + 1, answers + 1, records + 1, sessions + 1),
            "{surface:?}"
        );
        for item in &batch[..3] {
            let key = item["idempotency_key"].as_str().unwrap();
            for table in ["attempts", "idempotency_records"] {
                let n = count_rows(&app.db, table, &format!("idempotency_key = '{key}'")).await;
                assert_eq!(n, 0, "{surface:?}: a rejected item wrote to {table}");
            }
        }
    }

    // A user whose row is gone while the server still knows the user: the change counter
    // finds no row, the batch is a transient fault, and nothing of it is written.
    let (carol_id, carol) = app.student();
    let rejected = attempt(Uuid::new_v4(), 0, &ago(7), Some(Uuid::new_v4()));
    let (_, results, _) = sync(&app, Surface::Rest, &carol, &[rejected], None).await;
    assert_eq!(statuses(&results), ["rejected:QUESTION_NOT_FOUND"]);
    app.state.sync.flush(&app.state.db).await;
    let deleted = entity::user::Entity::delete_by_id(entity::UserId::from(carol_id))
        .exec(&app.db)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected, 1);
    let before = rows().await;
    // (A 503 makes the server distrust what it remembers, so the next request would
    // create the row again: one request.)
    let item = attempt(q[0], 1, &ago(6), Some(Uuid::new_v4()));
    let (status, results, code) = sync(&app, Surface::Rest, &carol, &[item], None).await;
    assert_eq!((status, code.as_deref()), (503, Some("UNAVAILABLE")));
    assert!(results.is_empty(), "{results:?}");
    assert_eq!(rows().await, before);
    for table in [
        "attempts",
        "session_answers",
        "idempotency_records",
        "test_sessions",
    ] {
        let n = count_rows(&app.db, table, &format!("user_id = '{carol_id}'")).await;
        assert_eq!(n, 0, "{table} holds a row of a user that does not exist");
    }
    assert_no_orphans(&app.db).await;
}

async fn round_trip_budget(backend: Backend) {
    use std::sync::atomic::Ordering;
    // A Redis call slower than the default timeout (a loaded CI machine) falls back to the
    // database, as designed, and the replay's count below would then see that read.
    let app = spawn_app_with(backend, |c| c.redis_timeout_ms = 10_000).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    // The background flush of duplicate/rejected counts is off every request's path:
    // its statements are left out.
    let counters = || {
        (
            app.state.db_statements.load(Ordering::SeqCst)
                - app.state.sync.flush_statements.load(Ordering::SeqCst)
                - app.state.primary.statements.load(Ordering::SeqCst),
            app.state.sync.commits.load(Ordering::SeqCst),
        )
    };
    // Waits for any flush under way and runs one, so that every flush statement is
    // accounted for when the counters are read.
    let flush = || app.state.sync.flush(&app.state.db);
    let measure = |before: (u64, u64)| {
        let after = counters();
        (after.0 - before.0, after.1 - before.1)
    };
    // Items over questions 1 and 2 (question 0 is the warm-up's).
    let batch_of = |n: usize, offline: Uuid| -> Vec<Value> {
        (0..n)
            .map(|i| attempt(q[1 + i % 2], 0, &ago(60 - i as i64 % 50), Some(offline)))
            .collect()
    };
    for n in [3, 100] {
        // Warm up: the user row, a session holding an answer to question 0 only.
        let offline = Uuid::new_v4();
        let warm_up = [attempt(q[0], 1, &ago(70), Some(offline))];
        let (status, first, _) = sync(&app, Surface::Rest, &token, &warm_up, None).await;
        assert_eq!((status, statuses(&first)), (200, vec!["acked".to_owned()]));

        let creating = batch_of(n, Uuid::new_v4());
        flush().await;
        let before = counters();
        let s = statuses(&sync(&app, Surface::Rest, &token, &creating, None).await.1);
        flush().await;
        let (statements, commits) = measure(before);
        assert!(s.iter().all(|s| s == "acked"), "{s:?}");
        // PostgreSQL: records, sessions and questions in one statement; then in one
        // transaction: the change counter, the session created, the claims, the lock of
        // the won sessions and the current answers in one statement; the attempts,
        // ackedCount, the answers and the scores in one more. SQLite: records, sessions,
        // questions; then the change counter, the session, the claims, the lock, the
        // answers, the attempts, ackedCount (in-process), the answers, the scores.
        let (creating_budget, fresh_budget) = match backend {
            Backend::Postgres => (1 + 2, 1 + 2),
            Backend::Sqlite => (3 + 9, 3 + 8),
        };
        assert_eq!(
            (statements, commits),
            (creating_budget, 1),
            "a batch of {n} creating a session"
        );

        let fresh = batch_of(n, offline);
        let before = counters();
        let s = statuses(&sync(&app, Surface::Rest, &token, &fresh, None).await.1);
        flush().await;
        let (statements, commits) = measure(before);
        assert!(s.iter().all(|s| s == "acked"), "{s:?}");
        assert_eq!(
            (statements, commits),
            (fresh_budget, 1),
            "a fresh batch of {n}"
        );

        let before = counters();
        let s = statuses(&sync(&app, Surface::Rest, &token, &fresh, None).await.1);
        flush().await;
        let (statements, commits) = measure(before);
        assert!(s.iter().all(|s| s == "duplicate"), "{s:?}");
        // Records come from the cache (Redis on PostgreSQL runs, in-process on SQLite):
        // a replay makes no database statement at all, let alone a write.
        assert_eq!((statements, commits), (0, 0), "a replay of {n}");
    }
    assert_no_orphans(&app.db).await;
}

// ---- PostgreSQL only: races and faults made deterministic with locks and triggers ----

async fn pg_app() -> Option<TestApp> {
    if crate::helpers::skip_postgres() {
        return None;
    }
    Some(spawn_app(Backend::Postgres).await)
}

async fn exec(db: &impl sea_orm::ConnectionTrait, sql: &str) {
    db.execute_unprepared(sql).await.unwrap();
}

async fn acked_count(app: &TestApp, token: &str) -> i64 {
    let (_, body) = app
        .graphql(Some(token), "{ syncStatus { ackedCount } }", Value::Null)
        .await;
    body["data"]["syncStatus"]["ackedCount"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}"))
}

/// Claim first: a retry that read no record, then finds its session submitted, because
/// its original committed and a submitSession landed in between, is DUPLICATE (it was
/// REJECTED SESSION_CLOSED for an answer that had been applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_racing_its_original_and_a_submit_is_duplicate() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let Some(app) = pg_app().await else { return };
    let q = bank(&app).await;
    let (user, token) = app.student();
    let (_, r, _) = sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(q[0], 1, &ago(10), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    let session = r[0]["server_session_id"].as_str().unwrap().to_owned();
    let mut retry = attempt(q[1], 0, &ago(5), None);
    retry["session_id"] = json!(session);

    // Hold the retry between its idempotency lookup and its session check.
    let txn = app.db.begin().await.unwrap();
    exec(&txn, "LOCK TABLE test_sessions IN ACCESS EXCLUSIVE MODE").await;
    let sender = {
        let (base, client, token, retry) = (
            app.base.clone(),
            app.client.clone(),
            token.clone(),
            retry.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .post(format!("{base}/api/v1/sync/attempts:batch"))
                .bearer_auth(token)
                .json(&json!({"attempts": [retry]}))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    let waiting = "SELECT count(*) AS n FROM pg_locks WHERE NOT granted AND relation = 'test_sessions'::regclass";
    let mut blocked = false;
    for _ in 0..200 {
        let row = app
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                waiting,
            ))
            .await
            .unwrap()
            .unwrap();
        if row.try_get::<i64>("", "n").unwrap() > 0 {
            blocked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(blocked, "the retry never reached the session check");
    // Meanwhile the original commits and the session is submitted.
    let original_attempt = Uuid::new_v4();
    exec(
        &txn,
        &format!(
            "INSERT INTO idempotency_records (user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at) \
             VALUES ('{user}', '{}', '{}', '{original_attempt}', '{session}', now())",
            retry["idempotency_key"].as_str().unwrap(),
            retry["payload_hash"].as_str().unwrap(),
        ),
    )
    .await;
    exec(
        &txn,
        &format!("UPDATE test_sessions SET status = 'SUBMITTED', submitted_at = now() WHERE id = '{session}'"),
    )
    .await;
    txn.commit().await.unwrap();
    let (status, body) = sender.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let result = &body["results"][0];
    assert_eq!(result["status"], "duplicate", "{body}");
    assert_eq!(result["server_attempt_id"], json!(original_attempt));
    assert_eq!(result["server_session_id"], json!(session));
    assert_no_orphans(&app.db).await;
}

/// `ackedCount` is counted in the applying transaction: when a later round of the same
/// request fails, what the first round applied is counted (it was lost to `?`).
/// A transient fault fails the request as a whole (503), never an item; a non-transient
/// one rejects only its own item (the item-by-item fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_and_faults_never_become_item_results() {
    let Some(app) = pg_app().await else { return };
    let q = bank(&app).await;
    let (_, token) = app.student();
    let offline = Some(Uuid::new_v4());
    let transient = Uuid::new_v4();
    let permanent = Uuid::new_v4();
    exec(
        &app.db,
        &format!(
            "CREATE FUNCTION fail_marked() RETURNS trigger AS $$ BEGIN \
               IF NEW.client_attempt_id = '{transient}' THEN \
                 RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END IF; \
               IF NEW.client_attempt_id = '{permanent}' THEN \
                 RAISE EXCEPTION 'injected' USING ERRCODE = 'P0001'; END IF; \
               RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER fail_marked BEFORE INSERT ON attempts \
               FOR EACH ROW EXECUTE FUNCTION fail_marked();"
        ),
    )
    .await;

    // Round 1 applies `a`; `b` is rejected, so its key comes back in round 2 with `c`,
    // whose insert fails transiently.
    let a = attempt(q[0], 1, &ago(10), offline);
    let b = attempt(q[1], 9, &ago(9), offline);
    let mut c = attempt(q[1], 1, &ago(8), offline);
    c["idempotency_key"] = b["idempotency_key"].clone();
    c["client_attempt_id"] = json!(transient);
    let batch = [a.clone(), b.clone(), c.clone()];
    let (status, results, code) = sync(&app, Surface::Rest, &token, &batch, None).await;
    assert_eq!(
        (status, code.as_deref()),
        (503, Some("UNAVAILABLE")),
        "{results:?}"
    );
    assert_eq!(app.count("attempts").await, 1);
    assert_eq!(
        acked_count(&app, &token).await,
        1,
        "round 1 was applied and counted"
    );

    // A non-transient failure rejects only its item; the others are applied.
    let d = attempt(q[2], 4, &ago(7), offline);
    let mut e = attempt(q[2], 3, &ago(6), offline);
    e["client_attempt_id"] = json!(permanent);
    let f = attempt(q[0], 2, &ago(5), offline);
    let (status, results, _) = sync(&app, Surface::Rest, &token, &[d, e.clone(), f], None).await;
    assert_eq!(status, 200);
    assert_eq!(
        statuses(&results),
        ["acked", "rejected:INVALID_ATTEMPT", "acked"]
    );
    assert_eq!(acked_count(&app, &token).await, 3);

    // The fault passes: the same requests converge.
    exec(&app.db, "DROP TRIGGER fail_marked ON attempts").await;
    let (status, results, _) = sync(&app, Surface::Rest, &token, &batch, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        statuses(&results),
        ["duplicate", "rejected:INVALID_OPTION_INDEX", "acked"]
    );
    let (_, results, _) = sync(&app, Surface::Graphql, &token, &[e], None).await;
    assert_eq!(statuses(&results), ["acked"]);
    assert_eq!(acked_count(&app, &token).await, 5);
    assert_eq!(app.count("attempts").await, 5);
    assert_no_orphans(&app.db).await;
}

/// 50,000 idempotency records of `user` in a table that holds no statistics (autovacuum,
/// which would analyze it, off): what the plan tests below plan against.
async fn hold_50_000_records_unanalyzed(db: &sea_orm::DatabaseConnection, user: Uuid) {
    exec(
        db,
        &format!(
            "ALTER TABLE idempotency_records SET (autovacuum_enabled = false); \
             INSERT INTO idempotency_records (user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at) \
             SELECT '{user}', gen_random_uuid(), repeat('a', 64), gen_random_uuid(), gen_random_uuid(), now() \
             FROM generate_series(1, 50000)"
        ),
    )
    .await;
}

/// The idempotency lookup costs O(batch) whatever the history and the statistics: on a
/// table never analyzed, holding 50,000 records of the user, the plan puts both key
/// columns in the index condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_lookup_uses_both_key_columns_without_statistics() {
    use sea_orm::ConnectionTrait;
    let Some(app) = pg_app().await else { return };
    let (user, token) = app.student();
    let q = bank(&app).await;
    // The user row exists once the user has synced.
    sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(q[0], 1, &ago(5), Some(Uuid::new_v4()))],
        None,
    )
    .await;
    hold_50_000_records_unanalyzed(&app.db, user).await;
    let keys: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let row = app
        .db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            format!(
                "EXPLAIN (FORMAT JSON) {}",
                examsync::sync::store::FIND_RECORDS_PG
            ),
            vec![user.into(), examsync::sync::store::uuids(keys.clone())],
        ))
        .await
        .unwrap()
        .unwrap();
    let plan: Value = row.try_get("", "QUERY PLAN").unwrap();
    let text = plan.to_string();
    let index_cond = text
        .split("\"Index Cond\":")
        .nth(1)
        .unwrap_or_else(|| panic!("no index scan: {text}"));
    let index_cond = index_cond.split("\",").next().unwrap_or_default();
    assert!(
        index_cond.contains("user_id") && index_cond.contains("idempotency_key"),
        "{text}"
    );
    assert!(
        !text.contains("\"Filter\""),
        "keys applied as a filter: {text}"
    );

    // The lookup merged with the sessions and questions (the statement a batch runs):
    // its scan of the records is the same probe.
    let row = app
        .db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            format!(
                "EXPLAIN (FORMAT JSON) {}",
                examsync::sync::store::FIND_RECORDS_AND_FACTS_PG
            ),
            vec![
                user.into(),
                examsync::sync::store::uuids(keys),
                examsync::sync::store::uuids([Uuid::new_v4()]),
                examsync::sync::store::uuids([Uuid::new_v4()]),
                examsync::sync::store::uuids(q.clone()),
            ],
        ))
        .await
        .unwrap()
        .unwrap();
    let plan: Value = row.try_get("", "QUERY PLAN").unwrap();
    fn scans_of<'a>(node: &'a Value, table: &str, out: &mut Vec<&'a Value>) {
        if node["Relation Name"] == table {
            out.push(node);
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            scans_of(child, table, out);
        }
    }
    let mut scans = Vec::new();
    scans_of(&plan[0]["Plan"], "idempotency_records", &mut scans);
    assert_eq!(scans.len(), 1, "{plan}");
    let index_cond = scans[0]["Index Cond"].as_str().unwrap_or_default();
    assert!(
        index_cond.contains("user_id") && index_cond.contains("idempotency_key"),
        "{plan}"
    );
    assert!(
        scans[0].get("Filter").is_none(),
        "keys applied as a filter: {plan}"
    );
}

/// The release of claims, part of the statement that writes every fresh batch,
/// stays one probe per key in the generic plan PostgreSQL caches for it (a plain
/// `idempotency_key = ANY(…)` was planned as a read of every record of the user, so each
/// batch cost more than the last): on a table never analyzed, holding 50,000 records of the
/// user, the records are read only by index probes on both key columns and deleted by `ctid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_of_claims_probes_per_key_in_the_generic_plan() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let Some(app) = pg_app().await else { return };
    let (user, _) = app.student();
    hold_50_000_records_unanalyzed(&app.db, user).await;
    // One connection: the prepared statement and the plan setting are per session.
    let txn = app.db.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    txn.execute_unprepared(&format!(
        "PREPARE write_batch AS {}",
        examsync::sync::store::WRITE_BATCH_PG
    ))
    .await
    .unwrap();
    let row = txn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "EXPLAIN (FORMAT JSON) EXECUTE write_batch('{user}', NULL, now(), \
                 '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', 0, '{{}}', \
                 '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', \
                 '{{}}', '{{}}', 0, '{{}}', '{{}}', '{{}}')"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    txn.rollback().await.unwrap();
    let plan: Value = row.try_get("", "QUERY PLAN").unwrap();
    fn scans_of<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
        if node["Relation Name"] == "idempotency_records" {
            out.push(node);
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            scans_of(child, out);
        }
    }
    let mut scans = Vec::new();
    scans_of(&plan[0]["Plan"], &mut scans);
    let kinds: Vec<&str> = scans
        .iter()
        .filter_map(|s| s["Node Type"].as_str())
        .collect();
    assert_eq!(kinds, ["ModifyTable", "Index Scan", "Tid Scan"], "{plan}");
    for scan in scans.iter().filter(|s| s["Node Type"] == "Index Scan") {
        let index_cond = scan["Index Cond"].as_str().unwrap_or_default();
        assert!(
            index_cond.contains("user_id") && index_cond.contains("idempotency_key"),
            "{plan}"
        );
        assert!(
            scan.get("Filter").is_none(),
            "keys applied as a filter: {plan}"
        );
    }
}

/// Duplicate/rejected counts summed off the write path are written on graceful shutdown,
/// not left to the next background flush (which a stopped instance never runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counters_are_written_on_graceful_shutdown() {
    use examsync::sync::store::Counts;
    use sea_orm::{ActiveValue::Set, EntityTrait};
    let (config, database, _redis) = crate::helpers::test_config(Backend::Sqlite).await;
    let application = examsync::Application::build(config).await.unwrap();
    let state = application.state().clone();
    let user = Uuid::new_v4();
    entity::user::Entity::insert(entity::user::ActiveModel {
        id: Set(user.into()),
        role: Set(entity::Role::Student),
        created_at: Set(Utc::now()),
        last_sync_at: Set(None),
        acked_count: Set(0),
        duplicate_count: Set(0),
        rejected_count: Set(0),
        change_seq: Set(0),
    })
    .exec(&state.db)
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let counts = Counts {
        acked: 0,
        duplicate: 2,
        rejected: 1,
    };
    state.sync.add(&state.db, user.into(), counts, Utc::now());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    let row = entity::user::Entity::find_by_id(user)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.duplicate_count, row.rejected_count), (2, 1));
}
