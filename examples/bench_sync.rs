//! Sync load benchmark (docs/benchmarks.md, "## Sync").
//!
//! ```text
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//! BENCH_REDIS_URL=redis://127.0.0.1:6379 \
//! cargo run --release --example bench_sync
//! ```
//!
//! What it does:
//! 1. creates a fresh PostgreSQL database next to `BENCH_DATABASE_URL` (dropped at the end),
//!    migrates it and seeds `BENCH_QUESTIONS` (2,000) questions with
//!    `examsync::questions::import_questions`;
//! 2. starts the server as a child process — this executable re-executed with `--serve`,
//!    which reads the same env settings as `examsync serve` (`examsync::cli::Cli`) and runs
//!    `Application::build` + `run_until_stopped` — with `EXAMSYNC_RATE_LIMIT_PER_MINUTE=0`,
//!    Redis at `BENCH_REDIS_URL` under a unique key prefix (its keys are deleted at the end).
//!    `BENCH_SERVER_BIN=target/release/examsync` runs that binary (`serve`) instead;
//! 3. for each client count of `BENCH_CLIENTS` (1,4,16): every client is a distinct student
//!    with its own token and sends fresh batches of 100 attempts (new idempotency keys, a v1
//!    `payload_hash`, one new offline session per batch, 100 distinct random questions,
//!    random options) to `POST /api/v1/sync/attempts:batch` for `BENCH_SECONDS`;
//! 4. then the same clients replay the batches they sent (every item must be `duplicate`);
//! 5. the baseline: the same clients insert rows generated the same way, 100 per plain
//!    multi-row `INSERT … ON CONFLICT DO NOTHING` statement, into a scratch table
//!    `CREATE TABLE … (LIKE attempts INCLUDING ALL)` through sea-orm/sqlx, with a pool the
//!    size of the server's;
//! 6. prints attempts/s, p99 batch latency and the ratio to the baseline, and the server's
//!    peak RSS (`VmHWM` of the child process: the load generator is not counted).
//!
//! Other settings: `BENCH_DB_POOL_SIZE` (server and baseline pool, default 10),
//! `BENCH_PG_LOG_STATEMENTS=1` (sets `log_statement = 'all'` on the bench database, to count
//! SQL statements per batch in the PostgreSQL log).
use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Child, Command, ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Parser;
use examsync::{
    Application,
    auth::{Role, sign_token},
    cli::{Cli, Command as CliCommand},
    questions::{QuestionInput, QuestionStatus, import_questions},
    sync::payload_hash::v1_hash,
};
use rand::Rng;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde_json::{Value, json};
use uuid::Uuid;

