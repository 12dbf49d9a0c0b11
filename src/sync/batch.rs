//! Processing a sync batch with a small, fixed number of round trips.
//!
//! The path of a batch (see `docs/architecture.md`):
//! 1. per item, pure checks: parses, `payload_hash` (v1 or legacy);
//! 2. idempotency records of all keys: Redis `MGET`, misses from the database → `DUPLICATE`
//!    or `IDEMPOTENCY_KEY_REUSED`;
//! 3. one query each for sessions, questions and (cached, immutable) package snapshots;
//!    the remaining checks in SPEC order;
//! 4. offline sessions seen for the first time are created (`ON CONFLICT DO NOTHING` on
//!    the (user, offline session) key, then read back: the database decides the winner);
//! 5. one transaction: idempotency records inserted first with `ON CONFLICT DO NOTHING
//!    RETURNING` (a key another request committed meanwhile is not ours to apply), session
//!    rows locked, current answers read, then attempts, answers and session counters
//!    written set-wise;
//! 6. after commit: idempotency records cached in Redis (failures only counted).
//!
//! An idempotency key repeated inside one batch is handled in a later "round", so that it
//! gets exactly what a resend after the earlier item would get. If the transaction fails
//! for a reason other than a transient fault, items are retried one by one so that one
//! bad item never blocks another.
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, DurationRound, FixedOffset, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait, TryInsertResult,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use serde_json::json;
use uuid::Uuid;

use super::{
    AttemptInput, AttemptResult, MAX_BATCH, ParsedAttempt, SyncErrorCode, SyncStatus, payload_hash,
};
use crate::{
    app::App,
    auth::AuthUser,
    error::{AppError, AppResult, ErrorCode, is_transient},
    metrics,
    packages::ScoringKey,
    questions::options_of,
};
use entity::{
    SessionMode, SessionStatus, attempt, idempotency_record, question, session_answer,
    test_session, user,
};

/// How far ahead of the server clock an answer may be (after skew correction).
const FUTURE_TOLERANCE: Duration = Duration::minutes(5);
/// Idempotency records live in Redis this long; the database keeps them for good.
const IDEMPOTENCY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Rows per `INSERT INTO attempts` statement. sqlx 0.9.0 leaves Nagle's algorithm on
/// (no `TCP_NODELAY`, transact-rs/sqlx#4335): a statement whose bound parameters outgrow
/// the socket's initial send buffer waits ~40 ms for a delayed ACK. 100 attempts rows are
/// ~30 kB and paid that on every batch; 50 rows (~15 kB) do not (docs/benchmarks.md).
const ATTEMPT_INSERT_CHUNK: usize = 50;

/// Applies a batch for `user`. Per-item outcomes in request order; a transient fault fails
/// the whole request (`AppError::Unavailable`), never an item.
pub async fn process_batch(
    app: &App,
    user: AuthUser,
    sent_at: Option<DateTime<FixedOffset>>,
    items: Vec<ParsedAttempt>,
) -> AppResult<Vec<AttemptResult>> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(AppError::BadRequest {
            code: ErrorCode::ValidationLimitExceeded,
            message: format!(
                "a batch holds 1 to {MAX_BATCH} attempts; this one has {}",
                items.len()
            ),
            details: Some(json!({"min": 1, "max": MAX_BATCH, "received": items.len()})),
        });
    }
    let received_at = Utc::now();
    let skew = sent_at.map(|sent| received_at - sent.with_timezone(&Utc));
    metrics::sync_batch(items.len());
    if let Some(skew) = skew {
        metrics::sync_clock_skew(skew.num_milliseconds() as f64 / 1000.0);
    }

    let count = items.len();
    let mut results: Vec<Option<AttemptResult>> = vec![None; count];
    let mut rounds: Vec<Vec<Pending>> = Vec::new();
    let mut occurrences: HashMap<Uuid, usize> = HashMap::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            ParsedAttempt::Invalid {
                client_attempt_id,
                message,
            } => {
                results[index] = Some(AttemptResult::rejected(
                    client_attempt_id,
                    SyncErrorCode::InvalidAttempt,
                    message,
                ));
            }
            ParsedAttempt::Valid(input) => {
                match payload_hash::verify(
                    &input.payload_hash,
                    input.question_id,
                    input.selected_option_index,
                    &input.answered_at,
                ) {
                    None => {
                        results[index] = Some(AttemptResult::rejected(
                            Some(input.client_attempt_id),
                            SyncErrorCode::PayloadHashMismatch,
                            "payload_hash matches neither the v1 nor the legacy payload hash",
                        ));
                    }
                    Some(v1_hash) => {
                        let round = occurrences.entry(input.idempotency_key).or_insert(0);
                        if rounds.len() <= *round {
                            rounds.push(Vec::new());
                        }
                        rounds[*round].push(Pending {
                            index,
                            input,
                            v1_hash,
                        });
                        *round += 1;
                    }
                }
            }
        }
    }

    let batch = Batch {
        app,
        user,
        received_at,
        skew,
    };
    for round in rounds {
        for (index, result) in batch.process_round(round).await? {
            results[index] = Some(result);
        }
    }

    let results: Vec<AttemptResult> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                AttemptResult::rejected(None, SyncErrorCode::InvalidAttempt, "not processed")
            })
        })
        .collect();
    batch.record_outcomes(&results).await;
    Ok(results)
}

