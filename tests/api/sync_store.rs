//! The sync store (`examsync::sync::store`) on its own, the same suite on both backends:
//! SQLite in a temporary file, PostgreSQL in a database of its own when
//! `TEST_DATABASE_URL` is set.
use chrono::{DateTime, Duration, DurationRound, Utc};
use entity::{
    AnswerId, AttemptId, ClientAttemptId, IdempotencyKey, OfflineSessionId, PayloadHash,
    QuestionId, QuestionStatus, SessionId, UserId,
};
use examsync::sync::{
    rules::{Answer, AnswerKey, Scope, ScoreDelta, SessionFact, SessionState},
    store::{AttemptRow, BatchWrites, ClaimSession, NewSession, OpeningClaim, Store, SyncStore},
};
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait,
    TransactionTrait,
};
use serde_json::json;

use crate::helpers::{Backend, TestDatabase};

crate::backend_tests!(
    claim_wins_once,
    release_gives_the_key_back,
    find_records_after_claim,
    open_batch_creates_an_offline_session_once,
    find_sessions_and_questions,
    write_answers_upserts,
    write_scores_adds,
    write_answers_and_scores_together,
    write_attempts_adds_acked_count,
    bump_change_seq_of_a_missing_user,
    open_batch_reads_the_won_sessions_status,
    find_records_and_facts_reads_all_three,
    open_batch_creates_claims_and_locks,
    open_batch_with_many_new_sessions,
    open_batch_of_a_missing_user_writes_nothing,
    open_batch_reads_answers_only_when_nothing_committed_since,
    release_and_write_attempts_together,
    foreign_keys_of_the_history,
    option_counts_of_stored_options,
);

struct Fixture {
    _database: TestDatabase,
    db: DatabaseConnection,
    store: Store,
    user: UserId,
    questions: Vec<QuestionId>,
    now: DateTime<Utc>,
}

fn scope() -> Scope {
    Scope {
        year: 1,
        block: Some(2),
        theme: None,
    }
}

