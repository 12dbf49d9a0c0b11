//! Section 10: no client exhausts the server. The node limit, one `syncAttempts` per
//! operation, errors that never echo the document, persisted queries registered only when
//! authenticated and valid, detached builds, the per-address and per-package limits, load
//! shedding, and what production mode and the metrics listener hide.
use std::time::Duration;

use examsync::metrics::PackageBuild;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    backend_tests,
    helpers::{Backend, TestApp, question, spawn_app, spawn_app_with},
};

backend_tests!(
    node_limit_counts_list_sizes,
    one_sync_attempts_per_operation,
    errors_never_echo_the_document,
    persisted_queries_need_a_caller_and_a_valid_document,
    dropped_delta_requests_build_once,
    anonymous_requests_are_limited_per_address,
    package_requests_have_their_own_budget,
    load_is_shed_past_the_in_flight_limit,
    production_hides_introspection_and_metrics_move,
);

const BUILD: &str = "mutation($input: BuildPackageInput!) { buildPackage(input: $input) { id version questionCount } }";

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
}

/// Imports `count` questions of `year` (stems padded to `stem_bytes`) and publishes a YEAR
/// package of them; returns the package.
async fn publish_year(
    app: &TestApp,
    year: i32,
    count: usize,
    stem_bytes: usize,
    tag: &str,
) -> Value {
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let questions: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let stem = format!("{tag} question {i} {}", "x".repeat(stem_bytes));
                question(&stem, &["a", "b", "c"], 1, year, None, None)
            })
            .collect();
        app.import_questions(Value::Array(questions)).await;
    }
    let (status, body) = app
        .graphql(
            Some(&app.admin_token()),
            BUILD,
            json!({"input": {"name": tag, "scope": "YEAR", "yearId": year, "publish": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["buildPackage"].clone()
}

const QUESTION_FIELDS: &str = "id questionId stem options correctIndex explanationMd yearId blockId themeId cognitiveLevel difficulty";

async fn node_limit_counts_list_sizes(backend: Backend) {
    let app = spawn_app(backend).await;
    let package = publish_year(&app, 1, 5_000, 0, "full").await;
    assert_eq!(package["questionCount"], 5_000);
    let (_, student) = app.student();

    // One full package passes.
    let one = format!(
        "query($id: UUID!) {{ package(id: $id) {{ id questions {{ {QUESTION_FIELDS} }} }} }}"
    );
    let (status, body) = app
        .graphql(Some(&student), &one, json!({"id": package["id"]}))
        .await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{}", &body.to_string()[..200]);
    assert_eq!(
        body["data"]["package"]["questions"]
            .as_array()
            .unwrap()
            .len(),
        5_000
    );

    // Thirty aliases of `packages { questions }` are refused before they run, with and
    // without a token.
    let thirty: String = (0..30)
        .map(|i| format!("a{i}: packages {{ id questions {{ {QUESTION_FIELDS} }} }} "))
        .collect();
    let document = format!("{{ {thirty} }}");
    for token in [Some(student.as_str()), None] {
        let statements = app
            .state
            .db_statements
            .load(std::sync::atomic::Ordering::Relaxed);
        let (_, body) = app.graphql(token, &document, json!({})).await;
        assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
        assert!(body.get("data").is_none());
        assert!(body.to_string().len() < 2_000);
        // Refused on the cached totals: no package was read.
        let after = app
            .state
            .db_statements
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(after - statements <= 2, "{}", after - statements);
    }
    // Through fragments too.
    let fragments = format!(
        "{{ ...A }} fragment A on Query {{ {thirty_f} }} fragment P on TestPackage {{ questions {{ id }} }}",
        thirty_f = (0..30)
            .map(|i| format!("p{i}: packages {{ ...P }} "))
            .collect::<String>()
    );
    let (_, body) = app.graphql(Some(&student), &fragments, json!({})).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    app.stop().await;
}

async fn one_sync_attempts_per_operation(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, student) = app.student();
    let aliases: String = (0..25)
        .map(|i| format!("a{i}: syncAttempts(input: $input) {{ results {{ status }} }} "))
        .collect();
    let document = format!("mutation($input: SyncAttemptsInput!) {{ {aliases} }}");
    let (_, body) = app
        .graphql(
            Some(&student),
            &document,
            json!({"input": {"attempts": []}}),
        )
        .await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body.get("data").is_none());
    // Through a fragment as well.
    let document = "mutation($input: SyncAttemptsInput!) { syncAttempts(input: $input) { results { status } } ...F } \
                    fragment F on Mutation { again: syncAttempts(input: $input) { results { status } } }";
    let (_, body) = app
        .graphql(Some(&student), document, json!({"input": {"attempts": []}}))
        .await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    app.stop().await;
}

async fn errors_never_echo_the_document(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, student) = app.student();
    let marker = "zq".repeat(15_000);
    // A parse error of a 30 KB document.
    let (_, body) = app
        .graphql(Some(&student), &format!("{{ {marker} ( }}"), json!({}))
        .await;
    assert_eq!(
        code(&body),
        "GRAPHQL_PARSE_FAILED",
        "{}",
        &body.to_string()[..300]
    );
    assert!(body.to_string().len() < 2_000, "{}", body.to_string().len());
    // A comment-only document.
    let (_, body) = app
        .graphql(Some(&student), &format!("# {marker}"), json!({}))
        .await;
    assert!(body.to_string().len() < 2_000, "{}", body.to_string().len());
    // Validation errors naming a 30 KB field, many times.
    let fields: String = (0..10).map(|i| format!("f{i}{marker} ")).collect();
    let (_, body) = app
        .graphql(Some(&student), &format!("{{ {fields} }}"), json!({}))
        .await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert!(body.to_string().len() < 5_000, "{}", body.to_string().len());
    app.stop().await;
}

