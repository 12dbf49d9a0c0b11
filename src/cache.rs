//! The cache: Redis when `REDIS_URL` is set, an in-process map otherwise, behind one
//! interface. It is never the source of truth: every caller falls back to the database
//! when a call fails or times out, and counts that in `/metrics`.
//!
//! Keys of one user share a Redis Cluster hash tag (`{user-id}`) so multi-key reads of
//! one user's records land on one node.
//!
//! Every key lives in a namespace `<EXAMSYNC_REDIS_PREFIX><epoch>:`, where the epoch
//! identifies the database's contents ([`database_epoch`]): a random id stored in the
//! database on first start, plus on PostgreSQL the database's OID. A new database (a new
//! deployment, or a dump restored into a fresh database) has a new epoch by itself;
//! `examsync cache reset` ([`reset_epoch`]) gives one to a database restored in place. A
//! cached `DUPLICATE` for an attempt the restored database no longer holds is then never
//! read: the phone's replay is applied again instead of deleted unapplied.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{
    AsyncCommands, Client,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio::sync::OnceCell;

/// The cache epoch of a database's contents (see the module docs). Creates the stored
/// id on first use; instances starting together agree on one (`ON CONFLICT DO NOTHING`).
pub async fn database_epoch(db: &DatabaseConnection) -> Result<String, DbErr> {
    let backend = db.get_database_backend();
    db.execute_unprepared(&format!(
        "INSERT INTO cache_epoch (id, epoch) VALUES (1, '{}') ON CONFLICT (id) DO NOTHING",
        new_epoch()
    ))
    .await?;
    let stored: String = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT epoch FROM cache_epoch WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("cache_epoch".into()))?
        .try_get("", "epoch")?;
    if backend != DbBackend::Postgres {
        return Ok(stored);
    }
    // A dump restored into a new database brings the stored id along; its OID is new.
    let oid: String = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT oid::text AS oid FROM pg_database WHERE datname = current_database()",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("pg_database".into()))?
        .try_get("", "oid")?;
    Ok(format!("{stored}-{oid}"))
}

/// Gives the database a new cache epoch (`examsync cache reset`): instances started
/// afterwards use a fresh namespace and never read what was cached before. Returns
/// (old, new) stored ids.
pub async fn reset_epoch(db: &DatabaseConnection) -> Result<(Option<String>, String), DbErr> {
    let backend = db.get_database_backend();
    let old = match db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT epoch FROM cache_epoch WHERE id = 1",
        ))
        .await?
    {
        Some(row) => Some(row.try_get::<String>("", "epoch")?),
        None => None,
    };
    let new = new_epoch();
    db.execute_unprepared(&format!(
        "INSERT INTO cache_epoch (id, epoch) VALUES (1, '{new}')
         ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch"
    ))
    .await?;
    Ok((old, new))
}

/// 64 random bits in hex: short keys, and no two databases or resets share one in practice.
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// The key namespace of a deployment prefix and a database epoch.
pub fn namespace(prefix: &str, epoch: &str) -> String {
    format!("{prefix}{epoch}:")
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache call timed out")]
    Timeout,
    #[error("cache error: {0}")]
    Redis(#[from] redis::RedisError),
}

impl CacheError {
    /// Label for the fallback metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::Timeout => "timeout",
            CacheError::Redis(_) => "error",
        }
    }
}

pub struct Cache {
    prefix: String,
    backend: Backend,
    /// Automatic persisted queries when there is no Redis to share them.
    persisted: PersistedQueries,
}

enum Backend {
    Memory(MemoryCache),
    Redis {
        conn: ConnectionManager,
        timeout: Duration,
    },
    Cluster(Box<ClusterBackend>),
}

struct ClusterBackend {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
    timeout: Duration,
}

impl Cache {
    /// The in-process cache (no `REDIS_URL`).
    pub fn memory(prefix: &str) -> Self {
        Cache {
            prefix: prefix.to_owned(),
            backend: Backend::Memory(MemoryCache::default()),
            persisted: PersistedQueries::default(),
        }
    }