async fn fixture(backend: Backend) -> Fixture {
    let database = TestDatabase::new(backend).await;
    let db = examsync::db::connect(&database.url, 2).await.unwrap();
    examsync::db::migrate(&db).await.unwrap();
    let store = Store::for_backend(db.get_database_backend());
    let now = Utc::now()
        .duration_trunc(Duration::microseconds(1))
        .unwrap();
    let user = UserId::new_v4();
    entity::user::Entity::insert(entity::user::ActiveModel {
        id: Set(user),
        role: Set(entity::Role::Student),
        created_at: Set(now),
        last_sync_at: Set(None),
        acked_count: Set(0),
        duplicate_count: Set(0),
        rejected_count: Set(0),
        change_seq: Set(0),
    })
    .exec(&db)
    .await
    .unwrap();
    let mut questions = Vec::new();
    for (i, status) in [QuestionStatus::Published, QuestionStatus::Draft]
        .into_iter()
        .enumerate()
    {
        let id = QuestionId::new_v4();
        entity::question::Entity::insert(entity::question::ActiveModel {
            id: Set(id),
            stem: Set(format!("Stem {i}")),
            options: Set(json!(["a", "b", "c", "d"][..3 + i])),
            correct_index: Set(1),
            explanation_md: Set(Some("why".into())),
            year_id: Set(1),
            block_id: Set(Some(2)),
            theme_id: Set(None),
            cognitive_level: Set(None),
            difficulty: Set(None),
            status: Set(status),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec(&db)
        .await
        .unwrap();
        questions.push(id);
    }
    Fixture {
        _database: database,
        db,
        store,
        user,
        questions,
        now,
    }
}

impl Fixture {
    async fn begin(&self) -> DatabaseTransaction {
        self.db.begin().await.unwrap()
    }

    /// An opening in a transaction of its own.
    async fn open(
        &self,
        sessions: &[NewSession],
        claims: &[OpeningClaim],
    ) -> examsync::sync::store::Opening {
        let txn = self.begin().await;
        let opening = self
            .store
            .open_batch(&txn, self.user, sessions, claims, self.now)
            .await
            .unwrap()
            .expect("the user exists");
        txn.commit().await.unwrap();
        opening
    }

    /// A new ACTIVE session of the user (an opening of its own).
    async fn session(&self) -> SessionId {
        let offline = OfflineSessionId::new_v4();
        let new = NewSession {
            id: SessionId::new_v4(),
            offline_session_id: offline,
            scope: scope(),
        };
        self.open(&[new], &[]).await.created[&offline].id
    }

    fn claim_of(&self, key: IdempotencyKey, session_id: SessionId) -> OpeningClaim {
        self.opening_claim(key, ClaimSession::Known(session_id))
    }

    fn opening_claim(&self, key: IdempotencyKey, session: ClaimSession) -> OpeningClaim {
        OpeningClaim {
            key,
            v1_hash: PayloadHash::from_digest([uuid::Uuid::from(key).as_bytes()[0]; 32]),
            attempt_id: AttemptId::new_v4(),
            session,
            question_id: self.questions[0],
        }
    }

    /// Claims in an opening of their own; the keys won.
    async fn claim(&self, claims: &[OpeningClaim]) -> Vec<IdempotencyKey> {
        let won = self.open(&[], claims).await.won;
        let mut won: Vec<_> = won.into_iter().collect();
        won.sort();
        won
    }

    /// The writes in a transaction of their own, stamped `seq`.
    async fn write(&self, writes: BatchWrites, seq: i64) {
        let txn = self.begin().await;
        self.store
            .write_batch(&txn, self.user, &writes, self.now, seq)
            .await
            .unwrap();
        txn.commit().await.unwrap();
    }

    async fn session_model(&self, id: SessionId) -> entity::test_session::Model {
        entity::test_session::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
    }

    async fn user_model(&self) -> entity::user::Model {
        entity::user::Entity::find_by_id(self.user)
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
    }

    fn answer(&self, attempt_id: AttemptId, option: i32, changed: i32) -> Answer {
        Answer {
            id: AnswerId::new_v4(),
            attempt_id,
            selected_option_index: option,
            is_correct: option == 1,
            answered_at: self.now - Duration::seconds(i64::from(10 - option)),
            changed_count: changed,
            is_new: true,
        }
    }

    fn attempt_row(&self, claim: &OpeningClaim, session_id: SessionId) -> AttemptRow {
        AttemptRow {
            attempt_id: claim.attempt_id,
            key: claim.key,
            v1_hash: claim.v1_hash.clone(),
            session_id,
            question_id: claim.question_id,
            package_id: None,
            client_attempt_id: ClientAttemptId::new_v4(),
            selected_option_index: 1,
            is_correct: true,
            answered_at: self.now,
            answered_at_raw: self.now.to_rfc3339(),
        }
    }

    async fn rows(&self, table: &str) -> i64 {
        crate::helpers::count_rows(&self.db, table, "").await
    }
}

fn sorted(mut keys: Vec<IdempotencyKey>) -> Vec<IdempotencyKey> {
    keys.sort();
    keys
}

async fn claim_wins_once(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let keys: Vec<IdempotencyKey> = (0..3).map(|_| IdempotencyKey::new_v4()).collect();
    let first: Vec<OpeningClaim> = keys[..2].iter().map(|&k| f.claim_of(k, session)).collect();
    assert_eq!(f.claim(&first).await, sorted(keys[..2].to_vec()));
    // The same keys again (another attempt id): lost; a new key in the batch: won.
    let second: Vec<OpeningClaim> = keys.iter().map(|&k| f.claim_of(k, session)).collect();
    assert_eq!(f.claim(&second).await, vec![keys[2]]);
    // The records are the first claim's.
    let records = f
        .store
        .find_records(&f.db, f.user, &keys[..2])
        .await
        .unwrap();
    for claim in &first {
        assert_eq!(records[&claim.key].attempt_id, claim.attempt_id);
    }
}

async fn release_gives_the_key_back(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let key = IdempotencyKey::new_v4();
    let kept = IdempotencyKey::new_v4();
    assert_eq!(
        f.claim(&[f.claim_of(key, session), f.claim_of(kept, session)])
            .await
            .len(),
        2
    );
    let release = |keys: Vec<IdempotencyKey>| BatchWrites {
        released: keys,
        ..BatchWrites::default()
    };
    f.write(release(vec![key]), 9).await;
    let records = f
        .store
        .find_records(&f.db, f.user, &[key, kept])
        .await
        .unwrap();
    assert!(!records.contains_key(&key));
    assert!(records.contains_key(&kept));
    assert_eq!(f.claim(&[f.claim_of(key, session)]).await, vec![key]);
    // Another user's key of the same value is not released.
    let txn = f.begin().await;
    f.store
        .write_batch(&txn, UserId::new_v4(), &release(vec![kept]), f.now, 9)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(
        f.store
            .find_records(&f.db, f.user, &[kept])
            .await
            .unwrap()
            .len(),
        1
    );
    // A release alone writes no counter.
    assert_eq!(f.user_model().await.acked_count, 0);
}

async fn find_records_after_claim(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let claims: Vec<OpeningClaim> = (0..5)
        .map(|_| f.claim_of(IdempotencyKey::new_v4(), session))
        .collect();
    assert!(
        f.store
            .find_records(&f.db, f.user, &[claims[0].key])
            .await
            .unwrap()
            .is_empty()
    );
    f.claim(&claims).await;
    let mut keys: Vec<IdempotencyKey> = claims.iter().map(|c| c.key).collect();
    let missing = IdempotencyKey::new_v4();
    keys.push(missing);
    let records = f.store.find_records(&f.db, f.user, &keys).await.unwrap();
    assert_eq!(records.len(), 5);
    for claim in &claims {
        let record = &records[&claim.key];
        assert_eq!(record.payload_hash, claim.v1_hash);
        assert_eq!(record.attempt_id, claim.attempt_id);
        assert_eq!(record.session_id, session);
    }
    // Records are per user.
    assert!(
        f.store
            .find_records(&f.db, UserId::new_v4(), &keys)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .find_records(&f.db, f.user, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn open_batch_creates_an_offline_session_once(backend: Backend) {
    let f = fixture(backend).await;
    let offline = OfflineSessionId::new_v4();
    let create = |id: SessionId, offline: OfflineSessionId| NewSession {
        id,
        offline_session_id: offline,
        scope: scope(),
    };
    let winner = SessionId::new_v4();
    let opening = f.open(&[create(winner, offline)], &[]).await;
    assert_eq!(opening.seq, 1);
    assert_eq!(
        opening.created[&offline],
        SessionFact {
            id: winner,
            state: SessionState::Active
        }
    );
    assert!(opening.won.is_empty());
    // A second request with its own id for the same offline session gets the winner's.
    let other = OfflineSessionId::new_v4();
    let txn = f.begin().await;
    let created = f
        .store
        .open_batch(
            &txn,
            f.user,
            &[
                create(SessionId::new_v4(), offline),
                create(SessionId::new_v4(), other),
            ],
            &[],
            f.now + Duration::seconds(1),
        )
        .await
        .unwrap()
        .unwrap()
        .created;
    txn.commit().await.unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(created[&offline].id, winner);
    assert_ne!(created[&other].id, winner);
    let stored = f.session_model(winner).await;
    assert_eq!(
        (
            stored.updated_at,
            stored.change_seq,
            stored.year,
            stored.block_id,
            stored.theme_id
        ),
        (f.now, 1, 1, Some(2), None),
        "the conflict leaves the winner's row as it was"
    );
    assert_eq!(f.session_model(created[&other].id).await.change_seq, 2);
    assert_eq!(
        entity::test_session::Entity::find()
            .count(&f.db)
            .await
            .unwrap(),
        2
    );
}

async fn find_sessions_and_questions(backend: Backend) {
    let f = fixture(backend).await;
    let online = f.session().await;
    let offline = OfflineSessionId::new_v4();
    let by_offline = f
        .open(
            &[NewSession {
                id: SessionId::new_v4(),
                offline_session_id: offline,
                scope: scope(),
            }],
            &[],
        )
        .await
        .created[&offline]
        .id;
    let unknown = QuestionId::new_v4();
    let question_ids = [f.questions[0], f.questions[1], unknown];
    let lookup = f
        .store
        .find_records_and_facts(
            &f.db,
            f.user,
            &[],
            &[online, SessionId::new_v4()],
            &[offline, OfflineSessionId::new_v4()],
            &question_ids,
        )
        .await
        .unwrap();
    assert!(lookup.records.is_empty());
    let (sessions, mut questions) = (lookup.sessions, lookup.questions);
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions
            .iter()
            .any(|(s, o)| s.id == by_offline && *o == Some(offline))
    );
    assert!(sessions.iter().any(|(s, _)| s.id == online));
    assert!(
        sessions
            .iter()
            .all(|(s, _)| s.state == SessionState::Active)
    );
    // Another user's sessions are not found.
    let others = f
        .store
        .find_records_and_facts(&f.db, UserId::new_v4(), &[], &[online], &[offline], &[])
        .await
        .unwrap();
    assert!(others.sessions.is_empty() && others.questions.is_empty());
    questions.sort_by_key(|q| q.id);
    assert_eq!(questions.len(), 2);
    for q in &questions {
        let draft = q.id == f.questions[1];
        assert_eq!(q.option_count, if draft { 4 } else { 3 });
        assert_eq!(q.correct_index, 1);
        assert_eq!(q.scope, scope());
        assert_eq!(q.published, !draft);
    }
}

async fn write_answers_upserts(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let key = AnswerKey {
        session_id: session,
        question_id: f.questions[0],
    };
    let answers = |answer: &Answer| BatchWrites {
        answers: vec![(key, answer.clone())],
        ..BatchWrites::default()
    };
    let first = f.answer(AttemptId::new_v4(), 0, 0);
    f.write(answers(&first), 3).await;
    let current = f
        .store
        .current_answers(&f.db, &[session], &[f.questions[0], f.questions[1]])
        .await
        .unwrap();
    assert_eq!(
        current[&key],
        Answer {
            is_new: false,
            ..first.clone()
        }
    );
    // Again for the same (session, question): the row is updated, its id kept.
    let second = f.answer(AttemptId::new_v4(), 1, 1);
    f.write(answers(&second), 4).await;
    let current = f
        .store
        .current_answers(&f.db, &[session], &[f.questions[0]])
        .await
        .unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(
        current[&key],
        Answer {
            id: first.id,
            is_new: false,
            ..second
        }
    );
    let row = entity::session_answer::Entity::find()
        .one(&f.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.change_seq, row.user_id), (4, f.user));
}

async fn write_scores_adds(backend: Backend) {
    let f = fixture(backend).await;
    let (a, b) = (f.session().await, f.session().await);
    for seq in [5, 6] {
        let deltas = vec![
            (
                a,
                ScoreDelta {
                    answered: 2,
                    correct: 1,
                },
            ),
            (
                b,
                ScoreDelta {
                    answered: 1,
                    correct: 0,
                },
            ),
        ];
        let writes = BatchWrites {
            deltas,
            ..BatchWrites::default()
        };
        f.write(writes, seq).await;
    }
    let a = f.session_model(a).await;
    assert_eq!(
        (
            a.answered_count,
            a.total_questions,
            a.correct_count,
            a.change_seq
        ),
        (4, 4, 2, 6)
    );
    let b = f.session_model(b).await;
    assert_eq!((b.answered_count, b.correct_count), (2, 0));
}

async fn write_answers_and_scores_together(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let answers: Vec<(AnswerKey, Answer)> = f
        .questions
        .iter()
        .map(|&question_id| {
            (
                AnswerKey {
                    session_id: session,
                    question_id,
                },
                f.answer(AttemptId::new_v4(), 1, 0),
            )
        })
        .collect();
    let delta = ScoreDelta {
        answered: 2,
        correct: 2,
    };
    let writes = BatchWrites {
        answers,
        deltas: vec![(session, delta)],
        ..BatchWrites::default()
    };
    f.write(writes, 9).await;
    let current = f
        .store
        .current_answers(&f.db, &[session], &f.questions)
        .await
        .unwrap();
    assert_eq!(current.len(), 2);
    let stored = f.session_model(session).await;
    assert_eq!(
        (
            stored.answered_count,
            stored.correct_count,
            stored.change_seq
        ),
        (2, 2, 9)
    );
    // Nothing to write: nothing changes.
    f.write(BatchWrites::default(), 10).await;
    assert_eq!(f.session_model(session).await.change_seq, 9);
}

async fn write_attempts_adds_acked_count(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let claims: Vec<OpeningClaim> = (0..3)
        .map(|_| f.claim_of(IdempotencyKey::new_v4(), session))
        .collect();
    let answered_at = f.now - Duration::minutes(5);
    let rows: Vec<AttemptRow> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| AttemptRow {
            question_id: f.questions[i % 2],
            selected_option_index: i as i32,
            is_correct: i == 1,
            answered_at,
            answered_at_raw: answered_at
                .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
                .to_rfc3339(),
            ..f.attempt_row(c, session)
        })
        .collect();
    for (claims, batch) in [(&claims[..2], &rows[..2]), (&claims[2..], &rows[2..])] {
        let txn = f.begin().await;
        let opening = f
            .store
            .open_batch(&txn, f.user, &[], claims, f.now)
            .await
            .unwrap()
            .unwrap();
        let writes = BatchWrites {
            attempts: batch.to_vec(),
            skew_ms: Some(-1500),
            ..BatchWrites::default()
        };
        f.store
            .write_batch(&txn, f.user, &writes, f.now, opening.seq)
            .await
            .unwrap();
        txn.commit().await.unwrap();
    }
    let user = f.user_model().await;
    assert_eq!((user.acked_count, user.last_sync_at), (3, Some(f.now)));
    let mut stored = entity::attempt::Entity::find().all(&f.db).await.unwrap();
    stored.sort_by_key(|a| a.selected_option_index);
    assert_eq!(stored.len(), 3);
    for (row, stored) in rows.iter().zip(&stored) {
        assert_eq!(stored.id, row.attempt_id);
        assert_eq!(stored.idempotency_key, row.key);
        assert_eq!(stored.payload_hash, row.v1_hash);
        assert_eq!(stored.question_id, row.question_id);
        assert_eq!(stored.package_id, None);
        assert_eq!(stored.client_attempt_id, row.client_attempt_id);
        assert_eq!(stored.is_correct, row.is_correct);
        assert_eq!(stored.answered_at, answered_at);
        assert_eq!(stored.answered_at_raw, row.answered_at_raw);
        assert_eq!(stored.clock_skew_ms, Some(-1500));
        assert_eq!(stored.received_at, f.now);
    }
}

async fn bump_change_seq_of_a_missing_user(backend: Backend) {
    let f = fixture(backend).await;
    let txn = f.begin().await;
    assert_eq!(
        f.store
            .bump_change_seq(&txn, UserId::new_v4())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        f.store.bump_change_seq(&txn, f.user).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        f.store.bump_change_seq(&txn, f.user).await.unwrap(),
        Some(2)
    );
    txn.commit().await.unwrap();
    assert_eq!(f.user_model().await.change_seq, 2);
}

/// The won claims' sessions, their status read in the opening (a `submitSession` may have
/// committed since the checks); a lost claim's session is not read.
async fn open_batch_reads_the_won_sessions_status(backend: Backend) {
    let f = fixture(backend).await;
    let (open, closed, lost) = (f.session().await, f.session().await, f.session().await);
    examsync::sessions::submit(&f.db, &f.store, f.user, closed)
        .await
        .unwrap();
    let held = IdempotencyKey::new_v4();
    f.claim(&[f.claim_of(held, lost)]).await;
    let claims = [
        f.claim_of(IdempotencyKey::new_v4(), open),
        f.claim_of(IdempotencyKey::new_v4(), open),
        f.claim_of(IdempotencyKey::new_v4(), closed),
        // Lost: its session is not read.
        f.claim_of(held, lost),
    ];
    let opening = f.open(&[], &claims).await;
    let mut won: Vec<_> = opening.won.into_iter().collect();
    won.sort();
    assert_eq!(won, sorted(claims[..3].iter().map(|c| c.key).collect()));
    assert_eq!(opening.states.len(), 2);
    assert_eq!(opening.states[&open], SessionState::Active);
    assert_eq!(opening.states[&closed], SessionState::Closed);
    // Nothing won: nothing read.
    let opening = f.open(&[], &claims[3..]).await;
    assert!(opening.won.is_empty() && opening.states.is_empty());
}

async fn find_records_and_facts_reads_all_three(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let claim = f.claim_of(IdempotencyKey::new_v4(), session);
    f.claim(std::slice::from_ref(&claim)).await;
    let offline = f.session_model(session).await.offline_session_id.unwrap();
    let lookup = f
        .store
        .find_records_and_facts(
            &f.db,
            f.user,
            &[claim.key, IdempotencyKey::new_v4()],
            &[],
            &[offline, OfflineSessionId::new_v4()],
            &[f.questions[0], QuestionId::new_v4()],
        )
        .await
        .unwrap();
    assert_eq!(lookup.records.len(), 1);
    let record = &lookup.records[&claim.key];
    assert_eq!(
        (record.attempt_id, record.session_id, &record.payload_hash),
        (claim.attempt_id, session, &claim.v1_hash)
    );
    assert_eq!(lookup.sessions.len(), 1);
    assert_eq!(lookup.sessions[0].0.id, session);
    assert_eq!(lookup.sessions[0].1, Some(offline));
    assert_eq!(lookup.questions.len(), 1);
    assert_eq!(lookup.questions[0].id, f.questions[0]);
    assert_eq!(lookup.questions[0].option_count, 3);
    assert!(lookup.questions[0].published);
}

async fn open_batch_creates_claims_and_locks(backend: Backend) {
    let f = fixture(backend).await;
    let (open, closed) = (f.session().await, f.session().await);
    examsync::sessions::submit(&f.db, &f.store, f.user, closed)
        .await
        .unwrap();
    let held = IdempotencyKey::new_v4();
    f.claim(&[f.claim_of(held, open)]).await;
    let offline = OfflineSessionId::new_v4();
    let new = NewSession {
        id: SessionId::new_v4(),
        offline_session_id: offline,
        scope: scope(),
    };
    let claims = [
        f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::New(offline)),
        f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::Known(open)),
        f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::Known(closed)),
        // Lost: another request holds the key.
        f.opening_claim(held, ClaimSession::Known(open)),
        // Its offline session is not among those to create: not made.
        f.opening_claim(
            IdempotencyKey::new_v4(),
            ClaimSession::New(OfflineSessionId::new_v4()),
        ),
    ];
    let opening = f.open(std::slice::from_ref(&new), &claims).await;
    // Two sessions by the fixture, a submit and a claim before: this is the fifth change.
    assert_eq!(opening.seq, 5);
    let created = opening.created[&offline];
    assert_eq!((created.id, created.state), (new.id, SessionState::Active));
    let mut won: Vec<_> = opening.won.into_iter().collect();
    won.sort();
    assert_eq!(won, sorted(claims[..3].iter().map(|c| c.key).collect()));
    assert_eq!(opening.states.len(), 3);
    assert_eq!(opening.states[&new.id], SessionState::Active);
    assert_eq!(opening.states[&open], SessionState::Active);
    assert_eq!(opening.states[&closed], SessionState::Closed);
    // The claims name their sessions; the new session is stamped with the counter.
    let records = f
        .store
        .find_records(&f.db, f.user, &[claims[0].key, claims[1].key])
        .await
        .unwrap();
    assert_eq!(records[&claims[0].key].session_id, new.id);
    assert_eq!(records[&claims[0].key].attempt_id, claims[0].attempt_id);
    assert_eq!(records[&claims[1].key].session_id, open);
    assert_eq!(f.session_model(new.id).await.change_seq, 5);
    match backend {
        // No answer yet, read with the claims.
        Backend::Postgres => assert_eq!(opening.answers.map(|a| a.len()), Some(0)),
        Backend::Sqlite => assert!(opening.answers.is_none()),
    }

    // The same offline session again: the row created above, not a second one.
    let again = NewSession {
        id: SessionId::new_v4(),
        offline_session_id: offline,
        scope: scope(),
    };
    let claim = f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::New(offline));
    let opening = f.open(&[again], std::slice::from_ref(&claim)).await;
    assert_eq!(opening.created[&offline].id, new.id);
    let records = f
        .store
        .find_records(&f.db, f.user, &[claim.key])
        .await
        .unwrap();
    assert_eq!(records[&claim.key].session_id, new.id);
}

