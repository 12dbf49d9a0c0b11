//! Package download benchmark (docs/benchmarks.md, "## Packages").
//!
//! ```text
//! cargo run --release --example bench_packages
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release --example bench_packages
//! ```
//!
//! What it does, all in this one process:
//! 1. opens a fresh database — a temporary SQLite file, or with `BENCH_DATABASE_URL` a new
//!    PostgreSQL database next to it (dropped at the end) — and starts examsync on it
//!    (`Application::build` + `run_until_stopped`, the code `examsync serve` runs) on a port
//!    of 127.0.0.1; seeds `BENCH_QUESTIONS` (5,000) published questions with
//!    `questions::import_questions` and builds and publishes one PROGRAM package of them
//!    (version 1); then edits 2% of the questions (explanations), retires 0.5% and adds 1%,
//!    and builds and publishes version 2;
//! 2. prints the bytes of version 2 as identity, gzip, br, of the delta from version 1
//!    (identity, br) and of the `dcz` download with version 1 as dictionary, and the cold
//!    (first of the pair: computed and cached) and warm times of the delta and of `dcz`;
//! 3. starts, on another port, a bare axum handler that serves examsync's own responses
//!    again from memory — the same status, headers (request id included) and bytes, as
//!    captured from examsync: a `304` when `If-None-Match` equals the ETag, otherwise the
//!    gzip response when the request accepts gzip; the delta's br response on the delta
//!    path — with no auth, no middleware, no database: the ceiling for this machine;
//! 4. both servers run on one tokio runtime of their own (`BENCH_SERVER_THREADS`, 2), the
//!    load generator on another (`BENCH_CLIENT_THREADS`, 2): `BENCH_CLIENTS` (32) clients,
//!    each with its own keep-alive connection, send requests back to back for
//!    `BENCH_SECONDS` (10) after `BENCH_WARMUP_SECONDS` (2), first to the bare handler, then
//!    to examsync, for three scenarios:
//!    - `304`: `GET` with `Authorization: Bearer <student token>` and
//!      `If-None-Match: W/"<version_hash>"` (what a phone sends from the list);
//!    - `full gzip`: `GET` with `Authorization` and `Accept-Encoding: gzip`, the whole body
//!      read (not decompressed);
//!    - `delta br`: `GET …/delta?from=<version 1>` with `Accept-Encoding: br`;
//! 5. repeats that `BENCH_ROUNDS` (3) times, alternating the servers, and prints for each
//!    server the median round's requests/s, p50 and p99 latency, and examsync's share of the
//!    bare handler's throughput, plus the CPU time the server threads spent per request
//!    (each server thread's own CPU clock, exact: steadier than throughput when the machine is shared).
//!    Every response's status and body length is checked.
//!
//! `BENCH_ONLY=examsync` (or `bare`) loads one server only, e.g. under `perf record`;
//! `BENCH_SCENARIO=304` (or `gzip`, `delta`) runs the scenarios whose name contains it.
//!
//! `BENCH_WRK=/usr/bin/wrk` measures with an external load generator instead (issue 18's
//! method): the process pins itself to `BENCH_SERVER_CPU` (0) before it starts any thread,
//! so both servers run alone on that core, with `BENCH_SERVER_THREADS` defaulting to 1
//! there; each run is `taskset -c BENCH_WRK_CPU wrk -t1 -cBENCH_CLIENTS -dBENCH_SECONDS
//! --latency` (`BENCH_WRK_CPU`, 1) with the scenario's headers, after a discarded run of
//! `BENCH_WARMUP_SECONDS`. wrk's count of non-2xx/3xx responses and socket errors must be
//! zero and its bytes read per request must fit the expected body, else the run fails. The
//! load average (`/proc/loadavg`) is printed with each run. `BENCH_WRK_PRINT=1` only
//! prints the URLs and headers to hit and keeps the servers up until Ctrl-C, for a load
//! generator run by hand.
//!
//! The package routes' per-user limit stays on with a budget no run reaches (every request
//! comes from one student), so its count is paid as in production. To isolate costs:
//! `BENCH_ACCESS=open` (`EXAMSYNC_ACCESS=open`: no grants check) and
//! `BENCH_PACKAGE_LIMIT=off` (no per-user package limit).
//!
//! `BENCH_LOG=1` installs examsync's log subscriber (one line per request to stderr, as
//! `examsync serve` does; redirect stderr). By default no subscriber is installed.
use examsync_test_support::bench::{self, Wrk};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::get,
};
use bytes::Bytes;
use examsync::{
    Application, Config,
    auth::{Role, sign_token},
    config::Secret,
    packages::{self, BuildRequest, PackageScope},
    questions::{QuestionInput, QuestionStatus, import_questions},
};
use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

