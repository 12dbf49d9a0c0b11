//! A server-side study session. Sessions created by sync carry the phone's
//! `offline_session_id`; unique (user_id, offline_session_id) is the offline-session map.
use sea_orm::entity::prelude::*;

use crate::ids::{OfflineSessionId, SessionId, UserId};

use crate::enums::{SessionMode, SessionStatus};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "test_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: SessionId,
    pub user_id: UserId,
    pub offline_session_id: Option<OfflineSessionId>,
    pub mode: SessionMode,
    pub status: SessionStatus,
    pub year: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub total_questions: i32,
    pub answered_count: i32,
    pub correct_count: i32,
    pub started_at: DateTimeUtc,
    pub submitted_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// The owner's `change_seq` of the transaction that last changed this row.
    pub change_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
