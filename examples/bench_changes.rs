//! Pull feed benchmark (docs/benchmarks.md, "## Pull feed").
//!
//! ```text
//! cargo run --release --example bench_changes                  # a temporary SQLite file
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release --example bench_changes                # a fresh database next to it
//! ```
//!
//! One server in this process on port 0 (rate limits off), two students seeded straight into
//! the tables: one with 50 answers (one session), one with 50,000 (500 sessions of 100, one
//! change counter value per session, as one batch per session leaves them). Then:
//! 1. each student's restore in pages of 500 over HTTP: total, pages, time per page;
//! 2. pages of the same size (50 items) at the start, middle and end of the long history and
//!    the short one's whole feed: the cost of a page against the length of the history;
//! 3. an incremental pull that finds nothing (the cursor of the end of the feed) against a
//!    `304` of a package download, for each count of concurrent clients in `BENCH_CLIENTS`
//!    (16,64), `BENCH_SECONDS` (3) each, `BENCH_ROUNDS` (3) rounds alternating the two;
//!    requests/s, median of rounds. With `BENCH_WRK=/usr/bin/wrk` that load comes from wrk
//!    pinned to core `BENCH_WRK_CPU` (1), one thread and that many connections, while this
//!    process (the server) is pinned to core 0 with one worker thread
//!    (`BENCH_SERVER_THREADS`); the database server is not pinned. wrk's requests take turns
//!    through `BENCH_STUDENTS` (64) students — the long history's and short ones' — each with
//!    its own token and end cursor, as a server of many phones sees them; the `304`s take
//!    turns through the same tokens. Without wrk, all the load is the long history's.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use examsync::{
    Application, Config,
    auth::{Role, sign_token},
    config::Secret,
    packages::{self, BuildRequest},
    questions::{QuestionInput, QuestionStatus, import_questions},
};
use examsync_test_support::bench::{self, RotatingRequest, Wrk};
use sea_orm::{ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, EntityTrait};
use serde_json::Value;
use uuid::Uuid;

const SECRET: &str = "bench-changes-secret-0123456789abcdef";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> Result<(), String> {
    let clients: Vec<usize> = env_or("BENCH_CLIENTS", "16,64")
        .split(',')
        .map(|c| c.trim().parse().map_err(|_| "BENCH_CLIENTS"))
        .collect::<Result<_, _>>()?;
    let students: usize = env_or("BENCH_STUDENTS", "64")
        .parse()
        .map_err(|_| "BENCH_STUDENTS")?;
    let seconds: u64 = env_or("BENCH_SECONDS", "3")
        .parse()
        .map_err(|_| "BENCH_SECONDS")?;
    let rounds: usize = env_or("BENCH_ROUNDS", "3")
        .parse()
        .map_err(|_| "BENCH_ROUNDS")?;
    let wrk_program = std::env::var("BENCH_WRK").ok().filter(|v| !v.is_empty());
    let wrk_cpu: usize = env_or("BENCH_WRK_CPU", "1")
        .parse()
        .map_err(|_| "BENCH_WRK_CPU")?;
    // With wrk, the server has one core: one worker thread, as tokio starts on a server
    // given one core (and as bench_packages runs it), rather than two taking turns on it.
    let server_threads: usize = env_or(
        "BENCH_SERVER_THREADS",
        if wrk_program.is_some() { "1" } else { "2" },
    )
    .parse()
    .map_err(|_| "BENCH_SERVER_THREADS")?;
    if wrk_program.is_some() {
        // Before any other thread exists: every thread started later inherits the core.
        bench::pin_self(if wrk_cpu == 0 { 1 } else { 0 })?;
    }
    let load = Load {
        clients,
        students: students.max(1),
        seconds,
        rounds,
        wrk: wrk_program.map(|program| (program, wrk_cpu)),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(bench_main(&load))
}

/// How the empty pull and the `304` are loaded.
struct Load {
    clients: Vec<usize>,
    students: usize,
    seconds: u64,
    rounds: usize,
    /// wrk's program and core.
    wrk: Option<(String, usize)>,
}

impl Load {
    fn wrk(&self, connections: usize) -> Option<Wrk<'_>> {
        self.wrk.as_ref().map(|(program, cpu)| Wrk {
            program,
            cpu: *cpu,
            connections,
            seconds: self.seconds,
        })
    }
}

