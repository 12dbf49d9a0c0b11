//! The attempt history: every accepted attempt, including ones that did not
//! replace the session's answer because a later answer was already there.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attempts")]
pub struct Model {
    /// The `serverAttemptId` reported to the phone.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub question_id: Uuid,
    pub package_id: Option<Uuid>,
    pub client_attempt_id: Uuid,
    pub idempotency_key: Uuid,
    /// The v1 payload hash computed by the server (the payload's identity).
    pub payload_hash: String,
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
