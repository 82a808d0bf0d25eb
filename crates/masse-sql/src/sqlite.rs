//! SQLite: one file shared by every process on the host (WAL mode, writers
//! queue on `busy_timeout`), or a private in-memory database.

use std::str::FromStr;
use std::sync::Arc;

use masse_core::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use crate::config::SqlConfig;
use crate::dialect::Dialect;
use crate::error::map_err;
use crate::registry::Connected;
use crate::store::Store;

pub(crate) async fn connect(url: &str, shown: &str, config: &SqlConfig) -> Result<Connected> {
    let invalid = |e: sqlx::Error| Error::InvalidAddress {
        kind: "registry url",
        input: shown.to_owned(),
        reason: e.to_string(),
    };
    let mut options = SqliteConnectOptions::from_str(url).map_err(invalid)?;
    let (database, params) = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split_once('?')
        .unwrap_or((
            url.trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:"),
            "",
        ));
    let param = |key: &str| {
        params
            .split('&')
            .find_map(|p| p.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    };
    let in_memory = database == ":memory:" || param("mode") == Some("memory");
    let pool = if in_memory {
        // One connection: the database lives exactly as long as it does.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?;
        migrate(&pool)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?;
        pool
    } else {
        // A registry is written to: create the file (and its directory)
        // unless the URL says otherwise with `mode=`.
        let create = match param("mode") {
            None => {
                options = options.create_if_missing(true);
                true
            }
            Some(mode) => mode == "rwc",
        };
        if let Some(dir) = options.get_filename().parent()
            && create
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)?;
        }
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(config.busy_timeout);
        // Processes opening a new file together race to switch it to WAL,
        // and SQLite reports that race as "database is locked" without
        // waiting on busy_timeout: take turns and try again.
        let mut attempt = 0u32;
        loop {
            let opened = match SqlitePoolOptions::new()
                .max_connections(config.pool_size)
                .acquire_timeout(config.connect_timeout)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => migrate(&pool).await.map(|()| pool),
                Err(e) => Err(e),
            };
            match opened {
                Ok(pool) => break pool,
                Err(e) if attempt < 8 && is_locked(&e) => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "sqlite file busy while opening; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt)))
                        .await;
                }
                Err(e) => return Err(map_err(Sqlite::BACKEND, e)),
            }
        }
    };

    Ok(Connected {
        backend: Arc::new(Store::new(pool)),
        listen: None,
    })
}

/// SQLite's "database is locked" / "busy" answers.
fn is_locked(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if {
        let m = d.message().to_ascii_lowercase();
        m.contains("locked") || m.contains("busy")
    })
}

/// Creates the tables; `BEGIN IMMEDIATE` makes processes that start together take turns.
async fn migrate(pool: &Pool<Sqlite>) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin_with(Sqlite::BEGIN).await?;
    for statement in Sqlite::SCHEMA {
        sqlx::query(*statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}
