//! GraphQL object types shared by several resolvers (sessions, sync).
use async_graphql::SimpleObject;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::sync::{AttemptResult, SyncErrorCode, SyncStatus};

pub use entity::{SessionMode, SessionStatus};

#[derive(Clone, Debug, SimpleObject)]
pub struct TestSession {
    pub id: Uuid,
    pub offline_session_id: Option<Uuid>,
    pub mode: SessionMode,
    pub status: SessionStatus,
    pub year: i32,
    pub block_id: Option<i32>,
    pub theme_id: Option<i32>,
    pub total_questions: i32,
    pub answered_count: i32,
    pub correct_count: i32,
    pub started_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
}

impl From<entity::test_session::Model> for TestSession {
    fn from(s: entity::test_session::Model) -> Self {
        TestSession {
            id: s.id.into(),
            offline_session_id: s.offline_session_id.map(Uuid::from),
            mode: s.mode,
            status: s.status,
            year: s.year,
            block_id: s.block_id,
            theme_id: s.theme_id,
            total_questions: s.total_questions,
            answered_count: s.answered_count,
            correct_count: s.correct_count,
            started_at: s.started_at,
            submitted_at: s.submitted_at,
        }
    }
}

#[derive(Clone, Debug, SimpleObject)]
pub struct SyncStatusSummary {
    pub last_sync_at: Option<DateTime<Utc>>,
    pub acked_count: i32,
    pub duplicate_count: i32,
    pub rejected_count: i32,
}

#[derive(Clone, Debug, SimpleObject)]
pub struct SyncAttemptResult {
    pub client_attempt_id: Uuid,
    pub status: SyncStatus,
    pub server_attempt_id: Option<Uuid>,
    pub server_session_id: Option<Uuid>,
    pub error_code: Option<SyncErrorCode>,
    pub message: Option<String>,
}

impl From<AttemptResult> for SyncAttemptResult {
    fn from(r: AttemptResult) -> Self {
        SyncAttemptResult {
            // GraphQL inputs always carry a parsed client id.
            client_attempt_id: r.client_attempt_id.map_or_else(Uuid::nil, Uuid::from),
            status: r.status,
            server_attempt_id: r.server_attempt_id.map(Uuid::from),
            server_session_id: r.server_session_id.map(Uuid::from),
            error_code: r.error_code,
            message: r.message,
        }
    }
}

#[derive(Clone, Debug, SimpleObject)]
pub struct SyncAttemptsPayload {
    pub results: Vec<SyncAttemptResult>,
}