const SECRET: &str = "bench-packages-secret-0123456789abcdef";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v} is not a valid value")),
        Err(_) => Ok(default),
    }
}

struct Settings {
    database_url: Option<String>,
    questions: usize,
    clients: usize,
    seconds: u64,
    warmup_seconds: u64,
    server_threads: usize,
    client_threads: usize,
    rounds: usize,
    only: Option<String>,
    scenario: Option<String>,
    log: bool,
    /// The external load generator (`wrk`), when measuring with it.
    wrk: Option<String>,
    wrk_cpu: usize,
    server_cpu: usize,
    wrk_print: bool,
    access_open: bool,
    package_limit_off: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let wrk = std::env::var("BENCH_WRK").ok().filter(|v| !v.is_empty());
        Ok(Settings {
            database_url: std::env::var("BENCH_DATABASE_URL").ok(),
            questions: env_or("BENCH_QUESTIONS", 5000)?,
            clients: env_or("BENCH_CLIENTS", 32)?,
            seconds: env_or("BENCH_SECONDS", 10)?,
            warmup_seconds: env_or("BENCH_WARMUP_SECONDS", 2)?,
            server_threads: env_or("BENCH_SERVER_THREADS", if wrk.is_some() { 1 } else { 2 })?,
            client_threads: env_or("BENCH_CLIENT_THREADS", 2)?,
            rounds: env_or("BENCH_ROUNDS", 3)?,
            only: std::env::var("BENCH_ONLY").ok().filter(|v| !v.is_empty()),
            scenario: std::env::var("BENCH_SCENARIO")
                .ok()
                .filter(|v| !v.is_empty()),
            log: std::env::var("BENCH_LOG").is_ok_and(|v| v == "1"),
            wrk,
            wrk_cpu: env_or("BENCH_WRK_CPU", 1)?,
            server_cpu: env_or("BENCH_SERVER_CPU", 0)?,
            wrk_print: std::env::var("BENCH_WRK_PRINT").is_ok_and(|v| v == "1"),
            access_open: std::env::var("BENCH_ACCESS").is_ok_and(|v| v == "open"),
            package_limit_off: std::env::var("BENCH_PACKAGE_LIMIT").is_ok_and(|v| v == "off"),
        })
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    if settings.log {
        examsync::telemetry::init(examsync::config::LogFormat::Text);
    }
    if settings.wrk.is_some() {
        // Before any other thread exists: every thread started later inherits the core.
        bench::pin_self(settings.server_cpu)?;
    }
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.server_threads.max(1))
        .thread_name("server")
        .on_thread_stop(server_cpu::retire)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads.max(1))
        .thread_name("client")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    // A fresh database.
    let tempdir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (database_url, pg_cleanup) = match &settings.database_url {
        Some(admin_url) if admin_url.starts_with("postgres") => {
            let name = format!("examsync_bench_{}", Uuid::new_v4().simple());
            clients.block_on(async {
                let admin = Database::connect(admin_url.as_str())
                    .await
                    .map_err(|e| format!("connect {admin_url}: {e}"))?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.ok();
                Ok::<_, String>(())
            })?;
            (
                examsync_test_support::replace_database(admin_url, &name),
                Some((admin_url.clone(), name)),
            )
        }
        Some(url) => (url.clone(), None),
        None => (
            format!("sqlite://{}/bench.db?mode=rwc", tempdir.path().display()),
            None,
        ),
    };

    let outcome = bench(&settings, &servers, &clients, &database_url);

    if let Some((admin_url, name)) = pg_cleanup {
        clients.block_on(async {
            if let Ok(admin) = Database::connect(admin_url.as_str()).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                admin.close().await.ok();
            }
        });
    }
    servers.shutdown_timeout(Duration::from_secs(2));
    outcome
}

