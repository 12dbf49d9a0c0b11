//! Commits whose synchronous replication was not confirmed.
//!
//! With `synchronous_standby_names` set, PostgreSQL's `COMMIT` waits until a standby has
//! the commit. When that wait is cancelled (`pg_cancel_backend`, a pooler's or a
//! watchdog's cancel request) the `COMMIT` does not fail: it returns success, with only a
//! WARNING notice, and the transaction exists on the primary alone. Answering `ACKED` then
//! would let a phone delete an answer that a failover loses.
//!
//! sqlx reports a notice only as a `tracing` event (target `sqlx::postgres::notice`), in
//! the task that reads the connection, i.e. the one awaiting the `COMMIT`. [`NoticeLayer`]
//! sees those events and marks the commit being watched by [`watch_commit`] through a
//! task-local flag. A commit normally produces no notice at all, so any WARNING during it
//! counts as "not confirmed": the message text is translated under `lc_messages`, and a
//! false alarm costs one retry, a missed one an answer.
//!
//! Cost on the hot path: one task-local scope per commit. The layer's own filter lets
//! only notices through, so no other event reaches it.
use std::{cell::Cell, future::Future};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    Layer,
    filter::{Filtered, Targets},
    layer::Context,
};

const NOTICE_TARGET: &str = "sqlx::postgres::notice";
/// The target of [`detector_installed`]'s own event.
const SELF_TEST_TARGET: &str = "examsync::replication::self_test";

tokio::task_local! {
    static UNCONFIRMED: Cell<bool>;
}

/// Whether a watched commit was confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// No warning: committed and, with a synchronous standby, replicated.
    Confirmed,
    /// The server warned while committing (a cancelled synchronous-replication wait):
    /// committed locally only. A transient fault for the request.
    Unconfirmed,
}

/// Awaits `commit` (a future that sends `COMMIT`) and says whether the server warned
/// while it ran.
pub async fn watch_commit<T>(commit: impl Future<Output = T>) -> (T, Commit) {
    UNCONFIRMED
        .scope(Cell::new(false), async move {
            let out = commit.await;
            let warned = UNCONFIRMED.try_with(Cell::get).unwrap_or(false);
            (
                out,
                if warned {
                    Commit::Unconfirmed
                } else {
                    Commit::Confirmed
                },
            )
        })
        .await
}

/// The `tracing` layer that sees PostgreSQL's notices. Installed by `telemetry::init`; an
/// embedding program that installs its own subscriber adds [`notice_layer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoticeLayer;

/// [`NoticeLayer`] with its own filter: only warnings and errors of sqlx's notice target,
/// whatever `RUST_LOG` says (quieting sqlx's logs must not switch the detection off).
pub fn notice_layer<S>() -> Filtered<NoticeLayer, Targets, S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    NoticeLayer.with_filter(
        Targets::new()
            .with_target(NOTICE_TARGET, Level::WARN)
            .with_target(SELF_TEST_TARGET, Level::TRACE),
    )
}

impl<S: Subscriber> Layer<S> for NoticeLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let notice = meta.target() == NOTICE_TARGET && *meta.level() <= Level::WARN;
        // Outside a watched commit (a warning from some other statement) nothing is
        // marked; sqlx's own event still reaches the logs through the fmt layer.
        if notice || meta.target() == SELF_TEST_TARGET {
            let _ = UNCONFIRMED.try_with(|flag| flag.set(true));
        }
    }
}

/// True when [`NoticeLayer`] is part of the installed subscriber, i.e. a cancelled
/// replication wait would be seen. Checked at start-up on PostgreSQL.
pub fn detector_installed() -> bool {
    UNCONFIRMED.sync_scope(Cell::new(false), || {
        tracing::event!(target: SELF_TEST_TARGET, Level::TRACE, "notice detector self-test");
        UNCONFIRMED.try_with(Cell::get).unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use super::*;

    #[tokio::test]
    async fn a_warning_notice_during_a_commit_marks_it_unconfirmed() {
        let subscriber = tracing_subscriber::registry().with(notice_layer());
        let _guard = tracing::subscriber::set_default(subscriber);
        assert!(detector_installed());
        let ((), quiet) = watch_commit(async {}).await;
        assert_eq!(quiet, Commit::Confirmed);
        let ((), warned) = watch_commit(async {
            tracing::warn!(
                target: "sqlx::postgres::notice",
                message = "canceling wait for synchronous replication due to user request"
            );
        })
        .await;
        assert_eq!(warned, Commit::Unconfirmed);
        // A notice below WARNING (e.g. NOTICE: relation exists) is not a replication fault.
        let ((), info) = watch_commit(async {
            tracing::info!(target: "sqlx::postgres::notice", message = "something");
        })
        .await;
        assert_eq!(info, Commit::Confirmed);
    }

    #[test]
    fn without_the_layer_the_self_test_says_so() {
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        assert!(!detector_installed());
    }
}
