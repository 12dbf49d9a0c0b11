//! The pure rule core of sync (docs/api.md section 7): plain functions over plain data, no I/O.
//!
//! `batch.rs` gathers the facts (idempotency records, sessions, questions, package
//! snapshots, current answers) through `store.rs` and asks these functions what to do;
//! everything here is unit-tested case by case without a database or HTTP.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Duration, DurationRound, FixedOffset, NaiveDate, TimeZone, Utc};
use entity::{
    AnswerId, AttemptId, ClientAttemptId, IdempotencyKey, OfflineSessionId, PackageId, PayloadHash,
    QuestionId, SessionId,
};

use super::{AttemptInput, AttemptResult, SyncErrorCode, SyncStatus, payload_hash};
use crate::packages::{PackageScoring, ScoringKey};

/// How far ahead of the server clock an answer may be (after skew correction).
pub const FUTURE_TOLERANCE: Duration = Duration::minutes(5);

/// The earliest time accepted for `answered_at` and `sent_at` (docs/api.md section 7 "Times").
pub fn min_time() -> DateTime<Utc> {
    Utc.timestamp_opt(0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The latest time accepted: 9999-12-31T23:59:59.999999999Z.
pub fn max_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether `t` lies in 1970-01-01 ..= 9999-12-31 (UTC).
pub fn in_range(t: &DateTime<FixedOffset>) -> bool {
    let utc = t.with_timezone(&Utc);
    utc >= min_time() && utc <= max_time()
}

/// The device's clock skew for one batch: server receive time − `sent_at`.
///
/// `Err` when `sent_at` is outside the accepted range: the whole request is refused.
/// Both ends being in range, the difference is at most ~10,000 years and cannot overflow.
pub fn skew_of(
    received_at: DateTime<Utc>,
    sent_at: Option<&DateTime<FixedOffset>>,
) -> Result<Option<Duration>, &'static str> {
    let Some(sent_at) = sent_at else {
        return Ok(None);
    };
    if !in_range(sent_at) {
        return Err("`sent_at` must be an RFC 3339 time from 1970-01-01 to 9999-12-31");
    }
    Ok(Some(
        received_at.signed_duration_since(sent_at.with_timezone(&Utc)),
    ))
}

/// `answered_at` in UTC corrected by the skew, truncated to the microsecond (what both
/// databases store). `None` when the correction leaves the accepted range; checked
/// arithmetic, never a panic.
pub fn corrected_time(
    answered_at: &DateTime<FixedOffset>,
    skew: Option<Duration>,
) -> Option<DateTime<Utc>> {
    let utc = answered_at.with_timezone(&Utc);
    let corrected = match skew {
        Some(skew) => utc.checked_add_signed(skew)?,
        None => utc,
    };
    if corrected < min_time() || corrected > max_time() {
        return None;
    }
    Some(
        corrected
            .duration_trunc(Duration::microseconds(1))
            .unwrap_or(corrected),
    )
}

/// The first checks of docs/api.md §7.2 that need no stored state: `answered_at` in range, then
/// the payload hash. `Ok` is the v1 hash, the payload's identity for idempotency.
pub fn precheck(input: &AttemptInput) -> Result<PayloadHash, (SyncErrorCode, &'static str)> {
    if !in_range(&input.answered_at) {
        return Err((
            SyncErrorCode::InvalidAttempt,
            "`answered_at` must be an RFC 3339 time from 1970-01-01 to 9999-12-31",
        ));
    }
    payload_hash::verify(
        &input.payload_hash,
        input.question_id.into_uuid(),
        input.selected_option_index,
        &input.answered_at,
    )
    .ok_or((
        SyncErrorCode::PayloadHashMismatch,
        "payload_hash matches neither the v1 nor the legacy payload hash",
    ))
}

/// Splits a batch into rounds so that the n-th occurrence of an idempotency key is in
/// round n: a repeated key then gets exactly what a resend after the earlier item gets.
/// Input: (request index, key) of the items that passed `precheck`; output: indices.
pub fn plan_rounds(items: &[(usize, IdempotencyKey)]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<IdempotencyKey, usize> = HashMap::new();
    for &(index, key) in items {
        let round = seen.entry(key).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(index);
        *round += 1;
    }
    rounds
}

/// A stored idempotency record (database or cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub payload_hash: PayloadHash,
    pub attempt_id: AttemptId,
    pub session_id: SessionId,
}

