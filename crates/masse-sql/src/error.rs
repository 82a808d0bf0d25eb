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

/// Maps a driver error: the database cannot be reached (or is shutting down,
/// or is too busy) → [`Error::RegistryUnavailable`]; anything else →
/// [`Error::Registry`].
pub(crate) fn map_err(backend: &'static str, e: sqlx::Error) -> Error {
    if is_unavailable(&e) {
        Error::unavailable(backend, e)
    } else {
        Error::registry(backend, e)
    }
}

/// Failures that are about reaching the database, not about the request.
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
            code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
                || sqlite_busy(db.as_ref())
                || mysql_number(db.as_ref()).is_some_and(|n| {
                    // too many connections, server shutdown, lock wait timeout
                    matches!(n, 1040 | 1053 | 1205)
                })
        }
        _ => false,
    }
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
    }
}
