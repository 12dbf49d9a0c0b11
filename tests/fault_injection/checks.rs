//! The end-of-run checks: what the phones were told against what the database holds.
use std::collections::{HashMap, HashSet};

use entity::{attempt, idempotency_record, session_answer, test_session};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, Statement};
use uuid::Uuid;

use crate::phone::{Item, KeyRecord, PhoneReport};

#[derive(Debug, Default)]
pub struct CheckReport {
    pub generated: usize,
    pub acknowledged: usize,
    pub attempts_rows: usize,
    pub sessions: usize,
    pub changed_answers: usize,
    /// Generated keys neither acknowledged nor rejected, or acknowledged without a row.
    pub lost: usize,
    /// Keys with two rows, two ACKs, or two different ids.
    pub doubled: usize,
    pub rejected: usize,
    pub queued: usize,
    /// Sessions whose counters disagree with their answers or with the phones' answers.
    pub misscored_sessions: usize,
    pub acks_dropped: usize,
    pub acks_recovered_as_duplicate: usize,
    pub violations: Vec<String>,
}

impl CheckReport {
    fn violation(&mut self, message: String) {
        if self.violations.len() < 200 {
            self.violations.push(message);
        }
    }
}

pub async fn check(
    db: &DatabaseConnection,
    reports: &[PhoneReport],
    ledger: &HashMap<Uuid, KeyRecord>,
    dropped_acks: &[Uuid],
) -> CheckReport {
    let mut out = CheckReport::default();
    let attempts = attempt::Entity::find().all(db).await.expect("attempts");
    let records = idempotency_record::Entity::find()
        .all(db)
        .await
        .expect("idempotency records");
    let sessions = test_session::Entity::find()
        .all(db)
        .await
        .expect("sessions");
    let answers = session_answer::Entity::find()
        .all(db)
        .await
        .expect("session answers");
    out.attempts_rows = attempts.len();
    out.sessions = sessions.len();

    // What the phones generated, and what became of it.
    let mut items: HashMap<Uuid, (&PhoneReport, &Item)> = HashMap::new();
    let mut by_client_id: HashMap<Uuid, Uuid> = HashMap::new();
    for report in reports {
        for item in &report.generated {
            items.insert(item.idempotency_key, (report, item));
            by_client_id.insert(item.client_attempt_id, item.idempotency_key);
        }
        out.rejected += report.rejected.len();
        out.queued += report.queue_left.len();
        if !report.queue_left.is_empty() {
            out.violation(format!(
                "phone {}: {} items still queued at the end",
                report.index,
                report.queue_left.len()
            ));
        }
    }
    out.generated = items.len();
    out.acknowledged = ledger.len();
    let rejected: HashSet<Uuid> = reports
        .iter()
        .flat_map(|r| r.rejected.iter().map(|(i, _)| i.idempotency_key))
        .collect();

    // One attempts row and one idempotency record per acknowledged key, with the ids the
    // phones were told; none for any other key.
    let mut rows_of: HashMap<Uuid, Vec<&attempt::Model>> = HashMap::new();
    for row in &attempts {
        rows_of
            .entry(row.idempotency_key.into())
            .or_default()
            .push(row);
    }
    let mut records_of: HashMap<Uuid, Vec<&idempotency_record::Model>> = HashMap::new();
    for row in &records {
        records_of
            .entry(row.idempotency_key.into())
            .or_default()
            .push(row);
    }
    let mut lost: HashSet<Uuid> = HashSet::new();
    let mut misscored: HashSet<Uuid> = HashSet::new();
    let mut doubled: HashSet<Uuid> = HashSet::new();
    for key in items.keys() {
        if !ledger.contains_key(key) && !rejected.contains(key) {
            lost.insert(*key);
        }
    }
    for (key, record) in ledger {
        let Some((report, item)) = items.get(key) else {
            out.violation(format!("acknowledged key {key} was never generated"));
            continue;
        };
        if record.acked > 1 {
            doubled.insert(*key);
        }
        let rows = rows_of.get(key).map(Vec::as_slice).unwrap_or_default();
        let recs = records_of.get(key).map(Vec::as_slice).unwrap_or_default();
        if rows.is_empty() || recs.is_empty() {
            lost.insert(*key);
            out.violation(format!(
                "key {key} acknowledged but {} attempts rows, {} idempotency rows",
                rows.len(),
                recs.len()
            ));
            continue;
        }
        if rows.len() > 1 || recs.len() > 1 {
            doubled.insert(*key);
            out.violation(format!(
                "key {key}: {} attempts rows, {} idempotency rows",
                rows.len(),
                recs.len()
            ));
        }
        let row = rows[0];
        let rec = recs[0];
        let expected = (
            record.attempt_id,
            record.session_id,
            report.user,
            item.question_id,
            item.selected_option_index as i32,
            item.is_correct,
            item.client_attempt_id,
        );
        let stored = (
            row.id.into_uuid(),
            row.session_id.into_uuid(),
            row.user_id.into_uuid(),
            row.question_id.into_uuid(),
            row.selected_option_index,
            row.is_correct,
            row.client_attempt_id.into_uuid(),
        );
        if expected != stored {
            out.violation(format!(
                "key {key}: attempts row {stored:?}, phones were told/sent {expected:?}"
            ));
        }
        if record.user != report.user || record.client_attempt_id != item.client_attempt_id {
            out.violation(format!(
                "key {key}: ledger {record:?} is not phone {}'s",
                report.index
            ));
        }
        if (
            rec.attempt_id.into_uuid(),
            rec.session_id.into_uuid(),
            rec.user_id.into_uuid(),
        ) != (record.attempt_id, record.session_id, report.user)
            || rec.payload_hash != item.payload_hash
        {
            out.violation(format!(
                "key {key}: idempotency record {rec:?} vs {record:?}"
            ));
        }
    }
    for row in &attempts {
        if !ledger.contains_key(&row.idempotency_key.into_uuid()) {
            out.violation(format!(
                "attempts row {} for key {} that no phone was ever told about",
                row.id, row.idempotency_key
            ));
        }
    }
    if records.len() != ledger.len() {
        out.violation(format!(
            "{} idempotency records for {} acknowledged keys",
            records.len(),
            ledger.len()
        ));
    }

    // Sessions: each counter agrees with its answers, and with the answers the phones gave
    // (the latest answer per question wins; each question counted once).
    let mut answers_of: HashMap<Uuid, Vec<&session_answer::Model>> = HashMap::new();
    for answer in &answers {
        answers_of
            .entry(answer.session_id.into_uuid())
            .or_default()
            .push(answer);
    }
    for session in &sessions {
        let rows = answers_of
            .get(&session.id.into_uuid())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let correct = rows.iter().filter(|a| a.is_correct).count() as i32;
        if session.answered_count != rows.len() as i32
            || session.total_questions != session.answered_count
            || session.correct_count != correct
        {
            misscored.insert(session.id.into_uuid());
            out.violation(format!(
                "session {}: answered {} total {} correct {}, but {} answers of which {correct} correct",
                session.id,
                session.answered_count,
                session.total_questions,
                session.correct_count,
                rows.len()
            ));
        }
    }
    let sessions_by_id: HashMap<Uuid, &test_session::Model> =
        sessions.iter().map(|s| (s.id.into_uuid(), s)).collect();
    let mut expected_sessions = 0usize;
    for report in reports {
        // offline session → question → the latest acknowledged answer.
        let mut latest: HashMap<Uuid, HashMap<Uuid, &Item>> = HashMap::new();
        let mut counts: HashMap<(Uuid, Uuid), usize> = HashMap::new();
        for item in &report.generated {
            if !ledger.contains_key(&item.idempotency_key) {
                continue;
            }
            *counts
                .entry((item.offline_session_id, item.question_id))
                .or_default() += 1;
            let slot = latest
                .entry(item.offline_session_id)
                .or_default()
                .entry(item.question_id)
                .or_insert(item);
            if item.answered_at > slot.answered_at {
                *slot = item;
            }
        }
        out.changed_answers += counts.values().map(|n| n - 1).sum::<usize>();
        expected_sessions += latest.len();
        for (offline, questions) in &latest {
            let Some(server_id) = report.sessions.get(offline) else {
                out.violation(format!(
                    "phone {}: offline session {offline} has answers but no server session",
                    report.index
                ));
                continue;
            };
            let Some(session) = sessions_by_id.get(server_id) else {
                out.violation(format!("session {server_id} is not in the database"));
                continue;
            };
            if (
                session.user_id.into_uuid(),
                session.offline_session_id.map(Uuid::from),
            ) != (report.user, Some(*offline))
            {
                out.violation(format!(
                    "session {server_id} belongs to ({}, {:?}), not phone {}'s ({}, {offline})",
                    session.user_id, session.offline_session_id, report.index, report.user
                ));
            }
            let correct = questions.values().filter(|i| i.is_correct).count() as i32;
            if (session.answered_count, session.correct_count) != (questions.len() as i32, correct)
            {
                misscored.insert(*server_id);
                out.violation(format!(
                    "session {server_id}: answered/correct ({}, {}), the phone's answers say ({}, {correct})",
                    session.answered_count,
                    session.correct_count,
                    questions.len()
                ));
            }
            let stored: HashMap<Uuid, &session_answer::Model> = answers_of
                .get(server_id)
                .map(|rows| {
                    rows.iter()
                        .map(|a| (a.question_id.into_uuid(), *a))
                        .collect()
                })
                .unwrap_or_default();
            for (question, item) in questions {
                let want = ledger[&item.idempotency_key].attempt_id;
                match stored.get(question) {
                    Some(answer)
                        if answer.attempt_id.into_uuid() == want
                            && answer.is_correct == item.is_correct
                            && answer.selected_option_index
                                == item.selected_option_index as i32 => {}
                    other => {
                        misscored.insert(*server_id);
                        out.violation(format!(
                            "session {server_id} question {question}: answer {other:?}, want \
                             the latest attempt {want} (option {}, correct {})",
                            item.selected_option_index, item.is_correct
                        ));
                    }
                }
            }
        }
    }
    if sessions.len() != expected_sessions {
        out.violation(format!(
            "{} sessions in the database, {expected_sessions} offline sessions with answers",
            sessions.len()
        ));
    }

    // Responses the proxy dropped after the server committed: the phone never saw that
    // ACKED, retried, and got DUPLICATE.
    out.acks_dropped = dropped_acks.len();
    for client_id in dropped_acks {
        let record = by_client_id.get(client_id).and_then(|k| ledger.get(k));
        match record {
            Some(r) if r.duplicate >= 1 => out.acks_recovered_as_duplicate += 1,
            other => out.violation(format!(
                "the ACK of {client_id} was dropped but the phone never got DUPLICATE: {other:?}"
            )),
        }
    }

    // The references no foreign key holds on PostgreSQL (migration 8).
    for (rule, sql) in examsync_test_support::ORPHAN_CHECKS {
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .expect("orphan check")
            .expect("a row");
        let n: i64 = row.try_get("", "n").expect("count");
        if n != 0 {
            out.violation(format!("{n} rows break a reference: {rule}"));
        }
    }

    out.misscored_sessions = misscored.len();
    out.lost = lost.len();
    out.doubled = doubled.len();
    out
}