fn bench(
    settings: &Settings,
    servers: &tokio::runtime::Runtime,
    clients: &tokio::runtime::Runtime,
    database_url: &str,
) -> Result<(), String> {
    // 1. examsync, seeded.
    let mut config = Config::with_database(database_url.to_owned());
    config.jwt_secret = Some(Secret(SECRET.into()));
    config.rate_limit_per_minute = 0;
    // One student sends every request: a budget no run reaches keeps the package limiter
    // counting, as it does in production, without refusing (`BENCH_PACKAGE_LIMIT=off`
    // turns it off, to isolate its cost).
    config.package_rate_limit_per_minute = if settings.package_limit_off {
        0
    } else {
        u32::MAX
    };
    if settings.access_open {
        config.access = examsync::access::AccessMode::Open;
    }
    let (examsync_addr, db, shutdown) = servers.block_on(async {
        let application = Application::build(config)
            .await
            .map_err(|e| format!("examsync start: {e}"))?;
        let addr = application.local_addr().map_err(|e| e.to_string())?;
        let db = application.state().db.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = application
                .run_until_stopped(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok::<_, String>((addr, db, tx))
    })?;
    let build = |name: &'static str| {
        packages::build_package(
            &db,
            BuildRequest {
                name: name.into(),
                description: Some(format!("{} questions", settings.questions)),
                scope: PackageScope::Program,
                year_id: None,
                block_id: None,
                theme_id: None,
                publish: true,
                created_by: None,
            },
        )
    };
    let (held, package) = servers.block_on(async {
        import_questions(&db, bank(settings.questions))
            .await
            .map_err(|e| format!("seeding: {e}"))?;
        let held = build("Benchmark programme")
            .await
            .map_err(|e| format!("building the package: {e}"))?;
        // The issue's update: 2% of the questions edited, 0.5% retired, 1% added.
        import_questions(&db, update(settings.questions))
            .await
            .map_err(|e| format!("updating: {e}"))?;
        let package = build("Benchmark programme, next week")
            .await
            .map_err(|e| format!("building the update: {e}"))?;
        Ok::<_, String>((held, package))
    })?;
    // A student whose stored grant covers the package: the benchmark pays for the access
    // check as production does (`EXAMSYNC_ACCESS=grants`, the default).
    let student = Uuid::new_v4();
    servers.block_on(async {
        let grant = examsync::access::grants::NewGrant::new(
            student.into(),
            PackageScope::Program,
            None,
            None,
            None,
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
        examsync::access::grants::grant(&db, grant)
            .await
            .map_err(|e| format!("granting: {e}"))
    })?;
    let token = sign_token(SECRET, student, Role::Student, 24 * 3600).map_err(|e| e.to_string())?;
    let path = format!("/api/v1/tests/packages/{}", package.id);
    let etag = format!("W/\"{}\"", package.version_hash);

    // 2. The same bytes, from examsync.
    let probe = reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .build()
        .map_err(|e| e.to_string())?;
    let fetch = |accept: Option<&'static str>| {
        let request = probe
            .get(format!("http://{examsync_addr}{path}"))
            .bearer_auth(&token);
        let request = match accept {
            Some(a) => request.header("accept-encoding", a),
            None => request,
        };
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            if response.status() != 200 {
                return Err(format!("examsync answered {}", response.status()));
            }
            Captured::of(response).await
        }
    };
    let identity = clients.block_on(fetch(None))?;
    let gzip = clients.block_on(fetch(Some("gzip")))?;
    let br = clients.block_on(fetch(Some("br")))?.body;
    let not_modified = clients.block_on(async {
        let response = probe
            .get(format!("http://{examsync_addr}{path}"))
            .bearer_auth(&token)
            .header("if-none-match", &etag)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 304 {
            return Err(format!("revalidation answered {}", response.status()));
        }
        Captured::of(response).await
    })?;
    eprintln!(
        "package {}: {} questions, {} bytes, {} gzip, {} br, ETag {etag}",
        package.id,
        package.question_count,
        identity.body.len(),
        gzip.body.len(),
        br.len()
    );

    // The delta from the held version, cold (first of the pair) then warm, and dcz.
    let delta_path = format!("{path}/delta?from={}", held.id);
    let probe_get = |path: String, headers: Vec<(&'static str, String)>| {
        let mut request = probe
            .get(format!("http://{examsync_addr}{path}"))
            .bearer_auth(&token);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let started = Instant::now();
            let cpu_before = server_cpu::total();
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            let etag = response
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            let captured = Captured::of(response).await?;
            let cpu_ms = server_cpu::total().saturating_sub(cpu_before).as_secs_f64() * 1000.0;
            if status != 200 {
                return Err(format!("examsync answered {status}"));
            }
            Ok::<_, String>((captured, encoding, etag, started.elapsed(), cpu_ms))
        }
    };
    let (delta_br, _, delta_etag, delta_cold, delta_cold_cpu) = clients.block_on(probe_get(
        delta_path.clone(),
        vec![("accept-encoding", "br".into())],
    ))?;
    delta_etag.ok_or("the delta has no ETag")?;
    let (_, _, _, delta_warm, _) = clients.block_on(probe_get(
        delta_path.clone(),
        vec![("accept-encoding", "br".into())],
    ))?;
    let (
        Captured {
            body: delta_identity,
            ..
        },
        ..,
    ) = clients.block_on(probe_get(delta_path.clone(), vec![]))?;
    let (
        Captured {
            body: held_identity,
            ..
        },
        ..,
    ) = clients.block_on(probe_get(
        format!("/api/v1/tests/packages/{}", held.id),
        vec![],
    ))?;
    let dictionary = {
        use base64::Engine;
        use sha2::Digest;
        format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&held_identity))
        )
    };
    let dcz_headers = vec![
        ("accept-encoding", "gzip, br, zstd, dcb, dcz".to_owned()),
        ("available-dictionary", dictionary.clone()),
    ];
    let (Captured { body: dcz, .. }, dcz_encoding, _, dcz_cold, dcz_cold_cpu) =
        clients.block_on(probe_get(path.clone(), dcz_headers.clone()))?;
    if dcz_encoding.as_deref() != Some("dcz") {
        return Err(format!(
            "dictionary request answered {dcz_encoding:?}, not dcz"
        ));
    }
    let (_, _, _, dcz_warm, _) = clients.block_on(probe_get(path.clone(), dcz_headers))?;
    let pct_of_br = |n: usize| 100.0 * n as f64 / br.len() as f64;
    println!(
        "\nBytes of version 2 of a {}-question PROGRAM package (2% edited, 0.5% removed, 1% added since version 1):\n",
        settings.questions
    );
    println!("| response | bytes | share of full br |");
    println!("| --- | ---: | ---: |");
    for (name, n) in [
        ("full download, identity", identity.body.len()),
        ("full download, gzip", gzip.body.len()),
        ("full download, br", br.len()),
        ("delta, identity", delta_identity.len()),
        ("delta, br", delta_br.body.len()),
        ("full download, dcz (version 1 as dictionary)", dcz.len()),
    ] {
        println!("| {name} | {n} | {:.2}% |", pct_of_br(n));
    }
    println!(
        "\nFirst response of a pair (cold: computed, compressed, cached) and the next (warm), one client:\n"
    );
    println!("| response | cold wall ms | cold server CPU ms | warm wall ms |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, cold, cpu, warm) in [
        (
            "delta (diff + serialize + gzip + br)",
            delta_cold,
            delta_cold_cpu,
            delta_warm,
        ),
        (
            "dcz (zstd with the held download as prefix)",
            dcz_cold,
            dcz_cold_cpu,
            dcz_warm,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.0} | {:.2} |",
            cold.as_secs_f64() * 1000.0,
            cpu,
            warm.as_secs_f64() * 1000.0
        );
    }

    // 3. The bare handler.
    let bare = Arc::new(Bare {
        etag: HeaderValue::from_str(&etag).map_err(|e| e.to_string())?,
        not_modified,
        identity,
        gzip,
        delta_br,
    });
    let bare_addr = servers.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let router = Router::new()
            .route("/api/v1/tests/packages/{id}", get(bare_handler))
            .route("/api/v1/tests/packages/{id}/delta", get(bare_delta))
            .with_state(bare.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok::<_, String>(addr)
    })?;

    // 4. Measure.
    let scenarios = [
        Scenario {
            name: "304 revalidation",
            expect: 304,
            headers: vec![("if-none-match", etag.clone())],
            body_len: 0,
            path: path.clone(),
        },
        Scenario {
            name: "full download (gzip)",
            expect: 200,
            headers: vec![("accept-encoding", "gzip".to_owned())],
            body_len: bare.gzip.body.len(),
            path: path.clone(),
        },
        Scenario {
            name: "delta (br)",
            expect: 200,
            headers: vec![("accept-encoding", "br".to_owned())],
            body_len: bare.delta_br.body.len(),
            path: delta_path.clone(),
        },
    ];
    if settings.wrk_print {
        println!("\nexamsync: http://{examsync_addr}    bare: http://{bare_addr}");
        println!("header: Authorization: Bearer {token}");
        for scenario in &scenarios {
            let headers: Vec<String> = scenario
                .headers
                .iter()
                .map(|(name, value)| format!("-H '{name}: {value}'"))
                .collect();
            println!(
                "{}: path {} {} (expect {}, {} body bytes)",
                scenario.name,
                scenario.path,
                headers.join(" "),
                scenario.expect,
                scenario.body_len
            );
        }
        println!("Ctrl-C stops the servers.");
        servers.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = shutdown.send(());
        return Ok(());
    }
    let mut rows = Vec::new();
    for scenario in scenarios.iter().filter(|s| {
        settings
            .scenario
            .as_deref()
            .is_none_or(|only| s.name.contains(only))
    }) {
        // Rounds alternate the two servers, so background noise hits both alike; the
        // median round of each is reported.
        let mut runs: Vec<(&str, Vec<Outcome>)> = Vec::new();
        for (server, addr) in [("bare axum", bare_addr), ("examsync", examsync_addr)] {
            if settings
                .only
                .as_deref()
                .is_some_and(|only| !server.contains(only))
            {
                continue;
            }
            runs.push((server, Vec::new()));
            let _ = addr;
        }
        for _ in 0..settings.rounds.max(1) {
            for (server, outcomes) in runs.iter_mut() {
                let addr = if *server == "examsync" {
                    examsync_addr
                } else {
                    bare_addr
                };
                let url = format!("http://{addr}{}", scenario.path);
                let loadavg = bench::loadavg();
                let outcome = match &settings.wrk {
                    Some(wrk) => load_wrk(settings, wrk, &url, &token, scenario)?,
                    None => clients.block_on(load(settings, &url, &token, scenario))?,
                };
                eprintln!(
                    "{:<22} {:<10} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {:>5.1} µs/req  load average {loadavg}",
                    scenario.name,
                    server,
                    outcome.per_sec,
                    outcome.p50_ms,
                    outcome.p99_ms,
                    outcome.server_cpu_us
                );
                outcomes.push(outcome);
            }
        }
        let medians: Vec<(&str, Outcome)> = runs
            .into_iter()
            .map(|(server, mut outcomes)| {
                outcomes.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
                let median = outcomes.swap_remove(outcomes.len() / 2);
                (server, median)
            })
            .collect();
        let bare = medians
            .iter()
            .find(|(server, _)| *server == "bare axum")
            .map_or((f64::NAN, f64::NAN), |(_, o)| (o.per_sec, o.server_cpu_us));
        for (server, outcome) in medians {
            rows.push((scenario.name, server, outcome, bare));
        }
    }

    println!(
        "\n{}{} clients, {} s per run ({} s warm-up), median of {} alternating rounds, {} questions ({} bytes identity, {} bytes gzip), database {}\n",
        match &settings.wrk {
            Some(_) => format!(
                "wrk -t1 on core {}, server ({} thread{}) alone on core {}, ",
                settings.wrk_cpu,
                settings.server_threads,
                if settings.server_threads == 1 {
                    ""
                } else {
                    "s"
                },
                settings.server_cpu
            ),
            None => String::new(),
        },
        settings.clients,
        settings.seconds,
        settings.warmup_seconds,
        settings.rounds.max(1),
        settings.questions,
        bare.identity.body.len(),
        bare.gzip.body.len(),
        if database_url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!(
        "| scenario | server | requests/s | p50 ms | p99 ms | share of bare (req/s) | server CPU µs/req | bare CPU ÷ this |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (scenario, server, outcome, (bare_rate, bare_cpu)) in rows {
        println!(
            "| {scenario} | {server} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.1} | {:.0}% |",
            outcome.per_sec,
            outcome.p50_ms,
            outcome.p99_ms,
            100.0 * outcome.per_sec / bare_rate,
            outcome.server_cpu_us,
            100.0 * bare_cpu / outcome.server_cpu_us
        );
    }
    let _ = shutdown.send(());
    Ok(())
}

