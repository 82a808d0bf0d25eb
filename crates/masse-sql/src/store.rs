//! The registry's transactions, written once for every sqlx driver.
//!
//! Invariants the rest of the crate relies on:
//!
//! - Every change to `masse_peers` that matters to watchers inserts its event
//!   rows in the same transaction, so an event exists exactly when the change
//!   committed.
//! - Before inserting events a transaction locks the single `masse_meta` row
//!   (SQLite: `BEGIN IMMEDIATE` already serialises writers). Event ids are
//!   therefore committed in increasing order: once id `n` is visible, every
//!   event below `n` that will ever exist is visible too. That is what makes
//!   a cursor (`id > last`) lose nothing.
//! - An expired row is deleted by whichever transaction's `DELETE` affects it
//!   (a sweeper, or a publish that finds it expired), and only that
//!   transaction writes its `Expired` event: exactly once, however many
//!   handles sweep.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use masse_core::{Error, InstanceId, NamePolicy, Namespace, PeerName, PeerRecord};
use sqlx::pool::PoolConnection;
use sqlx::{ColumnIndex, Connection, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::codec;
use crate::dialect::{self, Dialect, Queries};
use crate::error::{Fail, poisons};
use crate::lane::{Lane, Link, Slot};

/// An event row as stored, before it is checked and turned into a `RegistryEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) id: i64,
    pub(crate) kind: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) instance: Option<String>,
    pub(crate) record: Option<String>,
}

/// A peer row as read by a lookup, each column if it decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPeer {
    pub(crate) name: Option<String>,
    /// The record text.
    pub(crate) record: Option<String>,
    /// `expires_at` minus the database clock, in ms, read by the same
    /// statement as the row (`None` if it does not read back as an integer).
    pub(crate) left_ms: Option<i64>,
}

/// How a lookup narrows its scan.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scan<'a> {
    Exact(&'a str),
    Range(&'a str, &'a str),
    All,
}

/// The operations [`SqlRegistry`](crate::SqlRegistry) needs, object-safe so a
/// handle can hold any driver.
#[async_trait]
pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    /// Upsert with the policy; returns whether events were written.
    async fn publish(
        &self,
        record: &PeerRecord,
        json: &str,
        ttl_ms: i64,
        policy: NamePolicy,
    ) -> Result<bool, Fail>;
    /// Extends a live record owned by `instance`; false if it is not.
    async fn refresh(
        &self,
        ns: &str,
        name: &str,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<bool, Fail>;
    /// Removes `instance`'s record; returns whether it did.
    async fn unpublish(&self, ns: &str, name: &str, instance: &str) -> Result<bool, Fail>;
    async fn lookup(&self, ns: &str, scan: Scan<'_>) -> Result<Vec<RawPeer>, Fail>;
    /// Deletes expired records with their `Expired` events; returns the namespaces touched.
    async fn sweep(&self) -> Result<BTreeSet<String>, Fail>;
    /// Deletes old events; returns how many.
    async fn prune(&self, retention_ms: i64, max_events: i64) -> Result<u64, Fail>;
    /// The highest event id committed.
    async fn head(&self) -> Result<i64, Fail>;
    /// Events of `ns` with `after < id <= upto`, oldest first, at most `limit` rows.
    async fn read_events(
        &self,
        ns: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<EventBatch, Fail>;
    /// Events with ids up to this one may have been pruned.
    async fn pruned_below(&self) -> Result<i64, Fail>;
    /// Stores `bytes` as a record without any check (test hook).
    async fn store_raw(&self, ns: &str, name: &str, bytes: &[u8], ttl_ms: i64) -> Result<(), Fail>;
    /// Has the database file been deleted or replaced? Then the pool is
    /// reopened on the file now at the path (`Ok(true)`).
    async fn check_file(&self) -> Result<bool, Fail>;
    /// Creates the tables that are missing (a server restarted empty).
    async fn create_schema(&self) -> Result<(), Fail>;
}

/// The rows one `read_events` call fetched.
#[derive(Debug, Default)]
pub(crate) struct EventBatch {
    /// The rows whose id decoded.
    pub(crate) events: Vec<RawEvent>,
    /// How many rows were fetched, readable or not.
    pub(crate) rows: usize,
}

/// A key column as stored. PostgreSQL and MySQL hold text in text columns;
/// SQLite lets a TEXT column hold a blob (and a tool may write anything).
/// Whatever it is, it is bound back as it came so that the row can be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
    Unreadable,
}

impl Stored {
    fn text(&self) -> Option<&str> {
        match self {
            Stored::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stored::Text(t) => write!(f, "{t:?}"),
            Stored::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Stored::Int(i) => write!(f, "{i}"),
            Stored::Unreadable => f.write_str("<unreadable>"),
        }
    }
}

/// Row counts from `execute`, which sqlx does not expose generically.
pub(crate) trait Affected {
    fn affected(&self) -> u64;
}

#[cfg(feature = "sqlite")]
impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "postgres")]
impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "mysql")]
impl Affected for sqlx::mysql::MySqlQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// One pool on one database.
pub(crate) struct Store<DB: Dialect> {
    /// Swapped for a new pool when the database file is replaced (SQLite).
    pool: RwLock<Pool<DB>>,
    q: Queries,
    /// Creates the tables where they are missing.
    schema: Schema<DB>,
    /// Notices a database file deleted or replaced under the pool, and opens it again.
    reopen: Option<Box<dyn Reopen<DB>>>,
    /// Shared with the pool's `before_acquire` hook.
    purge: Arc<Purge>,
    /// An in-memory database lives in its one connection: never closed.
    in_memory: bool,
    /// The background connection (PostgreSQL, MySQL): heartbeats, event
    /// reads, sweeps and pruning run there, not in the pool.
    lane: Option<Arc<Lane<DB>>>,
}

