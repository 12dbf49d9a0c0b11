//! Losing the primary (issue 22): a primary and a `pg_basebackup` standby streaming from
//! it, the instances reaching the database through a relay (what a load balancer or a DNS
//! name is in a deployment), phones syncing through two instances (one on Redis, one on
//! the in-process cache). The primary is SIGKILLed under load, the standby promoted, the
//! relay re-pointed.
//!
//! - synchronous standby: every answer ever ACKED is in the new primary exactly once;
//! - asynchronous standby over a link that lags: the answers lost are counted and printed
//!   (the figure of `docs/reliability.md`), not asserted;
//! - both: a batch cached before the failover, resent through the same instance after
//!   it, is answered from the new primary (the cache namespace holds the timeline);
//! - the trap: a COMMIT whose synchronous-replication wait is cancelled is answered 503,
//!   a retry on the old primary too (its DUPLICATE would be only as durable as the row),
//!   and the retry after the failover is ACKED exactly once.
use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use examsync::auth::{Role, sign_token};
use examsync_test_support::{Attempt, random_batch, rest_body};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ONE_RUN_AT_A_TIME, SECRET, checks,
    phone::{self, PhoneConfig, Question, Shared, Surface},
    proxy::Proxy,
    relay::TcpRelay,
    services::{PgCluster, RedisServer, ServeConfig, ServerProcess, Tools, tail},
    services_required, wait_ready, write_bank,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standby {
    Synchronous,
    /// Streaming over a link that delivers every byte this late.
    Asynchronous {
        lag: Duration,
    },
}

const PHONES: usize = 6;
const LOAD: Duration = Duration::from_secs(14);
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// The rig: primary, standby, relays, Redis, two instances.
struct Rig {
    tools: Tools,
    primary: PgCluster,
    standby: PgCluster,
    /// Standby → primary (the replication link).
    link: TcpRelay,
    /// Instances → current primary.
    db_relay: TcpRelay,
    _redis: RedisServer,
    instances: Vec<ServerProcess>,
    work: tempfile::TempDir,
    bank: Arc<Vec<Question>>,
}

fn tools_or_skip() -> Option<Tools> {
    match Tools::find() {
        Ok(tools) => Some(tools),
        Err(missing) => {
            assert!(
                !services_required(),
                "{missing}, but EXAMSYNC_REQUIRE_SERVICES=1"
            );
            examsync_test_support::report_skip(&format!("fault_injection: {missing}"));
            None
        }
    }
}

async fn connect(url: &str) -> DatabaseConnection {
    let mut options = sea_orm::ConnectOptions::new(url.to_owned());
    options.max_connections(1).sqlx_logging(false);
    Database::connect(options).await.unwrap()
}

async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .map(|row| row.try_get_by_index::<i64>(0).unwrap())
        .unwrap_or(0)
}

