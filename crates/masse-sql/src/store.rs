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

use async_trait::async_trait;
use masse_core::{Error, InstanceId, NamePolicy, PeerRecord};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::dialect::{self, Dialect, Queries};
use crate::error::Fail;

/// An event row as stored, before it is checked and turned into a `RegistryEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) id: i64,
    pub(crate) kind: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) instance: Option<String>,
    pub(crate) record: Option<String>,
}

/// A peer row as read by a lookup: the name, and the record text if it decoded.
pub(crate) type RawPeer = (Option<String>, Option<String>);

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
    /// Events of `ns` with `after < id <= upto`, oldest first, at most `limit`.
    async fn read_events(
        &self,
        ns: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<RawEvent>, Fail>;
    /// Events with ids up to this one may have been pruned.
    async fn pruned_below(&self) -> Result<i64, Fail>;
    /// Stores `bytes` as a record without any check (test hook).
    async fn store_raw(&self, ns: &str, name: &str, bytes: &[u8], ttl_ms: i64) -> Result<(), Fail>;
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
    pool: Pool<DB>,
    q: Queries,
}

impl<DB: Dialect> fmt::Debug for Store<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &DB::BACKEND)
            .field("connections", &self.pool.size())
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
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Store {
            pool,
            q: Queries::new::<DB>(),
        }
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
        let ns = record.namespace.as_str().to_owned();
        let name = record.name.as_str().to_owned();
        let instance = record.instance.to_string();
        let mut tx = self.pool.begin_with(DB::BEGIN).await?;
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
                let holder: String = row.try_get(0usize)?;
                // An unreadable stored record only means "changed".
                let stored: Option<String> = row.try_get(1usize).ok();
                let held_until: i64 = row.try_get(2usize)?;
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

    async fn refresh(
        &self,
        ns: &str,
        name: &str,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<bool, Fail> {
        let done = sqlx::query::<DB>(self.q.refresh.get())
            .bind(ttl_ms)
            .bind(ns.to_owned())
            .bind(name.to_owned())
            .bind(instance.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(done.affected() > 0)
    }

    async fn unpublish(&self, ns: &str, name: &str, instance: &str) -> Result<bool, Fail> {
        let mut tx = self.pool.begin_with(DB::BEGIN).await?;
        let current = sqlx::query::<DB>(self.q.select_peer.get())
            .bind(ns.to_owned())
            .bind(name.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = current else {
            return Ok(false);
        };
        let holder: String = row.try_get(0usize)?;
        let held_until: i64 = row.try_get(2usize)?;
        if holder != instance {
            return Ok(false);
        }
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

    async fn lookup(&self, ns: &str, scan: Scan<'_>) -> Result<Vec<RawPeer>, Fail> {
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
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.try_get::<String, _>(0usize).ok(),
                    // Text, or bytes that happen to be UTF-8 (a blob written by a tool).
                    row.try_get::<String, _>(1usize).ok().or_else(|| {
                        row.try_get::<Vec<u8>, _>(1usize)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                    }),
                )
            })
            .collect())
    }

    async fn sweep(&self) -> Result<BTreeSet<String>, Fail> {
        let mut touched = BTreeSet::new();
        // A cheap indexed probe first: most ticks find nothing and take no lock.
        if sqlx::query::<DB>(self.q.probe_expired.get())
            .fetch_optional(&self.pool)
            .await?
            .is_none()
        {
            return Ok(touched);
        }
        let mut tx = self.pool.begin_with(DB::BEGIN).await?;
        let now = self.now(&mut tx).await?;
        let rows = sqlx::query::<DB>(self.q.select_expired.get())
            .bind(now)
            .bind(dialect::SWEEP_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let mut events = Vec::new();
        for row in rows {
            let ns: String = row.try_get(0usize)?;
            let name: String = row.try_get(1usize)?;
            let instance: String = row.try_get(2usize)?;
            let gone = sqlx::query::<DB>(self.q.delete_expired.get())
                .bind(ns.clone())
                .bind(name.clone())
                .bind(instance.clone())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            // Only the transaction whose DELETE removed the row reports it.
            if gone.affected() == 1 {
                tracing::debug!(namespace = %ns, %name, %instance, "record expired");
                touched.insert(ns.clone());
                events.push(NewEvent {
                    ns,
                    kind: EXPIRED,
                    name,
                    instance,
                    record: None,
                });
            }
        }
        self.append(&mut tx, &events, now).await?;
        tx.commit().await?;
        Ok(touched)
    }

    async fn prune(&self, retention_ms: i64, max_events: i64) -> Result<u64, Fail> {
        let mut tx = self.pool.begin_with(DB::BEGIN).await?;
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

    async fn head(&self) -> Result<i64, Fail> {
        let row = sqlx::query::<DB>(self.q.head.get())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0usize)?)
    }

    async fn read_events(
        &self,
        ns: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<RawEvent>, Fail> {
        let rows = sqlx::query::<DB>(self.q.read_events.get())
            .bind(ns.to_owned())
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(RawEvent {
                // The id must decode: the cursor depends on it.
                id: row.try_get(0usize)?,
                kind: row.try_get(1usize).ok(),
                name: row.try_get(2usize).ok(),
                instance: row.try_get(3usize).ok(),
                record: row.try_get::<Option<String>, _>(4usize).ok().flatten(),
            });
        }
        Ok(out)
    }

    async fn pruned_below(&self) -> Result<i64, Fail> {
        Ok(
            match sqlx::query::<DB>(self.q.pruned_below.get())
                .fetch_optional(&self.pool)
                .await?
            {
                Some(row) => row.try_get(0usize)?,
                None => 0,
            },
        )
    }

    async fn store_raw(&self, ns: &str, name: &str, bytes: &[u8], ttl_ms: i64) -> Result<(), Fail> {
        let mut tx = self.pool.begin_with(DB::BEGIN).await?;
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
}