/// Creates the tables that are missing, idempotently, taking turns with
/// other handles doing the same (each dialect's `migrate`).
pub(crate) type Schema<DB> =
    for<'a> fn(&'a Pool<DB>) -> BoxFuture<'a, std::result::Result<(), sqlx::Error>>;

/// The connection one call runs on: pooled, or the lane's.
enum Held<'a, DB: Dialect> {
    Pool(PoolConnection<DB>),
    Lane {
        lane: &'a Lane<DB>,
        slot: tokio::sync::MutexGuard<'a, Slot<DB::Link>>,
        /// A call dropped before it settled (it timed out) may leave the
        /// connection in the middle of an exchange: it is dropped.
        settled: bool,
    },
}

impl<DB: Dialect> Held<'_, DB> {
    async fn conn(&mut self) -> Result<&mut DB::Connection, Fail> {
        match self {
            Held::Pool(conn) => Ok(&mut **conn),
            Held::Lane { lane, slot, .. } => Ok(lane.ready(slot).await?.conn().await?),
        }
    }
}

impl<DB: Dialect> Drop for Held<'_, DB> {
    fn drop(&mut self) {
        if let Held::Lane {
            lane,
            slot,
            settled,
        } = self
        {
            if !*settled && slot.link.take().is_some() {
                tracing::debug!(
                    backend = DB::BACKEND,
                    "a call on the background connection was cut short; dropping the connection"
                );
            }
            lane.release();
        }
    }
}

/// Connections made before the last failure that can leave a connection
/// unusable for good are not reused. SQLite quietly opens a file it cannot
/// write read-only (an immutable or read-only file, a full disk), and such a
/// connection stays read-only after the file is writable again; a
/// PostgreSQL session keeps the `default_transaction_read_only` it started
/// with. Every such failure closes the connection it happened on and marks
/// the time; the pool then closes, instead of handing out, every connection
/// older than the mark, so the first call after the fault is gone runs on a
/// fresh connection.
#[derive(Debug, Default)]
pub(crate) struct Purge {
    mark: Mutex<Option<Instant>>,
}

impl Purge {
    pub(crate) fn mark(&self) {
        *self.mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// May a connection of this age be reused?
    pub(crate) fn keeps(&self, age: Duration) -> bool {
        match *self.mark.lock().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(mark) => Instant::now()
                .checked_sub(age)
                .is_some_and(|born| born > mark),
        }
    }
}

/// Watches what the pool is open on (SQLite: the file's device and inode).
#[async_trait]
pub(crate) trait Reopen<DB: sqlx::Database>: Send + Sync + 'static {
    /// If the database behind `current` is gone (deleted, replaced), closes
    /// `current` and returns a pool on the database now at its place; `None`
    /// if nothing changed. An error means "not yet": the next pass retries.
    async fn check(&self, current: &Pool<DB>) -> Result<Option<Pool<DB>>, Fail>;
}