async fn bench_main(load: &Load) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (url, cleanup) = match std::env::var("BENCH_DATABASE_URL") {
        Ok(admin_url) => {
            let name = format!("examsync_bench_changes_{}", Uuid::new_v4().simple());
            let admin = Database::connect(&admin_url)
                .await
                .map_err(|e| e.to_string())?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .map_err(|e| e.to_string())?;
            (
                examsync_test_support::replace_database(&admin_url, &name),
                Some((admin, name)),
            )
        }
        Err(_) => (
            format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
            None,
        ),
    };
    let backend = if cleanup.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let mut config = Config::with_database(url);
    config.jwt_secret = Some(Secret(SECRET.into()));
    config.rate_limit_per_minute = 0;
    config.package_rate_limit_per_minute = 0;
    // The page and `304` costs are compared without grants in the way (bench_packages measures them).
    config.access = examsync::access::AccessMode::Open;
    let application = Application::build(config)
        .await
        .map_err(|e| e.to_string())?;
    let addr = application.local_addr().map_err(|e| e.to_string())?;
    let db = application.state().db.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let base = format!("http://{addr}");
    let result = run(&db, &base, backend, load).await;
    let _ = stop.send(());
    let _ = server.await;
    db.close().await.ok();
    if let Some((admin, name)) = cleanup {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
    result
}

