//! The PostgreSQL sync store: raw statements (`sql/*.sql`) with the per-item values as
//! array parameters.
//!
//! Each statement has one shape whatever the batch size: the plan of the idempotency
//! lookup uses both key columns whatever the table statistics say, and prepared statements
//! are reused. A batch's writes are one statement, and its attempts are sent their ids,
//! sessions and hashes rather than reading them back from the records just claimed: a
//! message past 16 kB costs nothing since sqlx 0.9.1 sets `TCP_NODELAY` (0.9.0 waited about
//! 40 ms for a delayed ACK on it, docs/benchmarks.md).
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value, sea_query::ArrayType,
};
use uuid::Uuid;

use super::{
    BatchWrites, ClaimSession, Lookup, NewSession, Opening, OpeningClaim, QuestionRow, SessionRow,
    SyncStore, array, uuids,
};
use crate::sync::rules::{Answer, AnswerKey, Record, Scope, SessionFact, SessionState};
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
/// The records as in [`FIND_RECORDS_PG`]; the sessions by id (the primary key) and by
/// offline id (one probe of the unique (user, offline session) index per id, as for the
/// records); the questions' scoring columns only (never the stem or the explanation, and
/// the options' count, not the options). Rows tagged by `kind`; a test checks the plan.
pub const FIND_RECORDS_AND_FACTS_PG: &str = include_str!("sql/find_records_and_facts.sql");
const BUMP_CHANGE_SEQ: &str = include_str!("sql/bump_change_seq.sql");
/// [`SyncStore::open_batch`]'s steps as one statement, the locks taken in that order (the
/// user's row first: nothing is inserted before it is locked):
/// - new offline sessions: `ON CONFLICT DO UPDATE` (a no-op) rather than `DO NOTHING`, so
///   that `RETURNING` also gives the winner's row when another request created it first;
/// - claims: a claim names its session by id, or by the id generated for a new offline
///   session, which becomes the id of the row created or found; hashes travel as bytes
///   (32 instead of 64);
/// - the won claims' sessions locked in id order: the sort under `FOR UPDATE` needs every
///   claim first, and `FOR UPDATE` reads the newest version of a session it waited for;
/// - the sessions and answers read by key (an index probe each: one `= ANY`, one
///   `LATERAL … LIMIT 1` per won (session, question)), never by a join the planner could
///   turn into a scan of a table that grows with every batch.
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
const CURRENT_ANSWERS: &str = include_str!("sql/current_answers.sql");
/// [`BatchWrites`] in one statement: the released records deleted, the attempts inserted,
/// `ackedCount` added, the current answers upserted and the sessions' scores added. No part
/// reads a row another part writes: the released keys are not the inserted ones, each
/// answer and session appears once, and the user's row and the sessions are already locked
/// by the opening. Its message, with a 100-item batch's values, passes 16 kB, which costs
/// nothing since sqlx 0.9.1 (see the module doc).
///
/// The attempts take `answered_at` from its RFC 3339 text (exact: it carries at most
/// microseconds), so each value is sent once. The released records are found by one probe
/// per key (as in [`FIND_RECORDS_PG`]) and deleted by `ctid`: a plain
/// `idempotency_key = ANY(…)` may be planned as a scan of the user's records.
pub const WRITE_BATCH_PG: &str = include_str!("sql/write_batch.sql");

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
        option_count: usize::try_from(r.try_get::<i32>("", "option_count")?).unwrap_or_default(),
        correct_index: r.try_get("", "correct_index")?,
        scope: Scope {
            year: r.try_get("", "year_id")?,
            block: r.try_get("", "block_id")?,
            theme: r.try_get("", "theme_id")?,
        },
        published: status == QuestionStatus::Published,
    })
}

/// [`WRITE_BATCH_PG`]'s parameters, in its numbering.
fn batch_values(user_id: UserId, writes: &BatchWrites, now: DateTime<Utc>, seq: i64) -> Vec<Value> {
    let rows = &writes.attempts;
    let answers = &writes.answers;
    let deltas = &writes.deltas;
    vec![
        // $1–$3
        user_id.into(),
        Value::BigInt(writes.skew_ms),
        now.into(),
        // $4–$10: the attempts
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
        // $11, $12
        Value::BigInt(Some(rows.len() as i64)),
        uuids(writes.released.iter().copied()),
        // $13–$15: what the claims of `open_batch` hold, written from here, not read back.
        uuids(rows.iter().map(|r| r.attempt_id)),
        uuids(rows.iter().map(|r| r.session_id)),
        array(
            ArrayType::Bytes,
            rows.iter()
                .map(|r| Value::Bytes(Some(r.v1_hash.to_bytes().to_vec()))),
        ),
        // $16–$23: the current answers
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
        // $24
        seq.into(),
        // $25–$27: the sessions' scores
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

    async fn open_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
        now: DateTime<Utc>,
    ) -> Result<Option<Opening>, DbErr> {
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

    async fn write_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        writes: &BatchWrites,
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        let nothing = writes.released.is_empty()
            && writes.attempts.is_empty()
            && writes.answers.is_empty()
            && writes.deltas.is_empty();
        if !nothing {
            txn.execute_raw(pg(WRITE_BATCH_PG, batch_values(user_id, writes, now, seq)))
                .await?;
        }
        Ok(())
    }
}
