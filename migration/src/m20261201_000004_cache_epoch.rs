//! The cache epoch: a random id of this database's contents that every cache key carries
//! (`<prefix><epoch>:…`). The server fills it on first start; `examsync cache reset`
//! replaces it after a restore, so entries cached for the contents before the restore
//! (a `DUPLICATE` for an attempt the restored database no longer holds) are never read.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row at most (id = 1); the same SQL on PostgreSQL and SQLite.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS cache_epoch (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    epoch VARCHAR(64) NOT NULL
                )",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS cache_epoch")
            .await?;
        Ok(())
    }
}
