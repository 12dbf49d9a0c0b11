//! Prometheus metrics (`/metrics`), names prefixed `examsync_`. No per-user or per-id
//! labels: label values come from small fixed sets (statuses, codes, route templates).
use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder (metrics are per process, as Prometheus scrapes processes).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("examsync_http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("examsync_sync_batch_size".into()),
                        &[1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("examsync_sync_offline_age_seconds".into()),
                        &[
                            1.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0, 604800.0, 2592000.0,
                            15552000.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("examsync_sync_clock_skew_seconds".into()),
                        &[
                            -3600.0, -300.0, -60.0, -5.0, -1.0, 0.0, 1.0, 5.0, 60.0, 300.0, 3600.0,
                        ],
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Histograms keep their samples until upkeep folds them; do it even when
            // nobody scrapes, so memory stays flat.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let upkeep = handle.clone();
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
            // Only fails when a recorder is already installed (several apps in one test
            // process): then metrics keep flowing to the first one, which is this handle.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn sync_item(status: &'static str, error_code: Option<&'static str>) {
    counter!("examsync_sync_items_total", "status" => status, "error_code" => error_code.unwrap_or("")).increment(1);
}

pub fn sync_batch(size: usize) {
    histogram!("examsync_sync_batch_size").record(size as f64);
}

pub fn sync_offline_age(seconds: f64) {
    histogram!("examsync_sync_offline_age_seconds").record(seconds.max(0.0));
}

pub fn sync_clock_skew(seconds: f64) {
    histogram!("examsync_sync_clock_skew_seconds").record(seconds);
}

pub fn package_download(status: u16, encoding: &'static str) {
    static HANDLES: HandleCache<(u16, &'static str), metrics::Counter> = HandleCache::new();
    HANDLES
        .get((status, encoding), || {
            counter!("examsync_package_downloads_total", "status" => status_label(status), "encoding" => encoding)
        })
        .increment(1);
}

/// What the package store builds (serializes and compresses) on a cache miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageBuild {
    /// A download's identity, gzip and br bodies.
    Download,
    /// A delta's bodies.
    Delta,
    /// A `dcz` body for one (package, dictionary) pair.
    Dcz,
}

impl PackageBuild {
    fn label(self) -> &'static str {
        match self {
            PackageBuild::Download => "download",
            PackageBuild::Delta => "delta",
            PackageBuild::Dcz => "dcz",
        }
    }
}

/// One build of the package store: once per key and process, however many requests
/// arrive together, unless the cache evicted it since.
/// A request answered `503` at once because the instance had too many in flight.
/// A request answered from memory before routing (`http::from_memory`), by route.
pub fn answered_from_memory(route: &'static str) {
    static HANDLES: HandleCache<&'static str, metrics::Counter> = HandleCache::new();
    HANDLES
        .get(
            route,
            || counter!("examsync_answered_from_memory_total", "route" => route),
        )
        .increment(1);
}

pub fn load_shed() {
    counter!("examsync_load_shed_total").increment(1);
}

pub fn package_build(kind: PackageBuild) {
    counter!("examsync_package_builds_total", "kind" => kind.label()).increment(1);
}

/// A delta response (`encoding`: identity, gzip, br, or none for a 304).
pub fn package_delta(status: u16, encoding: &'static str) {
    static HANDLES: HandleCache<(u16, &'static str), metrics::Counter> = HandleCache::new();
    HANDLES
        .get((status, encoding), || {
            counter!("examsync_package_deltas_total", "status" => status_label(status), "encoding" => encoding)
        })
        .increment(1);
}

fn status_label(status: u16) -> &'static str {
    match status {
        304 => "304",
        206 => "206",
        416 => "416",
        _ => "200",
    }
}

/// A cache call failed or timed out and the database answered instead.
/// A GraphQL request refused before execution, by its error code (a fixed set:
/// trusted-document refusals, persisted-query misses, parse and validation failures).
pub fn graphql_refused(code: &'static str) {
    counter!("examsync_graphql_refused_total", "code" => code).increment(1);
}

pub fn cache_fallback(operation: &'static str, kind: &'static str) {
    counter!("examsync_redis_fallbacks_total", "operation" => operation, "kind" => kind)
        .increment(1);
}

/// One HTTP request. Every label value comes from a fixed set, so that no client can grow
/// the registry: `method` is one of the standard methods or `OTHER`, `route` a template of
/// our router (or `unmatched`), `status` a three-digit code.
pub fn http_request(method: &axum::http::Method, route: &'static str, status: u16, seconds: f64) {
    static HANDLES: HandleCache<(&'static str, &'static str, u16), metrics::Histogram> =
        HandleCache::new();
    let method = method_label(method);
    HANDLES
        .get((method, route, status), || {
            histogram!(
                "examsync_http_request_duration_seconds",
                "method" => method,
                "route" => route,
                "status" => status_code_label(status)
            )
        })
        .record(seconds);
}

/// Metric handles by label values. Resolving a handle through the registry hashes its
/// whole key and labels (a good part of a `304`'s cost); the label values of the
/// per-request metrics come from small fixed sets, so each handle is resolved once.
struct HandleCache<K, H>(OnceLock<quick_cache::sync::Cache<K, H>>);

impl<K, H> HandleCache<K, H>
where
    K: Eq + std::hash::Hash + Clone,
    H: Clone,
{
    const fn new() -> Self {
        HandleCache(OnceLock::new())
    }

    fn get(&self, key: K, register: impl FnOnce() -> H) -> H {
        // Bounded anyway: an evicted handle is resolved again, its series kept.
        let cache = self.0.get_or_init(|| quick_cache::sync::Cache::new(4096));
        cache
            .get_or_insert_with(&key, || Ok::<_, std::convert::Infallible>(register()))
            .unwrap_or_else(|never| match never {})
    }
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The status as label text, without formatting a string for the common ones.
fn status_code_label(status: u16) -> metrics::SharedString {
    let text = match status {
        200 => "200",
        204 => "204",
        206 => "206",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        416 => "416",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return other.to_string().into(),
    };
    text.into()
}

pub fn rate_limited(surface: &'static str) {
    counter!("examsync_rate_limited_total", "surface" => surface).increment(1);
}

/// One SQL statement ran (`failed`: it returned an error).
pub fn db_statement(seconds: f64, failed: bool) {
    static HANDLES: HandleCache<bool, metrics::Histogram> = HandleCache::new();
    HANDLES
        .get(failed, || {
            histogram!("examsync_db_statement_duration_seconds", "failed" => if failed { "true" } else { "false" })
        })
        .record(seconds);
}

pub fn db_pool(size: u32, idle: usize) {
    gauge!("examsync_db_pool_connections").set(size as f64);
    gauge!("examsync_db_pool_idle_connections").set(idle as f64);
}

/// 1 while the last probe found a writable primary, else 0 (a failover in progress).
pub fn primary_writable(writable: bool) {
    gauge!("examsync_db_primary_writable").set(if writable { 1.0 } else { 0.0 });
}

/// The database moved to a new timeline (a standby was promoted).
pub fn timeline_change() {
    counter!("examsync_db_timeline_changes_total").increment(1);
}

/// A commit returned success whose synchronous-replication wait was cancelled: the
/// request was answered 503, nothing from it cached.
pub fn sync_unconfirmed_commit() {
    counter!("examsync_sync_unconfirmed_commits_total").increment(1);
}
