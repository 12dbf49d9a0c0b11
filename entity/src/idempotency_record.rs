//! One record per (user_id, idempotency_key): the durable source of truth for
//! `DUPLICATE` answers. Kept as long as the attempt it points at.
use sea_orm::entity::prelude::*;

use crate::ids::{AttemptId, IdempotencyKey, PayloadHash, SessionId, UserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_records")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: UserId,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idempotency_key: IdempotencyKey,
    pub payload_hash: PayloadHash,
    pub attempt_id: AttemptId,
    pub session_id: SessionId,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
