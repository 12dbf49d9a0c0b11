//! Media objects (content-addressed bytes), the references questions make to them, the
//! objects each package refers to, and the per-package totals a list item shows.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MediaObjects {
    Table,
    Sha256,
    ContentType,
    Bytes,
    Width,
    Height,
    Crc32,
    Data,
    CreatedAt,
}

#[derive(DeriveIden)]
enum QuestionMedia {
    Table,
    QuestionId,
    Position,
    Sha256,
    Placement,
    Alt,
}

#[derive(DeriveIden)]
enum PackageMedia {
    Table,
    PackageId,
    Sha256,
}

#[derive(DeriveIden)]
enum Questions {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum TestPackages {
    Table,
    Id,
    MediaCount,
    MediaBytes,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MediaObjects::Table)
                    .col(
                        ColumnDef::new(MediaObjects::Sha256)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(MediaObjects::ContentType)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(MediaObjects::Bytes).big_integer().not_null())
                    .col(ColumnDef::new(MediaObjects::Width).integer().null())
                    .col(ColumnDef::new(MediaObjects::Height).integer().null())
                    // Computed once at upload, so a bundle's layout needs no pass over the bytes.
                    .col(ColumnDef::new(MediaObjects::Crc32).big_integer().not_null())
                    .col(ColumnDef::new(MediaObjects::Data).blob().not_null())
                    .col(
                        ColumnDef::new(MediaObjects::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Foreign keys keep every referenced object: the database refuses to delete one.
        manager
            .create_table(
                Table::create()
                    .table(QuestionMedia::Table)
                    .col(ColumnDef::new(QuestionMedia::QuestionId).uuid().not_null())
                    .col(ColumnDef::new(QuestionMedia::Position).integer().not_null())
                    .col(
                        ColumnDef::new(QuestionMedia::Sha256)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuestionMedia::Placement)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(QuestionMedia::Alt).text().null())
                    .primary_key(
                        Index::create()
                            .col(QuestionMedia::QuestionId)
                            .col(QuestionMedia::Position),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(QuestionMedia::Table, QuestionMedia::QuestionId)
                            .to(Questions::Table, Questions::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(QuestionMedia::Table, QuestionMedia::Sha256)
                            .to(MediaObjects::Table, MediaObjects::Sha256),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PackageMedia::Table)
                    .col(ColumnDef::new(PackageMedia::PackageId).uuid().not_null())
                    .col(
                        ColumnDef::new(PackageMedia::Sha256)
                            .string_len(64)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(PackageMedia::PackageId)
                            .col(PackageMedia::Sha256),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PackageMedia::Table, PackageMedia::PackageId)
                            .to(TestPackages::Table, TestPackages::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PackageMedia::Table, PackageMedia::Sha256)
                            .to(MediaObjects::Table, MediaObjects::Sha256),
                    )
                    .to_owned(),
            )
            .await?;
        // "Which packages refer to this object" is the question every object read asks.
        manager
            .create_index(
                Index::create()
                    .name("package_media_sha256")
                    .table(PackageMedia::Table)
                    .col(PackageMedia::Sha256)
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite's ALTER TABLE adds one at a time. Existing packages
        // have no media, so the defaults are their true values.
        manager
            .alter_table(
                Table::alter()
                    .table(TestPackages::Table)
                    .add_column(
                        ColumnDef::new(TestPackages::MediaCount)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(TestPackages::Table)
                    .add_column(
                        ColumnDef::new(TestPackages::MediaBytes)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [TestPackages::MediaBytes, TestPackages::MediaCount] {
            manager
                .alter_table(
                    Table::alter()
                        .table(TestPackages::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(PackageMedia::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(QuestionMedia::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(MediaObjects::Table).to_owned())
            .await
    }
}