/// Before a pooled connection is handed out: one still inside a
/// transaction (its COMMIT or ROLLBACK failed: I/O error, read-only or full
/// database, lost server) is closed, never reused. sqlx has already run the
/// queued rollback by then (it pings on release and before acquire), so a
/// depth above zero means the rollback itself failed.
pub(crate) fn reusable<C: sqlx::Connection>(conn: &C, backend: &'static str) -> bool {
    if conn.is_in_transaction() {
        tracing::warn!(
            backend,
            "closing a pooled connection left inside a failed transaction"
        );
        false
    } else {
        true
    }
}

impl<DB: Dialect> fmt::Debug for Store<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &DB::BACKEND)
            .field("connections", &self.pool().size())
            .finish_non_exhaustive()
    }
}

/// An event to insert.
struct NewEvent {
    ns: String,
    kind: &'static str,
    name: String,
    instance: String,
    record: Option<String>,
}

pub(crate) const JOINED: &str = "joined";
pub(crate) const UPDATED: &str = "updated";
pub(crate) const LEFT: &str = "left";
pub(crate) const EXPIRED: &str = "expired";

impl<DB: Dialect> Store<DB> {
    pub(crate) fn new(pool: Pool<DB>, purge: Arc<Purge>, schema: Schema<DB>) -> Self {
        Store {
            pool: RwLock::new(pool),
            q: Queries::new::<DB>(),
            schema,
            reopen: None,
            purge,
            in_memory: false,
            lane: None,
        }
    }

