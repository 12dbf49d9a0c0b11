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
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

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
    let statement_timeout_ms = statement_timeout.as_millis().to_string();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(pool_size)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(statement_timeout)
                .foreign_keys(true)
                .create_if_missing(true)
        })
        // A startup parameter: set on every new connection before its first statement,
        // also after a reconnect, with no extra round trip.
        .map_sqlx_postgres_opts(move |opts| {
            opts.options([("statement_timeout", statement_timeout_ms.as_str())])
        });
    Database::connect(options).await
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
