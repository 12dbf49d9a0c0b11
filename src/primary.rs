//! What this instance knows about the database it writes to: whether it is a writable
//! primary, the server's timeline, and whether commits wait for a synchronous standby.
//!
//! A promotion starts a new timeline. Idempotency records are cached under the timeline
//! they were read or written on ([`PrimaryWatch::timeline`]), so a record cached before a
//! failover is never read after it: a `DUPLICATE` the new primary cannot back (an
//! asynchronous standby that missed the last commits) would make a phone delete an answer
//! that no longer exists. The timeline is trusted only for [`LEASE`] after the last probe
//! that read it, and forgotten at once when a request meets a transient fault (the primary
//! going away is one); until a probe reads it again, the cache is bypassed.
//!
//! `/readyz` and a background task ([`spawn_watch`]) run the probe.
use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

/// How often the background task probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probed timeline is trusted without a new probe.
pub const LEASE: Duration = Duration::from_secs(3);
/// SQLite has no standby and no promotion: one timeline, for good.
const SQLITE_TIMELINE: u32 = 1;

/// The role of the server behind the pool, as the last probe found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes; its timeline is known.
    Writable { timeline: u32 },
    /// Answers, but refuses writes: a standby still in recovery, or
    /// `default_transaction_read_only` (a failover being prepared).
    ReadOnly,
    /// Does not answer.
    Unreachable,
}

/// One probe's findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub role: Role,
    /// `synchronous_standby_names` is set: a commit is durable only once a standby
    /// confirmed it.
    pub sync_standby: bool,
}

/// Reads the role of the server. Never fails: a failure is [`Role::Unreachable`].
pub async fn probe(db: &DatabaseConnection) -> Probe {
    match db.get_database_backend() {
        DbBackend::Postgres => match probe_postgres(db).await {
            Ok(probe) => probe,
            Err(e) => {
                tracing::debug!(error = %e, "primary probe failed");
                Probe {
                    role: Role::Unreachable,
                    sync_standby: false,
                }
            }
        },
        _ => Probe {
            role: match db.ping().await {
                Ok(()) => Role::Writable {
                    timeline: SQLITE_TIMELINE,
                },
                Err(_) => Role::Unreachable,
            },
            sync_standby: false,
        },
    }
}

// `pg_current_wal_lsn()` fails during recovery, hence the CASE (volatile functions are not
// folded ahead of it). The timeline is the first 8 hex digits of the WAL file name;
// `pg_control_checkpoint()` would lag until the first checkpoint after a promotion.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery() AS recovery, \
     current_setting('transaction_read_only') = 'on' AS read_only, \
     current_setting('synchronous_standby_names') <> '' AS sync_standby, \
     CASE WHEN pg_is_in_recovery() THEN NULL \
          ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END AS timeline";

async fn probe_postgres(db: &DatabaseConnection) -> Result<Probe, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, PROBE_SQL))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("primary probe".into()))?;
    let recovery: bool = row.try_get("", "recovery")?;
    let read_only: bool = row.try_get("", "read_only")?;
    let sync_standby: bool = row.try_get("", "sync_standby")?;
    let timeline: Option<String> = row.try_get("", "timeline")?;
    let timeline = timeline.and_then(|t| u32::from_str_radix(&t, 16).ok());
    let role = match (recovery || read_only, timeline) {
        (false, Some(timeline)) => Role::Writable { timeline },
        _ => Role::ReadOnly,
    };
    Ok(Probe { role, sync_standby })
}

/// The last probe's findings, shared by every request of the instance. Lock-free: the
/// sync path reads it once per request.
pub struct PrimaryWatch {
    started: Instant,
    /// `VALID | timeline` while a timeline is known, else 0.
    timeline: AtomicU64,
    /// Milliseconds since `started` of the probe that last read the timeline.
    confirmed_at_ms: AtomicU64,
    sync_standby: AtomicBool,
    /// The last probe found a writable primary.
    writable: AtomicBool,
    /// SQL statements the probes ran (they are not any request's; tests subtract them).
    pub statements: AtomicU64,
}

const VALID: u64 = 1 << 32;

impl Default for PrimaryWatch {
    fn default() -> Self {
        PrimaryWatch {
            started: Instant::now(),
            timeline: AtomicU64::new(0),
            confirmed_at_ms: AtomicU64::new(0),
            sync_standby: AtomicBool::new(false),
            writable: AtomicBool::new(false),
            statements: AtomicU64::new(0),
        }
    }
}

