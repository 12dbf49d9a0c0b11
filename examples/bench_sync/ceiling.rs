//! The ceiling: what the database does with the bare writes of a fresh batch.
//!
//! Each transaction is two 100-row `INSERT … VALUES … ON CONFLICT DO NOTHING`, one into an
//! attempts-shaped table and one into an idempotency-shaped table, then `COMMIT`. Ceiling
//! = 100 × transactions/s.
//!
//! On PostgreSQL it goes through `tokio-postgres` (plain TCP, `TCP_NODELAY` on): the ceiling
//! measures the database, not a driver.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{BATCH, Bank, Outcome};

/// The two tables, in SQL both backends accept.
pub const DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS bench_ceiling_attempts (\
       id uuid PRIMARY KEY, user_id uuid NOT NULL, session_id uuid NOT NULL, \
       question_id uuid NOT NULL, client_attempt_id uuid NOT NULL, \
       selected_option_index integer NOT NULL, is_correct boolean NOT NULL, \
       answered_at timestamptz NOT NULL, payload_hash varchar(64) NOT NULL, \
       created_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_ceiling_idempotency (\
       user_id uuid NOT NULL, idempotency_key uuid NOT NULL, \
       payload_hash varchar(64) NOT NULL, attempt_id uuid NOT NULL, \
       session_id uuid NOT NULL, created_at timestamptz NOT NULL, \
       PRIMARY KEY (user_id, idempotency_key))",
];

const ATTEMPT_COLUMNS: &str = "id, user_id, session_id, question_id, client_attempt_id, \
     selected_option_index, is_correct, answered_at, payload_hash, created_at";
const IDEMPOTENCY_COLUMNS: &str =
    "user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at";

/// `INSERT INTO table (columns) VALUES (…), … ON CONFLICT DO NOTHING` for `rows` rows.
fn insert_sql(table: &str, columns: &str, rows: usize, backend: DbBackend) -> String {
    let width = columns.split(',').count();
    let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for col in 0..width {
            if col > 0 {
                sql.push(',');
            }
            match backend {
                DbBackend::Postgres => sql.push_str(&format!("${}", row * width + col + 1)),
                _ => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// One row of each table, from one generated attempt.
struct Rows {
    attempt_id: Uuid,
    user_id: Uuid,
    session_id: Uuid,
    question_id: Uuid,
    client_attempt_id: Uuid,
    idempotency_key: Uuid,
    selected_option_index: i32,
    is_correct: bool,
    answered_at: DateTime<Utc>,
    payload_hash: String,
    created_at: DateTime<Utc>,
}

fn rows(bank: &Bank, user_id: Uuid) -> Vec<Rows> {
    let now = Utc::now();
    bank.batch()
        .into_iter()
        .map(|a| Rows {
            attempt_id: Uuid::new_v4(),
            user_id,
            session_id: a.offline_session_id,
            question_id: a.question_id,
            client_attempt_id: a.client_attempt_id,
            idempotency_key: a.idempotency_key,
            selected_option_index: a.selected_option_index as i32,
            is_correct: a.is_correct,
            answered_at: a.answered_at,
            payload_hash: a.payload_hash,
            created_at: now,
        })
        .collect()
}

/// Creates the tables (idempotent).
pub async fn pg_setup(url: &str) -> Result<(), String> {
    let client = pg_connect(url).await?;
    for ddl in DDL {
        client
            .batch_execute(ddl)
            .await
            .map_err(|e| format!("ceiling tables: {e}"))?;
    }
    Ok(())
}

/// A `tokio-postgres` connection (`TCP_NODELAY` on), its driver task spawned.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("tokio-postgres connect: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("  tokio-postgres connection: {e}");
        }
    });
    Ok(client)
}

