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
