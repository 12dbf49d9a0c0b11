//! The pull feed (`GET /api/v1/sync/changes`, `syncChanges`): a per-user change counter.
//!
//! `users.change_seq` is bumped first thing in every transaction that changes a session or
//! an answer of that user (the row lock serialises the user's writers in counter order),
//! and every row it changes stores the new value in its own `change_seq`. A page reads the
//! rows after a cursor through the (user_id, change_seq, id) indexes, so it costs the same
//! whatever the length of the history. `session_answers` gains `user_id` for that index;
//! existing rows are filled in from their session. Rows written before this migration keep
//! `change_seq = 0`: a restore (no cursor) starts below it.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    ChangeSeq,
}

#[derive(DeriveIden)]
enum TestSessions {
    Table,
    UserId,
    ChangeSeq,
    Id,
}

#[derive(DeriveIden)]
enum SessionAnswers {
    Table,
    UserId,
    ChangeSeq,
    Id,
}

fn seq_col<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per ALTER: SQLite takes no more.
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(seq_col(Users::ChangeSeq))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(TestSessions::Table)
                    .add_column(seq_col(TestSessions::ChangeSeq))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SessionAnswers::Table)
                    .add_column(seq_col(SessionAnswers::ChangeSeq))
                    .to_owned(),
            )
            .await?;
        // Nullable while it is filled in; PostgreSQL then makes it NOT NULL (SQLite cannot
        // alter a column, and every write sets it).
        manager
            .alter_table(
                Table::alter()
                    .table(SessionAnswers::Table)
                    .add_column(ColumnDef::new(SessionAnswers::UserId).uuid().null())
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE session_answers SET user_id = \
             (SELECT s.user_id FROM test_sessions s WHERE s.id = session_answers.session_id)",
        )
        .await?;
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE session_answers ALTER COLUMN user_id SET NOT NULL")
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_test_sessions_user_change")
                    .table(TestSessions::Table)
                    .col(TestSessions::UserId)
                    .col(TestSessions::ChangeSeq)
                    .col(TestSessions::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_session_answers_user_change")
                    .table(SessionAnswers::Table)
                    .col(SessionAnswers::UserId)
                    .col(SessionAnswers::ChangeSeq)
                    .col(SessionAnswers::Id)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_session_answers_user_change")
                    .table(SessionAnswers::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_test_sessions_user_change")
                    .table(TestSessions::Table)
                    .to_owned(),
            )
            .await?;
        for (table, column) in [
            (
                SessionAnswers::Table.into_iden(),
                SessionAnswers::UserId.into_iden(),
            ),
            (
                SessionAnswers::Table.into_iden(),
                SessionAnswers::ChangeSeq.into_iden(),
            ),
            (
                TestSessions::Table.into_iden(),
                TestSessions::ChangeSeq.into_iden(),
            ),
            (Users::Table.into_iden(), Users::ChangeSeq.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
