//! The RFC 9842 dictionary index (`package_dictionaries`): SHA-256 of a published
//! package's download bytes → the package, so `Available-Dictionary` is a key lookup.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PackageDictionaries {
    Table,
    Sha256,
    PackageId,
}

#[derive(DeriveIden)]
enum TestPackages {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PackageDictionaries::Table)
                    .col(
                        ColumnDef::new(PackageDictionaries::Sha256)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(PackageDictionaries::PackageId)
                            .uuid()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PackageDictionaries::Table, PackageDictionaries::PackageId)
                            .to(TestPackages::Table, TestPackages::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PackageDictionaries::Table).to_owned())
            .await
    }
}
