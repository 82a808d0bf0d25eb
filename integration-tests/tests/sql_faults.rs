//! SQL registry faults under running nodes end in recovery, against real
//! databases: a SQLite file made immutable (`chattr +i`), deleted or
//! replaced; PostgreSQL switched to read-only with its sessions killed;
//! MariaDB set `read_only`. Also malformed rows next to good ones, and
//! credentials the server refuses.
//!
//! Each fault test prints the time from the fault's removal to recovery
//! (`RegistryRestored` on both nodes, both records readable by a fresh
//! handle, both nodes dialing each other).
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use masse::{Error, Events, Namespace, Node, NodeEvent, Pattern, Registry};
use masse_integration_tests::mariadb::MariaDbServer;
use masse_integration_tests::postgres::PostgresServer;
use masse_integration_tests::server::{can_chattr, chattr, require_binary};
use masse_integration_tests::{connect_sql, echo_forever, eventually, init_tracing, node_event};
use masse_sql::{SqlConfig, SqlRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

/// Deadline for anything that should happen "soon".
const T: Duration = Duration::from_secs(15);
/// The nodes' ttl: heartbeat every 500 ms.
const TTL: Duration = Duration::from_millis(1500);

fn config() -> SqlConfig {
    SqlConfig::new()
        .with_poll_interval(Duration::from_millis(100))
        .with_connect_timeout(Duration::from_millis(500))
        .with_call_timeout(Duration::from_secs(2))
        .with_busy_timeout(Duration::from_millis(300))
}

async fn start_node(name: &str, ns: &str, url: &str) -> Node {
    let node = Node::builder(name)
        .namespace(ns)
        .registry(connect_sql(url, config()).await)
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .ttl(TTL)
        .start()
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    echo_forever(&node).await;
    node
}

/// Opens a stream from `from` to `to` by name and echoes a few bytes. A
/// name not found (yet: the dialer's cache hears of the record's return
/// through the watch) is retried until the deadline.
async fn dial(from: &Node, to: &str) {
    let deadline = Instant::now() + T;
    let mut s = loop {
        match timeout(T, from.connect(to)).await {
            Ok(Ok(s)) => break s,
            Ok(Err(e @ Error::NotFound { .. })) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not found yet; dialing again");
                // Real time: the back-off of a retry loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => panic!("{} → {to}: {e}", from.name()),
            Err(_) => panic!("{} → {to}: no stream within {T:?}", from.name()),
        }
    };
    let msg = format!("{} says hi", from.name());
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(T, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg.as_bytes());
}

async fn unavailable(events: &mut Events) -> Error {
    node_event(events, T, "RegistryUnavailable", |e| match e {
        NodeEvent::RegistryUnavailable { error } => Some(error.clone()),
        e => kept_name(e),
    })
    .await
}

async fn restored(events: &mut Events) {
    node_event(events, T, "RegistryRestored", |e| {
        kept_name::<()>(e);
        matches!(e, NodeEvent::RegistryRestored).then_some(())
    })
    .await
}

/// Nothing, after checking that `e` is not the node losing its name (a
/// fault must not cost a node its name).
fn kept_name<X>(e: &NodeEvent) -> Option<X> {
    assert!(
        !matches!(e, NodeEvent::NameLost { .. }),
        "the node lost its name: {e:?}"
    );
    None
}

/// Polls a fresh handle until both nodes' records, with their own
/// instances, are readable.
async fn both_published(url: &str, ns: &str, nodes: [&Node; 2]) {
    let reg = connect_sql(url, config()).await;
    let ns: Namespace = ns.parse().unwrap();
    eventually(T, "both nodes published again", || async {
        let found = reg.lookup(&ns, &Pattern::any()).await?;
        Ok::<_, Error>(
            nodes
                .iter()
                .all(|n| {
                    found
                        .iter()
                        .any(|r| r.name == *n.name() && r.instance == n.instance())
                })
                .then_some(()),
        )
    })
    .await;
}

/// What a fault cycle measured, from the fault's removal.
#[derive(Debug)]
#[allow(dead_code)] // printed with Debug
struct Recovery {
    /// Both nodes reported `RegistryRestored`.
    restored: Duration,
    /// A fresh handle reads both records, and both nodes dial each other.
    dialed: Duration,
}

/// Two nodes on `url`; `inject` makes the registry unwritable, for two
/// ttls (their records expire meanwhile), then `remove` ends the fault.
/// Both nodes must report `RegistryUnavailable` then `RegistryRestored`,
/// keep their names, be published again and dial each other.
async fn fault_cycle(
    what: &str,
    url: &str,
    ns: &str,
    inject: impl FnOnce(),
    remove: impl FnOnce(),
) -> Recovery {
    let a = start_node("alpha", ns, url).await;
    let b = start_node("beta", ns, url).await;
    let (mut ev_a, mut ev_b) = (a.events(), b.events());
    dial(&a, "beta").await;
    dial(&b, "alpha").await;

    tokio::task::block_in_place(inject);
    let e = unavailable(&mut ev_a).await;
    tracing::info!(error = %e, "{what}: alpha sees the registry unavailable");
    unavailable(&mut ev_b).await;
    // The fault lasts two ttls: both records are past their expiry (where
    // the database can still be read, lookups no longer find them).
    // Real time: the records' ttl must run out on the database's clock.
    tokio::time::sleep(TTL * 2).await;

    tokio::task::block_in_place(remove);
    let removed = Instant::now();
    restored(&mut ev_a).await;
    restored(&mut ev_b).await;
    let restored = removed.elapsed();
    both_published(url, ns, [&a, &b]).await;
    dial(&a, "beta").await;
    dial(&b, "alpha").await;
    let dialed = removed.elapsed();
    let recovery = Recovery { restored, dialed };
    eprintln!(
        "RECOVERY {what}: {recovery:?} (heartbeat period {:?})",
        TTL / 3
    );
    // Heartbeats retry at most one period apart during an outage: the first
    // one after the fault is gone succeeds (re-publishing the expired record).
    let bound = TTL / 3 + Duration::from_secs(1);
    assert!(
        recovery.restored < bound,
        "{what}: restored after {:?}, more than a heartbeat period (+1 s slack)",
        recovery.restored
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    recovery
}

// ---------------------------------------------------------------- SQLite

/// Files made immutable (`chattr +i`) until dropped: a failing test never
/// leaves them so.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Immutable {
        let guard = Immutable(paths);
        for p in &guard.0 {
            chattr("+i", p);
        }
        guard
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            chattr("-i", p);
        }
    }
}

