//! The at-scale seeder: millions of stored attempts with everything the real schema
//! requires beside them (users, submitted sessions, one answer per session question, one
//! idempotency record per attempt), loaded with `COPY … FROM STDIN`.
//!
//! Loading is fast because the five tables' keys, indexes and foreign keys are dropped for
//! the load and rebuilt afterwards from their own definitions (`pg_get_constraintdef`,
//! `pg_indexes.indexdef`): building an index by sorting 10 million rows is much cheaper than
//! 10 million random insertions into it. The schema afterwards is the migrated one, by name.
//! Nothing here runs `ANALYZE`: the benchmark decides when statistics exist.
use std::{fmt::Write as _, time::Instant};

use bytes::Bytes;
use chrono::{Duration as Span, Utc};
use futures::SinkExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{Bank, ceiling::pg_connect};

const TABLES: [&str; 5] = [
    "users",
    "test_sessions",
    "attempts",
    "idempotency_records",
    "session_answers",
];

/// What to load.
#[derive(Clone, Copy)]
pub struct Plan {
    pub attempts: u64,
    pub users: u64,
    /// The first `heavy_users` users hold `heavy_attempts` each; the rest share the remainder.
    pub heavy_users: u64,
    pub heavy_attempts: u64,
}

/// The users the plan creates, heavy ones first.
pub struct Seeded {
    pub heavy: Vec<Uuid>,
    pub attempts: u64,
}

/// Deterministic user ids, so that the benchmark can sign tokens for the heavy users.
fn user_id(n: u64) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | u128::from(n))
}

pub async fn load(url: &str, bank: &Bank, plan: &Plan) -> Result<Seeded, String> {
    if plan.heavy_users * plan.heavy_attempts > plan.attempts || plan.users <= plan.heavy_users {
        return Err("scale plan: heavy users must fit in the attempts and the users".into());
    }
    let admin = pg_connect(url).await?;
    let started = Instant::now();

    // The constraints and indexes to rebuild, in the order to rebuild them.
    let tables: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
    let constraints = admin
        .query(
            "SELECT c.conrelid::regclass::text AS tbl, c.conname::text AS name, \
                    pg_get_constraintdef(c.oid) AS def, c.contype::text AS kind \
             FROM pg_constraint c \
             WHERE c.contype IN ('p', 'u', 'f') \
               AND (c.conrelid::regclass::text = ANY($1) \
                    OR (c.contype = 'f' AND c.confrelid::regclass::text = ANY($1)))",
            &[&tables],
        )
        .await
        .map_err(|e| format!("read constraints: {e}"))?;
    let constraints: Vec<(String, String, String, String)> = constraints
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let indexes = admin
        .query(
            "SELECT indexname::text, indexdef FROM pg_indexes \
             WHERE schemaname = 'public' AND tablename = ANY($1) \
               AND indexname NOT IN (SELECT conname FROM pg_constraint)",
            &[&tables],
        )
        .await
        .map_err(|e| format!("read indexes: {e}"))?;
    let indexes: Vec<(String, String)> = indexes.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (table, name, _, _) in constraints.iter().filter(|c| c.3 == "f") {
        exec(
            &admin,
            &format!("ALTER TABLE {table} DROP CONSTRAINT \"{name}\""),
        )
        .await?;
    }
    for (table, name, _, _) in constraints.iter().filter(|c| c.3 != "f") {
        exec(
            &admin,
            &format!("ALTER TABLE {table} DROP CONSTRAINT \"{name}\""),
        )
        .await?;
    }
    for (name, _) in &indexes {
        exec(&admin, &format!("DROP INDEX \"{name}\"")).await?;
    }

    // One COPY per table, each on its own connection, fed by one generator thread.
    let copies = [
        "COPY users (id, role, created_at, last_sync_at, acked_count, duplicate_count, \
         rejected_count, change_seq) FROM STDIN",
        "COPY test_sessions (id, user_id, offline_session_id, mode, status, year, block_id, \
         theme_id, total_questions, answered_count, correct_count, started_at, submitted_at, \
         updated_at, change_seq) FROM STDIN",
        "COPY attempts (id, user_id, session_id, question_id, package_id, client_attempt_id, \
         idempotency_key, payload_hash, selected_option_index, is_correct, answered_at, \
         answered_at_raw, clock_skew_ms, received_at) FROM STDIN",
        "COPY idempotency_records (user_id, idempotency_key, payload_hash, attempt_id, \
         session_id, created_at) FROM STDIN",
        "COPY session_answers (id, session_id, question_id, attempt_id, \
         selected_option_index, is_correct, answered_at, changed_count, created_at, \
         updated_at, user_id, change_seq) FROM STDIN",
    ];
    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for copy in copies {
        let client = pg_connect(url).await?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        senders.push(tx);
        writers.push(tokio::spawn(async move {
            let sink = client
                .copy_in::<_, Bytes>(copy)
                .await
                .map_err(|e| format!("{copy}: {e}"))?;
            futures::pin_mut!(sink);
            while let Some(chunk) = rx.recv().await {
                sink.send(chunk).await.map_err(|e| format!("COPY: {e}"))?;
            }
            sink.finish().await.map_err(|e| format!("COPY: {e}"))
        }));
    }
    let questions: Vec<(Uuid, usize, i32)> = bank.questions.clone();
    let plan_copy = *plan;
    let generator = tokio::task::spawn_blocking(move || generate(&plan_copy, &questions, senders));
    let generated = generator.await.map_err(|e| format!("generator: {e}"))??;
    for writer in writers {
        writer.await.map_err(|e| format!("COPY task: {e}"))??;
    }
    eprintln!(
        "  scale: {generated} attempts copied in {:.0} s; rebuilding keys and indexes",
        started.elapsed().as_secs_f64()
    );

    let rebuild = Instant::now();
    exec(&admin, "SET maintenance_work_mem = '512MB'").await?;
    for (_, def) in &indexes {
        exec(&admin, def).await?;
    }
    for (table, name, def, _) in constraints.iter().filter(|c| c.3 != "f") {
        exec(
            &admin,
            &format!("ALTER TABLE {table} ADD CONSTRAINT \"{name}\" {def}"),
        )
        .await?;
    }
    for (table, name, def, _) in constraints.iter().filter(|c| c.3 == "f") {
        exec(
            &admin,
            &format!("ALTER TABLE {table} ADD CONSTRAINT \"{name}\" {def}"),
        )
        .await?;
    }
    eprintln!(
        "  scale: keys, indexes and foreign keys rebuilt in {:.0} s (total {:.0} s)",
        rebuild.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(Seeded {
        heavy: (0..plan.heavy_users).map(user_id).collect(),
        attempts: generated,
    })
}

async fn exec(client: &tokio_postgres::Client, sql: &str) -> Result<(), String> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))
}

