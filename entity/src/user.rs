//! A user as known from a valid JWT; created on first sight.
use sea_orm::entity::prelude::*;

use crate::ids::{Role, UserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: UserId,
    /// Role seen in the first token (informational; every request's token decides).
    pub role: Role,
    pub created_at: DateTimeUtc,
    /// When this user's last sync batch was processed.
    pub last_sync_at: Option<DateTimeUtc>,
    /// Sync items answered ACKED / DUPLICATE / REJECTED so far (for `syncStatus`).
    pub acked_count: i64,
    pub duplicate_count: i64,
    pub rejected_count: i64,
    /// The user's change counter: bumped first in every transaction that changes one of
    /// their sessions or answers (see `docs/architecture.md`, the pull feed).
    pub change_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
