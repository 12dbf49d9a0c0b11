//! PostgreSQL: `attempts` and `session_answers` lose their foreign keys (to `users`,
//! `test_sessions` and `questions`).
//!
//! Each of those keys made every inserted row run a trigger that looks its parent row up
//! and locks it `FOR KEY SHARE`: four per attempt of a sync batch, and on `questions`,
//! which every student's batch names, the share locks of concurrent batches pile up as
//! multixacts that rewrite the parent rows. The rules the keys held are held by the sync
//! path itself and by tests instead (see `docs/reliability.md`, "Integrity without foreign
//! keys"): an attempt names a session of its user found or created in the same
//! transaction, a known question, and a user whose row the transaction has locked; no code
//! path deletes users, sessions or questions.
//!
//! SQLite keeps its foreign keys: its checks run in-process, one writer at a time.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (table, column, referenced table): the keys migration 1 created, whose names
/// PostgreSQL chose (`<table>_<column>_fkey`).
const KEYS: [(&str, &str, &str); 4] = [
    ("attempts", "session_id", "test_sessions"),
    ("attempts", "user_id", "users"),
    ("session_answers", "session_id", "test_sessions"),
    ("session_answers", "question_id", "questions"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, column, _) in KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {table}_{column}_fkey"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, column, parent) in KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_fkey \
                 FOREIGN KEY ({column}) REFERENCES {parent} (id)"
            ))
            .await?;
        }
        Ok(())
    }
}