impl Rig {
    async fn build(tools: Tools, standby: Standby, instances: usize, seed: u64) -> Rig {
        let mut rng = StdRng::seed_from_u64(seed);
        let work = tempfile::Builder::new()
            .prefix("examsync-failover-")
            .tempdir()
            .unwrap();
        let primary = PgCluster::start(&tools).await.unwrap();
        let admin = connect(&primary.admin_url()).await;
        admin
            .execute_unprepared("CREATE DATABASE examsync")
            .await
            .unwrap();
        let bank_file = work.path().join("bank.json");
        let bank = Arc::new(write_bank(&bank_file, &mut rng));
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_examsync"));
        let import = Command::new(&binary)
            .args(["questions", "import"])
            .arg(&bank_file)
            .env("DATABASE_URL", primary.url("examsync"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "questions import: {}",
            String::from_utf8_lossy(&import.stderr)
        );

        let link = TcpRelay::start(primary.port).await;
        if let Standby::Asynchronous { lag } = standby {
            link.set_latency(lag);
        }
        let standby_cluster = PgCluster::standby_of(&tools, &primary, link.port)
            .await
            .unwrap();
        if standby == Standby::Synchronous {
            // Only now, so the standby's copy of the configuration does not wait for a
            // standby of its own once promoted.
            for sql in [
                "ALTER SYSTEM SET synchronous_standby_names = 'standby'",
                "SELECT pg_reload_conf()",
            ] {
                admin.execute_unprepared(sql).await.unwrap();
            }
        }
        let want = match standby {
            Standby::Synchronous => "sync",
            Standby::Asynchronous { .. } => "async",
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let streaming = scalar_i64(
                &admin,
                &format!(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = \
                     'standby' AND state = 'streaming' AND sync_state = '{want}'"
                ),
            )
            .await;
            if streaming == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby is not streaming ({want}):\n{}",
                standby_cluster.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin.close().await.ok();

        let db_relay = TcpRelay::start(primary.port).await;
        let redis = RedisServer::start(&tools.redis_server, work.path())
            .await
            .unwrap();
        let serve = ServeConfig {
            binary,
            database_url: format!("postgres://postgres@127.0.0.1:{}/examsync", db_relay.port),
            redis_url: redis.url(),
            redis_prefix: "examsync-failover:".into(),
            jwt_secret: SECRET.into(),
            extra_env: Vec::new(),
        };
        let mut servers = Vec::new();
        for i in 0..instances {
            let mut config = serve.clone();
            // Instance b: the in-process cache (no REDIS_URL).
            if i == 1 {
                config.redis_url = String::new();
            }
            let log = work.path().join(format!("instance-{i}.log"));
            servers.push(ServerProcess::start(&config, log).await.unwrap());
        }
        Rig {
            tools,
            primary,
            standby: standby_cluster,
            link,
            db_relay,
            _redis: redis,
            instances: servers,
            work,
            bank,
        }
    }

    /// SIGKILL the primary (its machine dies, with what its link still carried), promote
    /// the standby, re-point the instances' relay. Returns the promotion's duration.
    async fn fail_over(&mut self) -> Duration {
        self.primary.kill_hard().unwrap();
        self.link.cut();
        let started = Instant::now();
        self.standby.promote().await.unwrap();
        let promotion = started.elapsed();
        self.db_relay.repoint(self.standby.port);
        promotion
    }

    fn bank_pairs(&self) -> Vec<(Uuid, usize)> {
        self.bank.iter().map(|q| (q.id, q.options)).collect()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for instance in &self.instances {
            out.push_str(&format!(
                "--- {}:\n{}\n",
                instance.log.display(),
                tail(&instance.log, 30)
            ));
        }
        out.push_str(&format!(
            "--- primary:\n{}\n--- standby:\n{}\n",
            self.primary.log_tail(15),
            self.standby.log_tail(15)
        ));
        out
    }
}

/// One REST batch; `Ok((status, body))` of whatever the instance answered.
async fn send(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    attempts: &[Attempt],
) -> Result<(u16, Value), String> {
    let response = client
        .post(format!("{base}/api/v1/sync/attempts:batch"))
        .bearer_auth(token)
        .json(&rest_body(attempts, None))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// The statuses of a 200's results (`None` for any other answer).
fn statuses(answer: &(u16, Value)) -> Option<Vec<String>> {
    (answer.0 == 200).then(|| {
        answer.1["results"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| match x["error_code"].as_str() {
                        Some(code) => format!("{} {code}", x["status"].as_str().unwrap_or("?")),
                        None => x["status"].as_str().unwrap_or("?").to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Resends until a 200 (503s are the failover settling), at most `within`.
async fn send_until_ok(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    attempts: &[Attempt],
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let answer = send(client, base, token, attempts).await;
        if let Ok(answer) = &answer
            && let Some(statuses) = statuses(answer)
        {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 from {base} within {within:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all(statuses: &[String], want: &str) -> bool {
    !statuses.is_empty() && statuses.iter().all(|s| s == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synchronous_standby_failover_loses_no_acked_answer() {
    failover(Standby::Synchronous).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asynchronous_standby_over_a_lagging_link_loses_acked_answers() {
    failover(Standby::Asynchronous {
        lag: Duration::from_millis(300),
    })
    .await;
}

async fn failover(mode: Standby) {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let started = Instant::now();
    let seed: u64 = std::env::var("EXAMSYNC_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rig = Rig::build(tools, mode, 2, seed).await;
    let setup = started.elapsed();
    let proxies = [
        Proxy::start(rig.instances[0].port, 0.05).await,
        Proxy::start(rig.instances[1].port, 0.05).await,
    ];
    let shared = Arc::new(Shared::new(proxies.iter().map(Proxy::base).collect()));
    let phones: Vec<_> = (0..PHONES)
        .map(|index| {
            let user = Uuid::new_v4();
            let config = PhoneConfig {
                index,
                user,
                token: sign_token(SECRET, user, Role::Student, 3600).unwrap(),
                surface: if index % 3 == 2 {
                    Surface::Graphql
                } else {
                    Surface::Rest
                },
                sends_sent_at: index % 2 == 0,
                seed: rng.random(),
            };
            tokio::spawn(phone::run(config, rig.bank.clone(), shared.clone()))
        })
        .collect();

    // The probe batches: one per instance, ACKED and cached before the failover.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let probe_user = Uuid::new_v4();
    let probe_token = sign_token(SECRET, probe_user, Role::Student, 3600).unwrap();
    let pairs = rig.bank_pairs();
    let probes: Vec<Vec<Attempt>> = (0..2)
        .map(|_| random_batch(&pairs, Uuid::new_v4(), 10, 10_000))
        .collect();

    tokio::time::sleep(LOAD / 2).await;
    let stalled_at = Instant::now();
    if let Standby::Asynchronous { .. } = mode {
        // The link stalls: what commits from now on exists on the primary only, so the
        // probes are certainly among the answers the failover loses.
        rig.link.hold(true);
    }
    for (instance, batch) in rig.instances.iter().zip(&probes) {
        let base = instance.base();
        let first =
            send_until_ok(&client, &base, &probe_token, batch, Duration::from_secs(10)).await;
        assert!(all(&first, "acked"), "probe before the failover: {first:?}");
        let again =
            send_until_ok(&client, &base, &probe_token, batch, Duration::from_secs(10)).await;
        assert!(all(&again, "duplicate"), "probe resent: {again:?}");
    }
    // Aim the kill at batches in flight.
    let in_flight = || {
        proxies
            .iter()
            .map(|p| p.stats.in_flight.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let aim = Instant::now() + Duration::from_secs(3);
    while in_flight() < 2 && Instant::now() < aim {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let in_flight_at_kill = in_flight();
    let unavailable_before = shared.stats.unavailable.load(Ordering::Relaxed);
    let acked_before_kill = shared.ledger.lock().unwrap().len();
    let stalled_for = stalled_at.elapsed();
    let promotion = rig.fail_over().await;
    let failover_at = Instant::now();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for instance in &rig.instances {
        assert!(
            wait_ready(&probe, &instance.base(), Duration::from_secs(20)).await,
            "instance on port {} not ready after the failover:\n{}",
            instance.port,
            rig.logs()
        );
    }
    let ready_after = failover_at.elapsed();

    // The same instance, the same batch, after the failover: the new primary decides.
    let want = match mode {
        Standby::Synchronous => "duplicate",
        Standby::Asynchronous { .. } => "acked",
    };
    for (instance, batch) in rig.instances.iter().zip(&probes) {
        let after = send_until_ok(
            &client,
            &instance.base(),
            &probe_token,
            batch,
            Duration::from_secs(20),
        )
        .await;
        assert!(
            all(&after, want),
            "probe resent through the same instance after the failover: {after:?} \
             (want {want})\n{}",
            rig.logs()
        );
    }

    tokio::time::sleep((LOAD / 2).saturating_sub(failover_at.elapsed())).await;
    shared.stop_generating.store(true, Ordering::SeqCst);
    *shared.give_up_at.lock().unwrap() = Some(Instant::now() + DRAIN_DEADLINE);
    let mut reports = Vec::new();
    for phone in phones {
        reports.push(phone.await.unwrap());
    }

    let db = examsync::db::connect(&rig.standby.url("examsync"), 2)
        .await
        .unwrap();
    let ledger = shared.ledger.lock().unwrap().clone();
    let dropped_acks: Vec<Uuid> = proxies
        .iter()
        .flat_map(|p| p.stats.dropped_acks.lock().unwrap().clone())
        .collect();
    let probe_rows = scalar_i64(
        &db,
        &format!("SELECT count(*) FROM attempts WHERE user_id = '{probe_user}'"),
    )
    .await;
    // The probes are no phone's: out of the way of the phones' ledger check.
    for table in ["session_answers", "attempts"] {
        let column = if table == "attempts" {
            "user_id"
        } else {
            "session_id"
        };
        let filter = if table == "attempts" {
            format!("= '{probe_user}'")
        } else {
            format!("IN (SELECT id FROM test_sessions WHERE user_id = '{probe_user}')")
        };
        db.execute_unprepared(&format!("DELETE FROM {table} WHERE {column} {filter}"))
            .await
            .unwrap();
    }
    for table in ["idempotency_records", "test_sessions"] {
        db.execute_unprepared(&format!(
            "DELETE FROM {table} WHERE user_id = '{probe_user}'"
        ))
        .await
        .unwrap();
    }
    let report = checks::check(&db, &reports, &ledger, &dropped_acks).await;
    db.close().await.ok();
    let count = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let summary = format!(
        "failover summary ({mode:?}): phones={PHONES} acknowledged={} (before the kill {}) \
         lost={} doubled={} rejected={} still queued={} | requests in flight at the kill={} \
         503/UNAVAILABLE after it={} promotion={:.2}s instances ready {:.2}s after | \
         replication link stalled {:.2}s before the kill (async only) | \
         probe rows on the new primary={probe_rows} | duration={:.1}s (setup {:.1}s) seed={seed}",
        report.acknowledged,
        acked_before_kill,
        report.lost,
        report.doubled,
        report.rejected,
        report.queued,
        in_flight_at_kill,
        count(&shared.stats.unavailable) - unavailable_before,
        promotion.as_secs_f64(),
        ready_after.as_secs_f64(),
        stalled_for.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        setup.as_secs_f64(),
    );
    println!("{summary}");
    eprintln!("{summary}");
    // Both probes (10 answers each) are applied once, whichever primary holds them.
    assert_eq!(probe_rows, 20, "probe answers on the new primary");
    assert_eq!(report.queued, 0, "queues not drained");
    if mode == Standby::Synchronous {
        let mut violations: Vec<String> = shared.violations.lock().unwrap().clone();
        violations.extend(report.violations.iter().cloned());
        if !violations.is_empty() {
            eprintln!("{} violations (first 30):", violations.len());
            for v in violations.iter().take(30) {
                eprintln!("  {v}");
            }
            eprintln!("{}", rig.logs());
        }
        assert_eq!(report.lost, 0, "ACKED answers lost in the failover");
        assert_eq!(report.doubled, 0, "answers doubled");
        assert_eq!(report.rejected, 0, "answers REJECTED under the failover");
        assert_eq!(count(&shared.stats.rejected), 0, "REJECTED answers");
        assert!(violations.is_empty(), "{} violations", violations.len());
    }
    drop(rig.work);
}

/// The trap: with the standby stopped, every COMMIT waits for it; a cancelled wait makes
/// PostgreSQL report success with only a WARNING. The phone must get 503, a retry on the
/// old primary too, and the retry after the failover ACKED exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_replication_wait_is_never_acked() {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let mut rig = Rig::build(tools, Standby::Synchronous, 1, rand::random()).await;
    let base = rig.instances[0].base();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let user = Uuid::new_v4();
    let token = sign_token(SECRET, user, Role::Student, 3600).unwrap();
    let pairs = rig.bank_pairs();
    // A first batch applied normally: the user's session exists, replicated.
    let warm = random_batch(&pairs, Uuid::new_v4(), 5, 10_000);
    let first = send_until_ok(&client, &base, &token, &warm, Duration::from_secs(10)).await;
    assert!(all(&first, "acked"), "{first:?}");

    rig.standby.pg_stop("fast").await.unwrap();
    let admin = connect(&rig.primary.url("examsync")).await;
    let batch = random_batch(&pairs, Uuid::new_v4(), 10, 10_000);

    // Sends `batch` and cancels the COMMIT (or barrier) that waits for the standby.
    let cancelled_send = |batch: Vec<Attempt>| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let admin = &admin;
        async move {
            let request = tokio::spawn(async move { send(&client, &base, &token, &batch).await });
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut cancelled = 0;
            while cancelled == 0 {
                assert!(
                    Instant::now() < deadline,
                    "no COMMIT waited for the standby"
                );
                cancelled = scalar_i64(
                    admin,
                    "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
                     WHERE wait_event = 'SyncRep' AND datname = 'examsync'",
                )
                .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            request.await.unwrap().unwrap()
        }
    };
    let answer = cancelled_send(batch.clone()).await;
    assert_eq!(
        answer.0, 503,
        "a commit whose replication wait was cancelled: {answer:?}"
    );
    // Committed locally: the rows exist on the old primary only.
    let local = scalar_i64(
        &admin,
        &format!("SELECT count(*) FROM attempts WHERE user_id = '{user}'"),
    )
    .await;
    assert_eq!(local, 15, "the cancelled commit is on the primary");
    // A retry that reaches the old primary finds the rows; its DUPLICATE would be only as
    // durable as they are, so it waits for the standby too, and is refused when cancelled.
    let retry = cancelled_send(batch.clone()).await;
    assert_eq!(retry.0, 503, "a DUPLICATE of unreplicated rows: {retry:?}");
    admin.close().await.ok();

    // Failover to the standby, which never received the batch: the primary dies first,
    // so the standby, started again, has nothing to catch up from.
    rig.primary.kill_hard().unwrap();
    rig.link.cut();
    rig.db_relay.repoint(rig.standby.port);
    rig.standby.pg_start().await.unwrap();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Reachable but still in recovery: no writable primary, so not ready, and a batch is a
    // transient fault (read-only), never a 500 or an item result.
    let standby = connect(&rig.standby.url("examsync")).await;
    let in_recovery = scalar_i64(&standby, "SELECT pg_is_in_recovery()::int::int8").await;
    standby.close().await.ok();
    assert_eq!(in_recovery, 1);
    let readiness = probe.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(
        readiness.status(),
        503,
        "ready while the standby is in recovery"
    );
    let during = send(&client, &base, &token, &batch).await.unwrap();
    assert_eq!(during.0, 503, "a batch before the promotion: {during:?}");
    rig.standby.promote().await.unwrap();
    let promoted_at = Instant::now();
    assert!(
        wait_ready(&probe, &base, Duration::from_secs(10)).await,
        "not ready after the promotion:\n{}",
        rig.logs()
    );
    let ready_after = promoted_at.elapsed();
    assert!(
        ready_after < Duration::from_secs(5),
        "ready {ready_after:?} after the promotion"
    );
    let after = send_until_ok(&client, &base, &token, &batch, Duration::from_secs(20)).await;
    assert!(all(&after, "acked"), "retry after the failover: {after:?}");
    let again = send_until_ok(&client, &base, &token, &batch, Duration::from_secs(10)).await;
    assert!(all(&again, "duplicate"), "{again:?}");
    let db = connect(&rig.standby.url("examsync")).await;
    let rows = scalar_i64(
        &db,
        &format!("SELECT count(*) FROM attempts WHERE user_id = '{user}'"),
    )
    .await;
    assert_eq!(rows, 15, "each answer exactly once on the new primary");
    db.close().await.ok();
    let metrics = probe
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("examsync_sync_unconfirmed_commits_total"),
        "the unconfirmed commits are counted"
    );
    let _ = &rig.tools;
}
