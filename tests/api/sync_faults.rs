//! Sync under faults, PostgreSQL (+ Redis) only: two instances racing on one batch, Redis
//! dying and coming back empty mid-run, and the server SIGKILLed mid-batch. Every check
//! counts what the database holds, not only what the responses say.
use std::{
    collections::{HashMap, HashSet},
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use examsync::{
    Application, Config,
    auth::{Role, sign_token},
    questions::{QuestionInput, QuestionStatus, import_questions},
};
use examsync_test_support::{Attempt, graphql_input, random_batch, rest_body};
use reqwest::Client;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    self, Backend, SECRET, TestDatabase, TestRedis, assert_no_orphans, count_rows, skip_postgres,
    test_config, wait_ready,
};

// ---------------------------------------------------------------------------------------
// Building batches and reading results.

/// `count` attempts of `offline` over distinct random questions of `bank`, answered in the
/// last hour 10 s apart (millisecond precision, as phones send them).
fn batch(bank: &[(Uuid, usize)], offline: Uuid, count: usize) -> Vec<Attempt> {
    random_batch(bank, offline, count, 10_000)
}

/// One result, whichever surface it came from (status in lower case).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    client_attempt_id: Option<Uuid>,
    status: String,
    server_attempt_id: Option<Uuid>,
    server_session_id: Option<Uuid>,
    error_code: Option<String>,
}

fn uuid_of(value: &Value) -> Option<Uuid> {
    value.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    Rest,
    Graphql,
}

/// Sends one batch; `Err` when the request as a whole failed (transport error or non-200).
async fn sync(
    client: &Client,
    base: &str,
    token: &str,
    surface: Surface,
    attempts: &[Attempt],
) -> Result<Vec<Outcome>, String> {
    let request = match surface {
        Surface::Rest => client
            .post(format!("{base}/api/v1/sync/attempts:batch"))
            .json(&rest_body(attempts, Some(Utc::now()))),
        Surface::Graphql => client.post(format!("{base}/graphql")).json(&json!({
            "query": "mutation($input: SyncAttemptsInput!) { syncAttempts(input: $input) { results { clientAttemptId status serverAttemptId serverSessionId errorCode message } } }",
            "variables": {"input": graphql_input(attempts, Some(Utc::now()))},
        })),
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("body of a {status} response: {e}"))?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let results = match surface {
        Surface::Rest => body["results"].as_array(),
        Surface::Graphql => {
            if body.get("errors").is_some() {
                return Err(format!("GraphQL errors: {body}"));
            }
            body["data"]["syncAttempts"]["results"].as_array()
        }
    }
    .ok_or_else(|| format!("no results in {body}"))?;
    let (id, status_field, attempt_field, session_field, code_field) = match surface {
        Surface::Rest => (
            "client_attempt_id",
            "status",
            "server_attempt_id",
            "server_session_id",
            "error_code",
        ),
        Surface::Graphql => (
            "clientAttemptId",
            "status",
            "serverAttemptId",
            "serverSessionId",
            "errorCode",
        ),
    };
    Ok(results
        .iter()
        .map(|r| Outcome {
            client_attempt_id: uuid_of(&r[id]),
            status: r[status_field].as_str().unwrap_or("?").to_lowercase(),
            server_attempt_id: uuid_of(&r[attempt_field]),
            server_session_id: uuid_of(&r[session_field]),
            error_code: r[code_field].as_str().map(str::to_owned),
        })
        .collect())
}

/// A batch's fate: not sent, the request failed, or its results.
type Answer = Option<Result<Vec<Outcome>, String>>;

/// Asserts one result per item, in request order, and none rejected.
fn assert_shape(attempts: &[Attempt], outcomes: &[Outcome], context: &str) {
    assert_eq!(
        outcomes.len(),
        attempts.len(),
        "{context}: one result per item"
    );
    for (a, o) in attempts.iter().zip(outcomes) {
        assert_eq!(
            o.client_attempt_id,
            Some(a.client_attempt_id),
            "{context}: order"
        );
        assert!(
            o.status == "acked" || o.status == "duplicate",
            "{context}: {o:?}"
        );
        assert!(
            o.server_attempt_id.is_some() && o.server_session_id.is_some(),
            "{context}: {o:?}"
        );
    }
}

/// Everything answered per idempotency key across a test: how often ACKED, and the ids.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Uuid, usize>,
    ids: HashMap<Uuid, (Uuid, Uuid)>,
}