async fn run(
    db: &DatabaseConnection,
    base: &str,
    backend: &str,
    load: &Load,
) -> Result<(), String> {
    let questions = seed_questions(db).await?;
    let package = packages::build_package(
        db,
        BuildRequest {
            name: "bench".into(),
            description: None,
            scope: packages::PackageScope::Program,
            year_id: None,
            block_id: None,
            theme_id: None,
            publish: true,
            created_by: None,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let light = Uuid::new_v4();
    let heavy = Uuid::new_v4();
    seed_history(db, light, 1, 50, &questions).await?;
    seed_history(db, heavy, 500, 100, &questions).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.clients.iter().max().copied().unwrap_or(16) * 2)
        .build()
        .map_err(|e| e.to_string())?;
    let token = |user: Uuid| sign_token(SECRET, user, Role::Student, 3600).unwrap_or_default();

    println!("## Pull feed — {backend}, {} cores\n", num_cpus());
    println!("### Restore in pages of 500\n");
    println!(
        "| student | answers | pages | total ms | per page ms (median) | first page ms | last page ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut cursors = Vec::new();
    let mut end_cursor = String::new();
    for (label, user, answers) in [
        ("short history", light, 50),
        ("long history", heavy, 50_000),
    ] {
        let (times, page_cursors, end) = restore(&client, base, &token(user), 500).await?;
        let total: f64 = times.iter().sum();
        println!(
            "| {label} | {answers} | {} | {total:.1} | {:.2} | {:.2} | {:.2} |",
            times.len(),
            median(times.clone()),
            times[0],
            times[times.len() - 1]
        );
        if user == heavy {
            cursors = page_cursors;
            end_cursor = end;
        }
    }

    println!("\n### A page of 50 items against the length of the history\n");
    println!("| where | median ms (200 pulls) |");
    println!("| --- | ---: |");
    let heavy_token = token(heavy);
    let light_token = token(light);
    let short = page_time(&client, base, &light_token, None, 50, 200).await?;
    println!("| the short history's whole feed (50 answers) | {short:.2} |");
    let mut worst: f64 = 0.0;
    for (label, at) in [
        ("long history, start", None),
        (
            "long history, middle",
            cursors.get(cursors.len() / 2).cloned(),
        ),
        (
            "long history, end",
            cursors
                .len()
                .checked_sub(2)
                .and_then(|i| cursors.get(i))
                .cloned(),
        ),
    ] {
        let t = page_time(&client, base, &heavy_token, at.as_deref(), 50, 200).await?;
        worst = worst.max(t);
        println!("| {label} | {t:.2} |");
    }
    println!(
        "\nWorst long-history page / short-history page: {:.2}× (target ≤ 1.5×)",
        worst / short
    );

    println!("\n### An incremental pull that finds nothing, against a package `304`\n");
    let package_path = format!("/api/v1/tests/packages/{}", package.id);
    let etag = format!("W/\"{}\"", package.version_hash);
    // The students whose pulls take turns: the long history's first, then short ones.
    let mut pullers = vec![(heavy_token.clone(), end_cursor.clone())];
    for _ in 1..load.students {
        let student = Uuid::new_v4();
        seed_history(db, student, 1, 5, &questions).await?;
        let student_token = token(student);
        let (_, _, end) = restore(&client, base, &student_token, 500).await?;
        pullers.push((student_token, end));
    }
    let pull_path = |cursor: &str| format!("/api/v1/sync/changes?since={cursor}");
    let pulls: Vec<RotatingRequest> = pullers
        .iter()
        .map(|(token, cursor)| RotatingRequest {
            path: pull_path(cursor),
            headers: vec![("Authorization".into(), format!("Bearer {token}"))],
        })
        .collect();
    let revalidations: Vec<RotatingRequest> = pullers
        .iter()
        .map(|(token, _)| RotatingRequest {
            path: package_path.clone(),
            headers: vec![
                ("Authorization".into(), format!("Bearer {token}")),
                ("If-None-Match".into(), etag.clone()),
            ],
        })
        .collect();
    // Every answer is checked once here; wrk only counts errors.
    for (token, cursor) in &pullers {
        let page = pull(&client, base, token, Some(cursor), 500).await?;
        if page["has_more"] != Value::Bool(false) || page["answers"] != Value::Array(Vec::new()) {
            return Err(format!("the end cursor's pull is not empty: {page}"));
        }
    }
    load_304(
        &client,
        &format!("{base}{package_path}"),
        &heavy_token,
        &etag,
    )
    .await?;

    let mut rows = Vec::new();
    for &clients in &load.clients {
        let mut pull_rates = Vec::new();
        let mut not_modified = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..load.rounds {
            let (p, n) = match load.wrk(clients) {
                Some(wrk) => {
                    let (p, p_cpu) = wrk_rate(&wrk, base, &pulls).await?;
                    let (n, n_cpu) = wrk_rate(&wrk, base, &revalidations).await?;
                    println!(
                        "wrk round, {clients} connections: pull {p:.0}/s ({p_cpu:.1} µs of this \
                         process's CPU each), 304 {n:.0}/s ({n_cpu:.1} µs), load average {}",
                        bench::loadavg()
                    );
                    (p, n)
                }
                None => (
                    self::load(
                        &client,
                        &format!("{base}{}", pull_path(&end_cursor)),
                        &heavy_token,
                        None,
                        200,
                        clients,
                        load.seconds,
                    )
                    .await?,
                    self::load(
                        &client,
                        &format!("{base}{package_path}"),
                        &heavy_token,
                        Some(&etag),
                        304,
                        clients,
                        load.seconds,
                    )
                    .await?,
                ),
            };
            ratios.push(p / n);
            pull_rates.push(p);
            not_modified.push(n);
        }
        rows.push((
            clients,
            median(pull_rates),
            median(not_modified),
            median(ratios),
        ));
    }
    if load.wrk.is_some() {
        println!(
            "\nLoad: wrk, one thread, pinned, its requests taking turns through {} students; \
             server pinned to the other core.\n",
            load.students
        );
    }
    println!(
        "| clients | empty pull `GET /api/v1/sync/changes?since=<end>`, requests/s | \
         `304` of a package, requests/s | empty pull / `304` (median of {} rounds' ratios; target ≥ 50%) |",
        load.rounds
    );
    println!("| ---: | ---: | ---: | ---: |");
    for (clients, p, n, ratio) in rows {
        println!("| {clients} | {p:.0} | {n:.0} | {:.0}% |", 100.0 * ratio);
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

async fn pull(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    since: Option<&str>,
    limit: usize,
) -> Result<Value, String> {
    let mut request = client
        .get(format!("{base}/api/v1/sync/changes"))
        .bearer_auth(token)
        .query(&[("limit", limit.to_string())]);
    if let Some(since) = since {
        request = request.query(&[("since", since)]);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("pull: {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// A whole restore: each page's time in ms, the cursor after each page, the end cursor.
async fn restore(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    limit: usize,
) -> Result<(Vec<f64>, Vec<String>, String), String> {
    let mut times = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor: Option<String> = None;
    let mut items = 0;
    loop {
        let started = Instant::now();
        let page = pull(client, base, token, cursor.as_deref(), limit).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        items += page["answers"].as_array().map_or(0, Vec::len);
        let next = page["cursor"].as_str().unwrap_or_default().to_owned();
        cursors.push(next.clone());
        cursor = Some(next);
        if page["has_more"] != Value::Bool(true) {
            break;
        }
    }
    if items == 0 {
        return Err("the restore returned no answers".into());
    }
    Ok((times, cursors, cursor.unwrap_or_default()))
}

/// The median time of `times` pulls of `limit` items from `since`.
async fn page_time(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    since: Option<&str>,
    limit: usize,
    times: usize,
) -> Result<f64, String> {
    let mut samples = Vec::with_capacity(times);
    for _ in 0..times {
        let started = Instant::now();
        let page = pull(client, base, token, since, limit).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        if page["answers"].as_array().map_or(0, Vec::len)
            + page["sessions"].as_array().map_or(0, Vec::len)
            == 0
        {
            return Err("an empty page where items were expected".into());
        }
    }
    Ok(median(samples))
}

/// Requests/s of wrk sending `requests` in turn to `base` (on a blocking thread: wrk runs
/// for seconds), and this process's CPU µs per request meanwhile.
async fn wrk_rate(
    wrk: &Wrk<'_>,
    base: &str,
    requests: &[RotatingRequest],
) -> Result<(f64, f64), String> {
    let (program, cpu, connections, seconds) = (
        wrk.program.to_owned(),
        wrk.cpu,
        wrk.connections,
        wrk.seconds,
    );
    let base = base.to_owned();
    let requests = requests.to_vec();
    let before = bench::process_cpu();
    let rate = tokio::task::spawn_blocking(move || {
        Wrk {
            program: &program,
            cpu,
            connections,
            seconds,
        }
        .requests_per_second_rotating(&base, &requests)
    })
    .await
    .map_err(|e| e.to_string())??;
    let cpu = bench::process_cpu().saturating_sub(before);
    Ok((rate, cpu.as_secs_f64() * 1e6 / (rate * seconds as f64)))
}

/// One revalidation answered `304`, or why not.
async fn load_304(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    etag: &str,
) -> Result<(), String> {
    let response = client
        .get(url)
        .bearer_auth(token)
        .header("If-None-Match", etag)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 304 {
        return Err(format!(
            "{url}: {} where 304 was expected",
            response.status()
        ));
    }
    Ok(())
}

/// Requests/s of `clients` loops GETting `url` for `seconds`; every answer must be `status`.
async fn load(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    if_none_match: Option<&str>,
    status: u16,
    clients: usize,
    seconds: u64,
) -> Result<f64, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let url = Arc::new(url.to_owned());
    let token = Arc::new(token.to_owned());
    let etag = Arc::new(if_none_match.map(str::to_owned));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, token, etag) =
                (client.clone(), url.clone(), token.clone(), etag.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let mut request = client.get(url.as_str()).bearer_auth(token.as_str());
                    if let Some(etag) = etag.as_deref() {
                        request = request.header("If-None-Match", etag);
                    }
                    let response = request.send().await.map_err(|e| e.to_string())?;
                    if response.status().as_u16() != status {
                        return Err(format!("{url}: {}", response.status()));
                    }
                    let _ = response.bytes().await;
                    done += 1;
                }
                Ok::<u64, String>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())??;
    }
    Ok(total as f64 / seconds as f64)
}

async fn seed_questions(db: &DatabaseConnection) -> Result<Vec<Uuid>, String> {
    let items: Vec<QuestionInput> = (0..100)
        .map(|n| QuestionInput {
            id: None,
            stem: format!("Benchmark question {n}"),
            options: (0..4).map(|o| format!("Option {o} of {n}")).collect(),
            correct_index: n % 4,
            explanation_md: None,
            year_id: 1,
            block_id: Some(1),
            theme_id: Some(1),
            cognitive_level: None,
            difficulty: None,
            status: Some(QuestionStatus::Published),
            media: None,
        })
        .collect();
    Ok(import_questions(db, items)
        .await
        .map_err(|e| e.to_string())?
        .ids)
}

/// `sessions` sessions of `per_session` answers for a new user, one change counter value per
/// session.
async fn seed_history(
    db: &DatabaseConnection,
    user: Uuid,
    sessions: i64,
    per_session: usize,
    questions: &[Uuid],
) -> Result<(), String> {
    let now = chrono::Utc::now();
    entity::user::Entity::insert(entity::user::ActiveModel {
        id: Set(user.into()),
        role: Set(entity::Role::Student),
        created_at: Set(now),
        last_sync_at: Set(None),
        acked_count: Set(sessions * per_session as i64),
        duplicate_count: Set(0),
        rejected_count: Set(0),
        change_seq: Set(sessions),
    })
    .exec(db)
    .await
    .map_err(|e| e.to_string())?;
    let mut answers = Vec::new();
    for seq in 1..=sessions {
        let session = Uuid::new_v4();
        entity::test_session::Entity::insert(entity::test_session::ActiveModel {
            id: Set(session.into()),
            user_id: Set(user.into()),
            offline_session_id: Set(Some(Uuid::new_v4().into())),
            mode: Set(entity::SessionMode::Tutor),
            status: Set(entity::SessionStatus::Submitted),
            year: Set(1),
            block_id: Set(Some(1)),
            theme_id: Set(Some(1)),
            total_questions: Set(per_session as i32),
            answered_count: Set(per_session as i32),
            correct_count: Set(0),
            started_at: Set(now),
            submitted_at: Set(Some(now)),
            updated_at: Set(now),
            change_seq: Set(seq),
        })
        .exec(db)
        .await
        .map_err(|e| e.to_string())?;
        for question in questions.iter().take(per_session) {
            answers.push(entity::session_answer::ActiveModel {
                id: Set(Uuid::new_v4().into()),
                session_id: Set(session.into()),
                user_id: Set(user.into()),
                question_id: Set((*question).into()),
                attempt_id: Set(Uuid::new_v4().into()),
                selected_option_index: Set(1),
                is_correct: Set(false),
                answered_at: Set(now),
                changed_count: Set(0),
                created_at: Set(now),
                updated_at: Set(now),
                change_seq: Set(seq),
            });
        }
        if answers.len() >= 1000 {
            entity::session_answer::Entity::insert_many(std::mem::take(&mut answers))
                .exec_without_returning(db)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if !answers.is_empty() {
        entity::session_answer::Entity::insert_many(answers)
            .exec_without_returning(db)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