const SECRET: &str = "bench-sync-secret-0123456789abcdef";
const BATCH: usize = 100;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serve_mode = std::env::args().nth(1).as_deref() == Some("--serve");
    let outcome = if serve_mode {
        runtime.block_on(serve())
    } else {
        runtime.block_on(bench())
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The child: `examsync serve` minus `--demo`, configured from the environment.
async fn serve() -> Result<(), String> {
    let cli = Cli::try_parse_from(["examsync", "serve"]).map_err(|e| e.to_string())?;
    if !matches!(cli.command, CliCommand::Serve { .. }) {
        return Err("expected serve".into());
    }
    examsync::telemetry::init(cli.config.log_format);
    let application = Application::build(cli.config)
        .await
        .map_err(|e| e.to_string())?;
    application
        .run_until_stopped(examsync::app::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

struct Settings {
    admin_url: String,
    redis_url: Option<String>,
    seconds: u64,
    clients: Vec<usize>,
    questions: usize,
    pool_size: u32,
    log_statements: bool,
    server_bin: Option<String>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let parse = |name: &str, default: &str| -> Result<u64, String> {
            env_or(name, default)
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a number"))
        };
        let clients = env_or("BENCH_CLIENTS", "1,4,16")
            .split(',')
            .map(|c| c.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "BENCH_CLIENTS must be a comma list of numbers".to_owned())?;
        Ok(Settings {
            admin_url: env_or(
                "BENCH_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            redis_url: std::env::var("BENCH_REDIS_URL").ok(),
            seconds: parse("BENCH_SECONDS", "6")?,
            clients,
            questions: parse("BENCH_QUESTIONS", "2000")? as usize,
            pool_size: parse("BENCH_DB_POOL_SIZE", "10")? as u32,
            log_statements: std::env::var("BENCH_PG_LOG_STATEMENTS").is_ok_and(|v| v == "1"),
            server_bin: std::env::var("BENCH_SERVER_BIN").ok(),
        })
    }
}

/// `postgres://u@h:p/db?x` with another database name.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn bench() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let run_id = Uuid::new_v4().simple().to_string();
    let db_name = format!("examsync_bench_{run_id}");
    let prefix = format!("examsync-bench:{run_id}:");

    let admin = examsync::db::connect(&settings.admin_url, 1)
        .await
        .map_err(|e| format!("cannot connect to BENCH_DATABASE_URL: {e}"))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{db_name}\""))
        .await
        .map_err(|e| format!("create database: {e}"))?;
    let db_url = replace_database(&settings.admin_url, &db_name);

    // Ctrl-C or SIGTERM still cleans up: dropping `run` kills the server child.
    let outcome = tokio::select! {
        outcome = run(&settings, &db_url, &db_name, &prefix) => outcome,
        _ = examsync::app::shutdown_signal() => Err("interrupted".into()),
    };

    // Cleanup, whatever happened.
    let _ = admin
        .execute_unprepared(&format!(
            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
        ))
        .await;
    let _ = admin.close().await;
    if let Some(url) = &settings.redis_url {
        delete_redis_keys(url, &prefix).await;
    }
    outcome
}

async fn delete_redis_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

/// The server child process; killed on drop.
struct Server {
    child: Child,
    base: String,
    log_path: std::path::PathBuf,
}

impl Server {
    fn start(settings: &Settings, db_url: &str, prefix: &str) -> Result<Server, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log_path = std::env::temp_dir().join(format!("examsync-bench-{port}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("server log: {e}"))?;
        let mut command = match &settings.server_bin {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.arg("serve");
                c
            }
            None => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut c = Command::new(exe);
                c.arg("--serve");
                c
            }
        };
        command
            .env("DATABASE_URL", db_url)
            .env("EXAMSYNC_REDIS_PREFIX", prefix)
            .env("JWT_SECRET", SECRET)
            .env("EXAMSYNC_BIND", format!("127.0.0.1:{port}"))
            .env("EXAMSYNC_RATE_LIMIT_PER_MINUTE", "0")
            .env("EXAMSYNC_DB_POOL_SIZE", settings.pool_size.to_string())
            .env("RUST_LOG", env_or("BENCH_SERVER_LOG", "info"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        match &settings.redis_url {
            Some(url) => command.env("REDIS_URL", url),
            None => command.env_remove("REDIS_URL"),
        };
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        Ok(Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log_path,
        })
    }