impl PrimaryWatch {
    /// Probes `db` and takes in the findings.
    pub async fn refresh(&self, db: &DatabaseConnection) -> Probe {
        let found = probe(db).await;
        if db.get_database_backend() == DbBackend::Postgres && found.role != Role::Unreachable {
            self.statements.fetch_add(1, Ordering::SeqCst);
        }
        self.record(found);
        found
    }

    /// Takes in a probe's findings.
    pub fn record(&self, probe: Probe) {
        self.sync_standby
            .store(probe.sync_standby, Ordering::Relaxed);
        match probe.role {
            Role::Writable { timeline } => {
                let previous = self
                    .timeline
                    .swap(VALID | u64::from(timeline), Ordering::AcqRel);
                if previous != 0 && previous != VALID | u64::from(timeline) {
                    tracing::warn!(
                        timeline = format_args!("{timeline:08X}"),
                        "the database is on a new timeline (a standby was promoted); \
                         idempotency records cached before are no longer read"
                    );
                    crate::metrics::timeline_change();
                }
                self.confirmed_at_ms
                    .store(self.elapsed_ms(), Ordering::Release);
                self.writable.store(true, Ordering::Relaxed);
            }
            Role::ReadOnly | Role::Unreachable => {
                self.forget();
                self.writable.store(false, Ordering::Relaxed);
            }
        }
        crate::metrics::primary_writable(self.writable.load(Ordering::Relaxed));
    }

    /// A request met a transient fault: the primary may be gone, so the cache is
    /// bypassed until a probe reads the timeline again.
    pub fn forget(&self) {
        self.timeline.store(0, Ordering::Release);
    }

    /// The timeline cached records are read and written under, while it is trusted.
    pub fn timeline(&self) -> Option<u32> {
        let packed = self.timeline.load(Ordering::Acquire);
        if packed & VALID == 0 {
            return None;
        }
        let age = self
            .elapsed_ms()
            .saturating_sub(self.confirmed_at_ms.load(Ordering::Acquire));
        (age <= LEASE.as_millis() as u64).then_some(packed as u32)
    }

    /// Commits wait for a synchronous standby (see `sync::batch`'s durability barrier).
    pub fn sync_standby(&self) -> bool {
        self.sync_standby.load(Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Probes every [`PROBE_INTERVAL`] for as long as the watch is in use.
pub fn spawn_watch(db: DatabaseConnection, watch: &Arc<PrimaryWatch>) {
    let watch: Weak<PrimaryWatch> = Arc::downgrade(watch);
    tokio::spawn(async move {
        loop {
            let Some(watch) = watch.upgrade() else {
                return;
            };
            let probe = match tokio::time::timeout(PROBE_INTERVAL * 2, watch.refresh(&db)).await {
                Ok(probe) => probe,
                Err(_) => {
                    let unreachable = Probe {
                        role: Role::Unreachable,
                        sync_standby: false,
                    };
                    watch.record(unreachable);
                    unreachable
                }
            };
            drop(watch);
            // The pool was closed (the server is shutting down).
            if probe.role == Role::Unreachable
                && matches!(
                    db.ping().await,
                    Err(DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))
                )
            {
                return;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writable(timeline: u32) -> Probe {
        Probe {
            role: Role::Writable { timeline },
            sync_standby: true,
        }
    }

    #[test]
    fn a_timeline_is_known_only_after_a_probe_read_it() {
        let watch = PrimaryWatch::default();
        assert_eq!(watch.timeline(), None);
        watch.record(writable(1));
        assert_eq!(watch.timeline(), Some(1));
        assert!(watch.sync_standby());
    }

    #[test]
    fn a_transient_fault_or_a_standby_forgets_the_timeline() {
        let watch = PrimaryWatch::default();
        watch.record(writable(1));
        watch.forget();
        assert_eq!(watch.timeline(), None);
        watch.record(writable(2));
        assert_eq!(watch.timeline(), Some(2));
        watch.record(Probe {
            role: Role::ReadOnly,
            sync_standby: false,
        });
        assert_eq!(watch.timeline(), None);
    }

    #[test]
    fn the_timeline_lease_runs_out() {
        let late = PrimaryWatch {
            started: Instant::now() - LEASE - Duration::from_secs(1),
            ..PrimaryWatch::default()
        };
        late.record(writable(3));
        assert_eq!(late.timeline(), Some(3));
        late.confirmed_at_ms.store(0, Ordering::Release);
        assert_eq!(late.timeline(), None);
    }
}
