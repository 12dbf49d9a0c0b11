//! The storage layer of sync: every read and write is one set-wise statement.
//!
//! On PostgreSQL each statement has one shape whatever the batch size: the per-item values
//! travel as array parameters (`= ANY($n)`, `unnest(...)`), so the plan of the idempotency
//! lookup uses both key columns whatever the table statistics say, prepared statements are
//! reused, and every message stays well under the ~16 kB at which sqlx 0.9 (no
//! `TCP_NODELAY`) stalls on a delayed ACK: a 100-item batch binds at most ~13 kB, and the
//! attempts insert takes its ids and hashes from the idempotency records just claimed
//! instead of sending them twice. SQLite is in-process (no network, no planner statistics
//! to go stale) and has no arrays: there the same operations are sea-orm statements.
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, Statement, TryInsertResult, Value,
    sea_query::{ArrayType, Expr, ExprTrait, OnConflict},
};
use uuid::Uuid;

use crate::replication::Commit;

use super::rules::{Answer, AnswerKey, Record, Scope, ScoreDelta, SessionFact, SessionState};
use entity::{
    AttemptId, ClientAttemptId, IdempotencyKey, OfflineSessionId, PackageId, PayloadHash,
    QuestionId, QuestionStatus, SessionId, SessionMode, SessionStatus, UserId, attempt,
    idempotency_record, question, session_answer, test_session, user,
};

/// A `uuid[]` parameter: typed ids become bare UUIDs here, at the raw-SQL boundary.
pub fn uuids<T: Into<Uuid>>(items: impl IntoIterator<Item = T>) -> Value {
    array(
        ArrayType::Uuid,
        items.into_iter().map(|u| Value::Uuid(Some(u.into()))),
    )
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

fn array(kind: ArrayType, items: impl Iterator<Item = Value>) -> Value {
    Value::Array(kind, Some(Box::new(items.collect())))
}

fn pg(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn session_state(status: &SessionStatus) -> SessionState {
    SessionState::from(*status)
}

/// The PostgreSQL idempotency lookup: one primary-key probe per key. A plain
/// `user_id = $1 AND idempotency_key = ANY($2)`, or a join with `unnest($2)`, is planned on
/// a table without statistics as a scan of all the user's records with the keys as a
/// filter, whose cost grows with the history; a `LATERAL … LIMIT 1` cannot be flattened
/// into such a join, so each key is an index lookup on both columns, whatever the
/// statistics or the plan cache say. A test checks the plan.
pub const FIND_RECORDS_PG: &str = "SELECT r.idempotency_key, r.payload_hash, r.attempt_id, r.session_id \
     FROM unnest($2::uuid[]) AS k(key) CROSS JOIN LATERAL \
     (SELECT * FROM idempotency_records i WHERE i.user_id = $1 AND i.idempotency_key = k.key \
     LIMIT 1) AS r";

/// Idempotency records of `keys` for `user`: O(batch) whatever the user's history.
pub async fn find_records(
    db: &impl ConnectionTrait,
    user_id: UserId,
    keys: &[IdempotencyKey],
) -> Result<HashMap<IdempotencyKey, Record>, DbErr> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(IdempotencyKey, PayloadHash, AttemptId, SessionId)> =
        if db.get_database_backend() == DbBackend::Postgres {
            let rows = db
                .query_all_raw(pg(
                    FIND_RECORDS_PG,
                    vec![user_id.into(), uuids(keys.iter().copied())],
                ))
                .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get("", "idempotency_key")?,
                        r.try_get("", "payload_hash")?,
                        r.try_get("", "attempt_id")?,
                        r.try_get("", "session_id")?,
                    ))
                })
                .collect::<Result<_, DbErr>>()?
        } else {
            idempotency_record::Entity::find()
                .select_only()
                .columns([
                    idempotency_record::Column::IdempotencyKey,
                    idempotency_record::Column::PayloadHash,
                    idempotency_record::Column::AttemptId,
                    idempotency_record::Column::SessionId,
                ])
                .filter(idempotency_record::Column::UserId.eq(user_id))
                .filter(idempotency_record::Column::IdempotencyKey.is_in(keys.iter().copied()))
                .into_tuple()
                .all(db)
                .await?
        };
    Ok(rows
        .into_iter()
        .map(|(key, payload_hash, attempt_id, session_id)| {
            (
                key,
                Record {
                    payload_hash,
                    attempt_id,
                    session_id,
                },
            )
        })
        .collect())
}