/// A response examsync gave, kept to be served again as it was: status, headers (but
/// `Date`, which hyper adds itself) and body.
struct Captured {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Captured {
    async fn of(response: reqwest::Response) -> Result<Captured, String> {
        let status = response.status();
        let mut headers = response.headers().clone();
        headers.remove(header::DATE);
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok(Captured {
            status,
            headers,
            body,
        })
    }

    fn respond(&self) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// The baseline: examsync's own responses from memory (the same status line, headers and
/// bytes, request id included), with no auth, middleware or database.
struct Bare {
    etag: HeaderValue,
    not_modified: Captured,
    identity: Captured,
    gzip: Captured,
    delta_br: Captured,
}

/// The delta route's baseline: its br response.
async fn bare_delta(State(bare): State<Arc<Bare>>) -> Response {
    bare.delta_br.respond()
}

/// The download route's baseline: a `304` when `If-None-Match` is the ETag, else the gzip or
/// identity response.
async fn bare_handler(State(bare): State<Arc<Bare>>, headers: HeaderMap) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == bare.etag.as_bytes())
    {
        return bare.not_modified.respond();
    }
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .is_some_and(|v| v.as_bytes().windows(4).any(|w| w == b"gzip"));
    if gzip {
        bare.gzip.respond()
    } else {
        bare.identity.respond()
    }
}