impl Ledger {
    /// Records a response; every answer for a key must carry the ids it first got.
    fn record(&mut self, attempts: &[Attempt], outcomes: &[Outcome], context: &str) {
        assert_shape(attempts, outcomes, context);
        for (a, o) in attempts.iter().zip(outcomes) {
            let ids = (
                o.server_attempt_id.expect("attempt id"),
                o.server_session_id.expect("session id"),
            );
            if o.status == "acked" {
                *self.acked.entry(a.idempotency_key).or_default() += 1;
            }
            let first = *self.ids.entry(a.idempotency_key).or_insert(ids);
            assert_eq!(
                first, ids,
                "{context}: key {} changed ids",
                a.idempotency_key
            );
        }
    }

    fn assert_acked_once(&self, keys: impl IntoIterator<Item = Uuid>) {
        for key in keys {
            assert!(
                self.acked.get(&key).copied().unwrap_or(0) <= 1,
                "key {key} ACKED more than once"
            );
        }
        assert!(
            self.acked.values().all(|n| *n <= 1),
            "a key was ACKED twice"
        );
    }
}

async fn seed(db: &DatabaseConnection, count: usize) -> Vec<(Uuid, usize)> {
    let items: Vec<QuestionInput> = (0..count)
        .map(|n| {
            let options = 2 + n % 4;
            QuestionInput {
                id: None,
                stem: format!("Fault test question {n}"),
                options: (0..options).map(|o| format!("option {o}")).collect(),
                correct_index: (n % options) as i32,
                explanation_md: None,
                year_id: 1 + (n % 3) as i32,
                block_id: Some(1 + (n % 5) as i32),
                theme_id: None,
                cognitive_level: None,
                difficulty: None,
                status: Some(QuestionStatus::Published),
                media: None,
            }
        })
        .collect();
    let options: Vec<usize> = items.iter().map(|q| q.options.len()).collect();
    let imported = import_questions(db, items).await.expect("seed questions");
    imported.ids.into_iter().zip(options).collect()
}

