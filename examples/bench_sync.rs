//! Sync load benchmark (docs/benchmarks.md, "## Sync").
//!
//! ```text
//! cargo build --release --example bench_sync
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//! BENCH_REDIS_URL=redis://127.0.0.1:6379 \
//!   target/release/examples/bench_sync                       # BENCH_SUITE=postgres
//! BENCH_SUITE=sqlite target/release/examples/bench_sync      # a temporary SQLite file
//! BENCH_SUITE=scale BENCH_DATABASE_URL=… BENCH_REDIS_URL=… \
//!   target/release/examples/bench_sync                       # 10 million stored attempts
//! ```
//!
//! Every figure is set against **the ceiling measured in the same round**: N clients each
//! running transactions of two 100-row `INSERT … VALUES … ON CONFLICT DO NOTHING`, one into
//! an attempts-shaped table and one into an idempotency-shaped table (`ceiling.rs`);
//! ceiling = 100 × transactions/s. A round measures, for each client count of
//! `BENCH_CLIENTS` (1,4,16): the ceiling, fresh batches (100 new attempts, new keys, one new
//! offline session per batch, every item must be `acked`), then replays of those batches
//! (every item must be `duplicate`). `BENCH_ROUNDS` rounds (3) of `BENCH_SECONDS` (5) per
//! scenario; the table gives the median of the rounds, ratios taken within each round.
//!
//! The server is a child process (this executable re-run with `--serve`, which runs what
//! `examsync serve` runs; or `BENCH_SERVER_BIN`, which then also migrates the databases
//! with `migrate`, so an older server runs on its own schema), pinned with `taskset` to core 0, while
//! this process (the load generator and the ceiling's client) pins itself to core 1
//! (`BENCH_PIN=0` turns pinning off). The server's peak RSS and CPU time are its own.
//!
//! Suites (`BENCH_SUITE`):
//! - `postgres`: a fresh PostgreSQL database next to `BENCH_DATABASE_URL` (dropped at the
//!   end), Redis at `BENCH_REDIS_URL` under a unique key prefix (deleted at the end).
//! - `sqlite`: the embedded default (WAL, `synchronous=FULL`), a temporary directory; the
//!   ceiling runs on a second file in it opened with the server's settings.
//! - `scale`: two databases, one empty and one seeded by `seed.rs` with `BENCH_SCALE_ATTEMPTS`
//!   (10,000,000) attempts over `BENCH_SCALE_USERS` (20,000) users, of which
//!   `BENCH_HEAVY_USERS` (16) hold `BENCH_HEAVY_ATTEMPTS` (50,000) each; the clients sync as
//!   those heavy users. Rounds first on the seeded database never analyzed, then after
//!   `ANALYZE`.
//!
//! Other settings: `BENCH_QUESTIONS` (2,000), `BENCH_DB_POOL_SIZE` (10; server pool),
//! `BENCH_PG_LOG_MIN_MS` (sets `log_min_duration_statement` on the bench databases, for the
//! statement profile), `BENCH_SERVER_LOG` (`RUST_LOG` of the server, `info`).
#[path = "bench_sync/ceiling.rs"]
mod ceiling;
#[path = "bench_sync/seed.rs"]
mod seed;

use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Parser;
use examsync::{
    Application,
    auth::{Role, sign_token_with_access},
    cli::{Cli, Command as CliCommand},
    questions::{QuestionInput, QuestionStatus, import_questions},
    sync::payload_hash::v1_hash,
};
use examsync_test_support::replace_database;
use rand::Rng;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

const SECRET: &str = "bench-sync-secret-0123456789abcdef";
const BATCH: usize = 100;

