//! The PostgreSQL sync store: raw statements (`sql/*.sql`) with the per-item values as
//! array parameters.
//!
//! Each statement has one shape whatever the batch size: the plan of the idempotency
//! lookup uses both key columns whatever the table statistics say, prepared statements are
//! reused, and every message stays well under the ~16 kB at which sqlx 0.9 (no
//! `TCP_NODELAY`) stalls on a delayed ACK: a 100-item batch binds at most ~13 kB, and the
//! attempts insert takes its ids and hashes from the idempotency records just claimed
//! instead of sending them twice.
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value, sea_query::ArrayType,
};
use uuid::Uuid;

use super::{
    AttemptRow, Claim, ClaimSession, Lookup, NewSession, Opening, OpeningClaim, QuestionRow,
    SessionRow, SyncStore, array, by_key, open_in_steps, option_count, uuids,
};
use crate::sync::rules::{Answer, AnswerKey, Record, Scope, ScoreDelta, SessionFact, SessionState};
use entity::{
    IdempotencyKey, OfflineSessionId, QuestionId, QuestionStatus, SessionId, SessionStatus, UserId,
};

/// The PostgreSQL idempotency lookup: one primary-key probe per key. A plain
/// `user_id = $1 AND idempotency_key = ANY($2)`, or a join with `unnest($2)`, is planned on
/// a table without statistics as a scan of all the user's records with the keys as a
/// filter, whose cost grows with the history; a `LATERAL … LIMIT 1` cannot be flattened
/// into such a join, so each key is an index lookup on both columns, whatever the
/// statistics or the plan cache say. A test checks the plan.
pub const FIND_RECORDS_PG: &str = include_str!("sql/find_records.sql");
/// By id: the primary key. By offline id: one probe of the unique (user, offline session)
/// index per id, as in [`FIND_RECORDS_PG`].
const FIND_SESSIONS: &str = include_str!("sql/find_sessions.sql");
/// Only the scoring columns (never the stem or the explanation).
const FIND_QUESTIONS: &str = include_str!("sql/find_questions.sql");
/// `FIND_SESSIONS` and `FIND_QUESTIONS` as one statement: rows tagged by `kind`.
const FIND_FACTS: &str = include_str!("sql/find_facts.sql");
/// `FIND_RECORDS_PG` and `FIND_FACTS` as one statement (the lookup is the same probe per
/// key; a test checks the plan): rows tagged by `kind`.
pub const FIND_RECORDS_AND_FACTS_PG: &str = include_str!("sql/find_records_and_facts.sql");
const BUMP_CHANGE_SEQ: &str = include_str!("sql/bump_change_seq.sql");
/// DO UPDATE (a no-op) rather than DO NOTHING so that RETURNING also gives the winner's
/// row when another request created it first: no read-back.
const CREATE_OFFLINE_SESSIONS: &str = include_str!("sql/create_offline_sessions.sql");
/// Hashes travel as bytes (32 instead of 64): half the size of the message.
const CLAIM: &str = include_str!("sql/claim.sql");
/// `CLAIM`, then the won claims' sessions locked in id order (`LOCK_SESSIONS`) in the same
/// statement: the sort under `FOR UPDATE` needs every claim first, so the locks are taken in
/// the order of the two statements; `FOR UPDATE` reads the newest version of a session it
/// waited for, as a statement of its own would. Rows tagged by `kind`.
const CLAIM_AND_LOCK: &str = include_str!("sql/claim_and_lock.sql");
/// `BUMP_CHANGE_SEQ`, `CREATE_OFFLINE_SESSIONS`, `CLAIM_AND_LOCK` and the current answers
/// of the won claims as one statement, the locks taken in that order (the user's row
/// first: nothing is inserted before it is locked). A claim names its session by id, or by
/// the id generated for a new offline session, which becomes the id of the row created or
/// found. The sessions and the answers are read by key (an index probe each: one
/// `= ANY`, one `LATERAL … LIMIT 1` per won (session, question)), never by a join the
/// planner could turn into a scan of a table that grows with every batch.
///
/// The statement reads with one snapshot, taken before it waited for the user's row lock:
/// the answers it reads are current only if no other writer of the user committed
/// meanwhile. Every such writer bumps the counter first, so `fresh` (the counter moved by
/// exactly our bump since the snapshot) says the answers can be used; otherwise they are
/// read again, under the locks now held. The claims (`ON CONFLICT` sees every committed
/// or in-flight key), the sessions created or found (`ON CONFLICT DO UPDATE`) and the
/// locked sessions' status (`FOR UPDATE` returns the newest version) do not depend on the
/// snapshot. Rows tagged by `kind`.
const OPEN_BATCH: &str = include_str!("sql/open_batch.sql");
/// New offline sessions of a batch above this many are created in a statement of their
/// own: each adds ~64 bytes to `OPEN_BATCH`'s message, which must stay under the size at
/// which sqlx stalls (see the module doc).
const MAX_SESSIONS_IN_OPENING: usize = 16;
/// `RELEASE` and `INSERT_ATTEMPTS` as one statement (the released keys are not the
/// inserted ones).
const RELEASE_AND_INSERT_ATTEMPTS: &str = include_str!("sql/release_and_insert_attempts.sql");
const RELEASE: &str = include_str!("sql/release.sql");
const LOCK_SESSIONS: &str = include_str!("sql/lock_sessions.sql");
const CURRENT_ANSWERS: &str = include_str!("sql/current_answers.sql");
/// Ids, session and hash come from the claims this transaction just inserted, and
/// `answered_at` from its RFC 3339 text (exact: it carries at most microseconds), so each
/// value is sent once. The user's row is already locked by `bump_change_seq`, so the
/// order of the two writes inside it does not matter, and the batch pays no round trip
/// for the counter.
const INSERT_ATTEMPTS: &str = include_str!("sql/insert_attempts.sql");
const WRITE_ANSWERS: &str = include_str!("sql/write_answers.sql");
const ADD_SCORES: &str = include_str!("sql/add_scores.sql");
/// `WRITE_ANSWERS` and `ADD_SCORES` as one statement (the sessions are already locked by
/// `lock_sessions`; neither write reads the other's rows).
const WRITE_ANSWERS_AND_SCORES: &str = include_str!("sql/write_answers_and_scores.sql");

