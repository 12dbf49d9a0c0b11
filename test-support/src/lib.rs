//! Dev-only helpers shared by examsync's integration tests, fault suite and benchmarks, so each
//! is written once: a database URL for a test of its own, and attempts as phones send them.
//!
//! The payload hash here is written from the API reference (docs/api.md §8), independently of
//! the server's own `sync::payload_hash`, so a test built on it checks the server rather than
//! repeating it.
pub mod bench;
pub mod redis_keys;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `url` with its database name replaced by `name`, keeping any `?query`:
/// `postgres://u@h:5432/test?x=1` → `postgres://u@h:5432/NAME?x=1`.
pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The references of the sync history, each as a query counting the rows that break it.
/// On PostgreSQL `attempts` and `session_answers` hold no foreign keys (migration 8): the
/// sync path keeps these rules, and the tests that drive it (sync, faults, concurrency)
/// run every query here at their end and expect 0 from each. Plain SQL, the same on both
/// backends; the result column is `n`.
pub const ORPHAN_CHECKS: [(&str, &str); 9] = [
    (
        "an attempt of a user that does not exist",
        "SELECT COUNT(*) AS n FROM attempts a \
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)",
    ),
    (
        "an attempt in a session that does not exist or is another user's",
        "SELECT COUNT(*) AS n FROM attempts a WHERE NOT EXISTS \
         (SELECT 1 FROM test_sessions s WHERE s.id = a.session_id AND s.user_id = a.user_id)",
    ),
    (
        "an attempt of a question that does not exist",
        "SELECT COUNT(*) AS n FROM attempts a \
         WHERE NOT EXISTS (SELECT 1 FROM questions q WHERE q.id = a.question_id)",
    ),
    (
        "an attempt without its idempotency record",
        "SELECT COUNT(*) AS n FROM attempts a WHERE NOT EXISTS \
         (SELECT 1 FROM idempotency_records r WHERE r.user_id = a.user_id \
          AND r.idempotency_key = a.idempotency_key AND r.attempt_id = a.id)",
    ),
    (
        "two attempts of one (user, idempotency key)",
        "SELECT COUNT(*) AS n FROM (SELECT 1 FROM attempts \
         GROUP BY user_id, idempotency_key HAVING COUNT(*) > 1) AS d",
    ),
    (
        "an answer in a session that does not exist or is another user's",
        "SELECT COUNT(*) AS n FROM session_answers a WHERE NOT EXISTS \
         (SELECT 1 FROM test_sessions s WHERE s.id = a.session_id AND s.user_id = a.user_id)",
    ),
    (
        "an answer of a question that does not exist",
        "SELECT COUNT(*) AS n FROM session_answers a \
         WHERE NOT EXISTS (SELECT 1 FROM questions q WHERE q.id = a.question_id)",
    ),
    (
        "an answer whose attempt does not exist or is of another session or question",
        "SELECT COUNT(*) AS n FROM session_answers a WHERE NOT EXISTS \
         (SELECT 1 FROM attempts t WHERE t.id = a.attempt_id \
          AND t.session_id = a.session_id AND t.question_id = a.question_id)",
    ),
    (
        "an answer of a user that does not exist",
        "SELECT COUNT(*) AS n FROM session_answers a \
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)",
    ),
];