impl Record {
    /// The cache encoding.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}",
            self.payload_hash, self.attempt_id, self.session_id
        )
    }

    pub fn decode(text: &str) -> Option<Record> {
        let mut parts = text.split('|');
        let record = Record {
            payload_hash: parts.next()?.parse().ok()?,
            attempt_id: parts.next()?.parse().ok()?,
            session_id: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(record)
    }

    /// What a resend of an item with this key gets: the same payload → `DUPLICATE` with
    /// the original ids; another payload → `IDEMPOTENCY_KEY_REUSED`.
    pub fn outcome_for(
        &self,
        client_attempt_id: ClientAttemptId,
        v1_hash: &PayloadHash,
    ) -> AttemptResult {
        if self.payload_hash == *v1_hash {
            AttemptResult::applied(
                client_attempt_id,
                SyncStatus::Duplicate,
                self.attempt_id,
                self.session_id,
            )
        } else {
            AttemptResult::rejected(
                Some(client_attempt_id),
                SyncErrorCode::IdempotencyKeyReused,
                "this idempotency_key was already used for a different payload",
            )
        }
    }
}

/// Whether a session accepts new answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Active,
    /// Submitted or expired: new attempts are `SESSION_CLOSED`.
    Closed,
}

impl From<entity::SessionStatus> for SessionState {
    fn from(status: entity::SessionStatus) -> Self {
        match status {
            entity::SessionStatus::Active => SessionState::Active,
            entity::SessionStatus::Submitted | entity::SessionStatus::Expired => {
                SessionState::Closed
            }
        }
    }
}

/// One of the user's sessions as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionFact {
    pub id: SessionId,
    pub state: SessionState,
}

/// Year/block/theme of a question: the scope of a session created by its first answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub year: i32,
    pub block: Option<i32>,
    pub theme: Option<i32>,
}

impl From<Scope> for crate::access::QuestionScope {
    fn from(scope: Scope) -> Self {
        crate::access::QuestionScope {
            year_id: scope.year,
            block_id: scope.block,
            theme_id: scope.theme,
        }
    }
}

/// A question as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuestionFact {
    /// Scoring against the question as it is now (no `packageId`).
    pub key: ScoringKey,
    pub scope: Scope,
    /// PUBLISHED, or in some published package. A draft is never answerable.
    pub answerable: bool,
}

/// Where an accepted attempt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Session(SessionId),
    /// An offline session seen for the first time: created in the applying transaction.
    NewOffline(OfflineSessionId),
}

/// Everything the post-idempotency checks read, for one batch of one user.
#[derive(Debug, Default)]
pub struct Facts {
    pub sessions_by_id: HashMap<SessionId, SessionFact>,
    pub sessions_by_offline: HashMap<OfflineSessionId, SessionFact>,
    pub questions: HashMap<QuestionId, QuestionFact>,
    /// Published packages only: their snapshot scoring keys by question.
    pub packages: HashMap<PackageId, Arc<PackageScoring>>,
    /// The caller's grants, when grants limit what they may answer (docs/api.md §3.1).
    pub access: Option<crate::access::gate::SyncAccess>,
}

/// An attempt that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub target: Target,
    pub is_correct: bool,
    /// `answered_at` corrected by the batch's skew (UTC, microseconds).
    pub effective_at: DateTime<Utc>,
    pub scope: Scope,
}

/// A rejection: code and message.
pub type Rejection = (SyncErrorCode, String);

/// The checks of docs/api.md §7.2 after idempotency, in order: session, question (drafts
/// included), package, option index, time.
pub fn check(
    input: &AttemptInput,
    facts: &Facts,
    received_at: DateTime<Utc>,
    skew: Option<Duration>,
) -> Result<Checked, Rejection> {
    let target = session_target(input, facts)?;
    let Some(question) = facts
        .questions
        .get(&input.question_id)
        .filter(|q| q.answerable)
    else {
        return reject(SyncErrorCode::QuestionNotFound, "no such question");
    };
    check_access(input, facts, question, skew)?;
    let key = scoring_key(input, facts, question)?;
    let index = input.selected_option_index;
    if index < 0 || index >= key.option_count as i64 {
        return Err((
            SyncErrorCode::InvalidOptionIndex,
            format!(
                "selected_option_index must be between 0 and {}",
                key.option_count.saturating_sub(1)
            ),
        ));
    }
    let effective_at = effective_time(input, received_at, skew)?;
    Ok(Checked {
        target,
        is_correct: index == i64::from(key.correct_index),
        effective_at,
        scope: question.scope,
    })
}

