//! The SQL each database speaks: one set of query templates, rendered per
//! dialect (placeholders, clock expression, row locking), and the embedded
//! schema.
//!
//! Templates use `$1`, `$2`, … in increasing order, each once, so that MySQL's
//! positional `?` binds the same values in the same order.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlStr};

/// What differs between the databases, as constants on each sqlx driver type.
pub(crate) trait Dialect: sqlx::Database {
    /// The backend's name in errors and logs.
    const BACKEND: &'static str;
    /// An SQL expression for the database's clock in milliseconds since the epoch.
    const NOW: &'static str;
    /// Appended to `SELECT`s that lock the rows they read.
    const FOR_UPDATE: &'static str;
    /// Starts a write transaction.
    const BEGIN: &'static str;
    /// Tells listeners on other handles that a namespace has new events
    /// (`$1` channel, `$2` namespace), if the database can.
    const NOTIFY: Option<&'static str>;
    /// `?` placeholders instead of `$n`.
    const QMARK: bool;
    /// Can a text column hold arbitrary bytes (for the raw-record test hook)?
    const RAW_BYTES: bool;
    /// The schema, idempotent statements run in order on connect.
    const SCHEMA: &'static [&'static str];
    /// What a handle's background connection is (see [`crate::lane`]).
    type Link: crate::lane::Link<Self>;
}

/// The `LISTEN`/`NOTIFY` channel.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) const CHANNEL: &str = "masse_events";

/// Rows read per round trip when catching up on events.
pub(crate) const EVENT_BATCH: i64 = 512;

/// Expired rows removed per sweep transaction.
pub(crate) const SWEEP_BATCH: i64 = 256;

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::Sqlite {
    const BACKEND: &'static str = "sqlite";
    // Unused: SQLite needs no server connections, its handles have no lane.
    type Link = sqlx::pool::PoolConnection<sqlx::Sqlite>;
    const NOW: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    const FOR_UPDATE: &'static str = "";
    // Takes the write lock up front: writers queue on busy_timeout instead of
    // failing to upgrade a read lock half-way through.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const NOTIFY: Option<&'static str> = None;
    const QMARK: bool = false;
    const RAW_BYTES: bool = true;
    const SCHEMA: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS masse_peers (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            instance TEXT NOT NULL,
            record TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (namespace, name)
        )",
        "CREATE INDEX IF NOT EXISTS masse_peers_expires ON masse_peers (expires_at)",
        // AUTOINCREMENT: ids are never reused, even after the newest rows are deleted.
        "CREATE TABLE IF NOT EXISTS masse_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            instance TEXT NOT NULL,
            record TEXT,
            at INTEGER NOT NULL
        )",
        "CREATE INDEX IF NOT EXISTS masse_events_ns ON masse_events (namespace, id)",
        "CREATE INDEX IF NOT EXISTS masse_events_at ON masse_events (at)",
        "CREATE TABLE IF NOT EXISTS masse_meta (
            id INTEGER PRIMARY KEY,
            schema_version INTEGER NOT NULL,
            pruned_below INTEGER NOT NULL
        )",
        "INSERT INTO masse_meta (id, schema_version, pruned_below) VALUES (1, 1, 0)
            ON CONFLICT (id) DO NOTHING",
    ];
}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::Postgres {
    const BACKEND: &'static str = "postgres";
    // The listening connection doubles as the lane.
    type Link = sqlx::postgres::PgListener;
    // clock_timestamp(), not now(): the latter is frozen at transaction
    // start. In a scalar subquery, because clock_timestamp() is volatile:
    // compared with a column directly it is evaluated for every row and no
    // index can serve the comparison; the subquery is evaluated once per
    // statement, and `expires_at <= (...)` can use the index.
    const NOW: &'static str = "(SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT)";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const BEGIN: &'static str = "BEGIN";
    const NOTIFY: Option<&'static str> = Some("SELECT pg_notify($1, $2)");
    const QMARK: bool = false;
    const RAW_BYTES: bool = false;
    // Names compare and sort bytewise (COLLATE "C"), as in Rust.
    const SCHEMA: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS masse_peers (
            namespace TEXT COLLATE \"C\" NOT NULL,
            name TEXT COLLATE \"C\" NOT NULL,
            instance TEXT NOT NULL,
            record TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (namespace, name)
        )",
        "CREATE INDEX IF NOT EXISTS masse_peers_expires ON masse_peers (expires_at)",
        "CREATE TABLE IF NOT EXISTS masse_events (
            id BIGSERIAL PRIMARY KEY,
            namespace TEXT COLLATE \"C\" NOT NULL,
            kind TEXT NOT NULL,
            name TEXT COLLATE \"C\" NOT NULL,
            instance TEXT NOT NULL,
            record TEXT,
            at BIGINT NOT NULL
        )",
        "CREATE INDEX IF NOT EXISTS masse_events_ns ON masse_events (namespace, id)",
        "CREATE INDEX IF NOT EXISTS masse_events_at ON masse_events (at)",
        "CREATE TABLE IF NOT EXISTS masse_meta (
            id INTEGER PRIMARY KEY,
            schema_version INTEGER NOT NULL,
            pruned_below BIGINT NOT NULL
        )",
        "INSERT INTO masse_meta (id, schema_version, pruned_below) VALUES (1, 1, 0)
            ON CONFLICT (id) DO NOTHING",
    ];
}

