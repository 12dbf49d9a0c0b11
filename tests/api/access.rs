//! Grants (docs/api.md section 3.1) over real HTTP on SQLite and PostgreSQL + Redis: the
//! list, the download (GET, HEAD, 304, ranges), the delta, GraphQL, sync, token grants, two
//! instances sharing a database.
use std::time::{Duration, Instant};

use examsync::{access::AccessMode, auth::Role};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, question, spawn_app_with, start, test_config};
use crate::sync::{Surface, ago, attempt, sync};

pub async fn grants_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |c| c.access = AccessMode::Grants).await
}

/// Year 1 (blocks 11, 12) and year 2 (block 21): a YEAR 1 package in two versions, a YEAR
/// 2 package and the PROGRAM package of both years.
pub struct Bank {
    pub year1_v1: Uuid,
    pub year1_v2: Uuid,
    pub year2: Uuid,
    pub program: Uuid,
    pub year1_question: Uuid,
    pub year2_question: Uuid,
}

pub async fn bank(app: &TestApp) -> Bank {
    let ids = app
        .import_questions(json!([
            question("Y1 B11", &["a", "b"], 0, 1, Some(11), Some(111)),
            question("Y1 B12", &["a", "b"], 1, 1, Some(12), None),
            question("Y2 B21", &["a", "b", "c"], 2, 2, Some(21), None),
        ]))
        .await;
    let year1_v1 = app.publish("YEAR", json!({"yearId": 1})).await;
    app.import_questions(json!([question(
        "Y1 B12 new",
        &["a", "b"],
        0,
        1,
        Some(12),
        None
    )]))
    .await;
    let year1_v2 = app.publish("YEAR", json!({"yearId": 1})).await;
    let year2 = app.publish("YEAR", json!({"yearId": 2})).await;
    let program = app.publish("PROGRAM", json!({})).await;
    Bank {
        year1_v1,
        year1_v2,
        year2,
        program,
        year1_question: ids[0],
        year2_question: ids[2],
    }
}