/// Many new offline sessions in one opening, with a claim in each: every
/// session created, every claim made in its own session.
async fn open_batch_with_many_new_sessions(backend: Backend) {
    let f = fixture(backend).await;
    let sessions: Vec<NewSession> = (0..40)
        .map(|_| NewSession {
            id: SessionId::new_v4(),
            offline_session_id: OfflineSessionId::new_v4(),
            scope: scope(),
        })
        .collect();
    let claims: Vec<OpeningClaim> = sessions
        .iter()
        .map(|s| {
            f.opening_claim(
                IdempotencyKey::new_v4(),
                ClaimSession::New(s.offline_session_id),
            )
        })
        .collect();
    let opening = f.open(&sessions, &claims).await;
    assert_eq!(opening.created.len(), sessions.len());
    assert_eq!(opening.won.len(), claims.len());
    assert_eq!(opening.states.len(), sessions.len());
    let keys: Vec<IdempotencyKey> = claims.iter().map(|c| c.key).collect();
    let records = f.store.find_records(&f.db, f.user, &keys).await.unwrap();
    for (session, claim) in sessions.iter().zip(&claims) {
        let created = opening.created[&session.offline_session_id];
        assert_eq!(created.id, session.id);
        assert_eq!(opening.states[&session.id], SessionState::Active);
        assert_eq!(records[&claim.key].session_id, session.id);
    }
    assert_eq!(f.user_model().await.change_seq, opening.seq);
    if backend == Backend::Postgres {
        assert!(opening.answers.is_some(), "read with the claims");
    }
}

