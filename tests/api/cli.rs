//! The `examsync` binary: `questions import`, `token`, `schema`, `serve --demo`, bad settings.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{SECRET, binary, count_rows};

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/cli.db?mode=rwc", dir.path().display())
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("run examsync")
}

#[tokio::test]
async fn questions_import_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("questions.json");
    let id = uuid::Uuid::new_v4();
    std::fs::write(
        &file,
        json!([
            {"id": id, "stem": "Which nerve supplies the diaphragm?", "options": ["Vagus", "Phrenic"], "correctIndex": 1, "yearId": 1},
            {"stem": "Second", "options": ["a", "b", "c"], "correctIndex": 2, "yearId": 2, "blockId": 3, "themeId": 4, "status": "DRAFT", "explanationMd": "x", "cognitiveLevel": "C1", "difficulty": "EASY"}
        ])
        .to_string(),
    )
    .unwrap();
    let url = sqlite_url(&dir);
    let out = run(
        &["questions", "import", file.to_str().unwrap()],
        &[("DATABASE_URL", &url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 created, 0 updated"), "{stdout}");
    // Upsert: the same file again updates.
    let out = run(
        &["questions", "import", file.to_str().unwrap()],
        &[("DATABASE_URL", &url)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 created, 1 updated"), "{stdout}");
    let db = examsync::db::connect(&url, 1).await.unwrap();
    assert_eq!(count_rows(&db, "questions", "").await, 3);
}

/// A database failure during `questions import` names its cause on stderr (an operator
/// needs it), instead of the "internal error" a client would see.
#[test]
fn questions_import_names_the_cause_of_a_database_failure() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let out = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("questions.json");
    std::fs::write(
        &file,
        json!([{"stem": "S", "options": ["a", "b"], "correctIndex": 0, "yearId": 1}]).to_string(),
    )
    .unwrap();
    // The same, migrated file opened read-only: the import's write fails in the database.
    let read_only = url.replace("mode=rwc", "mode=ro");
    let out = run(
        &["questions", "import", file.to_str().unwrap()],
        &[("DATABASE_URL", &read_only)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("readonly"),
        "the cause is missing: {stderr}"
    );
}

#[tokio::test]
async fn questions_import_refuses_an_invalid_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let cases = [
        (
            json!([{"stem": "ok", "options": ["a", "b"], "correctIndex": 0, "yearId": 1},
                {"stem": "bad", "options": ["only one"], "correctIndex": 0, "yearId": 1}]),
            "item 1",
        ),
        (
            json!([{"stem": "ok", "options": ["a", "b"], "correctIndex": 0, "yearId": 1},
                {"stem": "ok", "options": ["a", "b"], "correctIndex": 5, "yearId": 1}]),
            "item 1",
        ),
        (
            json!([{"stem": "", "options": ["a", "b"], "correctIndex": 0, "yearId": 1}]),
            "item 0",
        ),
        (
            json!([{"stem": "x", "options": ["a", "b"], "correctIndex": 0}]),
            "item 0",
        ),
    ];
    for (content, expected) in cases {
        let file = dir.path().join("bad.json");
        std::fs::write(&file, content.to_string()).unwrap();
        let out = run(
            &["questions", "import", file.to_str().unwrap()],
            &[("DATABASE_URL", &url)],
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let file = dir.path().join("not-json.json");
    std::fs::write(&file, "{oops").unwrap();
    let out = run(
        &["questions", "import", file.to_str().unwrap()],
        &[("DATABASE_URL", &url)],
    );
    assert!(!out.status.success());
    let db = examsync::db::connect(&url, 1).await.unwrap();
    examsync::db::migrate(&db).await.unwrap();
    assert_eq!(
        count_rows(&db, "questions", "").await,
        0,
        "nothing imported"
    );
}

#[test]
fn token_command_prints_a_verifiable_token() {
    let user = uuid::Uuid::new_v4().to_string();
    let out = run(
        &["token", "--user", &user, "--role", "ADMIN", "--ttl", "2h"],
        &[("JWT_SECRET", SECRET)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let verified = examsync::auth::TokenVerifier::new(SECRET, None)
        .verify(token.trim())
        .unwrap();
    assert_eq!(verified.id.to_string(), user);
    assert!(verified.is_admin());
    let out = run(&["token", "--user", &user, "--role", "ADMIN"], &[]);
    assert!(!out.status.success(), "no secret, no token");
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let cases = [
        (
            ("EXAMSYNC_RATE_LIMIT_PER_MINUTE", "lots"),
            "rate-limit-per-minute",
        ),
        (("DATABASE_URL", "mysql://x"), "database-url"),
        (("REDIS_URL", "http://x"), "redis-url"),
        (("EXAMSYNC_BIND", "not an address"), "bind"),
        (("JWT_SECRET", "short"), "jwt-secret"),
    ];
    for ((key, value), expected) in cases {
        let out = run(&["serve"], &[(key, value)]);
        assert!(!out.status.success(), "{key}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{key}: {stderr}");
    }
}

#[test]
fn schema_command_matches_the_committed_sdl() {
    let out = run(&["schema"], &[]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .unwrap_or_default();
    assert!(
        printed == committed,
        "schema.graphql is out of date with the code; run: cargo run -- schema > schema.graphql"
    );
}

/// `serve --demo` seeds the bank and prints tokens that work against the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_prints_working_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let mut child = Command::new(binary())
        .args(["serve", "--demo", "--bind", "127.0.0.1:0"])
        .env_remove("JWT_SECRET")
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut student, mut admin, mut base) = (None, None, None);
    while Instant::now() < deadline && (student.is_none() || admin.is_none() || base.is_none()) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let line = line.trim();
            if let Some(t) = line.strip_prefix("student token:") {
                student = Some(t.trim().to_owned());
            } else if let Some(t) = line.strip_prefix("admin token:") {
                admin = Some(t.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("GraphiQL:") {
                base = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches("/graphql").to_owned());
            }
        }
    }
    let (student, admin, base) = (
        student.expect("student token"),
        admin.expect("admin token"),
        base.expect("url"),
    );
    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{base}/api/v1/tests/packages"))
        .bearer_auth(&student)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().expect("items");
    assert!(!items.is_empty(), "{list}");
    let (status, body) = {
        let r = client
            .post(format!("{base}/graphql"))
            .bearer_auth(&admin)
            .json(&json!({"query": "{ mySessions { id } }"}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let _ = child.kill();
    let _ = child.wait();
    let db = examsync::db::connect(&url, 1).await.unwrap();
    assert!(count_rows(&db, "questions", "status = 'PUBLISHED'").await >= 2000);
}

/// `EXAMSYNC_LOG_FORMAT=json`: one JSON line per request with request id, route, status,
/// duration and user id, on stderr; never the token or the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_one_line_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(binary())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", sqlite_url(&dir))
        .env("JWT_SECRET", SECRET)
        .env("EXAMSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::helpers::wait_ready(&client, &format!("{base}/livez")).await;
    let user = uuid::Uuid::new_v4();
    let token =
        examsync::auth::sign_token(SECRET, user, examsync::auth::Role::Student, 600).unwrap();
    let secret_payload = "payload-marker-7f3a";
    let response = client
        .post(format!("{base}/api/v1/sync/attempts:batch"))
        .bearer_auth(&token)
        .header("x-request-id", "log-test-1")
        .json(&json!({"attempts": [{"client_attempt_id": secret_payload}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(!logs.contains(&token), "the token leaked into the logs");
    assert!(
        !logs.contains(secret_payload),
        "the payload leaked into the logs"
    );
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["fields"]["request_id"] == "log-test-1")
        .expect("a request line");
    let fields = &request["fields"];
    assert_eq!(fields["route"], "/api/v1/sync/attempts:batch");
    assert_eq!(fields["status"], 200);
    assert!(fields["duration_ms"].is_number());
    assert_eq!(fields["user_id"], user.to_string());
    let listening = lines
        .iter()
        .find(|l| l["fields"]["message"] == "examsync listening")
        .expect("start-up line");
    assert!(
        listening["fields"]["database"]
            .as_str()
            .unwrap()
            .starts_with("sqlite://")
    );
    assert_eq!(listening["fields"]["cache"], "in-process");
}

/// SIGTERM: the server stops accepting, lets the in-flight request finish, then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(binary())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env_remove("REDIS_URL")
        .env("DATABASE_URL", sqlite_url(&dir))
        .env("JWT_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    crate::helpers::wait_ready(&client, &format!("http://127.0.0.1:{port}/livez")).await;
    let token = examsync::auth::sign_token(
        SECRET,
        uuid::Uuid::new_v4(),
        examsync::auth::Role::Student,
        600,
    )
    .unwrap();
    // An in-flight request: headers and half of the body sent.
    let body = json!({"attempts": [{"client_attempt_id": "x"}]}).to_string();
    let (first, second) = body.split_at(body.len() / 2);
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/sync/attempts:batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused while the in-flight one still completes.
    assert!(
        client
            .get(format!("http://127.0.0.1:{port}/livez"))
            .send()
            .await
            .is_err()
    );
    stream.write_all(second.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("INVALID_ATTEMPT"), "{response}");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exited with {exit:?}");
}
