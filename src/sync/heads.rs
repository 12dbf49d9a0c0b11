//! Reads users' committed change counters (the *head* of each pull, see
//! [`super::changes`]) for concurrent pulls together.
//!
//! After every sync each phone pulls, and nearly every such pull finds nothing new: its whole
//! cost is one primary-key read, and that read is a hand-off to another thread (SQLite's
//! worker) or a network round trip (PostgreSQL), far dearer than the rest of the request.
//! So pulls share reads: a pull that finds fewer than `READS_IN_FLIGHT` reads under way reads
//! at once, itself, for every pull queued by then; pulls that arrive while that many are
//! under way queue, and the next read (one statement, `WHERE id = ANY(…)`) serves them all.
//! An idle server reads at once, as before. The more pulls arrive at once, the more each read
//! serves, so a busy server spends less per pull than a quiet one.
//!
//! The reads go through connections of the reader's own, one per read in flight, opened
//! with the pool's settings: a pool checkout would add the pool's work around every read
//! (sqlx pings each connection it takes back: one more round trip, or one more hand-off to
//! SQLite's worker thread, per read). A read that fails drops that connection, and the pulls
//! it served read alone through the pool, so each gets the error of its own read.
//!
//! The no-skip argument is unchanged: a pull's head is read by a statement that starts after
//! the pull was queued, so it sees every change committed before the pull arrived.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use entity::UserId;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, Statement,
    sqlx::{self, Connection as _, PgConnection, SqliteConnection},
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::AppResult;

/// Reads under way at once, each on its own connection. With one, every pull that arrives
/// during a read waits for it to end before its own read starts, and the server sits idle
/// (and pays a wake-up) for every round trip; with two, they read meanwhile. More than two
/// split the pulls into smaller reads and cost more than they save (docs/benchmarks.md).
const READS_IN_FLIGHT: usize = 2;

/// Users read by one statement at most.
const MAX_BATCH: usize = 256;

/// The longest a shared read (with the connect that may precede it) may take, as long as the
/// pool may take to lend a connection: a database that stopped answering must not hold the
/// reading turn, and with it every later pull, beyond it. Past it, the pulls read alone
/// through the pool.
const OWN_READ_TIMEOUT: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Option<i64>>;

/// The pulls waiting for a head, and whether a read is under way.
#[derive(Default)]
struct Queue {
    /// Reading turns under way (at most [`READS_IN_FLIGHT`]).
    reading: usize,
    waiting: Vec<(UserId, Reply)>,
}

/// Shares head reads between concurrent pulls; cheap to clone.
#[derive(Clone)]
pub struct HeadReader {
    queue: Arc<Mutex<Queue>>,
    /// The reader's own connections, one per turn, each opened at its first read (and again
    /// after a failure).
    own: Arc<[tokio::sync::Mutex<Option<OwnConnection>>]>,
}

/// A connection outside the pool, for head reads only.
enum OwnConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl OwnConnection {
    /// A new connection with the pool's settings (statement timeout, busy timeout; an
    /// in-memory SQLite database is shared between its connections).
    async fn open(db: &DatabaseConnection) -> Result<OwnConnection, sqlx::Error> {
        Ok(match db.get_database_backend() {
            DbBackend::Postgres => OwnConnection::Postgres(
                PgConnection::connect_with(&db.get_postgres_connection_pool().connect_options())
                    .await?,
            ),
            _ => OwnConnection::Sqlite(
                SqliteConnection::connect_with(&db.get_sqlite_connection_pool().connect_options())
                    .await?,
            ),
        })
    }

    async fn read(&mut self, ids: &[UserId]) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
        match self {
            OwnConnection::Postgres(conn) => {
                let ids: Vec<Uuid> = ids.iter().map(|id| id.into_uuid()).collect();
                sqlx::query_as("SELECT id, change_seq FROM users WHERE id = ANY($1)")
                    .bind(ids)
                    .fetch_all(conn)
                    .await
            }
            OwnConnection::Sqlite(conn) => {
                let sql = sqlite_heads_sql(ids.len());
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for id in ids {
                    query = query.bind(id.into_uuid());
                }
                query.fetch_all(conn).await
            }
        }
    }
}

/// SQLite has no arrays: one placeholder per user.
fn sqlite_heads_sql(users: usize) -> String {
    let marks = vec!["?"; users].join(", ");
    format!("SELECT id, change_seq FROM users WHERE id IN ({marks})")
}

impl Default for HeadReader {
    fn default() -> Self {
        HeadReader {
            queue: Arc::default(),
            own: (0..READS_IN_FLIGHT)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
        }
    }
}