async fn open_batch_of_a_missing_user_writes_nothing(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let offline = OfflineSessionId::new_v4();
    let claims = [
        f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::New(offline)),
        f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::Known(session)),
    ];
    let before = (
        f.rows("test_sessions").await,
        f.rows("idempotency_records").await,
    );
    let txn = f.begin().await;
    let opening = f
        .store
        .open_batch(
            &txn,
            UserId::new_v4(),
            &[NewSession {
                id: SessionId::new_v4(),
                offline_session_id: offline,
                scope: scope(),
            }],
            &claims,
            f.now,
        )
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert!(opening.is_none());
    assert_eq!(
        (
            f.rows("test_sessions").await,
            f.rows("idempotency_records").await
        ),
        before
    );
}

/// The answers `open_batch` reads are used only when no writer of the user committed
/// between its snapshot and its lock of the user's row (PostgreSQL; SQLite reads them
/// afterwards, under its one write lock).
async fn open_batch_reads_answers_only_when_nothing_committed_since(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let attempt = AttemptId::new_v4();
    let answer = f.answer(attempt, 2, 0);
    let key = AnswerKey {
        session_id: session,
        question_id: f.questions[0],
    };
    let txn = f.begin().await;
    let seq = f
        .store
        .bump_change_seq(&txn, f.user)
        .await
        .unwrap()
        .unwrap();
    let writes = BatchWrites {
        answers: vec![(key, answer.clone())],
        ..BatchWrites::default()
    };
    f.store
        .write_batch(&txn, f.user, &writes, f.now, seq)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let open_one = || async {
        let claim = f.opening_claim(IdempotencyKey::new_v4(), ClaimSession::Known(session));
        f.open(&[], &[claim]).await
    };
    let opening = open_one().await;
    match backend {
        Backend::Postgres => {
            let answers = opening.answers.expect("nothing committed meanwhile");
            assert_eq!(answers.len(), 1);
            let read = &answers[&key];
            assert_eq!(
                (
                    read.id,
                    read.attempt_id,
                    read.selected_option_index,
                    read.is_new
                ),
                (answer.id, attempt, 2, false)
            );
        }
        Backend::Sqlite => assert!(opening.answers.is_none()),
    }
    if backend != Backend::Postgres {
        return;
    }
    // Another writer of the user holds its row lock and commits while open_batch waits
    // for it: the answers of open_batch's snapshot are not used.
    let writer = f.begin().await;
    let seq = f
        .store
        .bump_change_seq(&writer, f.user)
        .await
        .unwrap()
        .unwrap();
    let other = BatchWrites {
        answers: vec![(
            AnswerKey {
                session_id: session,
                question_id: f.questions[1],
            },
            f.answer(AttemptId::new_v4(), 1, 0),
        )],
        ..BatchWrites::default()
    };
    f.store
        .write_batch(&writer, f.user, &other, f.now, seq)
        .await
        .unwrap();
    let waiting = async {
        let opening = open_one().await;
        assert!(
            opening.answers.is_none(),
            "read before the writer committed"
        );
        opening.seq
    };
    let committing = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        writer.commit().await.unwrap();
    };
    let (seq_after, ()) = tokio::join!(waiting, committing);
    assert_eq!(seq_after, seq + 1);
    // Nothing committed since: read with the claims again.
    assert!(open_one().await.answers.is_some());
}