struct Scenario {
    name: &'static str,
    path: String,
    expect: u16,
    headers: Vec<(&'static str, String)>,
    body_len: usize,
}

struct Outcome {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of the server threads (user + system) per request, in microseconds.
    server_cpu_us: f64,
}

/// CPU time of the server runtime's threads (workers and blocking threads), from the
/// scheduler's exact per-thread account (`se.sum_exec_runtime` in `/proc/…/sched`, in
/// nanoseconds), where the tick counts of `/proc/…/stat` (10 ms, charged to whichever thread
/// a tick lands on) misattributed time between the server and client threads sharing the
/// two cores.
mod server_cpu {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    /// CPU time of the server threads that have exited.
    static EXITED_NS: AtomicU64 = AtomicU64::new(0);

    /// `se.sum_exec_runtime` (milliseconds with six decimals) of one thread's `sched` file.
    fn sum_exec_runtime_ns(sched: &str) -> Option<u64> {
        let line = sched
            .lines()
            .find(|line| line.starts_with("se.sum_exec_runtime"))?;
        let ms = line.rsplit(':').next()?.trim();
        let (whole, fraction) = ms.split_once('.').unwrap_or((ms, "0"));
        let fraction = format!("{fraction:0<6}");
        Some(whole.parse::<u64>().ok()? * 1_000_000 + fraction.get(..6)?.parse::<u64>().ok()?)
    }

