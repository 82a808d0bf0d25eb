//! MySQL and MariaDB.

use std::str::FromStr;
use std::sync::Arc;

use masse_core::{Error, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, Pool, Row};

use crate::config::SqlConfig;
use crate::dialect::Dialect;
use crate::error::map_err;
use crate::registry::Connected;
use crate::store::Store;

pub(crate) async fn connect(url: &str, shown: &str, config: &SqlConfig) -> Result<Connected> {
    let url = match url.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql:{rest}"),
        _ => url.to_owned(),
    };
    let options = MySqlConnectOptions::from_str(&url).map_err(|e| Error::InvalidAddress {
        kind: "registry url",
        input: shown.to_owned(),
        reason: e.to_string(),
    })?;
    let pool = MySqlPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.connect_timeout)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // No gap locks: concurrent publishers of different names
                // cannot deadlock on each other's index ranges.
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| map_err(MySql::BACKEND, e))?;
    migrate(&pool)
        .await
        .map_err(|e| map_err(MySql::BACKEND, e))?;
    Ok(Connected {
        backend: Arc::new(Store::new(pool)),
        listen: None,
    })
}

/// Creates the tables under a named lock, on a connection of its own that is
/// closed afterwards (so the lock cannot outlive a failure).
async fn migrate(pool: &Pool<MySql>) -> std::result::Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let got = sqlx::query("SELECT CAST(COALESCE(GET_LOCK('masse_schema', 30), 0) AS SIGNED)")
        .fetch_one(&mut conn)
        .await?
        .try_get::<i64, _>(0)?;
    if got != 1 {
        tracing::warn!("could not take the schema lock within 30 s; creating tables anyway");
    }
    for statement in MySql::SCHEMA {
        sqlx::query(*statement).execute(&mut conn).await?;
    }
    conn.close().await
}
