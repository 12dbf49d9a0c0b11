//! Findings 2–5 of issue 18 replayed as an attacker would: against the server binary
//! (`serve --demo`, SQLite) over TCP, with the process's memory and CPU read from `/proc`.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use examsync::auth::{Role, sign_token};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{SECRET, binary, wait_ready};

/// The server process, killed on drop.
struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in kB (`VmRSS` of `/proc/<pid>/status`).
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// CPU time used so far (user + system, fields 14 and 15 of `/proc/<pid>/stat`).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which may hold spaces and ends with ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): utime is field 14, stime field 15.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // Linux reports in USER_HZ, 100 per second on every supported architecture.
        Duration::from_millis(ticks * 10)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// The server binary replayed against: this build's, or `ATTACKER_SERVER_BIN` (another
/// build, e.g. the code before the fixes, to see each finding reproduce there).
fn server_binary() -> std::path::PathBuf {
    std::env::var_os("ATTACKER_SERVER_BIN").map_or_else(binary, Into::into)
}

/// Whether finding `n` is replayed: all of them, or those listed in `ATTACKER_FINDINGS`
/// (`3,5`), so that against an older build each can be seen to reproduce on its own.
fn replays(n: char) -> bool {
    std::env::var("ATTACKER_FINDINGS").map_or(true, |list| list.contains(n))
}

async fn start_demo() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(server_binary());
    // Only the settings given here: none of the test environment's.
    for (key, _) in std::env::vars() {
        if key.starts_with("EXAMSYNC_") || key == "REDIS_URL" || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    let child = command
        .args(["serve", "--demo", "--bind", &format!("127.0.0.1:{port}")])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/attacker.db?mode=rwc", dir.path().display()),
        )
        .env("JWT_SECRET", SECRET)
        // The replay is about cost: its student reads every package, as with a PROGRAM grant.
        .env("EXAMSYNC_ACCESS", "open")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    wait_ready(&reqwest::Client::new(), &server.url("/readyz")).await;
    server
}

