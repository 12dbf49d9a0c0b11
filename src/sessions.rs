//! Server sessions of a user: listing, submitting, and the caller's sync counters.
use chrono::{DateTime, Utc};
use entity::{SessionId, UserId};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, SqliteTransactionMode,
    TransactionOptions, TransactionTrait, sea_query::Expr,
};

use crate::{
    error::{AppError, AppResult},
    sync::store::{Store, SyncStore},
};
use entity::{SessionStatus, test_session, user};

/// The caller's sessions, newest first.
pub async fn list_for_user(
    db: &DatabaseConnection,
    user_id: UserId,
) -> AppResult<Vec<test_session::Model>> {
    Ok(test_session::Entity::find()
        .filter(test_session::Column::UserId.eq(user_id))
        .order_by_desc(test_session::Column::StartedAt)
        .order_by_asc(test_session::Column::Id)
        .all(db)
        .await?)
}

/// Closes a session of the caller. A submitted session is returned unchanged; an unknown
/// id or another user's session is `NOT_FOUND`.
///
/// The close is one guarded statement (`… WHERE status = 'ACTIVE'`), not a read then a
/// write: of concurrent submits exactly one changes the row, the others (and any later
/// submit) find it closed and return it as that one left it. On PostgreSQL the UPDATE
/// takes the row lock that sync's session re-check also takes, so an attempt is either
/// applied before the close or refused `SESSION_CLOSED` after it.
///
/// The close is a change for the pull feed: it runs in a transaction that bumps the
/// user's change counter first (before the session's row lock, in the order sync takes
/// them) and stamps the session with it.
pub async fn submit(
    db: &DatabaseConnection,
    store: &Store,
    user_id: UserId,
    id: SessionId,
) -> AppResult<test_session::Model> {
    let now = Utc::now();
    let txn = db
        .begin_with_options(TransactionOptions {
            isolation_level: None,
            access_mode: None,
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        })
        .await?;
    let Some(seq) = store.bump_change_seq(&txn, user_id).await? else {
        return Err(AppError::NotFound(format!("no session {id}")));
    };
    test_session::Entity::update_many()
        .col_expr(
            test_session::Column::Status,
            Expr::value(SessionStatus::Submitted),
        )
        .col_expr(test_session::Column::SubmittedAt, Expr::value(now))
        .col_expr(test_session::Column::UpdatedAt, Expr::value(now))
        .col_expr(test_session::Column::ChangeSeq, Expr::value(seq))
        .filter(test_session::Column::Id.eq(id))
        .filter(test_session::Column::UserId.eq(user_id))
        .filter(test_session::Column::Status.eq(SessionStatus::Active))
        .exec(&txn)
        .await?;
    let session = test_session::Entity::find_by_id(id)
        .filter(test_session::Column::UserId.eq(user_id))
        .one(&txn)
        .await?;
    txn.commit().await?;
    session.ok_or_else(|| AppError::NotFound(format!("no session {id}")))
}

/// The caller's own sync counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    pub last_sync_at: Option<DateTime<Utc>>,
    pub acked: i64,
    pub duplicate: i64,
    pub rejected: i64,
}

pub async fn sync_counters(db: &DatabaseConnection, user_id: UserId) -> AppResult<SyncCounters> {
    Ok(user::Entity::find_by_id(user_id)
        .one(db)
        .await?
        .map(|u| SyncCounters {
            last_sync_at: u.last_sync_at,
            acked: u.acked_count,
            duplicate: u.duplicate_count,
            rejected: u.rejected_count,
        })
        .unwrap_or_default())
}
