//! Operability: metrics after a sync and a download, the per-user rate limit (also across
//! two instances sharing Redis), and two instances starting at once on a fresh database.
use std::collections::HashMap;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, test_config};
use crate::sync::{Surface, ago, attempt, bank, sync};

/// Samples by (metric name, sorted labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses the Prometheus text exposition format into (name, sorted labels) → value.
fn parse_exposition(text: &str) -> Samples {
    let mut samples = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value.parse().expect("numeric sample value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels: Vec<(String, String)> = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label");
                    let mut end = 0;
                    let bytes = after.as_bytes();
                    while bytes[end] != b'"' || (end > 0 && bytes[end - 1] == b'\\') {
                        end += 1;
                    }
                    labels.push((
                        key.trim_start_matches(',').to_owned(),
                        after[..end].to_owned(),
                    ));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                labels.sort();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        samples.insert((name, labels), value);
    }
    samples
}

async fn metrics(app: &TestApp) -> Samples {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_exposition(&text)
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

/// Sums every series of `name` whose labels include `filter`.
fn total(samples: &Samples, name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && filter
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_sync_and_a_download() {
    let app = spawn_app(Backend::Sqlite).await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let before = metrics(&app).await;
    let offline = Some(Uuid::new_v4());
    let good = attempt(q[0], 1, &ago(90), offline);
    let mut bad = attempt(q[1], 0, &ago(5), offline);
    bad["payload_hash"] = json!("00".repeat(32));
    sync(&app, Surface::Rest, &token, &[good, bad], Some(&ago(0))).await;
    let after = metrics(&app).await;
    let acked = |m| {
        value(
            m,
            "examsync_sync_items_total",
            &[("status", "acked"), ("error_code", "")],
        )
    };
    let mismatch = |m| {
        value(
            m,
            "examsync_sync_items_total",
            &[
                ("status", "rejected"),
                ("error_code", "PAYLOAD_HASH_MISMATCH"),
            ],
        )
    };
    assert!(acked(&after) >= acked(&before) + 1.0);
    assert!(mismatch(&after) >= mismatch(&before) + 1.0);
    for histogram in [
        "examsync_sync_batch_size_count",
        "examsync_sync_offline_age_seconds_count",
        "examsync_sync_clock_skew_seconds_count",
    ] {
        assert!(
            total(&after, histogram, &[]) >= total(&before, histogram, &[]) + 1.0,
            "{histogram}"
        );
    }
    let route = [("route", "/api/v1/sync/attempts:batch"), ("status", "200")];
    assert!(
        total(
            &after,
            "examsync_http_request_duration_seconds_count",
            &route
        ) >= total(
            &before,
            "examsync_http_request_duration_seconds_count",
            &route
        ) + 1.0
    );
    assert!(
        after
            .keys()
            .any(|(n, _)| n == "examsync_db_pool_connections")
    );
    // No per-user or per-id labels anywhere.
    for (name, labels) in after.keys() {
        for (_, v) in labels {
            assert!(Uuid::parse_str(v).is_err(), "{name} has an id label {v}");
        }
    }

    // A download and a revalidation.
    let (_, built) = app
        .graphql(
            Some(&app.admin_token()),
            "mutation { buildPackage(input: {name: \"Y1\", scope: YEAR, yearId: 1, publish: true}) { id versionHash } }",
            Value::Null,
        )
        .await;
    let package = built["data"]["buildPackage"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let etag = format!(
        "W/\"{}\"",
        built["data"]["buildPackage"]["versionHash"]
            .as_str()
            .unwrap()
    );
    let path = format!("/api/v1/tests/packages/{package}");
    let before = metrics(&app).await;
    let full = app
        .get(&path, &token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 200);
    let not_modified = app
        .get(&path, &token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    let after = metrics(&app).await;
    let downloads = |m, status, encoding| {
        value(
            m,
            "examsync_package_downloads_total",
            &[("status", status), ("encoding", encoding)],
        )
    };
    assert!(downloads(&after, "200", "gzip") >= downloads(&before, "200", "gzip") + 1.0);
    assert!(downloads(&after, "304", "none") >= downloads(&before, "304", "none") + 1.0);
    // Served in front of the router (the revalidation from memory, the pull feed), both
    // are counted under their route's template like any routed request.
    let before = metrics(&app).await;
    for _ in 0..3 {
        let not_modified = app
            .get(&path, &token)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(not_modified.status(), 304);
        let pulled = app
            .get("/api/v1/sync/changes", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(pulled.status(), 200);
        assert!(pulled.headers().contains_key("x-request-id"));
    }
    let after = metrics(&app).await;
    for (route, status) in [
        ("/api/v1/tests/packages/{package_id}", "304"),
        ("/api/v1/sync/changes", "200"),
    ] {
        let series = [("route", route), ("status", status), ("method", "GET")];
        let count = |m| total(m, "examsync_http_request_duration_seconds_count", &series);
        assert!(count(&after) >= count(&before) + 3.0, "{route}");
    }
    let from_memory = |m| {
        value(
            m,
            "examsync_answered_from_memory_total",
            &[("route", "/api/v1/tests/packages/{package_id}")],
        )
    };
    assert!(from_memory(&after) >= from_memory(&before) + 3.0);

    // Made-up methods and unknown paths cannot grow the label sets.
    for n in 0..3 {
        let method = reqwest::Method::from_bytes(format!("PROBE{n}").as_bytes()).unwrap();
        let answer = app
            .client
            .request(method, app.url(&format!("/no/such/path/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);
    }
    let after = metrics(&app).await;
    let other = [
        ("method", "OTHER"),
        ("route", "unmatched"),
        ("status", "404"),
    ];
    assert!(
        total(
            &after,
            "examsync_http_request_duration_seconds_count",
            &other
        ) >= 3.0
    );
    for (name, labels) in after.keys() {
        for (_, v) in labels {
            assert!(
                !v.starts_with("PROBE") && !v.starts_with("/no/"),
                "{name}: {v}"
            );
        }
    }
}

backend_tests!(rate_limit_triggers_and_recovers);

async fn rate_limit_triggers_and_recovers(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_window_secs = 3; // a budget of 3 requests per 3 s window
        // About the shared budget, not Redis's delays: a slow call would fall back to this
        // instance's own count (and split the budget) as a fault would.
        c.redis_timeout_ms = 10_000;
    })
    .await;
    let q = bank(&app).await;
    let (_, token) = app.student();
    let (_, other) = app.student();
    // With Redis (PostgreSQL run), a second instance shares the budget.
    let second = if backend == Backend::Postgres {
        Some(crate::graphql::second_instance(&app).await)
    } else {
        None
    };
    let second_base = second
        .as_ref()
        .map(|(b, _)| b.clone())
        .unwrap_or_else(|| app.base.clone());
    let send = |base: String, token: String| {
        let client = app.client.clone();
        let body = json!({"attempts": [attempt(q[0], 1, &ago(1), Some(Uuid::new_v4()))]});
        async move {
            client
                .post(format!("{base}/api/v1/sync/attempts:batch"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r1 = send(app.base.clone(), token.clone()).await;
    assert_eq!(r1.status(), 200);
    let (_, b) = app
        .graphql(Some(&token), "{ syncStatus { ackedCount } }", Value::Null)
        .await;
    assert!(b.get("errors").is_none(), "{b}");
    let r3 = send(second_base.clone(), token.clone()).await;
    assert_eq!(r3.status(), 200);
    // The fourth request in the window is refused, on either instance and either surface.
    let refused = send(second_base.clone(), token.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error_code"],
        "RATE_LIMITED"
    );
    let (status, b) = app
        .graphql(Some(&token), "{ syncStatus { ackedCount } }", Value::Null)
        .await;
    assert_eq!(
        (status, b["errors"][0]["extensions"]["code"].as_str()),
        (429, Some("RATE_LIMITED"))
    );
    // Another user has their own budget.
    assert_eq!(send(app.base.clone(), other).await.status(), 200);
    // The window passes: the user may sync again.
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    assert_eq!(send(app.base.clone(), token).await.status(), 200);
}

/// Two instances started at the same moment on a fresh PostgreSQL database both come up
/// (the migrations take an advisory lock and run once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_start_together_on_a_fresh_database() {
    if crate::helpers::skip_postgres() {
        return;
    }
    let (config, database, redis) = test_config(Backend::Postgres).await;
    let (a, b) = tokio::join!(
        examsync::Application::build(config.clone()),
        examsync::Application::build(config.clone())
    );
    let (a, b) = (
        a.expect("first instance starts"),
        b.expect("second instance starts"),
    );
    let migrations = crate::helpers::count_rows(&a.state().db, "seaql_migrations", "").await;
    use migration::MigratorTrait;
    assert_eq!(migrations as usize, migration::Migrator::migrations().len());
    drop((a, b, database, redis));
}

/// A PostgreSQL URL on a loopback address that names no `sslmode` connects in plain TCP (TLS
/// there guards nothing and splits a long statement into records that stall); one that asks
/// for TLS gets it, when the server offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tls_follows_the_url_on_loopback() {
    if crate::helpers::skip_postgres() {
        return;
    }
    let url = std::env::var("TEST_DATABASE_URL").unwrap();
    if url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some() {
        return;
    }
    let host = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    assert!(
        examsync::db::plain_on_loopback(host),
        "TEST_DATABASE_URL is expected on loopback, got {host}"
    );
    const OWN_TLS: &str = "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl \
         WHERE pid = pg_backend_pid()), false)::int::bigint AS n";
    let plain = examsync::db::connect(&url, 1).await.unwrap();
    assert_eq!(crate::helpers::count_query(&plain, OWN_TLS).await, 0);
    let server_offers_tls = crate::helpers::count_query(
        &plain,
        "SELECT (current_setting('ssl') = 'on')::int::bigint AS n",
    )
    .await
        == 1;
    if server_offers_tls {
        let separator = if url.contains('?') { '&' } else { '?' };
        let tls = examsync::db::connect(&format!("{url}{separator}sslmode=require"), 1)
            .await
            .unwrap();
        assert_eq!(crate::helpers::count_query(&tls, OWN_TLS).await, 1);
    }
}
