//! PostgreSQL: `LISTEN`/`NOTIFY` wakes every handle's pollers as soon as an
//! event commits. Polling stays on as the fallback: every 5 s while
//! notifications flow, every `poll_interval` while the listener is down.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use masse_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Pool, Postgres};
use tokio::sync::watch;

use crate::config::SqlConfig;
use crate::dialect::{CHANNEL, Dialect};
use crate::error::map_err;
use crate::registry::{Connected, Inner};
use crate::store::{Purge, Store, reusable};

/// Key of the advisory lock that serialises schema creation.
const SCHEMA_LOCK: i64 = 0x6d61_7373_6500_0001; // "masse" 1

pub(crate) async fn connect(url: &str, shown: &str, config: &SqlConfig) -> Result<Connected> {
    let options = PgConnectOptions::from_str(url).map_err(|e| Error::InvalidAddress {
        kind: "registry url",
        input: shown.to_owned(),
        reason: e.to_string(),
    })?;
    let purge = Arc::new(Purge::default());
    let keep = purge.clone();
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .before_acquire(move |conn, meta| {
            let fresh = keep.keeps(meta.age);
            Box::pin(async move { Ok(fresh && reusable(conn, Postgres::BACKEND)) })
        })
        .acquire_timeout(config.connect_timeout)
        .connect_with(options.clone())
        .await
        .map_err(|e| map_err(Postgres::BACKEND, e))?;
    migrate(&pool)
        .await
        .map_err(|e| map_err(Postgres::BACKEND, e))?;
    // The listener holds its connection for good: a pool of its own.
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(options);
    let retry = config.poll_interval;
    Ok(Connected {
        backend: Arc::new(Store::new(pool, purge)),
        listen: Some(Box::new(move |registry, shutdown| {
            tokio::spawn(listen(listen_pool, registry, shutdown, retry));
        })),
    })
}

/// Creates the tables in one transaction under an advisory lock, so that
/// nodes starting together do not trip over each other's `CREATE`.
async fn migrate(pool: &Pool<Postgres>) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    for statement in Postgres::SCHEMA {
        sqlx::query(*statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Wakes the pollers of the namespace each notification names; after any
/// gap in listening, wakes them all (notifications may have been missed).
async fn listen(
    pool: PgPool,
    registry: Weak<Inner>,
    mut shutdown: watch::Receiver<()>,
    retry: Duration,
) {
    let wake = |ns: Option<&str>| {
        if let Some(inner) = registry.upgrade() {
            inner.wake(ns);
        }
    };
    let listening = |on: bool| {
        if let Some(inner) = registry.upgrade() {
            inner.set_listening(on);
        }
    };
    let mut backoff = retry;
    loop {
        let start = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let started = tokio::select! {
            _ = shutdown.changed() => return,
            s = start => s,
        };
        match started {
            Ok(mut listener) => {
                tracing::debug!("listening for registry notifications");
                backoff = retry;
                listening(true);
                wake(None);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.changed() => return,
                        n = listener.try_recv() => n,
                    };
                    match next {
                        Ok(Some(n)) => wake(Some(n.payload())),
                        // The connection dropped: notifications may have
                        // been missed, and sqlx would listen again without
                        // saying when. Poll at the short interval (which
                        // wakes every poller now) until our own reconnect
                        // listens again and wakes them once more.
                        Ok(None) => {
                            tracing::debug!(
                                "registry notification connection lost; polling meanwhile"
                            );
                            listening(false);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "registry notifications interrupted; polling meanwhile");
                            listening(false);
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for registry notifications yet"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