/// The user's sessions named by id or by offline session id.
pub async fn find_sessions(
    db: &impl ConnectionTrait,
    user_id: UserId,
    ids: &[SessionId],
    offline_ids: &[OfflineSessionId],
) -> Result<Vec<(SessionFact, Option<OfflineSessionId>)>, DbErr> {
    if ids.is_empty() && offline_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(SessionId, Option<OfflineSessionId>, SessionStatus)> = if db
        .get_database_backend()
        == DbBackend::Postgres
    {
        let rows = db
            .query_all_raw(pg(
                // By id: the primary key. By offline id: one probe of the unique
                // (user, offline session) index per id, as in `FIND_RECORDS_PG`.
                "SELECT id, offline_session_id, status FROM test_sessions \
                 WHERE id = ANY($2) AND user_id = $1 \
                 UNION SELECT s.id, s.offline_session_id, s.status \
                 FROM unnest($3::uuid[]) AS o(offline) CROSS JOIN LATERAL \
                 (SELECT * FROM test_sessions t WHERE t.user_id = $1 \
                 AND t.offline_session_id = o.offline LIMIT 1) AS s",
                vec![
                    user_id.into(),
                    uuids(ids.iter().copied()),
                    uuids(offline_ids.iter().copied()),
                ],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "id")?,
                    r.try_get("", "offline_session_id")?,
                    r.try_get("", "status")?,
                ))
            })
            .collect::<Result<_, DbErr>>()?
    } else {
        test_session::Entity::find()
            .select_only()
            .columns([
                test_session::Column::Id,
                test_session::Column::OfflineSessionId,
                test_session::Column::Status,
            ])
            .filter(test_session::Column::UserId.eq(user_id))
            .filter(
                Condition::any()
                    .add(test_session::Column::Id.is_in(ids.iter().copied()))
                    .add(test_session::Column::OfflineSessionId.is_in(offline_ids.iter().copied())),
            )
            .into_tuple()
            .all(db)
            .await?
    };
    Ok(rows
        .into_iter()
        .map(|(id, offline, status)| {
            (
                SessionFact {
                    id,
                    state: session_state(&status),
                },
                offline,
            )
        })
        .collect())
}

/// A question's scoring data as stored now.
pub struct QuestionRow {
    pub id: QuestionId,
    pub option_count: usize,
    pub correct_index: i32,
    pub scope: Scope,
    pub published: bool,
}

pub async fn find_questions(
    db: &impl ConnectionTrait,
    ids: &[QuestionId],
) -> Result<Vec<QuestionRow>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = question::Entity::find();
    query = if db.get_database_backend() == DbBackend::Postgres {
        query.filter(Expr::cust_with_values(
            "\"questions\".\"id\" = ANY($1)",
            [uuids(ids.iter().copied())],
        ))
    } else {
        query.filter(question::Column::Id.is_in(ids.iter().copied()))
    };
    let rows = query.all(db).await?;
    Ok(rows
        .into_iter()
        .map(|q| QuestionRow {
            id: q.id,
            option_count: crate::questions::options_of(&q).len(),
            correct_index: q.correct_index,
            scope: Scope {
                year: q.year_id,
                block: q.block_id,
                theme: q.theme_id,
            },
            published: q.status == QuestionStatus::Published,
        })
        .collect())
}

/// Which of these (not PUBLISHED) questions some published package still holds: indexed
/// reads of the question → package index, whatever the size of the bank.
pub async fn in_published_packages(
    db: &impl ConnectionTrait,
    ids: &[QuestionId],
) -> Result<HashSet<QuestionId>, DbErr> {
    crate::access::index::in_published_packages(db, ids).await
}

/// Bumps the user's change counter and returns its new value: the first statement of every
/// transaction that changes one of the user's sessions or answers. On PostgreSQL the
/// UPDATE takes the user's row lock until commit, so the user's writers commit in counter
/// order (see `docs/architecture.md`, the pull feed); on SQLite the write lock already
/// serialises every writer. `None`: no such user.
pub async fn bump_change_seq(
    txn: &impl ConnectionTrait,
    user_id: UserId,
) -> Result<Option<i64>, DbErr> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "UPDATE users SET change_seq = change_seq + 1 WHERE id = $1 RETURNING change_seq"
        }
        _ => "UPDATE users SET change_seq = change_seq + 1 WHERE id = ? RETURNING change_seq",
    };
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [user_id.into()],
        ))
        .await?;
    row.map(|r| r.try_get::<i64>("", "change_seq")).transpose()
}