/// SQLite fault tests take turns, each in a process of its own (see
/// [`own_process`]). SQLite keeps one table per process of the files it has
/// open, keyed by device and inode; a test that deletes or replaces its
/// database frees an inode another test's new file may get while a stale
/// mapping of the old one's `-shm` is still around, and the process dies of
/// SIGBUS. One process never does that to itself in production (its handles
/// reopen the path they share); tests that share a process did, about one
/// run in seven even when they only took turns.
static SQLITE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the calling test, `name`, again in a child process with only that
/// test and returns `true` (the caller then returns: the child did the
/// work); in that child it returns `false` and the test runs. The child's
/// output is shown with the parent's, and its failure fails the parent.
fn own_process(name: &str) -> bool {
    const CHILD: &str = "MASSE_SQLITE_FAULTS_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .status()
        .expect("the test binary runs");
    assert!(
        status.success(),
        "{name} failed in its own process: {status}"
    );
    true
}

/// A directory for one SQLite test that outlives the test: sqlx closes
/// pooled connections in the background, and a database file deleted
/// before they are gone frees an inode a later test's file may reuse
/// (see [`SQLITE_TURN`]). The directories are left in the temp dir.
fn sqlite_dir() -> &'static Path {
    let dir = tempfile::Builder::new()
        .prefix("masse-sql-faults-")
        .tempdir()
        .unwrap();
    Box::leak(Box::new(dir.keep()))
}

