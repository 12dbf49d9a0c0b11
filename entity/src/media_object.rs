//! A media object: bytes identified by their SHA-256, stored once however many questions
//! and package versions use them. Never updated; kept while anything refers to it (the
//! foreign keys of `question_media` and `package_media` refuse its deletion).
use sea_orm::entity::prelude::*;

use crate::ids::MediaHash;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "media_objects")]
pub struct Model {
    /// Lowercase hex SHA-256 of `data`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub sha256: MediaHash,
    pub content_type: crate::enums::MediaContentType,
    pub bytes: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// CRC-32 of `data` (what a ZIP entry header carries), kept as a non-negative i64.
    pub crc32: i64,
    #[sea_orm(column_type = "Blob")]
    pub data: Vec<u8>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