/// `clients` connections, each running the two-insert transaction back to back.
pub async fn pg_run(
    url: &str,
    bank: &Arc<Bank>,
    clients: usize,
    duration: Duration,
) -> Result<(Outcome, Duration), String> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut client = pg_connect(url).await?;
        let attempts = client
            .prepare(&insert_sql(
                "bench_ceiling_attempts",
                ATTEMPT_COLUMNS,
                BATCH,
                DbBackend::Postgres,
            ))
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        let records = client
            .prepare(&insert_sql(
                "bench_ceiling_idempotency",
                IDEMPOTENCY_COLUMNS,
                BATCH,
                DbBackend::Postgres,
            ))
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        // Warm the connection's first transaction outside the measured window.
        client
            .transaction()
            .await
            .map_err(|e| e.to_string())?
            .commit()
            .await
            .map_err(|e| e.to_string())?;
        connections.push((client, attempts, records));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(mut client, attempts, records)| {
            let bank = bank.clone();
            tokio::spawn(async move {
                let user = Uuid::new_v4();
                let mut outcome = Outcome::default();
                while Instant::now() < deadline {
                    let batch = rows(&bank, user);
                    let mut a: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(BATCH * 10);
                    let mut r: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(BATCH * 6);
                    for row in &batch {
                        a.extend([
                            &row.attempt_id as &(dyn ToSql + Sync),
                            &row.user_id,
                            &row.session_id,
                            &row.question_id,
                            &row.client_attempt_id,
                            &row.selected_option_index,
                            &row.is_correct,
                            &row.answered_at,
                            &row.payload_hash,
                            &row.created_at,
                        ]);
                        r.extend([
                            &row.user_id as &(dyn ToSql + Sync),
                            &row.idempotency_key,
                            &row.payload_hash,
                            &row.attempt_id,
                            &row.session_id,
                            &row.created_at,
                        ]);
                    }
                    let t = Instant::now();
                    let result = async {
                        let txn = client.transaction().await?;
                        let n = txn.execute(&attempts, &a).await?;
                        let m = txn.execute(&records, &r).await?;
                        txn.commit().await?;
                        Ok::<_, tokio_postgres::Error>(n + m)
                    }
                    .await;
                    outcome.latencies.push(t.elapsed());
                    count(&mut outcome, result.map_err(|e| e.to_string()));
                }
                outcome
            })
        })
        .collect();
    Ok(collect(tasks, started).await)
}

fn count(outcome: &mut Outcome, result: Result<u64, String>) {
    match result {
        Ok(n) => {
            outcome.batches += 1;
            outcome.items += BATCH;
            *outcome.statuses.entry("inserted".into()).or_default() += n as usize;
        }
        Err(e) => {
            eprintln!("  ceiling transaction failed: {e}");
            outcome.errors += 1;
        }
    }
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    started: Instant,
) -> (Outcome, Duration) {
    let mut total = Outcome::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            total.merge(outcome);
        }
    }
    (total, started.elapsed())
}

/// Creates the tables in an SQLite file opened like the server opens its own
/// (`examsync::db::connect`: WAL, `synchronous=FULL`, busy timeout, foreign keys on).
pub async fn sqlite_setup(db: &DatabaseConnection) -> Result<(), String> {
    for ddl in DDL {
        db.execute_unprepared(ddl)
            .await
            .map_err(|e| format!("ceiling tables: {e}"))?;
    }
    Ok(())
}

/// `clients` tasks sharing the pool, each running the two-insert transaction back to back.
pub async fn sqlite_run(
    db: &DatabaseConnection,
    bank: &Arc<Bank>,
    clients: usize,
    duration: Duration,
) -> (Outcome, Duration) {
    let attempts_sql = insert_sql(
        "bench_ceiling_attempts",
        ATTEMPT_COLUMNS,
        BATCH,
        DbBackend::Sqlite,
    );
    let records_sql = insert_sql(
        "bench_ceiling_idempotency",
        IDEMPOTENCY_COLUMNS,
        BATCH,
        DbBackend::Sqlite,
    );
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (db, bank) = (db.clone(), bank.clone());
            let (attempts_sql, records_sql) = (attempts_sql.clone(), records_sql.clone());
            tokio::spawn(async move {
                let user = Uuid::new_v4();
                let mut outcome = Outcome::default();
                while Instant::now() < deadline {
                    let batch = rows(&bank, user);
                    let mut a: Vec<sea_orm::Value> = Vec::with_capacity(BATCH * 10);
                    let mut r: Vec<sea_orm::Value> = Vec::with_capacity(BATCH * 6);
                    for row in batch {
                        a.extend([
                            row.attempt_id.into(),
                            row.user_id.into(),
                            row.session_id.into(),
                            row.question_id.into(),
                            row.client_attempt_id.into(),
                            row.selected_option_index.into(),
                            row.is_correct.into(),
                            row.answered_at.into(),
                            row.payload_hash.clone().into(),
                            row.created_at.into(),
                        ]);
                        r.extend([
                            row.user_id.into(),
                            row.idempotency_key.into(),
                            row.payload_hash.into(),
                            row.attempt_id.into(),
                            row.session_id.into(),
                            row.created_at.into(),
                        ]);
                    }
                    let t = Instant::now();
                    let result = async {
                        let txn = db.begin().await?;
                        let n = txn
                            .execute_raw(Statement::from_sql_and_values(
                                DbBackend::Sqlite,
                                attempts_sql.as_str(),
                                a,
                            ))
                            .await?
                            .rows_affected();
                        let m = txn
                            .execute_raw(Statement::from_sql_and_values(
                                DbBackend::Sqlite,
                                records_sql.as_str(),
                                r,
                            ))
                            .await?
                            .rows_affected();
                        txn.commit().await?;
                        Ok::<_, sea_orm::DbErr>(n + m)
                    }
                    .await;
                    outcome.latencies.push(t.elapsed());
                    count(&mut outcome, result.map_err(|e| e.to_string()));
                }
                outcome
            })
        })
        .collect();
    collect(tasks, started).await
}
