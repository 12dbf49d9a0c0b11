//! A simulated phone: answers questions offline into its own queue, grouped by offline
//! sessions it makes up, and syncs the queue in batches to a random instance, retrying
//! with exponential backoff and jitter (honouring `Retry-After`) until every item is
//! answered ACKED or DUPLICATE (deleted) or REJECTED (kept aside).
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use uuid::Uuid;

/// A question of the bank, as the test imported it.
#[derive(Clone, Debug)]
pub struct Question {
    pub id: Uuid,
    pub options: usize,
    pub correct: usize,
}

/// One queued attempt.
#[derive(Clone, Debug)]
pub struct Item {
    pub client_attempt_id: Uuid,
    pub idempotency_key: Uuid,
    pub offline_session_id: Uuid,
    pub question_id: Uuid,
    pub selected_option_index: i64,
    pub answered_at: DateTime<Utc>,
    pub payload_hash: String,
    pub is_correct: bool,
}

impl Item {
    fn answered_at_text(&self) -> String {
        self.answered_at
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// The v1 payload hash, written independently of the server's code (test-support).
pub use examsync_test_support::v1_hash;

/// Items each phone resends after the drain.
const REPLAY_SAMPLE: usize = 150;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Rest,
    Graphql,
}

/// Counters shared by all phones.
#[derive(Default)]
pub struct Stats {
    /// Batches taken from a queue (a retry of one is not a new batch).
    pub batches: AtomicU64,
    /// HTTP requests sent (a duplicated batch counts twice).
    pub requests: AtomicU64,
    /// Re-sends after a failed request.
    pub retries: AtomicU64,
    pub transport_errors: AtomicU64,
    /// REST `503` + `Retry-After` or GraphQL `UNAVAILABLE`.
    pub unavailable: AtomicU64,
    /// Batches sent to both instances at once.
    pub duplicate_pairs: AtomicU64,
    pub acked: AtomicU64,
    pub duplicate: AtomicU64,
    /// Items resent after the drain (all must be DUPLICATE).
    pub replayed: AtomicU64,
    pub rejected: AtomicU64,
    /// Responses that are none of 200, 503 + Retry-After, GraphQL UNAVAILABLE.
    pub unexpected: AtomicU64,
}

/// What the phones were told about one idempotency key.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    pub user: Uuid,
    pub client_attempt_id: Uuid,
    pub attempt_id: Uuid,
    pub session_id: Uuid,
    pub acked: u32,
    pub duplicate: u32,
    /// DUPLICATE answers to the replay after the drain.
    pub replayed: u32,
}

pub struct Shared {
    pub bases: Vec<String>,
    pub client: reqwest::Client,
    pub stop_generating: AtomicBool,
    pub give_up_at: Mutex<Option<Instant>>,
    pub stats: Stats,
    pub ledger: Mutex<HashMap<Uuid, KeyRecord>>,
    pub violations: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(bases: Vec<String>) -> Shared {
        Shared {
            bases,
            // One connection per request (the proxy closes it anyway); no compression, so
            // the proxy can read what it drops.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(45))
                .connect_timeout(Duration::from_secs(3))
                .pool_max_idle_per_host(0)
                .no_gzip()
                .no_brotli()
                .build()
                .expect("http client"),
            stop_generating: AtomicBool::new(false),
            give_up_at: Mutex::new(None),
            stats: Stats::default(),
            ledger: Mutex::new(HashMap::new()),
            violations: Mutex::new(Vec::new()),
        }
    }

    pub fn violation(&self, message: String) {
        let mut violations = self.violations.lock().expect("violations");
        if violations.len() < 1000 {
            violations.push(message);
        }
    }

    fn gave_up(&self) -> bool {
        self.give_up_at
            .lock()
            .expect("deadline")
            .is_some_and(|at| Instant::now() > at)
    }
}

pub struct PhoneConfig {
    pub index: usize,
    pub user: Uuid,
    pub token: String,
    pub surface: Surface,
    /// Whether batches carry `sent_at` (newer clients) or not (older ones).
    pub sends_sent_at: bool,
    pub seed: u64,
}

/// Everything a phone did, for the final checks.
pub struct PhoneReport {
    pub index: usize,
    pub user: Uuid,
    pub generated: Vec<Item>,
    pub queue_left: Vec<Item>,
    pub rejected: Vec<(Item, String)>,
    /// offline session → the server session it was told.
    pub sessions: HashMap<Uuid, Uuid>,
}