async fn release_and_write_attempts_together(backend: Backend) {
    let f = fixture(backend).await;
    let session = f.session().await;
    let (kept, released) = (
        f.claim_of(IdempotencyKey::new_v4(), session),
        f.claim_of(IdempotencyKey::new_v4(), session),
    );
    f.claim(&[kept.clone(), released.clone()]).await;
    let writes = BatchWrites {
        released: vec![released.key],
        attempts: vec![f.attempt_row(&kept, session)],
        ..BatchWrites::default()
    };
    f.write(writes, 9).await;
    let records = f
        .store
        .find_records(&f.db, f.user, &[kept.key, released.key])
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert!(records.contains_key(&kept.key));
    assert_eq!(f.rows("attempts").await, 1);
    assert_eq!(f.user_model().await.acked_count, 1);
}

/// PostgreSQL: `attempts` and `session_answers` hold no foreign key (migration 8: their
/// rules are held by the sync path and `ORPHAN_CHECKS`); SQLite keeps them.
async fn foreign_keys_of_the_history(backend: Backend) {
    let f = fixture(backend).await;
    let sql = match backend {
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM pg_constraint WHERE contype = 'f' \
             AND conrelid IN ('attempts'::regclass, 'session_answers'::regclass)"
        }
        Backend::Sqlite => {
            "SELECT (SELECT COUNT(*) FROM pragma_foreign_key_list('attempts')) \
             + (SELECT COUNT(*) FROM pragma_foreign_key_list('session_answers')) AS n"
        }
    };
    let n = crate::helpers::count_query(&f.db, sql).await;
    assert_eq!(n, if backend == Backend::Postgres { 0 } else { 4 });
}