    /// A Redis-backed cache. Connects lazily with short timeouts, so the server starts and
    /// serves while Redis is down. `redis+cluster://a:1,b:2` names a Redis Cluster.
    pub fn redis(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let backend = if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes
                .split(',')
                .map(|node| format!("redis://{}", node.trim()))
                .collect();
            let client = ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()?;
            Backend::Cluster(Box::new(ClusterBackend {
                client,
                conn: OnceCell::new(),
                timeout,
            }))
        } else {
            let client = Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let conn = ConnectionManager::new_lazy_with_config(client, config)?;
            Backend::Redis { conn, timeout }
        };
        Ok(Cache {
            prefix: prefix.to_owned(),
            backend,
            persisted: PersistedQueries::default(),
        })
    }

    /// The namespace every key starts with: `<prefix><epoch>:`.
    pub fn namespace(&self) -> &str {
        &self.prefix
    }

    pub fn is_redis(&self) -> bool {
        !matches!(self.backend, Backend::Memory(_))
    }

    /// A key for one user's record: `<prefix>{<user>}:<kind>:<id>`.
    pub fn user_key(&self, user: &entity::UserId, kind: &str, id: &str) -> String {
        format!("{}{{{}}}:{}:{}", self.prefix, user, kind, id)
    }

    /// A key for one user's record read from or written to the database on `timeline`
    /// (see `primary`): `<prefix>t<timeline>:{<user>}:<kind>:<id>`. After a promotion the
    /// new timeline's keys are new: nothing cached from the old primary is read.
    pub fn record_key(&self, timeline: u32, user: &entity::UserId, kind: &str, id: &str) -> String {
        format!(
            "{}t{:08x}:{{{}}}:{}:{}",
            self.prefix, timeline, user, kind, id
        )
    }

    /// A global key: `<prefix><kind>:<id>`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{}:{}", self.prefix, kind, id)
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Memory(m) => Ok(keys.iter().map(|k| m.get(k)).collect()),
            Backend::Redis { conn, timeout } => {
                let mut conn = ConnectionManager::clone(conn);
                with_timeout(*timeout, async move {
                    let mut cmd = redis::cmd("MGET");
                    cmd.arg(keys);
                    cmd.query_async(&mut conn).await
                })
                .await
            }
            Backend::Cluster(cluster) => {
                let mut conn = self.cluster_conn().await?;
                with_timeout(cluster.timeout, async move {
                    let mut cmd = redis::cmd("MGET");
                    cmd.arg(keys);
                    cmd.query_async(&mut conn).await
                })
                .await
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        Ok(self
            .get_many(&[key.to_owned()])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Writes entries with a time to live. Pipelined: one round trip.
    pub async fn set_many(
        &self,
        entries: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl_secs = ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            pipe.set_ex(key, value, ttl_secs).ignore();
        }
        match &self.backend {
            Backend::Memory(m) => {
                for (key, value) in entries {
                    m.set(key, value, ttl);
                }
                Ok(())
            }
            Backend::Redis { conn, timeout } => {
                let mut conn = ConnectionManager::clone(conn);
                with_timeout(*timeout, async move { pipe.query_async(&mut conn).await }).await
            }
            Backend::Cluster(cluster) => {
                let mut conn = self.cluster_conn().await?;
                with_timeout(
                    cluster.timeout,
                    async move { pipe.query_async(&mut conn).await },
                )
                .await
            }
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        self.set_many(&[(key.to_owned(), value.to_owned())], ttl)
            .await
    }

    /// Increments a fixed-window counter, creating it with `window` as time to live.
    /// Returns the new count and the time left in the window.
    pub async fn incr_window(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u64, Duration), CacheError> {
        let window_ms = window.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(key, 1u64)
            .cmd("PEXPIRE")
            .arg(key)
            .arg(window_ms)
            .arg("NX")
            .ignore()
            .pttl(key);
        let (count, pttl): (u64, i64) = match &self.backend {
            Backend::Memory(m) => return Ok(m.incr_window(key, window)),
            Backend::Redis { conn, timeout } => {
                let mut conn = ConnectionManager::clone(conn);
                with_timeout(*timeout, async move { pipe.query_async(&mut conn).await }).await?
            }
            Backend::Cluster(cluster) => {
                let mut conn = self.cluster_conn().await?;
                with_timeout(
                    cluster.timeout,
                    async move { pipe.query_async(&mut conn).await },
                )
                .await?
            }
        };
        let left = Duration::from_millis(pttl.max(0) as u64);
        Ok((count, left))
    }

    /// Decrements a counter (a refused request does not use up the budget).
    pub async fn decr(&self, key: &str) -> Result<(), CacheError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.decr(key);
                Ok(())
            }
            Backend::Redis { conn, timeout } => {
                let mut conn = ConnectionManager::clone(conn);
                with_timeout(
                    *timeout,
                    async move { conn.decr::<_, _, i64>(key, 1).await },
                )
                .await
                .map(|_| ())
            }
            Backend::Cluster(cluster) => {
                let mut conn = self.cluster_conn().await?;
                with_timeout(cluster.timeout, async move {
                    conn.decr::<_, _, i64>(key, 1).await
                })
                .await
                .map(|_| ())
            }
        }
    }

    /// Registers an automatic persisted query (its text validated, its caller
    /// authenticated): in Redis for every instance, or in this instance's bounded store.
    pub async fn apq_register(&self, hash: &str, query: &str) {
        if self.is_redis() {
            let key = self.key("apq", hash);
            if let Err(e) = self.set(&key, query, APQ_TTL).await {
                crate::metrics::cache_fallback("apq_register", e.kind());
            }
        } else {
            self.persisted
                .queries
                .insert(hash.to_owned(), Arc::from(query));
        }
    }

    /// The text of a registered persisted query.
    pub async fn apq_lookup(&self, hash: &str) -> Option<String> {
        if !self.is_redis() {
            return self.persisted.queries.get(hash).map(|q| q.to_string());
        }
        match self.get(&self.key("apq", hash)).await {
            Ok(found) => found,
            Err(e) => {
                crate::metrics::cache_fallback("apq_lookup", e.kind());
                None
            }
        }
    }

    /// Reachability check for `/readyz`.
    pub async fn ping(&self) -> Result<(), CacheError> {
        match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis { conn, timeout } => {
                let mut conn = ConnectionManager::clone(conn);
                with_timeout(*timeout, async move {
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                })
                .await
                .map(|_| ())
            }
            Backend::Cluster(cluster) => {
                let mut conn = self.cluster_conn().await?;
                with_timeout(cluster.timeout, async move {
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                })
                .await
                .map(|_| ())
            }
        }
    }

    async fn cluster_conn(&self) -> Result<ClusterConnection, CacheError> {
        let Backend::Cluster(cluster) = &self.backend else {
            return Err(CacheError::Timeout);
        };
        // A failed connect leaves the cell empty, so the next call tries again.
        let conn = cluster
            .conn
            .get_or_try_init(|| async {
                let connect = cluster.client.get_async_connection();
                match tokio::time::timeout(cluster.timeout * 4, connect).await {
                    Ok(result) => result.map_err(CacheError::from),
                    Err(_) => Err(CacheError::Timeout),
                }
            })
            .await?;
        Ok(conn.clone())
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, CacheError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(CacheError::from),
        Err(_) => Err(CacheError::Timeout),
    }
}

