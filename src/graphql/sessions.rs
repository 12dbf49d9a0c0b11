//! `mySessions`, `syncStatus` and `submitSession`.
use async_graphql::{Context, Object};
use uuid::Uuid;

use super::{
    require_user, state,
    types::{SyncStatusSummary, TestSession},
};
use crate::sessions;

#[derive(Default)]
pub struct SessionQuery;

#[Object]
impl SessionQuery {
    /// The caller's sessions, newest first.
    async fn my_sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TestSession>> {
        let user = require_user(ctx)?;
        let sessions = sessions::list_for_user(&state(ctx).db, user.id).await?;
        Ok(sessions.into_iter().map(TestSession::from).collect())
    }

    /// The caller's own sync counts.
    async fn sync_status(&self, ctx: &Context<'_>) -> async_graphql::Result<SyncStatusSummary> {
        let user = require_user(ctx)?;
        let app = state(ctx);
        let counters = app.sync.status(&app.db, user.id).await?;
        let clamp = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(SyncStatusSummary {
            last_sync_at: counters.last_sync_at,
            acked_count: clamp(counters.acked),
            duplicate_count: clamp(counters.duplicate),
            rejected_count: clamp(counters.rejected),
        })
    }
}

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Closes a session of the caller (SUBMITTED); a submitted one is returned unchanged.
    async fn submit_session(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<TestSession> {
        let user = require_user(ctx)?;
        let session =
            sessions::submit(&state(ctx).db, &state(ctx).sync_store, user.id, id.into()).await?;
        Ok(session.into())
    }
}
