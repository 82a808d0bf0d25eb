//! MySQL and MariaDB.
//!
//! Each handle keeps one connection, its lane (see [`crate::lane`]), for
//! heartbeats, polls, sweeps and pruning; the pool opens connections for
//! lookups and writes only, and closes them when idle.

use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use masse_core::{Error, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Executor, MySql, Pool, Row};

use crate::config::SqlConfig;
use crate::dialect::Dialect;
use crate::error::map_err;
use crate::lane::{Lane, Open};
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
    // Calls that overlap on the lane only: opened on demand, closed when
    // idle (see `Store::foreground`).
    let pool = pool_options(&purge, config)
        .max_connections(config.pool_size)
        .min_connections(0)
        .idle_timeout(config.idle_timeout)
        .connect_lazy_with(options.clone());
    // The lane: one connection held for good for the background work (no
    // LISTEN here; pollers poll). Its pool of one only serves to open it
    // again, with the session settings of every connection.
    let lane_pool = pool_options(&purge, config)
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    // Connecting never holds more than one connection.
    migrate(&lane_pool)
        .await
        .map_err(|e| map_err(MySql::BACKEND, e))?;
    let open: Open<PoolConnection<MySql>> = Box::new(move || {
        let pool = lane_pool.clone();
        Box::pin(async move { pool.acquire().await })
    });
    let lane = Arc::new(Lane::new(open, purge.clone()));
    Ok(Connected {
        backend: Arc::new(Store::new(pool, purge, schema).with_lane(lane)),
        listen: None,
    })
}

/// What both pools share: no connection older than a poisoning failure, the
/// connect timeout, and the session settings.
fn pool_options(purge: &Arc<Purge>, config: &SqlConfig) -> MySqlPoolOptions {
    let keep = purge.clone();
    MySqlPoolOptions::new()
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
}

/// [`migrate`] as the store keeps it, to run again when the tables are gone.
fn schema(pool: &Pool<MySql>) -> BoxFuture<'_, std::result::Result<(), sqlx::Error>> {
    Box::pin(migrate(pool))
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
