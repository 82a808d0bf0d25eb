//! Driver errors, sorted into what a caller can act on.

use masse_core::Error;

/// A failed backend step: a driver error (to be classified, maybe retried)
/// or a registry outcome that is final (`NameTaken`, …).
#[derive(Debug)]
pub(crate) enum Fail {
    Db(sqlx::Error),
    Masse(Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Masse(e)
    }
}

/// Maps a driver error: the server refused our credentials →
/// [`Error::RegistryUnauthorized`]; the database cannot be reached or written
/// for now (shutting down, too busy, read-only, disk full or failing) →
/// [`Error::RegistryUnavailable`]; anything else → [`Error::Registry`].
pub(crate) fn map_err(backend: &'static str, e: sqlx::Error) -> Error {
    if is_unauthorized(&e) {
        Error::registry_unauthorized(backend, e)
    } else if is_unavailable(&e) {
        Error::unavailable(backend, e)
    } else {
        Error::registry(backend, e)
    }
}

/// The server refused who we are: wrong password, unknown user, no right to
/// the database or its tables. Retrying does not help; the URL or the
/// server's users need fixing.
pub(crate) fn is_unauthorized(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(n) = mysql_number(db.as_ref()) {
        // access denied (password, database, unix socket auth), table and
        // column privileges
        return matches!(n, 1044 | 1045 | 1142 | 1143 | 1698);
    }
    let code = db.code();
    let code = code.as_deref().unwrap_or("");
    // PostgreSQL: invalid authorization (28000), wrong password (28P01),
    // insufficient privilege (42501).
    pg(db.as_ref()) && matches!(code, "28000" | "28P01" | "42501")
}

/// Failures that are about reaching or writing the database, not about the
/// request: they pass once the server or the file is back to normal.
pub(crate) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // PostgreSQL: connection exceptions, shutting down, too many connections.
            // PostgreSQL: read-only transaction (a standby, or
            // default_transaction_read_only), disk full, out of memory, I/O error.
            code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "53300" | "25006" | "53100" | "53200" | "58030"
                )
                // PostgreSQL: the database does not take connections now.
                || pg_refuses_session(db.as_ref())
                || sqlite_unwritable(db.as_ref())
                || mysql_number(db.as_ref()).is_some_and(|n| {
                    // too many connections, server shutdown, lock wait
                    // timeout, read-only server, global read lock, disk full
                    matches!(n, 1040 | 1053 | 1205 | 1290 | 1223 | 1836 | 1021 | 1114)
                })
        }
        _ => false,
    }
}

/// Failures after which the connection should not be reused: the link is
/// broken, the server ended the session (PostgreSQL's administrator or
/// crash shutdown, `pg_terminate_backend`, a connection exception; MySQL's
/// server shutdown), SQLite found the file unwritable (it may have opened
/// it read-only, for good), or a PostgreSQL session is read-only.
pub(crate) fn poisons(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            let pg_session_ended =
                pg(db.as_ref()) && (code.starts_with("08") || matches!(code, "57P01" | "57P02"));
            pg_session_ended
                || code == "25006"
                || mysql_number(db.as_ref()).is_some_and(|n| n == 1053)
                || (sqlite_unwritable(db.as_ref()) && !busy_code(code))
        }
        _ => false,
    }
}

/// A table of ours is not there: the server restarted empty (a new data
/// directory), or someone dropped it. Creating the schema again recovers;
/// the records are gone, and heartbeats publish them again. PostgreSQL
/// `undefined_table` (42P01), MySQL `ER_NO_SUCH_TABLE` (1146), SQLite's
/// "no such table" (a plain SQLITE_ERROR, told apart by its message only).
pub(crate) fn missing_table(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(n) = mysql_number(db.as_ref()) {
        return n == 1146;
    }
    if pg(db.as_ref()) {
        return db.code().as_deref() == Some("42P01");
    }
    sqlite_error(db.as_ref()) && db.message().starts_with("no such table")
}

#[cfg(feature = "sqlite")]
fn sqlite_error(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_error(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

/// Failures worth running the same transaction again for: lost races
/// (serialization failure, deadlock, a concurrent insert of the same key) and
/// a busy SQLite file.
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if db.kind() == sqlx::error::ErrorKind::UniqueViolation {
        return true;
    }
    let code = db.code();
    let code = code.as_deref().unwrap_or("");
    matches!(code, "40001" | "40P01")
        || sqlite_busy(db.as_ref())
        || mysql_number(db.as_ref()).is_some_and(|n| matches!(n, 1205 | 1213))
}

/// SQLite answered SQLITE_BUSY or SQLITE_LOCKED (any extended code):
/// another connection holds the lock it needs; trying again shortly
/// succeeds. Judged by the result code, never the message.
#[cfg(feature = "sqlite")]
pub(crate) fn is_sqlite_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if sqlite_busy(db.as_ref()))
}