/// A COPY text buffer, handed to its writer when it passes `FLUSH` bytes.
struct Buffer {
    text: String,
    to: mpsc::Sender<Bytes>,
}

const FLUSH: usize = 256 * 1024;

impl Buffer {
    fn maybe_flush(&mut self) -> Result<(), String> {
        if self.text.len() >= FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        let chunk = std::mem::take(&mut self.text);
        self.to
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| "a COPY writer stopped".to_owned())
    }
}

/// Generates every row, in user order, into the five COPY streams.
fn generate(
    plan: &Plan,
    questions: &[(Uuid, usize, i32)],
    senders: Vec<mpsc::Sender<Bytes>>,
) -> Result<u64, String> {
    let mut buffers: Vec<Buffer> = senders
        .into_iter()
        .map(|to| Buffer {
            text: String::with_capacity(FLUSH + 4096),
            to,
        })
        .collect();
    let [users, sessions, attempts, records, answers] = &mut buffers[..] else {
        return Err("five streams expected".into());
    };
    let mut rng = StdRng::seed_from_u64(10);
    let now = Utc::now();
    let ts = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string();
    let light = plan.users - plan.heavy_users;
    let rest = plan.attempts - plan.heavy_users * plan.heavy_attempts;
    let mut total = 0u64;
    for n in 0..plan.users {
        let user = user_id(n);
        let count = if n < plan.heavy_users {
            plan.heavy_attempts
        } else {
            let i = n - plan.heavy_users;
            rest / light + u64::from(i < rest % light)
        };
        // The user's history: sessions of up to 100 attempts over the last year.
        let first = now - Span::days(365);
        // One change counter value per session, as one batch per session would leave it.
        let _ = writeln!(
            users.text,
            "{user}\tSTUDENT\t{}\t{}\t{count}\t0\t0\t{}",
            ts(first),
            ts(now - Span::days(1)),
            count.div_ceil(100)
        );
        let mut left = count;
        let mut session_no = 0i64;
        while left > 0 {
            let size = left.min(100) as usize;
            left -= size as u64;
            let session = Uuid::new_v4();
            let started = first + Span::minutes(session_no * 97);
            session_no += 1;
            let picks = rand::seq::index::sample(&mut rng, questions.len(), size);
            let mut correct = 0;
            for (k, i) in picks.iter().enumerate() {
                let (question, options, right) = questions[i];
                let selected = rng.random_range(0..options) as i32;
                let is_correct = selected == right;
                correct += i32::from(is_correct);
                let attempt = Uuid::new_v4();
                let key = Uuid::new_v4();
                let answered = started + Span::seconds(k as i64 * 20);
                let at = ts(answered);
                let raw = answered.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let hash = format!("{}{}", key.simple(), attempt.simple());
                let flag = if is_correct { 't' } else { 'f' };
                let _ = writeln!(
                    attempts.text,
                    "{attempt}\t{user}\t{session}\t{question}\t\\N\t{}\t{key}\t{hash}\t{selected}\t{flag}\t{at}\t{raw}\t0\t{at}",
                    Uuid::new_v4()
                );
                let _ = writeln!(
                    records.text,
                    "{user}\t{key}\t{hash}\t{attempt}\t{session}\t{at}"
                );
                let _ = writeln!(
                    answers.text,
                    "{}\t{session}\t{question}\t{attempt}\t{selected}\t{flag}\t{at}\t0\t{at}\t{at}\t{user}\t{session_no}",
                    Uuid::new_v4()
                );
            }
            let ended = ts(started + Span::seconds(size as i64 * 20));
            let _ = writeln!(
                sessions.text,
                "{session}\t{user}\t{}\tTUTOR\tSUBMITTED\t1\t\\N\t\\N\t{size}\t{size}\t{correct}\t{}\t{ended}\t{ended}\t{session_no}",
                Uuid::new_v4(),
                ts(started)
            );
            total += size as u64;
            for b in [&mut *sessions, &mut *attempts, &mut *records, &mut *answers] {
                b.maybe_flush()?;
            }
        }
        users.maybe_flush()?;
    }
    for b in buffers.iter_mut() {
        b.flush()?;
    }
    Ok(total)
}