    /// User + system CPU time of the server process so far, in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name, which is in parentheses: state is field 3,
        // utime field 14 and stime field 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// (VmRSS, VmHWM) in kB.
    fn memory_kb(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> Result<(), String> {
        let url = format!("{}/readyz", self.base);
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "the server exited ({status}):\n{}",
                    tail.join("\n")
                ));
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the server did not become ready in 60 s".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// One generated attempt (the REST item and the baseline row come from it).
struct Attempt {
    client_attempt_id: Uuid,
    idempotency_key: Uuid,
    offline_session_id: Uuid,
    question_id: Uuid,
    selected_option_index: i64,
    answered_at: DateTime<Utc>,
    payload_hash: String,
    is_correct: bool,
}

struct Bank {
    /// (id, option count, correct index)
    questions: Vec<(Uuid, usize, i32)>,
}

impl Bank {
    /// 100 attempts of one new offline session over 100 distinct random questions,
    /// answered over the last hour, 36 s apart, at millisecond precision.
    fn batch(&self) -> Vec<Attempt> {
        let mut rng = rand::rng();
        let offline = Uuid::new_v4();
        let start = Utc::now() - chrono::Duration::hours(1);
        let picks = rand::seq::index::sample(&mut rng, self.questions.len(), BATCH);
        picks
            .iter()
            .enumerate()
            .map(|(n, i)| {
                let (question_id, options, correct) = self.questions[i];
                let selected = rng.random_range(0..options) as i64;
                let answered_at = start
                    + chrono::Duration::milliseconds(n as i64 * 36_000 + rng.random_range(0..1000));
                Attempt {
                    client_attempt_id: Uuid::new_v4(),
                    idempotency_key: Uuid::new_v4(),
                    offline_session_id: offline,
                    question_id,
                    selected_option_index: selected,
                    payload_hash: v1_hash(question_id, selected, &answered_at.fixed_offset()),
                    answered_at,
                    is_correct: selected == i64::from(correct),
                }
            })
            .collect()
    }
}

fn rest_body(attempts: &[Attempt]) -> bytes::Bytes {
    let items: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "client_attempt_id": a.client_attempt_id,
                "idempotency_key": a.idempotency_key,
                "offline_session_id": a.offline_session_id,
                "session_id": null,
                "question_id": a.question_id,
                "selected_option_index": a.selected_option_index,
                "answered_at": a.answered_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "payload_hash": a.payload_hash,
                "package_id": null,
            })
        })
        .collect();
    let body = json!({
        "sent_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "attempts": items,
    });
    bytes::Bytes::from(body.to_string())
}

/// A load-generating client: one student.
struct Student {
    token: String,
    /// Bodies sent during the fresh run, replayed later.
    sent: Vec<bytes::Bytes>,
}

#[derive(Default)]
struct Outcome {
    batches: usize,
    items: usize,
    latencies: Vec<Duration>,
    statuses: HashMap<String, usize>,
    errors: usize,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.batches += other.batches;
        self.items += other.items;
        self.latencies.extend(other.latencies);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.errors += other.errors;
    }
}

struct Row {
    scenario: &'static str,
    clients: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    batches: usize,
    check: String,
    /// CPU time (user + system) the server process spent per batch, when it is known.
    server_cpu_ms: Option<f64>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn row(scenario: &'static str, clients: usize, mut outcome: Outcome, elapsed: Duration) -> Row {
    outcome.latencies.sort();
    let mut statuses: Vec<_> = outcome.statuses.iter().collect();
    statuses.sort();
    let mut check = statuses
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    if outcome.errors > 0 {
        check.push_str(&format!(" http_errors={}", outcome.errors));
    }
    Row {
        scenario,
        clients,
        per_sec: outcome.items as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&outcome.latencies, 0.50),
        p99_ms: percentile(&outcome.latencies, 0.99),
        batches: outcome.batches,
        check,
        server_cpu_ms: None,
    }
}

/// `r` with the server CPU time spent over its run (clock ticks of `/proc/<pid>/stat`).
fn with_cpu(mut r: Row, before: Option<u64>, after: Option<u64>) -> Row {
    if let (Some(before), Some(after)) = (before, after)
        && r.batches > 0
    {
        let ms = after.saturating_sub(before) as f64 * 1000.0 / CLOCK_TICKS_PER_SEC;
        r.server_cpu_ms = Some(ms / r.batches as f64);
    }
    r
}

/// `getconf CLK_TCK`: 100 on the Linux architectures this runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

