//! Applying a sync batch: gathers facts through `store`, decides with `rules`, writes in
//! one transaction.
//!
//! The path of a batch (see `docs/architecture.md`):
//! 1. per item, pure checks (`rules::precheck`): `answered_at` in range, `payload_hash`;
//! 2. idempotency records of all keys: Redis `MGET`, misses from the database in one
//!    statement → `DUPLICATE` or `IDEMPOTENCY_KEY_REUSED` (a replay ends here, with no
//!    database write);
//! 3. one statement each for sessions and questions, cached package snapshots; the
//!    remaining checks in the documented order (`rules::check`). An item rejected here is looked up
//!    again by key: if another request committed it meanwhile it is `DUPLICATE`;
//! 4. one transaction, committed once: sessions of first-seen offline sessions created,
//!    keys claimed (`ON CONFLICT DO NOTHING RETURNING`: the claim decides before anything
//!    else is written), the won sessions locked and their status read again, current
//!    answers read, then attempts, answers, session scores and `ackedCount` written
//!    set-wise;
//! 5. after commit: records cached in Redis (failures only counted); keys that lost the
//!    claim are read back and answered as a resend would be.
//!
//! An idempotency key repeated inside one batch is handled in a later round, so it gets
//! exactly what a resend after the earlier item gets. If the transaction fails for a
//! reason other than a transient fault, items are retried one by one so that one bad
//! item never blocks another; a transient fault always fails the request.
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, DurationRound, FixedOffset, Utc};
use entity::{
    AnswerId, AttemptId, IdempotencyKey, OfflineSessionId, PackageId, PayloadHash, QuestionId,
    SessionId,
};
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use serde_json::json;

use super::{
    AttemptInput, AttemptResult, MAX_BATCH, ParsedAttempt, SyncErrorCode, SyncStatus,
    rules::{self, Checked, Facts, QuestionFact, Record, SessionFact, SessionState, Target},
    store::{self, ClaimSession, Counts, OpeningClaim, Store, SyncStore},
};
use crate::{
    app::App,
    auth::AuthUser,
    error::{AppError, AppResult, ErrorCode, is_transient},
    metrics,
    packages::ScoringKey,
    replication::{Commit, watch_commit},
};

/// Idempotency records live in Redis this long; the database keeps them for good.
const IDEMPOTENCY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

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
    let skew = rules::skew_of(received_at, sent_at.as_ref()).map_err(AppError::bad_request)?;
    metrics::sync_batch(items.len());
    if let Some(skew) = skew {
        metrics::sync_clock_skew(skew.num_milliseconds() as f64 / 1000.0);
    }

    let mut results: Vec<Option<AttemptResult>> = vec![None; items.len()];
    let mut pending: HashMap<usize, Pending> = HashMap::new();
    let mut order = Vec::new();
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
            ParsedAttempt::Valid(input) => match rules::precheck(&input) {
                Err((code, message)) => {
                    results[index] = Some(AttemptResult::rejected(
                        Some(input.client_attempt_id),
                        code,
                        message,
                    ));
                }
                Ok(v1_hash) => {
                    order.push((index, input.idempotency_key));
                    pending.insert(
                        index,
                        Pending {
                            index,
                            input,
                            v1_hash,
                        },
                    );
                }
            },
        }
    }

    let batch = Batch {
        app,
        user,
        received_at,
        skew,
        timeline: app.primary.timeline(),
    };
    for round in rules::plan_rounds(&order) {
        let round: Vec<Pending> = round
            .into_iter()
            .filter_map(|index| pending.remove(&index))
            .collect();
        let outcomes = batch.process_round(round).await.inspect_err(|e| {
            if matches!(e, AppError::Unavailable { .. }) {
                // The primary may be gone (a failover): no cached record is read again
                // until a probe has read the server's timeline.
                app.primary.forget();
            }
        })?;
        for (index, result) in outcomes {
            results[index] = Some(result);
        }
    }

    let results: Vec<AttemptResult> = results
        .into_iter()
        .map(|r| r.ok_or_else(|| AppError::internal("a sync item was left without a result")))
        .collect::<AppResult<_>>()?;
    batch.record_outcomes(&results);
    Ok(results)
}

/// An item that passed the pure checks.
struct Pending {
    index: usize,
    input: AttemptInput,
    v1_hash: PayloadHash,
}

/// An item that passed every check.
struct Accepted {
    pending: Pending,
    checked: Checked,
}