pub async fn listed(app: &TestApp, token: &str, query: &str) -> Vec<Uuid> {
    let response = app
        .get(&format!("/api/v1/tests/packages{query}"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Uuid::parse_str(i["package_id"].as_str().unwrap()).unwrap())
        .collect()
}

pub async fn download(
    app: &TestApp,
    token: &str,
    id: Uuid,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = app.get(&format!("/api/v1/tests/packages/{id}"), token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn delta(app: &TestApp, token: &str, id: Uuid, from: Uuid) -> (u16, Value) {
    let response = app
        .get(
            &format!("/api/v1/tests/packages/{id}/delta?from={from}"),
            token,
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn head(app: &TestApp, token: &str, id: Uuid) -> u16 {
    app.client
        .head(app.url(&format!("/api/v1/tests/packages/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn rest_surface(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let (student, token) = app.student();

    // No grant: nothing listed, every read refused, revalidation included.
    assert!(listed(&app, &token, "").await.is_empty());
    let (status, body) = download(&app, &token, bank.year1_v2, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_code"], "ACCESS_DENIED");
    let etag = format!("W/\"{}\"", "0".repeat(64));
    assert_eq!(
        download(&app, &token, bank.year1_v2, &[("if-none-match", "*")])
            .await
            .0,
        403
    );
    assert_eq!(
        download(&app, &token, bank.year1_v2, &[("if-none-match", &etag)])
            .await
            .0,
        403
    );
    assert_eq!(head(&app, &token, bank.year1_v2).await, 403);
    // 400 and 404 come first.
    assert_eq!(download(&app, &token, Uuid::new_v4(), &[]).await.0, 404);
    let bad = app
        .get("/api/v1/tests/packages/not-a-uuid", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        delta(&app, &token, bank.year1_v2, bank.year1_v1).await.0,
        403
    );
    assert_eq!(
        delta(&app, &token, bank.year1_v2, Uuid::new_v4()).await.0,
        404
    );
    // 409 before 403.
    assert_eq!(delta(&app, &token, bank.year1_v2, bank.year2).await.0, 409);

    // YEAR 1: its packages, not the PROGRAM package; at once (no cache to wait out).
    app.grant(student, "YEAR", Some(1)).await;
    let mut year1 = listed(&app, &token, "").await;
    year1.sort();
    let mut expected = vec![bank.year1_v1, bank.year1_v2];
    expected.sort();
    assert_eq!(year1, expected);
    assert_eq!(
        listed(&app, &token, "?latest=true").await,
        vec![bank.year1_v2]
    );
    let (status, body) = download(&app, &token, bank.year1_v2, &[]).await;
    assert_eq!(status, 200);
    let hash = body["version_hash"].as_str().unwrap().to_owned();
    let etag = format!("W/\"{hash}\"");
    assert_eq!(
        download(&app, &token, bank.year1_v2, &[("if-none-match", &etag)])
            .await
            .0,
        304
    );
    assert_eq!(
        download(
            &app,
            &token,
            bank.year1_v2,
            &[("range", "bytes=0-9"), ("accept-encoding", "identity")]
        )
        .await
        .0,
        206
    );
    assert_eq!(head(&app, &token, bank.year1_v2).await, 200);
    assert_eq!(
        delta(&app, &token, bank.year1_v2, bank.year1_v1).await.0,
        200
    );
    assert_eq!(download(&app, &token, bank.program, &[]).await.0, 403);
    assert_eq!(download(&app, &token, bank.year2, &[]).await.0, 403);

    // A BLOCK grant alone does not open year 2's package... until a union covers it.
    app.grant(student, "BLOCK", Some(21)).await;
    assert_eq!(download(&app, &token, bank.year2, &[]).await.0, 200);
    // Years 1 and 2 together cover the PROGRAM package.
    assert_eq!(download(&app, &token, bank.program, &[]).await.0, 200);
    assert!(
        listed(&app, &token, "?scope=PROGRAM")
            .await
            .contains(&bank.program)
    );

    // Admins read everything without grants.
    let admin = app.admin_token();
    assert_eq!(download(&app, &admin, bank.program, &[]).await.0, 200);
    assert_eq!(listed(&app, &admin, "").await.len(), 4);
}

async fn latest_picks_the_newest_readable_version(backend: Backend) {
    let app = grants_app(backend).await;
    app.import_questions(json!([question(
        "T7",
        &["a", "b"],
        0,
        1,
        Some(11),
        Some(7)
    )]))
    .await;
    let v1 = app.publish("BLOCK", json!({"blockId": 11})).await;
    // Version 2 of block 11 holds a question of theme 8 as well.
    app.import_questions(json!([question(
        "T8",
        &["a", "b"],
        0,
        1,
        Some(11),
        Some(8)
    )]))
    .await;
    let v2 = app.publish("BLOCK", json!({"blockId": 11})).await;
    assert_ne!(v1, v2);
    let (student, token) = app.student();
    app.grant(student, "THEME", Some(7)).await;
    assert_eq!(listed(&app, &token, "?latest=true").await, vec![v1]);
    app.grant(student, "THEME", Some(8)).await;
    assert_eq!(listed(&app, &token, "?latest=true").await, vec![v2]);
}

async fn graphql_surface(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let (student, token) = app.student();
    let admin = app.admin_token();

    let (_, body) = app
        .graphql(Some(&token), "{ packages { id } }", json!({}))
        .await;
    assert_eq!(body["data"]["packages"], json!([]), "{body}");
    let (_, body) = app
        .graphql(
            Some(&token),
            "query($id: UUID!) { package(id: $id) { id questions { stem } } }",
            json!({"id": bank.year1_v2}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let (_, body) = app
        .graphql(
            Some(&token),
            "query($id: UUID!, $from: UUID!) { packageDelta(id: $id, from: $from) { removed } }",
            json!({"id": bank.year1_v2, "from": bank.year1_v1}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );

    // Admin operations are refused to students.
    let (_, body) = app
        .graphql(
            Some(&token),
            "query($u: UUID!) { accessGrants(userId: $u) { id } }",
            json!({"u": student}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );

    // Ids that do not fit the scope.
    for input in [
        json!({"userId": student, "scope": "YEAR"}),
        json!({"userId": student, "scope": "PROGRAM", "yearId": 1}),
        json!({"userId": student, "scope": "BLOCK", "blockId": 1, "themeId": 2}),
    ] {
        let (_, body) = app
            .graphql(
                Some(&admin),
                "mutation($input: GrantAccessInput!) { grantAccess(input: $input) { id } }",
                json!({"input": input}),
            )
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
    }

    let first = app.grant(student, "YEAR", Some(1)).await;
    // An equal grant in force is returned, not doubled.
    assert_eq!(app.grant(student, "YEAR", Some(1)).await, first);
    let (_, body) = app
        .graphql(
            Some(&token),
            "{ packages { id } myAccess { id scope yearId } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["packages"].as_array().unwrap().len(),
        2,
        "{body}"
    );
    assert_eq!(
        body["data"]["myAccess"],
        json!([{"id": first, "scope": "YEAR", "yearId": 1}])
    );
    let (_, body) = app
        .graphql(
            Some(&token),
            "query($id: UUID!, $from: UUID!) { packageDelta(id: $id, from: $from) { removed } }",
            json!({"id": bank.year1_v2, "from": bank.year1_v1}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");

    // Revocation on this instance takes effect at once; the grant stays listed for admins.
    let (_, body) = app
        .graphql(
            Some(&admin),
            "mutation($id: UUID!) { revokeAccess(id: $id) { id revokedAt } }",
            json!({"id": first}),
        )
        .await;
    let revoked_at = body["data"]["revokeAccess"]["revokedAt"].clone();
    assert!(revoked_at.is_string(), "{body}");
    let (_, again) = app
        .graphql(
            Some(&admin),
            "mutation($id: UUID!) { revokeAccess(id: $id) { revokedAt } }",
            json!({"id": first}),
        )
        .await;
    assert_eq!(again["data"]["revokeAccess"]["revokedAt"], revoked_at);
    let (_, body) = app
        .graphql(
            Some(&token),
            "query($id: UUID!) { package(id: $id) { id } myAccess { id } }",
            json!({"id": bank.year1_v2}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let (_, body) = app
        .graphql(
            Some(&admin),
            "query($u: UUID!) { accessGrants(userId: $u) { id revokedAt } }",
            json!({"u": student}),
        )
        .await;
    assert_eq!(
        body["data"]["accessGrants"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    let (_, body) = app
        .graphql(Some(&token), "{ myAccess { id } }", json!({}))
        .await;
    assert_eq!(body["data"]["myAccess"], json!([]));
}

async fn sync_judges_grants_at_the_answer_time(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let (student, token) = app.student();
    // A YEAR 1 subscription that ended an hour ago.
    let (_, body) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation($input: GrantAccessInput!) { grantAccess(input: $input) { id } }",
            json!({"input": {"userId": student, "scope": "YEAR", "yearId": 1, "validUntil": ago(60)}}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    for surface in [Surface::Rest, Surface::Graphql] {
        let offline = Some(Uuid::new_v4());
        let attempts = [
            // Answered while the grant was in force: kept, however late it syncs.
            attempt(bank.year1_question, 0, &ago(120), offline),
            // Answered after it ended.
            attempt(bank.year1_question, 1, &ago(30), offline),
            // Never covered.
            attempt(bank.year2_question, 0, &ago(120), offline),
            // Unknown questions are QUESTION_NOT_FOUND first.
            attempt(Uuid::new_v4(), 0, &ago(120), offline),
        ];
        let (status, results, _) = sync(&app, surface, &token, &attempts, None).await;
        assert_eq!(status, 200);
        let codes: Vec<Value> = results.iter().map(|r| r["error_code"].clone()).collect();
        assert_eq!(
            codes,
            vec![
                Value::Null,
                json!("ACCESS_DENIED"),
                json!("ACCESS_DENIED"),
                json!("QUESTION_NOT_FOUND")
            ],
            "{surface:?}: {results:?}"
        );
        assert_eq!(results[0]["status"], "acked");
    }
    // A token grant counts whatever the answer time; an admin is never refused.
    let token_grant = app.token_with(student, Role::Student, json!({"access": ["YEAR:2"]}));
    let (_, results, _) = sync(
        &app,
        Surface::Rest,
        &token_grant,
        &[attempt(
            bank.year2_question,
            0,
            &ago(600),
            Some(Uuid::new_v4()),
        )],
        None,
    )
    .await;
    assert_eq!(results[0]["status"], "acked", "{results:?}");
    let (_, results, _) = sync(
        &app,
        Surface::Rest,
        &app.admin_token(),
        &[attempt(
            bank.year2_question,
            0,
            &ago(1),
            Some(Uuid::new_v4()),
        )],
        None,
    )
    .await;
    assert_eq!(results[0]["status"], "acked", "{results:?}");
}

async fn open_mode_reads_everything(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.access = AccessMode::Open).await;
    let bank = bank(&app).await;
    let (_, token) = app.student();
    assert_eq!(listed(&app, &token, "").await.len(), 4);
    assert_eq!(download(&app, &token, bank.program, &[]).await.0, 200);
    let (_, results, _) = sync(
        &app,
        Surface::Rest,
        &token,
        &[attempt(
            bank.year2_question,
            0,
            &ago(1),
            Some(Uuid::new_v4()),
        )],
        None,
    )
    .await;
    assert_eq!(results[0]["status"], "acked");
}

async fn token_claims(backend: Backend) {
    let app = grants_app(backend).await;
    let bank = bank(&app).await;
    let user = Uuid::new_v4();
    let year1 = app.token_with(user, Role::Student, json!({"access": ["YEAR:1"]}));
    assert_eq!(download(&app, &year1, bank.year1_v2, &[]).await.0, 200);
    assert_eq!(download(&app, &year1, bank.year2, &[]).await.0, 403);
    // The same user with another token: the first token's grants do not stick.
    let plain = app.token(user, Role::Student);
    assert_eq!(download(&app, &plain, bank.year1_v2, &[]).await.0, 403);
    let both = app.token_with(
        user,
        Role::Student,
        json!({"access": ["YEAR:1", "BLOCK:21"]}),
    );
    assert_eq!(download(&app, &both, bank.program, &[]).await.0, 200);
    let all = app.token_with(user, Role::Student, json!({"access": ["PROGRAM"]}));
    assert_eq!(listed(&app, &all, "").await.len(), 4);

    for (extra, named) in [
        (json!({"access": ["YEAR:x"]}), "access"),
        (json!({"access": "PROGRAM"}), "access"),
        (json!({"access": ["COURSE:1"]}), "access"),
        (json!({"aud": "examsync"}), "aud"),
    ] {
        let token = app.token_with(user, Role::Student, extra.clone());
        let response = app
            .get("/api/v1/tests/packages", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{extra}");
        let body: Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{extra}: {message}");
    }
}

async fn issuer_and_audience(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.jwt_issuer = Some("https://auth.example".into());
        c.jwt_audience = Some("examsync".into());
    })
    .await;
    let user = Uuid::new_v4();
    let status = |token: String| {
        let app = &app;
        async move {
            let response = app
                .get("/api/v1/tests/packages", &token)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["message"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let good = json!({"iss": "https://auth.example", "aud": ["other", "examsync"]});
    assert_eq!(
        status(app.token_with(user, Role::Student, good)).await.0,
        StatusCode::OK
    );
    let single = json!({"iss": "https://auth.example", "aud": "examsync"});
    assert_eq!(
        status(app.token_with(user, Role::Student, single)).await.0,
        StatusCode::OK
    );
    for (claims, named) in [
        (
            json!({"iss": "https://evil.example", "aud": "examsync"}),
            "iss",
        ),
        (
            json!({"iss": "https://auth.example", "aud": "other"}),
            "aud",
        ),
        (json!({"aud": "examsync"}), "iss"),
        (json!({"iss": "https://auth.example"}), "aud"),
    ] {
        let (code, message) = status(app.token_with(user, Role::Student, claims.clone())).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{claims}");
        assert!(message.contains(named), "{claims}: {message}");
    }
}

/// A grant made through one instance works at once on another that had refused; a
/// revocation takes effect there within 30 seconds.
async fn two_instances(backend: Backend) {
    let (mut config, database, redis) = test_config(backend).await;
    config.access = AccessMode::Grants;
    let a = start(backend, config.clone(), database, redis).await;
    let b_database = crate::helpers::TestDatabase::shared(&a.database);
    let b = start(backend, config, b_database, None).await;
    let bank = bank(&a).await;
    let (student, token) = a.student();
    assert_eq!(download(&b, &token, bank.year1_v2, &[]).await.0, 403);
    assert!(listed(&b, &token, "").await.is_empty());
    let grant = a.grant(student, "YEAR", Some(1)).await;
    assert_eq!(download(&b, &token, bank.year1_v2, &[]).await.0, 200);
    assert_eq!(
        listed(&b, &token, "?latest=true").await,
        vec![bank.year1_v2]
    );

    let (_, body) = a
        .graphql(
            Some(&a.admin_token()),
            "mutation($id: UUID!) { revokeAccess(id: $id) { id } }",
            json!({"id": grant}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let revoked = Instant::now();
    loop {
        let status = download(&b, &token, bank.year1_v2, &[]).await.0;
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(30),
            "a revocation must reach other instances within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.stop().await;
}

/// A package without question index rows (built by an older binary during a rolling
/// upgrade) is indexed on first use, never judged by an empty question list.
async fn unindexed_packages_are_indexed_on_first_use(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let app = grants_app(backend).await;
    app.import_questions(json!([question("Y3", &["a", "b"], 0, 3, Some(31), None)]))
        .await;
    let package = app.publish("YEAR", json!({"yearId": 3})).await;
    app.db
        .execute_unprepared("DELETE FROM package_questions")
        .await
        .unwrap();
    let (student, token) = app.student();
    app.grant(student, "YEAR", Some(4)).await;
    assert_eq!(download(&app, &token, package, &[]).await.0, 403);
    assert!(listed(&app, &token, "").await.is_empty());
    app.grant(student, "YEAR", Some(3)).await;
    assert_eq!(download(&app, &token, package, &[]).await.0, 200);
    assert!(crate::helpers::count_rows(&app.db, "package_questions", "").await > 0);
}

backend_tests!(
    unindexed_packages_are_indexed_on_first_use,
    rest_surface,
    latest_picks_the_newest_readable_version,
    graphql_surface,
    sync_judges_grants_at_the_answer_time,
    open_mode_reads_everything,
    token_claims,
    issuer_and_audience,
    two_instances,
);