/// An item that passed the pure checks.
struct Pending {
    index: usize,
    input: AttemptInput,
    v1_hash: String,
}

/// An item that passed every check and is ready to be written.
#[derive(Clone)]
struct Accepted {
    index: usize,
    input: AttemptInput,
    v1_hash: String,
    session: SessionRef,
    is_correct: bool,
    /// `answered_at` corrected by the device's clock skew, in UTC (microseconds).
    effective_at: DateTime<Utc>,
    /// Year/block/theme of the question, for a session created by this item.
    question_scope: (i32, Option<i32>, Option<i32>),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum SessionRef {
    Existing(Uuid),
    NewOffline(Uuid),
}

/// What a write transaction did.
enum Applied {
    /// Committed: the attempt id of each idempotency key this transaction won.
    Committed(HashMap<Uuid, Uuid>),
    /// Nothing written: these sessions were closed after the checks.
    SessionsClosed(HashSet<Uuid>),
}

fn session_closed(item: &Accepted) -> (usize, AttemptResult) {
    (
        item.index,
        AttemptResult::rejected(
            Some(item.input.client_attempt_id),
            SyncErrorCode::SessionClosed,
            "the session is no longer active",
        ),
    )
}

/// A stored idempotency record (database or cache).
#[derive(Clone, Debug)]
struct Record {
    payload_hash: String,
    attempt_id: Uuid,
    session_id: Uuid,
}

impl Record {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}",
            self.payload_hash, self.attempt_id, self.session_id
        )
    }

    fn decode(text: &str) -> Option<Record> {
        let mut parts = text.split('|');
        let record = Record {
            payload_hash: parts.next()?.to_owned(),
            attempt_id: Uuid::parse_str(parts.next()?).ok()?,
            session_id: Uuid::parse_str(parts.next()?).ok()?,
        };
        Some(record)
    }

    /// What a resend of an item with this key gets.
    fn outcome_for(&self, pending: &Pending) -> AttemptResult {
        if self.payload_hash == pending.v1_hash {
            AttemptResult::applied(
                pending.input.client_attempt_id,
                SyncStatus::Duplicate,
                self.attempt_id,
                self.session_id,
            )
        } else {
            AttemptResult::rejected(
                Some(pending.input.client_attempt_id),
                SyncErrorCode::IdempotencyKeyReused,
                "this idempotency_key was already used for a different payload",
            )
        }
    }
}

struct Batch<'a> {
    app: &'a App,
    user: AuthUser,
    received_at: DateTime<Utc>,
    skew: Option<Duration>,
}