/// A question's option count as the checks see it: the entries of an array of strings, and
/// none for anything else stored (PostgreSQL counts them in SQL, SQLite in Rust; both must
/// read the column as `questions::options_of` does).
async fn option_counts_of_stored_options(backend: Backend) {
    let f = fixture(backend).await;
    let stored = [
        (json!(["x", "y"]), 2),
        (json!(["a", "b", "c", "d", "e"]), 5),
        (json!([]), 0),
        (json!([1, 2, 3]), 0),
        (json!(["a", 1]), 0),
        (json!(["a", null]), 0),
        (json!([["a"], ["b"]]), 0),
        (json!({"a": "b"}), 0),
        (json!("ab"), 0),
        (json!(null), 0),
    ];
    let mut expected = std::collections::HashMap::new();
    for (options, count) in stored {
        let id = QuestionId::new_v4();
        entity::question::Entity::insert(entity::question::ActiveModel {
            id: Set(id),
            stem: Set("Stem".into()),
            options: Set(options.clone()),
            correct_index: Set(0),
            explanation_md: Set(None),
            year_id: Set(1),
            block_id: Set(Some(2)),
            theme_id: Set(None),
            cognitive_level: Set(None),
            difficulty: Set(None),
            status: Set(QuestionStatus::Published),
            created_at: Set(f.now),
            updated_at: Set(f.now),
        })
        .exec(&f.db)
        .await
        .unwrap();
        expected.insert(id, (count, options));
    }
    let ids: Vec<QuestionId> = expected.keys().copied().collect();
    let lookup = f
        .store
        .find_records_and_facts(&f.db, f.user, &[], &[], &[], &ids)
        .await
        .unwrap();
    assert_eq!(lookup.questions.len(), ids.len());
    for q in &lookup.questions {
        let (count, options) = &expected[&q.id];
        assert_eq!(q.option_count, *count, "options {options}");
    }
}