async fn send(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: bytes::Bytes,
    outcome: &mut Outcome,
) {
    let started = Instant::now();
    let response = http
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let parsed = match response {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        Ok(r) => {
            eprintln!(
                "  HTTP {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            None
        }
        Err(e) => {
            eprintln!("  request failed: {e}");
            None
        }
    };
    outcome.latencies.push(started.elapsed());
    let Some(results) = parsed.as_ref().and_then(|v| v["results"].as_array()) else {
        outcome.errors += 1;
        return;
    };
    outcome.batches += 1;
    outcome.items += results.len();
    for r in results {
        let status = r["status"].as_str().unwrap_or("?").to_owned();
        *outcome.statuses.entry(status).or_default() += 1;
    }
}

async fn fresh_run(
    http: &reqwest::Client,
    url: &str,
    bank: &Arc<Bank>,
    students: Vec<Student>,
    duration: Duration,
) -> (Vec<Student>, Outcome, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = students
        .into_iter()
        .map(|mut student| {
            let (http, url, bank) = (http.clone(), url.to_owned(), bank.clone());
            tokio::spawn(async move {
                let mut outcome = Outcome::default();
                while Instant::now() < deadline {
                    let body = rest_body(&bank.batch());
                    student.sent.push(body.clone());
                    send(&http, &url, &student.token, body, &mut outcome).await;
                }
                (student, outcome)
            })
        })
        .collect();
    let mut total = Outcome::default();
    let mut students = Vec::new();
    for task in tasks {
        if let Ok((student, outcome)) = task.await {
            students.push(student);
            total.merge(outcome);
        }
    }
    (students, total, started.elapsed())
}

async fn replay_run(
    http: &reqwest::Client,
    url: &str,
    students: &[Student],
    duration: Duration,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = students
        .iter()
        .map(|student| {
            let (http, url) = (http.clone(), url.to_owned());
            let (token, sent) = (student.token.clone(), student.sent.clone());
            tokio::spawn(async move {
                let mut outcome = Outcome::default();
                let mut next = 0;
                while Instant::now() < deadline && !sent.is_empty() {
                    let body = sent[next % sent.len()].clone();
                    next += 1;
                    send(&http, &url, &token, body, &mut outcome).await;
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            total.merge(outcome);
        }
    }
    (total, started.elapsed())
}

const BASELINE_COLUMNS: &str = "id, user_id, session_id, question_id, package_id, \
     client_attempt_id, idempotency_key, payload_hash, selected_option_index, is_correct, \
     answered_at, answered_at_raw, clock_skew_ms, received_at";

fn baseline_statement(user: Uuid, attempts: &[Attempt]) -> Statement {
    const COLUMNS: usize = 14;
    let now = Utc::now();
    let mut sql = format!("INSERT INTO bench_baseline ({BASELINE_COLUMNS}) VALUES ");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(attempts.len() * COLUMNS);
    for (row, a) in attempts.iter().enumerate() {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", row * COLUMNS + col + 1));
        }
        sql.push(')');
        values.extend([
            Uuid::new_v4().into(),
            user.into(),
            a.offline_session_id.into(),
            a.question_id.into(),
            Option::<Uuid>::None.into(),
            a.client_attempt_id.into(),
            a.idempotency_key.into(),
            a.payload_hash.clone().into(),
            (a.selected_option_index as i32).into(),
            a.is_correct.into(),
            a.answered_at.into(),
            a.answered_at.fixed_offset().to_rfc3339().into(),
            Some(0i64).into(),
            now.into(),
        ]);
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Inserts one batch of rows: one autocommitted statement when `chunk` is the batch size,
/// else statements of `chunk` rows in one transaction.
async fn baseline_insert(
    db: &DatabaseConnection,
    user: Uuid,
    attempts: &[Attempt],
    chunk: usize,
) -> Result<u64, sea_orm::DbErr> {
    if chunk >= attempts.len() {
        return Ok(db
            .execute_raw(baseline_statement(user, attempts))
            .await?
            .rows_affected());
    }
    let txn = db.begin().await?;
    let mut inserted = 0;
    for rows in attempts.chunks(chunk) {
        inserted += txn
            .execute_raw(baseline_statement(user, rows))
            .await?
            .rows_affected();
    }
    txn.commit().await?;
    Ok(inserted)
}

async fn baseline_run(
    db: &DatabaseConnection,
    bank: &Arc<Bank>,
    clients: usize,
    chunk: usize,
    duration: Duration,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (db, bank) = (db.clone(), bank.clone());
            tokio::spawn(async move {
                let user = Uuid::new_v4();
                let mut outcome = Outcome::default();
                while Instant::now() < deadline {
                    let attempts = bank.batch();
                    let t = Instant::now();
                    let result = baseline_insert(&db, user, &attempts, chunk).await;
                    outcome.latencies.push(t.elapsed());
                    match result {
                        Ok(inserted) => {
                            outcome.batches += 1;
                            outcome.items += BATCH;
                            *outcome.statuses.entry("inserted".into()).or_default() +=
                                inserted as usize;
                        }
                        Err(e) => {
                            eprintln!("  baseline insert failed: {e}");
                            outcome.errors += 1;
                        }
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            total.merge(outcome);
        }
    }
    (total, started.elapsed())
}

async fn seed(db: &DatabaseConnection, count: usize) -> Result<Bank, String> {
    let items: Vec<QuestionInput> = {
        let mut rng = rand::rng();
        (0..count)
            .map(|n| {
                let options = rng.random_range(2..=5usize);
                QuestionInput {
                    id: None,
                    stem: format!("Benchmark question {n}: which option is right?"),
                    options: (0..options).map(|o| format!("Option {o} of {n}")).collect(),
                    correct_index: rng.random_range(0..options) as i32,
                    explanation_md: Some("Because.".into()),
                    year_id: 1 + (n % 6) as i32,
                    block_id: Some(1 + (n % 24) as i32),
                    theme_id: Some(1 + (n % 120) as i32),
                    cognitive_level: None,
                    difficulty: None,
                    status: Some(QuestionStatus::Published),
                }
            })
            .collect()
    };
    let shapes: Vec<(usize, i32)> = items
        .iter()
        .map(|q| (q.options.len(), q.correct_index))
        .collect();
    let imported = import_questions(db, items)
        .await
        .map_err(|e| format!("seeding questions: {e}"))?;
    Ok(Bank {
        questions: imported
            .ids
            .into_iter()
            .zip(shapes)
            .map(|(id, (options, correct))| (id, options, correct))
            .collect(),
    })
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    match db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
    {
        Ok(Some(row)) => row.try_get::<i64>("", "n").unwrap_or(-1),
        _ => -1,
    }
}

async fn run(settings: &Settings, db_url: &str, db_name: &str, prefix: &str) -> Result<(), String> {
    let duration = Duration::from_secs(settings.seconds);
    let db = examsync::db::connect(db_url, settings.pool_size)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    examsync::db::migrate(&db)
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    let bank = Arc::new(seed(&db, settings.questions).await?);
    if settings.log_statements {
        db.execute_unprepared(&format!(
            "ALTER DATABASE \"{db_name}\" SET log_statement = 'all'"
        ))
        .await
        .map_err(|e| format!("log_statement: {e}"))?;
    }

    let http = reqwest::Client::builder()
        .no_brotli()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut server = Server::start(settings, db_url, prefix)?;
    server.wait_ready(&http).await?;
    let idle = server.memory_kb();
    let url = format!("{}/api/v1/sync/attempts:batch", server.base);

    // Warm-up (not measured): opens the server's pool connections and the HTTP connections.
    let warm: Vec<Student> = (0..settings.pool_size as usize)
        .map(|_| Student {
            token: sign_token(SECRET, Uuid::new_v4(), Role::Student, 3600).unwrap_or_default(),
            sent: Vec::new(),
        })
        .collect();
    let _ = fresh_run(&http, &url, &bank, warm, Duration::from_millis(1500)).await;

    println!(
        "examsync sync benchmark: {} questions, batches of {BATCH}, {} s per scenario, \
         server pool {}, Redis {}",
        settings.questions,
        settings.seconds,
        settings.pool_size,
        if settings.redis_url.is_some() {
            "on"
        } else {
            "off (in-process cache)"
        }
    );
    let mut rows = Vec::new();
    let mut by_clients: Vec<(usize, Vec<Student>)> = Vec::new();
    for &clients in &settings.clients {
        let students: Vec<Student> = (0..clients)
            .map(|_| Student {
                token: sign_token(SECRET, Uuid::new_v4(), Role::Student, 3600).unwrap_or_default(),
                sent: Vec::new(),
            })
            .collect();
        let cpu = server.cpu_ticks();
        let (students, outcome, elapsed) = fresh_run(&http, &url, &bank, students, duration).await;
        let r = with_cpu(
            row("fresh", clients, outcome, elapsed),
            cpu,
            server.cpu_ticks(),
        );
        eprintln!(
            "  fresh x{clients}: {:.0} attempts/s ({})",
            r.per_sec, r.check
        );
        rows.push(r);
        by_clients.push((clients, students));
    }
    for (clients, students) in &by_clients {
        let cpu = server.cpu_ticks();
        let (outcome, elapsed) = replay_run(&http, &url, students, duration).await;
        let r = with_cpu(
            row("replay", *clients, outcome, elapsed),
            cpu,
            server.cpu_ticks(),
        );
        eprintln!(
            "  replay x{clients}: {:.0} attempts/s ({})",
            r.per_sec, r.check
        );
        rows.push(r);
    }
    let peak = server.memory_kb();
    let sent_keys: usize = by_clients
        .iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.sent.len() * BATCH))
        .sum();
    drop(server);

    db.execute_unprepared("CREATE TABLE bench_baseline (LIKE attempts INCLUDING ALL)")
        .await
        .map_err(|e| format!("scratch table: {e}"))?;
    for (scenario, chunk) in [("baseline", BATCH), ("baseline 2×50", BATCH / 2)] {
        for &clients in &settings.clients {
            let (outcome, elapsed) = baseline_run(&db, &bank, clients, chunk, duration).await;
            let r = row(scenario, clients, outcome, elapsed);
            eprintln!("  {scenario} x{clients}: {:.0} rows/s", r.per_sec);
            rows.push(r);
        }
    }

    // What the database holds: one attempt per key sent (warm-up included).
    let attempts = count(&db, "SELECT COUNT(*) AS n FROM attempts").await;
    let records = count(&db, "SELECT COUNT(*) AS n FROM idempotency_records").await;
    db.close().await.ok();

    print_table(&rows);
    println!();
    match (idle, peak) {
        (Some((idle_rss, _)), Some((rss, hwm))) => println!(
            "server RSS: {:.1} MB idle after start, {:.1} MB at the end, peak (VmHWM) {:.1} MB{}",
            idle_rss as f64 / 1024.0,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            if hwm <= 100 * 1024 {
                " (aim ≤ 100 MB: met)"
            } else {
                " (aim ≤ 100 MB: MISSED)"
            }
        ),
        _ => println!("server RSS: unavailable (no /proc)"),
    }
    println!(
        "database: {attempts} attempts rows, {records} idempotency records \
         ({sent_keys} keys sent in the measured fresh runs, plus the warm-up)"
    );
    Ok(())
}

fn print_table(rows: &[Row]) {
    let find = |scenario: &str, clients: usize| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.clients == clients)
            .map(|r| r.per_sec)
            .filter(|v| *v > 0.0)
    };
    let ratio = |value: f64, base: Option<f64>| {
        base.map(|b| format!("{:.2}", value / b))
            .unwrap_or_else(|| "-".into())
    };
    println!();
    println!(
        "| scenario | clients | attempts/s | p50 ms | p99 ms | ratio to baseline | ratio to baseline 2×50 | vs fresh | server CPU ms/batch | batches | statuses |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in rows {
        let vs_fresh = match (r.scenario, find("fresh", r.clients)) {
            ("replay", Some(f)) => format!("{:.1}×", r.per_sec / f),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.clients,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            ratio(r.per_sec, find("baseline", r.clients)),
            ratio(r.per_sec, find("baseline 2×50", r.clients)),
            vs_fresh,
            r.server_cpu_ms
                .map(|ms| format!("{ms:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.batches,
            r.check
        );
    }
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for r in rows.iter().filter(|r| r.scenario == "fresh") {
        let (fresh, clients) = (r.per_sec, r.clients);
        let (Some(replay), Some(base)) = (find("replay", clients), find("baseline", clients))
        else {
            continue;
        };
        let base_50 = find("baseline 2×50", clients).unwrap_or(base);
        println!(
            "{clients} client(s): fresh {:.0}% of baseline (aim ≥ 30%: {}), {:.0}% of baseline 2×50 \
             ({}); replays {:.1}× fresh (aim ≥ 3×: {})",
            100.0 * fresh / base,
            verdict(fresh >= 0.3 * base),
            100.0 * fresh / base_50,
            verdict(fresh >= 0.3 * base_50),
            replay / fresh,
            verdict(replay >= 3.0 * fresh),
        );
    }
}
