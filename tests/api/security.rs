//! Hostile and careless input: every route without a token or with an expired one,
//! other users' ids, oversized bodies and batches, deeply nested JSON, slow bodies.
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, SECRET, count_rows, spawn_app, spawn_app_with};
use crate::sync::{Surface, ago, attempt, bank, sync};

fn expired_token() -> String {
    let claims =
        json!({"sub": Uuid::new_v4(), "role": "ADMIN", "exp": chrono::Utc::now().timestamp() - 5});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

backend_tests!(
    every_route_needs_a_valid_token,
    other_users_data_is_never_revealed_or_changed
);

async fn every_route_needs_a_valid_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = Uuid::new_v4();
    let expired = expired_token();
    for auth in [None, Some(expired.as_str()), Some("garbage")] {
        let with = |r: reqwest::RequestBuilder| match auth {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let requests = [
            with(app.client.get(app.url("/api/v1/tests/packages"))),
            with(
                app.client
                    .get(app.url(&format!("/api/v1/tests/packages/{id}"))),
            ),
            with(
                app.client
                    .head(app.url(&format!("/api/v1/tests/packages/{id}"))),
            ),
            with(
                app.client
                    .post(app.url("/api/v1/sync/attempts:batch"))
                    .json(&json!({"attempts": []})),
            ),
        ];
        for request in requests {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{:?}", response.url());
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        for query in [
            "{ packages { id } }",
            "{ mySessions { id } }",
            "{ syncStatus { ackedCount } }",
            "mutation { submitSession(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
            "mutation { publishPackage(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
        ] {
            let (_, body) = app.graphql(auth, query, Value::Null).await;
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{query}: {body}"
            );
        }
    }
    // The unauthenticated parts stay open.
    for path in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(
            app.client.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    assert_eq!(
        count_rows(&app.db, "users", "").await,
        0,
        "no user row for a bad token"
    );
}

async fn other_users_data_is_never_revealed_or_changed(backend: Backend) {
    let app = spawn_app(backend).await;
    let q = bank(&app).await;
    let (_, alice) = app.student();
    let (_, mallory) = app.student();
    let offline = Uuid::new_v4();
    let item = attempt(q[0], 1, &ago(5), Some(offline));
    let (_, mine, _) = sync(
        &app,
        Surface::Rest,
        &alice,
        std::slice::from_ref(&item),
        None,
    )
    .await;
    let session = mine[0]["server_session_id"].clone();
    let attempt_id = mine[0]["server_attempt_id"].clone();

    // Replaying alice's exact item (same keys, same offline session) as mallory reveals nothing.
    let (_, theirs, _) = sync(
        &app,
        Surface::Rest,
        &mallory,
        std::slice::from_ref(&item),
        None,
    )
    .await;
    assert_eq!(theirs[0]["status"], "acked");
    assert_ne!(theirs[0]["server_attempt_id"], attempt_id);
    assert_ne!(theirs[0]["server_session_id"], session);
    // Using alice's server session id directly.
    let mut direct = attempt(q[1], 0, &ago(4), None);
    direct["session_id"] = session.clone();
    let (_, r, _) = sync(&app, Surface::Graphql, &mallory, &[direct], None).await;
    assert_eq!(r[0]["error_code"], "SESSION_NOT_FOUND");
    assert!(r[0]["server_session_id"].is_null());
    // Closing alice's session.
    let (_, body) = app
        .graphql(
            Some(&mallory),
            "mutation($id: UUID!) { submitSession(id: $id) { id } }",
            json!({"id": session}),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "NOT_FOUND");
    // Listing: mallory sees only the session made for mallory.
    let (_, body) = app
        .graphql(
            Some(&mallory),
            "{ mySessions { id } syncStatus { ackedCount } }",
            Value::Null,
        )
        .await;
    let ids: Vec<&Value> = body["data"]["mySessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, vec![&theirs[0]["server_session_id"]]);
    assert_eq!(body["data"]["syncStatus"]["ackedCount"], 1);
    // Alice's data is unchanged.
    let (_, body) = app
        .graphql(
            Some(&alice),
            "{ mySessions { id status answeredCount } }",
            Value::Null,
        )
        .await;
    assert_eq!(body["data"]["mySessions"][0]["id"], session);
    assert_eq!(body["data"]["mySessions"][0]["status"], "ACTIVE");
    assert_eq!(body["data"]["mySessions"][0]["answeredCount"], 1);
    // A student is refused admin operations.
    for mutation in [
        "mutation { buildPackage(input: {name: \"x\", scope: PROGRAM}) { id } }",
        "mutation { publishPackage(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
    ] {
        let (_, body) = app.graphql(Some(&mallory), mutation, Value::Null).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_bodies() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = app.student();
    let big = "x".repeat(1024 * 1024 + 1);
    // REST: 413 with the envelope; GraphQL: 413 too, never a 500.
    let r = app
        .post("/api/v1/sync/attempts:batch", &token)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error_code"],
        "PAYLOAD_TOO_LARGE"
    );
    let r = app
        .post("/graphql", &token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Deeply nested JSON.
    let nested = format!(
        "{{\"attempts\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = app
        .post("/api/v1/sync/attempts:batch", &token)
        .header("content-type", "application/json")
        .body(nested.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .post("/graphql", &token)
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let deep_query = format!("{{ {} }}", "a { ".repeat(5_000) + &"}".repeat(5_000));
    let r = app
        .post("/graphql", &token)
        .header("accept", "application/graphql-response+json")
        .json(&json!({"query": deep_query}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    let deep_variables = json!({"query": "query($v: JSON) { syncStatus { ackedCount } }", "variables": {"v": serde_json::from_str::<Value>(&format!("{}1{}", "[".repeat(120), "]".repeat(120))).unwrap()}});
    let r = app
        .post("/graphql", &token)
        .json(&deep_variables)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_client_error() || r.status() == 200,
        "{}",
        r.status()
    );
    // An oversized batch is refused whole.
    let q = bank(&app).await;
    let batch: Vec<Value> = (0..500)
        .map(|_| attempt(q[0], 0, &ago(1), Some(Uuid::new_v4())))
        .collect();
    let (status, _, _) = sync(&app, Surface::Rest, &token, &batch, None).await;
    assert_eq!(status, 400);
    assert_eq!(count_rows(&app.db, "attempts", "").await, 0);
    // The server is still healthy.
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A client that sends its body slowly is cut off by the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_bounded_by_the_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.request_timeout_secs = 2).await;
    let (_, token) = app.student();
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/sync/attempts:batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    // Dribble one byte every 200 ms until the server answers or closes.
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let mut buf = [0u8; 1024];
            tokio::select! {
                read = stream.read(&mut buf) => {
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => { response.extend_from_slice(&buf[..n]); break; }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stream.write_all(b" ").await.is_err() { break; }
                }
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server kept a slow body open for 15 s");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(6),
        "cut off after {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