/// POSTs a query with its APQ hash; returns the body.
async fn apq_post(app: &TestApp, token: Option<&str>, query: &str) -> Value {
    let hash = hex::encode(Sha256::digest(query.as_bytes()));
    let mut request = app.client.post(app.url("/graphql")).json(&json!({
        "query": query,
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}},
    }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

async fn apq_lookup(app: &TestApp, token: &str, query: &str) -> Value {
    let hash = hex::encode(Sha256::digest(query.as_bytes()));
    app.client
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .json(&json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn persisted_queries_need_a_caller_and_a_valid_document(backend: Backend) {
    // A Redis write that times out under load is (rightly) a fallback, not a
    // registration; the generous timeout keeps this test about the rules.
    let app = spawn_app_with(backend, |c| c.redis_timeout_ms = 10_000).await;
    let (_, student) = app.student();
    // Without a token: answered (UNAUTHENTICATED for the field), never registered.
    let anonymous = "query Anonymous { syncStatus { ackedCount } }";
    apq_post(&app, None, anonymous).await;
    assert_eq!(
        code(&apq_lookup(&app, &student, anonymous).await),
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // Invalid: never registered.
    let invalid = "query Invalid { noSuchField }";
    assert_eq!(
        code(&apq_post(&app, Some(&student), invalid).await),
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert_eq!(
        code(&apq_lookup(&app, &student, invalid).await),
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // A comment-only megabyte without a token leaves nothing behind.
    let big = format!("# {}\n{{ __typename }}", "c".repeat(900_000));
    apq_post(&app, None, &big).await;
    assert_eq!(
        code(&apq_lookup(&app, &student, &big).await),
        "PERSISTED_QUERY_NOT_FOUND"
    );
    // Authenticated and valid: registered.
    let valid = "query Valid { syncStatus { ackedCount } }";
    let body = apq_post(&app, Some(&student), valid).await;
    assert!(body.get("errors").is_none(), "{body}");
    let body = apq_lookup(&app, &student, valid).await;
    assert_eq!(body["data"]["syncStatus"]["ackedCount"], 0, "{body}");
    app.stop().await;
}

async fn dropped_delta_requests_build_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let v1 = publish_year(&app, 2, 400, 600, "one").await;
    publish_year(&app, 2, 400, 600, "two").await;
    let v3 = publish_year(&app, 2, 400, 600, "three").await;
    let store = app.state.packages.clone();
    // Publishing prebuilt v1 → v2 and v2 → v3; v1 → v3 is cold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while store.build_count(PackageBuild::Delta) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prebuilds did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, student) = app.student();
    let path = format!(
        "/api/v1/tests/packages/{}/delta?from={}",
        v3["id"].as_str().unwrap(),
        v1["id"].as_str().unwrap()
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    for _ in 0..5 {
        let answer = impatient
            .get(app.url(&path))
            .bearer_auth(&student)
            .header("accept-encoding", "br")
            .send()
            .await;
        assert!(
            answer.is_err(),
            "the build was expected to outlast the client"
        );
    }
    // The retry reads what the first, abandoned, request started.
    let answer = app
        .get(&path, &student)
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(store.build_count(PackageBuild::Delta), 3);
    app.stop().await;
}

async fn anonymous_requests_are_limited_per_address(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.anonymous_rate_limit_per_minute = 3).await;
    for _ in 0..3 {
        let r = app
            .client
            .get(app.url("/api/v1/tests/packages"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // A token that fails verification counts the same.
    let r = app
        .get("/api/v1/tests/packages", "not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "RATE_LIMITED", "{body}");
    // GraphQL without a token shares the budget.
    let (status, body) = app.graphql(None, "{ __typename }", json!({})).await;
    assert_eq!(status, 429);
    assert_eq!(code(&body), "RATE_LIMITED");
    // Probes, metrics and the GraphiQL page are never counted.
    for path in ["/livez", "/readyz", "/metrics"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let page = app
        .client
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // A user with a valid token is not limited by the address's budget.
    let (_, student) = app.student();
    let r = app
        .get("/api/v1/tests/packages", &student)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

async fn package_requests_have_their_own_budget(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.package_rate_limit_per_minute = 3;
        c.rate_limit_per_minute = 1000;
    })
    .await;
    let (_, student) = app.student();
    for _ in 0..3 {
        let r = app
            .get("/api/v1/tests/packages", &student)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = app
        .get("/api/v1/tests/packages", &student)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Sync and GraphQL keep their own budget; another user has a full one.
    let (status, body) = app
        .graphql(Some(&student), "{ syncStatus { ackedCount } }", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, other) = app.student();
    let r = app
        .get("/api/v1/tests/packages", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

async fn load_is_shed_past_the_in_flight_limit(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_in_flight = 1).await;
    let (_, student) = app.student();
    // A request whose body never arrives holds the only slot.
    let mut held = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    held.write_all(
        format!(
            "POST /api/v1/sync/attempts:batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {student}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app
        .get("/api/v1/tests/packages", &student)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "UNAVAILABLE", "{body}");
    let (status, body) = app
        .graphql(Some(&student), "{ __typename }", json!({}))
        .await;
    assert_eq!(status, 503);
    assert_eq!(code(&body), "UNAVAILABLE");
    for path in ["/livez", "/readyz", "/metrics"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app
            .get("/api/v1/tests/packages", &student)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

const INTROSPECTION: &str = "{ __schema { mutationType { fields { name } } } }";

async fn production_hides_introspection_and_metrics_move(backend: Backend) {
    let metrics_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let app = spawn_app_with(backend, |c| {
        c.production = true;
        c.metrics_bind = Some(metrics_port);
    })
    .await;
    let (_, student) = app.student();
    let (_, body) = app.graphql(None, INTROSPECTION, json!({})).await;
    assert!(!body.to_string().contains("buildPackage"), "{body}");
    // No "did you mean".
    let (_, body) = app
        .graphql(Some(&student), "{ packagez { id } }", json!({}))
        .await;
    assert!(!body.to_string().contains("Did you mean"), "{body}");
    // `/metrics` only on its own listener.
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(format!("http://{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("examsync_"));
    app.stop().await;

    // Asked for, introspection stays on in production.
    let app = spawn_app_with(backend, |c| {
        c.production = true;
        c.graphql_introspection = Some(true);
    })
    .await;
    let (_, body) = app.graphql(None, INTROSPECTION, json!({})).await;
    assert!(body.to_string().contains("buildPackage"), "{body}");
    app.stop().await;
}
