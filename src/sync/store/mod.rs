//! The storage layer of sync: every read and write is one set-wise statement, behind one
//! interface ([`SyncStore`]) with one implementation per backend, chosen once when the app
//! is built ([`Store::for_backend`]) and never switched on per statement.
//!
//! - [`postgres::Postgres`]: raw statements (`sql/*.sql`) whose per-item values travel as
//!   array parameters (`= ANY($n)`, `unnest(...)`), so each statement has one shape
//!   whatever the batch size and its prepared statement is reused.
//! - [`sqlite::Sqlite`]: in-process (no network, no planner statistics to go stale) and
//!   without arrays: sea-orm statements.
//!
//! Both sort claims the same way (by key, [`by_key`]), so concurrent batches take the
//! idempotency rows in one order. `tests/api/sync_store.rs` runs the same suite against
//! both.
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, Value,
    sea_query::{ArrayType, Expr, ExprTrait},
};
use uuid::Uuid;

use crate::replication::Commit;

use super::rules::{Answer, AnswerKey, Record, Scope, ScoreDelta, SessionFact, SessionState};
use entity::{
    AttemptId, ClientAttemptId, IdempotencyKey, OfflineSessionId, PackageId, PayloadHash,
    QuestionId, SessionId, UserId, user,
};

pub mod postgres;
pub mod sqlite;

pub use postgres::{FIND_RECORDS_AND_FACTS_PG, FIND_RECORDS_PG, Postgres};
pub use sqlite::Sqlite;

/// A `uuid[]` parameter: typed ids become bare UUIDs here, at the raw-SQL boundary.
pub fn uuids<T: Into<Uuid>>(items: impl IntoIterator<Item = T>) -> Value {
    array(
        ArrayType::Uuid,
        items.into_iter().map(|u| Value::Uuid(Some(u.into()))),
    )
}

pub(crate) fn array(kind: ArrayType, items: impl Iterator<Item = Value>) -> Value {
    Value::Array(kind, Some(Box::new(items.collect())))
}

/// The claims in the order both stores insert them: by key.
pub fn by_key(claims: &[Claim]) -> Vec<&Claim> {
    let mut sorted: Vec<&Claim> = claims.iter().collect();
    sorted.sort_by_key(|c| c.key);
    sorted
}

/// A question's scoring data as stored now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuestionRow {
    pub id: QuestionId,
    pub option_count: usize,
    pub correct_index: i32,
    pub scope: Scope,
    pub published: bool,
}

/// The number of options of a stored `options` value (as `questions::options_of` reads
/// it: anything but an array of strings holds none).
pub(crate) fn option_count(options: serde_json::Value) -> usize {
    serde_json::from_value::<Vec<String>>(options)
        .map(|o| o.len())
        .unwrap_or_default()
}

/// A session of a batch's items, with its offline session id if it has one.
pub type SessionRow = (SessionFact, Option<OfflineSessionId>);

/// A server session to create for an offline session seen for the first time.
pub struct NewSession {
    pub id: SessionId,
    pub offline_session_id: OfflineSessionId,
    pub scope: Scope,
}

/// One idempotency claim.
#[derive(Clone, Debug)]
pub struct Claim {
    pub key: IdempotencyKey,
    pub v1_hash: PayloadHash,
    pub attempt_id: AttemptId,
    pub session_id: SessionId,
}

/// The session a claim names: one the checks found, or the one created for an offline
/// session seen for the first time (in the same statement on PostgreSQL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimSession {
    Known(SessionId),
    New(OfflineSessionId),
}

/// One idempotency claim whose session may still have to be created.
#[derive(Clone, Debug)]
pub struct OpeningClaim {
    pub key: IdempotencyKey,
    pub v1_hash: PayloadHash,
    pub attempt_id: AttemptId,
    pub session: ClaimSession,
    /// The question the item answers: its current answer in the session is read with the
    /// claim (PostgreSQL).
    pub question_id: QuestionId,
}

