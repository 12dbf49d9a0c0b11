//! The current answer to one question in one session: unique (session_id, question_id).
use sea_orm::entity::prelude::*;

use crate::ids::{AnswerId, AttemptId, QuestionId, SessionId, UserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "session_answers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: AnswerId,
    pub session_id: SessionId,
    /// The session's owner, so that the pull feed reads one user's rows by index.
    pub user_id: UserId,
    pub question_id: QuestionId,
    /// The attempt whose answer this is (the latest by `answered_at`).
    pub attempt_id: AttemptId,
    pub selected_option_index: i32,
    pub is_correct: bool,
    pub answered_at: DateTimeUtc,
    /// How many times a later attempt replaced the answer.
    pub changed_count: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The owner's `change_seq` of the transaction that last changed this row.
    pub change_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