/// One result, whichever surface it came from (status in lower case).
#[derive(Clone, Debug)]
struct Outcome {
    client_attempt_id: Option<Uuid>,
    status: String,
    attempt_id: Option<Uuid>,
    session_id: Option<Uuid>,
    error_code: Option<String>,
}

enum Verdict {
    Done,
    Rejected(String),
    Unknown,
}

struct OfflineSession {
    id: Uuid,
    remaining: Vec<usize>,
    answered: Vec<usize>,
}

struct Phone {
    config: PhoneConfig,
    bank: Arc<Vec<Question>>,
    shared: Arc<Shared>,
    rng: StdRng,
    queue: VecDeque<Item>,
    generated: Vec<Item>,
    rejected: Vec<(Item, String)>,
    sessions: HashMap<Uuid, Uuid>,
    current: Option<OfflineSession>,
    /// Resending already acknowledged items after the drain.
    replaying: bool,
    /// The phone's answer clock: starts weeks ago and moves 3–9 s per answer, so answers
    /// of one phone are strictly ordered far beyond any clock-skew correction.
    clock: DateTime<Utc>,
}

pub async fn run(
    config: PhoneConfig,
    bank: Arc<Vec<Question>>,
    shared: Arc<Shared>,
) -> PhoneReport {
    let mut phone = Phone {
        rng: StdRng::seed_from_u64(config.seed),
        config,
        bank,
        shared,
        queue: VecDeque::new(),
        generated: Vec::new(),
        rejected: Vec::new(),
        sessions: HashMap::new(),
        current: None,
        replaying: false,
        clock: Utc::now() - chrono::Duration::days(30),
    };
    phone.run().await;
    phone.replay().await;
    PhoneReport {
        index: phone.config.index,
        user: phone.config.user,
        generated: phone.generated,
        queue_left: phone.queue.into_iter().collect(),
        rejected: phone.rejected,
        sessions: phone.sessions,
    }
}

