//! The sync data shapes shared by both surfaces.
use async_graphql::Enum;
use chrono::{DateTime, FixedOffset};
use entity::{
    AttemptId, ClientAttemptId, IdempotencyKey, OfflineSessionId, PackageId, QuestionId, SessionId,
};

/// One attempt as the phone sent it, parsed (types checked, nothing else).
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptInput {
    pub client_attempt_id: ClientAttemptId,
    pub idempotency_key: IdempotencyKey,
    pub offline_session_id: Option<OfflineSessionId>,
    pub session_id: Option<SessionId>,
    pub question_id: QuestionId,
    pub selected_option_index: i64,
    /// Keeps the client's UTC offset (the legacy hash needs it).
    pub answered_at: DateTime<FixedOffset>,
    pub payload_hash: String,
    pub package_id: Option<PackageId>,
}

/// An item of a batch: parsed, or why it could not be (REST only; GraphQL types are
/// checked by the schema).
#[derive(Clone, Debug, PartialEq)]
pub enum ParsedAttempt {
    Valid(AttemptInput),
    Invalid {
        client_attempt_id: Option<ClientAttemptId>,
        message: String,
    },
}

// Upper case on GraphQL, lower case on REST (serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum, serde::Serialize, utoipa::ToSchema)]
#[graphql(name = "SyncStatus")]
#[serde(rename_all = "lowercase")]
pub enum SyncStatus {
    Acked,
    Duplicate,
    Rejected,
}

impl SyncStatus {
    /// REST spelling.
    pub fn rest_name(self) -> &'static str {
        match self {
            SyncStatus::Acked => "acked",
            SyncStatus::Duplicate => "duplicate",
            SyncStatus::Rejected => "rejected",
        }
    }
}

// The same upper-case names on both surfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum, serde::Serialize, utoipa::ToSchema)]
#[graphql(name = "SyncErrorCode")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncErrorCode {
    InvalidAttempt,
    PayloadHashMismatch,
    IdempotencyKeyReused,
    SessionRequired,
    SessionNotFound,
    SessionClosed,
    QuestionNotFound,
    AccessDenied,
    InvalidOptionIndex,
    AnsweredAtInFuture,
    PackageMismatch,
}

impl SyncErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncErrorCode::InvalidAttempt => "INVALID_ATTEMPT",
            SyncErrorCode::PayloadHashMismatch => "PAYLOAD_HASH_MISMATCH",
            SyncErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            SyncErrorCode::SessionRequired => "SESSION_REQUIRED",
            SyncErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            SyncErrorCode::SessionClosed => "SESSION_CLOSED",
            SyncErrorCode::QuestionNotFound => "QUESTION_NOT_FOUND",
            SyncErrorCode::AccessDenied => "ACCESS_DENIED",
            SyncErrorCode::InvalidOptionIndex => "INVALID_OPTION_INDEX",
            SyncErrorCode::AnsweredAtInFuture => "ANSWERED_AT_IN_FUTURE",
            SyncErrorCode::PackageMismatch => "PACKAGE_MISMATCH",
        }
    }
}

/// The outcome of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptResult {
    pub client_attempt_id: Option<ClientAttemptId>,
    pub status: SyncStatus,
    pub server_attempt_id: Option<AttemptId>,
    pub server_session_id: Option<SessionId>,
    pub error_code: Option<SyncErrorCode>,
    pub message: Option<String>,
}

impl AttemptResult {
    pub fn rejected(
        client_attempt_id: Option<ClientAttemptId>,
        code: SyncErrorCode,
        message: impl Into<String>,
    ) -> Self {
        AttemptResult {
            client_attempt_id,
            status: SyncStatus::Rejected,
            server_attempt_id: None,
            server_session_id: None,
            error_code: Some(code),
            message: Some(message.into()),
        }
    }

    pub fn applied(
        client_attempt_id: ClientAttemptId,
        status: SyncStatus,
        attempt_id: AttemptId,
        session_id: SessionId,
    ) -> Self {
        AttemptResult {
            client_attempt_id: Some(client_attempt_id),
            status,
            server_attempt_id: Some(attempt_id),
            server_session_id: Some(session_id),
            error_code: None,
            message: None,
        }
    }
}
