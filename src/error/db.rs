//! The database-fault classifier: which database errors are transient (the client retries
//! later) and how a [`DbErr`] becomes an [`AppError`]. Never shown to clients as text.
use sea_orm::{DbErr, RuntimeErr, SqlErr};

use super::AppError;

/// True when a database error is a transient fault: the database, not the request, is
/// at fault, so the same request succeeds once the fault has passed (docs/api.md §7.5). Sync uses
/// this to refuse the whole request (503 / `UNAVAILABLE`) instead of rejecting an item:
/// a false "permanent" here makes a phone delete an answer, so when in doubt about a
/// condition of the server (not of the input) it is transient.
pub fn is_transient(err: &DbErr) -> bool {
    match err {
        // Every failure to obtain a connection is a condition of the server, never of the
        // request: a pool timeout, a refused TCP connect, and the SQLSTATEs a server sends
        // while refusing a login (55000 `ALLOW_CONNECTIONS false`, 57P03 starting up or
        // shutting down, 53300 too many clients). 55000 met by a statement on an open
        // connection keeps its own (permanent) meaning below.
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            is_transient_sqlx(e)
        }
        _ => false,
    }
}

fn is_transient_sqlx(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match err {
        Sqlx::Io(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed
        | Sqlx::Tls(_)
        | Sqlx::Protocol(_) => true,
        Sqlx::Database(db) => db.code().is_some_and(|code| is_transient_code(&code)),
        _ => false,
    }
}

/// Classifies a driver error code: a PostgreSQL SQLSTATE (always five characters) or a
/// SQLite result code (sqlx reports the extended code, a decimal number below 10000).
pub fn is_transient_code(code: &str) -> bool {
    if code.len() == 5 {
        return is_transient_sqlstate(code);
    }
    // SQLite: the primary result code is the low byte of the extended code.
    code.parse::<i32>()
        .is_ok_and(|extended| is_transient_sqlite(extended & 0xff))
}

/// PostgreSQL SQLSTATE classes and codes that say "the server cannot do this right now".
fn is_transient_sqlstate(code: &str) -> bool {
    let class = code.get(..2).unwrap_or_default();
    match class {
        // 08: connection exception; 53: insufficient resources (disk full, out of memory,
        // too many connections); 57: operator intervention (57014 statement timeout or
        // cancel, 57P01–57P05 shutdown, cannot connect now, database dropped, idle
        // timeout); 58: system error (I/O).
        "08" | "53" | "57" | "58" => true,
        // 40001 serialization failure, 40P01 deadlock, 40003 completion unknown.
        "40" => matches!(code, "40001" | "40P01" | "40003"),
        // 25006 read-only transaction (a standby, or a failover in progress);
        // 25P03 idle-in-transaction timeout, 25P04 transaction timeout.
        "25" => matches!(code, "25006" | "25P03" | "25P04"),
        // 55P03 lock not available (lock_timeout, NOWAIT).
        "55" => code == "55P03",
        // XX (internal error, corruption) is not transient: a retry meets the same
        // corruption. It surfaces as a 500, never as an item result.
        _ => false,
    }
}

/// SQLite primary result codes of a busy, locked, full or failing database file.
fn is_transient_sqlite(primary: i32) -> bool {
    matches!(
        primary,
        5   // SQLITE_BUSY
        | 6  // SQLITE_LOCKED
        | 7  // SQLITE_NOMEM
        | 8  // SQLITE_READONLY (file or filesystem made read-only)
        | 9  // SQLITE_INTERRUPT
        | 10 // SQLITE_IOERR and its extended codes
        | 13 // SQLITE_FULL
        | 14 // SQLITE_CANTOPEN
        | 15 // SQLITE_PROTOCOL (lock protocol race)
    )
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            tracing::warn!(error = %err, "transient database error");
            return AppError::unavailable();
        }
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                AppError::internal(format!("unexpected unique violation: {err}"))
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                AppError::internal(format!("unexpected foreign key violation: {err}"))
            }
            _ => AppError::internal(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, sync::Arc};

    use sea_orm::{
        ConnAcquireErr,
        sqlx::{self, error::DatabaseError},
    };

    use super::*;

    /// A driver error carrying only a code, as PostgreSQL or SQLite would report it.
    #[derive(Debug)]
    struct CodeOnly(&'static str);

    impl std::fmt::Display for CodeOnly {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "driver error {}", self.0)
        }
    }
    impl std::error::Error for CodeOnly {}
    impl DatabaseError for CodeOnly {
        fn message(&self) -> &str {
            "driver error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn db_error(code: &'static str) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Database(
            Box::new(CodeOnly(code)),
        ))))
    }

    fn assert_transient(codes: &[(&'static str, &str)]) {
        for (code, name) in codes {
            assert!(
                is_transient(&db_error(code)),
                "{code} ({name}) is transient"
            );
            assert!(
                matches!(AppError::from(db_error(code)), AppError::Unavailable { .. }),
                "{code} ({name}) maps to UNAVAILABLE"
            );
        }
    }

    fn assert_permanent(codes: &[(&'static str, &str)]) {
        for (code, name) in codes {
            assert!(
                !is_transient(&db_error(code)),
                "{code} ({name}) is not transient"
            );
        }
    }

    #[test]
    fn postgres_connection_class_08() {
        assert_transient(&[
            ("08000", "connection_exception"),
            ("08003", "connection_does_not_exist"),
            ("08006", "connection_failure"),
            ("08001", "sqlclient_unable_to_establish_sqlconnection"),
            ("08004", "sqlserver_rejected_establishment_of_sqlconnection"),
        ]);
    }

    #[test]
    fn postgres_serialization_and_deadlock() {
        assert_transient(&[
            ("40001", "serialization_failure"),
            ("40P01", "deadlock_detected"),
            ("40003", "statement_completion_unknown"),
        ]);
        assert_permanent(&[("40002", "transaction_integrity_constraint_violation")]);
    }

    #[test]
    fn postgres_statement_timeout_and_cancel_57014() {
        assert_transient(&[("57014", "query_canceled")]);
    }

    #[test]
    fn postgres_shutdown_class_57p() {
        assert_transient(&[
            ("57000", "operator_intervention"),
            ("57P01", "admin_shutdown"),
            ("57P02", "crash_shutdown"),
            ("57P03", "cannot_connect_now"),
            ("57P04", "database_dropped"),
            ("57P05", "idle_session_timeout"),
        ]);
    }

    #[test]
    fn postgres_lock_not_available_55p03() {
        assert_transient(&[("55P03", "lock_not_available")]);
        assert_permanent(&[("55000", "object_not_in_prerequisite_state")]);
    }

    #[test]
    fn postgres_read_only_transaction_25006() {
        assert_transient(&[
            ("25006", "read_only_sql_transaction"),
            ("25P03", "idle_in_transaction_session_timeout"),
            ("25P04", "transaction_timeout"),
        ]);
        assert_permanent(&[("25001", "active_sql_transaction")]);
    }

    #[test]
    fn postgres_insufficient_resources_class_53() {
        assert_transient(&[
            ("53000", "insufficient_resources"),
            ("53100", "disk_full"),
            ("53200", "out_of_memory"),
            ("53300", "too_many_connections"),
        ]);
    }

    #[test]
    fn postgres_system_error_class_58() {
        assert_transient(&[
            ("58000", "system_error"),
            ("58030", "io_error"),
            ("58P01", "undefined_file"),
        ]);
    }

    #[test]
    fn postgres_data_and_constraint_errors_are_not_transient() {
        assert_permanent(&[
            ("23505", "unique_violation"),
            ("23503", "foreign_key_violation"),
            ("22008", "datetime_field_overflow"),
            ("22P02", "invalid_text_representation"),
            ("42P01", "undefined_table"),
            ("XX000", "internal_error"),
            ("XX001", "data_corrupted"),
        ]);
    }

    #[test]
    fn sqlite_busy_and_locked() {
        assert_transient(&[
            ("5", "SQLITE_BUSY"),
            ("261", "SQLITE_BUSY_RECOVERY"),
            ("517", "SQLITE_BUSY_SNAPSHOT"),
            ("773", "SQLITE_BUSY_TIMEOUT"),
            ("6", "SQLITE_LOCKED"),
            ("262", "SQLITE_LOCKED_SHAREDCACHE"),
        ]);
    }

    #[test]
    fn sqlite_ioerr_and_extended_codes() {
        assert_transient(&[
            ("10", "SQLITE_IOERR"),
            ("266", "SQLITE_IOERR_READ"),
            ("778", "SQLITE_IOERR_WRITE"),
            ("1034", "SQLITE_IOERR_FSYNC"),
            ("3338", "SQLITE_IOERR_SHMMAP"),
            ("4874", "SQLITE_IOERR_DATA"),
        ]);
    }

    #[test]
    fn sqlite_full() {
        assert_transient(&[("13", "SQLITE_FULL")]);
    }

    #[test]
    fn sqlite_cantopen() {
        assert_transient(&[
            ("14", "SQLITE_CANTOPEN"),
            ("1038", "SQLITE_CANTOPEN_CONVPATH"),
        ]);
    }

    #[test]
    fn sqlite_readonly_nomem_interrupt_protocol() {
        assert_transient(&[
            ("8", "SQLITE_READONLY"),
            ("1288", "SQLITE_READONLY_DBMOVED"),
            ("7", "SQLITE_NOMEM"),
            ("9", "SQLITE_INTERRUPT"),
            ("15", "SQLITE_PROTOCOL"),
        ]);
    }

    #[test]
    fn sqlite_constraint_and_misuse_are_not_transient() {
        assert_permanent(&[
            ("19", "SQLITE_CONSTRAINT"),
            ("2067", "SQLITE_CONSTRAINT_UNIQUE"),
            ("787", "SQLITE_CONSTRAINT_FOREIGNKEY"),
            ("1", "SQLITE_ERROR"),
            ("11", "SQLITE_CORRUPT"),
            ("20", "SQLITE_MISMATCH"),
        ]);
    }

    #[test]
    fn connection_and_pool_errors() {
        use sqlx::Error as Sqlx;
        let wrap = |e: Sqlx| DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)));
        assert!(is_transient(&wrap(Sqlx::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )))));
        assert!(is_transient(&wrap(Sqlx::PoolTimedOut)));
        assert!(is_transient(&wrap(Sqlx::PoolClosed)));
        assert!(is_transient(&wrap(Sqlx::WorkerCrashed)));
        assert!(is_transient(&wrap(Sqlx::Protocol("unexpected eof".into()))));
        assert!(is_transient(&DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout
        )));
        assert!(is_transient(&DbErr::Conn(RuntimeErr::SqlxError(Arc::new(
            Sqlx::PoolTimedOut
        )))));
        assert!(!is_transient(&wrap(Sqlx::RowNotFound)));
        assert!(!is_transient(&DbErr::RecordNotFound("x".into())));
    }

    /// A login the server refuses reaches us as `DbErr::Conn` carrying the SQLSTATE.
    #[test]
    fn connection_refusals_at_login_are_transient() {
        for code in ["55000", "57P03", "53300", "28000", "3D000"] {
            let refused = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Database(
                Box::new(CodeOnly(code)),
            ))));
            assert!(is_transient(&refused), "{code} at login is transient");
            assert!(matches!(
                AppError::from(refused),
                AppError::Unavailable { .. }
            ));
        }
        let refused_tcp = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert!(is_transient(&refused_tcp));
        // The same 55000 from a statement on an open connection is not a refusal.
        assert_permanent(&[("55000", "object_not_in_prerequisite_state")]);
    }
}
