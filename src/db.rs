//! Database connection and migrations.
//!
//! SQLite is the embedded default: WAL mode, a busy timeout and a real pool (sea-orm
//! would otherwise give SQLite a single connection). PostgreSQL in production.
//!
//! Every connection carries a database-side bound on one statement
//! (`EXAMSYNC_DB_STATEMENT_TIMEOUT_MS`): PostgreSQL's `statement_timeout`, SQLite's busy
//! timeout. It sits below the request budget, so a hung or locked database fails a
//! statement (a transient 57014 / SQLITE_BUSY, answered 503) and the transaction rolls
//! back before the request runs out of time.
//!
//! Neither pool pings a connection on every checkout (sqlx's default): on PostgreSQL that
//! is one more round trip before every statement outside a transaction, on SQLite one more
//! hand-off to the connection's worker thread, a large part of what a small read such as a
//! pull's head costs. sqlx still pings every connection it takes back, so a
//! connection broken under a request is dropped on its way back to the pool; a PostgreSQL
//! connection that sat idle for [`PING_AFTER_IDLE`] (which a proxy or the server may have
//! closed meanwhile) is pinged before it is lent again.
//!
//! A PostgreSQL URL that names no `sslmode` (and no `PGSSLMODE` in the environment) reaches
//! a database on a loopback address in plain TCP ([`plain_on_loopback`]); any other host
//! keeps libpq's default, `prefer`.
use std::{net::IpAddr, sync::Arc, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

/// How long a pooled PostgreSQL connection may sit unused before it is pinged at checkout.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Opens the pool with the default statement timeout (tools and tests).
pub async fn connect(url: &str, pool_size: u32) -> Result<DatabaseConnection, DbErr> {
    connect_with(
        url,
        pool_size,
        Duration::from_millis(crate::config::defaults::DB_STATEMENT_TIMEOUT_MS),
    )
    .await
}

/// Opens the pool. SQLite files are created on first start (`mode=rwc`).
pub async fn connect_with(
    url: &str,
    pool_size: u32,
    statement_timeout: Duration,
) -> Result<DatabaseConnection, DbErr> {
    if url.starts_with("sqlite:") {
        return connect_sqlite(url, pool_size, statement_timeout).await;
    }
    let statement_timeout_ms = statement_timeout.as_millis().to_string();
    let sslmode_named = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(pool_size)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire_if_idle_for(PING_AFTER_IDLE)
        .sqlx_logging(false)
        // A startup parameter: set on every new connection before its first statement,
        // also after a reconnect, with no extra round trip.
        .map_sqlx_postgres_opts(move |opts| {
            let opts = opts.options([("statement_timeout", statement_timeout_ms.as_str())]);
            if !sslmode_named && plain_on_loopback(opts.get_host()) {
                opts.ssl_mode(sea_orm::sqlx::postgres::PgSslMode::Disable)
            } else {
                opts
            }
        });
    Database::connect(options).await
}

/// Whether a database at `host` is reached without TLS when the URL does not say: on a
/// loopback address TLS guards against no one who could not read the server's memory
/// anyway, and it costs both ends CPU on every statement (a sync batch binds about 20 kB).
pub fn plain_on_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// SQLite gets its own sqlx pool, for one hook sea-orm's options do not offer: a
/// connection that comes back to the pool still inside a transaction is closed, not
/// reused. After `SQLITE_FULL` or `SQLITE_IOERR` SQLite may roll a transaction back by
/// itself; sqlx's own count of open transactions then disagrees with SQLite's, and a
/// reused connection ran every later "transaction" inside one that never commits: its
/// writes were answered ACKED but never became durable, and its write lock blocked every
/// other connection (`SQLITE_BUSY`) for good. Closing the connection rolls back whatever
/// it still holds.
async fn connect_sqlite(
    url: &str,
    pool_size: u32,
    statement_timeout: Duration,
) -> Result<DatabaseConnection, DbErr> {
    use sea_orm::sqlx::{
        self, ConnectOptions as _, Connection as _, Executor as _,
        sqlite::{SqliteConnectOptions, SqlitePoolOptions},
    };
    let to_db_err = |e: sqlx::Error| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e)));
    let options: SqliteConnectOptions = url.parse().map_err(to_db_err)?;
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(statement_timeout)
        .foreign_keys(true)
        .create_if_missing(true)
        .disable_statement_logging();
    let pool = SqlitePoolOptions::new()
        .max_connections(pool_size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        // An in-process connection cannot be cut off while it sits in the pool.
        .test_before_acquire(false)
        .after_release(|conn, _meta| {
            Box::pin(async move {
                // SQLite's own view: BEGIN fails inside an open transaction. It also waits
                // for a rollback still queued by a dropped transaction, so sqlx's count
                // is settled when it is read next. Both statements go to the worker
                // thread as one command.
                if conn.execute("BEGIN; ROLLBACK").await.is_err() {
                    return Ok(false);
                }
                Ok(!conn.is_in_transaction())
            })
        })
        .connect_with(options)
        .await
        .map_err(to_db_err)?;
    Ok(sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// Runs pending migrations. On PostgreSQL an advisory lock makes instances that start
/// at the same moment take turns, so each migration runs exactly once.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7262026125)")
                .await?;
            Migrator::up(&txn, None).await?;
            txn.commit().await
        }
        _ => Migrator::up(db, None).await,
    }
}

/// A short description of the backend for logs ("sqlite", "postgres").
pub fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Postgres => "postgres",
        DbBackend::Sqlite => "sqlite",
        _ => "other",
    }
}

/// Cheap reachability check for `/readyz`.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.ping().await
}

#[cfg(test)]
mod tests {
    use super::plain_on_loopback;

    #[test]
    fn only_loopback_hosts_default_to_plain_tcp() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(plain_on_loopback(host), "{host}");
        }
        for host in [
            "db.internal",
            "10.0.0.5",
            "::ffff:10.0.0.5",
            "localhost.example",
            "",
        ] {
            assert!(!plain_on_loopback(host), "{host}");
        }
    }
}