    /// Runs on a server thread as it exits: its time is kept.
    pub fn retire() {
        if let Ok(sched) = std::fs::read_to_string("/proc/thread-self/sched") {
            EXITED_NS.fetch_add(sum_exec_runtime_ns(&sched).unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// CPU time used so far by all threads named `server`, alive or exited.
    pub fn total() -> Duration {
        let alive: u64 = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.starts_with("server"))
            })
            .filter_map(|task| std::fs::read_to_string(task.path().join("sched")).ok())
            .filter_map(|sched| sum_exec_runtime_ns(&sched))
            .sum();
        Duration::from_nanos(alive + EXITED_NS.load(Ordering::Relaxed))
    }
}

/// `clients` clients, each on its own connection, back to back until the deadline.
async fn load(
    settings: &Settings,
    url: &str,
    token: &str,
    scenario: &Scenario,
) -> Result<Outcome, String> {
    let mut tasks = Vec::new();
    let start = Instant::now() + Duration::from_secs(settings.warmup_seconds);
    let deadline = start + Duration::from_secs(settings.seconds);
    for _ in 0..settings.clients {
        let client = reqwest::Client::builder()
            .no_gzip()
            .no_brotli()
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = client.get(url).bearer_auth(token);
        for (name, value) in &scenario.headers {
            request = request.header(*name, value.as_str());
        }
        let request = request.build().map_err(|e| e.to_string())?;
        let (expect, body_len) = (scenario.expect, scenario.body_len);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            loop {
                let Some(request) = request.try_clone() else {
                    return Err("request not clonable".to_owned());
                };
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let response = client.execute(request).await.map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if status != expect || body.len() != body_len {
                    return Err(format!(
                        "unexpected answer: {status} with {} bytes (wanted {expect}, {body_len})",
                        body.len()
                    ));
                }
                if sent >= start {
                    latencies.push(sent.elapsed());
                }
            }
            Ok::<_, String>(latencies)
        }));
    }
    // The servers' CPU time over the measured window.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let before = server_cpu::total();
        tokio::time::sleep_until(deadline.into()).await;
        server_cpu::total().saturating_sub(before)
    });
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    latencies.sort();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1000.0
    };
    let server_cpu = cpu.await.map_err(|e| e.to_string())?;
    Ok(Outcome {
        per_sec: latencies.len() as f64 / settings.seconds as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        server_cpu_us: server_cpu.as_secs_f64() * 1e6 / latencies.len().max(1) as f64,
    })
}

