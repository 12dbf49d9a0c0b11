//! Every auth rule of docs/api.md section 3, on REST and GraphQL.
use examsync::auth::{Claims, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, PREVIOUS_SECRET, SECRET, TestApp, count_rows, spawn_app};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, role: &str) -> Value {
    json!({"sub": sub, "role": role, "exp": now() + 600, "iat": now(), "jti": "j", "type": "access"})
}

/// An unsigned `alg: none` token.
fn alg_none(claims: &Value) -> String {
    use base64_like::encode;
    format!(
        "{}.{}.",
        encode(br#"{"alg":"none","typ":"JWT"}"#),
        encode(claims.to_string().as_bytes())
    )
}

mod base64_like {
    /// URL-safe base64 without padding (enough for test tokens).
    pub fn encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

async fn rest_status(app: &TestApp, auth: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = app.client.get(app.url("/api/v1/tests/packages"));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, www, body)
}

async fn graphql_code(app: &TestApp, auth: Option<&str>, query: &str) -> Option<String> {
    let mut request = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({"query": query}));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let body: Value = request.send().await.unwrap().json().await.unwrap();
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

backend_tests!(
    auth_rules,
    user_row_created_on_first_sight,
    student_cannot_call_admin_operations
);

async fn auth_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = Uuid::new_v4().to_string();
    let good = sign(SECRET, &claims(&user, "STUDENT"));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some(format!("Basic {good}"))),
        ("malformed", Some("Bearer not.a.jwt".into())),
        ("garbage", Some("Bearer ✗✗✗".into())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(
                    SECRET,
                    &json!({"sub": user, "role": "STUDENT", "exp": now() - 10})
                )
            )),
        ),
        (
            "wrong key",
            Some(format!(
                "Bearer {}",
                sign("some-other-secret-0123456789", &claims(&user, "STUDENT"))
            )),
        ),
        (
            "alg none",
            Some(format!("Bearer {}", alg_none(&claims(&user, "ADMIN")))),
        ),
        (
            "wrong type",
            Some(format!(
                "Bearer {}",
                sign(
                    SECRET,
                    &json!({"sub": user, "role": "STUDENT", "exp": now() + 600, "type": "refresh"})
                )
            )),
        ),
        (
            "no sub",
            Some(format!(
                "Bearer {}",
                sign(SECRET, &json!({"role": "STUDENT", "exp": now() + 600}))
            )),
        ),
        (
            "sub not uuid",
            Some(format!(
                "Bearer {}",
                sign(SECRET, &claims("alice", "STUDENT"))
            )),
        ),
        (
            "unknown role",
            Some(format!(
                "Bearer {}",
                sign(SECRET, &claims(&user, "SUPERUSER"))
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                sign(SECRET, &json!({"sub": user, "role": "STUDENT"}))
            )),
        ),
        (
            "nbf an hour ahead",
            Some(format!(
                "Bearer {}",
                sign(
                    SECRET,
                    &json!({"sub": user, "role": "STUDENT", "exp": now() + 7200, "nbf": now() + 3600})
                )
            )),
        ),
        (
            "nbf past the leeway",
            Some(format!(
                "Bearer {}",
                sign(
                    SECRET,
                    &json!({"sub": user, "role": "STUDENT", "exp": now() + 7200, "nbf": now() + 90})
                )
            )),
        ),
        (
            "HS512",
            Some(format!(
                "Bearer {}",
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS512),
                    &claims(&user, "STUDENT"),
                    &EncodingKey::from_secret(SECRET.as_bytes())
                )
                .unwrap()
            )),
        ),
    ];
    for (name, auth) in &cases {
        let (status, www, body) = rest_status(&app, auth.as_deref()).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(www.as_deref(), Some("Bearer"), "{name}");
        assert_eq!(body["error_code"], "UNAUTHENTICATED", "{name}");
        assert_eq!(
            graphql_code(&app, auth.as_deref(), "{ mySessions { id } }")
                .await
                .as_deref(),
            Some("UNAUTHENTICATED"),
            "{name}"
        );
    }
    // Valid: current key, previous key (rotation), REVIEWER, and a token without optional claims.
    let valid = [
        good.clone(),
        sign(PREVIOUS_SECRET, &claims(&user, "STUDENT")),
        sign(SECRET, &claims(&user, "REVIEWER")),
        sign(
            SECRET,
            &json!({"sub": user, "role": "STUDENT", "exp": now() + 600}),
        ),
        examsync::auth::sign_token(SECRET, Uuid::new_v4(), Role::Admin, 60).unwrap(),
        // `nbf` passed, now, or within the 60 s leeway (an issuer's clock slightly ahead).
        sign(
            SECRET,
            &json!({"sub": user, "role": "STUDENT", "exp": now() + 600, "nbf": now() - 60}),
        ),
        sign(
            SECRET,
            &json!({"sub": user, "role": "STUDENT", "exp": now() + 600, "nbf": now() + 30}),
        ),
    ];
    for token in &valid {
        let (status, _, body) = rest_status(&app, Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            graphql_code(
                &app,
                Some(&format!("Bearer {token}")),
                "{ mySessions { id } }"
            )
            .await,
            None
        );
    }
    // The claims type accepts what the auth service issues.
    let _: Claims = serde_json::from_value(claims(&user, "STUDENT")).unwrap();
}

async fn user_row_created_on_first_sight(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, token) = app.student();
    assert_eq!(count_rows(&app.db, "users", "").await, 0);
    for _ in 0..3 {
        let (status, _, _) = rest_status(&app, Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, 200);
    }
    assert_eq!(count_rows(&app.db, "users", "").await, 1);
    let _ = id;
}

async fn student_cannot_call_admin_operations(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, student) = app.student();
    let auth = format!("Bearer {student}");
    let import = r#"mutation { importQuestions(input: [{stem: "S", options: ["a","b"], correctIndex: 0, yearId: 1}]) { created } }"#;
    assert_eq!(
        graphql_code(&app, Some(&auth), import).await.as_deref(),
        Some("FORBIDDEN")
    );
    assert_eq!(count_rows(&app.db, "questions", "").await, 0);
    let admin = format!("Bearer {}", app.admin_token());
    assert_eq!(graphql_code(&app, Some(&admin), import).await, None);
    assert_eq!(count_rows(&app.db, "questions", "").await, 1);
}
