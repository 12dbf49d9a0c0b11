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
    collections::HashMap,
    sync::Mutex,
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
    pub fn user_key(&self, user: &uuid::Uuid, kind: &str, id: &str) -> String {
        format!("{}{{{}}}:{}:{}", self.prefix, user, kind, id)
    }

    /// A key for one user's record read from or written to the database on `timeline`
    /// (see `primary`): `<prefix>t<timeline>:{<user>}:<kind>:<id>`. After a promotion the
    /// new timeline's keys are new: nothing cached from the old primary is read.
    pub fn record_key(&self, timeline: u32, user: &uuid::Uuid, kind: &str, id: &str) -> String {
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

/// A small in-process cache with expiry, standing in for Redis on a single instance.
#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

/// Past this many entries expired ones are swept, then everything if still too many. An
/// idempotency record takes about 400 bytes here, so the cap holds the cache near 40 MB (at
/// 500,000 the sync benchmark saw 158 MB of RSS on SQLite); a miss only costs one indexed
/// database lookup, which is the source of truth anyway.
const MEMORY_CACHE_CAP: usize = 100_000;

impl MemoryCache {
    fn get(&self, key: &str) -> Option<String> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone())
    }

    fn set(&self, key: &str, value: &str, ttl: Duration) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MEMORY_CACHE_CAP {
                let now = Instant::now();
                entries.retain(|_, (_, expires)| *expires > now);
                if entries.len() >= MEMORY_CACHE_CAP {
                    entries.clear();
                }
            }
            entries.insert(key.to_owned(), (value.to_owned(), Instant::now() + ttl));
        }
    }

    fn incr_window(&self, key: &str, window: Duration) -> (u64, Duration) {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return (0, window);
        };
        let entry = entries
            .entry(key.to_owned())
            .or_insert_with(|| ("0".to_owned(), now + window));
        if entry.1 <= now {
            *entry = ("0".to_owned(), now + window);
        }
        let count = entry.0.parse::<u64>().unwrap_or(0) + 1;
        entry.0 = count.to_string();
        (count, entry.1.saturating_duration_since(now))
    }

    fn decr(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock()
            && let Some(entry) = entries.get_mut(key)
        {
            let count = entry.0.parse::<u64>().unwrap_or(0).saturating_sub(1);
            entry.0 = count.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