fn reject<T>(code: SyncErrorCode, message: &str) -> Result<T, Rejection> {
    Err((code, message.to_owned()))
}

/// The session the attempt goes to: a server session of the caller's that is still
/// active, or an offline session seen for the first time.
fn session_target(input: &AttemptInput, facts: &Facts) -> Result<Target, Rejection> {
    let found = if let Some(id) = input.session_id {
        match facts.sessions_by_id.get(&id) {
            None => return reject(SyncErrorCode::SessionNotFound, "no such session of yours"),
            Some(s) => s,
        }
    } else if let Some(offline) = input.offline_session_id {
        match facts.sessions_by_offline.get(&offline) {
            None => return Ok(Target::NewOffline(offline)),
            Some(s) => s,
        }
    } else {
        return reject(
            SyncErrorCode::SessionRequired,
            "give session_id or offline_session_id",
        );
    };
    if found.state == SessionState::Closed {
        return reject(
            SyncErrorCode::SessionClosed,
            "the session is no longer active",
        );
    }
    Ok(Target::Session(found.id))
}

/// The caller's access must have covered the question when the student answered
/// (corrected by the skew), so a lapsed grant keeps the answers made while it was in
/// force. A time the correction pushes out of range is refused later
/// ([`effective_time`]); until then the sent time stands.
fn check_access(
    input: &AttemptInput,
    facts: &Facts,
    question: &QuestionFact,
    skew: Option<Duration>,
) -> Result<(), Rejection> {
    let Some(access) = &facts.access else {
        return Ok(());
    };
    let at = corrected_time(&input.answered_at, skew)
        .unwrap_or_else(|| input.answered_at.with_timezone(&Utc));
    if access.covers_at(question.scope.into(), at) {
        Ok(())
    } else {
        reject(
            SyncErrorCode::AccessDenied,
            "your access did not cover this question when it was answered",
        )
    }
}

/// The key the attempt is scored by: that of the package it names (its snapshot), or
/// the question's current one.
fn scoring_key(
    input: &AttemptInput,
    facts: &Facts,
    question: &QuestionFact,
) -> Result<ScoringKey, Rejection> {
    let Some(package_id) = input.package_id else {
        return Ok(question.key);
    };
    facts
        .packages
        .get(&package_id)
        .and_then(|p| p.questions.get(&input.question_id))
        .copied()
        .ok_or_else(|| {
            (
                SyncErrorCode::PackageMismatch,
                "the question is not in that published package".to_owned(),
            )
        })
}

/// `answered_at` corrected by the clock skew: within the representable range and not
/// ahead of the server clock by more than the tolerance.
fn effective_time(
    input: &AttemptInput,
    received_at: DateTime<Utc>,
    skew: Option<Duration>,
) -> Result<DateTime<Utc>, Rejection> {
    let Some(effective_at) = corrected_time(&input.answered_at, skew) else {
        return reject(
            SyncErrorCode::InvalidAttempt,
            "`answered_at` corrected by the clock skew of `sent_at` falls outside 1970-01-01 to 9999-12-31",
        );
    };
    if effective_at > received_at + FUTURE_TOLERANCE {
        return reject(
            SyncErrorCode::AnsweredAtInFuture,
            "answered_at is more than 5 minutes ahead of the server clock",
        );
    }
    Ok(effective_at)
}

/// The current answer of one (session, question).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Row id: kept when the answer is replaced.
    pub id: AnswerId,
    pub attempt_id: AttemptId,
    pub selected_option_index: i32,
    pub is_correct: bool,
    pub answered_at: DateTime<Utc>,
    pub changed_count: i32,
    /// Not stored yet (written with an insert, not an update).
    pub is_new: bool,
}

/// A won attempt, ready to be folded into the answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAttempt {
    pub attempt_id: AttemptId,
    pub session_id: SessionId,
    pub question_id: QuestionId,
    pub selected_option_index: i32,
    pub is_correct: bool,
    pub effective_at: DateTime<Utc>,
    /// Request order, the tie-break between equal times.
    pub order: usize,
}

/// How a session's counters change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScoreDelta {
    /// Questions answered for the first time (also added to `total_questions`).
    pub answered: i32,
    pub correct: i32,
}