/// The PostgreSQL sync store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Postgres;

fn pg(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// sea-query cannot bind an array holding NULLs (it panics), so `None` travels as a
/// sentinel that the SQL turns back into NULL with `NULLIF(x, <sentinel>)`: the nil UUID,
/// which no generated id ever is.
fn opt_uuids<T: Into<Uuid>>(items: impl IntoIterator<Item = Option<T>>) -> Value {
    uuids(items.into_iter().map(|u| u.map_or(Uuid::nil(), Into::into)))
}

/// Like `opt_uuids`, with `i32::MIN` (no year, block or theme id is negative).
fn opt_ints(items: impl IntoIterator<Item = Option<i32>>) -> Value {
    ints(items.into_iter().map(|i| i.unwrap_or(i32::MIN)))
}

fn ints(items: impl IntoIterator<Item = i32>) -> Value {
    array(
        ArrayType::Int,
        items.into_iter().map(|i| Value::Int(Some(i))),
    )
}

fn bools(items: impl IntoIterator<Item = bool>) -> Value {
    array(
        ArrayType::Bool,
        items.into_iter().map(|b| Value::Bool(Some(b))),
    )
}

fn session_row(r: &QueryResult) -> Result<SessionRow, DbErr> {
    let status: SessionStatus = r.try_get("", "status")?;
    Ok((
        SessionFact {
            id: r.try_get("", "id")?,
            state: SessionState::from(status),
        },
        r.try_get("", "offline_session_id")?,
    ))
}

fn record_row(r: &QueryResult, key_column: &str) -> Result<(IdempotencyKey, Record), DbErr> {
    Ok((
        r.try_get("", key_column)?,
        Record {
            payload_hash: r.try_get("", "payload_hash")?,
            attempt_id: r.try_get("", "attempt_id")?,
            session_id: r.try_get("", "session_id")?,
        },
    ))
}

fn answer_row(r: &QueryResult) -> Result<(AnswerKey, Answer), DbErr> {
    Ok((
        AnswerKey {
            session_id: r.try_get("", "session_id")?,
            question_id: r.try_get("", "question_id")?,
        },
        Answer {
            id: r.try_get("", "id")?,
            attempt_id: r.try_get("", "attempt_id")?,
            selected_option_index: r.try_get("", "selected_option_index")?,
            is_correct: r.try_get("", "is_correct")?,
            answered_at: r.try_get("", "answered_at")?,
            changed_count: r.try_get("", "changed_count")?,
            is_new: false,
        },
    ))
}

fn question_row(r: &QueryResult) -> Result<QuestionRow, DbErr> {
    let status: QuestionStatus = r.try_get("", "status")?;
    Ok(QuestionRow {
        id: r.try_get("", "id")?,
        option_count: option_count(r.try_get("", "options")?),
        correct_index: r.try_get("", "correct_index")?,
        scope: Scope {
            year: r.try_get("", "year_id")?,
            block: r.try_get("", "block_id")?,
            theme: r.try_get("", "theme_id")?,
        },
        published: status == QuestionStatus::Published,
    })
}

fn answer_values(
    user_id: UserId,
    answers: &[(AnswerKey, Answer)],
    now: DateTime<Utc>,
    seq: i64,
) -> Vec<Value> {
    vec![
        now.into(),
        uuids(answers.iter().map(|(_, a)| a.id)),
        uuids(answers.iter().map(|(k, _)| k.session_id)),
        uuids(answers.iter().map(|(k, _)| k.question_id)),
        uuids(answers.iter().map(|(_, a)| a.attempt_id)),
        ints(answers.iter().map(|(_, a)| a.selected_option_index)),
        bools(answers.iter().map(|(_, a)| a.is_correct)),
        array(
            ArrayType::ChronoDateTimeUtc,
            answers
                .iter()
                .map(|(_, a)| Value::ChronoDateTimeUtc(Some(a.answered_at))),
        ),
        ints(answers.iter().map(|(_, a)| a.changed_count)),
        user_id.into(),
        seq.into(),
    ]
}

fn attempt_values(
    user_id: UserId,
    rows: &[AttemptRow],
    skew_ms: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Value> {
    vec![
        user_id.into(),
        Value::BigInt(skew_ms),
        now.into(),
        uuids(rows.iter().map(|r| r.key)),
        uuids(rows.iter().map(|r| r.question_id)),
        opt_uuids(rows.iter().map(|r| r.package_id)),
        uuids(rows.iter().map(|r| r.client_attempt_id)),
        ints(rows.iter().map(|r| r.selected_option_index)),
        bools(rows.iter().map(|r| r.is_correct)),
        array(
            ArrayType::String,
            rows.iter()
                .map(|r| Value::String(Some(r.answered_at_raw.clone()))),
        ),
        Value::BigInt(Some(rows.len() as i64)),
    ]
}

fn claim_values(user_id: UserId, claims: &[Claim], now: DateTime<Utc>) -> Vec<Value> {
    let sorted = by_key(claims);
    // A `PayloadHash` is 64 hex digits by construction: 32 bytes.
    let hashes = sorted
        .iter()
        .map(|c| Value::Bytes(Some(c.v1_hash.to_bytes().to_vec())));
    vec![
        user_id.into(),
        now.into(),
        uuids(sorted.iter().map(|c| c.key)),
        array(ArrayType::Bytes, hashes),
        uuids(sorted.iter().map(|c| c.attempt_id)),
        uuids(sorted.iter().map(|c| c.session_id)),
    ]
}

fn delta_values(deltas: &[(SessionId, ScoreDelta)]) -> [Value; 3] {
    [
        uuids(deltas.iter().map(|(id, _)| *id)),
        ints(deltas.iter().map(|(_, d)| d.answered)),
        ints(deltas.iter().map(|(_, d)| d.correct)),
    ]
}

impl SyncStore for Postgres {
    async fn find_records(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, Record>, DbErr> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = db
            .query_all_raw(pg(
                FIND_RECORDS_PG,
                vec![user_id.into(), uuids(keys.iter().copied())],
            ))
            .await?;
        rows.iter()
            .map(|r| record_row(r, "idempotency_key"))
            .collect()
    }

    async fn find_sessions(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
    ) -> Result<Vec<SessionRow>, DbErr> {
        if ids.is_empty() && offline_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = db
            .query_all_raw(pg(
                FIND_SESSIONS,
                vec![
                    user_id.into(),
                    uuids(ids.iter().copied()),
                    uuids(offline_ids.iter().copied()),
                ],
            ))
            .await?;
        rows.iter().map(session_row).collect()
    }

    async fn find_questions(
        &self,
        db: &impl ConnectionTrait,
        ids: &[QuestionId],
    ) -> Result<Vec<QuestionRow>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = db
            .query_all_raw(pg(FIND_QUESTIONS, vec![uuids(ids.iter().copied())]))
            .await?;
        rows.iter().map(question_row).collect()
    }

    async fn find_sessions_and_questions(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<(Vec<SessionRow>, Vec<QuestionRow>), DbErr> {
        if question_ids.is_empty() {
            let sessions = self.find_sessions(db, user_id, ids, offline_ids).await?;
            return Ok((sessions, Vec::new()));
        }
        let rows = db
            .query_all_raw(pg(
                FIND_FACTS,
                vec![
                    user_id.into(),
                    uuids(ids.iter().copied()),
                    uuids(offline_ids.iter().copied()),
                    uuids(question_ids.iter().copied()),
                ],
            ))
            .await?;
        let mut sessions = Vec::new();
        let mut questions = Vec::new();
        for r in &rows {
            let kind: String = r.try_get("", "kind")?;
            if kind == "session" {
                sessions.push(session_row(r)?);
            } else {
                questions.push(question_row(r)?);
            }
        }
        Ok((sessions, questions))
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
        let rows = db
            .query_all_raw(pg(
                FIND_RECORDS_AND_FACTS_PG,
                vec![
                    user_id.into(),
                    uuids(keys.iter().copied()),
                    uuids(ids.iter().copied()),
                    uuids(offline_ids.iter().copied()),
                    uuids(question_ids.iter().copied()),
                ],
            ))
            .await?;
        let mut lookup = Lookup::default();
        for r in &rows {
            let kind: String = r.try_get("", "kind")?;
            match kind.as_str() {
                "record" => {
                    let (key, record) = record_row(r, "id")?;
                    lookup.records.insert(key, record);
                }
                "session" => lookup.sessions.push(session_row(r)?),
                _ => lookup.questions.push(question_row(r)?),
            }
        }
        Ok(lookup)
    }

    async fn open_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
        now: DateTime<Utc>,
    ) -> Result<Option<Opening>, DbErr> {
        if sessions.len() > MAX_SESSIONS_IN_OPENING || claims.is_empty() {
            return open_in_steps(self, txn, user_id, sessions, claims, now).await;
        }
        // A claim of a new offline session names the id generated for it; the statement
        // swaps in the id of the row created or found. One whose offline session is not
        // among those to create cannot be made.
        let generated: HashMap<OfflineSessionId, SessionId> = sessions
            .iter()
            .map(|s| (s.offline_session_id, s.id))
            .collect();
        let mut sorted: Vec<(&OpeningClaim, SessionId)> = claims
            .iter()
            .filter_map(|c| match c.session {
                ClaimSession::Known(id) => Some((c, id)),
                ClaimSession::New(offline) => Some((c, *generated.get(&offline)?)),
            })
            .collect();
        sorted.sort_by_key(|(c, _)| c.key);
        let hashes = sorted
            .iter()
            .map(|(c, _)| Value::Bytes(Some(c.v1_hash.to_bytes().to_vec())));
        let rows = txn
            .query_all_raw(pg(
                OPEN_BATCH,
                vec![
                    user_id.into(),
                    now.into(),
                    uuids(sessions.iter().map(|s| s.id)),
                    uuids(sessions.iter().map(|s| s.offline_session_id)),
                    ints(sessions.iter().map(|s| s.scope.year)),
                    opt_ints(sessions.iter().map(|s| s.scope.block)),
                    opt_ints(sessions.iter().map(|s| s.scope.theme)),
                    uuids(sorted.iter().map(|(c, _)| c.key)),
                    array(ArrayType::Bytes, hashes),
                    uuids(sorted.iter().map(|(c, _)| c.attempt_id)),
                    uuids(sorted.iter().map(|&(_, session)| session)),
                    uuids(sorted.iter().map(|(c, _)| c.question_id)),
                ],
            ))
            .await?;
        let mut seq = None;
        let mut fresh = false;
        let mut opening = Opening::default();
        let mut answers = HashMap::new();
        for r in &rows {
            let kind: String = r.try_get("", "kind")?;
            match kind.as_str() {
                "seq" => {
                    seq = Some(r.try_get::<i64>("", "seq")?);
                    fresh = r.try_get("", "fresh")?;
                }
                "created" => {
                    let (session, offline) = session_row(r)?;
                    opening.states.insert(session.id, session.state);
                    if let Some(offline) = offline {
                        opening.created.insert(offline, session);
                    }
                }
                "claim" => {
                    opening.won.insert(r.try_get("", "id")?);
                }
                "lock" => {
                    let status: SessionStatus = r.try_get("", "status")?;
                    opening
                        .states
                        .insert(r.try_get("", "id")?, SessionState::from(status));
                }
                _ => {
                    let (key, answer) = answer_row(r)?;
                    answers.insert(key, answer);
                }
            }
        }
        let Some(seq) = seq else {
            return Ok(None);
        };
        opening.seq = seq;
        opening.answers = fresh.then_some(answers);
        Ok(Some(opening))
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
        if rows.is_empty() {
            return self.release(txn, user_id, released).await;
        }
        if released.is_empty() {
            // Not a DELETE with an empty key list: a generic plan of it may be a scan of
            // every record.
            return self.insert_attempts(txn, user_id, rows, skew_ms, now).await;
        }
        let mut values = attempt_values(user_id, rows, skew_ms, now);
        values.push(uuids(released.iter().copied()));
        txn.execute_raw(pg(RELEASE_AND_INSERT_ATTEMPTS, values))
            .await?;
        Ok(())
    }

    async fn bump_change_seq(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
    ) -> Result<Option<i64>, DbErr> {
        let row = txn
            .query_one_raw(pg(BUMP_CHANGE_SEQ, vec![user_id.into()]))
            .await?;
        row.map(|r| r.try_get::<i64>("", "change_seq")).transpose()
    }

    async fn create_offline_sessions(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<HashMap<OfflineSessionId, SessionFact>, DbErr> {
        if sessions.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = txn
            .query_all_raw(pg(
                CREATE_OFFLINE_SESSIONS,
                vec![
                    user_id.into(),
                    now.into(),
                    uuids(sessions.iter().map(|s| s.id)),
                    uuids(sessions.iter().map(|s| s.offline_session_id)),
                    ints(sessions.iter().map(|s| s.scope.year)),
                    opt_ints(sessions.iter().map(|s| s.scope.block)),
                    opt_ints(sessions.iter().map(|s| s.scope.theme)),
                    seq.into(),
                ],
            ))
            .await?;
        let mut out = HashMap::new();
        for r in &rows {
            let (session, offline) = session_row(r)?;
            if let Some(offline) = offline {
                out.insert(offline, session);
            }
        }
        Ok(out)
    }

    async fn claim(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        claims: &[Claim],
        now: DateTime<Utc>,
    ) -> Result<HashSet<IdempotencyKey>, DbErr> {
        if claims.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = txn
            .query_all_raw(pg(CLAIM, claim_values(user_id, claims, now)))
            .await?;
        rows.iter()
            .map(|r| r.try_get::<IdempotencyKey>("", "idempotency_key"))
            .collect()
    }

    async fn claim_and_lock(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        claims: &[Claim],
        now: DateTime<Utc>,
    ) -> Result<(HashSet<IdempotencyKey>, HashMap<SessionId, SessionState>), DbErr> {
        if claims.is_empty() {
            return Ok((HashSet::new(), HashMap::new()));
        }
        let rows = txn
            .query_all_raw(pg(CLAIM_AND_LOCK, claim_values(user_id, claims, now)))
            .await?;
        let mut won = HashSet::new();
        let mut states = HashMap::new();
        for r in &rows {
            let kind: String = r.try_get("", "kind")?;
            if kind == "claim" {
                won.insert(r.try_get("", "id")?);
            } else {
                let status: SessionStatus = r.try_get("", "status")?;
                states.insert(r.try_get("", "id")?, SessionState::from(status));
            }
        }
        Ok((won, states))
    }

    async fn release(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<(), DbErr> {
        if keys.is_empty() {
            return Ok(());
        }
        txn.execute_raw(pg(
            RELEASE,
            vec![user_id.into(), uuids(keys.iter().copied())],
        ))
        .await?;
        Ok(())
    }

    async fn lock_sessions(
        &self,
        txn: &impl ConnectionTrait,
        ids: &[SessionId],
    ) -> Result<HashMap<SessionId, SessionState>, DbErr> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = txn
            .query_all_raw(pg(LOCK_SESSIONS, vec![uuids(ids.iter().copied())]))
            .await?;
        rows.iter()
            .map(|r| {
                let status: SessionStatus = r.try_get("", "status")?;
                Ok((r.try_get("", "id")?, SessionState::from(status)))
            })
            .collect()
    }

    async fn current_answers(
        &self,
        txn: &impl ConnectionTrait,
        session_ids: &[SessionId],
        question_ids: &[QuestionId],
    ) -> Result<HashMap<AnswerKey, Answer>, DbErr> {
        if session_ids.is_empty() || question_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = txn
            .query_all_raw(pg(
                CURRENT_ANSWERS,
                vec![
                    uuids(session_ids.iter().copied()),
                    uuids(question_ids.iter().copied()),
                ],
            ))
            .await?;
        rows.iter().map(answer_row).collect()
    }

    async fn insert_attempts(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        rows: &[AttemptRow],
        skew_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        txn.execute_raw(pg(
            INSERT_ATTEMPTS,
            attempt_values(user_id, rows, skew_ms, now),
        ))
        .await?;
        Ok(())
    }

    async fn write_answers(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        answers: &[(AnswerKey, Answer)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        if answers.is_empty() {
            return Ok(());
        }
        txn.execute_raw(pg(WRITE_ANSWERS, answer_values(user_id, answers, now, seq)))
            .await?;
        Ok(())
    }

    async fn add_scores(
        &self,
        txn: &impl ConnectionTrait,
        deltas: &[(SessionId, ScoreDelta)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        if deltas.is_empty() {
            return Ok(());
        }
        let [ids, answered, correct] = delta_values(deltas);
        txn.execute_raw(pg(
            ADD_SCORES,
            vec![now.into(), ids, answered, correct, seq.into()],
        ))
        .await?;
        Ok(())
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
        if answers.is_empty() || deltas.is_empty() {
            self.write_answers(txn, user_id, answers, now, seq).await?;
            return self.add_scores(txn, deltas, now, seq).await;
        }
        let mut values = answer_values(user_id, answers, now, seq);
        values.extend(delta_values(deltas));
        txn.execute_raw(pg(WRITE_ANSWERS_AND_SCORES, values))
            .await?;
        Ok(())
    }
}