#[cfg(feature = "mysql")]
impl Dialect for sqlx::MySql {
    const BACKEND: &'static str = "mysql";
    type Link = sqlx::pool::PoolConnection<sqlx::MySql>;
    // The session time zone is UTC (sqlx sets it), so this is the epoch.
    const NOW: &'static str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    // READ COMMITTED is set per session on connect: no gap locks, so
    // concurrent publishers of different names do not deadlock.
    const BEGIN: &'static str = "BEGIN";
    const NOTIFY: Option<&'static str> = None;
    const QMARK: bool = true;
    const RAW_BYTES: bool = false;
    // Names are ASCII and compare bytewise (ascii_bin), as in Rust; the
    // default collations would fold case.
    const SCHEMA: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS masse_peers (
            namespace VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            name VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            instance VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            record MEDIUMTEXT CHARACTER SET utf8mb4 NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (namespace, name),
            INDEX masse_peers_expires (expires_at)
        ) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS masse_events (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            namespace VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            kind VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            name VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            instance VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            record MEDIUMTEXT CHARACTER SET utf8mb4 NULL,
            at BIGINT NOT NULL,
            INDEX masse_events_ns (namespace, id),
            INDEX masse_events_at (at)
        ) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS masse_meta (
            id INT NOT NULL PRIMARY KEY,
            schema_version INT NOT NULL,
            pruned_below BIGINT NOT NULL
        ) ENGINE = InnoDB",
        "INSERT IGNORE INTO masse_meta (id, schema_version, pruned_below) VALUES (1, 1, 0)",
    ];
}

/// Every query the registry runs, rendered for one dialect.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) now: Sql,
    pub(crate) select_peer: Sql,
    pub(crate) insert_peer: Sql,
    pub(crate) update_peer: Sql,
    pub(crate) delete_peer: Sql,
    pub(crate) delete_name: Sql,
    pub(crate) refresh: Sql,
    pub(crate) lookup_exact: Sql,
    pub(crate) lookup_range: Sql,
    pub(crate) lookup_all: Sql,
    pub(crate) probe_expired: Sql,
    pub(crate) select_expired: Sql,
    pub(crate) delete_expired: Sql,
    pub(crate) lock_log: Sql,
    pub(crate) insert_event: Sql,
    pub(crate) notify: Option<Sql>,
    pub(crate) head: Sql,
    pub(crate) read_events: Sql,
    pub(crate) pruned_below: Sql,
    pub(crate) prune_cut_age: Sql,
    pub(crate) prune_delete: Sql,
    pub(crate) prune_mark: Sql,
}

/// A rendered query, cheap to hand to sqlx again and again.
#[derive(Debug, Clone)]
pub(crate) struct Sql(Arc<str>);

