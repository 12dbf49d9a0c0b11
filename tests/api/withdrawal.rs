//! Withdrawal (docs/api.md section 4) on SQLite and PostgreSQL + Redis: `410` on the
//! download and deltas to it (admins too), deltas from it still served, lists skip it,
//! GraphQL treats it as unpublished for students, sync still scores against it.
use serde_json::{Value, json};
use uuid::Uuid;

use crate::access::{bank, download, grants_app, listed};
use crate::backend_tests;
use crate::helpers::{Backend, TestApp};
use crate::sync::{Surface, ago, attempt, sync};

async fn withdraw(app: &TestApp, token: &str, id: Uuid, reason: &str) -> Value {
    let (_, body) = app
        .graphql(
            Some(token),
            "mutation($id: UUID!, $reason: String!) { withdrawPackage(id: $id, reason: $reason) {
                id withdrawnAt withdrawnReason } }",
            json!({"id": id, "reason": reason}),
        )
        .await;
    body
}

async fn delta_status(app: &TestApp, token: &str, id: Uuid, from: Uuid) -> u16 {
    app.get(
        &format!("/api/v1/tests/packages/{id}/delta?from={from}"),
        token,
    )
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

async fn withdrawn_packages_are_gone(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let admin = app.admin_token();
    let (student, token) = app.student();
    app.grant(student, "YEAR", Some(1)).await;
    let (status, body) = download(&app, &token, bank.year1_v2, &[]).await;
    assert_eq!(status, 200);
    let etag = format!("W/\"{}\"", body["version_hash"].as_str().unwrap());

    // Students cannot withdraw.
    let body = withdraw(&app, &token, bank.year1_v2, "typo").await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let body = withdraw(&app, &admin, bank.year1_v2, "a wrong key in question 3").await;
    let withdrawn = &body["data"]["withdrawPackage"];
    assert!(withdrawn["withdrawnAt"].is_string(), "{body}");
    assert_eq!(withdrawn["withdrawnReason"], "a wrong key in question 3");
    // Again: unchanged.
    let again = withdraw(&app, &admin, bank.year1_v2, "another reason").await;
    assert_eq!(again["data"]["withdrawPackage"], *withdrawn, "{again}");

    for who in [&token, &admin] {
        let (status, body) = download(&app, who, bank.year1_v2, &[]).await;
        assert_eq!(status, 410, "{body}");
        assert_eq!(body["error_code"], "PACKAGE_WITHDRAWN");
        assert_eq!(
            download(&app, who, bank.year1_v2, &[("if-none-match", &etag)])
                .await
                .0,
            410
        );
        // The delta to it is gone; the delta from it is how phones leave it.
        assert_eq!(
            delta_status(&app, who, bank.year1_v2, bank.year1_v1).await,
            410
        );
        assert_eq!(
            delta_status(&app, who, bank.year1_v1, bank.year1_v2).await,
            200
        );
    }
    // Lists skip it; latest falls back to the newest version still served.
    assert_eq!(listed(&app, &token, "").await, vec![bank.year1_v1]);
    assert_eq!(
        listed(&app, &token, "?latest=true").await,
        vec![bank.year1_v1]
    );
    assert!(!listed(&app, &admin, "").await.contains(&bank.year1_v2));

    // GraphQL: null for students, visible with its reason for admins; the delta from it
    // works and shows when it was withdrawn, but not why, to students.
    let query = "query($id: UUID!) { package(id: $id) { id withdrawnAt withdrawnReason } }";
    let (_, body) = app
        .graphql(Some(&token), query, json!({"id": bank.year1_v2}))
        .await;
    assert_eq!(body["data"]["package"], Value::Null, "{body}");
    let (_, body) = app
        .graphql(Some(&admin), query, json!({"id": bank.year1_v2}))
        .await;
    assert_eq!(
        body["data"]["package"]["withdrawnReason"],
        "a wrong key in question 3"
    );
    let delta = "query($id: UUID!, $from: UUID!) { packageDelta(id: $id, from: $from) {
        from { withdrawnAt withdrawnReason } upserted { questionId } } }";
    let (_, body) = app
        .graphql(
            Some(&token),
            delta,
            json!({"id": bank.year1_v1, "from": bank.year1_v2}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    assert!(body["data"]["packageDelta"]["from"]["withdrawnAt"].is_string());
    assert_eq!(
        body["data"]["packageDelta"]["from"]["withdrawnReason"],
        Value::Null
    );
    let (_, body) = app
        .graphql(
            Some(&token),
            delta,
            json!({"id": bank.year1_v2, "from": bank.year1_v1}),
        )
        .await;
    assert_eq!(body["data"]["packageDelta"], Value::Null, "{body}");

    // Sync is unaffected: an answer naming the withdrawn package is scored against it.
    let mut item = attempt(bank.year1_question, 0, &ago(1), Some(Uuid::new_v4()));
    item["package_id"] = json!(bank.year1_v2);
    let (_, results, _) = sync(&app, Surface::Rest, &token, &[item], None).await;
    assert_eq!(results[0]["status"], "acked", "{results:?}");

    // The database still refuses any other change of the published row, and a second
    // withdrawal's change.
    use sea_orm::ConnectionTrait;
    for sql in [
        "UPDATE test_packages SET name = 'x' WHERE is_published",
        "UPDATE test_packages SET withdrawn_reason = 'x' WHERE withdrawn_at IS NOT NULL",
        "UPDATE test_packages SET withdrawn_at = published_at, name = 'x' \
         WHERE is_published AND withdrawn_at IS NULL",
        "DELETE FROM test_packages WHERE is_published",
    ] {
        assert!(app.db.execute_unprepared(sql).await.is_err(), "{sql}");
    }

    // Unknown and unpublished packages cannot be withdrawn.
    let body = withdraw(&app, &admin, Uuid::new_v4(), "x").await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );
}

backend_tests!(withdrawn_packages_are_gone);
