//! `duplicateCount` / `rejectedCount` (and `lastSyncAt` of replays), added up off the write
//! path (docs/api.md §7.7): a replay makes no synchronous database write. Counts are kept in
//! process and flushed to `users` about once a second; `ackedCount` is not here, it is
//! counted in the transaction that applies the attempts.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::DatabaseConnection;

use super::store::{self, Counts};
use crate::{error::AppResult, sessions::SyncCounters};

/// How often pending counts are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    counts: Counts,
    last_sync_at: Option<DateTime<Utc>>,
}

/// Per-instance sync bookkeeping: the pending counters and the commit counter that the
/// round-trip budget test reads.
#[derive(Default)]
pub struct SyncState {
    pending: Mutex<HashMap<UserId, Pending>>,
    /// Held (write) while a flush moves counts from `pending` into the database, and
    /// (read) while `status` reads both, so a reader never sees a count twice or not at all.
    flushing: tokio::sync::RwLock<()>,
    flusher_started: AtomicBool,
    /// Transactions the sync path committed on this instance.
    pub commits: AtomicU64,
    /// Statements the background flush ran (not part of any request's budget).
    pub flush_statements: AtomicU64,
}

impl SyncState {
    /// Adds counts for `user`, starting the flusher on first use.
    pub fn add(
        self: &Arc<Self>,
        db: &DatabaseConnection,
        user: UserId,
        counts: Counts,
        at: DateTime<Utc>,
    ) {
        if counts == Counts::default() {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry(user).or_default();
            entry.counts += counts;
            entry.last_sync_at = entry.last_sync_at.max(Some(at));
        }
        if !self.flusher_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(flush_loop(Arc::downgrade(self), db.clone()));
        }
    }

    fn pending_of(&self, user: UserId) -> Pending {
        self.pending
            .lock()
            .ok()
            .and_then(|p| p.get(&user).copied())
            .unwrap_or_default()
    }

    /// Writes what is pending; counts that fail to write stay pending.
    pub async fn flush(&self, db: &DatabaseConnection) {
        let _guard = self.flushing.write().await;
        let batch: Vec<(UserId, Pending)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        for (user, counts) in batch {
            let at = counts.last_sync_at.unwrap_or_else(Utc::now);
            self.flush_statements.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = store::add_counters(db, user, counts.counts, at).await {
                tracing::warn!(error = %e, "could not write sync counters; kept for the next flush");
                if let Ok(mut pending) = self.pending.lock() {
                    let entry = pending.entry(user).or_default();
                    entry.counts += counts.counts;
                    entry.last_sync_at = entry.last_sync_at.max(counts.last_sync_at);
                }
            }
        }
    }

    /// `syncStatus`: the stored counters plus what this instance has not flushed yet.
    pub async fn status(&self, db: &DatabaseConnection, user: UserId) -> AppResult<SyncCounters> {
        let _guard = self.flushing.read().await;
        let mut counters = crate::sessions::sync_counters(db, user).await?;
        let pending = self.pending_of(user);
        counters += pending.counts;
        counters.last_sync_at = counters.last_sync_at.max(pending.last_sync_at);
        Ok(counters)
    }
}

async fn flush_loop(state: Weak<SyncState>, db: DatabaseConnection) {
    // The first flush a period after the first count, not at once.
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        state.flush(&db).await;
    }
}