impl Sql {
    pub(crate) fn get(&self) -> SqlStr {
        use sqlx::SqlSafeStr;
        // Built only from the constant templates in this file: never from input.
        AssertSqlSafe(self.0.clone()).into_sql_str()
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The query templates: `{now}` is the database clock in ms, `{lock}` the
/// row-locking suffix, `$n` the parameters.
pub(crate) mod templates {
    pub(crate) const NOW: &str = "SELECT {now}";
    pub(crate) const SELECT_PEER: &str = "SELECT instance, record, expires_at FROM masse_peers \
         WHERE namespace = $1 AND name = $2{lock}";
    pub(crate) const INSERT_PEER: &str = "INSERT INTO masse_peers (namespace, name, instance, record, expires_at) \
         VALUES ($1, $2, $3, $4, $5)";
    pub(crate) const UPDATE_PEER: &str = "UPDATE masse_peers SET instance = $1, record = $2, expires_at = $3 \
         WHERE namespace = $4 AND name = $5";
    pub(crate) const DELETE_PEER: &str =
        "DELETE FROM masse_peers WHERE namespace = $1 AND name = $2 AND instance = $3";
    pub(crate) const DELETE_NAME: &str =
        "DELETE FROM masse_peers WHERE namespace = $1 AND name = $2";
    pub(crate) const REFRESH: &str = "UPDATE masse_peers SET expires_at = {now} + $1 \
         WHERE namespace = $2 AND name = $3 AND instance = $4 AND expires_at > {now}";
    // The third column is the time left (ms) by the database clock, read in
    // the same statement as the row: `lookup_leases` reports it, `lookup`
    // ignores it.
    pub(crate) const LOOKUP_EXACT: &str = "SELECT name, record, expires_at - {now} FROM masse_peers \
         WHERE namespace = $1 AND name = $2 AND expires_at > {now}";
    pub(crate) const LOOKUP_RANGE: &str = "SELECT name, record, expires_at - {now} FROM masse_peers \
         WHERE namespace = $1 AND name >= $2 AND name < $3 AND expires_at > {now} ORDER BY name";
    pub(crate) const LOOKUP_ALL: &str = "SELECT name, record, expires_at - {now} FROM masse_peers \
         WHERE namespace = $1 AND expires_at > {now} ORDER BY name";
    // Ordered by the indexed column, so that every database walks the
    // `expires_at` index from its start and stops at once: without the
    // order, PostgreSQL guesses a third of the rows match and reads the
    // whole table looking for one (80-140 ms a look at 100 000 names, on
    // every handle, every poll).
    pub(crate) const PROBE_EXPIRED: &str =
        "SELECT expires_at FROM masse_peers WHERE expires_at <= {now} ORDER BY expires_at LIMIT 1";
    pub(crate) const SELECT_EXPIRED: &str = "SELECT namespace, name, instance FROM masse_peers \
         WHERE expires_at <= $1 ORDER BY namespace, name LIMIT $2{lock}";
    pub(crate) const DELETE_EXPIRED: &str = "DELETE FROM masse_peers \
         WHERE namespace = $1 AND name = $2 AND instance = $3 AND expires_at <= $4";
    pub(crate) const LOCK_LOG: &str = "SELECT pruned_below FROM masse_meta WHERE id = 1{lock}";
    pub(crate) const INSERT_EVENT: &str = "INSERT INTO masse_events (namespace, kind, name, instance, record, at) \
         VALUES ($1, $2, $3, $4, $5, $6)";
    pub(crate) const HEAD: &str = "SELECT COALESCE(MAX(id), 0) FROM masse_events";
    pub(crate) const READ_EVENTS: &str = "SELECT id, kind, name, instance, record FROM masse_events \
         WHERE namespace = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4";
    pub(crate) const PRUNED_BELOW: &str = "SELECT pruned_below FROM masse_meta WHERE id = 1";
    pub(crate) const PRUNE_CUT_AGE: &str =
        "SELECT COALESCE(MAX(id), 0) FROM masse_events WHERE at < $1";
    pub(crate) const PRUNE_DELETE: &str = "DELETE FROM masse_events WHERE id <= $1";
    pub(crate) const PRUNE_MARK: &str = "UPDATE masse_meta SET pruned_below = $1 WHERE id = 1";
}

impl Queries {
    pub(crate) fn new<D: Dialect>() -> Self {
        let r = |t: &str| render(t, D::NOW, D::FOR_UPDATE, D::QMARK);
        use templates as t;
        Queries {
            now: r(t::NOW),
            select_peer: r(t::SELECT_PEER),
            insert_peer: r(t::INSERT_PEER),
            update_peer: r(t::UPDATE_PEER),
            delete_peer: r(t::DELETE_PEER),
            delete_name: r(t::DELETE_NAME),
            refresh: r(t::REFRESH),
            lookup_exact: r(t::LOOKUP_EXACT),
            lookup_range: r(t::LOOKUP_RANGE),
            lookup_all: r(t::LOOKUP_ALL),
            probe_expired: r(t::PROBE_EXPIRED),
            select_expired: r(t::SELECT_EXPIRED),
            delete_expired: r(t::DELETE_EXPIRED),
            lock_log: r(t::LOCK_LOG),
            insert_event: r(t::INSERT_EVENT),
            notify: D::NOTIFY.map(r),
            head: r(t::HEAD),
            read_events: r(t::READ_EVENTS),
            pruned_below: r(t::PRUNED_BELOW),
            prune_cut_age: r(t::PRUNE_CUT_AGE),
            prune_delete: r(t::PRUNE_DELETE),
            prune_mark: r(t::PRUNE_MARK),
        }
    }
}

/// Fills in a template for a dialect.
pub(crate) fn render(template: &str, now: &str, lock: &str, qmark: bool) -> Sql {
    let mut s = template.replace("{now}", now).replace("{lock}", lock);
    if qmark {
        s = dollar_to_qmark(&s);
    }
    Sql(Arc::from(s))
}

/// `$1`, `$2`, … → `?`. Templates use each number once, in increasing order.
fn dollar_to_qmark(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `$n` in `sql`, in order of appearance.
    fn placeholders(sql: &str) -> Vec<u32> {
        let b = sql.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'$' {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                if end > start {
                    out.push(sql[start..end].parse().unwrap());
                }
                i = end.max(i + 1);
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn every_template_numbers_its_parameters_in_order() {
        use templates as t;
        let all = [
            t::NOW,
            t::SELECT_PEER,
            t::INSERT_PEER,
            t::UPDATE_PEER,
            t::DELETE_PEER,
            t::DELETE_NAME,
            t::REFRESH,
            t::LOOKUP_EXACT,
            t::LOOKUP_RANGE,
            t::LOOKUP_ALL,
            t::PROBE_EXPIRED,
            t::SELECT_EXPIRED,
            t::DELETE_EXPIRED,
            t::LOCK_LOG,
            t::INSERT_EVENT,
            t::HEAD,
            t::READ_EVENTS,
            t::PRUNED_BELOW,
            t::PRUNE_CUT_AGE,
            t::PRUNE_DELETE,
            t::PRUNE_MARK,
            "SELECT pg_notify($1, $2)",
        ];
        for sql in all {
            let p = placeholders(sql);
            let want: Vec<u32> = (1..=p.len() as u32).collect();
            assert_eq!(p, want, "{sql}");
            let q = render(sql, "NOW()", " FOR UPDATE", true);
            assert_eq!(q.as_str().matches('?').count(), p.len(), "{}", q.as_str());
            assert!(!q.as_str().contains('$'), "{}", q.as_str());
            assert!(!q.as_str().contains('{'), "{}", q.as_str());
        }
    }

    #[test]
    fn rendering() {
        let q = render(templates::REFRESH, "N()", "", true);
        assert_eq!(
            q.as_str(),
            "UPDATE masse_peers SET expires_at = N() + ? WHERE namespace = ? AND name = ? \
             AND instance = ? AND expires_at > N()"
        );
        let q = render(templates::SELECT_PEER, "N()", " FOR UPDATE", false);
        assert!(
            q.as_str().ends_with("name = $2 FOR UPDATE"),
            "{}",
            q.as_str()
        );
    }
}