/// What the first writes of the applying transaction decided ([`SyncStore::open_batch`]).
#[derive(Debug, Default)]
pub struct Opening {
    /// The transaction's change counter.
    pub seq: i64,
    /// The server session of each offline session created (or found created).
    pub created: HashMap<OfflineSessionId, SessionFact>,
    /// The keys this transaction won.
    pub won: HashSet<IdempotencyKey>,
    /// The won claims' sessions, locked, and their status read under the lock.
    pub states: HashMap<SessionId, SessionState>,
    /// The current answers of the won claims' (session, question) pairs, when they were
    /// read after every earlier writer of the user had committed; `None`: read them now
    /// ([`SyncStore::current_answers`]).
    pub answers: Option<HashMap<AnswerKey, Answer>>,
}

/// Idempotency records of a batch's keys, and the sessions and questions its items name.
#[derive(Debug, Default)]
pub struct Lookup {
    pub records: HashMap<IdempotencyKey, Record>,
    pub sessions: Vec<SessionRow>,
    pub questions: Vec<QuestionRow>,
}

/// One row of the attempt history.
#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub attempt_id: AttemptId,
    pub key: IdempotencyKey,
    pub v1_hash: PayloadHash,
    pub session_id: SessionId,
    pub question_id: QuestionId,
    pub package_id: Option<PackageId>,
    pub client_attempt_id: ClientAttemptId,
    pub selected_option_index: i32,
    pub is_correct: bool,
    /// As the client sent it (not corrected), in UTC, to the microsecond.
    pub answered_at: DateTime<Utc>,
    /// The same instant in RFC 3339 with the client's UTC offset, to the microsecond (what
    /// both databases and the legacy hash can hold).
    pub answered_at_raw: String,
}