    /// Runs the background work on `lane` instead of the pool.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) fn with_lane(mut self, lane: Arc<Lane<DB>>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// The connection for background work: the lane's if there is one.
    async fn background(&self) -> Result<Held<'_, DB>, Fail> {
        Ok(match &self.lane {
            Some(lane) => Held::Lane {
                lane,
                slot: lane.take().await,
                settled: false,
            },
            None => Held::Pool(self.acquire().await?),
        })
    }

    /// The connection for a lookup: the lane's if no other call is on it, a
    /// pooled one otherwise. A lookup now and then thus opens no pooled
    /// connection at all; only lookups that overlap do, up to `pool_size`.
    async fn foreground(&self) -> Result<Held<'_, DB>, Fail> {
        match &self.lane {
            Some(lane) if !lane.is_busy() => self.background().await,
            _ => Ok(Held::Pool(self.acquire().await?)),
        }
    }

    /// [`settle`](Self::settle) for a connection from [`background`](Self::background).
    async fn settle_held<T>(&self, mut held: Held<'_, DB>, result: &Result<T, Fail>) {
        match &mut held {
            Held::Pool(conn) => {
                if let Err(Fail::Db(e)) = result
                    && poisons(e)
                    && !self.in_memory
                {
                    tracing::debug!(backend = DB::BACKEND, error = %e, "closing the connection that failed, and every older one");
                    self.purge.mark();
                    conn.close_on_drop();
                }
            }
            Held::Lane {
                lane,
                slot,
                settled,
            } => {
                lane.settle(slot, result).await;
                *settled = true;
            }
        }
    }

    /// The database lives in the pool's one connection (SQLite `:memory:`).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    async fn acquire(&self) -> Result<PoolConnection<DB>, Fail> {
        Ok(self.pool().acquire().await?)
    }

    /// Watches the database file with `reopen` on every maintenance pass.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn with_reopen(mut self, reopen: Box<dyn Reopen<DB>>) -> Self {
        self.reopen = Some(reopen);
        self
    }

    /// The current pool (cheap: a reference count).
    fn pool(&self) -> Pool<DB> {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<DB: Dialect> Store<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::QueryResult: Affected,
    for<'r> i64: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> String: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Encode<'r, DB>,
    for<'r> Vec<u8>: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// The database clock, in ms.
    async fn now(&self, conn: &mut DB::Connection) -> Result<i64, Fail> {
        let row = sqlx::query::<DB>(self.q.now.get()).fetch_one(conn).await?;
        Ok(row.try_get::<i64, _>(0usize)?)
    }

    /// Serialises event writers, then inserts `events` and wakes listeners.
    async fn append(
        &self,
        conn: &mut DB::Connection,
        events: &[NewEvent],
        at: i64,
    ) -> Result<(), Fail> {
        if events.is_empty() {
            return Ok(());
        }
        sqlx::query::<DB>(self.q.lock_log.get())
            .fetch_optional(&mut *conn)
            .await?;
        for e in events {
            sqlx::query::<DB>(self.q.insert_event.get())
                .bind(e.ns.clone())
                .bind(e.kind.to_owned())
                .bind(e.name.clone())
                .bind(e.instance.clone())
                .bind(e.record.clone())
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(notify) = &self.q.notify {
            let namespaces: BTreeSet<&str> = events.iter().map(|e| e.ns.as_str()).collect();
            for ns in namespaces {
                sqlx::query::<DB>(notify.get())
                    .bind(dialect::CHANNEL.to_owned())
                    .bind(ns.to_owned())
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<DB: Dialect> Backend for Store<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::QueryResult: Affected,
    for<'r> i64: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> String: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Encode<'r, DB>,
    for<'r> Vec<u8>: Encode<'r, DB> + Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn name(&self) -> &'static str {
        DB::BACKEND
    }

    async fn publish(
        &self,
        record: &PeerRecord,
        json: &str,
        ttl_ms: i64,
        policy: NamePolicy,
    ) -> Result<bool, Fail> {
        // A node's own writes, few and one at a time: always on the lane, so
        // that nodes starting together open no pooled connections.
        let mut held = self.background().await?;
        let result: Result<bool, Fail> = async {
            let conn = held.conn().await?;
            let ns = record.namespace.as_str().to_owned();
            let name = record.name.as_str().to_owned();
            let instance = record.instance.to_string();
            let mut tx = conn.begin_with(DB::BEGIN).await?;
            let current = sqlx::query::<DB>(self.q.select_peer.get())
                .bind(ns.clone())
                .bind(name.clone())
                .fetch_optional(&mut *tx)
                .await?;
            // Read the clock after the row lock: a wait for the lock must not age it.
            let now = self.now(&mut tx).await?;
            let expires_at = now.saturating_add(ttl_ms);
            let event = |kind, instance: &str, record: Option<&str>| NewEvent {
                ns: ns.clone(),
                kind,
                name: name.clone(),
                instance: instance.to_owned(),
                record: record.map(str::to_owned),
            };
            let mut events = Vec::new();
            match current {
                None => {
                    sqlx::query::<DB>(self.q.insert_peer.get())
                        .bind(ns.clone())
                        .bind(name.clone())
                        .bind(instance.clone())
                        .bind(json.to_owned())
                        .bind(expires_at)
                        .execute(&mut *tx)
                        .await?;
                    events.push(event(JOINED, &instance, Some(json)));
                }
                Some(row) => {
                    // Text that is not an instance id (another version's?)
                    // still holds the name until it expires; a blob holds it
                    // for nobody.
                    let holder = row.try_get::<String, _>(0usize).ok();
                    // An unreadable stored record only means "changed".
                    let stored: Option<String> = row.try_get(1usize).ok();
                    let held_until = row.try_get::<i64, _>(2usize).ok();
                    match (holder, held_until) {
                        (Some(holder), Some(held_until)) => {
                            if held_until <= now {
                                // Expired but not swept yet: this transaction retires it.
                                events.push(event(EXPIRED, &holder, None));
                                events.push(event(JOINED, &instance, Some(json)));
                            } else if holder != instance && policy == NamePolicy::Exclusive {
                                return Err(Fail::Masse(Error::NameTaken {
                                    name,
                                    holder: holder
                                        .parse::<InstanceId>()
                                        .unwrap_or(InstanceId::from_u128(0)),
                                }));
                            } else if holder != instance || stored.as_deref() != Some(json) {
                                events.push(event(UPDATED, &instance, Some(json)));
                            }
                        }
                        // A row nobody can own (its instance is not text, or
                        // its expiry not a number, so it would never expire):
                        // it holds the name for no one, so any publisher
                        // replaces it, and a name is never stuck on it.
                        (holder, _) => {
                            tracing::warn!(namespace = %ns, %name,
                                "replacing a stored peer row whose instance or expiry cannot be read");
                            if let Some(holder) = holder {
                                events.push(event(EXPIRED, &holder, None));
                            }
                            events.push(event(JOINED, &instance, Some(json)));
                        }
                    }
                    sqlx::query::<DB>(self.q.update_peer.get())
                        .bind(instance.clone())
                        .bind(json.to_owned())
                        .bind(expires_at)
                        .bind(ns.clone())
                        .bind(name.clone())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            self.append(&mut tx, &events, now).await?;
            tx.commit().await?;
            Ok(!events.is_empty())
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn refresh(
        &self,
        ns: &str,
        name: &str,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<bool, Fail> {
        let mut held = self.background().await?;
        let result: Result<bool, Fail> = async {
            let conn = held.conn().await?;
            let done = sqlx::query::<DB>(self.q.refresh.get())
                .bind(ttl_ms)
                .bind(ns.to_owned())
                .bind(name.to_owned())
                .bind(instance.to_owned())
                .execute(&mut *conn)
                .await?;
            Ok(done.affected() > 0)
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn unpublish(&self, ns: &str, name: &str, instance: &str) -> Result<bool, Fail> {
        // A node's own writes, few and one at a time: always on the lane, so
        // that nodes starting together open no pooled connections.
        let mut held = self.background().await?;
        let result: Result<bool, Fail> = async {
            let conn = held.conn().await?;
            let mut tx = conn.begin_with(DB::BEGIN).await?;
            let current = sqlx::query::<DB>(self.q.select_peer.get())
                .bind(ns.to_owned())
                .bind(name.to_owned())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = current else {
                return Ok(false);
            };
            if row.try_get::<String, _>(0usize).ok().as_deref() != Some(instance) {
                return Ok(false);
            }
            // An expiry that does not read back counts as past.
            let held_until = row.try_get::<i64, _>(2usize).unwrap_or(i64::MIN);
            let now = self.now(&mut tx).await?;
            sqlx::query::<DB>(self.q.delete_peer.get())
                .bind(ns.to_owned())
                .bind(name.to_owned())
                .bind(instance.to_owned())
                .execute(&mut *tx)
                .await?;
            // Leaving after the deadline is an expiry: watchers hear it once either way.
            let kind = if held_until > now { LEFT } else { EXPIRED };
            let ev = NewEvent {
                ns: ns.to_owned(),
                kind,
                name: name.to_owned(),
                instance: instance.to_owned(),
                record: None,
            };
            self.append(&mut tx, std::slice::from_ref(&ev), now).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn lookup(&self, ns: &str, scan: Scan<'_>) -> Result<Vec<RawPeer>, Fail> {
        let mut held = self.foreground().await?;
        let result: Result<Vec<RawPeer>, Fail> = async {
            let conn = held.conn().await?;
            let query = match scan {
                Scan::Exact(name) => sqlx::query::<DB>(self.q.lookup_exact.get())
                    .bind(ns.to_owned())
                    .bind(name.to_owned()),
                Scan::Range(from, to) => sqlx::query::<DB>(self.q.lookup_range.get())
                    .bind(ns.to_owned())
                    .bind(from.to_owned())
                    .bind(to.to_owned()),
                Scan::All => sqlx::query::<DB>(self.q.lookup_all.get()).bind(ns.to_owned()),
            };
            let rows = query.fetch_all(&mut *conn).await?;
            Ok(rows
                .iter()
                .map(|row| RawPeer {
                    name: row.try_get::<String, _>(0usize).ok(),
                    // Text, or bytes that happen to be UTF-8 (a blob written by a tool).
                    record: row.try_get::<String, _>(1usize).ok().or_else(|| {
                        row.try_get::<Vec<u8>, _>(1usize)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                    }),
                    left_ms: row.try_get::<i64, _>(2usize).ok(),
                })
                .collect())
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn sweep(&self) -> Result<BTreeSet<String>, Fail> {
        let mut held = self.background().await?;
        let result: Result<BTreeSet<String>, Fail> = async {
            let conn = held.conn().await?;
            let mut touched = BTreeSet::new();
            // A cheap indexed probe first: most ticks find nothing and take no lock.
            if sqlx::query::<DB>(self.q.probe_expired.get())
                .fetch_optional(&mut *conn)
                .await?
                .is_none()
            {
                return Ok(touched);
            }
            let mut tx = conn.begin_with(DB::BEGIN).await?;
            let now = self.now(&mut tx).await?;
            let rows = sqlx::query::<DB>(self.q.select_expired.get())
                .bind(now)
                .bind(dialect::SWEEP_BATCH)
                .fetch_all(&mut *tx)
                .await?;
            let mut events = Vec::new();
            for row in rows {
                let (ns, name, instance) = (
                    stored::<DB>(&row, 0),
                    stored::<DB>(&row, 1),
                    stored::<DB>(&row, 2),
                );
                if [&ns, &name, &instance].contains(&&Stored::Unreadable) {
                    if codec::first_warning(&format!("sweep {ns}/{name}/{instance}")) {
                        tracing::warn!(namespace = %ns, name = %name, instance = %instance,
                            "an expired peer row cannot be read back to delete it; skipping it");
                    }
                    continue;
                }
                let query = sqlx::query::<DB>(self.q.delete_expired.get());
                let query = bind_stored(bind_stored(bind_stored(query, &ns), &name), &instance);
                let gone = query.bind(now).execute(&mut *tx).await?;
                // Only the transaction whose DELETE removed the row reports it.
                if gone.affected() != 1 {
                    continue;
                }
                match (ns.text(), name.text(), instance.text()) {
                    (Some(n), Some(m), Some(i))
                        if n.parse::<Namespace>().is_ok()
                            && m.parse::<PeerName>().is_ok()
                            && i.parse::<InstanceId>().is_ok() =>
                    {
                        tracing::debug!(namespace = n, name = m, instance = i, "record expired");
                        touched.insert(n.to_owned());
                        events.push(NewEvent {
                            ns: n.to_owned(),
                            kind: EXPIRED,
                            name: m.to_owned(),
                            instance: i.to_owned(),
                            record: None,
                        });
                    }
                    // Nobody can have seen it (lookups and events skip such keys),
                    // and an event could not name it: removed without one.
                    _ => tracing::warn!(namespace = %ns, name = %name, instance = %instance,
                        "removed an expired peer row whose key is not a valid name; no Expired event"),
                }
            }
            self.append(&mut tx, &events, now).await?;
            tx.commit().await?;
            Ok(touched)
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn prune(&self, retention_ms: i64, max_events: i64) -> Result<u64, Fail> {
        let mut held = self.background().await?;
        let result: Result<u64, Fail> = async {
            let conn = held.conn().await?;
            let mut tx = conn.begin_with(DB::BEGIN).await?;
            let pruned: i64 = match sqlx::query::<DB>(self.q.lock_log.get())
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(row) => row.try_get(0usize)?,
                None => 0,
            };
            let now = self.now(&mut tx).await?;
            let head: i64 = sqlx::query::<DB>(self.q.head.get())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0usize)?;
            let by_age: i64 = sqlx::query::<DB>(self.q.prune_cut_age.get())
                .bind(now.saturating_sub(retention_ms))
                .fetch_one(&mut *tx)
                .await?
                .try_get(0usize)?;
            let by_count = head.saturating_sub(max_events);
            // Always keep the newest event, so ids can never start over below a cursor.
            let cut = by_age.max(by_count).min(head - 1);
            if cut <= pruned {
                return Ok(0);
            }
            let deleted = sqlx::query::<DB>(self.q.prune_delete.get())
                .bind(cut)
                .execute(&mut *tx)
                .await?
                .affected();
            sqlx::query::<DB>(self.q.prune_mark.get())
                .bind(cut)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(deleted)
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn head(&self) -> Result<i64, Fail> {
        let mut held = self.background().await?;
        let result: Result<i64, Fail> = async {
            let conn = held.conn().await?;
            let row = sqlx::query::<DB>(self.q.head.get())
                .fetch_one(&mut *conn)
                .await?;
            Ok(row.try_get(0usize)?)
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn read_events(
        &self,
        ns: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<EventBatch, Fail> {
        let mut held = self.background().await?;
        let result: Result<EventBatch, Fail> = async {
            let conn = held.conn().await?;
            let rows = sqlx::query::<DB>(self.q.read_events.get())
                .bind(ns.to_owned())
                .bind(after)
                .bind(upto)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            let mut batch = EventBatch {
                events: Vec::with_capacity(rows.len()),
                rows: rows.len(),
            };
            for row in rows {
                // Without an id there is no place in the log: skip the row (the
                // cursor moves past it with the ids around it).
                let Ok(id) = row.try_get::<i64, _>(0usize) else {
                    let after = batch.events.last().map_or(after, |e| e.id);
                    if codec::first_warning(&format!("event id {ns} after {after}")) {
                        tracing::warn!(
                            namespace = ns,
                            after,
                            "skipping an event row whose id is not an integer"
                        );
                    }
                    continue;
                };
                batch.events.push(RawEvent {
                    id,
                    kind: row.try_get(1usize).ok(),
                    name: row.try_get(2usize).ok(),
                    instance: row.try_get(3usize).ok(),
                    record: row.try_get::<Option<String>, _>(4usize).ok().flatten(),
                });
            }
            Ok(batch)
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn pruned_below(&self) -> Result<i64, Fail> {
        let mut held = self.background().await?;
        let result: Result<i64, Fail> = async {
            let conn = held.conn().await?;
            Ok(
                match sqlx::query::<DB>(self.q.pruned_below.get())
                    .fetch_optional(&mut *conn)
                    .await?
                {
                    Some(row) => row.try_get(0usize)?,
                    None => 0,
                },
            )
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn store_raw(&self, ns: &str, name: &str, bytes: &[u8], ttl_ms: i64) -> Result<(), Fail> {
        let mut held = self.foreground().await?;
        let result: Result<(), Fail> = async {
            let conn = held.conn().await?;
            let mut tx = conn.begin_with(DB::BEGIN).await?;
            let now = self.now(&mut tx).await?;
            sqlx::query::<DB>(self.q.delete_name.get())
                .bind(ns.to_owned())
                .bind(name.to_owned())
                .execute(&mut *tx)
                .await?;
            let insert = sqlx::query::<DB>(self.q.insert_peer.get())
                .bind(ns.to_owned())
                .bind(name.to_owned())
                .bind(InstanceId::from_u128(0).to_string());
            let text = std::str::from_utf8(bytes)
                .ok()
                .filter(|t| !t.contains('\0'));
            let insert = if let Some(text) = text {
                insert.bind(text.to_owned())
            } else if DB::RAW_BYTES {
                insert.bind(bytes.to_vec())
            } else {
                // Text columns of PostgreSQL and MySQL take neither NUL nor invalid UTF-8.
                insert.bind(String::from_utf8_lossy(bytes).replace('\0', ""))
            };
            insert
                .bind(now.saturating_add(ttl_ms))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        self.settle_held(held, &result).await;
        result
    }

    async fn create_schema(&self) -> Result<(), Fail> {
        let pool = self.pool();
        Ok((self.schema)(&pool).await?)
    }

    async fn check_file(&self) -> Result<bool, Fail> {
        let Some(reopen) = &self.reopen else {
            return Ok(false);
        };
        let current = self.pool();
        match reopen.check(&current).await? {
            Some(pool) => {
                *self.pool.write().unwrap_or_else(|p| p.into_inner()) = pool;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Reads a key column as whatever it holds.
fn stored<DB: Dialect>(row: &DB::Row, i: usize) -> Stored
where
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    if let Ok(t) = row.try_get::<String, _>(i) {
        Stored::Text(t)
    } else if let Ok(b) = row.try_get::<Vec<u8>, _>(i) {
        Stored::Bytes(b)
    } else if let Ok(n) = row.try_get::<i64, _>(i) {
        Stored::Int(n)
    } else {
        Stored::Unreadable
    }
}

/// Binds a key as it was read.
fn bind_stored<DB: Dialect>(
    query: sqlx::query::Query<'static, DB, DB::Arguments>,
    value: &Stored,
) -> sqlx::query::Query<'static, DB, DB::Arguments>
where
    for<'r> i64: Encode<'r, DB> + Type<DB>,
    for<'r> String: Encode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Encode<'r, DB> + Type<DB>,
{
    match value {
        Stored::Text(t) => query.bind(t.clone()),
        Stored::Bytes(b) => query.bind(b.clone()),
        Stored::Int(n) => query.bind(*n),
        // Never bound: such rows are skipped before.
        Stored::Unreadable => query,
    }
}
