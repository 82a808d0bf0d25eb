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
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?
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
        SqlitePoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| map_err(Sqlite::BACKEND, e))?
    };
    migrate(&pool)
        .await
        .map_err(|e| map_err(Sqlite::BACKEND, e))?;
    Ok(Connected {
        backend: Arc::new(Store::new(pool)),
        listen: None,
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
