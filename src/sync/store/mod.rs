//! The storage layer of sync: one operation per protocol step of a batch (find, open,
//! write), behind one interface ([`SyncStore`]) with one implementation per backend, chosen
//! once when the app is built ([`Store::for_backend`]) and never switched on per statement.
//!
//! - [`postgres::Postgres`]: one raw statement per operation (`sql/*.sql`, each readable and
//!   `EXPLAIN`able on its own), whose per-item values travel as array parameters
//!   (`= ANY($n)`, `unnest(...)`), so each statement has one shape whatever the batch size
//!   and its prepared statement is reused.
//! - [`sqlite::Sqlite`]: in-process (no network, no planner statistics to go stale) and
//!   without arrays: each operation is a few sea-orm statements.
//!
//! Both insert claims in key order, so concurrent batches take the idempotency rows in one
//! order. `tests/api/sync_store.rs` runs the same suite against both.
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

pub use postgres::{FIND_RECORDS_AND_FACTS_PG, FIND_RECORDS_PG, Postgres, WRITE_BATCH_PG};
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

/// What the applying transaction writes once the claims are decided and the answers
/// folded ([`SyncStore::write_batch`]). Any part may be empty.
#[derive(Clone, Debug, Default)]
pub struct BatchWrites {
    /// Claims given back: their items will not be applied (their session closed
    /// meanwhile), and a rejected item does not use up its key.
    pub released: Vec<IdempotencyKey>,
    /// The attempt history of the won claims, also added to the user's `ackedCount`
    /// (exact: in the applying transaction).
    pub attempts: Vec<AttemptRow>,
    /// The client's clock skew, kept with each attempt.
    pub skew_ms: Option<i64>,
    /// The changed current answers, one row per (session, question).
    pub answers: Vec<(AnswerKey, Answer)>,
    /// Score deltas of the sessions (`total_questions` follows `answered_count`).
    pub deltas: Vec<(SessionId, ScoreDelta)>,
}

/// The operations of sync, one implementation per backend: each is one protocol step
/// of a batch (PostgreSQL: one statement each), so a fresh batch costs the same few
/// round trips whatever its size.
///
/// Reads take any connection; the writes run inside the applying transaction, whose
/// first operation is [`SyncStore::open_batch`] (or [`SyncStore::bump_change_seq`]).
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

    /// The records of `keys`, the user's sessions named by id or by offline session id,
    /// and the questions' scoring data (never their text). Any list may be empty.
    async fn find_records_and_facts(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<Lookup, DbErr>;

    /// Bumps the user's change counter and returns its new value: the first write of
    /// every transaction that changes one of the user's sessions or answers. On PostgreSQL
    /// the UPDATE takes the user's row lock until commit, so the user's writers commit in
    /// counter order (see `docs/architecture.md`, the pull feed); on SQLite the write lock
    /// already serialises every writer. `None`: no such user.
    async fn bump_change_seq(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
    ) -> Result<Option<i64>, DbErr>;

    /// The first writes of the applying transaction, in this order:
    /// 1. the change counter bumped (`bump_change_seq`);
    /// 2. the sessions (mode TUTOR, ACTIVE) of offline sessions seen for the first time
    ///    created, or the one a concurrent request created found: the unique (user,
    ///    offline session) key decides;
    /// 3. the keys claimed in key order (`ON CONFLICT DO NOTHING`, so concurrent batches
    ///    take the rows in one order): a key another request holds is not ours to apply,
    ///    and on PostgreSQL the insert waits for that request to finish; a claim of a new
    ///    offline session names the session created or found, and one whose session was
    ///    not returned is not made;
    /// 4. the won claims' sessions locked (PostgreSQL, in id order; SQLite's one write lock
    ///    is already held) and their status read again: a `submitSession` may have
    ///    committed since the checks;
    /// 5. on PostgreSQL, the current answers of the won claims.
    ///
    /// `None`: no such user (nothing was written).
    async fn open_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
        now: DateTime<Utc>,
    ) -> Result<Option<Opening>, DbErr>;

    /// Current answers of the sessions × questions touched (a superset of the pairs).
    async fn current_answers(
        &self,
        txn: &impl ConnectionTrait,
        session_ids: &[SessionId],
        question_ids: &[QuestionId],
    ) -> Result<HashMap<AnswerKey, Answer>, DbErr>;

    /// The rest of the applying transaction's writes ([`BatchWrites`]), stamped with its
    /// change counter `seq` (PostgreSQL: one statement).
    async fn write_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        writes: &BatchWrites,
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr>;
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

    async fn bump_change_seq(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
    ) -> Result<Option<i64>, DbErr> {
        dispatch!(self, s => s.bump_change_seq(txn, user_id).await)
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

    async fn current_answers(
        &self,
        txn: &impl ConnectionTrait,
        session_ids: &[SessionId],
        question_ids: &[QuestionId],
    ) -> Result<HashMap<AnswerKey, Answer>, DbErr> {
        dispatch!(self, s => s.current_answers(txn, session_ids, question_ids).await)
    }

    async fn write_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        writes: &BatchWrites,
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        dispatch!(self, s => s.write_batch(txn, user_id, writes, now, seq).await)
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