impl Phone {
    async fn run(&mut self) {
        loop {
            let stopping = self.shared.stop_generating.load(Ordering::SeqCst);
            if !stopping {
                let answers = self.rng.random_range(3..=40);
                self.answer(answers);
                // Sometimes the phone stays offline and the queue grows.
                if self.rng.random_bool(0.25) {
                    let pause = self.rng.random_range(200..1200);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            }
            self.sync_queue().await;
            if (stopping && self.queue.is_empty()) || self.shared.gave_up() {
                return;
            }
            let pause = if stopping {
                100
            } else {
                self.rng.random_range(100..900)
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// After the drain: resends a sample of what was already acknowledged, in batches of
    /// up to 100 (a replay after a reinstall or a lost sync state). Every item must come
    /// back DUPLICATE with the ids first given.
    async fn replay(&mut self) {
        if self.shared.gave_up() || !self.queue.is_empty() {
            return;
        }
        self.replaying = true;
        let count = REPLAY_SAMPLE.min(self.generated.len());
        let mut sample: Vec<Item> =
            rand::seq::index::sample(&mut self.rng, self.generated.len(), count)
                .iter()
                .map(|i| self.generated[i].clone())
                .filter(|item| {
                    !self
                        .rejected
                        .iter()
                        .any(|(r, _)| r.idempotency_key == item.idempotency_key)
                })
                .collect();
        sample.sort_by_key(|item| item.answered_at);
        self.shared
            .stats
            .replayed
            .fetch_add(sample.len() as u64, Ordering::Relaxed);
        while !sample.is_empty() {
            let size = self.rng.random_range(50..=100).min(sample.len());
            let batch: Vec<Item> = sample.drain(..size).collect();
            self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
            let verdicts = self.deliver(&batch).await;
            for (item, verdict) in batch.into_iter().zip(verdicts) {
                if let Verdict::Unknown = verdict {
                    self.queue.push_back(item); // reported as still queued
                }
            }
        }
    }

    /// Records `count` answers: mostly new questions of the current offline session,
    /// sometimes a changed answer to one already answered (a new attempt, later in time).
    fn answer(&mut self, count: usize) {
        for _ in 0..count {
            let session_done = self.current.as_ref().is_none_or(|s| s.remaining.is_empty());
            if session_done {
                let size = self.rng.random_range(10..=40).min(self.bank.len());
                let remaining =
                    rand::seq::index::sample(&mut self.rng, self.bank.len(), size).into_vec();
                self.current = Some(OfflineSession {
                    id: Uuid::new_v4(),
                    remaining,
                    answered: Vec::new(),
                });
            }
            let change_mind = self.rng.random_bool(0.12);
            let session = self.current.as_mut().expect("a session");
            let question = if change_mind && !session.answered.is_empty() {
                *session.answered.choose(&mut self.rng).expect("answered")
            } else {
                let q = session.remaining.pop().expect("remaining");
                session.answered.push(q);
                q
            };
            let offline = session.id;
            let q = &self.bank[question];
            let option = self.rng.random_range(0..q.options) as i64;
            self.clock += chrono::Duration::milliseconds(self.rng.random_range(3000..9000));
            let answered_at = self.clock.min(Utc::now() - chrono::Duration::seconds(1));
            let item = Item {
                client_attempt_id: Uuid::new_v4(),
                idempotency_key: Uuid::new_v4(),
                offline_session_id: offline,
                question_id: q.id,
                selected_option_index: option,
                answered_at,
                payload_hash: v1_hash(q.id, option, &answered_at),
                is_correct: option as usize == q.correct,
            };
            self.generated.push(item.clone());
            self.queue.push_back(item);
        }
    }

    fn batch_size(&mut self) -> usize {
        let roll = self.rng.random_range(0..100);
        if roll < 90 {
            self.rng.random_range(5..=30)
        } else if roll < 97 {
            self.rng.random_range(31..=100)
        } else {
            self.rng.random_range(1..=4)
        }
    }

    /// Sends the queue in batches until it is empty (or the run gives up).
    async fn sync_queue(&mut self) {
        while !self.queue.is_empty() {
            let size = self.batch_size().min(self.queue.len());
            let batch: Vec<Item> = self.queue.drain(..size).collect();
            self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
            let verdicts = self.deliver(&batch).await;
            let mut back = Vec::new();
            for (item, verdict) in batch.into_iter().zip(verdicts) {
                match verdict {
                    Verdict::Done => {}
                    Verdict::Rejected(code) => self.rejected.push((item, code)),
                    Verdict::Unknown => back.push(item),
                }
            }
            let gave_up = !back.is_empty();
            for item in back.into_iter().rev() {
                self.queue.push_front(item);
            }
            if gave_up {
                return;
            }
        }
    }

    /// Sends one batch until some instance answers it; `Unknown` for every item if the run
    /// gave up first.
    async fn deliver(&mut self, batch: &[Item]) -> Vec<Verdict> {
        let mut attempt = 0u32;
        loop {
            if self.shared.gave_up() {
                return batch.iter().map(|_| Verdict::Unknown).collect();
            }
            // Fault 5: now and then the same batch goes to both instances at once.
            let pair = attempt == 0 && self.rng.random_bool(0.08);
            let result = if pair {
                self.shared
                    .stats
                    .duplicate_pairs
                    .fetch_add(1, Ordering::Relaxed);
                let (a, b) = futures::join!(
                    self.send(&self.shared.bases[0], batch),
                    self.send(&self.shared.bases[1], batch)
                );
                match (a, b) {
                    (Ok(a), Ok(b)) => {
                        let first = self.process(batch, &a);
                        let second = self.process(batch, &b);
                        Ok(first
                            .into_iter()
                            .zip(second)
                            .map(|(x, y)| match (x, y) {
                                (Verdict::Done, _) | (_, Verdict::Done) => Verdict::Done,
                                (Verdict::Rejected(c), _) | (_, Verdict::Rejected(c)) => {
                                    Verdict::Rejected(c)
                                }
                                _ => Verdict::Unknown,
                            })
                            .collect())
                    }
                    (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(self.process(batch, &a)),
                    (Err(a), Err(b)) => Err(a.max(b)),
                }
            } else {
                let base =
                    self.shared.bases[self.rng.random_range(0..self.shared.bases.len())].clone();
                match self.send(&base, batch).await {
                    Ok(outcomes) => Ok(self.process(batch, &outcomes)),
                    Err(retry_after) => Err(retry_after),
                }
            };
            let retry_after = match result {
                Ok(verdicts) if verdicts.iter().all(|v| !matches!(v, Verdict::Unknown)) => {
                    return verdicts;
                }
                Ok(_) => None, // a malformed answer (already reported): send it again
                Err(retry_after) => retry_after,
            };
            attempt += 1;
            self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            let delay = self.backoff(attempt, retry_after);
            tokio::time::sleep(delay).await;
        }
    }

    /// The client advice of `docs/mobile/offline.md` section 8 at test scale (base 100 ms,
    /// cap 3.2 s instead of 1 s and 5 min): exponential backoff with full jitter, and
    /// `Retry-After` as a floor plus a little jitter.
    fn backoff(&mut self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = (100u64 << attempt.saturating_sub(1).min(5)).min(3_200);
        let mut millis = self.rng.random_range(0..=ceiling);
        if let Some(after) = retry_after {
            let floor = after.as_millis() as u64;
            millis = millis.max(floor + self.rng.random_range(0..=(floor / 5).max(1000)));
        }
        Duration::from_millis(millis)
    }

    /// One HTTP request; `Err(Retry-After)` when it failed as a whole.
    async fn send(&self, base: &str, batch: &[Item]) -> Result<Vec<Outcome>, Option<Duration>> {
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let sent_at = self
            .config
            .sends_sent_at
            .then(|| Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
        let request = match self.config.surface {
            Surface::Rest => {
                let attempts: Vec<Value> = batch
                    .iter()
                    .map(|a| {
                        json!({
                            "client_attempt_id": a.client_attempt_id,
                            "idempotency_key": a.idempotency_key,
                            "offline_session_id": a.offline_session_id,
                            "session_id": null,
                            "question_id": a.question_id,
                            "selected_option_index": a.selected_option_index,
                            "answered_at": a.answered_at_text(),
                            "payload_hash": a.payload_hash,
                            "package_id": null,
                        })
                    })
                    .collect();
                let mut body = json!({ "attempts": attempts });
                if let Some(sent_at) = &sent_at {
                    body["sent_at"] = json!(sent_at);
                }
                self.shared
                    .client
                    .post(format!("{base}/api/v1/sync/attempts:batch"))
                    .json(&body)
            }
            Surface::Graphql => {
                let attempts: Vec<Value> = batch
                    .iter()
                    .map(|a| {
                        json!({
                            "clientAttemptId": a.client_attempt_id,
                            "idempotencyKey": a.idempotency_key,
                            "offlineSessionId": a.offline_session_id,
                            "questionId": a.question_id,
                            "selectedOptionIndex": a.selected_option_index,
                            "answeredAt": a.answered_at_text(),
                            "payloadHash": a.payload_hash,
                        })
                    })
                    .collect();
                self.shared.client.post(format!("{base}/graphql")).json(&json!({
                    "query": "mutation($input: SyncAttemptsInput!) { syncAttempts(input: $input) { results { clientAttemptId status serverAttemptId serverSessionId errorCode message } } }",
                    "variables": {"input": {"attempts": attempts, "sentAt": sent_at}},
                }))
            }
        };
        let response = match request.bearer_auth(&self.config.token).send().await {
            Ok(response) => response,
            Err(_) => {
                stats.transport_errors.fetch_add(1, Ordering::Relaxed);
                return Err(None);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.text().await {
            Ok(text) => text,
            Err(_) => {
                stats.transport_errors.fetch_add(1, Ordering::Relaxed);
                return Err(None);
            }
        };
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let unexpected = |what: String| {
            stats.unexpected.fetch_add(1, Ordering::Relaxed);
            let mut text = what;
            text.truncate(400);
            self.shared.violation(format!(
                "phone {}: unexpected response: {text}",
                self.config.index
            ));
        };
        if status == 503 {
            stats.unavailable.fetch_add(1, Ordering::Relaxed);
            if retry_after.is_none() {
                unexpected(format!("503 without Retry-After: {text}"));
            }
            if body["error_code"] != "UNAVAILABLE" && self.config.surface == Surface::Rest {
                unexpected(format!("503 with another error_code: {text}"));
            }
            return Err(retry_after);
        }
        if status != 200 {
            unexpected(format!("HTTP {status}: {text}"));
            return Err(retry_after);
        }
        let results = match self.config.surface {
            Surface::Rest => body["results"].as_array(),
            Surface::Graphql => {
                if let Some(error) = body["errors"].get(0) {
                    let code = error["extensions"]["code"].as_str().unwrap_or_default();
                    let after = error["extensions"]["retryAfter"]
                        .as_u64()
                        .map(Duration::from_secs);
                    if code == "UNAVAILABLE" && after.is_some() {
                        stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    } else {
                        unexpected(format!("GraphQL error: {text}"));
                    }
                    return Err(after);
                }
                body["data"]["syncAttempts"]["results"].as_array()
            }
        };
        let Some(results) = results else {
            unexpected(format!("200 without results: {text}"));
            return Err(None);
        };
        let field = |r: &Value, rest: &str, graphql: &str| -> Option<String> {
            let key = match self.config.surface {
                Surface::Rest => rest,
                Surface::Graphql => graphql,
            };
            r[key].as_str().map(str::to_owned)
        };
        let uuid = |s: Option<String>| s.and_then(|s| Uuid::parse_str(&s).ok());
        Ok(results
            .iter()
            .map(|r| Outcome {
                client_attempt_id: uuid(field(r, "client_attempt_id", "clientAttemptId")),
                status: field(r, "status", "status")
                    .unwrap_or_default()
                    .to_lowercase(),
                attempt_id: uuid(field(r, "server_attempt_id", "serverAttemptId")),
                session_id: uuid(field(r, "server_session_id", "serverSessionId")),
                error_code: field(r, "error_code", "errorCode"),
            })
            .collect())
    }

    /// Checks a 200 answer item by item and records it in the ledger.
    fn process(&mut self, batch: &[Item], outcomes: &[Outcome]) -> Vec<Verdict> {
        let who = format!("phone {}", self.config.index);
        if outcomes.len() != batch.len() {
            self.shared.violation(format!(
                "{who}: {} results for {} items",
                outcomes.len(),
                batch.len()
            ));
            return batch.iter().map(|_| Verdict::Unknown).collect();
        }
        let stats = &self.shared.stats;
        let mut verdicts = Vec::with_capacity(batch.len());
        for (item, outcome) in batch.iter().zip(outcomes) {
            if outcome.client_attempt_id != Some(item.client_attempt_id) {
                self.shared
                    .violation(format!("{who}: results out of request order: {outcome:?}"));
                verdicts.push(Verdict::Unknown);
                continue;
            }
            match (
                outcome.status.as_str(),
                outcome.attempt_id,
                outcome.session_id,
            ) {
                ("acked" | "duplicate", Some(attempt_id), Some(session_id)) => {
                    let acked = outcome.status == "acked";
                    if acked {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.duplicate.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut ledger = self.shared.ledger.lock().expect("ledger");
                    let record = ledger
                        .entry(item.idempotency_key)
                        .or_insert_with(|| KeyRecord {
                            user: self.config.user,
                            client_attempt_id: item.client_attempt_id,
                            attempt_id,
                            session_id,
                            acked: 0,
                            duplicate: 0,
                            replayed: 0,
                        });
                    if (record.attempt_id, record.session_id) != (attempt_id, session_id) {
                        let message = format!(
                            "{who}: key {} answered with ids ({attempt_id}, {session_id}) after ({}, {})",
                            item.idempotency_key, record.attempt_id, record.session_id
                        );
                        drop(ledger);
                        self.shared.violation(message);
                    } else {
                        if acked {
                            record.acked += 1;
                        } else if self.replaying {
                            record.replayed += 1;
                        } else {
                            record.duplicate += 1;
                        }
                        let twice = record.acked > 1;
                        drop(ledger);
                        if acked && self.replaying {
                            self.shared.violation(format!(
                                "{who}: key {} ACKED again when replayed after the drain",
                                item.idempotency_key
                            ));
                        }
                        if twice {
                            self.shared.violation(format!(
                                "{who}: key {} ACKED more than once",
                                item.idempotency_key
                            ));
                        }
                    }
                    let known = *self
                        .sessions
                        .entry(item.offline_session_id)
                        .or_insert(session_id);
                    if known != session_id {
                        self.shared.violation(format!(
                            "{who}: offline session {} mapped to {session_id} after {known}",
                            item.offline_session_id
                        ));
                    }
                    verdicts.push(Verdict::Done);
                }
                ("rejected", _, _) => {
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    let code = outcome.error_code.clone().unwrap_or_default();
                    self.shared.violation(format!(
                        "{who}: item {} REJECTED {code}",
                        item.idempotency_key
                    ));
                    verdicts.push(Verdict::Rejected(code));
                }
                _ => {
                    self.shared
                        .violation(format!("{who}: malformed result {outcome:?}"));
                    verdicts.push(Verdict::Unknown);
                }
            }
        }
        verdicts
    }
}
