//! The attempt history: every accepted attempt, including ones that did not
//! replace the session's answer because a later answer was already there.
use sea_orm::entity::prelude::*;

use crate::ids::{
    AttemptId, ClientAttemptId, IdempotencyKey, PackageId, PayloadHash, QuestionId, SessionId,
    UserId,
};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attempts")]
pub struct Model {
    /// The `serverAttemptId` reported to the phone.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: AttemptId,
    pub user_id: UserId,
    pub session_id: SessionId,
    pub question_id: QuestionId,
    pub package_id: Option<PackageId>,
    pub client_attempt_id: ClientAttemptId,
    pub idempotency_key: IdempotencyKey,
    /// The v1 payload hash computed by the server (the payload's identity).
    pub payload_hash: PayloadHash,
    pub selected_option_index: i32,
    pub is_correct: bool,
    /// `answered_at` in UTC as the client sent it (not corrected).
    pub answered_at: DateTimeUtc,
    /// `answered_at` exactly as the client wrote it, UTC offset included.
    pub answered_at_raw: String,
    /// Estimated device clock skew (server receive time − `sentAt`) in ms, when known.
    pub clock_skew_ms: Option<i64>,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