/// The in-process cache standing in for Redis on a single instance: three `moka` caches,
/// each bounded on its own, so filling one (many idempotency records, many persisted
/// queries) can never evict an entry of another (a rate-limit counter).
pub struct MemoryCache {
    /// Records with a time to live (idempotency records, cursors), bounded in bytes.
    entries: moka::sync::Cache<String, Entry>,
    /// Fixed-window counters, bounded in number.
    counters: moka::sync::Cache<String, Arc<Counter>>,
}

/// Bytes of records the in-process cache keeps; past it the least used go first. A miss
/// only costs one indexed database lookup, which is the source of truth anyway.
const MEMORY_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Rate-limit windows the in-process cache keeps (one per user active in the window).
const MEMORY_COUNTERS: u64 = 200_000;

#[derive(Clone)]
struct Entry {
    value: Arc<str>,
    ttl: Duration,
}

struct Counter {
    window: Duration,
    /// The count and when the window ends.
    state: Mutex<(u64, Instant)>,
}

/// Each record and counter expires after its own time to live.
struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl moka::Expiry<String, Arc<Counter>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        counter: &Arc<Counter>,
        _: Instant,
    ) -> Option<Duration> {
        Some(counter.window)
    }
}

/// The weight of a record: its bytes plus the bookkeeping around them.
fn record_weight(key: &str, value: &str) -> u32 {
    u32::try_from(key.len() + value.len() + 64).unwrap_or(u32::MAX)
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(MEMORY_CACHE_BYTES)
                .weigher(|key: &String, entry: &Entry| record_weight(key, &entry.value))
                .expire_after(PerEntryTtl)
                .build(),
            counters: moka::sync::Cache::builder()
                .max_capacity(MEMORY_COUNTERS)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

impl MemoryCache {
    fn get(&self, key: &str) -> Option<String> {
        self.entries.get(key).map(|entry| entry.value.to_string())
    }

    fn set(&self, key: &str, value: &str, ttl: Duration) {
        self.entries.insert(
            key.to_owned(),
            Entry {
                value: Arc::from(value),
                ttl,
            },
        );
    }

    fn incr_window(&self, key: &str, window: Duration) -> (u64, Duration) {
        let now = Instant::now();
        let counter = self.counters.get_with_by_ref(key, || {
            Arc::new(Counter {
                window,
                state: Mutex::new((0, now + window)),
            })
        });
        let Ok(mut state) = counter.state.lock() else {
            return (0, window);
        };
        if state.1 <= now {
            *state = (0, now + window);
        }
        state.0 += 1;
        (state.0, state.1.saturating_duration_since(now))
    }

    fn decr(&self, key: &str) {
        if let Some(counter) = self.counters.get(key)
            && let Ok(mut state) = counter.state.lock()
        {
            state.0 = state.0.saturating_sub(1);
        }
    }
}

/// The automatic persisted queries of one instance without Redis, bounded in bytes and
/// apart from every other record.
pub struct PersistedQueries {
    queries: moka::sync::Cache<String, Arc<str>>,
}

/// Bytes of persisted query text one instance keeps (without Redis).
const PERSISTED_QUERY_BYTES: u64 = 16 * 1024 * 1024;

impl Default for PersistedQueries {
    fn default() -> Self {
        PersistedQueries {
            queries: moka::sync::Cache::builder()
                .max_capacity(PERSISTED_QUERY_BYTES)
                .weigher(|hash: &String, query: &Arc<str>| record_weight(hash, query))
                .time_to_live(APQ_TTL)
                .build(),
        }
    }
}

/// How long a registered persisted query is kept.
pub const APQ_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Records far past the byte bound never evict a rate-limit counter, and the store
    /// stays near its bound.
    #[tokio::test]
    async fn filling_records_keeps_counters() {
        let cache = Cache::memory("t:");
        let window = Duration::from_secs(60);
        for _ in 0..5 {
            cache.incr_window("rl", window).await.unwrap();
        }
        let big = "x".repeat(64 * 1024);
        for i in 0..2_000 {
            cache
                .set(&format!("idem:{i}"), &big, Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(cache.incr_window("rl", window).await.unwrap().0, 6);
        let Backend::Memory(memory) = &cache.backend else {
            unreachable!()
        };
        memory.entries.run_pending_tasks();
        assert!(memory.entries.weighted_size() <= MEMORY_CACHE_BYTES);
        // Persisted queries have their own bound.
        for i in 0..1_000 {
            cache.apq_register(&format!("{i:064}"), &big).await;
        }
        cache.persisted.queries.run_pending_tasks();
        assert!(cache.persisted.queries.weighted_size() <= PERSISTED_QUERY_BYTES);
        assert_eq!(cache.incr_window("rl", window).await.unwrap().0, 7);
    }

    #[tokio::test]
    async fn memory_cache_round_trip_and_window() {
        let cache = Cache::memory("t:");
        cache.set("a", "1", Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            cache.get_many(&["a".into(), "b".into()]).await.unwrap(),
            vec![Some("1".into()), None]
        );
        assert_eq!(
            cache
                .incr_window("w", Duration::from_secs(60))
                .await
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            cache
                .incr_window("w", Duration::from_secs(60))
                .await
                .unwrap()
                .0,
            2
        );
        cache.decr("w").await.unwrap();
        assert_eq!(
            cache
                .incr_window("w", Duration::from_secs(60))
                .await
                .unwrap()
                .0,
            2
        );
    }
}