fn sqlite_files(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut s = db.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        })
        .collect()
}

/// The SQLite file and its WAL become immutable for two ttls under two
/// running nodes.
///
/// Not its shared-memory index (`-shm`): SQLite maps that file into memory
/// in WAL mode, and a write to a mapped page of an immutable file is a
/// SIGBUS that kills the process (about one run in two here). Surviving
/// that needs the registry off WAL or its index off the filesystem; until
/// then an operator must leave `-shm` writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_immutable_file_recovers() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_immutable_file_recovers") {
        return;
    }
    init_tracing();
    let dir = sqlite_dir();
    if !can_chattr(dir) {
        return;
    }
    let db = dir.join("reg.db");
    let url = format!("sqlite://{}", db.display());
    let guard = std::sync::Mutex::new(None);
    fault_cycle(
        "sqlite chattr +i",
        &url,
        "sqlite-immutable",
        || {
            let files = sqlite_files(&db);
            for f in &files {
                assert!(f.exists(), "{} exists while nodes run", f.display());
            }
            // The database and its WAL, not the mapped -shm (see above).
            *guard.lock().unwrap() = Some(Immutable::set(files[..2].to_vec()));
        },
        || drop(guard.lock().unwrap().take()),
    )
    .await;
}

/// The device and inode of a file, if it exists.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Two nodes and a watcher on one SQLite file; `swap` deletes or replaces
/// the file under them. Every handle must notice, let go of the old file,
/// open the new one; both nodes must publish themselves in it (without
/// losing their names), dial each other, and the watcher must get `Resync`.
async fn sqlite_file_swapped(what: &str, ns_name: &str, swap: impl FnOnce(&Path)) {
    let dir = sqlite_dir();
    let db = dir.join("reg.db");
    let url = format!("sqlite://{}", db.display());
    let ns: Namespace = ns_name.parse().unwrap();
    let a = start_node("alpha", ns_name, &url).await;
    let b = start_node("beta", ns_name, &url).await;
    let (mut ev_a, mut ev_b) = (a.events(), b.events());
    let observer = connect_sql(&url, config()).await;
    let mut watch = observer.watch(&ns).await.unwrap();
    dial(&a, "beta").await;
    dial(&b, "alpha").await;
    let old_main = file_id(&db).expect("the file exists");
    let wal = sqlite_files(&db)[1].clone();
    let old_wal = file_id(&wal);

    swap(&db);
    let swapped = Instant::now();
    // The watcher starts over on the new file.
    loop {
        match timeout(T, watch.next()).await {
            Ok(Some(Ok(masse::RegistryEvent::Resync))) => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("{what}: expected Resync, got {other:?}"),
        }
    }
    // Every handle here let go of the old file: its write-ahead log is gone
    // (the last one to close it removed it). Only now may a new handle open
    // the path, or SQLite would read the old log into the new file.
    eventually(T, &format!("{what}: the old WAL gone"), || async {
        old_wal.is_none() || file_id(&wal) != old_wal
    })
    .await;
    both_published(&url, ns_name, [&a, &b]).await;
    let published = swapped.elapsed();
    assert_ne!(file_id(&db), Some(old_main), "{what}: a new file");
    dial(&a, "beta").await;
    dial(&b, "alpha").await;
    let dialed = swapped.elapsed();
    eprintln!("RECOVERY {what}: published again after {published:?}, both dialed after {dialed:?}");
    // Neither node lost its name on the way.
    for ev in [&mut ev_a, &mut ev_b] {
        while let Ok(Some(e)) = timeout(Duration::from_millis(1), ev.recv()).await {
            assert!(!matches!(e, NodeEvent::NameLost { .. }), "{what}: {e:?}");
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// `rm` of the database file (its WAL and shared-memory index stay, held
/// open by the running handles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_deleted_under_running_nodes() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_file_deleted_under_running_nodes") {
        return;
    }
    init_tracing();
    sqlite_file_swapped("sqlite file deleted", "sqlite-rm", |db| {
        std::fs::remove_file(db).unwrap();
    })
    .await;
}

/// `rm -rf` of the database's whole directory (a cleaner, an operator): the
/// directory is created again with the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_directory_deleted_under_running_nodes() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_directory_deleted_under_running_nodes") {
        return;
    }
    init_tracing();
    sqlite_file_swapped("sqlite directory deleted", "sqlite-rmdir", |db| {
        std::fs::remove_dir_all(db.parent().unwrap()).unwrap();
    })
    .await;
}