impl HeadReader {
    /// The user's committed change counter (0 for a user never seen).
    pub async fn head(&self, db: &DatabaseConnection, user_id: UserId) -> AppResult<i64> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.lock();
            queue.waiting.push((user_id, reply));
            let lead = queue.reading < READS_IN_FLIGHT;
            if lead {
                queue.reading += 1;
            }
            lead
        };
        if lead {
            // This pull reads for everyone queued, itself included; whoever queued during
            // the read is served by a task of its own, so this request waits for one read.
            let mut reading = Reading {
                reader: self,
                done: false,
            };
            // Let the pulls that have already arrived join first: tokio runs a yielded task
            // again only after polling for I/O, so the requests waiting in other
            // connections' buffers are parsed and queued, and one read serves them all.
            tokio::task::yield_now().await;
            self.read_once(db).await;
            reading.done = true;
            if !self.finish_or_continue() {
                let reader = self.clone();
                let db = db.clone();
                tokio::spawn(async move { reader.serve_queue(&db).await });
            }
        }
        match answer.await {
            Ok(Some(head)) => Ok(head),
            // The shared read failed or was dropped: read alone, so that this request gets
            // the error its own read gives (transient or not).
            _ => Ok(read_heads(db, &[user_id])
                .await?
                .get(&user_id)
                .copied()
                .unwrap_or(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads for the pulls queued now (at most [`MAX_BATCH`]) and answers them.
    async fn read_once(&self, db: &DatabaseConnection) {
        let batch: Vec<(UserId, Reply)> = {
            let mut queue = self.lock();
            let take = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..take).collect()
        };
        let mut ids: Vec<UserId> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let heads = tokio::time::timeout(OWN_READ_TIMEOUT, self.read_own(db, &ids))
            .await
            .ok()
            .and_then(Result::ok);
        for (id, reply) in batch {
            let head = heads
                .as_ref()
                .map(|heads| heads.get(&id).copied().unwrap_or(0));
            let _ = reply.send(head);
        }
    }

    /// Heads through the reader's own connection. A failed read (or one whose future is
    /// dropped) closes it; the next read opens another.
    async fn read_own(
        &self,
        db: &DatabaseConnection,
        ids: &[UserId],
    ) -> Result<HashMap<UserId, i64>, sqlx::Error> {
        // A free connection: there are as many as turns.
        let free = self.own.iter().find_map(|own| own.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => self.own[0].lock().await,
        };
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => OwnConnection::open(db).await?,
        };
        let heads = conn.read(ids).await;
        if let Err(e) = &heads {
            tracing::warn!(error = %e, "head read failed; its pulls read through the pool");
        } else {
            *slot = Some(conn);
        }
        Ok(heads?
            .into_iter()
            .map(|(id, head)| (UserId::from(id), head))
            .collect())
    }

    /// Ends the reading turn when nobody waits (`true`); else the turn goes on.
    fn finish_or_continue(&self) -> bool {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.reading -= 1;
            true
        } else {
            false
        }
    }

    /// Reads until nobody waits.
    async fn serve_queue(&self, db: &DatabaseConnection) {
        let mut reading = Reading {
            reader: self,
            done: false,
        };
        loop {
            // As the first read of a turn: the pulls already arrived join this read.
            tokio::task::yield_now().await;
            self.read_once(db).await;
            if self.finish_or_continue() {
                reading.done = true;
                return;
            }
        }
    }
}

/// A reading turn; if its future is dropped mid-read (the client went away), the turn ends
/// and the pulls still queued read alone.
struct Reading<'a> {
    reader: &'a HeadReader,
    done: bool,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut queue = self.reader.lock();
            queue.reading -= 1;
            if queue.reading == 0 {
                // Their senders dropped: each falls back to a read of its own.
                queue.waiting.clear();
            }
        }
    }
}

/// The committed change counters of `ids` (users never seen are absent).
async fn read_heads(db: &DatabaseConnection, ids: &[UserId]) -> AppResult<HashMap<UserId, i64>> {
    let backend = db.get_database_backend();
    let statement = match (backend, ids) {
        (DbBackend::Postgres, [id]) => Statement::from_sql_and_values(
            backend,
            "SELECT id, change_seq FROM users WHERE id = $1",
            [(*id).into()],
        ),
        (DbBackend::Postgres, _) => Statement::from_sql_and_values(
            backend,
            "SELECT id, change_seq FROM users WHERE id = ANY($1)",
            [super::store::uuids(ids.iter().copied())],
        ),
        _ => Statement::from_sql_and_values(
            backend,
            sqlite_heads_sql(ids.len()),
            ids.iter().map(|id| (*id).into()),
        ),
    };
    let rows = db.query_all_raw(statement).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "change_seq")?)))
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(Into::into)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Many pulls at once get each their own user's head, whichever pull reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pulls_get_their_own_heads() {
        let db = crate::db::connect("sqlite::memory:", 1).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let users: Vec<UserId> = (0..40).map(|_| UserId::new_v4()).collect();
        for (n, user) in users.iter().enumerate().take(30) {
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO users (id, role, created_at, acked_count, duplicate_count, \
                 rejected_count, change_seq) VALUES (?, 'STUDENT', CURRENT_TIMESTAMP, 0, 0, 0, ?)",
                [(*user).into(), (n as i64 * 7).into()],
            ))
            .await
            .unwrap();
        }
        let reader = HeadReader::default();
        let pulls = users.iter().enumerate().flat_map(|(n, user)| {
            let (reader, db) = (reader.clone(), db.clone());
            (0..5).map(move |_| {
                let (reader, db, user) = (reader.clone(), db.clone(), *user);
                tokio::spawn(async move { (n, reader.head(&db, user).await.unwrap()) })
            })
        });
        for pull in futures::future::join_all(pulls.collect::<Vec<_>>()).await {
            let (n, head) = pull.unwrap();
            let expected = if n < 30 { n as i64 * 7 } else { 0 };
            assert_eq!(head, expected, "user {n}");
        }
        assert_eq!(reader.lock().reading, 0, "the reading turns ended");
        assert!(reader.lock().waiting.is_empty());
    }
}
