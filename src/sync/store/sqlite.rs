//! The SQLite sync store: sea-orm statements. SQLite is in-process (a statement costs no
//! network round trip) and has no arrays; the one write lock, taken at `BEGIN IMMEDIATE`,
//! serialises every writer.
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, Statement, TryInsertResult,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::{
    AttemptRow, BatchWrites, ClaimSession, Counts, Lookup, NewSession, Opening, OpeningClaim,
    QuestionRow, SessionRow, SyncStore, add_counters, option_count,
};
use crate::sync::rules::{Answer, AnswerKey, Record, Scope, ScoreDelta, SessionFact, SessionState};
use entity::{
    IdempotencyKey, OfflineSessionId, QuestionId, QuestionStatus, SessionId, SessionMode,
    SessionStatus, UserId, attempt, idempotency_record, question, session_answer, test_session,
};

/// The SQLite sync store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqlite;

/// One idempotency claim, its session known.
struct Claim {
    key: IdempotencyKey,
    v1_hash: entity::PayloadHash,
    attempt_id: entity::AttemptId,
    session_id: SessionId,
}

fn session_fact(id: SessionId, status: SessionStatus) -> SessionFact {
    SessionFact {
        id,
        state: SessionState::from(status),
    }
}

impl SyncStore for Sqlite {
    async fn find_records(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, Record>, DbErr> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(
            IdempotencyKey,
            entity::PayloadHash,
            entity::AttemptId,
            SessionId,
        )> = idempotency_record::Entity::find()
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
            .await?;
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

    async fn find_records_and_facts(
        &self,
        db: &impl ConnectionTrait,
        user_id: UserId,
        keys: &[IdempotencyKey],
        ids: &[SessionId],
        offline_ids: &[OfflineSessionId],
        question_ids: &[QuestionId],
    ) -> Result<Lookup, DbErr> {
        Ok(Lookup {
            records: self.find_records(db, user_id, keys).await?,
            sessions: self.find_sessions(db, user_id, ids, offline_ids).await?,
            questions: self.find_questions(db, question_ids).await?,
        })
    }

    async fn bump_change_seq(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
    ) -> Result<Option<i64>, DbErr> {
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "UPDATE users SET change_seq = change_seq + 1 WHERE id = ? RETURNING change_seq",
                [user_id.into()],
            ))
            .await?;
        row.map(|r| r.try_get::<i64>("", "change_seq")).transpose()
    }

    /// One step at a time; the current answers are left to the caller.
    async fn open_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
        now: DateTime<Utc>,
    ) -> Result<Option<Opening>, DbErr> {
        let Some(seq) = self.bump_change_seq(txn, user_id).await? else {
            return Ok(None);
        };
        let created = self
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
        let won = self.claim(txn, user_id, &claims, now).await?;
        let mut locked: Vec<SessionId> = claims
            .iter()
            .filter(|c| won.contains(&c.key))
            .map(|c| c.session_id)
            .collect();
        locked.sort_unstable();
        locked.dedup();
        let states = self.session_states(txn, &locked).await?;
        Ok(Some(Opening {
            seq,
            created,
            won,
            states,
            answers: None,
        }))
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
        Ok(session_answer::Entity::find()
            .filter(session_answer::Column::SessionId.is_in(session_ids.iter().copied()))
            .filter(session_answer::Column::QuestionId.is_in(question_ids.iter().copied()))
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

    async fn write_batch(
        &self,
        txn: &impl ConnectionTrait,
        user_id: UserId,
        writes: &BatchWrites,
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        self.release(txn, user_id, &writes.released).await?;
        self.insert_attempts(txn, user_id, &writes.attempts, writes.skew_ms, now)
            .await?;
        self.write_answers(txn, user_id, &writes.answers, now, seq)
            .await?;
        self.add_scores(txn, &writes.deltas, now, seq).await
    }
}

/// The steps the operations are made of.
impl Sqlite {
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
        let rows: Vec<(SessionId, Option<OfflineSessionId>, SessionStatus)> =
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
                        .add(
                            test_session::Column::OfflineSessionId
                                .is_in(offline_ids.iter().copied()),
                        ),
                )
                .into_tuple()
                .all(db)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, offline, status)| (session_fact(id, status), offline))
            .collect())
    }

    async fn find_questions(
        &self,
        db: &impl ConnectionTrait,
        ids: &[QuestionId],
    ) -> Result<Vec<QuestionRow>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        type Row = (
            QuestionId,
            serde_json::Value,
            i32,
            i32,
            Option<i32>,
            Option<i32>,
            QuestionStatus,
        );
        let rows: Vec<Row> = question::Entity::find()
            .select_only()
            .columns([
                question::Column::Id,
                question::Column::Options,
                question::Column::CorrectIndex,
                question::Column::YearId,
                question::Column::BlockId,
                question::Column::ThemeId,
                question::Column::Status,
            ])
            .filter(question::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, options, correct_index, year, block, theme, status)| QuestionRow {
                    id,
                    option_count: option_count(options),
                    correct_index,
                    scope: Scope { year, block, theme },
                    published: status == QuestionStatus::Published,
                },
            )
            .collect())
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
        // A no-op update on conflict, so that RETURNING also gives the winner's row.
        let rows = test_session::Entity::insert_many(models)
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
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|m| {
                m.offline_session_id
                    .map(|o| (o, session_fact(m.id, m.status)))
            })
            .collect())
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
        // In key order, as on PostgreSQL: concurrent batches take the rows in one order.
        let mut sorted: Vec<&Claim> = claims.iter().collect();
        sorted.sort_by_key(|c| c.key);
        let models = sorted.into_iter().map(|c| idempotency_record::ActiveModel {
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
            TryInsertResult::Inserted(rows) => {
                rows.into_iter().map(|r| r.idempotency_key).collect()
            }
            TryInsertResult::Conflicted | TryInsertResult::Empty => HashSet::new(),
        })
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
        idempotency_record::Entity::delete_many()
            .filter(idempotency_record::Column::UserId.eq(user_id))
            .filter(idempotency_record::Column::IdempotencyKey.is_in(keys.iter().copied()))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// The sessions' status, read under the transaction's write lock.
    async fn session_states(
        &self,
        txn: &impl ConnectionTrait,
        ids: &[SessionId],
    ) -> Result<HashMap<SessionId, SessionState>, DbErr> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(SessionId, SessionStatus)> = test_session::Entity::find()
            .select_only()
            .columns([test_session::Column::Id, test_session::Column::Status])
            .filter(test_session::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, status)| (id, SessionState::from(status)))
            .collect())
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

    async fn add_scores(
        &self,
        txn: &impl ConnectionTrait,
        deltas: &[(SessionId, ScoreDelta)],
        now: DateTime<Utc>,
        seq: i64,
    ) -> Result<(), DbErr> {
        // One statement per session, in-process (a batch rarely spans more than one).
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
}