/// A fresh empty file renamed over the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_replaced_under_running_nodes() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_file_replaced_under_running_nodes") {
        return;
    }
    init_tracing();
    sqlite_file_swapped("sqlite file replaced", "sqlite-mv", |db| {
        let fresh = db.with_extension("fresh");
        std::fs::write(&fresh, b"").unwrap();
        std::fs::rename(&fresh, db).unwrap();
    })
    .await;
}

/// Every table of the registry dropped under running nodes (`sqlite3`, as
/// an operator resetting the database would): the handles create them
/// again, the watcher gets `Resync`, both nodes publish themselves again
/// and dial each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tables_dropped_under_running_nodes() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_tables_dropped_under_running_nodes") {
        return;
    }
    init_tracing();
    if require_binary("sqlite3", "sqlite3").is_none() {
        return;
    }
    let db = sqlite_dir().join("reg.db");
    let url = format!("sqlite://{}", db.display());
    let ns: Namespace = "sqlite-drop".parse().unwrap();
    let a = start_node("alpha", ns.as_str(), &url).await;
    let b = start_node("beta", ns.as_str(), &url).await;
    let (mut ev_a, mut ev_b) = (a.events(), b.events());
    let observer = connect_sql(&url, config()).await;
    let mut watch = observer.watch(&ns).await.unwrap();
    dial(&a, "beta").await;
    dial(&b, "alpha").await;

    Sqlite3(db.clone())
        .sql("DROP TABLE masse_peers; DROP TABLE masse_events; DROP TABLE masse_meta;");
    let dropped = Instant::now();
    loop {
        match timeout(T, watch.next()).await {
            Ok(Some(Ok(masse::RegistryEvent::Resync))) => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected Resync, got {other:?}"),
        }
    }
    both_published(&url, ns.as_str(), [&a, &b]).await;
    let published = dropped.elapsed();
    dial(&a, "beta").await;
    dial(&b, "alpha").await;
    eprintln!(
        "RECOVERY sqlite tables dropped: published again after {published:?}, both dialed after {:?}",
        dropped.elapsed()
    );
    // Neither node lost its name on the way.
    for ev in [&mut ev_a, &mut ev_b] {
        while let Ok(Some(e)) = timeout(Duration::from_millis(1), ev.recv()).await {
            assert!(!matches!(e, NodeEvent::NameLost { .. }), "{e:?}");
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ------------------------------------------------------------ PostgreSQL

/// Every session of database `db` is cut (they reconnect with the
/// database's current settings).
fn terminate_sessions(pg: &PostgresServer, db: &str) {
    pg.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    ));
}

/// PostgreSQL: the nodes' database becomes read-only (every new session
/// starts read-only, the old ones are cut) for two ttls, then writable
/// again for new sessions only: the pooled sessions opened meanwhile are
/// still read-only, and the registry must replace them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_only_database_recovers() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    pg.psql("CREATE DATABASE faults");
    let url = format!("postgres://postgres@127.0.0.1:{}/faults", pg.port());
    fault_cycle(
        "postgres read-only",
        &url,
        "pg-read-only",
        || {
            pg.psql("ALTER DATABASE faults SET default_transaction_read_only = on");
            terminate_sessions(&pg, "faults");
        },
        // Sessions opened during the fault stay read-only: the registry
        // must let go of them by itself.
        || {
            pg.psql("ALTER DATABASE faults RESET default_transaction_read_only");
        },
    )
    .await;
}