fn main() -> ExitCode {
    let serve_mode = std::env::args().nth(1).as_deref() == Some("--serve");
    // Pin before the runtime starts its threads: they inherit the main thread's affinity.
    if !serve_mode && pinning() {
        let pinned = Command::new("taskset")
            .args(["-cp", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        if pinned.is_ok_and(|s| s.success()) {
            PINNED.store(true, Ordering::Relaxed);
        } else {
            eprintln!("warning: taskset failed; nothing is pinned");
        }
    }
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

/// Set once this process is pinned to core 1 (its own affinity then says one core, so it is
/// decided before and remembered).
static PINNED: AtomicBool = AtomicBool::new(false);

/// Server on core 0, load on core 1: only on a machine with at least two cores.
fn pinning() -> bool {
    std::env::var("BENCH_PIN").map_or(true, |v| v != "0")
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Suite {
    Postgres,
    Sqlite,
    Scale,
}

struct Settings {
    suite: Suite,
    admin_url: String,
    redis_url: Option<String>,
    seconds: u64,
    rounds: usize,
    clients: Vec<usize>,
    questions: usize,
    pool_size: u32,
    log_min_ms: Option<u64>,
    server_bin: Option<String>,
    pin: bool,
    scale: seed::Plan,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let parse = |name: &str, default: &str| -> Result<u64, String> {
            env_or(name, default)
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a number"))
        };
        let suite = match env_or("BENCH_SUITE", "postgres").as_str() {
            "postgres" => Suite::Postgres,
            "sqlite" => Suite::Sqlite,
            "scale" => Suite::Scale,
            other => return Err(format!("BENCH_SUITE={other}: postgres, sqlite or scale")),
        };
        let default_clients = if suite == Suite::Scale {
            "4,16"
        } else {
            "1,4,16"
        };
        let clients = env_or("BENCH_CLIENTS", default_clients)
            .split(',')
            .map(|c| c.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "BENCH_CLIENTS must be a comma list of numbers".to_owned())?;
        let scale = seed::Plan {
            attempts: parse("BENCH_SCALE_ATTEMPTS", "10000000")?,
            users: parse("BENCH_SCALE_USERS", "20000")?,
            heavy_users: parse("BENCH_HEAVY_USERS", "16")?,
            heavy_attempts: parse("BENCH_HEAVY_ATTEMPTS", "50000")?,
        };
        if suite == Suite::Scale && clients.iter().any(|&c| c as u64 > scale.heavy_users) {
            return Err(
                "BENCH_CLIENTS: each client syncs as its own heavy user; raise \
                        BENCH_HEAVY_USERS"
                    .into(),
            );
        }
        Ok(Settings {
            suite,
            admin_url: env_or(
                "BENCH_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            redis_url: std::env::var("BENCH_REDIS_URL").ok(),
            seconds: parse("BENCH_SECONDS", "5")?,
            rounds: parse("BENCH_ROUNDS", "3")?.max(1) as usize,
            clients,
            questions: parse("BENCH_QUESTIONS", "2000")? as usize,
            pool_size: parse("BENCH_DB_POOL_SIZE", "10")? as u32,
            log_min_ms: std::env::var("BENCH_PG_LOG_MIN_MS")
                .ok()
                .and_then(|v| v.parse().ok()),
            server_bin: std::env::var("BENCH_SERVER_BIN").ok(),
            pin: PINNED.load(Ordering::Relaxed),
            scale,
        })
    }
}

async fn bench() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let run_id = Uuid::new_v4().simple().to_string();
    let prefix = format!("examsync-bench:{run_id}:");
    let names: Vec<String> = match settings.suite {
        Suite::Postgres => vec![format!("examsync_bench_{run_id}")],
        Suite::Scale => vec![
            format!("examsync_bench_{run_id}_empty"),
            format!("examsync_bench_{run_id}_scale"),
        ],
        Suite::Sqlite => Vec::new(),
    };
    let admin = if names.is_empty() {
        None
    } else {
        let admin = examsync::db::connect(&settings.admin_url, 1)
            .await
            .map_err(|e| format!("cannot connect to BENCH_DATABASE_URL: {e}"))?;
        for name in &names {
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .map_err(|e| format!("create database: {e}"))?;
            if let Some(ms) = settings.log_min_ms {
                admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE \"{name}\" SET log_min_duration_statement = {ms}"
                    ))
                    .await
                    .map_err(|e| format!("log_min_duration_statement: {e}"))?;
            }
        }
        Some(admin)
    };
    let urls: Vec<String> = names
        .iter()
        .map(|n| replace_database(&settings.admin_url, n))
        .collect();

    // Ctrl-C or SIGTERM still cleans up: dropping the suite kills the server children.
    let outcome = tokio::select! {
        outcome = async {
            match settings.suite {
                Suite::Postgres => postgres_suite(&settings, &urls[0], &prefix).await,
                Suite::Sqlite => sqlite_suite(&settings).await,
                Suite::Scale => scale_suite(&settings, &urls[0], &urls[1], &prefix).await,
            }
        } => outcome,
        _ = examsync::app::shutdown_signal() => Err("interrupted".into()),
    };

    // Cleanup, whatever happened.
    if let Some(admin) = admin {
        for name in &names {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
        let _ = admin.close().await;
    }
    if let Some(url) = &settings.redis_url {
        delete_redis_keys(url, &prefix).await;
    }
    outcome
}

/// Deletes this run's keys (each acked record is cached for weeks; left behind, millions of
/// them slowed every later user of that Redis).
async fn delete_redis_keys(url: &str, prefix: &str) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let deleted = tokio::task::spawn_blocking(move || {
        examsync_test_support::redis_keys::delete_by_prefix(&url, &prefix)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|deleted| deleted);
    match deleted {
        Ok(deleted) => eprintln!("deleted {deleted} Redis keys of this run"),
        Err(e) => eprintln!("warning: this run's Redis keys were not all deleted: {e}"),
    }
}

/// The server child process; killed on drop.
struct Server {
    child: Child,
    base: String,
    log_path: std::path::PathBuf,
}

impl Server {
    /// Starts the server on `db_url`, with Redis when `redis_url` is given; pinned to core 0
    /// when `settings.pin`.
    fn start(
        settings: &Settings,
        db_url: &str,
        redis_url: Option<&str>,
        prefix: &str,
    ) -> Result<Server, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log_path = std::env::temp_dir().join(format!("examsync-bench-{port}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("server log: {e}"))?;
        let (program, arg) = match &settings.server_bin {
            Some(bin) => (std::path::PathBuf::from(bin), "serve"),
            None => (
                std::env::current_exe().map_err(|e| e.to_string())?,
                "--serve",
            ),
        };
        // `taskset` execs the program: the child's pid is the server's.
        let mut command = if settings.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program).arg(arg);
            c
        } else {
            let mut c = Command::new(program);
            c.arg(arg);
            c
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
        match redis_url {
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
    /// Every item came back with the expected status and no request failed.
    ok: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// The figures of one run; `expected` is the status every item must have.
fn row(
    scenario: &'static str,
    clients: usize,
    mut outcome: Outcome,
    elapsed: Duration,
    expected: &str,
) -> Row {
    outcome.latencies.sort();
    let ok = outcome.errors == 0
        && outcome.items > 0
        && outcome.statuses.keys().all(|k| k == expected)
        && outcome
            .statuses
            .get(expected)
            .is_some_and(|n| *n >= outcome.items);
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
        ok,
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

async fn seed_questions(db: &DatabaseConnection, count: usize) -> Result<Bank, String> {
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
                    media: None,
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
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
    {
        Ok(Some(row)) => row.try_get::<i64>("", "n").unwrap_or(-1),
        _ => -1,
    }
}

/// Migrates the database at `url` and seeds the question bank. With `BENCH_SERVER_BIN`
/// that server migrates it (`examsync migrate`): the schema is the one it was written for
/// (an older server refuses a database holding migrations it does not know).
async fn prepare(
    settings: &Settings,
    url: &str,
) -> Result<(DatabaseConnection, Arc<Bank>), String> {
    let db = examsync::db::connect(url, 2)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match &settings.server_bin {
        Some(bin) => {
            let status = Command::new(bin)
                .arg("migrate")
                .env("DATABASE_URL", url)
                .env("JWT_SECRET", SECRET)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("{bin} migrate: {e}"))?;
            if !status.success() {
                return Err(format!("{bin} migrate: {status}"));
            }
        }
        None => examsync::db::migrate(&db)
            .await
            .map_err(|e| format!("migrate: {e}"))?,
    }
    let bank = Arc::new(seed_questions(&db, settings.questions).await?);
    Ok((db, bank))
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_brotli()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
}

fn students(ids: impl IntoIterator<Item = Uuid>) -> Vec<Student> {
    ids.into_iter()
        .map(|id| Student {
            // A token grant for the whole bank: sync pays for the access check (one read
            // of the user's stored grants per batch) as production does.
            token: sign_token_with_access(
                SECRET,
                id,
                Role::Student,
                4 * 3600,
                &[examsync::access::GrantTarget::Program],
            )
            .unwrap_or_default(),
            sent: Vec::new(),
        })
        .collect()
}

fn new_students(n: usize) -> Vec<Student> {
    students((0..n).map(|_| Uuid::new_v4()))
}

/// Starts a server and warms it up (pool connections, HTTP connections, caches): not
/// measured. Returns it with its batch URL and the keys the warm-up sent.
async fn start_server(
    settings: &Settings,
    http: &reqwest::Client,
    bank: &Arc<Bank>,
    db_url: &str,
    redis_url: Option<&str>,
    prefix: &str,
) -> Result<(Server, String, usize), String> {
    let mut server = Server::start(settings, db_url, redis_url, prefix)?;
    server.wait_ready(http).await?;
    let url = format!("{}/api/v1/sync/attempts:batch", server.base);
    let warm = new_students(settings.pool_size as usize);
    let (warm, _, _) = fresh_run(http, &url, bank, warm, Duration::from_millis(1500)).await;
    let sent = warm.iter().map(|s| s.sent.len() * BATCH).sum();
    Ok((server, url, sent))
}

/// Where the ceiling runs.
enum CeilingOn<'a> {
    Postgres(&'a str),
    Sqlite(&'a DatabaseConnection),
}

async fn ceiling_row(
    on: &CeilingOn<'_>,
    bank: &Arc<Bank>,
    clients: usize,
    duration: Duration,
) -> Result<Row, String> {
    let (outcome, elapsed) = match on {
        CeilingOn::Postgres(url) => ceiling::pg_run(url, bank, clients, duration).await?,
        CeilingOn::Sqlite(db) => ceiling::sqlite_run(db, bank, clients, duration).await,
    };
    Ok(row("ceiling", clients, outcome, elapsed, "inserted"))
}

/// Fresh batches from `students`, then (when `replay`) the same batches again.
async fn fresh_then_replay(
    http: &reqwest::Client,
    server: &Server,
    url: &str,
    bank: &Arc<Bank>,
    students: Vec<Student>,
    duration: Duration,
    replay: bool,
) -> (Row, Option<Row>, usize) {
    let clients = students.len();
    let cpu = server.cpu_ticks();
    let (students, outcome, elapsed) = fresh_run(http, url, bank, students, duration).await;
    let fresh = with_cpu(
        row("fresh", clients, outcome, elapsed, "acked"),
        cpu,
        server.cpu_ticks(),
    );
    let sent = students.iter().map(|s| s.sent.len() * BATCH).sum();
    if !replay {
        return (fresh, None, sent);
    }
    let cpu = server.cpu_ticks();
    let (outcome, elapsed) = replay_run(http, url, &students, duration).await;
    let replayed = with_cpu(
        row("replay", clients, outcome, elapsed, "duplicate"),
        cpu,
        server.cpu_ticks(),
    );
    (fresh, Some(replayed), sent)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// One round's figures for one client count.
struct Round {
    ceiling: Row,
    fresh: Row,
    replay: Row,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|ms| format!("{ms:.1}")).unwrap_or_else(|| "-".into())
}

/// The median table of a PostgreSQL or SQLite suite, and the aims.
fn print_rounds(title: &str, clients: &[usize], rounds: &HashMap<usize, Vec<Round>>) {
    println!();
    println!(
        "{title}: median of {} round(s)",
        rounds.values().map(Vec::len).max().unwrap_or(0)
    );
    println!();
    println!(
        "| clients | ceiling attempts/s | fresh attempts/s | fresh ÷ ceiling | fresh p50 / p99 ms | replay attempts/s | replay ÷ fresh | server CPU ms per fresh / replay batch | all statuses as expected |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for c in clients {
        let Some(rs) = rounds.get(c) else { continue };
        let m = |f: &dyn Fn(&Round) -> f64| median(rs.iter().map(f).collect());
        let ok = rs.iter().all(|r| r.ceiling.ok && r.fresh.ok && r.replay.ok);
        println!(
            "| {c} | {:.0} | {:.0} | {:.1}% | {:.1} / {:.1} | {:.0} | {:.1}× | {} / {} | {} |",
            m(&|r| r.ceiling.per_sec),
            m(&|r| r.fresh.per_sec),
            100.0 * m(&|r| r.fresh.per_sec / r.ceiling.per_sec),
            m(&|r| r.fresh.p50_ms),
            m(&|r| r.fresh.p99_ms),
            m(&|r| r.replay.per_sec),
            m(&|r| r.replay.per_sec / r.fresh.per_sec),
            opt_ms(Some(m(&|r| r.fresh.server_cpu_ms.unwrap_or(f64::NAN)))),
            opt_ms(Some(m(&|r| r.replay.server_cpu_ms.unwrap_or(f64::NAN)))),
            if ok { "yes" } else { "NO" },
        );
    }
    println!();
    for c in clients {
        let Some(rs) = rounds.get(c) else { continue };
        let m = |f: &dyn Fn(&Round) -> f64| median(rs.iter().map(f).collect());
        let share = m(&|r| r.fresh.per_sec / r.ceiling.per_sec);
        let replay = m(&|r| r.replay.per_sec / r.fresh.per_sec);
        let p99 = m(&|r| r.fresh.p99_ms);
        let mut line = format!(
            "{c} client(s): fresh {:.1}% of the ceiling (aim ≥ 30%: {}); replays {replay:.1}× fresh (aim ≥ 3×: {})",
            100.0 * share,
            verdict(share >= 0.3),
            verdict(replay >= 3.0)
        );
        if *c == 4 {
            line.push_str(&format!(
                "; p99 {p99:.1} ms (aim ≤ 25 ms: {})",
                verdict(p99 <= 25.0)
            ));
        }
        println!("{line}");
    }
}

fn print_rss(idle: Option<(u64, u64)>, peak: Option<(u64, u64)>) {
    let Some((rss, hwm)) = peak else {
        println!("server RSS: unavailable (no /proc)");
        return;
    };
    let idle = idle
        .map(|(idle_rss, _)| format!("{:.1} MB idle after start, ", idle_rss as f64 / 1024.0))
        .unwrap_or_default();
    println!(
        "server RSS: {idle}{:.1} MB at the end, peak (VmHWM) {:.1} MB (aim ≤ 100 MB: {})",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        verdict(hwm <= 100 * 1024)
    );
}

fn print_round(label: &str, r: &Round) {
    eprintln!(
        "  {label} {} x{}: ceiling {:.0}, fresh {:.0} ({:.1}%, p50 {:.1} p99 {:.1} ms, {}), replay {:.0} ({})",
        r.fresh.scenario,
        r.fresh.clients,
        r.ceiling.per_sec,
        r.fresh.per_sec,
        100.0 * r.fresh.per_sec / r.ceiling.per_sec,
        r.fresh.p50_ms,
        r.fresh.p99_ms,
        r.fresh.check,
        r.replay.per_sec,
        r.replay.check
    );
}

fn header(settings: &Settings, what: &str) {
    println!(
        "examsync sync benchmark, {what}: {} questions, batches of {BATCH}, {} s per scenario, \
         {} round(s), server pool {}, {}",
        settings.questions,
        settings.seconds,
        settings.rounds,
        settings.pool_size,
        if settings.pin {
            "server pinned to core 0, load generator to core 1"
        } else {
            "not pinned"
        }
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the start: {}", load.trim());
    }
}

fn print_load_end() {
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.trim());
    }
}

async fn postgres_suite(settings: &Settings, db_url: &str, prefix: &str) -> Result<(), String> {
    let duration = Duration::from_secs(settings.seconds);
    let (db, bank) = prepare(settings, db_url).await?;
    ceiling::pg_setup(db_url).await?;
    let http = http_client()?;
    let redis = settings.redis_url.as_deref();
    let (server, url, mut sent) =
        start_server(settings, &http, &bank, db_url, redis, prefix).await?;
    let idle = server.memory_kb();
    header(
        settings,
        if redis.is_some() {
            "PostgreSQL + Redis"
        } else {
            "PostgreSQL, no Redis (in-process cache)"
        },
    );
    let on = CeilingOn::Postgres(db_url);
    let mut rounds: HashMap<usize, Vec<Round>> = HashMap::new();
    for round in 1..=settings.rounds {
        for &clients in &settings.clients {
            let ceiling = ceiling_row(&on, &bank, clients, duration).await?;
            let (fresh, replay, n) = fresh_then_replay(
                &http,
                &server,
                &url,
                &bank,
                new_students(clients),
                duration,
                true,
            )
            .await;
            sent += n;
            let r = Round {
                ceiling,
                fresh,
                replay: replay.ok_or("no replay")?,
            };
            print_round(&format!("round {round}"), &r);
            rounds.entry(clients).or_default().push(r);
        }
    }
    let peak = server.memory_kb();
    drop(server);
    let attempts = count(&db, "SELECT COUNT(*) AS n FROM attempts").await;
    let records = count(&db, "SELECT COUNT(*) AS n FROM idempotency_records").await;
    db.close().await.ok();

    print_rounds("PostgreSQL + Redis", &settings.clients, &rounds);
    print_rss(idle, peak);
    println!(
        "database: {attempts} attempts rows, {records} idempotency records, {sent} keys sent{}",
        if attempts == sent as i64 && records == sent as i64 {
            " (one of each per key: ok)"
        } else {
            " (MISMATCH)"
        }
    );
    print_load_end();
    Ok(())
}

async fn sqlite_suite(settings: &Settings) -> Result<(), String> {
    let duration = Duration::from_secs(settings.seconds);
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let db_url = format!("sqlite://{}/examsync.db?mode=rwc", dir.path().display());
    let ceiling_url = format!("sqlite://{}/ceiling.db?mode=rwc", dir.path().display());
    let (db, bank) = prepare(settings, &db_url).await?;
    let ceiling_db = examsync::db::connect(&ceiling_url, settings.pool_size)
        .await
        .map_err(|e| format!("ceiling database: {e}"))?;
    ceiling::sqlite_setup(&ceiling_db).await?;
    let http = http_client()?;
    let (server, url, mut sent) =
        start_server(settings, &http, &bank, &db_url, None, "unused:").await?;
    let idle = server.memory_kb();
    header(settings, "SQLite (WAL, synchronous=FULL)");
    let on = CeilingOn::Sqlite(&ceiling_db);
    let mut rounds: HashMap<usize, Vec<Round>> = HashMap::new();
    for round in 1..=settings.rounds {
        for &clients in &settings.clients {
            let ceiling = ceiling_row(&on, &bank, clients, duration).await?;
            let (fresh, replay, n) = fresh_then_replay(
                &http,
                &server,
                &url,
                &bank,
                new_students(clients),
                duration,
                true,
            )
            .await;
            sent += n;
            let r = Round {
                ceiling,
                fresh,
                replay: replay.ok_or("no replay")?,
            };
            print_round(&format!("round {round}"), &r);
            rounds.entry(clients).or_default().push(r);
        }
    }
    let peak = server.memory_kb();
    drop(server);
    let attempts = count(&db, "SELECT COUNT(*) AS n FROM attempts").await;
    let records = count(&db, "SELECT COUNT(*) AS n FROM idempotency_records").await;
    db.close().await.ok();
    ceiling_db.close().await.ok();

    print_rounds("SQLite", &settings.clients, &rounds);
    print_rss(idle, peak);
    println!(
        "database: {attempts} attempts rows, {records} idempotency records, {sent} keys sent{}",
        if attempts == sent as i64 && records == sent as i64 {
            " (one of each per key: ok)"
        } else {
            " (MISMATCH)"
        }
    );
    print_load_end();
    Ok(())
}

/// Rounds of one (phase, client count) of the scale suite: each round is (ceiling, fresh on
/// the empty database, fresh at scale).
type ScaleCell = (String, usize, Vec<(Row, Row, Row)>);

/// Statistics PostgreSQL holds for the seeded tables: rows in `pg_statistic` and the last
/// (auto)analyze times, to show which phase ran without any.
async fn statistics(db: &DatabaseConnection) -> String {
    let rows = count(
        db,
        "SELECT COUNT(*) AS n FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid \
         WHERE c.relname IN ('attempts', 'idempotency_records', 'session_answers', \
         'test_sessions', 'users')",
    )
    .await;
    let analyzed = count(
        db,
        "SELECT COUNT(*) AS n FROM pg_stat_user_tables WHERE relname IN ('attempts', \
         'idempotency_records', 'session_answers', 'test_sessions', 'users') \
         AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
    )
    .await;
    format!("{rows} pg_statistic rows, {analyzed} of 5 tables ever analyzed")
}

async fn scale_suite(
    settings: &Settings,
    empty_url: &str,
    scale_url: &str,
    prefix: &str,
) -> Result<(), String> {
    const TABLES: &str = "attempts, idempotency_records, session_answers, test_sessions, users";
    let duration = Duration::from_secs(settings.seconds);
    let (empty_db, empty_bank) = prepare(settings, empty_url).await?;
    let (scale_db, scale_bank) = prepare(settings, scale_url).await?;
    // No statistics until the benchmark says so, even where autovacuum is on.
    for table in TABLES.split(", ") {
        scale_db
            .execute_unprepared(&format!(
                "ALTER TABLE {table} SET (autovacuum_enabled = false)"
            ))
            .await
            .map_err(|e| format!("autovacuum off: {e}"))?;
    }
    ceiling::pg_setup(empty_url).await?;
    let seeded = seed::load(scale_url, &scale_bank, &settings.scale).await?;
    let http = http_client()?;
    let redis = settings.redis_url.as_deref();
    let (empty_server, empty_batch_url, _) = start_server(
        settings,
        &http,
        &empty_bank,
        empty_url,
        redis,
        &format!("{prefix}empty:"),
    )
    .await?;
    let (scale_server, scale_batch_url, _) = start_server(
        settings,
        &http,
        &scale_bank,
        scale_url,
        redis,
        &format!("{prefix}scale:"),
    )
    .await?;
    header(
        settings,
        &format!(
            "at scale: {} attempts stored over {} users, {} of them holding {} each",
            seeded.attempts,
            settings.scale.users,
            settings.scale.heavy_users,
            settings.scale.heavy_attempts
        ),
    );
    let on = CeilingOn::Postgres(empty_url);
    let mut table: Vec<ScaleCell> = Vec::new();
    for phase in ["never analyzed", "after ANALYZE"] {
        if phase == "after ANALYZE" {
            let t = Instant::now();
            for db in [&scale_db, &empty_db] {
                db.execute_unprepared(&format!("ANALYZE {TABLES}"))
                    .await
                    .map_err(|e| format!("analyze: {e}"))?;
            }
            eprintln!("  ANALYZE took {:.1} s", t.elapsed().as_secs_f64());
        }
        let stats = statistics(&scale_db).await;
        eprintln!("  phase {phase}: {stats}");
        for round in 1..=settings.rounds {
            for &clients in &settings.clients {
                let ceiling = ceiling_row(&on, &empty_bank, clients, duration).await?;
                let (empty, _, _) = fresh_then_replay(
                    &http,
                    &empty_server,
                    &empty_batch_url,
                    &empty_bank,
                    new_students(clients),
                    duration,
                    false,
                )
                .await;
                let heavy = students(seeded.heavy.iter().take(clients).copied());
                let (scaled, _, _) = fresh_then_replay(
                    &http,
                    &scale_server,
                    &scale_batch_url,
                    &scale_bank,
                    heavy,
                    duration,
                    false,
                )
                .await;
                eprintln!(
                    "  {phase} round {round} x{clients}: ceiling {:.0}, empty {:.0} (p99 {:.1} ms, {}), at scale {:.0} (p99 {:.1} ms, {}): {:.0}% of empty",
                    ceiling.per_sec,
                    empty.per_sec,
                    empty.p99_ms,
                    empty.check,
                    scaled.per_sec,
                    scaled.p99_ms,
                    scaled.check,
                    100.0 * scaled.per_sec / empty.per_sec
                );
                match table
                    .iter_mut()
                    .find(|(p, c, _)| p == phase && *c == clients)
                {
                    Some((_, _, rs)) => rs.push((ceiling, empty, scaled)),
                    None => table.push((phase.to_owned(), clients, vec![(ceiling, empty, scaled)])),
                }
            }
        }
        println!("statistics {phase}: {stats}");
    }
    let peak = scale_server.memory_kb();
    drop(scale_server);
    drop(empty_server);
    let heavy_rows = count(
        &scale_db,
        &format!(
            "SELECT COUNT(*) AS n FROM attempts WHERE user_id = '{}'",
            seeded.heavy.first().copied().unwrap_or_default()
        ),
    )
    .await;
    empty_db.close().await.ok();
    scale_db.close().await.ok();

    println!();
    println!("At scale: median of {} round(s)", settings.rounds);
    println!();
    println!(
        "| statistics | clients | ceiling attempts/s | fresh, empty database | fresh, at scale (heavy users) | at scale ÷ empty | at scale ÷ ceiling | p50 / p99 ms empty | p50 / p99 ms at scale | all acked |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (phase, clients, rs) in &table {
        let m = |f: &dyn Fn(&(Row, Row, Row)) -> f64| median(rs.iter().map(f).collect());
        let ok = rs.iter().all(|(c, e, s)| c.ok && e.ok && s.ok);
        println!(
            "| {phase} | {clients} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.1}% | {:.1} / {:.1} | {:.1} / {:.1} | {} |",
            m(&|r| r.0.per_sec),
            m(&|r| r.1.per_sec),
            m(&|r| r.2.per_sec),
            100.0 * m(&|r| r.2.per_sec / r.1.per_sec),
            100.0 * m(&|r| r.2.per_sec / r.0.per_sec),
            m(&|r| r.1.p50_ms),
            m(&|r| r.1.p99_ms),
            m(&|r| r.2.p50_ms),
            m(&|r| r.2.p99_ms),
            if ok { "yes" } else { "NO" }
        );
    }
    println!();
    for (phase, clients, rs) in &table {
        let share = median(rs.iter().map(|r| r.2.per_sec / r.1.per_sec).collect());
        println!(
            "{phase}, {clients} client(s): at scale {:.0}% of the empty database (aim ≥ 70%: {})",
            100.0 * share,
            verdict(share >= 0.7)
        );
    }
    print_rss(None, peak);
    println!("the first heavy user now holds {heavy_rows} attempts");
    print_load_end();
    Ok(())
}