/// One wrk run pinned to `settings.wrk_cpu`; its output.
fn run_wrk(
    settings: &Settings,
    wrk: &str,
    url: &str,
    token: &str,
    scenario: &Scenario,
    seconds: u64,
) -> Result<String, String> {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("Authorization", authorization.as_str())];
    headers.extend(scenario.headers.iter().map(|(n, v)| (*n, v.as_str())));
    Wrk {
        program: wrk,
        cpu: settings.wrk_cpu,
        connections: settings.clients,
        seconds,
    }
    .run(url, &headers)
}

/// A wrk duration (`812.00us`, `1.20ms`, `2.00s`) in milliseconds.
fn wrk_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// A wrk byte count (`512.00B`, `1.50KB`, `2.00GB`: powers of 1024).
fn wrk_bytes(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number * scale)
}

/// The external load generator: a discarded warm-up run, then the measured one, with the
/// server threads' CPU time over it.
fn load_wrk(
    settings: &Settings,
    wrk: &str,
    url: &str,
    token: &str,
    scenario: &Scenario,
) -> Result<Outcome, String> {
    if settings.warmup_seconds > 0 {
        run_wrk(settings, wrk, url, token, scenario, settings.warmup_seconds)?;
    }
    let before = server_cpu::total();
    let out = run_wrk(settings, wrk, url, token, scenario, settings.seconds)?;
    let server_cpu = server_cpu::total().saturating_sub(before);
    let unparsed = || format!("unexpected wrk output:\n{out}");
    let percentile = |p: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|rest| wrk_ms(rest.trim()))
    };
    // `  1234567 requests in 10.00s, 500.00MB read`
    let totals = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .ok_or_else(unparsed)?;
    let requests: u64 = totals
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(unparsed)?;
    let read = totals
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(wrk_bytes)
        .ok_or_else(unparsed)?;
    let per_sec: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(unparsed)?;
    // Status line and headers are a few hundred bytes: a response of another size (a 200
    // where a 304 was expected, an error body) shows here. wrk rounds the bytes read to
    // three significant digits, hence the 1% either way.
    let per_request = read / requests.max(1) as f64;
    let body = scenario.body_len as f64;
    if per_request < body * 0.99 || per_request > body * 1.01 + 1024.0 {
        return Err(format!(
            "{per_request:.0} bytes read per request, for a body of {body} bytes:\n{out}"
        ));
    }
    Ok(Outcome {
        per_sec,
        p50_ms: percentile("50%").ok_or_else(unparsed)?,
        p99_ms: percentile("99%").ok_or_else(unparsed)?,
        server_cpu_us: server_cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
    })
}

