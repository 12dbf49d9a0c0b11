//! A published test package never changes: the database refuses updates and deletes
//! of a published row, whatever code path (or person with psql) tries.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    r#"CREATE OR REPLACE FUNCTION examsync_refuse_published_package_change() RETURNS trigger AS $$
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
$$ LANGUAGE plpgsql"#,
    r#"CREATE TRIGGER test_packages_immutable
    BEFORE UPDATE OR DELETE ON test_packages
    FOR EACH ROW EXECUTE FUNCTION examsync_refuse_published_package_change()"#,
];

const POSTGRES_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS test_packages_immutable ON test_packages",
    "DROP FUNCTION IF EXISTS examsync_refuse_published_package_change()",
];

const SQLITE_UP: &[&str] = &[
    r#"CREATE TRIGGER test_packages_immutable_update BEFORE UPDATE ON test_packages
    WHEN OLD.is_published
    BEGIN SELECT RAISE(ABORT, 'published test packages are immutable'); END"#,
    r#"CREATE TRIGGER test_packages_immutable_delete BEFORE DELETE ON test_packages
    WHEN OLD.is_published
    BEGIN SELECT RAISE(ABORT, 'published test packages are immutable'); END"#,
];

const SQLITE_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS test_packages_immutable_update",
    "DROP TRIGGER IF EXISTS test_packages_immutable_delete",
];

async fn run_all(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for statement in statements {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => run_all(manager, POSTGRES_UP).await,
            DbBackend::Sqlite => run_all(manager, SQLITE_UP).await,
            other => Err(DbErr::Migration(format!("unsupported backend {other:?}"))),
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Postgres => run_all(manager, POSTGRES_DOWN).await,
            DbBackend::Sqlite => run_all(manager, SQLITE_DOWN).await,
            other => Err(DbErr::Migration(format!("unsupported backend {other:?}"))),
        }
    }
}