/// A server session to create for an offline session seen for the first time.
pub struct NewSession {
    pub id: SessionId,
    pub offline_session_id: OfflineSessionId,
    pub scope: Scope,
}

/// Creates the sessions (mode TUTOR, ACTIVE) of first-seen offline sessions, or finds the
/// one a concurrent request created: the unique (user, offline session) key decides.
/// Returns each offline session's server session.
pub async fn create_offline_sessions(
    txn: &impl ConnectionTrait,
    user_id: UserId,
    sessions: &[NewSession],
    now: DateTime<Utc>,
    seq: i64,
) -> Result<HashMap<OfflineSessionId, SessionFact>, DbErr> {
    if sessions.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(SessionId, Option<OfflineSessionId>, SessionStatus)> =
        if txn.get_database_backend() == DbBackend::Postgres {
            // DO UPDATE (a no-op) rather than DO NOTHING so that RETURNING also gives the
            // winner's row when another request created it first: no read-back.
            let rows = txn
                .query_all_raw(pg(
                    "INSERT INTO test_sessions (id, user_id, offline_session_id, mode, status, \
                     year, block_id, theme_id, total_questions, answered_count, correct_count, \
                     started_at, updated_at, change_seq) \
                     SELECT i, $1, o, 'TUTOR', 'ACTIVE', y, NULLIF(b, -2147483648), \
                     NULLIF(t, -2147483648), 0, 0, 0, $2, $2, $8 \
                     FROM unnest($3::uuid[], $4::uuid[], $5::int4[], $6::int4[], $7::int4[]) \
                     AS u(i, o, y, b, t) ORDER BY o \
                     ON CONFLICT (user_id, offline_session_id) \
                     DO UPDATE SET updated_at = test_sessions.updated_at \
                     RETURNING id, offline_session_id, status",
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
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get("", "id")?,
                        r.try_get("", "offline_session_id")?,
                        r.try_get("", "status")?,
                    ))
                })
                .collect::<Result<_, DbErr>>()?
        } else {
            let models = sessions.iter().map(|s| test_session::ActiveModel {
                id: Set(s.id),
                user_id: Set(user_id),
                offline_session_id: Set(Some(s.offline_session_id)),
                mode: Set(SessionMode::Tutor),
                status: Set(SessionStatus::Active),
                year: Set(s.scope.year),
                block_id: Set(s.scope.block),
                theme_id: Set(s.scope.theme),
                total_questions: Set(0),
                answered_count: Set(0),
                correct_count: Set(0),
                started_at: Set(now),
                submitted_at: Set(None),
                updated_at: Set(now),
                change_seq: Set(seq),
            });
            test_session::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::columns([
                        test_session::Column::UserId,
                        test_session::Column::OfflineSessionId,
                    ])
                    .value(
                        test_session::Column::UpdatedAt,
                        Expr::col((test_session::Entity, test_session::Column::UpdatedAt)),
                    )
                    .to_owned(),
                )
                .exec_with_returning(txn)
                .await?
                .into_iter()
                .map(|m| (m.id, m.offline_session_id, m.status))
                .collect()
        };
    Ok(rows
        .into_iter()
        .filter_map(|(id, offline, status)| {
            offline.map(|o| {
                (
                    o,
                    SessionFact {
                        id,
                        state: session_state(&status),
                    },
                )
            })
        })
        .collect())
}

/// One idempotency claim.
pub struct Claim {
    pub key: IdempotencyKey,
    pub v1_hash: PayloadHash,
    pub attempt_id: AttemptId,
    pub session_id: SessionId,
}

