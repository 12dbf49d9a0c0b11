//! GraphQL transport: error codes, HTTP statuses, media types, limits, persisted queries,
//! trusted documents, GraphiQL, the SDL and third-party clients.
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// POSTs as current clients do (`Accept: application/graphql-response+json`), so request
/// errors get 4xx statuses.
async fn post_raw(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url("/graphql"))
        .header("accept", GRAPHQL_RESPONSE_JSON)
        .json(&body);
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
    // About Redis's answers, not its delays: a Redis call slowed past the default timeout
    // by a loaded machine would fall back (and split the state) as a fault would.
    let app = spawn_app_with(backend, |c| c.redis_timeout_ms = 10_000).await;
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
        c.graphql_introspection = Some(false);
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

/// A raw request's outcome: status, `Content-Type`, `Cache-Control`, body.
struct Outcome {
    status: u16,
    content_type: String,
    cache_control: String,
    body: Value,
}

async fn outcome(request: reqwest::RequestBuilder) -> Outcome {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, cache_control) = (header("content-type"), header("cache-control"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Outcome {
        status,
        content_type,
        cache_control,
        body,
    }
}

fn post_with(
    app: &TestApp,
    token: &str,
    accept: Option<&str>,
    body: &str,
) -> reqwest::RequestBuilder {
    let mut request = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request
}

backend_tests!(media_types_and_statuses_follow_graphql_over_http);

/// GraphQL over HTTP: the response media type follows `Accept`; request errors are 4xx
/// without `data` for `application/graphql-response+json` and 200 for `application/json`;
/// malformed requests are 4xx either way.
async fn media_types_and_statuses_follow_graphql_over_http(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.student();
    let ok = r#"{"query": "{ syncStatus { ackedCount } }"}"#;
    for (accept, expected) in [
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (Some("application/json"), "application/json"),
        (Some(GRAPHQL_RESPONSE_JSON), GRAPHQL_RESPONSE_JSON),
        (
            Some("application/graphql-response+json, application/json;q=0.9"),
            GRAPHQL_RESPONSE_JSON,
        ),
    ] {
        let o = outcome(post_with(&app, &token, accept, ok)).await;
        assert_eq!(o.status, 200, "{accept:?}: {}", o.body);
        assert!(
            o.content_type.starts_with(expected),
            "{accept:?}: {}",
            o.content_type
        );
        assert!(
            o.content_type.contains("charset=utf-8"),
            "{}",
            o.content_type
        );
        assert_eq!(o.body["data"]["syncStatus"]["ackedCount"], 0);
    }
    let o = outcome(post_with(&app, &token, Some("text/html"), ok)).await;
    assert_eq!(o.status, 406, "{}", o.body);
    assert_eq!(o.body["errors"][0]["extensions"]["code"], "NOT_ACCEPTABLE");

    // Request errors: parse, validation, variable coercion.
    let cases = [
        (r#"{"query": "{"}"#, "GRAPHQL_PARSE_FAILED"),
        (
            r#"{"query": "{ noSuchField }"}"#,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            r#"{"query": "query($id: UUID!) { package(id: $id) { id } }", "variables": {"id": null}}"#,
            "BAD_USER_INPUT",
        ),
        (
            r#"{"query": "query($n: Int) { packages(filter: {yearId: $n}) { id } }", "variables": {"n": "three"}}"#,
            "BAD_USER_INPUT",
        ),
    ];
    for (body, code) in cases {
        let o = outcome(post_with(&app, &token, Some(GRAPHQL_RESPONSE_JSON), body)).await;
        assert_eq!(
            (o.status, o.body["errors"][0]["extensions"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {}",
            o.body
        );
        assert!(
            o.body.get("data").is_none(),
            "no data on a request error: {}",
            o.body
        );
        let o = outcome(post_with(&app, &token, Some("application/json"), body)).await;
        assert_eq!(
            (o.status, o.body["errors"][0]["extensions"]["code"].as_str()),
            (200, Some(code)),
            "{body}: {}",
            o.body
        );
        assert!(o.content_type.starts_with("application/json"));
    }
    // An execution error keeps `data` (null) and 200 with either media type.
    let mut request = app
        .client
        .post(app.url("/graphql"))
        .header("accept", GRAPHQL_RESPONSE_JSON)
        .json(&json!({"query": "{ syncStatus { ackedCount } }"}));
    request = request.header("authorization", "Bearer nope");
    let o = outcome(request).await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert!(o.body.get("data").is_some_and(Value::is_null), "{}", o.body);
    assert_eq!(o.body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    // Malformed requests: 4xx whatever the Accept.
    for accept in [Some(GRAPHQL_RESPONSE_JSON), Some("application/json"), None] {
        for body in [
            "{not json",
            r#"{"query": 1}"#,
            r#"{"query": "{ __typename }", "operationName": {"a": 1}}"#,
            r#"{"query": "{ __typename }", "variables": "x"}"#,
            r#"{"query": "{ __typename }", "variables": [1]}"#,
            r#"{"query": "{ __typename }", "extensions": false}"#,
            r#"{"notquery": "{ __typename }"}"#,
            r#"[{"query": "{ __typename }"}]"#,
            "",
        ] {
            let o = outcome(post_with(&app, &token, accept, body)).await;
            assert_eq!(o.status, 400, "{accept:?} {body}: {}", o.body);
            assert!(
                o.body["errors"][0]["extensions"]["code"].is_string(),
                "{}",
                o.body
            );
        }
    }
    // null parameters are allowed.
    let o = outcome(post_with(&app, &token, Some("application/json"), r#"{"query": "{ __typename }", "operationName": null, "variables": null, "extensions": null}"#)).await;
    assert_eq!(
        (o.status, &o.body),
        (200, &json!({"data": {"__typename": "Query"}}))
    );
    // A POST without a JSON Content-Type.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/json; charset=latin1"),
    ] {
        let mut request = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .body(ok);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let o = outcome(request).await;
        assert_eq!(o.status, 415, "{content_type:?}: {}", o.body);
        assert_eq!(
            o.body["errors"][0]["extensions"]["code"],
            "UNSUPPORTED_MEDIA_TYPE"
        );
    }
    // GET: queries run, mutations are 405, variables must be an object.
    let get = |pairs: Vec<(&'static str, String)>, accept: &'static str| {
        app.client
            .get(app.url("/graphql"))
            .bearer_auth(&token)
            .header("accept", accept)
            .query(&pairs)
    };
    let o = outcome(get(
        vec![("query", "{ syncStatus { ackedCount } }".into())],
        "application/json",
    ))
    .await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(
        o.cache_control, "private, no-store",
        "an authenticated answer stays private"
    );
    let response = get(
        vec![(
            "query",
            "mutation { submitSession(id: \"00000000-0000-0000-0000-000000000000\") { id } }"
                .into(),
        )],
        GRAPHQL_RESPONSE_JSON,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let o = outcome(get(
        vec![
            ("query", "{ __typename }".into()),
            ("variables", "[1]".into()),
        ],
        GRAPHQL_RESPONSE_JSON,
    ))
    .await;
    assert_eq!(o.status, 400, "{}", o.body);
    let o = outcome(get(vec![("query", "{ __typename }".into())], "text/plain")).await;
    assert_eq!(o.status, 406, "{}", o.body);
    assert_eq!(o.body["errors"][0]["extensions"]["code"], "NOT_ACCEPTABLE");
}

/// Hostile nesting of any depth, and width, is `GRAPHQL_VALIDATION_FAILED`: never a parse
/// error, a panic or a stack overflow; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_nesting_is_a_validation_failure() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = app.student();
    let t = Some(token.as_str());
    let nested_fields = |n: usize| format!("{{ {}x{} }}", "a { ".repeat(n), " }".repeat(n));
    let mut documents = vec![];
    for n in [20, 47, 60, 64, 65, 200, 10_000, 100_000] {
        documents.push((format!("{n} selection sets"), nested_fields(n)));
    }
    documents.push(("ofType 200".into(), nested_of_type(200)));
    let list = |n: usize| {
        format!(
            "{{ packages(filter: {{yearId: {}1{}}}) {{ id }} }}",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    documents.push(("list value 100000".into(), list(100_000)));
    let object = |n: usize| {
        format!(
            "{{ packages(filter: {}{{}}{}) {{ id }} }}",
            "{scope: ".repeat(n),
            "}".repeat(n)
        )
    };
    documents.push(("object value 100000".into(), object(100_000)));
    documents.push((
        "fragments 50 deep".into(),
        {
            let mut text = String::from("{ ...F0 }");
            for i in 0..50 {
                text.push_str(&format!(" fragment F{i} on Query {{ __type(name: \"Query\") {{ ofType {{ ...G{i} }} }} }} fragment G{i} on __Type {{ ofType {{ name }} }}"));
            }
            text
        },
    ));
    documents.push((
        "wide 1 MB of fields".into(),
        format!("{{ {} }}", "a ".repeat(500_000)),
    ));
    documents.push((
        "wide 40000 fields".into(),
        format!("{{ {} }}", "syncStatus { ackedCount } ".repeat(20_000)),
    ));
    documents.push((
        "aliases 5000".into(),
        format!(
            "{{ {} }}",
            (0..5000)
                .map(|i| format!("a{i}: __typename"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ));
    for (name, query) in &documents {
        let started = std::time::Instant::now();
        let (s, b) = post_raw(&app, t, json!({"query": query})).await;
        let code = code(&b);
        // The fragment chain fails on its unknown fragments or its depth: validation
        // either way.
        assert_eq!(
            (s, code),
            (400, Some("GRAPHQL_VALIDATION_FAILED")),
            "{name}: {b}"
        );
        assert!(b.get("data").is_none(), "{name}");
        eprintln!(
            "{name}: {} bytes refused in {:?}",
            query.len(),
            started.elapsed()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    let (s, b) = post_raw(&app, t, json!({"query": "{ syncStatus { ackedCount } }"})).await;
    assert_eq!(
        (s, &b["data"]["syncStatus"]["ackedCount"]),
        (200, &json!(0)),
        "still serving: {b}"
    );
}

/// Runs a node script of tests/graphql-http against `app`; `None` when node or its
/// modules are missing here (then the caller skips, unless CI requires it).
async fn node_script(script: &str, envs: &[(&str, &str)]) -> Option<std::process::Output> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graphql-http");
    if !std::path::Path::new(dir).join("node_modules").exists() {
        if crate::helpers::services_required() {
            panic!(
                "tests/graphql-http/node_modules missing (run: cd tests/graphql-http && npm ci)"
            );
        }
        examsync_test_support::report_skip("tests/graphql-http/node_modules missing");
        return None;
    }
    let mut command = tokio::process::Command::new("node");
    command.arg(script).current_dir(dir);
    for (k, v) in envs {
        command.env(k, v);
    }
    Some(command.output().await.expect("node runs"))
}

fn print_output(output: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

backend_tests!(graphql_over_http_audit_passes);

/// The GraphQL-over-HTTP audit (npm graphql-http `auditServer`) with a token: every MUST
/// and SHOULD, and the 400s for mistyped parameters, are ok.
async fn graphql_over_http_audit_passes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.student();
    let Some(output) = node_script(
        "audit.mjs",
        &[("EXAMSYNC_URL", &app.base), ("EXAMSYNC_TOKEN", &token)],
    )
    .await
    else {
        return;
    };
    let printed = print_output(&output);
    eprintln!("{printed}");
    assert!(output.status.success(), "audit failed:\n{printed}");
}

/// `schema.graphql` is the served schema, as an independent implementation (graphql-js
/// `buildClientSchema` + `printSchema`) reads the live introspection result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_sdl_matches_live_introspection_in_graphql_js() {
    let app = spawn_app(Backend::Sqlite).await;
    let sdl = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let Some(output) = node_script(
        "print-sdl.mjs",
        &[("EXAMSYNC_URL", &app.base), ("EXAMSYNC_SDL", sdl)],
    )
    .await
    else {
        return;
    };
    assert!(
        output.status.success(),
        "schema.graphql differs from the served schema (run: cargo run -- schema > schema.graphql):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let live = String::from_utf8_lossy(&output.stdout);
    assert!(live.contains("scalar UUID @specifiedBy(url:"), "{live}");
    assert!(
        live.contains("status: QuestionStatus = PUBLISHED"),
        "{live}"
    );
}

fn manifest(operations: &[(&str, &str)]) -> Value {
    let operations: Vec<Value> = operations
        .iter()
        .map(|(name, body)| {
            json!({"id": examsync::hashing::sha256_hex(body.as_bytes()), "name": name, "type": "query", "body": body})
        })
        .collect();
    json!({"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations})
}

fn metric(text: &str, code: &str) -> f64 {
    let prefix = format!("examsync_graphql_refused_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

backend_tests!(trusted_documents_run_only_listed_operations);

/// With trusted documents (two app versions: a directory and a file), listed operations
/// run by id (POST and GET) or exact text; other ids and texts are refused and counted;
/// introspection follows its switch; a listed GET by id without a token is cacheable.
async fn trusted_documents_run_only_listed_operations(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let status = "query Status { syncStatus { ackedCount } }";
    let sessions = "query Sessions { mySessions { id } }";
    let public = "query Name { __typename }";
    let versions = dir.path().join("android");
    std::fs::create_dir(&versions).unwrap();
    std::fs::write(
        versions.join("1.0.json"),
        manifest(&[("Status", status)]).to_string(),
    )
    .unwrap();
    let ios = dir.path().join("ios-2.0.json");
    std::fs::write(
        &ios,
        manifest(&[("Sessions", sessions), ("Name", public)]).to_string(),
    )
    .unwrap();
    let paths = vec![versions, ios];
    let app =
        crate::helpers::spawn_app_with(backend, |c| c.graphql_trusted_documents = paths.clone())
            .await;
    let (_, token) = app.student();
    let t = Some(token.as_str());
    let id = |body: &str| examsync::hashing::sha256_hex(body.as_bytes());
    let by_id = |hash: String| json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}});
    let metrics_text = || async {
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics_text().await;

    // Listed: by id (from either manifest) and by exact text.
    let (s, b) = post_raw(&app, t, by_id(id(status))).await;
    assert_eq!(
        (s, &b["data"]["syncStatus"]["ackedCount"]),
        (200, &json!(0)),
        "{b}"
    );
    let (s, b) = post_raw(&app, t, by_id(id(sessions))).await;
    assert_eq!((s, &b["data"]["mySessions"]), (200, &json!([])), "{b}");
    let (s, b) = post_raw(&app, t, json!({"query": status})).await;
    assert_eq!(s, 200, "{b}");
    let mut with_both = by_id(id(status));
    with_both["query"] = json!(status);
    let (s, _) = post_raw(&app, t, with_both).await;
    assert_eq!(s, 200);
    // Over GET by id; without a token a listed GET with no errors is CDN-cacheable.
    let ext = by_id(id(public))["extensions"].to_string();
    let o = outcome(
        app.client
            .get(app.url("/graphql"))
            .query(&[("extensions", ext.as_str())]),
    )
    .await;
    assert_eq!(
        (o.status, &o.body),
        (200, &json!({"data": {"__typename": "Query"}}))
    );
    assert_eq!(o.cache_control, "public, max-age=60");
    let ext = by_id(id(status))["extensions"].to_string();
    let o = outcome(
        app.client
            .get(app.url("/graphql"))
            .bearer_auth(&token)
            .query(&[("extensions", ext.as_str())]),
    )
    .await;
    assert_eq!(
        (o.status, &o.body["data"]["syncStatus"]["ackedCount"]),
        (200, &json!(0)),
        "{}",
        o.body
    );
    assert_eq!(o.cache_control, "private, no-store");

    // Refused: another id (also when it comes with its text: no registration), other
    // text (one space differs), and introspection stays allowed while its switch is on.
    let other = "query Status { syncStatus { ackedCount rejectedCount } }";
    let (s, b) = post_raw(&app, t, by_id(id(other))).await;
    assert_eq!(
        (s, code(&b)),
        (400, Some("PERSISTED_QUERY_NOT_IN_LIST")),
        "{b}"
    );
    // Registration (text with its id) cannot add an operation.
    let mut register = by_id(id(other));
    register["query"] = json!(other);
    let (s, b) = post_raw(&app, t, register).await;
    assert_eq!((s, code(&b)), (400, Some("QUERY_NOT_IN_SAFELIST")), "{b}");
    let (s, b) = post_raw(&app, t, by_id(id(other))).await;
    assert_eq!(
        (s, code(&b)),
        (400, Some("PERSISTED_QUERY_NOT_IN_LIST")),
        "{b}"
    );
    let (s, b) = post_raw(&app, t, json!({"query": format!("{status} ")})).await;
    assert_eq!((s, code(&b)), (400, Some("QUERY_NOT_IN_SAFELIST")), "{b}");
    let (s, b) = post_raw(
        &app,
        t,
        json!({"query": "{ __typename syncStatus { ackedCount } }"}),
    )
    .await;
    assert_eq!((s, code(&b)), (400, Some("QUERY_NOT_IN_SAFELIST")), "{b}");
    let o = outcome(post_with(
        &app,
        &token,
        Some("application/json"),
        &json!({"query": other}).to_string(),
    ))
    .await;
    assert_eq!(
        (o.status, o.body["errors"][0]["extensions"]["code"].as_str()),
        (200, Some("QUERY_NOT_IN_SAFELIST"))
    );
    let o = outcome(
        app.client
            .get(app.url("/graphql"))
            .query(&[("extensions", by_id(id(other))["extensions"].to_string())]),
    )
    .await;
    assert_eq!(
        o.body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_IN_LIST"
    );
    assert!(
        o.cache_control.contains("no-store"),
        "a refusal is never cached"
    );
    let (s, b) = post_raw(&app, t, json!({"query": INTROSPECTION_QUERY})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["data"]["__schema"]["types"].is_array());

    let after = metrics_text().await;
    assert!(
        metric(&after, "PERSISTED_QUERY_NOT_IN_LIST")
            >= metric(&before, "PERSISTED_QUERY_NOT_IN_LIST") + 3.0,
        "{after}"
    );
    assert!(
        metric(&after, "QUERY_NOT_IN_SAFELIST") >= metric(&before, "QUERY_NOT_IN_SAFELIST") + 3.0,
        "{after}"
    );

    // With introspection off, introspection text is just unlisted text.
    let closed = crate::helpers::spawn_app_with(Backend::Sqlite, |c| {
        c.graphql_trusted_documents = paths.clone();
        c.graphql_introspection = Some(false);
    })
    .await;
    let (s, b) = post_raw(&closed, t, json!({"query": INTROSPECTION_QUERY})).await;
    assert_eq!((s, code(&b)), (400, Some("QUERY_NOT_IN_SAFELIST")), "{b}");
    let (s, b) = post_raw(&closed, t, by_id(id(status))).await;
    assert_eq!(s, 200, "{b}");
}

/// A manifest that does not parse, or an entry whose id is not its body's hash, stops
/// `serve` with a message naming the file and the entry.
#[test]
fn bad_manifest_stops_serve_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let good = manifest(&[("Status", "query Status { syncStatus { ackedCount } }")]);
    let mut wrong = good.clone();
    wrong["operations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "0".repeat(64), "name": "Tampered", "type": "query", "body": "query Tampered { mySessions { id } }"}));
    let cases = [
        (
            "wrong-id.json",
            wrong.to_string(),
            vec!["wrong-id.json", "operation 1", "Tampered", "SHA-256"],
        ),
        (
            "truncated.json",
            good.to_string()[..40].to_owned(),
            vec!["truncated.json", "not a persisted query manifest"],
        ),
    ];
    for (file, text, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(crate::helpers::binary())
            .arg("serve")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()),
            )
            .env_remove("REDIS_URL")
            .env("JWT_SECRET", crate::helpers::SECRET)
            .env("EXAMSYNC_ACCESS", "open")
            .env("EXAMSYNC_BIND", "127.0.0.1:0")
            .env(
                "EXAMSYNC_GRAPHQL_TRUSTED_DOCUMENTS",
                path.display().to_string(),
            )
            .output()
            .unwrap();
        assert!(!output.status.success(), "{file} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for part in expected {
            assert!(stderr.contains(part), "{file}: {part} missing in {stderr}");
        }
    }
}

/// Apollo's own JavaScript client with its persisted-queries link, against a server
/// running the manifest that Apollo's generator makes from tests/graphql-http/operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apollo_client_runs_trusted_documents() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graphql-http");
    if !std::path::Path::new(root).join("node_modules").exists() {
        if crate::helpers::services_required() {
            panic!(
                "tests/graphql-http/node_modules missing (run: cd tests/graphql-http && npm ci)"
            );
        }
        examsync_test_support::report_skip("tests/graphql-http/node_modules missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("persisted-query-manifest.json");
    let config = dir.path().join("persisted-query-manifest.config.json");
    std::fs::write(
        &config,
        json!({"documents": [format!("{root}/operations/*.graphql")], "output": manifest_path})
            .to_string(),
    )
    .unwrap();
    let generated = tokio::process::Command::new("node")
        .arg("node_modules/.bin/generate-persisted-query-manifest")
        .arg("--config")
        .arg(&config)
        .current_dir(root)
        .output()
        .await
        .unwrap();
    assert!(generated.status.success(), "{}", print_output(&generated));
    // Seed a published package, then serve the same database with the app's manifest.
    let app = spawn_app(Backend::Sqlite).await;
    app.import_questions(json!([crate::helpers::question(
        "Apollo",
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
    let mut config = app.config.clone();
    config.graphql_trusted_documents = vec![manifest_path.clone()];
    let trusted = examsync::Application::build(config).await.unwrap();
    let base = format!("http://{}", trusted.local_addr().unwrap());
    let _server = tokio::spawn(async move {
        let _ = trusted.run_until_stopped(std::future::pending()).await;
    });
    let (_, token) = app.student();
    let manifest_text = manifest_path.display().to_string();
    let Some(output) = node_script(
        "apollo-client.mjs",
        &[
            ("EXAMSYNC_URL", &base),
            ("EXAMSYNC_TOKEN", &token),
            ("EXAMSYNC_MANIFEST", &manifest_text),
        ],
    )
    .await
    else {
        return;
    };
    assert!(output.status.success(), "{}", print_output(&output));
}
