//! `attempts` loses two indexes that no statement reads: `uq_attempts_user_key` (user,
//! idempotency key) and `idx_attempts_session` (session).
//!
//! Every attempt of a sync batch paid an insert into each. The unique one repeated, on the
//! history, what the idempotency record's primary key already decides: an attempt is only
//! written by the transaction that inserted its record (the claim), and a record names one
//! attempt, so there cannot be two attempts of one key. Its inserts were also the batch's
//! most scattered (the keys are the clients' random UUIDs), most of all for a student with a
//! long history. The rule is held by the claim and checked by tests (`ORPHAN_CHECKS`: every
//! attempt has its record, naming it, and no key has two attempts; docs/reliability.md).
//! Nothing reads attempts by session: a session's answers are `session_answers`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Attempts {
    Table,
    UserId,
    IdempotencyKey,
    SessionId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in ["uq_attempts_user_key", "idx_attempts_session"] {
            manager
                .drop_index(
                    Index::drop()
                        .name(name)
                        .table(Attempts::Table)
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("uq_attempts_user_key")
                    .table(Attempts::Table)
                    .col(Attempts::UserId)
                    .col(Attempts::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_attempts_session")
                    .table(Attempts::Table)
                    .col(Attempts::SessionId)
                    .to_owned(),
            )
            .await
    }
}
