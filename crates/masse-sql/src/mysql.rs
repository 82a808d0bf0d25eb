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
use crate::store::{Purge, Store, reusable};

pub(crate) async fn connect(url: &str, shown: &str, config: &SqlConfig) -> Result<Connected> {
    let url = match url.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql:{rest}"),
        _ => url.to_owned(),
    };
    if !has_host(&url) {
        return Err(Error::InvalidAddress {
            kind: "registry url",
            input: shown.to_owned(),
            reason: "no server host: write mysql://user:password@host:3306/database \
                     (or add ?socket=/path/to/mysqld.sock for a Unix socket)"
                .into(),
        });
    }
    let options = MySqlConnectOptions::from_str(&url).map_err(|e| Error::InvalidAddress {
        kind: "registry url",
        input: shown.to_owned(),
        reason: e.to_string(),
    })?;
    let purge = Arc::new(Purge::default());
    let keep = purge.clone();
    let pool = MySqlPoolOptions::new()
        .max_connections(config.pool_size)
        .before_acquire(move |conn, meta| {
            let fresh = keep.keeps(meta.age);
            Box::pin(async move { Ok(fresh && reusable(conn, MySql::BACKEND)) })
        })
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
        backend: Arc::new(Store::new(pool, purge)),
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

/// Does the URL name a server: a host in its authority, or a `socket=` parameter?
/// (sqlx would otherwise quietly try `localhost:3306`.)
fn has_host(url: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| {
        p.split_once('=')
            .is_some_and(|(k, v)| k == "socket" && !v.is_empty())
    }) {
        return true;
    }
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_once(']').map_or("", |(h, _)| &h[1..])
    } else {
        host_port.split_once(':').map_or(host_port, |(h, _)| h)
    };
    !host.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(has_host("mysql://u:p@127.0.0.1:3306/db"));
        assert!(has_host("mysql://db.internal/db"));
        assert!(has_host("mysql://u@[::1]:3306/db"));
        assert!(has_host("mysql://u@/db?socket=/run/mysqld/mysqld.sock"));
        assert!(!has_host("mysql:///db"));
        assert!(!has_host("mysql://user@/db"));
        assert!(!has_host("mysql://user:pw@:3306/db"));
        assert!(!has_host("mysql:db"));
        assert!(!has_host("mysql://"));
    }
}