async fn graphql(
    client: &reqwest::Client,
    server: &Server,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = client
        .post(server.url("/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
}

/// `examsync_package_builds_total{kind="delta"}` from `/metrics`.
async fn delta_builds(client: &reqwest::Client, server: &Server) -> u64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("examsync_package_builds_total") && l.contains("kind=\"delta\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Finding 2: a megabyte of comment per unauthenticated APQ POST, 150 times.
async fn anonymous_apq_flood(client: &reqwest::Client, server: &Server) {
    let (rss_before, cpu_before) = (server.rss_kb(), server.cpu());
    for i in 0..150 {
        let query = format!("# {i} {}\n{{ __typename }}", "c".repeat(1_000_000 - 64));
        let hash = hex::encode(Sha256::digest(query.as_bytes()));
        let status = client
            .post(server.url("/graphql"))
            .json(&json!({
                "query": query,
                "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}},
            }))
            .send()
            .await
            .unwrap()
            .status();
        // Answered (200), or refused by the per-address limit once it is spent.
        assert!(status == 200 || status == 429, "{status}");
    }
    let grown_mb = server.rss_kb().saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 48, "RSS grew {grown_mb} MB");
    // Comments are skipped in one flat scan, and past the per-address budget nothing is
    // parsed: a generous bound even for a debug build on a busy machine.
    let cpu = server.cpu() - cpu_before;
    assert!(cpu < Duration::from_secs(60), "{cpu:?} of CPU");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_two_to_five_replayed_against_the_binary() {
    let server = start_demo().await;
    let client = reqwest::Client::new();
    let student = sign_token(SECRET, uuid::Uuid::new_v4(), Role::Student, 3600).unwrap();
    let admin = sign_token(SECRET, uuid::Uuid::new_v4(), Role::Admin, 3600).unwrap();

    if replays('2') {
        anonymous_apq_flood(&client, &server).await;
    }

    // Finding 3: thirty aliases of every package with its questions, refused at once.
    let fields = "id questionId stem options correctIndex explanationMd yearId blockId themeId cognitiveLevel difficulty";
    let aliases: String = (0..30)
        .map(|i| format!("a{i}: packages {{ id questions {{ {fields} }} }} "))
        .collect();
    let (rss, cpu) = (server.rss_kb(), server.cpu());
    for _ in 0..4 * usize::from(replays('3')) {
        let body = graphql(
            &client,
            &server,
            Some(&student),
            &format!("{{ {aliases} }}"),
            json!({}),
        )
        .await;
        assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    }
    let cpu_used = server.cpu() - cpu;
    assert!(cpu_used < Duration::from_millis(500), "{cpu_used:?} of CPU");
    assert!(server.rss_kb().saturating_sub(rss) / 1024 < 16);

    // Finding 5: 25 aliased `syncAttempts` in one document.
    let batches: String = (0..25)
        .map(|i| format!("a{i}: syncAttempts(input: $input) {{ results {{ status }} }} "))
        .collect();
    if replays('5') {
        let body = graphql(
            &client,
            &server,
            Some(&student),
            &format!("mutation($input: SyncAttemptsInput!) {{ {batches} }}"),
            json!({"input": {"attempts": []}}),
        )
        .await;
        assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    }
    if !replays('4') {
        return;
    }

    // Finding 4: delta requests dropped mid-build build once, and the retry reads it.
    let list = graphql(
        &client,
        &server,
        Some(&admin),
        "{ packages(filter: {scope: BLOCK, yearId: 1, blockId: 11}) { id } }",
        json!({}),
    )
    .await;
    let v1 = list["data"]["packages"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let held = graphql(
        &client,
        &server,
        Some(&admin),
        "query($id: UUID!) { package(id: $id) { questions { questionId stem options correctIndex yearId blockId themeId } } }",
        json!({"id": v1}),
    )
    .await;
    let questions = held["data"]["package"]["questions"]
        .as_array()
        .unwrap()
        .clone();
    let revise = |q: &Value, note: &str| {
        json!({
            "id": q["questionId"], "stem": format!("{} ({note})", q["stem"].as_str().unwrap()),
            "options": q["options"], "correctIndex": q["correctIndex"], "yearId": q["yearId"],
            "blockId": q["blockId"], "themeId": q["themeId"],
        })
    };
    let import =
        "mutation($input: [QuestionInput!]!) { importQuestions(input: $input) { updated } }";
    let build = "mutation($input: BuildPackageInput!) { buildPackage(input: $input) { id } }";
    let publish_block = || async {
        let body = graphql(
            &client,
            &server,
            Some(&admin),
            build,
            json!({"input": {"name": "Block 11", "scope": "BLOCK", "yearId": 1, "blockId": 11, "publish": true}}),
        )
        .await;
        body["data"]["buildPackage"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let all: Vec<Value> = questions.iter().map(|q| revise(q, "revised")).collect();
    let body = graphql(
        &client,
        &server,
        Some(&admin),
        import,
        json!({"input": all}),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    publish_block().await;
    let one = vec![revise(&questions[0], "revised twice")];
    graphql(
        &client,
        &server,
        Some(&admin),
        import,
        json!({"input": one}),
    )
    .await;
    let v3 = publish_block().await;
    // Publishing prebuilt v1 → v2 and v2 → v3; v1 → v3 is cold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while delta_builds(&client, &server).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish prebuilt no delta"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = delta_builds(&client, &server).await;
    let path = server.url(&format!("/api/v1/tests/packages/{v3}/delta?from={v1}"));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    for _ in 0..5 {
        let _ = impatient
            .get(&path)
            .bearer_auth(&student)
            .header("accept-encoding", "br")
            .send()
            .await;
    }
    let retry = client
        .get(&path)
        .bearer_auth(&student)
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(delta_builds(&client, &server).await, before + 1);
}