/// PostgreSQL: the nodes' database stops taking connections and every
/// session is cut (as when it is being restored or moved) for two ttls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_closed_to_connections_recovers() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    pg.psql("CREATE DATABASE faults");
    let url = format!("postgres://postgres@127.0.0.1:{}/faults", pg.port());
    fault_cycle(
        "postgres connections refused",
        &url,
        "pg-closed",
        || {
            pg.psql("ALTER DATABASE faults ALLOW_CONNECTIONS false");
            terminate_sessions(&pg, "faults");
        },
        || {
            pg.psql("ALTER DATABASE faults ALLOW_CONNECTIONS true");
        },
    )
    .await;
}

/// PostgreSQL killed, and back two ttls later on the same port with an
/// empty data directory (its storage lost): the registry's tables are gone
/// with every record and event. The nodes create the tables again, publish
/// their records again and find each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_empty_recovers() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let url = pg.url();
    let pg = std::sync::Mutex::new(pg);
    fault_cycle(
        "postgres restarted empty",
        &url,
        "pg-empty",
        || pg.lock().unwrap().kill(),
        || pg.lock().unwrap().restart_empty(),
    )
    .await;
}

// --------------------------------------------------------------- MariaDB

/// MariaDB SIGKILLed, and back two ttls later on the same port with an
/// empty data directory, provisioned again (database and user, no tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarted_empty_recovers() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let url = db.url();
    let db = std::sync::Mutex::new(db);
    fault_cycle(
        "mariadb restarted empty",
        &url,
        "maria-empty",
        || db.lock().unwrap().kill(),
        || db.lock().unwrap().restart_empty(),
    )
    .await;
}

/// MariaDB: `SET GLOBAL read_only = 1` (the nodes' user has no SUPER, so
/// its writes fail) for two ttls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_read_only_server_recovers() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let url = db.url();
    fault_cycle(
        "mariadb read_only",
        &url,
        "maria-read-only",
        || db.admin("SET GLOBAL read_only = 1"),
        || db.admin("SET GLOBAL read_only = 0"),
    )
    .await;
}

// ------------------------------------------------------------ bad rows

/// Raw SQL on the registry's database, behind the registry's back.
trait RawSql {
    /// Runs `sql`; returns what it printed (one value per line).
    fn sql(&self, sql: &str) -> String;
    /// SQLite: columns hold any type (blobs in TEXT columns).
    fn loose_types(&self) -> bool {
        false
    }
}

/// The `sqlite3` shell on a database file.
struct Sqlite3(PathBuf);