/// Claims the keys (`ON CONFLICT DO NOTHING`): returns those this transaction won. A key
/// another request holds is not ours to apply; on PostgreSQL the insert waits for that
/// request to finish, so a loser then reads a committed record. Claims go in key order,
/// so concurrent batches take the row locks in one order.
pub async fn claim(
    txn: &impl ConnectionTrait,
    user_id: UserId,
    claims: &[Claim],
    now: DateTime<Utc>,
) -> Result<HashSet<IdempotencyKey>, DbErr> {
    if claims.is_empty() {
        return Ok(HashSet::new());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        // Hashes travel as bytes (32 instead of 64): half the size of the message. A
        // `PayloadHash` is 64 hex digits by construction, so this cannot fail.
        let hashes = claims
            .iter()
            .map(|c| Value::Bytes(Some(c.v1_hash.to_bytes().to_vec())));
        let rows = txn
            .query_all_raw(pg(
                "INSERT INTO idempotency_records \
                 (user_id, idempotency_key, payload_hash, attempt_id, session_id, created_at) \
                 SELECT $1, k, encode(h, 'hex'), a, s, $2 \
                 FROM unnest($3::uuid[], $4::bytea[], $5::uuid[], $6::uuid[]) AS u(k, h, a, s) \
                 ORDER BY k \
                 ON CONFLICT (user_id, idempotency_key) DO NOTHING \
                 RETURNING idempotency_key",
                vec![
                    user_id.into(),
                    now.into(),
                    uuids(claims.iter().map(|c| c.key)),
                    array(ArrayType::Bytes, hashes),
                    uuids(claims.iter().map(|c| c.attempt_id)),
                    uuids(claims.iter().map(|c| c.session_id)),
                ],
            ))
            .await?;
        return rows
            .iter()
            .map(|r| r.try_get::<IdempotencyKey>("", "idempotency_key"))
            .collect();
    }
    let mut sorted: Vec<&Claim> = claims.iter().collect();
    sorted.sort_by_key(|c| c.key);
    let models = sorted.iter().map(|c| idempotency_record::ActiveModel {
        user_id: Set(user_id),
        idempotency_key: Set(c.key),
        payload_hash: Set(c.v1_hash.clone()),
        attempt_id: Set(c.attempt_id),
        session_id: Set(c.session_id),
        created_at: Set(now),
    });
    let rows = idempotency_record::Entity::insert_many(models)
        .on_conflict(
            OnConflict::columns([
                idempotency_record::Column::UserId,
                idempotency_record::Column::IdempotencyKey,
            ])
            .do_nothing()
            .to_owned(),
        )
        .try_insert()
        .exec_with_returning_many(txn)
        .await?;
    Ok(match rows {
        TryInsertResult::Inserted(rows) => rows.into_iter().map(|r| r.idempotency_key).collect(),
        TryInsertResult::Conflicted | TryInsertResult::Empty => HashSet::new(),
    })
}

/// Gives back claims of items that will not be applied (their session closed meanwhile):
/// a rejected item does not use up its key.
pub async fn release(
    txn: &impl ConnectionTrait,
    user_id: UserId,
    keys: &[IdempotencyKey],
) -> Result<(), DbErr> {
    if keys.is_empty() {
        return Ok(());
    }
    idempotency_record::Entity::delete_many()
        .filter(idempotency_record::Column::UserId.eq(user_id))
        .filter(idempotency_record::Column::IdempotencyKey.is_in(keys.iter().copied()))
        .exec(txn)
        .await?;
    Ok(())
}

