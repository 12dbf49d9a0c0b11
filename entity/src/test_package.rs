//! A versioned, content-hashed snapshot of the published questions of a scope.
//!
//! Unique (scope, scope_key, version). Once `is_published` is true the row never changes:
//! the application has no update path for it and the database refuses one (triggers).
use sea_orm::entity::prelude::*;

use crate::ids::{PackageId, UserId, VersionHash};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "test_packages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: PackageId,
    pub name: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub scope: crate::enums::PackageScope,
    /// The scope's ids as a JSON object, e.g. `{"block_id":2}`.
    pub scope_data: Json,
    /// Canonical text of `scope_data`, so that uniqueness does not depend on JSON equality rules.
    pub scope_key: String,
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub version: i32,
    pub version_hash: VersionHash,
    /// The REST `questions` array in RFC 8785 canonical form: exactly the bytes hashed.
    #[sea_orm(column_type = "Text")]
    pub questions_json: String,
    pub question_count: i32,
    /// Distinct media objects the snapshots refer to, and their total size.
    pub media_count: i32,
    pub media_bytes: i64,
    pub is_published: bool,
    pub published_at: Option<DateTimeUtc>,
    pub created_by: Option<UserId>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set once when an admin withdraws the package: the one change a published package
    /// may undergo (the triggers allow it and nothing else).
    pub withdrawn_at: Option<DateTimeUtc>,
    /// Why, for admins.
    #[sea_orm(column_type = "Text", nullable)]
    pub withdrawn_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