/// Why the applying transaction did not commit.
enum TxnError {
    Db(DbErr),
    /// A read the transaction relies on came back without the row it must return.
    Inconsistent,
    /// `COMMIT` returned success but its synchronous-replication wait was cancelled:
    /// committed on the primary only (`replication`).
    Unconfirmed,
}

impl From<DbErr> for TxnError {
    fn from(e: DbErr) -> Self {
        TxnError::Db(e)
    }
}

/// The request fails as a transient fault; its retry converges once a standby confirms
/// (a barrier commit, see `store::durability_barrier`) or after the failover.
fn unconfirmed() -> AppError {
    tracing::warn!(
        "a commit's synchronous replication was not confirmed; answered 503, nothing cached"
    );
    metrics::sync_unconfirmed_commit();
    AppError::unavailable()
}

/// A retry converges; an item result here could make the phone delete an answer.
fn inconsistent() -> AppError {
    tracing::warn!("sync transaction saw an inconsistent state; the client retries");
    AppError::unavailable()
}

/// What the applying transaction decided for its items.
struct Applied {
    won: Vec<Won>,
    /// Positions whose key another request holds.
    lost: Vec<usize>,
    /// Positions whose session is closed (claims given back).
    closed: Vec<usize>,
}

/// An applied item.
struct Won {
    position: usize,
    attempt_id: AttemptId,
    session_id: SessionId,
}

/// An item's ids in the transaction: the attempt id is fixed before the claim so that
/// the idempotency record names it.
#[derive(Clone, Copy)]
struct Placed {
    attempt_id: AttemptId,
    session: SessionFact,
}

/// Positions (into the transaction's items) by the claim of their key.
#[derive(Default)]
struct KeyClaims {
    won: Vec<usize>,
    /// Another request holds the key.
    lost: Vec<usize>,
    /// The sessions of the won claims, locked, and their status read under the lock.
    states: HashMap<SessionId, SessionState>,
}

/// What the first writes of the transaction decided (`Batch::open`).
struct Opened {
    seq: i64,
    /// Position by position.
    placed: Vec<Placed>,
    claims: KeyClaims,
    /// The current answers, if read with the claims (`store::Opening::answers`).
    answers: Option<HashMap<rules::AnswerKey, rules::Answer>>,
}

/// Won positions by the status of their session, read again under its lock.
struct SessionRecheck {
    open: Vec<usize>,
    /// Their claims are given back.
    closed: Vec<usize>,
}

/// The item that first names an offline session.
#[derive(Clone, Copy)]
struct FirstUse {
    index: usize,
    scope: rules::Scope,
}

struct Batch<'a> {
    app: &'a App,
    user: AuthUser,
    received_at: DateTime<Utc>,
    skew: Option<Duration>,
    /// The server's timeline when the request arrived: the cache namespace of its
    /// records (`None`: not known now, the cache is not used).
    timeline: Option<u32>,
}