/// Locks the sessions (PostgreSQL; on SQLite the claim already took the one write lock)
/// so that their answers stay current until commit, and reads their status again: a
/// `submitSession` may have committed since the checks.
pub async fn lock_sessions(
    txn: &impl ConnectionTrait,
    ids: &[SessionId],
) -> Result<HashMap<SessionId, SessionState>, DbErr> {
    let rows: Vec<(SessionId, SessionStatus)> = if txn.get_database_backend() == DbBackend::Postgres
    {
        let rows = txn
            .query_all_raw(pg(
                "SELECT id, status FROM test_sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                vec![uuids(ids.iter().copied())],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "status")?)))
            .collect::<Result<_, DbErr>>()?
    } else {
        test_session::Entity::find()
            .select_only()
            .columns([test_session::Column::Id, test_session::Column::Status])
            .filter(test_session::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?
    };
    Ok(rows
        .into_iter()
        .map(|(id, status)| (id, session_state(&status)))
        .collect())
}

/// Current answers of the sessions × questions touched (a superset of the pairs).
pub async fn current_answers(
    txn: &impl ConnectionTrait,
    session_ids: &[SessionId],
    question_ids: &[QuestionId],
) -> Result<HashMap<AnswerKey, Answer>, DbErr> {
    let mut query = session_answer::Entity::find();
    query = if txn.get_database_backend() == DbBackend::Postgres {
        query.filter(Expr::cust_with_values(
            "\"session_answers\".\"session_id\" = ANY($1) AND \"session_answers\".\"question_id\" = ANY($2)",
            [uuids(session_ids.iter().copied()), uuids(question_ids.iter().copied())],
        ))
    } else {
        query
            .filter(session_answer::Column::SessionId.is_in(session_ids.iter().copied()))
            .filter(session_answer::Column::QuestionId.is_in(question_ids.iter().copied()))
    };
    Ok(query
        .all(txn)
        .await?
        .into_iter()
        .map(|a| {
            (
                AnswerKey {
                    session_id: a.session_id,
                    question_id: a.question_id,
                },
                Answer {
                    id: a.id,
                    attempt_id: a.attempt_id,
                    selected_option_index: a.selected_option_index,
                    is_correct: a.is_correct,
                    answered_at: a.answered_at,
                    changed_count: a.changed_count,
                    is_new: false,
                },
            )
        })
        .collect())
}

/// One row of the attempt history.
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

/// Appends the attempt history of the won claims and adds them to the user's `ackedCount`
/// (exact: in the applying transaction). On PostgreSQL both are one statement: the user's
/// row is already locked by `bump_change_seq`, so the order of the two writes inside it
/// does not matter, and the batch pays no round trip for the counter.
pub async fn insert_attempts(
    txn: &impl ConnectionTrait,
    user_id: UserId,
    rows: &[AttemptRow],
    skew_ms: Option<i64>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        // Ids, session and hash come from the claims this transaction just inserted, and
        // `answered_at` from its RFC 3339 text (exact: it carries at most microseconds), so
        // each value is sent once: ~13 kB for 100 rows.
        txn.execute_raw(pg(
            "WITH counted AS (UPDATE users SET acked_count = acked_count + $11, \
             last_sync_at = CASE WHEN last_sync_at IS NULL OR last_sync_at < $3 THEN $3 \
             ELSE last_sync_at END WHERE id = $1) \
             INSERT INTO attempts (id, user_id, session_id, question_id, package_id, \
             client_attempt_id, idempotency_key, payload_hash, selected_option_index, \
             is_correct, answered_at, answered_at_raw, clock_skew_ms, received_at) \
             SELECT r.attempt_id, r.user_id, r.session_id, u.q, \
             NULLIF(u.p, '00000000-0000-0000-0000-000000000000'::uuid), u.c, r.idempotency_key, \
             r.payload_hash, u.o, u.ok, u.raw::timestamptz, u.raw, $2, $3 \
             FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::uuid[], $8::int4[], \
             $9::bool[], $10::text[]) AS u(k, q, p, c, o, ok, raw) \
             CROSS JOIN LATERAL (SELECT * FROM idempotency_records i \
             WHERE i.user_id = $1 AND i.idempotency_key = u.k LIMIT 1) AS r",
            vec![
                user_id.into(),
                Value::BigInt(skew_ms),
                now.into(),
                uuids(rows.iter().map(|r| r.key)),
                uuids(rows.iter().map(|r| r.question_id)),
                opt_uuids(rows.iter().map(|r| r.package_id)),
                uuids(rows.iter().map(|r| r.client_attempt_id)),
                ints(rows.iter().map(|r| r.selected_option_index)),
                array(
                    ArrayType::Bool,
                    rows.iter().map(|r| Value::Bool(Some(r.is_correct))),
                ),
                array(
                    ArrayType::String,
                    rows.iter()
                        .map(|r| Value::String(Some(r.answered_at_raw.clone()))),
                ),
                Value::BigInt(Some(rows.len() as i64)),
            ],
        ))
        .await?;
        return Ok(());
    }
    let models = rows.iter().map(|r| attempt::ActiveModel {
        id: Set(r.attempt_id),
        user_id: Set(user_id),
        session_id: Set(r.session_id),
        question_id: Set(r.question_id),
        package_id: Set(r.package_id),
        client_attempt_id: Set(r.client_attempt_id),
        idempotency_key: Set(r.key),
        payload_hash: Set(r.v1_hash.clone()),
        selected_option_index: Set(r.selected_option_index),
        is_correct: Set(r.is_correct),
        answered_at: Set(r.answered_at),
        answered_at_raw: Set(r.answered_at_raw.clone()),
        clock_skew_ms: Set(skew_ms),
        received_at: Set(now),
    });
    attempt::Entity::insert_many(models)
        .exec_without_returning(txn)
        .await?;
    let acked = Counts {
        acked: rows.len() as i64,
        ..Counts::default()
    };
    add_counters(txn, user_id, acked, now).await
}

/// Writes the changed current answers, one row per (session, question), stamped with the
/// transaction's change counter.
pub async fn write_answers(
    txn: &impl ConnectionTrait,
    user_id: UserId,
    answers: &[(AnswerKey, Answer)],
    now: DateTime<Utc>,
    seq: i64,
) -> Result<(), DbErr> {
    if answers.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(pg(
            "INSERT INTO session_answers (id, session_id, question_id, attempt_id, \
             selected_option_index, is_correct, answered_at, changed_count, created_at, updated_at, \
             user_id, change_seq) \
             SELECT i, s, q, a, o, ok, t, c, $1, $1, $10, $11 \
             FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::int4[], \
             $7::bool[], $8::timestamptz[], $9::int4[]) AS u(i, s, q, a, o, ok, t, c) \
             ON CONFLICT (session_id, question_id) DO UPDATE SET \
             attempt_id = excluded.attempt_id, \
             selected_option_index = excluded.selected_option_index, \
             is_correct = excluded.is_correct, answered_at = excluded.answered_at, \
             changed_count = excluded.changed_count, updated_at = excluded.updated_at, \
             change_seq = excluded.change_seq",
            vec![
                now.into(),
                uuids(answers.iter().map(|(_, a)| a.id)),
                uuids(answers.iter().map(|(k, _)| k.session_id)),
                uuids(answers.iter().map(|(k, _)| k.question_id)),
                uuids(answers.iter().map(|(_, a)| a.attempt_id)),
                ints(answers.iter().map(|(_, a)| a.selected_option_index)),
                array(
                    ArrayType::Bool,
                    answers.iter().map(|(_, a)| Value::Bool(Some(a.is_correct))),
                ),
                array(
                    ArrayType::ChronoDateTimeUtc,
                    answers
                        .iter()
                        .map(|(_, a)| Value::ChronoDateTimeUtc(Some(a.answered_at))),
                ),
                ints(answers.iter().map(|(_, a)| a.changed_count)),
                user_id.into(),
                seq.into(),
            ],
        ))
        .await?;
        return Ok(());
    }
    let models = answers.iter().map(|(key, a)| session_answer::ActiveModel {
        id: Set(a.id),
        session_id: Set(key.session_id),
        user_id: Set(user_id),
        question_id: Set(key.question_id),
        attempt_id: Set(a.attempt_id),
        selected_option_index: Set(a.selected_option_index),
        is_correct: Set(a.is_correct),
        answered_at: Set(a.answered_at),
        changed_count: Set(a.changed_count),
        created_at: Set(now),
        updated_at: Set(now),
        change_seq: Set(seq),
    });
    session_answer::Entity::insert_many(models)
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
                session_answer::Column::ChangeSeq,
            ])
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Adds the score deltas to the sessions (`total_questions` follows `answered_count`),
/// stamped with the transaction's change counter.
pub async fn add_scores(
    txn: &impl ConnectionTrait,
    deltas: &[(SessionId, ScoreDelta)],
    now: DateTime<Utc>,
    seq: i64,
) -> Result<(), DbErr> {
    if deltas.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(pg(
            "UPDATE test_sessions AS s SET answered_count = s.answered_count + d.a, \
             total_questions = s.total_questions + d.a, \
             correct_count = s.correct_count + d.c, updated_at = $1, change_seq = $5 \
             FROM unnest($2::uuid[], $3::int4[], $4::int4[]) AS d(id, a, c) \
             WHERE s.id = d.id AND s.id = ANY($2)",
            vec![
                now.into(),
                uuids(deltas.iter().map(|(id, _)| *id)),
                ints(deltas.iter().map(|(_, d)| d.answered)),
                ints(deltas.iter().map(|(_, d)| d.correct)),
                seq.into(),
            ],
        ))
        .await?;
        return Ok(());
    }
    // SQLite: one statement per session, in-process (a batch rarely spans more than one).
    for (session_id, delta) in deltas {
        test_session::Entity::update_many()
            .col_expr(
                test_session::Column::AnsweredCount,
                Expr::col(test_session::Column::AnsweredCount).add(delta.answered),
            )
            .col_expr(
                test_session::Column::TotalQuestions,
                Expr::col(test_session::Column::TotalQuestions).add(delta.answered),
            )
            .col_expr(
                test_session::Column::CorrectCount,
                Expr::col(test_session::Column::CorrectCount).add(delta.correct),
            )
            .col_expr(test_session::Column::UpdatedAt, Expr::value(now))
            .col_expr(test_session::Column::ChangeSeq, Expr::value(seq))
            .filter(test_session::Column::Id.eq(*session_id))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Sync counters of a user: `acked` is added in the applying transaction, the others
/// off the write path (`Tally`).
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
