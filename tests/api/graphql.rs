//! GraphQL transport: error codes, HTTP statuses, limits, persisted queries, GraphiQL.
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app};

async fn post_raw(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = app.client.post(app.url("/graphql")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

backend_tests!(error_codes_and_statuses);

async fn error_codes_and_statuses(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.student();
    let t = Some(token.as_str());
    let (s, b) = post_raw(&app, t, json!({"query": "{ mySessions { id "})).await;
    assert_eq!((s, code(&b)), (400, Some("GRAPHQL_PARSE_FAILED")), "{b}");
    let (s, b) = post_raw(&app, t, json!({"query": "{ noSuchField }"})).await;
    assert_eq!(
        (s, code(&b)),
        (400, Some("GRAPHQL_VALIDATION_FAILED")),
        "{b}"
    );
    let (s, b) = post_raw(&app, None, json!({"query": "{ mySessions { id } }"})).await;
    assert_eq!((s, code(&b)), (200, Some("UNAUTHENTICATED")), "{b}");
    let (s, b) = post_raw(&app, t, json!({"query": "mutation { submitSession(id: \"00000000-0000-0000-0000-000000000000\") { id } }"})).await;
    assert_eq!((s, code(&b)), (200, Some("NOT_FOUND")), "{b}");
    let (s, b) = post_raw(
        &app,
        t,
        json!({"query": "mutation { importQuestions(input: []) { created } }"}),
    )
    .await;
    assert_eq!((s, code(&b)), (200, Some("FORBIDDEN")), "{b}");
    let admin = app.admin_token();
    let (s, b) = post_raw(&app, Some(&admin), json!({"query": "mutation { importQuestions(input: [{stem: \"x\", options: [\"a\"], correctIndex: 0, yearId: 1}]) { created } }"})).await;
    assert_eq!((s, code(&b)), (200, Some("BAD_USER_INPUT")), "{b}");
    assert!(
        b["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("item 0"),
        "{b}"
    );
}

/// Starts another server instance on the same config (same database and Redis prefix).
pub async fn second_instance(app: &TestApp) -> (String, tokio::task::JoinHandle<()>) {
    let application = examsync::Application::build(app.config.clone())
        .await
        .unwrap();
    let base = format!("http://{}", application.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let _ = application.run_until_stopped(std::future::pending()).await;
    });
    (base, handle)
}

fn nested_of_type(n: usize) -> String {
    let mut q = String::from("name");
    for _ in 0..n {
        q = format!("ofType {{ {q} }}");
    }
    format!("{{ __type(name: \"Query\") {{ {q} }} }}")
}

backend_tests!(
    limits_just_under_pass_just_over_fail,
    persisted_queries_round_trip
);

async fn limits_just_under_pass_just_over_fail(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, |c| {
        c.graphql_max_complexity = 16;
        c.graphql_max_aliases = 3;
    })
    .await;
    let (_, token) = app.student();
    let t = Some(token.as_str());
    let message = |b: &Value| {
        b["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // Depth (default 15): `__type` + n × `ofType` + `name` = n + 2 levels.
    let (s, b) = post_raw(&app, t, json!({"query": nested_of_type(13)})).await;
    assert_eq!(s, 200, "depth 15 passes: {b}");
    let (s, b) = post_raw(&app, t, json!({"query": nested_of_type(14)})).await;
    assert_eq!(
        (s, code(&b)),
        (400, Some("GRAPHQL_VALIDATION_FAILED")),
        "{b}"
    );
    assert!(message(&b).contains("deep"), "{b}");
    // Complexity (16 here): one point per field.
    let sessions = "mySessions { id offlineSessionId mode status year totalQuestions answeredCount correctCount startedAt }";
    let status = "syncStatus { ackedCount duplicateCount rejectedCount lastSyncAt }";
    let (s, b) = post_raw(
        &app,
        t,
        json!({"query": format!("{{ {sessions} {status} }}")}),
    )
    .await;
    assert_eq!(s, 200, "complexity 15 passes: {b}");
    assert!(b.get("errors").is_none(), "{b}");
    let (s, b) = post_raw(
        &app,
        t,
        json!({"query": format!("{{ {sessions} {status} again: syncStatus {{ ackedCount }} }}")}),
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (400, Some("GRAPHQL_VALIDATION_FAILED")),
        "{b}"
    );
    assert!(message(&b).contains("complex"), "{b}");
    // Aliases (3 here).
    let (s, _) = post_raw(&app, t, json!({"query": "{ a: syncStatus { ackedCount } b: syncStatus { ackedCount } c: syncStatus { ackedCount } }"})).await;
    assert_eq!(s, 200);
    let (s, b) = post_raw(&app, t, json!({"query": "{ a: syncStatus { ackedCount } b: syncStatus { ackedCount } c: syncStatus { ackedCount } d: syncStatus { ackedCount } }"})).await;
    assert_eq!(
        (s, code(&b)),
        (400, Some("GRAPHQL_VALIDATION_FAILED")),
        "{b}"
    );
    // Batched requests are refused.
    let (s, b) = post_raw(&app, t, json!([{"query": "{ syncStatus { ackedCount } }"}])).await;
    assert_eq!((s, code(&b)), (400, Some("BAD_USER_INPUT")));
}

/// The standard introspection query is never refused by the default limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_query_passes_default_limits() {
    let app = spawn_app(Backend::Sqlite).await;
    let (s, b) = post_raw(&app, None, json!({"query": INTROSPECTION_QUERY})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("errors").is_none(), "{b}");
    let types = b["data"]["__schema"]["types"].as_array().unwrap();
    assert!(types.iter().any(|t| t["name"] == "TestPackage"));
}

async fn persisted_queries_round_trip(backend: Backend) {
    use sha2::{Digest, Sha256};
    let app = spawn_app(backend).await;
    let (_, token) = app.student();
    let query = "query Status { syncStatus { ackedCount rejectedCount } }";
    let hash = hex::encode(Sha256::digest(query.as_bytes()));
    let ext = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}}).to_string();
    // With Redis (the PostgreSQL run) a second instance must know what the first registered.
    let (other_base, _other) = if backend == Backend::Postgres {
        second_instance(&app).await
    } else {
        (app.base.clone(), tokio::spawn(async {}))
    };
    let get = |base: String| {
        let client = app.client.clone();
        let token = token.clone();
        let ext = ext.clone();
        async move {
            let r = client
                .get(format!("{base}/graphql"))
                .query(&[("extensions", ext.as_str()), ("operationName", "Status")])
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let cache = r
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), cache, r.json::<Value>().await.unwrap())
        }
    };
    let (s, cache, b) = get(other_base.clone()).await;
    assert_eq!(
        (s, code(&b)),
        (200, Some("PERSISTED_QUERY_NOT_FOUND")),
        "{b}"
    );
    assert!(
        cache.unwrap_or_default().contains("no-store"),
        "a miss is never cached"
    );
    // Wrong hash for the query.
    let (s, b) = post_raw(&app, Some(&token), json!({"query": "{ syncStatus { ackedCount } }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}})).await;
    assert_eq!((s, code(&b)), (400, Some("BAD_USER_INPUT")), "{b}");
    // Register on the first instance.
    let (s, b) = post_raw(&app, Some(&token), json!({"query": query, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}})).await;
    assert_eq!(s, 200);
    assert_eq!(b["data"]["syncStatus"]["ackedCount"], 0, "{b}");
    // Hit over GET (on the other instance when there is one).
    let (s, _, b) = get(other_base).await;
    assert_eq!(s, 200);
    assert_eq!(b["data"]["syncStatus"]["rejectedCount"], 0, "{b}");
}

/// GraphiQL in a real headless browser: the page loads only local assets, a `packages`
/// query with a pasted token returns data, and no request goes to another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_works_offline_in_a_real_browser() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/graphiql.mjs");
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules");
    let ready = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new(modules).exists();
    if !ready {
        if crate::helpers::services_required() {
            panic!(
                "chromium or tests/browser/node_modules missing (run: apt-get install chromium; cd tests/browser && npm ci)"
            );
        }
        examsync_test_support::report_skip("chromium or tests/browser/node_modules missing");
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.token(uuid::Uuid::new_v4(), examsync::auth::Role::Student);
    let output = tokio::process::Command::new("node")
        .arg(script)
        .env("EXAMSYNC_URL", &app.base)
        .env("EXAMSYNC_TOKEN", &token)
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "browser check failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The JavaScript hash recipes of docs/mobile/offline.md, run by node against the vectors.
#[tokio::test]
async fn documented_javascript_recipes_match_the_vectors() {
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
    let output = tokio::process::Command::new("node")
        .args(["--test", "tests/node/"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

const INTROSPECTION_QUERY: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name }
    mutationType { name }
    subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description
    args { ...InputValue }
    type { ...TypeRef }
    isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"#;

/// Listing N packages with their questions, or N sessions, costs a number of SQL
/// statements that does not grow with N (DataLoaders, set-wise queries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_free_of_n_plus_one_queries() {
    use std::sync::atomic::Ordering;
    let app = spawn_app(Backend::Sqlite).await;
    let admin = app.admin_token();
    let (_, student) = app.student();
    let statements = || app.state.db_statements.load(Ordering::SeqCst);
    let query = "{ packages { id name versionHash questionCount questions { id questionId correctIndex } } mySessions { id answeredCount } }";
    let mut costs = Vec::new();
    for theme in 1..=8 {
        app.import_questions(json!([
            crate::helpers::question(
                &format!("Q{theme}a"),
                &["a", "b"],
                0,
                1,
                Some(1),
                Some(theme)
            ),
            crate::helpers::question(
                &format!("Q{theme}b"),
                &["a", "b", "c"],
                2,
                1,
                Some(1),
                Some(theme)
            ),
        ]))
        .await;
        let (_, built) = app
            .graphql(
                Some(&admin),
                "mutation($t: Int!) { buildPackage(input: {name: \"T\", scope: THEME, themeId: $t, publish: true}) { id } }",
                json!({"t": theme}),
            )
            .await;
        assert!(built.get("errors").is_none(), "{built}");
        // One more offline session for the student.
        let qid = uuid::Uuid::parse_str(
            app.graphql(
                Some(&admin),
                "{ packages(filter: {themeId: 1}) { questions { questionId } } }",
                Value::Null,
            )
            .await
            .1["data"]["packages"][0]["questions"][0]["questionId"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let item = crate::sync::attempt(qid, 0, &crate::sync::ago(1), Some(uuid::Uuid::new_v4()));
        crate::sync::sync(&app, crate::sync::Surface::Rest, &student, &[item], None).await;
        // Warm up (user row, caches), then measure one listing.
        app.graphql(Some(&student), query, Value::Null).await;
        let before = statements();
        let (status, body) = app.graphql(Some(&student), query, Value::Null).await;
        let after = statements();
        assert_eq!(status, 200);
        assert_eq!(
            body["data"]["packages"].as_array().unwrap().len(),
            theme as usize
        );
        assert_eq!(
            body["data"]["mySessions"].as_array().unwrap().len(),
            theme as usize
        );
        costs.push(after - before);
    }
    assert!(
        costs.iter().all(|c| *c == costs[1]),
        "statements per listing grew with N: {costs:?}"
    );
    assert!(costs[7] <= 5, "{costs:?}");
}

/// A real third-party GraphQL client (Python `gql`) fetches the schema by introspection,
/// validates its documents against it, and runs `packages` and `syncAttempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_client_interop() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import gql"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        if crate::helpers::services_required() {
            panic!("python3 with gql is required (pip install -r tests/interop/requirements.txt)");
        }
        examsync_test_support::report_skip("python gql missing");
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app
        .import_questions(json!([crate::helpers::question(
            "Interop",
            &["a", "b"],
            0,
            3,
            None,
            None
        )]))
        .await;
    let (_, built) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation { buildPackage(input: {name: \"Y3\", scope: YEAR, yearId: 3, publish: true}) { id } }",
            Value::Null,
        )
        .await;
    assert!(built.get("errors").is_none(), "{built}");
    let (_, token) = app.student();
    let output = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/gql_client.py"
        ))
        .env("EXAMSYNC_URL", &app.base)
        .env("EXAMSYNC_TOKEN", &token)
        .env("EXAMSYNC_QUESTION_ID", ids[0].to_string())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Production mode drops "did you mean" suggestions; introspection can be turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_and_introspection_switch() {
    let dev = spawn_app(Backend::Sqlite).await;
    let (_, token) = dev.student();
    let (_, b) = post_raw(&dev, Some(&token), json!({"query": "{ mySession { id } }"})).await;
    assert!(
        b["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Did you mean"),
        "{b}"
    );

    let prod = crate::helpers::spawn_app_with(Backend::Sqlite, |c| {
        c.production = true;
        c.graphql_introspection = false;
    })
    .await;
    let (_, token) = prod.student();
    let (s, b) = post_raw(
        &prod,
        Some(&token),
        json!({"query": "{ mySession { id } }"}),
    )
    .await;
    assert_eq!((s, code(&b)), (400, Some("GRAPHQL_VALIDATION_FAILED")));
    assert!(
        !b["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Did you mean"),
        "{b}"
    );
    let (_, b) = post_raw(
        &prod,
        Some(&token),
        json!({"query": "{ __schema { types { name } } }"}),
    )
    .await;
    assert!(
        b["data"]["__schema"].is_null() || b.get("errors").is_some(),
        "{b}"
    );
    let (s, b) = post_raw(
        &prod,
        Some(&token),
        json!({"query": "{ syncStatus { ackedCount } }"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}