impl Batch<'_> {
    fn db(&self) -> &DatabaseConnection {
        &self.app.db
    }

    async fn process_round(&self, round: Vec<Pending>) -> AppResult<Vec<(usize, AttemptResult)>> {
        let mut out = Vec::with_capacity(round.len());

        // Idempotency: a known key decides the outcome before anything else is read.
        let keys: Vec<Uuid> = round.iter().map(|p| p.input.idempotency_key).collect();
        let records = self.lookup_records(&keys).await?;
        let mut fresh = Vec::new();
        for pending in round {
            match records.get(&pending.input.idempotency_key) {
                Some(record) => out.push((pending.index, record.outcome_for(&pending))),
                None => fresh.push(pending),
            }
        }
        if fresh.is_empty() {
            return Ok(out);
        }

        let (accepted, rejected) = self.check_items(fresh).await?;
        out.extend(rejected);
        if accepted.is_empty() {
            return Ok(out);
        }
        let (accepted, closed) = self.resolve_new_sessions(accepted).await?;
        out.extend(closed);
        out.extend(self.apply(accepted).await?);
        Ok(out)
    }

    /// Idempotency records of `keys` for this user: cache first, then the database
    /// (refilling the cache).
    async fn lookup_records(&self, keys: &[Uuid]) -> AppResult<HashMap<Uuid, Record>> {
        let cache = &self.app.cache;
        let cache_keys: Vec<String> = keys
            .iter()
            .map(|k| cache.user_key(&self.user.id, "idem", &k.to_string()))
            .collect();
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        match cache.get_many(&cache_keys).await {
            Ok(values) => {
                for (key, value) in keys.iter().zip(values) {
                    match value.as_deref().and_then(Record::decode) {
                        Some(record) => {
                            found.insert(*key, record);
                        }
                        None => missing.push(*key),
                    }
                }
            }
            Err(e) => {
                metrics::cache_fallback("idempotency_lookup", e.kind());
                missing.extend_from_slice(keys);
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let from_db = self.records_from_db(&missing).await?;
        let refill: Vec<(String, String)> = from_db
            .iter()
            .map(|(key, record)| {
                (
                    cache.user_key(&self.user.id, "idem", &key.to_string()),
                    record.encode(),
                )
            })
            .collect();
        if let Err(e) = cache.set_many(&refill, IDEMPOTENCY_CACHE_TTL).await {
            metrics::cache_fallback("idempotency_refill", e.kind());
        }
        found.extend(from_db);
        Ok(found)
    }

    async fn records_from_db(&self, keys: &[Uuid]) -> AppResult<HashMap<Uuid, Record>> {
        let rows = idempotency_record::Entity::find()
            .filter(idempotency_record::Column::UserId.eq(self.user.id))
            .filter(idempotency_record::Column::IdempotencyKey.is_in(keys.iter().copied()))
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.idempotency_key,
                    Record {
                        payload_hash: row.payload_hash,
                        attempt_id: row.attempt_id,
                        session_id: row.session_id,
                    },
                )
            })
            .collect())
    }

    /// The checks of SPEC section 7.3 after idempotency, in order, with one query each
    /// for sessions and questions and cached package snapshots.
    async fn check_items(
        &self,
        items: Vec<Pending>,
    ) -> AppResult<(Vec<Accepted>, Vec<(usize, AttemptResult)>)> {
        let session_ids: HashSet<Uuid> = items.iter().filter_map(|p| p.input.session_id).collect();
        let offline_ids: HashSet<Uuid> = items
            .iter()
            .filter(|p| p.input.session_id.is_none())
            .filter_map(|p| p.input.offline_session_id)
            .collect();
        let question_ids: HashSet<Uuid> = items.iter().map(|p| p.input.question_id).collect();
        let package_ids: Vec<Uuid> = items
            .iter()
            .filter_map(|p| p.input.package_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();

        let sessions = if session_ids.is_empty() && offline_ids.is_empty() {
            Vec::new()
        } else {
            test_session::Entity::find()
                .filter(test_session::Column::UserId.eq(self.user.id))
                .filter(
                    Condition::any()
                        .add(test_session::Column::Id.is_in(session_ids.iter().copied()))
                        .add(
                            test_session::Column::OfflineSessionId
                                .is_in(offline_ids.iter().copied()),
                        ),
                )
                .all(self.db())
                .await?
        };
        let by_id: HashMap<Uuid, &test_session::Model> =
            sessions.iter().map(|s| (s.id, s)).collect();
        let by_offline: HashMap<Uuid, &test_session::Model> = sessions
            .iter()
            .filter_map(|s| s.offline_session_id.map(|o| (o, s)))
            .collect();
        let questions: HashMap<Uuid, question::Model> = question::Entity::find()
            .filter(question::Column::Id.is_in(question_ids.iter().copied()))
            .all(self.db())
            .await?
            .into_iter()
            .map(|q| (q.id, q))
            .collect();
        let packages = if package_ids.is_empty() {
            HashMap::new()
        } else {
            self.app
                .packages
                .scoring_for(self.db(), &package_ids)
                .await?
        };

        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for pending in items {
            let input = &pending.input;
            let reject = |code: SyncErrorCode, message: &str| {
                (
                    pending.index,
                    AttemptResult::rejected(Some(input.client_attempt_id), code, message),
                )
            };
            let session = if let Some(id) = input.session_id {
                match by_id.get(&id) {
                    None => {
                        rejected.push(reject(
                            SyncErrorCode::SessionNotFound,
                            "no such session of yours",
                        ));
                        continue;
                    }
                    Some(s) if s.status != SessionStatus::Active => {
                        rejected.push(reject(
                            SyncErrorCode::SessionClosed,
                            "the session is no longer active",
                        ));
                        continue;
                    }
                    Some(s) => SessionRef::Existing(s.id),
                }
            } else if let Some(offline) = input.offline_session_id {
                match by_offline.get(&offline) {
                    Some(s) if s.status != SessionStatus::Active => {
                        rejected.push(reject(
                            SyncErrorCode::SessionClosed,
                            "the session is no longer active",
                        ));
                        continue;
                    }
                    Some(s) => SessionRef::Existing(s.id),
                    None => SessionRef::NewOffline(offline),
                }
            } else {
                rejected.push(reject(
                    SyncErrorCode::SessionRequired,
                    "give session_id or offline_session_id",
                ));
                continue;
            };
            let Some(question) = questions.get(&input.question_id) else {
                rejected.push(reject(SyncErrorCode::QuestionNotFound, "no such question"));
                continue;
            };
            let key = match input.package_id {
                Some(package_id) => {
                    match packages
                        .get(&package_id)
                        .and_then(|p| p.questions.get(&input.question_id))
                    {
                        Some(key) => *key,
                        None => {
                            rejected.push(reject(
                                SyncErrorCode::PackageMismatch,
                                "the question is not in that published package",
                            ));
                            continue;
                        }
                    }
                }
                None => ScoringKey {
                    option_count: options_of(question).len(),
                    correct_index: question.correct_index,
                },
            };
            if input.selected_option_index < 0
                || input.selected_option_index >= key.option_count as i64
            {
                rejected.push(reject(
                    SyncErrorCode::InvalidOptionIndex,
                    &format!(
                        "selected_option_index must be between 0 and {}",
                        key.option_count.saturating_sub(1)
                    ),
                ));
                continue;
            }
            let effective_at = self.effective_time(&input.answered_at);
            if effective_at > self.received_at + FUTURE_TOLERANCE {
                rejected.push(reject(
                    SyncErrorCode::AnsweredAtInFuture,
                    "answered_at is more than 5 minutes ahead of the server clock",
                ));
                continue;
            }
            accepted.push(Accepted {
                index: pending.index,
                is_correct: input.selected_option_index == i64::from(key.correct_index),
                question_scope: (question.year_id, question.block_id, question.theme_id),
                input: pending.input,
                v1_hash: pending.v1_hash,
                session,
                effective_at,
            });
        }
        Ok((accepted, rejected))
    }

    /// `answered_at` in UTC, corrected by the device clock skew, to the microsecond
    /// (what both databases store).
    fn effective_time(&self, answered_at: &DateTime<FixedOffset>) -> DateTime<Utc> {
        let utc = answered_at.with_timezone(&Utc) + self.skew.unwrap_or_default();
        utc.duration_trunc(Duration::microseconds(1)).unwrap_or(utc)
    }

    /// Creates the server sessions of offline sessions seen for the first time; the
    /// unique (user, offline session) key decides between concurrent creators.
    async fn resolve_new_sessions(
        &self,
        accepted: Vec<Accepted>,
    ) -> AppResult<(Vec<Accepted>, Vec<(usize, AttemptResult)>)> {
        let mut first_use: BTreeMap<Uuid, (i32, Option<i32>, Option<i32>)> = BTreeMap::new();
        for item in &accepted {
            if let SessionRef::NewOffline(offline) = item.session {
                first_use.entry(offline).or_insert(item.question_scope);
            }
        }
        if first_use.is_empty() {
            return Ok((accepted, Vec::new()));
        }
        let now = self.received_at;
        let rows: Vec<test_session::ActiveModel> = first_use
            .iter()
            .map(
                |(offline, (year, block, theme))| test_session::ActiveModel {
                    id: Set(Uuid::new_v4()),
                    user_id: Set(self.user.id),
                    offline_session_id: Set(Some(*offline)),
                    mode: Set(SessionMode::Tutor),
                    status: Set(SessionStatus::Active),
                    year: Set(*year),
                    block_id: Set(*block),
                    theme_id: Set(*theme),
                    total_questions: Set(0),
                    answered_count: Set(0),
                    correct_count: Set(0),
                    started_at: Set(now),
                    submitted_at: Set(None),
                    updated_at: Set(now),
                },
            )
            .collect();
        test_session::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([
                test_session::Column::UserId,
                test_session::Column::OfflineSessionId,
            ])
            .exec_without_returning(self.db())
            .await?;
        let winners: HashMap<Uuid, test_session::Model> = test_session::Entity::find()
            .filter(test_session::Column::UserId.eq(self.user.id))
            .filter(test_session::Column::OfflineSessionId.is_in(first_use.keys().copied()))
            .all(self.db())
            .await?
            .into_iter()
            .filter_map(|s| s.offline_session_id.map(|o| (o, s)))
            .collect();

        let mut ready = Vec::with_capacity(accepted.len());
        let mut closed = Vec::new();
        for mut item in accepted {
            if let SessionRef::NewOffline(offline) = item.session {
                match winners.get(&offline) {
                    Some(session) if session.status == SessionStatus::Active => {
                        item.session = SessionRef::Existing(session.id)
                    }
                    Some(_) => {
                        closed.push(session_closed(&item));
                        continue;
                    }
                    None => {
                        return Err(AppError::internal(
                            "offline session vanished right after creation",
                        ));
                    }
                }
            }
            ready.push(item);
        }
        Ok((ready, closed))
    }

    /// Writes accepted items in one transaction; on a non-transient failure, one by one.
    async fn apply(&self, accepted: Vec<Accepted>) -> AppResult<Vec<(usize, AttemptResult)>> {
        let closed = match self.apply_in_transaction(&accepted).await {
            Ok(Applied::Committed(applied)) => return self.finish(accepted, applied).await,
            Ok(Applied::SessionsClosed(closed)) => closed,
            Err(e) => return self.apply_one_by_one(accepted, e).await,
        };
        // Sessions were closed after the checks: reject their items, apply the rest again
        // (closing is one-way, so this ends).
        let (open, closed): (Vec<_>, Vec<_>) = accepted.into_iter().partition(
            |item| !matches!(item.session, SessionRef::Existing(id) if closed.contains(&id)),
        );
        let mut out: Vec<(usize, AttemptResult)> = closed
            .into_iter()
            .map(|item| session_closed(&item))
            .collect();
        if !open.is_empty() {
            out.extend(Box::pin(self.apply(open)).await?);
        }
        Ok(out)
    }

    /// After a non-transient failure of the whole batch: each item in its own transaction,
    /// so that one bad item never blocks another.
    async fn apply_one_by_one(
        &self,
        accepted: Vec<Accepted>,
        error: sea_orm::DbErr,
    ) -> AppResult<Vec<(usize, AttemptResult)>> {
        if is_transient(&error) {
            return Err(AppError::from(error));
        }
        tracing::warn!(error = %error, items = accepted.len(), "batch write failed; retrying item by item");
        let mut out = Vec::new();
        for item in accepted {
            match self.apply_in_transaction(std::slice::from_ref(&item)).await {
                Ok(Applied::Committed(applied)) => {
                    out.extend(self.finish(vec![item], applied).await?)
                }
                Ok(Applied::SessionsClosed(_)) => out.push(session_closed(&item)),
                Err(e) if is_transient(&e) => return Err(AppError::from(e)),
                Err(e) => {
                    tracing::error!(error = %e, "attempt could not be applied");
                    out.push((
                        item.index,
                        AttemptResult::rejected(
                            Some(item.input.client_attempt_id),
                            SyncErrorCode::InvalidAttempt,
                            "the attempt could not be applied",
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Returns the attempt id assigned to each idempotency key this transaction won.
    async fn apply_in_transaction(&self, accepted: &[Accepted]) -> Result<Applied, sea_orm::DbErr> {
        let now = self.received_at;
        let session_of = |item: &Accepted| match item.session {
            SessionRef::Existing(id) => id,
            // Resolved before; a NewOffline here would be a bug caught by the FK.
            SessionRef::NewOffline(id) => id,
        };
        let attempt_ids: HashMap<Uuid, Uuid> = accepted
            .iter()
            .map(|item| (item.input.idempotency_key, Uuid::new_v4()))
            .collect();

        let txn = self.db().begin().await?;

        // 1. Claim the keys. Sorted, so concurrent batches take row locks in one order.
        let mut claims: Vec<&Accepted> = accepted.iter().collect();
        claims.sort_by_key(|item| item.input.idempotency_key);
        let records: Vec<idempotency_record::ActiveModel> = claims
            .iter()
            .map(|item| idempotency_record::ActiveModel {
                user_id: Set(self.user.id),
                idempotency_key: Set(item.input.idempotency_key),
                payload_hash: Set(item.v1_hash.clone()),
                attempt_id: Set(attempt_ids[&item.input.idempotency_key]),
                session_id: Set(session_of(item)),
                created_at: Set(now),
            })
            .collect();
        let won: HashSet<Uuid> = match idempotency_record::Entity::insert_many(records)
            .on_conflict(
                OnConflict::columns([
                    idempotency_record::Column::UserId,
                    idempotency_record::Column::IdempotencyKey,
                ])
                .do_nothing()
                .to_owned(),
            )
            .try_insert()
            .exec_with_returning_many(&txn)
            .await?
        {
            TryInsertResult::Inserted(rows) => {
                rows.into_iter().map(|r| r.idempotency_key).collect()
            }
            TryInsertResult::Conflicted | TryInsertResult::Empty => HashSet::new(),
        };
        let winners: Vec<&Accepted> = accepted
            .iter()
            .filter(|item| won.contains(&item.input.idempotency_key))
            .collect();
        if winners.is_empty() {
            txn.commit().await?;
            return Ok(Applied::Committed(HashMap::new()));
        }

        // 2. Lock the sessions (PostgreSQL; on SQLite the insert above took the single
        //    write lock), so the answers read next stay current until commit, and check
        //    again that they are ACTIVE: a submitSession may have committed since the
        //    checks. If not, nothing is written and the caller rejects those items.
        let mut session_ids: Vec<Uuid> = winners.iter().map(|i| session_of(i)).collect();
        session_ids.sort();
        session_ids.dedup();
        let mut lock = test_session::Entity::find()
            .select_only()
            .column(test_session::Column::Id)
            .column(test_session::Column::Status)
            .filter(test_session::Column::Id.is_in(session_ids.iter().copied()))
            .order_by_asc(test_session::Column::Id);
        if txn.get_database_backend() == DbBackend::Postgres {
            lock = lock.lock_exclusive();
        }
        let closed: HashSet<Uuid> = lock
            .into_tuple::<(Uuid, SessionStatus)>()
            .all(&txn)
            .await?
            .into_iter()
            .filter(|(_, status)| *status != SessionStatus::Active)
            .map(|(id, _)| id)
            .collect();
        if !closed.is_empty() {
            txn.rollback().await?;
            return Ok(Applied::SessionsClosed(closed));
        }

        // 3. Current answers of the (session, question) pairs touched.
        let question_ids: HashSet<Uuid> = winners.iter().map(|i| i.input.question_id).collect();
        let mut answers: HashMap<(Uuid, Uuid), session_answer::Model> =
            session_answer::Entity::find()
                .filter(session_answer::Column::SessionId.is_in(session_ids.iter().copied()))
                .filter(session_answer::Column::QuestionId.is_in(question_ids.iter().copied()))
                .all(&txn)
                .await?
                .into_iter()
                .map(|a| ((a.session_id, a.question_id), a))
                .collect();

        // 4. Replay the winners in answer-time order: a later answer replaces the current
        //    one (the student changed their mind); an earlier one is history only.
        let mut ordered = winners.clone();
        ordered.sort_by_key(|i| (i.effective_at, i.index));
        let mut changed: HashSet<(Uuid, Uuid)> = HashSet::new();
        let mut deltas: BTreeMap<Uuid, (i32, i32)> = BTreeMap::new();
        for item in &ordered {
            let session_id = session_of(item);
            let pair = (session_id, item.input.question_id);
            let attempt_id = attempt_ids[&item.input.idempotency_key];
            let delta = deltas.entry(session_id).or_default();
            match answers.get_mut(&pair) {
                None => {
                    delta.0 += 1;
                    delta.1 += i32::from(item.is_correct);
                    answers.insert(
                        pair,
                        session_answer::Model {
                            id: Uuid::new_v4(),
                            session_id,
                            question_id: item.input.question_id,
                            attempt_id,
                            selected_option_index: item.input.selected_option_index as i32,
                            is_correct: item.is_correct,
                            answered_at: item.effective_at,
                            changed_count: 0,
                            created_at: now,
                            updated_at: now,
                        },
                    );
                    changed.insert(pair);
                }
                Some(current) if item.effective_at > current.answered_at => {
                    delta.1 += i32::from(item.is_correct) - i32::from(current.is_correct);
                    current.attempt_id = attempt_id;
                    current.selected_option_index = item.input.selected_option_index as i32;
                    current.is_correct = item.is_correct;
                    current.answered_at = item.effective_at;
                    current.changed_count += 1;
                    current.updated_at = now;
                    changed.insert(pair);
                }
                Some(_) => {}
            }
        }

        // 5. The attempt history.
        let attempts: Vec<attempt::ActiveModel> = winners
            .iter()
            .map(|item| attempt::ActiveModel {
                id: Set(attempt_ids[&item.input.idempotency_key]),
                user_id: Set(self.user.id),
                session_id: Set(session_of(item)),
                question_id: Set(item.input.question_id),
                package_id: Set(item.input.package_id),
                client_attempt_id: Set(item.input.client_attempt_id),
                idempotency_key: Set(item.input.idempotency_key),
                payload_hash: Set(item.v1_hash.clone()),
                selected_option_index: Set(item.input.selected_option_index as i32),
                is_correct: Set(item.is_correct),
                answered_at: Set(item.input.answered_at.with_timezone(&Utc)),
                answered_at_raw: Set(item.input.answered_at.to_rfc3339()),
                clock_skew_ms: Set(self.skew.map(|s| s.num_milliseconds())),
                received_at: Set(now),
            })
            .collect();
        for chunk in attempts.chunks(ATTEMPT_INSERT_CHUNK) {
            attempt::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }

        // 6. Current answers, one row per (session, question).
        let mut upserts: Vec<session_answer::ActiveModel> = changed
            .iter()
            .filter_map(|pair| answers.get(pair))
            .map(|a| session_answer::ActiveModel {
                id: Set(a.id),
                session_id: Set(a.session_id),
                question_id: Set(a.question_id),
                attempt_id: Set(a.attempt_id),
                selected_option_index: Set(a.selected_option_index),
                is_correct: Set(a.is_correct),
                answered_at: Set(a.answered_at),
                changed_count: Set(a.changed_count),
                created_at: Set(a.created_at),
                updated_at: Set(a.updated_at),
            })
            .collect();
        upserts.sort_by_key(|a| match (&a.session_id, &a.question_id) {
            (sea_orm::ActiveValue::Set(s), sea_orm::ActiveValue::Set(q)) => (*s, *q),
            _ => (Uuid::nil(), Uuid::nil()),
        });
        if !upserts.is_empty() {
            session_answer::Entity::insert_many(upserts)
                .on_conflict(
                    OnConflict::columns([
                        session_answer::Column::SessionId,
                        session_answer::Column::QuestionId,
                    ])
                    .update_columns([
                        session_answer::Column::AttemptId,
                        session_answer::Column::SelectedOptionIndex,
                        session_answer::Column::IsCorrect,
                        session_answer::Column::AnsweredAt,
                        session_answer::Column::ChangedCount,
                        session_answer::Column::UpdatedAt,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }

        // 7. Session score: each question counted once.
        for (session_id, (answered, correct)) in deltas {
            if answered == 0 && correct == 0 {
                continue;
            }
            test_session::Entity::update_many()
                .col_expr(
                    test_session::Column::AnsweredCount,
                    Expr::col(test_session::Column::AnsweredCount).add(answered),
                )
                .col_expr(
                    test_session::Column::TotalQuestions,
                    Expr::col(test_session::Column::TotalQuestions).add(answered),
                )
                .col_expr(
                    test_session::Column::CorrectCount,
                    Expr::col(test_session::Column::CorrectCount).add(correct),
                )
                .col_expr(test_session::Column::UpdatedAt, Expr::value(now))
                .filter(test_session::Column::Id.eq(session_id))
                .exec(&txn)
                .await?;
        }

        txn.commit().await?;
        Ok(Applied::Committed(
            winners
                .iter()
                .map(|i| {
                    (
                        i.input.idempotency_key,
                        attempt_ids[&i.input.idempotency_key],
                    )
                })
                .collect(),
        ))
    }

    /// After commit: results for the winners, cache the records, and settle the items
    /// whose key another request committed first (they are DUPLICATE or REUSED now).
    async fn finish(
        &self,
        accepted: Vec<Accepted>,
        applied: HashMap<Uuid, Uuid>,
    ) -> AppResult<Vec<(usize, AttemptResult)>> {
        let mut out = Vec::with_capacity(accepted.len());
        let mut cache_entries = Vec::new();
        let mut lost = Vec::new();
        for item in accepted {
            let SessionRef::Existing(session_id) = item.session else {
                return Err(AppError::internal(
                    "an applied attempt has no resolved session",
                ));
            };
            match applied.get(&item.input.idempotency_key) {
                Some(attempt_id) => {
                    let record = Record {
                        payload_hash: item.v1_hash.clone(),
                        attempt_id: *attempt_id,
                        session_id,
                    };
                    cache_entries.push((
                        self.app.cache.user_key(
                            &self.user.id,
                            "idem",
                            &item.input.idempotency_key.to_string(),
                        ),
                        record.encode(),
                    ));
                    metrics::sync_offline_age(
                        (self.received_at - item.effective_at).num_milliseconds() as f64 / 1000.0,
                    );
                    out.push((
                        item.index,
                        AttemptResult::applied(
                            item.input.client_attempt_id,
                            SyncStatus::Acked,
                            *attempt_id,
                            session_id,
                        ),
                    ));
                }
                None => lost.push(item),
            }
        }
        if let Err(e) = self
            .app
            .cache
            .set_many(&cache_entries, IDEMPOTENCY_CACHE_TTL)
            .await
        {
            metrics::cache_fallback("idempotency_store", e.kind());
        }
        if !lost.is_empty() {
            let keys: Vec<Uuid> = lost.iter().map(|i| i.input.idempotency_key).collect();
            let records = self.records_from_db(&keys).await?;
            for item in lost {
                let record = records
                    .get(&item.input.idempotency_key)
                    .ok_or_else(AppError::unavailable)?;
                let pending = Pending {
                    index: item.index,
                    input: item.input,
                    v1_hash: item.v1_hash,
                };
                out.push((pending.index, record.outcome_for(&pending)));
            }
        }
        Ok(out)
    }

    /// Counters for `syncStatus` and `/metrics`. Best effort: the answers are committed.
    async fn record_outcomes(&self, results: &[AttemptResult]) {
        let (mut acked, mut duplicate, mut rejected) = (0i64, 0i64, 0i64);
        for result in results {
            metrics::sync_item(
                result.status.rest_name(),
                result.error_code.map(|c| c.as_str()),
            );
            match result.status {
                SyncStatus::Acked => acked += 1,
                SyncStatus::Duplicate => duplicate += 1,
                SyncStatus::Rejected => rejected += 1,
            }
        }
        let update = user::Entity::update_many()
            .col_expr(
                user::Column::AckedCount,
                Expr::col(user::Column::AckedCount).add(acked),
            )
            .col_expr(
                user::Column::DuplicateCount,
                Expr::col(user::Column::DuplicateCount).add(duplicate),
            )
            .col_expr(
                user::Column::RejectedCount,
                Expr::col(user::Column::RejectedCount).add(rejected),
            )
            .col_expr(
                user::Column::LastSyncAt,
                Expr::value(Some(self.received_at)),
            )
            .filter(user::Column::Id.eq(self.user.id))
            .exec(self.db())
            .await;
        if let Err(e) = update {
            tracing::warn!(error = %e, "could not update sync counters");
        }
    }
}
