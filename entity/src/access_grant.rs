//! A grant: one user may read what one scope covers, within a validity window, until
//! revoked (docs/api.md section 3.1). Rows are never deleted: a revoked or expired grant
//! still decides whether answers made while it was in force count.
use sea_orm::entity::prelude::*;

use crate::ids::{GrantId, UserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "access_grants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: GrantId,
    pub user_id: UserId,
    pub scope: crate::enums::PackageScope,
    /// Set for YEAR grants only (likewise `block_id` for BLOCK, `theme_id` for THEME).
    pub year_id: Option<i32>,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    /// Null: no start.
    pub valid_from: Option<DateTimeUtc>,
    /// Null: no end.
    pub valid_until: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
