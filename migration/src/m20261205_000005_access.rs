//! Access (SPEC-level docs: docs/api.md section 3.1) and withdrawal (section 4):
//!
//! - `access_grants`: who may study what, with a validity window and revocation;
//! - `package_questions`: question → package index, one row per question a package holds,
//!   with the question's ids as snapshotted. It answers "do these grants cover this
//!   package" and "is this retired question in a published package" without reading
//!   package JSON. Rows of packages built before this migration are filled at start-up
//!   (`examsync::access::index::backfill`), which needs the JSON parser this crate lacks;
//! - `test_packages.withdrawn_at` / `withdrawn_reason`: the one change a published package
//!   may still undergo. The immutability triggers are replaced by ones that allow exactly
//!   that change (once: a withdrawn package is never changed again) and nothing else.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AccessGrants {
    Table,
    Id,
    UserId,
    Scope,
    YearId,
    BlockId,
    ThemeId,
    ValidFrom,
    ValidUntil,
    RevokedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PackageQuestions {
    Table,
    PackageId,
    QuestionId,
    YearId,
    BlockId,
    ThemeId,
}

#[derive(DeriveIden)]
enum TestPackages {
    Table,
    Id,
    WithdrawnAt,
    WithdrawnReason,
}

/// Every column of `test_packages` but the withdrawal ones: the SQLite trigger compares
/// them one by one (PostgreSQL compares whole rows minus the withdrawal columns).
const FROZEN_COLUMNS: &[&str] = &[
    "id",
    "name",
    "description",
    "scope",
    "scope_data",
    "scope_key",
    "year_id",
    "block_id",
    "theme_id",
    "version",
    "version_hash",
    "questions_json",
    "question_count",
    "is_published",
    "published_at",
    "created_by",
    "created_at",
    "updated_at",
];

const POSTGRES_TRIGGER: &str = r#"CREATE OR REPLACE FUNCTION examsync_refuse_published_package_change() RETURNS trigger AS $$
BEGIN
    IF OLD.is_published THEN
        IF TG_OP = 'UPDATE'
            AND OLD.withdrawn_at IS NULL
            AND NEW.withdrawn_at IS NOT NULL
            AND (to_jsonb(NEW) - 'withdrawn_at' - 'withdrawn_reason')
                = (to_jsonb(OLD) - 'withdrawn_at' - 'withdrawn_reason') THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'published test packages are immutable'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql"#;

const POSTGRES_TRIGGER_DOWN: &str = r#"CREATE OR REPLACE FUNCTION examsync_refuse_published_package_change() RETURNS trigger AS $$
BEGIN
    IF OLD.is_published THEN
        RAISE EXCEPTION 'published test packages are immutable'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql"#;

fn sqlite_trigger() -> String {
    let same = FROZEN_COLUMNS
        .iter()
        .map(|c| format!("NEW.{c} IS OLD.{c}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "CREATE TRIGGER test_packages_immutable_unless_withdrawn BEFORE UPDATE ON test_packages \
         WHEN OLD.is_published AND NOT (OLD.withdrawn_at IS NULL AND NEW.withdrawn_at IS NOT NULL \
         AND {same}) \
         BEGIN SELECT RAISE(ABORT, 'published test packages are immutable'); END"
    )
}

const SQLITE_TRIGGER_DOWN: &str = r#"CREATE TRIGGER test_packages_immutable_update BEFORE UPDATE ON test_packages
    WHEN OLD.is_published
    BEGIN SELECT RAISE(ABORT, 'published test packages are immutable'); END"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let ts = |c: AccessGrants| {
            ColumnDef::new(c)
                .timestamp_with_time_zone()
                .null()
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(AccessGrants::Table)
                    .col(
                        ColumnDef::new(AccessGrants::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AccessGrants::UserId).uuid().not_null())
                    .col(ColumnDef::new(AccessGrants::Scope).string().not_null())
                    .col(ColumnDef::new(AccessGrants::YearId).integer().null())
                    .col(ColumnDef::new(AccessGrants::BlockId).integer().null())
                    .col(ColumnDef::new(AccessGrants::ThemeId).integer().null())
                    .col(ts(AccessGrants::ValidFrom))
                    .col(ts(AccessGrants::ValidUntil))
                    .col(ts(AccessGrants::RevokedAt))
                    .col(
                        ColumnDef::new(AccessGrants::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("access_grants_user")
                    .table(AccessGrants::Table)
                    .col(AccessGrants::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PackageQuestions::Table)
                    .col(
                        ColumnDef::new(PackageQuestions::PackageId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PackageQuestions::QuestionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PackageQuestions::YearId)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(PackageQuestions::BlockId).integer().null())
                    .col(ColumnDef::new(PackageQuestions::ThemeId).integer().null())
                    .primary_key(
                        Index::create()
                            .col(PackageQuestions::PackageId)
                            .col(PackageQuestions::QuestionId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PackageQuestions::Table, PackageQuestions::PackageId)
                            .to(TestPackages::Table, TestPackages::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("package_questions_question")
                    .table(PackageQuestions::Table)
                    .col(PackageQuestions::QuestionId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(TestPackages::Table)
                    .add_column(
                        ColumnDef::new(TestPackages::WithdrawnAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(TestPackages::Table)
                    .add_column(ColumnDef::new(TestPackages::WithdrawnReason).text().null())
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(POSTGRES_TRIGGER).await?;
            }
            DbBackend::Sqlite => {
                db.execute_unprepared("DROP TRIGGER IF EXISTS test_packages_immutable_update")
                    .await?;
                db.execute_unprepared(&sqlite_trigger()).await?;
            }
            other => return Err(DbErr::Migration(format!("unsupported backend {other:?}"))),
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(POSTGRES_TRIGGER_DOWN).await?;
            }
            DbBackend::Sqlite => {
                db.execute_unprepared(
                    "DROP TRIGGER IF EXISTS test_packages_immutable_unless_withdrawn",
                )
                .await?;
                db.execute_unprepared(SQLITE_TRIGGER_DOWN).await?;
            }
            other => return Err(DbErr::Migration(format!("unsupported backend {other:?}"))),
        }
        manager
            .drop_table(Table::drop().table(PackageQuestions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AccessGrants::Table).to_owned())
            .await?;
        for column in [TestPackages::WithdrawnAt, TestPackages::WithdrawnReason] {
            manager
                .alter_table(
                    Table::alter()
                        .table(TestPackages::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