fn student_token() -> (Uuid, String) {
    let user = Uuid::new_v4();
    (
        user,
        sign_token(SECRET, user, Role::Student, 3600).expect("token"),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn http_client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn readiness(client: &Client, base: &str) -> (u16, Value) {
    let response = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz json"))
}

/// Polls `/readyz` until its `status` is `want` (at most `within`).
async fn wait_readiness(client: &Client, base: &str, want: &str, within: Duration) -> (u16, Value) {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = readiness(client, base).await;
        if body["status"] == want || Instant::now() > deadline {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The facts the database holds about a set of keys of one user or more.
async fn db_counts(db: &DatabaseConnection) -> (i64, i64) {
    (
        count_rows(db, "attempts", "").await,
        count_rows(db, "idempotency_records", "").await,
    )
}

/// Every session's counters agree with its answers (each question counted once).
async fn assert_session_counters_consistent(db: &DatabaseConnection) {
    let inconsistent = count_rows(
        db,
        "test_sessions s",
        "s.answered_count <> (SELECT COUNT(*) FROM session_answers a WHERE a.session_id = s.id) \
         OR s.total_questions <> s.answered_count \
         OR s.correct_count <> (SELECT COUNT(*) FROM session_answers a WHERE a.session_id = s.id AND a.is_correct)",
    )
    .await;
    assert_eq!(
        inconsistent, 0,
        "session counters disagree with session_answers"
    );
    assert_no_orphans(db).await;
}

// ---------------------------------------------------------------------------------------
// A second in-process instance on an existing config (the first owns the database).

struct Instance {
    base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    async fn start(config: Config) -> Instance {
        let application = Application::build(config).await.expect("instance starts");
        let addr = application.local_addr().expect("bound address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = application
                .run_until_stopped(async {
                    let _ = rx.await;
                })
                .await;
        });
        Instance {
            base: format!("http://{addr}"),
            shutdown: Some(tx),
            server: Some(server),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. One batch, 8 clients, two instances.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_batch_from_eight_clients_on_two_instances_is_applied_once() {
    if skip_postgres() {
        return;
    }
    let (mut config, database, redis) = test_config(Backend::Postgres).await;
    config.rate_limit_per_minute = 0;
    let first = helpers::start(Backend::Postgres, config.clone(), database, redis).await;
    let second = Instance::start(config).await;
    let bases = [first.base.clone(), second.base.clone()];
    let bank = seed(&first.db, 80).await;
    let (user, token) = student_token();
    let client = http_client();

    const ROUNDS: usize = 3;
    const ITEMS: usize = 50;
    const CLIENTS: usize = 8;
    let mut sessions = HashSet::new();
    let mut all_attempt_ids = HashSet::new();
    for round in 0..ROUNDS {
        let offline = Uuid::new_v4();
        let attempts = Arc::new(batch(&bank, offline, ITEMS));
        // Clients 0..3 use REST, 4..7 GraphQL; even clients the first instance, odd the second.
        let calls = (0..CLIENTS).map(|c| {
            let (client, token, attempts) = (client.clone(), token.clone(), attempts.clone());
            let base = bases[c % 2].clone();
            let surface = if c < CLIENTS / 2 {
                Surface::Rest
            } else {
                Surface::Graphql
            };
            async move { sync(&client, &base, &token, surface, &attempts).await }
        });
        let responses = futures::future::join_all(calls).await;

        let mut acked = vec![0usize; ITEMS];
        let mut duplicate = vec![0usize; ITEMS];
        let mut ids: Vec<Option<(Uuid, Uuid)>> = vec![None; ITEMS];
        for (c, response) in responses.into_iter().enumerate() {
            let context = format!("round {round} client {c}");
            let outcomes = response.unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_shape(&attempts, &outcomes, &context);
            for (i, o) in outcomes.iter().enumerate() {
                match o.status.as_str() {
                    "acked" => acked[i] += 1,
                    "duplicate" => duplicate[i] += 1,
                    other => panic!("{context}: item {i} {other}"),
                }
                let pair = (
                    o.server_attempt_id.expect("attempt id"),
                    o.server_session_id.expect("session id"),
                );
                let first = *ids[i].get_or_insert(pair);
                assert_eq!(first, pair, "{context}: item {i} got other ids");
            }
        }
        for i in 0..ITEMS {
            assert_eq!(acked[i], 1, "round {round} item {i}: exactly one ACKED");
            assert_eq!(duplicate[i], CLIENTS - 1, "round {round} item {i}");
        }
        let round_sessions: HashSet<Uuid> = ids.iter().flatten().map(|(_, s)| *s).collect();
        assert_eq!(
            round_sessions.len(),
            1,
            "one server session per offline session"
        );
        sessions.extend(round_sessions.iter().copied());
        all_attempt_ids.extend(ids.iter().flatten().map(|(a, _)| *a));

        // The database: one attempt and one record per key, one session for the offline id.
        let db = &first.db;
        assert_eq!(
            count_rows(db, "attempts", "").await,
            (ITEMS * (round + 1)) as i64
        );
        assert_eq!(
            count_rows(db, "idempotency_records", "").await,
            (ITEMS * (round + 1)) as i64
        );
        assert_eq!(
            count_rows(
                db,
                "test_sessions",
                &format!("user_id = '{user}' AND offline_session_id = '{offline}'")
            )
            .await,
            1
        );
        let session = round_sessions.iter().next().copied().expect("a session");
        assert_eq!(
            count_rows(db, "session_answers", &format!("session_id = '{session}'")).await,
            ITEMS as i64
        );
    }
    assert_eq!(sessions.len(), ROUNDS);
    assert_eq!(all_attempt_ids.len(), ROUNDS * ITEMS);
    // The ids reported are the rows stored.
    let stored = count_rows(
        &first.db,
        "attempts",
        &format!(
            "id IN ({})",
            all_attempt_ids
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert_eq!(stored, (ROUNDS * ITEMS) as i64);
    assert_eq!(
        count_rows(&first.db, "test_sessions", "").await,
        ROUNDS as i64
    );
    assert_session_counters_consistent(&first.db).await;
    drop(second);
    first.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. Redis dies mid-run, then comes back empty.

/// A private `redis-server` child process, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer {
            port,
            child: Some(child),
        };
        for _ in 0..100 {
            if server.keys("*").await.is_some() {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {port} did not come up");
    }

    /// Keys matching `pattern`, or `None` when Redis does not answer.
    async fn keys(&self, pattern: &str) -> Option<Vec<String>> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async::<Vec<String>>(&mut conn)
            .await
            .ok()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_and_coming_back_empty_loses_no_answer() {
    if skip_postgres() {
        return;
    }
    let have_redis_server = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_redis_server {
        assert!(
            !helpers::services_required(),
            "redis-server is not installed but EXAMSYNC_REQUIRE_SERVICES=1"
        );
        examsync_test_support::report_skip("redis-server not installed");
        return;
    }
    let port = free_port();
    let mut redis = RedisServer::start(port).await.expect("redis-server starts");

    let database = TestDatabase::new(Backend::Postgres).await;
    let mut config = Config::with_database(database.url.clone());
    config.jwt_secret = Some(examsync::config::Secret(SECRET.into()));
    config.rate_limit_per_minute = 0;
    config.db_pool_size = 5;
    config.access = examsync::access::AccessMode::Open;
    config.redis_url = Some(redis.url());
    let prefix = format!("examsync-fault:{}:", Uuid::new_v4().simple());
    config.redis_prefix = prefix.clone();
    let app = helpers::start(Backend::Postgres, config, database, None).await;
    let bank = seed(&app.db, 60).await;
    let (user, token) = student_token();
    let client = http_client();
    let base = app.base.clone();
    let namespace = app.state.cache.namespace().to_owned();
    let idem_pattern = format!("{namespace}t*:{{{user}}}:idem:*");
    let mut ledger = Ledger::default();
    let mut keys: HashSet<Uuid> = HashSet::new();

    let offline = Uuid::new_v4();
    let b1 = batch(&bank, offline, 30);
    let b2 = batch(&bank, offline, 30);
    let b3 = batch(&bank, Uuid::new_v4(), 30);
    let b4 = batch(&bank, offline, 30);
    for b in [&b1, &b2, &b3, &b4] {
        keys.extend(b.iter().map(|a| a.idempotency_key));
    }
    let expect_all = |outcomes: &[Outcome], status: &str, context: &str| {
        assert!(
            outcomes.iter().all(|o| o.status == status),
            "{context}: expected all {status}: {outcomes:?}"
        );
    };

    // Phase 1: Redis up.
    assert_eq!(readiness(&client, &base).await.1["status"], "pass");
    for (name, b) in [("b1", &b1), ("b2", &b2)] {
        let out = sync(&client, &base, &token, Surface::Rest, b)
            .await
            .expect(name);
        expect_all(&out, "acked", name);
        ledger.record(b, &out, name);
    }
    let cached = redis.keys(&idem_pattern).await.expect("redis answers");
    assert_eq!(cached.len(), 60, "records cached after commit");

    // Phase 2: Redis killed. Readiness warns; sync goes on from the database.
    redis.kill();
    let (code, body) = wait_readiness(&client, &base, "warn", Duration::from_secs(5)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "warn", "{body}");
    let out = sync(&client, &base, &token, Surface::Rest, &b3)
        .await
        .expect("b3 without redis");
    expect_all(&out, "acked", "b3 without redis");
    ledger.record(&b3, &out, "b3 without redis");
    let out = sync(&client, &base, &token, Surface::Graphql, &b1)
        .await
        .expect("b1 replay without redis");
    expect_all(&out, "duplicate", "b1 replay without redis");
    ledger.record(&b1, &out, "b1 replay without redis");
    // A batch mixing replays (half of b2) and new items (half of b4).
    let mixed: Vec<Attempt> = b2[..15].iter().chain(&b4[..15]).cloned().collect();
    let out = sync(&client, &base, &token, Surface::Rest, &mixed)
        .await
        .expect("mixed without redis");
    assert!(out[..15].iter().all(|o| o.status == "duplicate"), "{out:?}");
    assert!(out[15..].iter().all(|o| o.status == "acked"), "{out:?}");
    ledger.record(&mixed, &out, "mixed without redis");
    let out = sync(&client, &base, &token, Surface::Rest, &b3)
        .await
        .expect("b3 replay without redis");
    expect_all(&out, "duplicate", "b3 replay without redis");
    ledger.record(&b3, &out, "b3 replay without redis");

    // Phase 3: Redis back, empty.
    let redis = RedisServer::start(port)
        .await
        .expect("redis-server restarts");
    assert!(redis.keys("*").await.expect("redis answers").is_empty());
    let (code, body) = wait_readiness(&client, &base, "pass", Duration::from_secs(15)).await;
    assert_eq!((code, &body["status"]), (200, &json!("pass")), "{body}");
    let out = sync(&client, &base, &token, Surface::Rest, &b4)
        .await
        .expect("b4 after restart");
    assert!(out[..15].iter().all(|o| o.status == "duplicate"), "{out:?}");
    assert!(out[15..].iter().all(|o| o.status == "acked"), "{out:?}");
    ledger.record(&b4, &out, "b4 after restart");
    for (name, b) in [("b1", &b1), ("b2", &b2), ("b3", &b3), ("b4", &b4)] {
        for pass in 0..2 {
            // The first pass refills the cache from the database, the second reads it.
            let context = format!("{name} replay {pass} after restart");
            let out = sync(&client, &base, &token, Surface::Rest, b)
                .await
                .expect("replay after restart");
            expect_all(&out, "duplicate", &context);
            ledger.record(b, &out, &context);
        }
    }
    let cached = redis.keys(&idem_pattern).await.expect("redis answers");
    assert_eq!(cached.len(), keys.len(), "the cache is refilled");

    // The database: exactly one attempt and record per distinct key, each ACKED once.
    ledger.assert_acked_once(keys.iter().copied());
    for key in &keys {
        assert_eq!(ledger.acked.get(key), Some(&1), "key {key} never ACKED");
    }
    assert_eq!(
        db_counts(&app.db).await,
        (keys.len() as i64, keys.len() as i64)
    );
    assert_eq!(count_rows(&app.db, "test_sessions", "").await, 2);
    assert_session_counters_consistent(&app.db).await;
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("examsync_redis_fallbacks_total"),
        "fallbacks are counted"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. The server SIGKILLed mid-batch, restarted on the same database.

/// The real binary serving on `port`; SIGKILLed on drop.
struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    async fn start(database_url: &str, redis: Option<&TestRedis>, client: &Client) -> Self {
        let port = free_port();
        let mut command = Command::new(helpers::binary());
        command
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", SECRET)
            .env("EXAMSYNC_ACCESS", "open")
            .env("EXAMSYNC_RATE_LIMIT_PER_MINUTE", "0")
            .env("EXAMSYNC_DB_POOL_SIZE", "6")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match redis {
            Some(redis) => command
                .env("REDIS_URL", &redis.url)
                .env("EXAMSYNC_REDIS_PREFIX", &redis.prefix),
            None => command.env_remove("REDIS_URL"),
        };
        let child = command.spawn().expect("start examsync serve");
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(client, &format!("{base}/readyz")).await;
        ServerProcess { child, base }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_killed_mid_batch_converges_after_restart() {
    if skip_postgres() {
        return;
    }
    let database = TestDatabase::new(Backend::Postgres).await;
    let redis = TestRedis::new();
    let db = examsync::db::connect(&database.url, 2)
        .await
        .expect("connect");
    examsync::db::migrate(&db).await.expect("migrate");
    let bank = seed(&db, 120).await;
    let client = http_client();
    let mut server = ServerProcess::start(&database.url, redis.as_ref(), &client).await;

    // 4 users, each with 2 offline sessions shared by its 2 workers (two devices); every
    // worker sends its 5 batches of 50 one after the other. Questions repeat across batches.
    const USERS: usize = 4;
    const WORKERS_PER_USER: usize = 2;
    const BATCHES: usize = 5;
    const ITEMS: usize = 50;
    let users: Vec<(Uuid, String, [Uuid; 2])> = (0..USERS)
        .map(|_| {
            let (id, token) = student_token();
            (id, token, [Uuid::new_v4(), Uuid::new_v4()])
        })
        .collect();
    // (worker, user index, batches)
    let mut plan: Vec<(usize, usize, Vec<Vec<Attempt>>)> = Vec::new();
    for (u, (_, _, offline)) in users.iter().enumerate() {
        for w in 0..WORKERS_PER_USER {
            let batches = (0..BATCHES)
                .map(|b| batch(&bank, offline[(w + b) % 2], ITEMS))
                .collect();
            plan.push((plan.len(), u, batches));
        }
    }
    let total_keys = plan.len() * BATCHES * ITEMS;

    // Fire, and SIGKILL the server once a few responses are back (the rest are in flight).
    let completed = Arc::new(AtomicUsize::new(0));
    let base = server.base.clone();
    let tasks: Vec<_> = plan
        .iter()
        .map(|(_, u, batches)| {
            let (client, base, completed) = (client.clone(), base.clone(), completed.clone());
            let token = users[*u].1.clone();
            let batches = batches.clone();
            tokio::spawn(async move {
                let mut answers: Vec<Answer> = vec![None; batches.len()];
                for (b, attempts) in batches.iter().enumerate() {
                    let result = sync(&client, &base, &token, Surface::Rest, attempts).await;
                    let failed = result.is_err();
                    answers[b] = Some(result);
                    completed.fetch_add(1, Ordering::SeqCst);
                    if failed {
                        break;
                    }
                }
                answers
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let mut before: Vec<Vec<Answer>> = Vec::new();
    for task in tasks {
        before.push(task.await.expect("worker"));
    }
    let succeeded = before
        .iter()
        .flatten()
        .flatten()
        .filter(|r| r.is_ok())
        .count();
    let failed = before
        .iter()
        .flatten()
        .flatten()
        .filter(|r| r.is_err())
        .count();
    assert!(succeeded >= 1, "some batches were answered before the kill");
    assert!(failed >= 1, "some batches were in flight at the kill");
    let committed_before = count_rows(&db, "attempts", "").await;

    // Restart on the same database and replay every batch.
    let server = ServerProcess::start(&database.url, redis.as_ref(), &client).await;
    let mut ledger = Ledger::default();
    let mut acked_before: HashMap<Uuid, (Uuid, Uuid)> = HashMap::new();
    for ((_, u, batches), answers) in plan.iter().zip(&before) {
        for (b, attempts) in batches.iter().enumerate() {
            if let Some(Ok(outcomes)) = &answers[b] {
                let context = format!("user {u} batch {b} before the kill");
                ledger.record(attempts, outcomes, &context);
                for (a, o) in attempts.iter().zip(outcomes) {
                    if o.status == "acked" {
                        acked_before.insert(
                            a.idempotency_key,
                            (
                                o.server_attempt_id.expect("id"),
                                o.server_session_id.expect("id"),
                            ),
                        );
                    }
                }
            }
        }
    }
    assert!(!acked_before.is_empty());
    let replays = plan.iter().map(|(_, u, batches)| {
        let (client, base) = (client.clone(), server.base.clone());
        let token = users[*u].1.clone();
        let batches = batches.clone();
        async move {
            let mut out = Vec::new();
            for attempts in &batches {
                out.push(
                    sync(&client, &base, &token, Surface::Rest, attempts)
                        .await
                        .expect("replay after restart"),
                );
            }
            out
        }
    });
    let replayed = futures::future::join_all(replays).await;
    let mut sessions_of: HashMap<(usize, Uuid), Uuid> = HashMap::new();
    let mut pairs: HashSet<(Uuid, Uuid)> = HashSet::new();
    for ((_, u, batches), outcomes) in plan.iter().zip(&replayed) {
        for (b, (attempts, outcomes)) in batches.iter().zip(outcomes).enumerate() {
            let context = format!("user {u} batch {b} replayed");
            ledger.record(attempts, outcomes, &context);
            for (a, o) in attempts.iter().zip(outcomes) {
                let ids = (
                    o.server_attempt_id.expect("id"),
                    o.server_session_id.expect("id"),
                );
                if let Some(before) = acked_before.get(&a.idempotency_key) {
                    assert_eq!(o.status, "duplicate", "{context}: ACKED before the kill");
                    assert_eq!(*before, ids, "{context}: same ids as before the kill");
                }
                let session = *sessions_of
                    .entry((
                        *u,
                        a.offline_session_id
                            .expect("batches carry an offline session"),
                    ))
                    .or_insert(ids.1);
                assert_eq!(
                    session, ids.1,
                    "{context}: one server session per offline session"
                );
                pairs.insert((ids.1, a.question_id));
            }
        }
    }
    let all_keys: Vec<Uuid> = plan
        .iter()
        .flat_map(|(_, _, batches)| batches.iter().flatten().map(|a| a.idempotency_key))
        .collect();
    ledger.assert_acked_once(all_keys.iter().copied());
    // A key never seen ACKED was committed by a request whose response the kill cut off:
    // its replay is DUPLICATE (checked above), and it must come from such a request.
    let cut_off: HashSet<Uuid> = plan
        .iter()
        .zip(&before)
        .flat_map(|((_, _, batches), answers)| {
            batches
                .iter()
                .zip(answers)
                .filter(|(_, answer)| matches!(answer, Some(Err(_))))
                .flat_map(|(attempts, _)| attempts.iter().map(|a| a.idempotency_key))
        })
        .collect();
    let mut committed_unanswered = 0;
    for key in &all_keys {
        if ledger.acked.get(key) != Some(&1) {
            assert!(cut_off.contains(key), "key {key} never ACKED");
            committed_unanswered += 1;
        }
    }

    let (attempts_rows, record_rows) = db_counts(&db).await;
    assert_eq!(attempts_rows, total_keys as i64, "one attempts row per key");
    assert_eq!(
        record_rows, total_keys as i64,
        "one idempotency row per key"
    );
    let answers = count_rows(&db, "session_answers", "").await;
    assert!(
        answers <= pairs.len() as i64,
        "{answers} > {} pairs",
        pairs.len()
    );
    assert_eq!(
        answers,
        pairs.len() as i64,
        "every (session, question) answered"
    );
    assert_eq!(
        count_rows(&db, "test_sessions", "").await,
        (USERS * 2) as i64,
        "one server session per (user, offline session)"
    );
    assert_session_counters_consistent(&db).await;
    eprintln!(
        "killed with {succeeded} batches answered and {failed} failed; {committed_before} attempts \
         were committed at the kill, {} ACKED before it, {committed_unanswered} committed \
         but unanswered",
        acked_before.len()
    );
    drop(server);
    db.close().await.ok();
}

// ---------------------------------------------------------------------------------------
// 4. A database refusing new connections (SQLSTATE 55000 at login).

/// `ALLOW_CONNECTIONS false` and every open connection cut: the pool reconnects and the
/// server refuses the login with 55000. A fresh batch is a transient fault (503 +
/// Retry-After, GraphQL UNAVAILABLE), never a 500, and `/readyz` fails; once connections
/// are allowed again the same batch is applied exactly once, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_connections_is_a_transient_fault() {
    if skip_postgres() {
        return;
    }
    let (mut config, database, redis) = test_config(Backend::Postgres).await;
    config.rate_limit_per_minute = 0;
    let name = database
        .url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .expect("database name")
        .to_owned();
    let app = helpers::start(Backend::Postgres, config, database, redis).await;
    let bank = seed(&app.db, 20).await;
    let (_user, token) = student_token();
    let client = http_client();
    let attempts = batch(&bank, Uuid::new_v4(), 10);
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let admin = sea_orm::Database::connect(&admin_url).await.expect("admin");
    use sea_orm::ConnectionTrait;
    let refuse = |allow: bool| {
        format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}; \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
    };
    admin
        .execute_unprepared(&refuse(false))
        .await
        .expect("refuse");

    for surface in [Surface::Rest, Surface::Graphql, Surface::Rest] {
        let request = match surface {
            Surface::Rest => client
                .post(format!("{}/api/v1/sync/attempts:batch", app.base))
                .json(&rest_body(&attempts, None)),
            Surface::Graphql => client.post(format!("{}/graphql", app.base)).json(&json!({
                "query": "mutation($input: SyncAttemptsInput!) { syncAttempts(input: $input) { results { status } } }",
                "variables": {"input": graphql_input(&attempts, None)},
            })),
        };
        let response = request.bearer_auth(&token).send().await.expect("sync");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        let body: Value = response.json().await.expect("json");
        match surface {
            Surface::Rest => {
                assert_eq!(status, 503, "refused connections: {body}");
                assert!(retry_after, "503 without Retry-After");
                assert_eq!(body["error_code"], "UNAVAILABLE");
            }
            Surface::Graphql => {
                assert_eq!(
                    body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
                    "{body}"
                );
            }
        }
    }
    let (code, body) = readiness(&client, &app.base).await;
    assert_eq!((code, body["status"].as_str()), (503, Some("fail")));

    admin
        .execute_unprepared(&refuse(true))
        .await
        .expect("allow");
    let deadline = Instant::now() + Duration::from_secs(15);
    let outcomes = loop {
        match sync(&client, &app.base, &token, Surface::Rest, &attempts).await {
            Ok(outcomes) => break outcomes,
            Err(e) if Instant::now() < deadline && e.starts_with("HTTP 503") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("after connections are allowed again: {e}"),
        }
    };
    assert!(outcomes.iter().all(|o| o.status == "acked"), "{outcomes:?}");
    let (code, _) = wait_readiness(&client, &app.base, "pass", Duration::from_secs(5)).await;
    assert_eq!(code, 200);
    assert_no_orphans(&app.db).await;
    admin.close().await.ok();
}