/// Says that the calling test skipped part of its work, and why, on a line of its own that
/// starts with `SKIPPED`. `eprintln!` output is captured by the test harness and shown only
/// for failing tests; a skip must be visible (a newcomer without PostgreSQL should see how
/// much did not run), so this writes to the process's stderr directly.
pub fn report_skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// A time as JavaScript's `toISOString()` prints it (UTC, milliseconds, `Z`).
pub fn iso_millis(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The v1 `payload_hash` of an answer.
pub fn v1_hash(question: Uuid, index: i64, answered_at: &DateTime<Utc>) -> String {
    let at = iso_millis(answered_at);
    let canonical = format!(
        r#"{{"answered_at":"{at}","question_id":"{question}","selected_option_index":{index}}}"#
    );
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// One queued attempt, as a phone would send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub client_attempt_id: Uuid,
    pub idempotency_key: Uuid,
    pub offline_session_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub question_id: Uuid,
    pub selected_option_index: i64,
    /// The wire text of `answered_at` (tests send other offsets than `Z` too).
    pub answered_at: String,
    pub payload_hash: String,
    pub package_id: Option<Uuid>,
}

impl Attempt {
    /// A fresh attempt (new ids) with a correct v1 hash, answered at `answered_at`.
    pub fn new(
        question_id: Uuid,
        selected_option_index: i64,
        answered_at: DateTime<Utc>,
        offline_session_id: Option<Uuid>,
    ) -> Self {
        Attempt {
            client_attempt_id: Uuid::new_v4(),
            idempotency_key: Uuid::new_v4(),
            offline_session_id,
            session_id: None,
            question_id,
            selected_option_index,
            answered_at: iso_millis(&answered_at),
            payload_hash: v1_hash(question_id, selected_option_index, &answered_at),
            package_id: None,
        }
    }

    /// As [`Attempt::new`], with `answered_at` given as RFC 3339 text (any offset), which is
    /// sent as it is; the hash is over its UTC instant.
    ///
    /// # Panics
    /// When `answered_at` is not RFC 3339 (a test bug).
    pub fn at_text(
        question_id: Uuid,
        selected_option_index: i64,
        answered_at: &str,
        offline_session_id: Option<Uuid>,
    ) -> Self {
        let instant = DateTime::parse_from_rfc3339(answered_at)
            .unwrap_or_else(|e| panic!("test attempt time {answered_at:?}: {e}"))
            .with_timezone(&Utc);
        Attempt {
            answered_at: answered_at.to_owned(),
            ..Attempt::new(
                question_id,
                selected_option_index,
                instant,
                offline_session_id,
            )
        }
    }

    /// The REST item (snake_case).
    pub fn rest_item(&self) -> Value {
        json!({
            "client_attempt_id": self.client_attempt_id,
            "idempotency_key": self.idempotency_key,
            "offline_session_id": self.offline_session_id,
            "session_id": self.session_id,
            "question_id": self.question_id,
            "selected_option_index": self.selected_option_index,
            "answered_at": self.answered_at,
            "payload_hash": self.payload_hash,
            "package_id": self.package_id,
        })
    }

    /// The GraphQL `SyncAttemptInput` (camelCase).
    pub fn graphql_item(&self) -> Value {
        json!({
            "clientAttemptId": self.client_attempt_id,
            "idempotencyKey": self.idempotency_key,
            "offlineSessionId": self.offline_session_id,
            "sessionId": self.session_id,
            "questionId": self.question_id,
            "selectedOptionIndex": self.selected_option_index,
            "answeredAt": self.answered_at,
            "payloadHash": self.payload_hash,
            "packageId": self.package_id,
        })
    }
}

/// The REST batch body; `sent_at` as the device clock at send, when given.
pub fn rest_body(attempts: &[Attempt], sent_at: Option<DateTime<Utc>>) -> Value {
    let items: Vec<Value> = attempts.iter().map(Attempt::rest_item).collect();
    match sent_at {
        Some(at) => json!({"sent_at": iso_millis(&at), "attempts": items}),
        None => json!({"attempts": items}),
    }
}

/// The GraphQL `SyncAttemptsInput`.
pub fn graphql_input(attempts: &[Attempt], sent_at: Option<DateTime<Utc>>) -> Value {
    let items: Vec<Value> = attempts.iter().map(Attempt::graphql_item).collect();
    match sent_at {
        Some(at) => json!({"sentAt": iso_millis(&at), "attempts": items}),
        None => json!({"attempts": items}),
    }
}

/// `count` attempts of one offline session over distinct random questions of `bank`
/// (`(question id, option count)`), answered over the last hour `spacing_ms` apart, with a
/// random millisecond each (as phones send them).
///
/// # Panics
/// When `count` exceeds the bank (a test bug).
pub fn random_batch(
    bank: &[(Uuid, usize)],
    offline_session_id: Uuid,
    count: usize,
    spacing_ms: i64,
) -> Vec<Attempt> {
    let mut rng = rand::rng();
    let start = Utc::now() - chrono::Duration::hours(1);
    rand::seq::index::sample(&mut rng, bank.len(), count)
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let (question_id, options) = bank[i];
            let selected = rng.random_range(0..options) as i64;
            let at = start
                + chrono::Duration::milliseconds(n as i64 * spacing_ms + rng.random_range(0..1000));
            Attempt::new(question_id, selected, at, Some(offline_session_id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name_and_keeps_the_query() {
        assert_eq!(
            replace_database("postgres://u@h:5432/test?sslmode=disable", "t_1"),
            "postgres://u@h:5432/t_1?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn v1_hash_matches_the_repository_vector() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../vectors/payload_hash.json"
        ))
        .expect("vectors/payload_hash.json");
        let vectors: Value = serde_json::from_str(&text).expect("vector JSON");
        let mut checked = 0;
        for v in vectors["vectors"].as_array().into_iter().flatten() {
            let (Some(q), Some(i), Some(at), Some(hash)) = (
                v["question_id"].as_str(),
                v["selected_option_index"].as_i64(),
                v["answered_at"].as_str(),
                v["payload_hash"].as_str(),
            ) else {
                continue;
            };
            let at = DateTime::parse_from_rfc3339(at)
                .expect("time")
                .with_timezone(&Utc);
            assert_eq!(v1_hash(q.parse().expect("uuid"), i, &at), hash);
            checked += 1;
        }
        assert!(
            checked > 0,
            "no v1 vector checked: the vector file's shape changed"
        );
    }
}
