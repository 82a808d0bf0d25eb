//! The lane: the one server connection a PostgreSQL or MySQL/MariaDB handle
//! keeps open, on which all of its background work runs.
//!
//! A handle's steady traffic is small and periodic: heartbeats (`refresh`),
//! the pollers' reads of the event log, the sweeper's probe for expired
//! records, pruning now and then. Run through the pool, it would keep at
//! least one pooled connection warm for good, next to PostgreSQL's
//! listening connection: two server connections per node at rest, and a
//! server's `max_connections` would be spent on idle sessions. On the lane
//! it needs none of the pool, whose connections therefore close after
//! [`SqlConfig::with_idle_timeout`](crate::SqlConfig::with_idle_timeout): a node at
//! rest holds exactly one server connection. Publish, unpublish and a
//! lookup no other call runs beside also run on the lane; only lookups that
//! overlap open pooled ones (see `Store::foreground`).
//!
//! On PostgreSQL the lane is the `LISTEN` connection itself (`PgListener`
//! derefs to its connection through `Acquire`): between notifications the
//! listening task holds it and waits; a caller that wants it asks, the
//! listening task lets go, the caller runs its statements and gives it back
//! (notifications that arrive meanwhile are buffered by sqlx and read next).
//! The lock is fair, so callers are served in order and the listener waits
//! behind them. On MySQL/MariaDB (no `LISTEN`) the lane is a plain connection.
//!
//! The lane opens its connection when it is needed (by the listening task
//! or by the first caller after a loss), so an outage ends on the lane as it
//! does in the pool: the next call connects again. A connection whose call
//! failed in a way that can leave it unusable (see
//! [`poisons`](crate::error::poisons)), or that a cancelled call left half
//! way, or that predates the last such failure anywhere on the handle (see
//! [`Purge`]), is dropped and the next call opens a fresh one.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::dialect::Dialect;
use crate::error::{Fail, poisons};
use crate::store::{Purge, reusable};

/// A connection the lane can hold.
pub(crate) trait Link<DB: sqlx::Database>: Send + 'static {
    /// The connection to run statements on.
    fn conn(&mut self) -> BoxFuture<'_, Result<&mut DB::Connection, sqlx::Error>>;
}

impl<DB: sqlx::Database> Link<DB> for sqlx::pool::PoolConnection<DB> {
    fn conn(&mut self) -> BoxFuture<'_, Result<&mut DB::Connection, sqlx::Error>> {
        Box::pin(async move { Ok(&mut **self) })
    }
}

#[cfg(feature = "postgres")]
impl Link<sqlx::Postgres> for sqlx::postgres::PgListener {
    fn conn(&mut self) -> BoxFuture<'_, Result<&mut sqlx::PgConnection, sqlx::Error>> {
        sqlx::Acquire::acquire(self)
    }
}

/// Opens a new connection for the lane.
pub(crate) type Open<L> = Box<dyn Fn() -> BoxFuture<'static, Result<L, sqlx::Error>> + Send + Sync>;

/// The one background connection of a handle; see the module docs.
pub(crate) struct Lane<DB: Dialect> {
    slot: Mutex<Slot<DB::Link>>,
    open: Open<DB::Link>,
    /// A caller waits for the slot (the listening task lets go of it).
    wanted: Notify,
    /// Shared with the pool: connections older than its mark are not reused.
    purge: Arc<Purge>,
    /// A call holds the lane (the listening task waiting does not count).
    busy: AtomicBool,
}

/// What the lane holds.
pub(crate) struct Slot<L> {
    pub(crate) link: Option<L>,
    /// When `link` was opened.
    born: Instant,
    /// Counts the connections opened, so that the listening task can tell
    /// a connection it has not seen (notifications may have been missed
    /// before it listened).
    pub(crate) generation: u64,
}

impl<DB: Dialect> Lane<DB> {
    // Only the server backends have a lane; SQLite's one writer needs none.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn new(open: Open<DB::Link>, purge: Arc<Purge>) -> Self {
        Lane {
            slot: Mutex::new(Slot {
                link: None,
                born: Instant::now(),
                generation: 0,
            }),
            open,
            wanted: Notify::new(),
            purge,
            busy: AtomicBool::new(false),
        }
    }

    /// Takes the lane for a call, asking the listening task to let go of it
    /// if it holds it; the caller [`release`](Self::release)s it with the
    /// guard. Cancel-safe.
    pub(crate) async fn take(&self) -> MutexGuard<'_, Slot<DB::Link>> {
        let mut lock = pin!(self.slot.lock());
        // Queue up first, then ask: the listening task, once it lets go,
        // locks again behind us (the lock is fair).
        let first = std::future::poll_fn(|cx| Poll::Ready(lock.as_mut().poll(cx))).await;
        let slot = match first {
            Poll::Ready(slot) => slot,
            Poll::Pending => {
                self.wanted.notify_one();
                lock.await
            }
        };
        self.busy.store(true, Ordering::Relaxed);
        slot
    }

    /// The call that [`take`](Self::take)s the lane is done with it.
    pub(crate) fn release(&self) {
        self.busy.store(false, Ordering::Relaxed);
    }

    /// Is a call on the lane? (Then another call had better use the pool.)
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Takes the lane without asking anyone to let go (the listening task).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) async fn wait_turn(&self) -> MutexGuard<'_, Slot<DB::Link>> {
        self.slot.lock().await
    }

    /// Resolves when a caller asks for the lane.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// The lane's connection, opened if there is none (or if it predates the
    /// purge mark).
    pub(crate) async fn ready<'s>(
        &self,
        slot: &'s mut Slot<DB::Link>,
    ) -> Result<&'s mut DB::Link, sqlx::Error> {
        if slot.link.is_some() && !self.purge.keeps(slot.born.elapsed()) {
            tracing::debug!(
                backend = DB::BACKEND,
                "replacing the background connection, older than a failure"
            );
            slot.link = None;
        }
        if slot.link.is_none() {
            let link = (self.open)().await?;
            slot.born = Instant::now();
            slot.generation += 1;
            slot.link = Some(link);
        }
        Ok(slot.link.as_mut().expect("opened above"))
    }

    /// After a call on the lane: a connection the failure may have left
    /// unusable is dropped (and every older pooled one with it, as
    /// [`Store`](crate::store::Store) does for the pool).
    pub(crate) async fn settle<T>(&self, slot: &mut Slot<DB::Link>, result: &Result<T, Fail>) {
        let Err(Fail::Db(e)) = result else {
            return;
        };
        let drop_it = if poisons(e) {
            self.purge.mark();
            true
        } else {
            match slot.link.as_mut() {
                Some(link) => match link.conn().await {
                    Ok(conn) => !reusable(&*conn, DB::BACKEND),
                    Err(_) => true,
                },
                None => false,
            }
        };
        if drop_it && slot.link.take().is_some() {
            tracing::debug!(backend = DB::BACKEND, error = %e, "dropping the background connection that failed");
        }
    }
}
