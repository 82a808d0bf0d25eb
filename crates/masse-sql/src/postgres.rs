//! PostgreSQL: `LISTEN`/`NOTIFY` wakes every handle's pollers as soon as an
//! event commits. Polling stays on as the fallback: every 5 s while
//! notifications flow, every `poll_interval` while the listener is down.
//!
//! The listening connection is also the handle's lane (see [`crate::lane`]):
//! heartbeats, polls, sweeps and pruning run on it between notifications,
//! so that a node at rest holds this one server connection and nothing else.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use masse_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Pool, Postgres};
use tokio::sync::watch;

use crate::config::SqlConfig;
use crate::dialect::{CHANNEL, Dialect};
use crate::error::map_err;
use crate::lane::{Lane, Open};
use crate::registry::{Connected, Inner};
use crate::store::{Purge, Store, reusable};

/// `application_name` of the lane connection, unless the URL sets one.
pub(crate) const LANE_NAME: &str = "masse-lane";

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
    // Calls that overlap on the lane only: opened on demand, closed when
    // idle (see `Store::foreground`).
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .min_connections(0)
        .idle_timeout(config.idle_timeout)
        .before_acquire(move |conn, meta| {
            let fresh = keep.keeps(meta.age);
            Box::pin(async move { Ok(fresh && reusable(conn, Postgres::BACKEND)) })
        })
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(options.clone());
    // The lane: the listening connection, which also runs the background
    // work between notifications. It holds its connection for good (no idle
    // timeout, no lifetime), from a pool of one of its own that only serves
    // to open it again, and that hands out no connection older than a
    // poisoning failure. Named, unless the URL names it, so that an operator
    // can tell it in `pg_stat_activity`.
    let options = if options.get_application_name().is_none() {
        options.application_name(LANE_NAME)
    } else {
        options
    };
    let keep = purge.clone();
    let lane_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .before_acquire(move |conn, meta| {
            let fresh = keep.keeps(meta.age);
            Box::pin(async move { Ok(fresh && reusable(conn, Postgres::BACKEND)) })
        })
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(options);
    // On the connection the lane then listens on: connecting never holds
    // more than this one.
    migrate(&lane_pool)
        .await
        .map_err(|e| map_err(Postgres::BACKEND, e))?;
    let open: Open<PgListener> = Box::new(move || {
        let pool = lane_pool.clone();
        Box::pin(async move {
            let mut listener = PgListener::connect_with(&pool).await?;
            // A lost connection shows as `Ok(None)` at once, with nothing
            // awaited after it: the listening task may drop `try_recv` at
            // any await (to lend the lane), and must never miss a loss.
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok(listener)
        })
    });
    let lane = Arc::new(Lane::new(open, purge.clone()));
    let retry = config.poll_interval;
    let listening = lane.clone();
    Ok(Connected {
        backend: Arc::new(Store::new(pool, purge, schema).with_lane(lane)),
        listen: Some(Box::new(move |registry, shutdown| {
            tokio::spawn(listen(listening, registry, shutdown, retry));
        })),
    })
}

/// [`migrate`] as the store keeps it, to run again when the tables are gone.
fn schema(pool: &Pool<Postgres>) -> BoxFuture<'_, std::result::Result<(), sqlx::Error>> {
    Box::pin(migrate(pool))
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
///
/// Holds the lane while it waits for notifications, and lets go whenever a
/// call asks for it; it opens the lane's connection when there is none.
async fn listen(
    lane: Arc<Lane<Postgres>>,
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
    // The lane connection the pollers were last woken for: a new one (which
    // a call may have opened) means a gap in which notifications were lost.
    let mut announced: Option<u64> = None;
    loop {
        let mut slot = tokio::select! {
            _ = shutdown.changed() => return,
            s = lane.wait_turn() => s,
        };
        if slot.link.is_none() && announced.take().is_some() {
            // A call found the connection dead and dropped it.
            tracing::debug!("registry notification connection lost; polling meanwhile");
            listening(false);
        }
        let opened = tokio::select! {
            _ = shutdown.changed() => return,
            r = lane.ready(&mut slot) => r.map(|_| ()),
        };
        let lost = match opened {
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for registry notifications yet");
                true
            }
            Ok(()) => {
                backoff = retry;
                if announced != Some(slot.generation) {
                    if announced.is_none() {
                        tracing::debug!("listening for registry notifications");
                    }
                    announced = Some(slot.generation);
                    listening(true);
                    wake(None);
                }
                let Some(listener) = slot.link.as_mut() else {
                    continue;
                };
                let next = tokio::select! {
                    _ = shutdown.changed() => return,
                    // A call waits for the lane: let go of it (the guard
                    // drops) and queue up again behind the call.
                    () = lane.wanted() => continue,
                    n = listener.try_recv() => n,
                };
                match next {
                    Ok(Some(n)) => {
                        wake(Some(n.payload()));
                        false
                    }
                    // The connection dropped: notifications may have been
                    // missed. Poll at the short interval (which wakes every
                    // poller now) until the lane listens again and wakes
                    // them once more.
                    Ok(None) => {
                        tracing::debug!("registry notification connection lost; polling meanwhile");
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "registry notifications interrupted; polling meanwhile");
                        true
                    }
                }
            }
        };
        if !lost {
            continue;
        }
        if slot.link.take().is_some() || announced.is_some() {
            announced = None;
            listening(false);
        }
        drop(slot);
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