impl RawSql for Sqlite3 {
    fn sql(&self, sql: &str) -> String {
        let out = Command::new("sqlite3")
            .args(["-cmd", ".timeout 5000"])
            .arg(&self.0)
            .arg(sql)
            .output()
            .expect("run sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
    fn loose_types(&self) -> bool {
        true
    }
}

impl RawSql for PostgresServer {
    fn sql(&self, sql: &str) -> String {
        self.psql(sql)
    }
}

impl RawSql for MariaDbServer {
    fn sql(&self, sql: &str) -> String {
        self.query(sql)
    }
}

/// `'text'` with quotes doubled.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Far in the future / long past, in ms since the epoch.
const LIVE: i64 = 4_102_444_800_000;
const PAST: i64 = 1;

/// Malformed rows (bad JSON, a record under another name, keys that are not
/// valid names or instances, SQLite blobs in TEXT columns, events that do
/// not parse), written with raw SQL next to good rows. Lookups, `to("*")`,
/// watch streams and expiry keep working for the good rows; the expired bad
/// rows are swept, without a bogus event.
async fn bad_rows_next_to_good_ones(url: &str, raw: &dyn RawSql) {
    const NS: &str = "bad-rows";
    let reg = connect_sql(url, config()).await;
    let ns: Namespace = NS.parse().unwrap();
    let good1 = start_node("good-1", NS, url).await;
    let good2 = start_node("good-2", NS, url).await;
    let dialer = start_node("dialer", NS, url).await;
    let mut watch = reg.watch(&ns).await.unwrap();

    let inst = masse::InstanceId::random().to_string();
    let peer = |name: &str, instance: &str, record: &str, expires: i64| {
        format!(
            "INSERT INTO masse_peers (namespace, name, instance, record, expires_at) \
             VALUES ({}, {name}, {instance}, {record}, {expires});",
            lit(NS)
        )
    };
    let mut rows = vec![
        // Live rows a lookup must skip.
        peer("'bad-json'", &lit(&inst), &lit("{\"name\":"), LIVE),
        peer(
            "'wrong-name'",
            &lit(&inst),
            &lit(&good1.record().to_json()),
            LIVE,
        ),
        peer("'not-an-object'", &lit(&inst), &lit("[1,2,3]"), LIVE),
        // Expired rows the sweep must remove: keys that are not a name or
        // an instance (no event can name them), and garbage under a valid key.
        peer("'bad name!'", &lit(&inst), &lit("{}"), PAST),
        peer("'bad-instance'", &lit("not-an-instance"), &lit("{}"), PAST),
        peer("'expired-junk'", &lit(&inst), &lit("junk"), PAST),
    ];
    let events = |kind: &str, name: &str, instance: &str, record: &str| {
        format!(
            "INSERT INTO masse_events (namespace, kind, name, instance, record, at) \
             VALUES ({}, {kind}, {name}, {instance}, {record}, 0);",
            lit(NS)
        )
    };
    rows.extend([
        events("'renamed'", "'x'", &lit(&inst), "NULL"),
        events("'joined'", "'good-x'", &lit(&inst), &lit("{not json")),
        events("'expired'", "'bad name!'", &lit("nope"), "NULL"),
        events("'left'", "'good-1'", &lit("zz"), "NULL"),
    ]);
    if raw.loose_types() {
        rows.extend([
            peer("X'ff00'", &lit(&inst), &lit("{}"), LIVE),
            peer("X'ff01'", &lit(&inst), &lit("{}"), PAST),
            peer("'blob-instance'", "X'00ff'", &lit("{}"), PAST),
            peer("'blob-record'", &lit(&inst), "X'fffe00'", LIVE),
            events("X'6a6f696e6564'", "'x'", &lit(&inst), "NULL"),
            events("'joined'", "X'ff'", &lit(&inst), "X'00'"),
            format!(
                "INSERT INTO masse_peers (namespace, name, instance, record, expires_at) \
                 VALUES (X'ff', 'n', {}, '{{}}', {PAST});",
                lit(&inst)
            ),
        ]);
    }
    tokio::task::block_in_place(|| raw.sql(&rows.concat()));

    // A good record that expires: its events arrive, in order, past the junk.
    let short = masse::PeerRecord::new(
        ns.clone(),
        "short".parse().unwrap(),
        masse::InstanceId::random(),
    );
    reg.publish(
        &short,
        Duration::from_millis(800),
        masse::NamePolicy::Exclusive,
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let ev = match timeout(T, watch.next()).await {
            Ok(Some(Ok(ev))) => ev,
            other => panic!("expected an event, got {other:?} after {seen:?}"),
        };
        use masse::RegistryEvent as E;
        let done = matches!(&ev, E::Expired { name, instance } if name.as_str() == "short" && *instance == short.instance);
        match &ev {
            E::Joined(r) if *r == short => {}
            // A valid key with a garbage record: its expiry names it.
            E::Expired { name, .. } if name.as_str() == "expired-junk" => {}
            E::Expired { name, .. } if name.as_str() == "short" => {}
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
        seen.push(ev);
        if done {
            break;
        }
    }
    assert!(
        matches!(&seen[0], masse::RegistryEvent::Joined(r) if *r == short)
            || matches!(&seen[1], masse::RegistryEvent::Joined(r) if *r == short),
        "{seen:?}"
    );

    // Lookups see exactly the good rows.
    let found = reg.lookup(&ns, &Pattern::any()).await.unwrap();
    let names: Vec<&str> = found.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["dialer", "good-1", "good-2"]);
    for bad in [
        "bad-json",
        "wrong-name",
        "not-an-object",
        "blob-record",
        "expired-junk",
    ] {
        let one = reg.lookup(&ns, &bad.parse().unwrap()).await.unwrap();
        assert!(one.is_empty(), "{bad}: {one:?}");
    }
    let g = reg.lookup(&ns, &"good-*".parse().unwrap()).await.unwrap();
    assert_eq!(g.len(), 2);

    // to("*") reaches every good peer, and nothing fails.
    let streams: Vec<_> = timeout(T, dialer.to("*").collect::<Vec<_>>())
        .await
        .unwrap();
    let mut reached: Vec<String> = streams
        .into_iter()
        .map(|s| s.expect("every good peer answers").peer().to_string())
        .collect();
    reached.sort();
    assert_eq!(reached, ["good-1", "good-2"]);

    // Every expired row is gone, readable or not (any namespace).
    eventually(T, "every expired bad row swept", || async {
        let left = tokio::task::block_in_place(|| {
            raw.sql(&format!(
                "SELECT count(*) FROM masse_peers WHERE expires_at <= {PAST}"
            ))
        });
        if left == "0" {
            Ok(Some(()))
        } else {
            Err(format!("{left} left"))
        }
    })
    .await;
    // Their removal wrote no event that names them.
    let named = tokio::task::block_in_place(|| {
        raw.sql(
            "SELECT count(*) FROM masse_events WHERE kind = 'expired' \
             AND name IN ('bad name!', 'bad-instance', 'blob-instance') AND at > 0",
        )
    });
    assert_eq!(named, "0");
    // And the live bad rows stay (they hold nothing a reader can use).
    dial(&good1, "good-2").await;
    for n in [good1, good2, dialer] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_rows_next_to_good_ones() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_bad_rows_next_to_good_ones") {
        return;
    }
    init_tracing();
    if require_binary("sqlite3", "sqlite3").is_none() {
        return;
    }
    let dir = sqlite_dir();
    let db = dir.join("reg.db");
    let url = format!("sqlite://{}", db.display());
    // The tables exist before the raw writes.
    connect_sql(&url, config()).await;
    bad_rows_next_to_good_ones(&url, &Sqlite3(db)).await;
}

/// A running node's own row is damaged behind its back (its instance
/// becomes a blob, so no refresh matches it): the node publishes itself
/// again over the unreadable row and keeps its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_damaged_own_row_is_published_again() {
    let _turn = SQLITE_TURN.lock().await;
    if own_process("sqlite_damaged_own_row_is_published_again") {
        return;
    }
    init_tracing();
    if require_binary("sqlite3", "sqlite3").is_none() {
        return;
    }
    let dir = sqlite_dir();
    let db = dir.join("reg.db");
    let url = format!("sqlite://{}", db.display());
    let node = start_node("alpha", "damaged", &url).await;
    let mut events = node.events();
    let raw = Sqlite3(db);
    let damaged = Instant::now();
    tokio::task::block_in_place(|| {
        raw.sql("UPDATE masse_peers SET instance = X'00ff' WHERE name = 'alpha'")
    });
    let reg = connect_sql(&url, config()).await;
    let ns: Namespace = "damaged".parse().unwrap();
    eventually(T, "alpha published again", || async {
        let found = reg.lookup(&ns, &"alpha".parse().unwrap()).await.unwrap();
        let instance = tokio::task::block_in_place(|| {
            raw.sql("SELECT typeof(instance) FROM masse_peers WHERE name = 'alpha'")
        });
        instance == "text" && found.iter().any(|r| r.instance == node.instance())
    })
    .await;
    eprintln!(
        "RECOVERY damaged own row: published again after {:?}",
        damaged.elapsed()
    );
    while let Ok(Some(e)) = timeout(Duration::from_millis(1), events.recv()).await {
        assert!(!matches!(e, NodeEvent::NameLost { .. }), "{e:?}");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_rows_next_to_good_ones() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let url = pg.url();
    connect_sql(&url, config()).await;
    bad_rows_next_to_good_ones(&url, &pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bad_rows_next_to_good_ones() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let url = db.url();
    connect_sql(&url, config()).await;
    bad_rows_next_to_good_ones(&url, &db).await;
}

/// MariaDB: another session holds `FLUSH TABLES WITH READ LOCK` for two
/// ttls. Writes do not fail, they wait: heartbeats time out, calls are
/// abandoned mid-statement, and the connections they were on must not be
/// handed out again still waiting for their answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_global_read_lock_recovers() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let url = db.url();
    let holder = std::sync::Mutex::new(None);
    fault_cycle(
        "mariadb global read lock",
        &url,
        "maria-locked",
        || {
            let child = db
                .client()
                .args(["-e", "FLUSH TABLES WITH READ LOCK; SELECT SLEEP(3600)"])
                .spawn()
                .expect("run mariadb");
            *holder.lock().unwrap() = Some(masse_integration_tests::server::KillOnDrop(child));
        },
        || {
            // The lock goes with the session: end it on the server's side.
            let id = db.query(
                "SELECT id FROM information_schema.processlist \
                 WHERE info LIKE 'SELECT SLEEP(3600)%'",
            );
            assert!(!id.is_empty(), "the session holding the lock");
            db.query(&format!("KILL CONNECTION {id}"));
            let held = holder.lock().unwrap().take();
            drop(held);
        },
    )
    .await;
}

// ------------------------------------------------------- bad credentials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_password_is_unauthorized() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    pg.require_password("masse_pw_user", "right-password");
    let good = format!(
        "postgres://masse_pw_user:right-password@127.0.0.1:{}/postgres",
        pg.port()
    );
    connect_sql(&good, config()).await;
    for url in [
        good.replace("right-password", "wrong-password"),
        format!(
            "postgres://nobody:whatever@127.0.0.1:{}/postgres",
            pg.port()
        ),
    ] {
        let started = Instant::now();
        match SqlRegistry::connect_with(&url, config()).await {
            Err(Error::RegistryUnauthorized { backend, source }) => {
                assert_eq!(backend, "postgres");
                let shown = source.to_string();
                assert!(!shown.contains("wrong-password"), "{shown}");
                eprintln!("postgres refused after {:?}: {shown}", started.elapsed());
            }
            other => panic!("expected RegistryUnauthorized, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_wrong_password_is_unauthorized() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let wrong = db
        .url()
        .replace(masse_integration_tests::mariadb::PASSWORD, "wrong-password");
    // The right user, but a database it has no grant on.
    let no_grant = format!(
        "mysql://{}:{}@127.0.0.1:{}/mysql",
        masse_integration_tests::mariadb::USER,
        masse_integration_tests::mariadb::PASSWORD,
        db.port()
    );
    for url in [wrong, no_grant] {
        match SqlRegistry::connect_with(&url, config()).await {
            Err(Error::RegistryUnauthorized { backend, source }) => {
                assert_eq!(backend, "mysql");
                eprintln!("mariadb refused: {source}");
            }
            other => panic!("{url}: expected RegistryUnauthorized, got {other:?}"),
        }
    }
}