/// What a current answer is kept by: one per question per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerKey {
    pub session_id: SessionId,
    pub question_id: QuestionId,
}

/// The writes that follow from folding attempts into the current answers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerPlan {
    /// Changed answers by (session, question), each once.
    pub answers: BTreeMap<AnswerKey, Answer>,
    pub deltas: BTreeMap<SessionId, ScoreDelta>,
}

/// One answer per question per session: attempts are replayed in answer-time order; a
/// later one replaces the current answer (`changed_count` goes up when the option
/// differs), an earlier one is history only. The score counts each question once.
pub fn fold_answers(
    mut current: HashMap<AnswerKey, Answer>,
    attempts: &[NewAttempt],
    new_answer_id: &mut impl FnMut() -> AnswerId,
) -> AnswerPlan {
    let mut ordered: Vec<&NewAttempt> = attempts.iter().collect();
    ordered.sort_by_key(|a| (a.effective_at, a.order));
    let mut plan = AnswerPlan::default();
    for attempt in ordered {
        let pair = AnswerKey {
            session_id: attempt.session_id,
            question_id: attempt.question_id,
        };
        let delta = plan.deltas.entry(attempt.session_id).or_default();
        match current.get_mut(&pair) {
            None => {
                delta.answered += 1;
                delta.correct += i32::from(attempt.is_correct);
                let answer = Answer {
                    id: new_answer_id(),
                    attempt_id: attempt.attempt_id,
                    selected_option_index: attempt.selected_option_index,
                    is_correct: attempt.is_correct,
                    answered_at: attempt.effective_at,
                    changed_count: 0,
                    is_new: true,
                };
                current.insert(pair, answer.clone());
                plan.answers.insert(pair, answer);
            }
            Some(answer) if attempt.effective_at > answer.answered_at => {
                delta.correct += i32::from(attempt.is_correct) - i32::from(answer.is_correct);
                if answer.selected_option_index != attempt.selected_option_index {
                    answer.changed_count = answer.changed_count.saturating_add(1);
                }
                answer.attempt_id = attempt.attempt_id;
                answer.selected_option_index = attempt.selected_option_index;
                answer.is_correct = attempt.is_correct;
                answer.answered_at = attempt.effective_at;
                plan.answers.insert(pair, answer.clone());
            }
            Some(_) => {}
        }
    }
    plan.deltas.retain(|_, d| *d != ScoreDelta::default());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::payload_hash::v1_hash;

    fn at(text: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(text).expect("test time")
    }

    fn utc(text: &str) -> DateTime<Utc> {
        at(text).with_timezone(&Utc)
    }

    fn id<T: From<uuid::Uuid>>(n: u128) -> T {
        uuid::Uuid::from_u128(n).into()
    }

    const NOW: &str = "2026-12-01T12:00:00Z";

    fn input(question: QuestionId, index: i64, answered: &str) -> AttemptInput {
        let answered_at = at(answered);
        AttemptInput {
            client_attempt_id: id(1),
            idempotency_key: id(2),
            offline_session_id: Some(id(3)),
            session_id: None,
            question_id: question,
            selected_option_index: index,
            payload_hash: v1_hash(question.into_uuid(), index, &answered_at),
            answered_at,
            package_id: None,
        }
    }

    fn key(option_count: usize, correct_index: i32) -> ScoringKey {
        ScoringKey {
            option_count,
            correct_index,
        }
    }

    fn facts() -> Facts {
        let mut facts = Facts::default();
        facts.questions.insert(
            id(10),
            QuestionFact {
                key: key(4, 2),
                scope: Scope {
                    year: 1,
                    block: Some(2),
                    theme: Some(3),
                },
                answerable: true,
            },
        );
        facts.questions.insert(
            id(11),
            QuestionFact {
                key: key(3, 0),
                scope: Scope {
                    year: 1,
                    block: None,
                    theme: None,
                },
                answerable: false,
            },
        );
        facts.sessions_by_id.insert(
            id(20),
            SessionFact {
                id: id(20),
                state: SessionState::Active,
            },
        );
        facts.sessions_by_id.insert(
            id(21),
            SessionFact {
                id: id(21),
                state: SessionState::Closed,
            },
        );
        facts.sessions_by_offline.insert(
            id(30),
            SessionFact {
                id: id(21),
                state: SessionState::Closed,
            },
        );
        facts.sessions_by_offline.insert(
            id(31),
            SessionFact {
                id: id(20),
                state: SessionState::Active,
            },
        );
        facts.packages.insert(
            id(40),
            Arc::new(PackageScoring {
                questions: HashMap::from([(id(10), key(2, 1))]),
            }),
        );
        facts
    }

    fn code(result: Result<Checked, Rejection>) -> Option<SyncErrorCode> {
        result.err().map(|(code, _)| code)
    }

    #[test]
    fn range_covers_1970_to_9999() {
        assert!(in_range(&at("1970-01-01T00:00:00Z")));
        assert!(in_range(&at("9999-12-31T23:59:59.999Z")));
        assert!(in_range(&at("1970-01-01T01:00:00+01:00")));
        assert!(!in_range(&at("1969-12-31T23:59:59.999Z")));
        assert!(!in_range(&at("1970-01-01T00:30:00+01:00")));
        assert!(!in_range(&at("9999-12-31T23:59:59-01:00")));
    }

    #[test]
    fn skew_is_refused_outside_the_range_and_never_overflows() {
        let now = utc(NOW);
        assert_eq!(skew_of(now, None), Ok(None));
        assert_eq!(
            skew_of(now, Some(&at("2026-12-01T11:59:00Z"))),
            Ok(Some(Duration::minutes(1)))
        );
        let extreme = DateTime::parse_from_rfc3339("-262000-01-01T00:00:00Z");
        if let Ok(extreme) = extreme {
            assert!(skew_of(now, Some(&extreme)).is_err());
        }
        assert!(skew_of(now, Some(&at("1969-12-31T23:59:59Z"))).is_err());
        // The widest skews still correct without overflow.
        let far = skew_of(now, Some(&at("1970-01-01T00:00:00Z")))
            .ok()
            .flatten();
        assert!(corrected_time(&at("9999-12-31T23:59:59Z"), far).is_none());
        let back = skew_of(now, Some(&at("9999-12-31T23:59:59Z")))
            .ok()
            .flatten();
        assert!(corrected_time(&at("1970-01-01T00:00:00Z"), back).is_none());
    }

    #[test]
    fn a_reset_phone_clock_is_corrected_by_the_skew() {
        let now = utc(NOW);
        let skew = skew_of(now, Some(&at("1970-01-01T00:10:00Z")))
            .ok()
            .flatten();
        let corrected = corrected_time(&at("1970-01-01T00:07:00Z"), skew);
        assert_eq!(corrected, Some(utc("2026-12-01T11:57:00Z")));
        let item = input(id(10), 2, "1970-01-01T00:07:00Z");
        let checked = check(&item, &facts(), now, skew).expect("accepted");
        assert_eq!(checked.effective_at, utc("2026-12-01T11:57:00Z"));
    }

    #[test]
    fn corrected_time_truncates_to_microseconds() {
        let t = corrected_time(&at("2026-12-01T10:00:00.123456789+02:00"), None);
        assert_eq!(t, Some(utc("2026-12-01T08:00:00.123456Z")));
    }

    #[test]
    fn precheck_order_range_then_hash() {
        let mut item = input(id(10), 1, "1969-12-31T23:00:00Z");
        item.payload_hash = "bad".into();
        assert_eq!(
            precheck(&item).map_err(|e| e.0),
            Err(SyncErrorCode::InvalidAttempt)
        );
        let mut item = input(id(10), 1, "2026-12-01T11:00:00Z");
        assert!(precheck(&item).is_ok());
        item.payload_hash = item.payload_hash.to_uppercase();
        assert!(precheck(&item).is_ok(), "compared case-insensitively");
        item.selected_option_index = 2;
        assert_eq!(
            precheck(&item).map_err(|e| e.0),
            Err(SyncErrorCode::PayloadHashMismatch)
        );
    }

    #[test]
    fn repeated_keys_go_to_later_rounds() {
        let rounds = plan_rounds(&[(0, id(1)), (1, id(2)), (2, id(1)), (3, id(1)), (4, id(3))]);
        assert_eq!(rounds, vec![vec![0, 1, 4], vec![2], vec![3]]);
        assert!(plan_rounds(&[]).is_empty());
    }

    #[test]
    fn record_outcomes() {
        let abc = PayloadHash::from_digest([0xab; 32]);
        let abd = PayloadHash::from_digest([0xad; 32]);
        let record = Record {
            payload_hash: abc.clone(),
            attempt_id: id(5),
            session_id: id(6),
        };
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        assert_eq!(Record::decode("abc|x|y"), None);
        assert_eq!(Record::decode(&format!("{}|extra", record.encode())), None);
        let dup = record.outcome_for(id(1), &abc);
        assert_eq!(dup.status, SyncStatus::Duplicate);
        assert_eq!(
            (dup.server_attempt_id, dup.server_session_id),
            (Some(id(5)), Some(id(6)))
        );
        let reused = record.outcome_for(id(1), &abd);
        assert_eq!(reused.error_code, Some(SyncErrorCode::IdempotencyKeyReused));
    }

    #[test]
    fn session_checks() {
        let (facts, now) = (facts(), utc(NOW));
        let mut item = input(id(10), 2, "2026-12-01T11:00:00Z");
        item.offline_session_id = None;
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::SessionRequired)
        );
        item.session_id = Some(id(99));
        item.offline_session_id = Some(id(31));
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::SessionNotFound),
            "session_id wins over offline_session_id"
        );
        item.session_id = Some(id(21));
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::SessionClosed)
        );
        item.session_id = Some(id(20));
        assert_eq!(
            check(&item, &facts, now, None).map(|c| c.target),
            Ok(Target::Session(id(20)))
        );
        item.session_id = None;
        item.offline_session_id = Some(id(30));
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::SessionClosed),
            "a submitted offline session stays the mapping"
        );
        item.offline_session_id = Some(id(31));
        assert_eq!(
            check(&item, &facts, now, None).map(|c| c.target),
            Ok(Target::Session(id(20)))
        );
        item.offline_session_id = Some(id(32));
        let checked = check(&item, &facts, now, None).expect("new offline session");
        assert_eq!(checked.target, Target::NewOffline(id(32)));
        assert_eq!(
            checked.scope,
            Scope {
                year: 1,
                block: Some(2),
                theme: Some(3),
            }
        );
    }

    #[test]
    fn session_is_checked_before_the_question() {
        let mut item = input(id(99), 0, "2026-12-01T11:00:00Z");
        item.offline_session_id = None;
        assert_eq!(
            code(check(&item, &facts(), utc(NOW), None)),
            Some(SyncErrorCode::SessionRequired)
        );
    }

    #[test]
    fn question_checks_and_drafts() {
        let (facts, now) = (facts(), utc(NOW));
        let item = input(id(99), 0, "2026-12-01T11:00:00Z");
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::QuestionNotFound)
        );
        let draft = input(id(11), 0, "2026-12-01T11:00:00Z");
        assert_eq!(
            code(check(&draft, &facts, now, None)),
            Some(SyncErrorCode::QuestionNotFound),
            "a draft is never answerable"
        );
    }

    #[test]
    fn package_scoring_and_option_index() {
        let (facts, now) = (facts(), utc(NOW));
        let mut item = input(id(10), 1, "2026-12-01T11:00:00Z");
        item.package_id = Some(id(41));
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::PackageMismatch)
        );
        item.package_id = Some(id(40));
        let checked = check(&item, &facts, now, None).expect("in the package");
        assert!(
            checked.is_correct,
            "scored against the snapshot (correct 1)"
        );
        item.selected_option_index = 2;
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::InvalidOptionIndex),
            "the snapshot has 2 options"
        );
        item.package_id = None;
        let checked = check(&item, &facts, now, None).expect("the question now");
        assert!(
            checked.is_correct,
            "scored against the question now (correct 2)"
        );
        item.selected_option_index = 4;
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::InvalidOptionIndex)
        );
        item.selected_option_index = -1;
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::InvalidOptionIndex)
        );
    }

    #[test]
    fn future_answers_after_skew_correction() {
        let (facts, now) = (facts(), utc(NOW));
        let item = input(id(10), 0, "2026-12-01T12:05:00Z");
        assert!(
            check(&item, &facts, now, None).is_ok(),
            "5 minutes is tolerated"
        );
        let item = input(id(10), 0, "2026-12-01T12:05:00.001Z");
        assert_eq!(
            code(check(&item, &facts, now, None)),
            Some(SyncErrorCode::AnsweredAtInFuture)
        );
        // The phone runs an hour ahead: corrected, it is in the past.
        let item = input(id(10), 0, "2026-12-01T12:30:00Z");
        let skew = Some(Duration::hours(-1));
        let checked = check(&item, &facts, now, skew).expect("corrected");
        assert_eq!(checked.effective_at, utc("2026-12-01T11:30:00Z"));
    }

    fn attempt(
        n: u128,
        session: SessionId,
        question: QuestionId,
        option: i32,
        correct: bool,
        at: &str,
    ) -> NewAttempt {
        NewAttempt {
            attempt_id: id(n),
            session_id: session,
            question_id: question,
            selected_option_index: option,
            is_correct: correct,
            effective_at: utc(at),
            order: n as usize,
        }
    }

    fn pair(session_id: SessionId, question_id: QuestionId) -> AnswerKey {
        AnswerKey {
            session_id,
            question_id,
        }
    }

    fn ids() -> impl FnMut() -> AnswerId {
        let mut n = 1000;
        move || {
            n += 1;
            id(n)
        }
    }

    #[test]
    fn first_answers_count_once() {
        let (s, q1, q2) = (id(20), id(10), id(11));
        let plan = fold_answers(
            HashMap::new(),
            &[
                attempt(1, s, q1, 2, true, "2026-12-01T10:00:00Z"),
                attempt(2, s, q2, 0, false, "2026-12-01T10:01:00Z"),
            ],
            &mut ids(),
        );
        assert_eq!(plan.answers.len(), 2);
        assert_eq!(
            plan.deltas.get(&s),
            Some(&ScoreDelta {
                answered: 2,
                correct: 1
            })
        );
        assert!(
            plan.answers
                .values()
                .all(|a| a.is_new && a.changed_count == 0)
        );
    }

    #[test]
    fn a_later_answer_replaces_and_an_earlier_one_is_history() {
        let (s, q) = (id(20), id(10));
        let current = HashMap::from([(
            pair(s, q),
            Answer {
                id: id(500),
                attempt_id: id(501),
                selected_option_index: 1,
                is_correct: false,
                answered_at: utc("2026-12-01T10:00:00Z"),
                changed_count: 0,
                is_new: false,
            },
        )]);
        let older = fold_answers(
            current.clone(),
            &[attempt(1, s, q, 2, true, "2026-12-01T09:00:00Z")],
            &mut ids(),
        );
        assert_eq!(
            older,
            AnswerPlan::default(),
            "an older answer changes nothing"
        );
        let same_time = fold_answers(
            current.clone(),
            &[attempt(1, s, q, 2, true, "2026-12-01T10:00:00Z")],
            &mut ids(),
        );
        assert_eq!(
            same_time,
            AnswerPlan::default(),
            "only a later time replaces"
        );
        let later = fold_answers(
            current.clone(),
            &[attempt(1, s, q, 2, true, "2026-12-01T11:00:00Z")],
            &mut ids(),
        );
        let answer = &later.answers[&pair(s, q)];
        assert_eq!(
            (
                answer.id,
                answer.attempt_id,
                answer.changed_count,
                answer.is_new
            ),
            (id(500), id(1), 1, false)
        );
        assert_eq!(
            later.deltas.get(&s),
            Some(&ScoreDelta {
                answered: 0,
                correct: 1
            })
        );
        let same_option = fold_answers(
            current,
            &[attempt(1, s, q, 1, false, "2026-12-01T11:00:00Z")],
            &mut ids(),
        );
        let answer = &same_option.answers[&pair(s, q)];
        assert_eq!(
            (answer.attempt_id, answer.changed_count),
            (id(1), 0),
            "changed_count goes up only when the option differs"
        );
        assert!(same_option.deltas.is_empty());
    }

    #[test]
    fn attempts_of_one_batch_replay_in_time_order() {
        let (s, q) = (id(20), id(10));
        // Sent newest first: the newest still wins, and the question counts once.
        let plan = fold_answers(
            HashMap::new(),
            &[
                attempt(1, s, q, 2, true, "2026-12-01T10:02:00Z"),
                attempt(2, s, q, 0, false, "2026-12-01T10:00:00Z"),
                attempt(3, s, q, 1, false, "2026-12-01T10:01:00Z"),
            ],
            &mut ids(),
        );
        let answer = &plan.answers[&pair(s, q)];
        assert_eq!(
            (answer.attempt_id, answer.changed_count, answer.is_correct),
            (id(1), 2, true)
        );
        assert_eq!(
            plan.deltas.get(&s),
            Some(&ScoreDelta {
                answered: 1,
                correct: 1
            })
        );
    }
}