/// A deterministic bank of realistic-looking questions, all published, 2–5 options. The text
/// is drawn from a vocabulary of made-up words by a fixed pseudo-random sequence, so that it
/// compresses like prose (about 5:1 with br, as a real bank does) rather than like a
/// template repeated 5,000 times: the shares of the full download below depend on it.
fn bank(count: usize) -> Vec<QuestionInput> {
    (0..count)
        .map(|n| {
            let mut words = Words::new(n as u64);
            let options = 2 + n % 4;
            QuestionInput {
                id: Some(Uuid::from_u128(0xbe00_0000_0000_4000_8000_0000_0000_0000 + n as u128)),
                stem: format!(
                    "A {}-year-old presents with {}. Which of the following is the most appropriate next step?",
                    18 + n % 70,
                    words.text(45)
                ),
                options: (0..options).map(|_| words.text(7)).collect(),
                correct_index: (n % options) as i32,
                explanation_md: Some(format!("**Answer {}.** {}", n % options, words.text(95))),
                year_id: 1 + (n % 5) as i32,
                block_id: Some(10 + (n % 20) as i32),
                theme_id: Some(100 + (n % 100) as i32),
                cognitive_level: Some(["C1", "C2", "C3"][n % 3].to_owned()),
                difficulty: Some(["EASY", "MEDIUM", "HARD"][n % 3].to_owned()),
                status: Some(QuestionStatus::Published),
                media: None,
            }
        })
        .collect()
}

/// Made-up words from syllables, picked by a xorshift sequence seeded per question.
struct Words(u64);

impl Words {
    const SYLLABLES: [&'static str; 48] = [
        "ab", "ac", "al", "an", "ar", "bi", "ca", "ce", "co", "cy", "de", "di", "do", "en", "er",
        "es", "fi", "ga", "ge", "he", "hy", "id", "in", "is", "la", "le", "li", "lo", "ma", "me",
        "mi", "mo", "na", "ne", "ni", "no", "on", "or", "pa", "pe", "ra", "re", "ri", "ro", "sa",
        "ta", "ti", "to",
    ];

    fn new(seed: u64) -> Words {
        Words(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }

    fn word(&mut self) -> String {
        // A vocabulary of about 2,000 words: Zipf-like, short common words more often.
        let rank = self.next() % 2048;
        let rank = rank * rank / 2048;
        let mut w = String::new();
        let mut r = rank + 7;
        for _ in 0..(2 + rank % 3) {
            w.push_str(Self::SYLLABLES[r % Self::SYLLABLES.len()]);
            r /= Self::SYLLABLES.len();
            r += rank;
        }
        w
    }

    fn text(&mut self, n: usize) -> String {
        (0..n).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

/// The week's edits of `bank(count)`: every 50th question's explanation rewritten (2%),
/// every 200th retired to DRAFT (0.5%), and `count / 100` new questions (1%).
fn update(count: usize) -> Vec<QuestionInput> {
    let mut out = Vec::new();
    for (n, mut q) in bank(count).into_iter().enumerate() {
        if n % 50 == 7 {
            q.explanation_md = q
                .explanation_md
                .map(|e| format!("{e} Reviewed: see the 2026 guideline."));
            out.push(q);
        } else if n % 200 == 3 {
            q.status = Some(QuestionStatus::Draft);
            out.push(q);
        }
    }
    out.extend(bank(count + count / 100).into_iter().skip(count));
    out
}
