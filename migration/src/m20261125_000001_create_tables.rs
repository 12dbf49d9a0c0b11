//! The whole data model. The unique keys here are what the sync and package rules
//! rest on, so that any number of server instances can share one database.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Role,
    CreatedAt,
    LastSyncAt,
    AckedCount,
    DuplicateCount,
    RejectedCount,
}

#[derive(DeriveIden)]
enum Questions {
    Table,
    Id,
    Stem,
    Options,
    CorrectIndex,
    ExplanationMd,
    YearId,
    BlockId,
    ThemeId,
    CognitiveLevel,
    Difficulty,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TestPackages {
    Table,
    Id,
    Name,
    Description,
    Scope,
    ScopeData,
    ScopeKey,
    YearId,
    BlockId,
    ThemeId,
    Version,
    VersionHash,
    QuestionsJson,
    QuestionCount,
    IsPublished,
    PublishedAt,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TestSessions {
    Table,
    Id,
    UserId,
    OfflineSessionId,
    Mode,
    Status,
    Year,
    BlockId,
    ThemeId,
    TotalQuestions,
    AnsweredCount,
    CorrectCount,
    StartedAt,
    SubmittedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SessionAnswers {
    Table,
    Id,
    SessionId,
    QuestionId,
    AttemptId,
    SelectedOptionIndex,
    IsCorrect,
    AnsweredAt,
    ChangedCount,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Attempts {
    Table,
    Id,
    UserId,
    SessionId,
    QuestionId,
    PackageId,
    ClientAttemptId,
    IdempotencyKey,
    PayloadHash,
    SelectedOptionIndex,
    IsCorrect,
    AnsweredAt,
    AnsweredAtRaw,
    ClockSkewMs,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum IdempotencyRecords {
    Table,
    UserId,
    IdempotencyKey,
    PayloadHash,
    AttemptId,
    SessionId,
    CreatedAt,
}

fn uuid_col<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).uuid().not_null().to_owned()
}

fn ts_col<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn count_col<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(uuid_col(Users::Id).primary_key())
                    .col(ColumnDef::new(Users::Role).string_len(16).not_null())
                    .col(ts_col(Users::CreatedAt))
                    .col(
                        ColumnDef::new(Users::LastSyncAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(count_col(Users::AckedCount))
                    .col(count_col(Users::DuplicateCount))
                    .col(count_col(Users::RejectedCount))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Questions::Table)
                    .col(uuid_col(Questions::Id).primary_key())
                    .col(ColumnDef::new(Questions::Stem).text().not_null())
                    .col(ColumnDef::new(Questions::Options).json_binary().not_null())
                    .col(ColumnDef::new(Questions::CorrectIndex).integer().not_null())
                    .col(ColumnDef::new(Questions::ExplanationMd).text().null())
                    .col(ColumnDef::new(Questions::YearId).integer().not_null())
                    .col(ColumnDef::new(Questions::BlockId).integer().null())
                    .col(ColumnDef::new(Questions::ThemeId).integer().null())
                    .col(ColumnDef::new(Questions::CognitiveLevel).string().null())
                    .col(ColumnDef::new(Questions::Difficulty).string().null())
                    .col(ColumnDef::new(Questions::Status).string_len(16).not_null())
                    .col(ts_col(Questions::CreatedAt))
                    .col(ts_col(Questions::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_questions_status_year", Questions::YearId),
            ("idx_questions_status_block", Questions::BlockId),
            ("idx_questions_status_theme", Questions::ThemeId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Questions::Table)
                        .col(Questions::Status)
                        .col(col)
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(TestPackages::Table)
                    .col(uuid_col(TestPackages::Id).primary_key())
                    .col(ColumnDef::new(TestPackages::Name).string().not_null())
                    .col(ColumnDef::new(TestPackages::Description).text().null())
                    .col(
                        ColumnDef::new(TestPackages::Scope)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestPackages::ScopeData)
                            .json_binary()
                            .not_null(),
                    )
                    .col(ColumnDef::new(TestPackages::ScopeKey).string().not_null())
                    .col(ColumnDef::new(TestPackages::YearId).integer().null())
                    .col(ColumnDef::new(TestPackages::BlockId).integer().null())
                    .col(ColumnDef::new(TestPackages::ThemeId).integer().null())
                    .col(ColumnDef::new(TestPackages::Version).integer().not_null())
                    .col(
                        ColumnDef::new(TestPackages::VersionHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestPackages::QuestionsJson)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestPackages::QuestionCount)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestPackages::IsPublished)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestPackages::PublishedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(TestPackages::CreatedBy).uuid().null())
                    .col(ts_col(TestPackages::CreatedAt))
                    .col(ts_col(TestPackages::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_test_packages_scope_version")
                    .table(TestPackages::Table)
                    .col(TestPackages::Scope)
                    .col(TestPackages::ScopeKey)
                    .col(TestPackages::Version)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_test_packages_published")
                    .table(TestPackages::Table)
                    .col(TestPackages::IsPublished)
                    .col(TestPackages::PublishedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TestSessions::Table)
                    .col(uuid_col(TestSessions::Id).primary_key())
                    .col(uuid_col(TestSessions::UserId))
                    .col(ColumnDef::new(TestSessions::OfflineSessionId).uuid().null())
                    .col(ColumnDef::new(TestSessions::Mode).string_len(16).not_null())
                    .col(
                        ColumnDef::new(TestSessions::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(TestSessions::Year).integer().not_null())
                    .col(ColumnDef::new(TestSessions::BlockId).integer().null())
                    .col(ColumnDef::new(TestSessions::ThemeId).integer().null())
                    .col(
                        ColumnDef::new(TestSessions::TotalQuestions)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestSessions::AnsweredCount)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TestSessions::CorrectCount)
                            .integer()
                            .not_null(),
                    )
                    .col(ts_col(TestSessions::StartedAt))
                    .col(
                        ColumnDef::new(TestSessions::SubmittedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ts_col(TestSessions::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(TestSessions::Table, TestSessions::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // The offline-session map: one server session per (user, offline session id).
        // NULL offline ids (sessions started online) are distinct on both backends.
        manager
            .create_index(
                Index::create()
                    .name("uq_test_sessions_user_offline")
                    .table(TestSessions::Table)
                    .col(TestSessions::UserId)
                    .col(TestSessions::OfflineSessionId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SessionAnswers::Table)
                    .col(uuid_col(SessionAnswers::Id).primary_key())
                    .col(uuid_col(SessionAnswers::SessionId))
                    .col(uuid_col(SessionAnswers::QuestionId))
                    .col(uuid_col(SessionAnswers::AttemptId))
                    .col(
                        ColumnDef::new(SessionAnswers::SelectedOptionIndex)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SessionAnswers::IsCorrect)
                            .boolean()
                            .not_null(),
                    )
                    .col(ts_col(SessionAnswers::AnsweredAt))
                    .col(
                        ColumnDef::new(SessionAnswers::ChangedCount)
                            .integer()
                            .not_null(),
                    )
                    .col(ts_col(SessionAnswers::CreatedAt))
                    .col(ts_col(SessionAnswers::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(SessionAnswers::Table, SessionAnswers::SessionId)
                            .to(TestSessions::Table, TestSessions::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(SessionAnswers::Table, SessionAnswers::QuestionId)
                            .to(Questions::Table, Questions::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_session_answers_session_question")
                    .table(SessionAnswers::Table)
                    .col(SessionAnswers::SessionId)
                    .col(SessionAnswers::QuestionId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Attempts::Table)
                    .col(uuid_col(Attempts::Id).primary_key())
                    .col(uuid_col(Attempts::UserId))
                    .col(uuid_col(Attempts::SessionId))
                    .col(uuid_col(Attempts::QuestionId))
                    .col(ColumnDef::new(Attempts::PackageId).uuid().null())
                    .col(uuid_col(Attempts::ClientAttemptId))
                    .col(uuid_col(Attempts::IdempotencyKey))
                    .col(
                        ColumnDef::new(Attempts::PayloadHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Attempts::SelectedOptionIndex)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Attempts::IsCorrect).boolean().not_null())
                    .col(ts_col(Attempts::AnsweredAt))
                    .col(
                        ColumnDef::new(Attempts::AnsweredAtRaw)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Attempts::ClockSkewMs).big_integer().null())
                    .col(ts_col(Attempts::ReceivedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Attempts::Table, Attempts::SessionId)
                            .to(TestSessions::Table, TestSessions::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Attempts::Table, Attempts::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // One attempt per (user, idempotency key), also at the level of the history.
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
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyRecords::Table)
                    .col(uuid_col(IdempotencyRecords::UserId))
                    .col(uuid_col(IdempotencyRecords::IdempotencyKey))
                    .col(
                        ColumnDef::new(IdempotencyRecords::PayloadHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(uuid_col(IdempotencyRecords::AttemptId))
                    .col(uuid_col(IdempotencyRecords::SessionId))
                    .col(ts_col(IdempotencyRecords::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyRecords::UserId)
                            .col(IdempotencyRecords::IdempotencyKey),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            IdempotencyRecords::Table.into_iden(),
            Attempts::Table.into_iden(),
            SessionAnswers::Table.into_iden(),
            TestSessions::Table.into_iden(),
            TestPackages::Table.into_iden(),
            Questions::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