/// The statements of sync, one implementation per backend.
///
/// Reads take any connection; the writes run inside the applying transaction, whose
/// first statement is [`SyncStore::bump_change_seq`].
// Callers use the concrete stores (never `impl SyncStore`), so the futures' auto traits
// are known where they are awaited.
#[allow(async_fn_in_trait)]
pub trait SyncStore {
    /// Idempotency records of `keys` for `user`: O(batch) whatever the user's history.
    async fn find_records(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, Record>, DbErr>;

    /// The user's sessions named by id or by offline session id.
    async fn find_sessions(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
    ) -> Result<Vec<SessionRow>, DbErr>;

    /// The questions' scoring data (never their text).
    async fn find_questions(
        &self,
        db: &impl ConnectionTrait,
        ids: &[QuestionId],
    ) -> Result<Vec<QuestionRow>, DbErr>;

    /// `find_sessions` and `find_questions` together (PostgreSQL: one statement).
    async fn find_sessions_and_questions(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<(Vec<SessionRow>, Vec<QuestionRow>), DbErr> {
        let sessions = self.find_sessions(db, user_id, ids, offline_ids).await?;
        let questions = self.find_questions(db, question_ids).await?;
        Ok((sessions, questions))
    }

    /// `find_records` and `find_sessions_and_questions` together (PostgreSQL: one
    /// statement).
    async fn find_records_and_facts(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<Lookup, DbErr> {
        let records = self.find_records(db, user_id, keys).await?;
        let (sessions, questions) = self
            .find_sessions_and_questions(db, user_id, ids, offline_ids, question_ids)
            .await?;
        Ok(Lookup {
            records,
            sessions,
            questions,
        })
    }

    /// Bumps the user's change counter and returns its new value: the first statement of
    /// every transaction that changes one of the user's sessions or answers. On PostgreSQL
    /// the UPDATE takes the user's row lock until commit, so the user's writers commit in
    /// counter order (see `docs/architecture.md`, the pull feed); on SQLite the write lock
    /// already serialises every writer. `None`: no such user.
    async fn bump_change_seq(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
    ) -> Result<Option<i64>, DbErr>;

    /// Creates the sessions (mode TUTOR, ACTIVE) of first-seen offline sessions, or finds
    /// the one a concurrent request created: the unique (user, offline session) key
    /// decides. Returns each offline session's server session (the winner's row).
    async fn create_offline_sessions(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<HashMap<OfflineSessionId, SessionFact>, DbErr>;

    /// Claims the keys (`ON CONFLICT DO NOTHING`): returns those this transaction won. A
    /// key another request holds is not ours to apply; on PostgreSQL the insert waits for
    /// that request to finish, so a loser then reads a committed record. Claims go in key
    /// order ([`by_key`]), so concurrent batches take the row locks in one order.
    async fn claim(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        claims: &[Claim],
        now: DateTime<Utc>,
    ) -> Result<HashSet<IdempotencyKey>, DbErr>;

    /// `claim`, then `lock_sessions` of the won claims' sessions (PostgreSQL: one
    /// statement, the claims inserted before the sessions are locked): the keys won and
    /// the status of their sessions read under the lock.
    async fn claim_and_lock(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        claims: &[Claim],
        now: DateTime<Utc>,
    ) -> Result<(HashSet<IdempotencyKey>, HashMap<SessionId, SessionState>), DbErr> {
        let won = self.claim(txn, user_id, claims, now).await?;
        let mut ids: Vec<SessionId> = claims
            .iter()
            .filter(|c| won.contains(&c.key))
            .map(|c| c.session_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let states = self.lock_sessions(txn, &ids).await?;
        Ok((won, states))
    }

    /// The first writes of the applying transaction, in this order: `bump_change_seq`,
    /// `create_offline_sessions`, `claim_and_lock` (the claims of new offline sessions
    /// name the session created or found), and on PostgreSQL the current answers of the
    /// won claims, all in one statement. `None`: no such user (nothing was written). A
    /// claim whose new session was not returned is not made.
    async fn open_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
        now: DateTime<Utc>,
    ) -> Result<Option<Opening>, DbErr> {
        open_in_steps(self, txn, user_id, sessions, claims, now).await
    }

    /// Gives back claims of items that will not be applied (their session closed
    /// meanwhile): a rejected item does not use up its key.
    async fn release(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<(), DbErr>;

    /// Locks the sessions (PostgreSQL, in id order; on SQLite the transaction already
    /// holds the one write lock) so that their answers stay current until commit, and
    /// reads their status again: a `submitSession` may have committed since the checks.
    async fn lock_sessions(
        &self,
        txn: &impl ConnectionTrait,
        ids: &[SessionId],
    ) -> Result<HashMap<SessionId, SessionState>, DbErr>;

    /// Current answers of the sessions × questions touched (a superset of the pairs).
    async fn current_answers(
        &self,
        txn: &impl ConnectionTrait,
        session_ids: &[SessionId],
        question_ids: &[QuestionId],
    ) -> Result<HashMap<AnswerKey, Answer>, DbErr>;

    /// Appends the attempt history of the won claims and adds them to the user's
    /// `ackedCount` (exact: in the applying transaction).
    async fn insert_attempts(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        rows: &[AttemptRow],
        skew_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr>;

    /// `release` then `insert_attempts` (PostgreSQL: one statement).
    async fn release_and_insert_attempts(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        released: &[IdempotencyKey],
        rows: &[AttemptRow],
        skew_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        self.release(txn, user_id, released).await?;
        self.insert_attempts(txn, user_id, rows, skew_ms, now).await
    }

    /// Writes the changed current answers, one row per (session, question), stamped with
    /// the transaction's change counter.
    async fn write_answers(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        answers: &[(AnswerKey, Answer)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr>;

    /// Adds the score deltas to the sessions (`total_questions` follows
    /// `answered_count`), stamped with the transaction's change counter.
    async fn add_scores(
        &self,
        txn: &impl ConnectionTrait,
        deltas: &[(SessionId, ScoreDelta)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr>;

    /// `write_answers` then `add_scores` (PostgreSQL: one statement).
    async fn write_answers_and_scores(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        answers: &[(AnswerKey, Answer)],
        deltas: &[(SessionId, ScoreDelta)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        self.write_answers(txn, user_id, answers, now, seq).await?;
        self.add_scores(txn, deltas, now, seq).await
    }
}

/// [`SyncStore::open_batch`] one method at a time; the current answers are left to the
/// caller.
pub(crate) async fn open_in_steps<S: SyncStore + ?Sized>(
    store: &S,
    txn: &impl ConnectionTrait,
    user_id: UserId,
    sessions: &[NewSession],
    claims: &[OpeningClaim],
    now: DateTime<Utc>,
) -> Result<Option<Opening>, DbErr> {
    let Some(seq) = store.bump_change_seq(txn, user_id).await? else {
        return Ok(None);
    };
    let created = store
        .create_offline_sessions(txn, user_id, sessions, now, seq)
        .await?;
    let claims: Vec<Claim> = claims
        .iter()
        .filter_map(|c| {
            let session_id = match c.session {
                ClaimSession::Known(id) => id,
                ClaimSession::New(offline) => created.get(&offline)?.id,
            };
            Some(Claim {
                key: c.key,
                v1_hash: c.v1_hash.clone(),
                attempt_id: c.attempt_id,
                session_id,
            })
        })
        .collect();
    let (won, states) = store.claim_and_lock(txn, user_id, &claims, now).await?;
    Ok(Some(Opening {
        seq,
        created,
        won,
        states,
        answers: None,
    }))
}

/// The sync store of the app's database, chosen once at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Postgres(Postgres),
    Sqlite(Sqlite),
}

impl Store {
    /// The store of a backend. examsync runs on PostgreSQL and SQLite only; anything
    /// else is refused at connect, before this.
    pub fn for_backend(backend: DbBackend) -> Store {
        match backend {
            DbBackend::Postgres => Store::Postgres(Postgres),
            _ => Store::Sqlite(Sqlite),
        }
    }
}

/// Each method goes to the chosen store.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

impl SyncStore for Store {
    async fn find_records(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, Record>, DbErr> {
        dispatch!(self, s => s.find_records(db, user_id, keys).await)
    }

    async fn find_sessions(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
    ) -> Result<Vec<SessionRow>, DbErr> {
        dispatch!(self, s => s.find_sessions(db, user_id, ids, offline_ids).await)
    }

    async fn find_questions(
        &self,
        db: &impl ConnectionTrait,
        ids: &[QuestionId],
    ) -> Result<Vec<QuestionRow>, DbErr> {
        dispatch!(self, s => s.find_questions(db, ids).await)
    }

    async fn find_sessions_and_questions(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<(Vec<SessionRow>, Vec<QuestionRow>), DbErr> {
        dispatch!(self, s => s
            .find_sessions_and_questions(db, user_id, ids, offline_ids, question_ids)
            .await)
    }

    async fn find_records_and_facts(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<Lookup, DbErr> {
        dispatch!(self, s => s
            .find_records_and_facts(db, user_id, keys, ids, offline_ids, question_ids)
            .await)
    }

    async fn open_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
        now: DateTime<Utc>,
    ) -> Result<Option<Opening>, DbErr> {
        dispatch!(self, s => s.open_batch(txn, user_id, sessions, claims, now).await)
    }

    async fn release_and_insert_attempts(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        released: &[IdempotencyKey],
        rows: &[AttemptRow],
        skew_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s
            .release_and_insert_attempts(txn, user_id, released, rows, skew_ms, now)
            .await)
    }

    async fn bump_change_seq(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
    ) -> Result<Option<i64>, DbErr> {
        dispatch!(self, s => s.bump_change_seq(txn, user_id).await)
    }

    async fn create_offline_sessions(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<HashMap<OfflineSessionId, SessionFact>, DbErr> {
        dispatch!(self, s => s.create_offline_sessions(txn, user_id, sessions, now, seq).await)
    }

    async fn claim(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        claims: &[Claim],
        now: DateTime<Utc>,
    ) -> Result<HashSet<IdempotencyKey>, DbErr> {
        dispatch!(self, s => s.claim(txn, user_id, claims, now).await)
    }

    async fn claim_and_lock(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        claims: &[Claim],
        now: DateTime<Utc>,
    ) -> Result<(HashSet<IdempotencyKey>, HashMap<SessionId, SessionState>), DbErr> {
        dispatch!(self, s => s.claim_and_lock(txn, user_id, claims, now).await)
    }

    async fn release(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s.release(txn, user_id, keys).await)
    }

    async fn lock_sessions(
        &self,
        txn: &impl ConnectionTrait,
        ids: &[SessionId],
    ) -> Result<HashMap<SessionId, SessionState>, DbErr> {
        dispatch!(self, s => s.lock_sessions(txn, ids).await)
    }

    async fn current_answers(
        &self,
        txn: &impl ConnectionTrait,
        session_ids: &[SessionId],
        question_ids: &[QuestionId],
    ) -> Result<HashMap<AnswerKey, Answer>, DbErr> {
        dispatch!(self, s => s.current_answers(txn, session_ids, question_ids).await)
    }

    async fn insert_attempts(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        rows: &[AttemptRow],
        skew_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s.insert_attempts(txn, user_id, rows, skew_ms, now).await)
    }

    async fn write_answers(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        answers: &[(AnswerKey, Answer)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s.write_answers(txn, user_id, answers, now, seq).await)
    }

    async fn add_scores(
        &self,
        txn: &impl ConnectionTrait,
        deltas: &[(SessionId, ScoreDelta)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s.add_scores(txn, deltas, now, seq).await)
    }

    async fn write_answers_and_scores(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        answers: &[(AnswerKey, Answer)],
        deltas: &[(SessionId, ScoreDelta)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s
            .write_answers_and_scores(txn, user_id, answers, deltas, now, seq)
            .await)
    }
}

/// Which of these (not PUBLISHED) questions some published package still holds: indexed
/// reads of the question → package index, whatever the size of the bank.
pub async fn in_published_packages(
    db: &impl ConnectionTrait,
    ids: &[QuestionId],
) -> Result<HashSet<QuestionId>, DbErr> {
    crate::access::index::in_published_packages(db, ids).await
}

/// Sync counters of a user: `acked` is added in the applying transaction, the others
/// off the write path (`Tally`). One sea-orm statement, the same on both backends.
pub async fn add_counters(
    db: &impl ConnectionTrait,
    user_id: UserId,
    counts: Counts,
    last_sync_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    user::Entity::update_many()
        .col_expr(
            user::Column::AckedCount,
            Expr::col(user::Column::AckedCount).add(counts.acked),
        )
        .col_expr(
            user::Column::DuplicateCount,
            Expr::col(user::Column::DuplicateCount).add(counts.duplicate),
        )
        .col_expr(
            user::Column::RejectedCount,
            Expr::col(user::Column::RejectedCount).add(counts.rejected),
        )
        .col_expr(
            user::Column::LastSyncAt,
            // Never moves backwards when flushes and transactions interleave.
            Expr::expr(
                Expr::case(
                    Expr::col(user::Column::LastSyncAt)
                        .is_null()
                        .or(Expr::col(user::Column::LastSyncAt).lt(last_sync_at)),
                    Expr::val(last_sync_at),
                )
                .finally(Expr::col(user::Column::LastSyncAt)),
            ),
        )
        .filter(user::Column::Id.eq(user_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Item counts for `syncStatus`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub acked: i64,
    pub duplicate: i64,
    pub rejected: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.acked += other.acked;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
    }
}

/// The stored counters plus counts not written yet.
impl std::ops::AddAssign<Counts> for crate::sessions::SyncCounters {
    fn add_assign(&mut self, other: Counts) {
        self.acked += other.acked;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
    }
}

/// Makes every commit the server has already shown us as durable as a new commit: one
/// transaction that writes WAL (a transactional logical message: no table, no lock, any
/// role may), so its commit waits for the synchronous standby, which then holds
/// everything before it. (A transaction that only takes an xid writes no WAL before its
/// commit record, and PostgreSQL does not wait for a standby then.) A row committed by a
/// request whose own replication wait was cancelled is visible on the primary before any
/// standby has it; a `DUPLICATE` read from it is only as durable as the row until this
/// barrier returns confirmed. PostgreSQL with `synchronous_standby_names` only.
pub async fn durability_barrier(db: &impl ConnectionTrait) -> Result<Commit, DbErr> {
    let (result, commit) = crate::replication::watch_commit(db.execute_unprepared(
        "SELECT pg_logical_emit_message(true, 'examsync', 'durability barrier')",
    ))
    .await;
    result?;
    Ok(commit)
}
