//! Schema migrations of examsync. Schema changes are only ever added as new files.
pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_tables;
mod m20261125_000002_immutable_packages;
mod m20261201_000003_package_dictionaries;
mod m20261201_000004_cache_epoch;
mod m20261205_000005_access;
mod m20261205_000006_media;
mod m20261205_000007_change_feed;
mod m20261206_000008_sync_history_without_foreign_keys;
mod m20261206_000009_attempts_without_redundant_indexes;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_tables::Migration),
            Box::new(m20261125_000002_immutable_packages::Migration),
            Box::new(m20261201_000003_package_dictionaries::Migration),
            Box::new(m20261201_000004_cache_epoch::Migration),
            Box::new(m20261205_000005_access::Migration),
            Box::new(m20261205_000006_media::Migration),
            Box::new(m20261205_000007_change_feed::Migration),
            Box::new(m20261206_000008_sync_history_without_foreign_keys::Migration),
            Box::new(m20261206_000009_attempts_without_redundant_indexes::Migration),
        ]
    }
}
