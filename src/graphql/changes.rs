//! `syncChanges`: the pull feed (`sync::changes`), camelCase.
use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{require_user, state, types::TestSession};
use crate::sync::changes::{self, Page, PulledAnswer};

/// The current answer to one question in one session.
#[derive(Clone, Debug, SimpleObject)]
pub struct SessionAnswer {
    /// `<sessionId>:<questionId>`: one answer per question per session.
    pub id: ID,
    pub session_id: Uuid,
    pub question_id: Uuid,
    pub package_id: Option<Uuid>,
    pub selected_option_index: i32,
    /// The corrected time the server ordered by.
    pub answered_at: DateTime<Utc>,
    pub is_correct: bool,
    pub changed_count: i32,
    pub server_attempt_id: Uuid,
}

/// One page of the caller's changes.
#[derive(Clone, Debug, SimpleObject)]
pub struct SyncChanges {
    pub sessions: Vec<TestSession>,
    pub answers: Vec<SessionAnswer>,
    /// Opaque: pass it as `since` for the next page, and after the next sync.
    pub cursor: String,
    /// More changes are ready now: ask again with `cursor`.
    pub has_more: bool,
}

impl From<PulledAnswer> for SessionAnswer {
    fn from(p: PulledAnswer) -> Self {
        let a = p.answer;
        SessionAnswer {
            id: ID(format!("{}:{}", a.session_id, a.question_id)),
            session_id: a.session_id.into(),
            question_id: a.question_id.into(),
            package_id: p.package_id.map(Uuid::from),
            selected_option_index: a.selected_option_index,
            answered_at: a.answered_at,
            is_correct: a.is_correct,
            changed_count: a.changed_count,
            server_attempt_id: a.attempt_id.into(),
        }
    }
}

impl From<Page> for SyncChanges {
    fn from(page: Page) -> Self {
        SyncChanges {
            sessions: page.sessions.into_iter().map(Into::into).collect(),
            answers: page.answers.into_iter().map(Into::into).collect(),
            cursor: page.cursor,
            has_more: page.has_more,
        }
    }
}

#[derive(Default)]
pub struct ChangesQuery;

#[Object]
impl ChangesQuery {
    /// The caller's sessions and current answers changed after `since` (absent: from the
    /// beginning), at most `first` items (1 to 1000); while `hasMore`, ask again with
    /// `cursor`.
    async fn sync_changes(
        &self,
        ctx: &Context<'_>,
        since: Option<String>,
        #[graphql(default = 500)] first: Option<i32>,
    ) -> async_graphql::Result<SyncChanges> {
        let user = require_user(ctx)?;
        // An explicit null is the default page size, as an absent argument is.
        let first = first.map(i64::from);
        let page = changes::pull(state(ctx), user.id, since.as_deref(), first).await?;
        Ok(page.into())
    }
}
