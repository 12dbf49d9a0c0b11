//! Reads users' committed change counters (the *head* of each pull, see
//! [`super::changes`]) for concurrent pulls together.
//!
//! After every sync each phone pulls, and nearly every such pull finds nothing new: its whole
//! cost is one primary-key read. On PostgreSQL that read is a network round trip, far dearer
//! than the rest of the request. Pulls that arrive while a read is under way wait for the
//! next one, which reads all their users in one statement (`WHERE id = ANY(…)`): under load
//! one round trip serves many pulls; an idle server reads at once, as before.
//!
//! The no-skip argument is unchanged: a pull's head is read by a statement that starts after
//! the pull was queued, so it sees every change committed before the pull arrived.
use std::{collections::HashMap, sync::Arc};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::error::AppResult;

/// Users read by one statement at most.
const MAX_BATCH: usize = 256;
/// Head reads under way at once; pulls arriving meanwhile wait for the next one.
const READS_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Option<i64>>;

/// The queue of head reads; cheap to share.
pub struct HeadReader {
    queue: mpsc::UnboundedSender<(Uuid, Reply)>,
}

impl HeadReader {
    /// Starts the reader's task on the current runtime.
    pub fn spawn(db: DatabaseConnection) -> HeadReader {
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(db, requests));
        HeadReader { queue }
    }

    /// The user's committed change counter (0 for a user never seen).
    pub async fn head(&self, db: &DatabaseConnection, user_id: Uuid) -> AppResult<i64> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send((user_id, reply)).is_ok()
            && let Ok(Some(head)) = answer.await
        {
            return Ok(head);
        }
        // The shared read failed (or its task is gone): read alone, so that this request
        // gets the error its own read gives (transient or not).
        Ok(read_heads(db, &[user_id])
            .await?
            .get(&user_id)
            .copied()
            .unwrap_or(0))
    }
}

async fn run(db: DatabaseConnection, mut requests: mpsc::UnboundedReceiver<(Uuid, Reply)>) {
    let reads = Arc::new(Semaphore::new(READS_IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        let Ok(permit) = reads.clone().acquire_owned().await else {
            return;
        };
        // Everything queued by now goes into this read.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let db = db.clone();
        tokio::spawn(async move {
            let mut ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            let heads = read_heads(&db, &ids).await.ok();
            for (id, reply) in batch {
                let head = heads
                    .as_ref()
                    .map(|heads| heads.get(&id).copied().unwrap_or(0));
                let _ = reply.send(head);
            }
            drop(permit);
        });
    }
}

/// The committed change counters of `ids` (users never seen are absent).
async fn read_heads(db: &DatabaseConnection, ids: &[Uuid]) -> AppResult<HashMap<Uuid, i64>> {
    let backend = db.get_database_backend();
    let statement = match (backend, ids) {
        (DbBackend::Postgres, [id]) => Statement::from_sql_and_values(
            backend,
            "SELECT id, change_seq FROM users WHERE id = $1",
            [(*id).into()],
        ),
        (DbBackend::Postgres, _) => Statement::from_sql_and_values(
            backend,
            "SELECT id, change_seq FROM users WHERE id = ANY($1)",
            [super::store::uuids(ids.iter().copied())],
        ),
        _ => {
            let marks = vec!["?"; ids.len()].join(", ");
            Statement::from_sql_and_values(
                backend,
                format!("SELECT id, change_seq FROM users WHERE id IN ({marks})"),
                ids.iter().map(|id| (*id).into()),
            )
        }
    };
    let rows = db.query_all_raw(statement).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "change_seq")?)))
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(Into::into)
}