/// SQLITE_BUSY and SQLITE_LOCKED, with their extended codes.
#[cfg(feature = "sqlite")]
fn sqlite_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        && db.code().is_some_and(|code| busy_code(&code))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_busy(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

/// Is this SQLite result code (extended or primary) BUSY or LOCKED?
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
fn busy_code(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|c| c & 0xff == 5 || c & 0xff == 6)
}

/// SQLite cannot write the file for now: busy or locked, read-only
/// (permissions, an immutable file), an I/O error, a full disk, a file that
/// cannot be opened.
#[cfg(feature = "sqlite")]
fn sqlite_unwritable(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        && db
            .code()
            .is_some_and(|code| busy_code(&code) || unwritable_code(&code))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_unwritable(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

/// SQLITE_READONLY (8), SQLITE_IOERR (10), SQLITE_FULL (13),
/// SQLITE_CANTOPEN (14), with their extended codes.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
fn unwritable_code(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|c| matches!(c & 0xff, 8 | 10 | 13 | 14))
}

#[cfg(feature = "postgres")]
fn pg(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
}

#[cfg(not(feature = "postgres"))]
fn pg(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

/// PostgreSQL ended the session because the database does not take
/// connections now: SQLSTATE 55000 (`object_not_in_prerequisite_state`) at
/// severity `FATAL`. That is how PostgreSQL refuses a session to a database
/// closed to connections (`ALTER DATABASE … ALLOW_CONNECTIONS false`, while
/// it is being created or dropped); it passes when the database opens again.
///
/// The code alone is not enough: at severity `ERROR` the same SQLSTATE
/// reports a *statement* run in the wrong state (`currval` before
/// `nextval`, …), the request's own fault, which retrying does not fix. The
/// severity (a typed field, read from the non-localized `V` field) tells
/// the two apart without reading the message.
#[cfg(feature = "postgres")]
fn pg_refuses_session(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some_and(|pg| pg_session_refusal(pg.code(), pg.severity()))
}

#[cfg(not(feature = "postgres"))]
fn pg_refuses_session(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

/// See [`pg_refuses_session`].
#[cfg(feature = "postgres")]
fn pg_session_refusal(code: &str, severity: sqlx::postgres::PgSeverity) -> bool {
    use sqlx::postgres::PgSeverity;
    code == "55000" && matches!(severity, PgSeverity::Fatal | PgSeverity::Panic)
}

#[cfg(feature = "mysql")]
fn mysql_number(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

#[cfg(not(feature = "mysql"))]
fn mysql_number(_db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_unavailable(&io));
        assert!(matches!(
            map_err("postgres", io),
            Error::RegistryUnavailable {
                backend: "postgres",
                ..
            }
        ));
        assert!(matches!(
            map_err("mysql", sqlx::Error::PoolTimedOut),
            Error::RegistryUnavailable { .. }
        ));
        assert!(matches!(
            map_err("sqlite", sqlx::Error::RowNotFound),
            Error::Registry {
                backend: "sqlite",
                ..
            }
        ));
        assert!(!is_retryable(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn sqlite_codes() {
        assert!(busy_code("5"));
        assert!(busy_code("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(busy_code("262")); // SQLITE_LOCKED_SHAREDCACHE
        assert!(!busy_code("19"));
        assert!(!busy_code("x"));
        assert!(unwritable_code("8")); // SQLITE_READONLY
        assert!(unwritable_code("778")); // SQLITE_IOERR_WRITE
        assert!(unwritable_code("1032")); // SQLITE_READONLY_DBMOVED
        assert!(unwritable_code("13")); // SQLITE_FULL
        assert!(unwritable_code("14")); // SQLITE_CANTOPEN
        assert!(!unwritable_code("5"));
        assert!(!unwritable_code("19")); // a constraint: the request's fault
    }

    #[test]
    fn broken_links_poison_their_connection() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(poisons(&io));
        assert!(!poisons(&sqlx::Error::PoolTimedOut));
        assert!(!poisons(&sqlx::Error::RowNotFound));
        assert!(!is_unauthorized(&io));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_session_refusals_by_code_and_severity() {
        use sqlx::postgres::PgSeverity;
        assert!(pg_session_refusal("55000", PgSeverity::Fatal));
        // The same code on a statement: the request's fault.
        assert!(!pg_session_refusal("55000", PgSeverity::Error));
        assert!(!pg_session_refusal("57P03", PgSeverity::Fatal));
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn only_database_errors_are_sqlite_busy() {
        // A message that says "locked" is not a lock: only a result code is.
        let io = sqlx::Error::Io(std::io::Error::other("database is locked"));
        assert!(!is_sqlite_busy(&io));
        assert!(!is_sqlite_busy(&sqlx::Error::Protocol("busy".into())));
    }
}