impl Batch<'_> {
    fn db(&self) -> &DatabaseConnection {
        &self.app.db
    }

    /// The sync store of the app's backend.
    fn store(&self) -> &Store {
        &self.app.sync_store
    }

    fn cache_key(&self, timeline: u32, key: &IdempotencyKey) -> String {
        self.app
            .cache
            .record_key(timeline, &self.user.id, "idem", &key.to_string())
    }

    /// The timeline records may be cached under now: the request's, if the server is
    /// still on it (a record read before a promotion is never cached after it).
    fn cache_timeline(&self) -> Option<u32> {
        self.timeline
            .filter(|&timeline| self.app.primary.timeline() == Some(timeline))
    }

    /// Records found in the database (not in the cache) are answered only once a
    /// standby holds them (see `store::durability_barrier`).
    async fn confirm_durable(&self) -> AppResult<()> {
        if !self.app.primary.sync_standby() {
            return Ok(());
        }
        match store::durability_barrier(self.db()).await? {
            Commit::Confirmed => Ok(()),
            Commit::Unconfirmed => Err(unconfirmed()),
        }
    }

    async fn process_round(&self, round: Vec<Pending>) -> AppResult<Vec<(usize, AttemptResult)>> {
        let mut out = Vec::with_capacity(round.len());

        // Idempotency: a known key decides the outcome before anything else is read. The
        // sessions and questions of the items the cache did not know are read with their
        // records (one statement on PostgreSQL).
        let (records, lookup) = self.lookup_records(&round).await?;
        let mut fresh = Vec::new();
        for p in round {
            match records.get(&p.input.idempotency_key) {
                Some(record) => out.push((
                    p.index,
                    record.outcome_for(p.input.client_attempt_id, &p.v1_hash),
                )),
                None => fresh.push(p),
            }
        }
        if fresh.is_empty() {
            return Ok(out);
        }

        let facts = self.facts(&fresh, lookup).await?;
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for p in fresh {
            match rules::check(&p.input, &facts, self.received_at, self.skew) {
                Ok(checked) => accepted.push(Accepted {
                    pending: p,
                    checked,
                }),
                Err(rejection) => rejected.push((p, rejection)),
            }
        }
        out.extend(self.settle_rejected(rejected).await?);
        if !accepted.is_empty() {
            out.extend(self.apply(accepted).await?);
        }
        Ok(out)
    }

    /// Claim first: a rejection decided on state read before another request committed
    /// the same key would contradict that commit, so rejected keys are looked up again
    /// (one statement, only when there are rejections) and a found record wins.
    async fn settle_rejected(
        &self,
        rejected: Vec<(Pending, rules::Rejection)>,
    ) -> AppResult<Vec<(usize, AttemptResult)>> {
        if rejected.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<IdempotencyKey> = rejected
            .iter()
            .map(|(p, _)| p.input.idempotency_key)
            .collect();
        let records = self
            .store()
            .find_records(self.db(), self.user.id, &keys)
            .await?;
        if !records.is_empty() {
            self.confirm_durable().await?;
        }
        Ok(rejected
            .into_iter()
            .map(|(p, (code, message))| {
                let result = match records.get(&p.input.idempotency_key) {
                    Some(record) => record.outcome_for(p.input.client_attempt_id, &p.v1_hash),
                    None => AttemptResult::rejected(Some(p.input.client_attempt_id), code, message),
                };
                (p.index, result)
            })
            .collect())
    }

    /// Idempotency records of the items' keys for this user: cache first, then the
    /// database (refilling the cache), where the sessions and questions of the items read
    /// there are read too: every item without a record is among them.
    async fn lookup_records(
        &self,
        items: &[Pending],
    ) -> AppResult<(HashMap<IdempotencyKey, Record>, Option<store::Lookup>)> {
        let keys: Vec<IdempotencyKey> = items.iter().map(|p| p.input.idempotency_key).collect();
        let keys = &keys[..];
        let cache = &self.app.cache;
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        let cached = match self.timeline {
            Some(timeline) => {
                let cache_keys: Vec<String> =
                    keys.iter().map(|k| self.cache_key(timeline, k)).collect();
                cache.get_many(&cache_keys).await
            }
            None => {
                metrics::cache_fallback("idempotency_lookup", "timeline_unknown");
                Ok(vec![None; keys.len()])
            }
        };
        match cached {
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
            return Ok((found, None));
        }
        let unknown: HashSet<IdempotencyKey> = missing.iter().copied().collect();
        let ids = FactIds::of(
            items
                .iter()
                .filter(|p| unknown.contains(&p.input.idempotency_key)),
        );
        let mut lookup = self
            .store()
            .find_records_and_facts(
                self.db(),
                self.user.id,
                &missing,
                &ids.sessions,
                &ids.offline,
                &ids.questions,
            )
            .await?;
        let from_db = std::mem::take(&mut lookup.records);
        if !from_db.is_empty() {
            self.confirm_durable().await?;
        }
        if let (false, Some(timeline)) = (from_db.is_empty(), self.cache_timeline()) {
            let refill: Vec<(String, String)> = from_db
                .iter()
                .map(|(key, record)| (self.cache_key(timeline, key), record.encode()))
                .collect();
            if let Err(e) = cache.set_many(&refill, IDEMPOTENCY_CACHE_TTL).await {
                metrics::cache_fallback("idempotency_refill", e.kind());
            }
        }
        found.extend(from_db);
        Ok((found, Some(lookup)))
    }

    /// Sessions, questions (drafts resolved) and package snapshots the checks need.
    /// `lookup`: the sessions and questions read with the records, for a superset of
    /// `items` (`None`: read them here).
    async fn facts(&self, items: &[Pending], lookup: Option<store::Lookup>) -> AppResult<Facts> {
        let mut package_ids: Vec<PackageId> =
            items.iter().filter_map(|p| p.input.package_id).collect();
        sort_dedup(&mut package_ids);

        let mut facts = Facts {
            access: crate::access::gate::sync_access(self.db(), &self.app.access, &self.user)
                .await?,
            ..Facts::default()
        };
        let (sessions, questions) = match lookup {
            Some(lookup) => (lookup.sessions, lookup.questions),
            None => {
                // Sessions and questions: one statement on PostgreSQL.
                let ids = FactIds::of(items.iter());
                let lookup = self
                    .store()
                    .find_records_and_facts(
                        self.db(),
                        self.user.id,
                        &[],
                        &ids.sessions,
                        &ids.offline,
                        &ids.questions,
                    )
                    .await?;
                (lookup.sessions, lookup.questions)
            }
        };
        for (session, offline) in sessions {
            facts.sessions_by_id.insert(session.id, session);
            if let Some(offline) = offline {
                facts.sessions_by_offline.insert(offline, session);
            }
        }
        if !package_ids.is_empty() {
            facts.packages = self
                .app
                .packages
                .scoring_for(self.db(), &package_ids)
                .await?;
        }
        // A question that is not PUBLISHED is answerable only while a published package
        // holds it: first the packages already at hand, then (rarely) the others.
        let in_known_package = |id: &QuestionId| {
            facts
                .packages
                .values()
                .any(|p| p.questions.contains_key(id))
        };
        let unknown: Vec<QuestionId> = questions
            .iter()
            .filter(|q| !q.published && !in_known_package(&q.id))
            .map(|q| q.id)
            .collect();
        let elsewhere = store::in_published_packages(self.db(), &unknown).await?;
        let answerable: HashSet<QuestionId> = questions
            .iter()
            .filter(|q| q.published || in_known_package(&q.id) || elsewhere.contains(&q.id))
            .map(|q| q.id)
            .collect();
        for q in questions {
            facts.questions.insert(
                q.id,
                QuestionFact {
                    key: ScoringKey {
                        option_count: q.option_count,
                        correct_index: q.correct_index,
                    },
                    scope: q.scope,
                    answerable: answerable.contains(&q.id),
                },
            );
        }
        Ok(facts)
    }

    /// Writes accepted items in one transaction; on a non-transient failure, one by one.
    async fn apply(&self, accepted: Vec<Accepted>) -> AppResult<Vec<(usize, AttemptResult)>> {
        let all: Vec<&Accepted> = accepted.iter().collect();
        match self.apply_in_transaction(&all).await {
            Ok(applied) => self.finish(&all, applied).await,
            Err(TxnError::Inconsistent) => Err(inconsistent()),
            Err(TxnError::Unconfirmed) => Err(unconfirmed()),
            Err(TxnError::Db(e)) if is_transient(&e) => Err(AppError::from(e)),
            Err(TxnError::Db(e)) => {
                tracing::warn!(error = %e, items = all.len(), "batch write failed; retrying item by item");
                let mut out = Vec::with_capacity(all.len());
                for item in &all {
                    let one = [*item];
                    match self.apply_in_transaction(&one).await {
                        Ok(applied) => out.extend(self.finish(&one, applied).await?),
                        // Never an item result for a transient fault: the phone would
                        // delete an answer that was not applied.
                        Err(TxnError::Inconsistent) => return Err(inconsistent()),
                        Err(TxnError::Unconfirmed) => return Err(unconfirmed()),
                        Err(TxnError::Db(e)) if is_transient(&e) => {
                            return Err(AppError::from(e));
                        }
                        Err(TxnError::Db(e)) => {
                            tracing::error!(error = %e, "attempt could not be applied");
                            out.push((
                                item.pending.index,
                                AttemptResult::rejected(
                                    Some(item.pending.input.client_attempt_id),
                                    SyncErrorCode::InvalidAttempt,
                                    "the attempt could not be applied",
                                ),
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// The one transaction of a batch (positions index into `items`).
    async fn apply_in_transaction(&self, items: &[&Accepted]) -> Result<Applied, TxnError> {
        let txn = self.begin().await?;
        let opened = self.open(&txn, items).await?;
        let placed = &opened.placed;
        let recheck = recheck_sessions(placed, opened.claims.won, &opened.claims.states);
        // Items of closed sessions give their keys back.
        let released: Vec<IdempotencyKey> = recheck
            .closed
            .iter()
            .map(|&p| items[p].pending.input.idempotency_key)
            .collect();
        let mut won = Vec::new();
        if recheck.open.is_empty() {
            let writes = store::BatchWrites {
                released,
                ..store::BatchWrites::default()
            };
            self.store()
                .write_batch(&txn, self.user.id, &writes, self.received_at, opened.seq)
                .await?;
        } else {
            let plan = fold_into_answers(
                self.store(),
                &txn,
                items,
                placed,
                &recheck.open,
                opened.answers,
            )
            .await?;
            self.write_open(
                &txn,
                items,
                placed,
                &recheck.open,
                released,
                plan,
                opened.seq,
            )
            .await?;
            won = recheck
                .open
                .iter()
                .map(|&position| Won {
                    position,
                    attempt_id: placed[position].attempt_id,
                    session_id: placed[position].session.id,
                })
                .collect();
        }
        self.commit(txn).await?;
        Ok(Applied {
            won,
            lost: opened.claims.lost,
            closed: recheck.closed,
        })
    }

    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        // SQLite: take the one write lock at BEGIN (waiting out the busy timeout) rather
        // than upgrading a read snapshot later, which can fail with SQLITE_BUSY_SNAPSHOT.
        self.db()
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await
    }

    /// The first writes of the transaction (one statement on PostgreSQL, see
    /// `SyncStore::open_batch`): the user's change counter, whose row lock is held from
    /// here to commit so that the pull feed sees the user's commits in counter order; the
    /// sessions of offline sessions seen for the first time; every key claimed before any
    /// other write; the won claims' sessions locked (in id order) and their status read
    /// again.
    async fn open(
        &self,
        txn: &DatabaseTransaction,
        items: &[&Accepted],
    ) -> Result<Opened, TxnError> {
        let new_sessions = new_offline_sessions(items);
        let attempt_ids: Vec<AttemptId> = items.iter().map(|_| AttemptId::new_v7()).collect();
        let claims: Vec<OpeningClaim> = items
            .iter()
            .zip(&attempt_ids)
            .map(|(item, &attempt_id)| OpeningClaim {
                key: item.pending.input.idempotency_key,
                v1_hash: item.pending.v1_hash.clone(),
                attempt_id,
                session: match item.checked.target {
                    Target::Session(id) => ClaimSession::Known(id),
                    Target::NewOffline(offline) => ClaimSession::New(offline),
                },
                question_id: item.pending.input.question_id,
            })
            .collect();
        let opening = self
            .store()
            .open_batch(txn, self.user.id, &new_sessions, &claims, self.received_at)
            .await?
            .ok_or(TxnError::Inconsistent)?;
        let placed = items
            .iter()
            .zip(attempt_ids)
            .map(|(item, attempt_id)| {
                let session = match item.checked.target {
                    Target::Session(id) => SessionFact {
                        id,
                        state: SessionState::Active,
                    },
                    // The upsert returns the row it inserted or found; without one the
                    // database is not in a state to decide in: a retry will be.
                    Target::NewOffline(offline) => opening
                        .created
                        .get(&offline)
                        .copied()
                        .ok_or(TxnError::Inconsistent)?,
                };
                Ok(Placed {
                    attempt_id,
                    session,
                })
            })
            .collect::<Result<Vec<Placed>, TxnError>>()?;
        let mut claims = KeyClaims {
            states: opening.states,
            ..KeyClaims::default()
        };
        for (position, item) in items.iter().enumerate() {
            if opening.won.contains(&item.pending.input.idempotency_key) {
                claims.won.push(position);
            } else {
                claims.lost.push(position);
            }
        }
        Ok(Opened {
            seq: opening.seq,
            placed,
            claims,
            answers: opening.answers,
        })
    }

    /// The writes of the open items (and the keys `released`): one statement on
    /// PostgreSQL.
    #[allow(clippy::too_many_arguments)]
    async fn write_open(
        &self,
        txn: &DatabaseTransaction,
        items: &[&Accepted],
        placed: &[Placed],
        open: &[usize],
        released: Vec<IdempotencyKey>,
        plan: rules::AnswerPlan,
        seq: i64,
    ) -> Result<(), TxnError> {
        let writes = store::BatchWrites {
            released,
            attempts: open
                .iter()
                .map(|&p| attempt_row(items[p], placed[p]))
                .collect(),
            skew_ms: self.skew.map(|s| s.num_milliseconds()),
            answers: plan.answers.into_iter().collect(),
            deltas: plan.deltas.into_iter().collect(),
        };
        self.store()
            .write_batch(txn, self.user.id, &writes, self.received_at, seq)
            .await?;
        Ok(())
    }

    async fn commit(&self, txn: DatabaseTransaction) -> Result<(), TxnError> {
        let (committed, commit) = watch_commit(txn.commit()).await;
        committed?;
        if commit == Commit::Unconfirmed {
            return Err(TxnError::Unconfirmed);
        }
        self.app
            .sync
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// After commit: results for the winners, their records cached, and the items whose
    /// key another request committed first (DUPLICATE or REUSED now).
    async fn finish(
        &self,
        items: &[&Accepted],
        applied: Applied,
    ) -> AppResult<Vec<(usize, AttemptResult)>> {
        let mut out = Vec::with_capacity(items.len());
        let mut cache_entries = Vec::with_capacity(applied.won.len());
        for &Won {
            position,
            attempt_id,
            session_id,
        } in &applied.won
        {
            let item = items[position];
            let record = Record {
                payload_hash: item.pending.v1_hash.clone(),
                attempt_id,
                session_id,
            };
            if let Some(timeline) = self.cache_timeline() {
                cache_entries.push((
                    self.cache_key(timeline, &item.pending.input.idempotency_key),
                    record.encode(),
                ));
            }
            metrics::sync_offline_age(
                (self.received_at - item.checked.effective_at).num_milliseconds() as f64 / 1000.0,
            );
            out.push((
                item.pending.index,
                AttemptResult::applied(
                    item.pending.input.client_attempt_id,
                    SyncStatus::Acked,
                    attempt_id,
                    session_id,
                ),
            ));
        }
        if !cache_entries.is_empty()
            && let Err(e) = self
                .app
                .cache
                .set_many(&cache_entries, IDEMPOTENCY_CACHE_TTL)
                .await
        {
            metrics::cache_fallback("idempotency_store", e.kind());
        }
        for &position in &applied.closed {
            let item = items[position];
            out.push((
                item.pending.index,
                AttemptResult::rejected(
                    Some(item.pending.input.client_attempt_id),
                    SyncErrorCode::SessionClosed,
                    "the session is no longer active",
                ),
            ));
        }
        if !applied.lost.is_empty() {
            let keys: Vec<IdempotencyKey> = applied
                .lost
                .iter()
                .map(|&p| items[p].pending.input.idempotency_key)
                .collect();
            let records = self
                .store()
                .find_records(self.db(), self.user.id, &keys)
                .await?;
            if !records.is_empty() {
                self.confirm_durable().await?;
            }
            for &position in &applied.lost {
                let p = &items[position].pending;
                // The winner gave its claim back (its session closed): a retry decides.
                let record = records
                    .get(&p.input.idempotency_key)
                    .ok_or_else(AppError::unavailable)?;
                out.push((
                    p.index,
                    record.outcome_for(p.input.client_attempt_id, &p.v1_hash),
                ));
            }
        }
        Ok(out)
    }

    /// Metrics, and the duplicate/rejected counters added up off the write path.
    fn record_outcomes(&self, results: &[AttemptResult]) {
        let mut counts = Counts::default();
        for result in results {
            metrics::sync_item(
                result.status.rest_name(),
                result.error_code.map(|c| c.as_str()),
            );
            match result.status {
                // Counted in the applying transaction.
                SyncStatus::Acked => {}
                SyncStatus::Duplicate => counts.duplicate += 1,
                SyncStatus::Rejected => counts.rejected += 1,
            }
        }
        self.app
            .sync
            .add(self.db(), self.user.id, counts, self.received_at);
    }
}

fn sort_dedup<T: Ord>(ids: &mut Vec<T>) {
    ids.sort_unstable();
    ids.dedup();
}

/// The sessions (by id, or by offline id when the item names no id) and questions that
/// items name, each once.
struct FactIds {
    sessions: Vec<SessionId>,
    offline: Vec<OfflineSessionId>,
    questions: Vec<QuestionId>,
}

impl FactIds {
    fn of<'a>(items: impl Iterator<Item = &'a Pending> + Clone) -> FactIds {
        let mut sessions: Vec<SessionId> =
            items.clone().filter_map(|p| p.input.session_id).collect();
        let mut offline: Vec<OfflineSessionId> = items
            .clone()
            .filter(|p| p.input.session_id.is_none())
            .filter_map(|p| p.input.offline_session_id)
            .collect();
        let mut questions: Vec<QuestionId> = items.map(|p| p.input.question_id).collect();
        sort_dedup(&mut sessions);
        sort_dedup(&mut offline);
        sort_dedup(&mut questions);
        FactIds {
            sessions,
            offline,
            questions,
        }
    }
}

/// The parsers only let through indices that fit an `i32` (REST checks, GraphQL's type is
/// `Int`), and `rules::check` bounds them by the option count.
fn option_index(input: &AttemptInput) -> i32 {
    i32::try_from(input.selected_option_index).unwrap_or(i32::MAX)
}

/// A submitSession may have committed since the checks: the won sessions were locked
/// with the claim and their status read again (`states`).
fn recheck_sessions(
    placed: &[Placed],
    won: Vec<usize>,
    states: &HashMap<SessionId, SessionState>,
) -> SessionRecheck {
    let (open, closed) = won.into_iter().partition(|&p| {
        let session = placed[p].session;
        session.state == SessionState::Active
            && states.get(&session.id) == Some(&SessionState::Active)
    });
    SessionRecheck { open, closed }
}

/// Sessions for the offline sessions first seen in this batch; the scope comes from the
/// first item (in request order) that names the offline session.
fn new_offline_sessions(items: &[&Accepted]) -> Vec<store::NewSession> {
    let mut first_use: BTreeMap<OfflineSessionId, FirstUse> = BTreeMap::new();
    for item in items {
        if let Target::NewOffline(offline) = item.checked.target {
            let candidate = FirstUse {
                index: item.pending.index,
                scope: item.checked.scope,
            };
            let entry = first_use.entry(offline).or_insert(candidate);
            if candidate.index < entry.index {
                *entry = candidate;
            }
        }
    }
    first_use
        .into_iter()
        .map(|(offline, first)| store::NewSession {
            id: SessionId::new_v7(),
            offline_session_id: offline,
            scope: first.scope,
        })
        .collect()
}

/// The current answers of the open items' sessions and questions (`current`, if read
/// with the claims: those of every won claim), with the new attempts folded in.
async fn fold_into_answers(
    store: &Store,
    txn: &DatabaseTransaction,
    items: &[&Accepted],
    placed: &[Placed],
    open: &[usize],
    current: Option<HashMap<rules::AnswerKey, rules::Answer>>,
) -> Result<rules::AnswerPlan, TxnError> {
    let current = match current {
        Some(current) => current,
        None => {
            let mut question_ids: Vec<QuestionId> = open
                .iter()
                .map(|&p| items[p].pending.input.question_id)
                .collect();
            sort_dedup(&mut question_ids);
            let mut open_sessions: Vec<SessionId> =
                open.iter().map(|&p| placed[p].session.id).collect();
            sort_dedup(&mut open_sessions);
            store
                .current_answers(txn, &open_sessions, &question_ids)
                .await?
        }
    };
    let new_attempts: Vec<rules::NewAttempt> = open
        .iter()
        .map(|&p| new_attempt(items[p], placed[p]))
        .collect();
    Ok(rules::fold_answers(
        current,
        &new_attempts,
        &mut AnswerId::new_v7,
    ))
}

fn new_attempt(item: &Accepted, placed: Placed) -> rules::NewAttempt {
    rules::NewAttempt {
        attempt_id: placed.attempt_id,
        session_id: placed.session.id,
        question_id: item.pending.input.question_id,
        selected_option_index: option_index(&item.pending.input),
        is_correct: item.checked.is_correct,
        effective_at: item.checked.effective_at,
        order: item.pending.index,
    }
}

fn attempt_row(item: &Accepted, placed: Placed) -> store::AttemptRow {
    let input = &item.pending.input;
    let answered_at = input
        .answered_at
        .duration_trunc(Duration::microseconds(1))
        .unwrap_or(input.answered_at);
    store::AttemptRow {
        attempt_id: placed.attempt_id,
        key: input.idempotency_key,
        v1_hash: item.pending.v1_hash.clone(),
        session_id: placed.session.id,
        question_id: input.question_id,
        package_id: input.package_id,
        client_attempt_id: input.client_attempt_id,
        selected_option_index: option_index(input),
        is_correct: item.checked.is_correct,
        answered_at: answered_at.with_timezone(&Utc),
        answered_at_raw: answered_at.to_rfc3339(),
    }
}
