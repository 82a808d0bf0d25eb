//! SqlRegistry against real PostgreSQL and MariaDB servers started by the
//! harness: the conformance suite, unreadable and newer records, and the
//! database dying and coming back under running nodes and watchers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::testkit::RegistryConformance;
use masse::{
    DynRegistry, Error, NamePolicy, Namespace, NodeEvent, Pattern, PeerName, Registry,
    RegistryEvent,
};
use masse_integration_tests::mariadb::MariaDbServer;
use masse_integration_tests::postgres::PostgresServer;
use masse_integration_tests::{
    connect_sql, echo_forever, eventually, init_tracing, next_event, node_event, record,
};
use masse_sql::{SqlConfig, SqlRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

const POLL: Duration = Duration::from_millis(100);
const T: Duration = Duration::from_secs(10);

/// A server the tests can kill and bring back.
trait Database {
    fn url(&self) -> String;
    fn kill(&mut self);
    fn restart(&mut self);
}

impl Database for PostgresServer {
    fn url(&self) -> String {
        PostgresServer::url(self)
    }
    fn kill(&mut self) {
        PostgresServer::kill(self)
    }
    fn restart(&mut self) {
        PostgresServer::restart(self)
    }
}

impl Database for MariaDbServer {
    fn url(&self) -> String {
        MariaDbServer::url(self)
    }
    fn kill(&mut self) {
        MariaDbServer::kill(self)
    }
    fn restart(&mut self) {
        MariaDbServer::restart(self)
    }
}

/// Quick polling and short deadlines, so that outages show within a heartbeat.
fn config() -> SqlConfig {
    SqlConfig::new()
        .with_poll_interval(POLL)
        .with_connect_timeout(Duration::from_millis(500))
        .with_call_timeout(Duration::from_secs(2))
}

/// Runs the suite; `reset_events` empties the event log and restarts its
/// ids (as a restore from an old backup would), so that watchers resync.
async fn conformance(url: String, reset_events: impl Fn() + Send + Sync + 'static) {
    let raw = connect_sql(&url, config()).await;
    let reset_events = Arc::new(reset_events);
    let started = Instant::now();
    RegistryConformance::new(move || {
        let url = url.clone();
        async move {
            // The suite's 200 concurrent publishers queue for pooled
            // connections: normal deadlines here, not the outage tests' short ones.
            let relaxed = SqlConfig::new().with_poll_interval(POLL);
            let reg = SqlRegistry::connect_with(&url, relaxed)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            Arc::new(reg) as DynRegistry
        }
    })
    .ttl(Duration::from_millis(600))
    .slack(POLL * 2 + Duration::from_millis(900))
    .raw_writer(move |ns, name, bytes| {
        let raw = raw.clone();
        async move {
            raw.store_raw_record(&ns, &name, &bytes, Duration::from_secs(60))
                .await
                .expect("raw write");
        }
    })
    .resync_trigger(move |_ns| {
        let reset = reset_events.clone();
        async move {
            tokio::task::spawn_blocking(move || reset())
                .await
                .expect("reset the event log");
        }
    })
    .run()
    .await;
    tracing::info!(elapsed = ?started.elapsed(), "conformance suite passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let pg = Arc::new(pg);
    let admin = pg.clone();
    conformance(pg.url(), move || {
        admin.psql("TRUNCATE masse_events RESTART IDENTITY");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_conformance() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let db = Arc::new(db);
    let admin = db.clone();
    conformance(db.url(), move || {
        admin.query("TRUNCATE TABLE masse_events");
    })
    .await;
    // The same server through the mariadb:// spelling.
    let other = connect_sql(&db.url().replacen("mysql://", "mariadb://", 1), config()).await;
    assert_eq!(other.backend(), "mysql");
}

/// Garbage is skipped, a record from a newer writer (`version` 99, unknown
/// fields) is read, and nothing panics.
async fn unreadable_and_newer_records(url: String) {
    let reg = connect_sql(&url, config()).await;
    let ns: Namespace = "odd-records".parse().unwrap();
    let good = record(&"odd-records".parse().unwrap(), "good");
    reg.publish(&good, Duration::from_secs(60), NamePolicy::Takeover)
        .await
        .unwrap();
    let newer = record(&"odd-records".parse().unwrap(), "newer");
    let json = newer.to_json().replacen(
        "\"version\":1",
        "\"version\":99,\"hologram\":{\"beams\":[1,2,3]},\"colour\":\"ultraviolet\"",
        1,
    );
    assert!(json.contains("\"version\":99"), "{json}");
    let foreign = good.to_json();
    let stored = [
        ("newer", json.as_bytes()),
        ("broken", b"{\"name\":".as_slice()),
        ("binary", b"\xff\xfe\x00\x01".as_slice()),
        ("empty", b"".as_slice()),
        ("stranger", foreign.as_bytes()), // another name's record
    ];
    for (name, bytes) in stored {
        reg.store_raw_record(
            &ns,
            &name.parse::<PeerName>().unwrap(),
            bytes,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    }
    let all = reg.lookup(&ns, &Pattern::any()).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["good", "newer"], "garbage skipped, newer read");
    assert_eq!(all[1].version, 99);
    assert_eq!(all[1].instance, newer.instance);
    for exact in ["broken", "binary", "empty", "stranger"] {
        assert!(
            reg.lookup(&ns, &exact.parse().unwrap())
                .await
                .unwrap()
                .is_empty(),
            "{exact}"
        );
    }
    // An unreadable holder still holds its name for an exclusive publisher.
    let challenger = record(&"odd-records".parse().unwrap(), "broken");
    assert!(matches!(
        reg.publish(&challenger, Duration::from_secs(60), NamePolicy::Exclusive)
            .await,
        Err(Error::NameTaken { .. })
    ));
    // ...and a takeover replaces it.
    let mut w = reg.watch(&ns).await.unwrap();
    reg.publish(&challenger, Duration::from_secs(60), NamePolicy::Takeover)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut w, T).await,
        RegistryEvent::Updated(challenger.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreadable_and_newer_records() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    unreadable_and_newer_records(pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_unreadable_and_newer_records() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    unreadable_and_newer_records(db.url()).await;
}

/// The database dies under two running nodes and a watcher on another
/// handle, stays down past the nodes' ttl, and comes back:
/// - the nodes report `RegistryUnavailable`, keep reaching each other by name
///   from their caches, then report `RegistryRestored` with their records back;
/// - the watcher's stream stays open and, from its cursor, receives every
///   event written after the restart (the expiries of both records, their
///   re-publication, and a peer that comes and goes), in order per name,
///   without a `Resync`.
async fn outage_under_running_nodes(db: &mut impl Database, ns_name: &str) {
    let url = db.url();
    let ttl = Duration::from_millis(900);
    let build = |name: &str, reg: SqlRegistry| {
        masse::Node::builder(name)
            .namespace(ns_name)
            .registry(reg)
            .interface(masse::TcpInterface::new("127.0.0.1:0"))
            .ttl(ttl)
    };
    let ns: Namespace = ns_name.parse().unwrap();
    let observer = connect_sql(&url, config()).await;
    let mut watch = observer.watch(&ns).await.unwrap();

    let srv = build("srv", connect_sql(&url, config()).await)
        .start()
        .await
        .unwrap();
    echo_forever(&srv).await;
    let cli = build("cli", connect_sql(&url, config()).await)
        .start()
        .await
        .unwrap();
    let mut ev = cli.events();
    let mut s = timeout(T, cli.connect("srv")).await.unwrap().unwrap(); // warms the cache
    s.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    let mut joined: Vec<String> = Vec::new();
    for _ in 0..2 {
        match next_event(&mut watch, T).await {
            RegistryEvent::Joined(r) => joined.push(r.name.to_string()),
            other => panic!("expected Joined, got {other:?}"),
        }
    }
    joined.sort();
    assert_eq!(joined, ["cli", "srv"]);

    db.kill();
    let error = node_event(&mut ev, T, "RegistryUnavailable", |e| match e {
        NodeEvent::RegistryUnavailable { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(error.is_transient(), "a transient error: {error}");
    // Past the ttl: the records are stale in the database, the cache still works.
    // Real time: the outage must outlast the records' ttl on the database's clock.
    tokio::time::sleep(ttl * 2).await;
    let mut s = timeout(T, cli.connect("srv"))
        .await
        .unwrap()
        .expect("served from the cache while the database is down");
    s.write_all(b"z").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"z");
    drop(s);
    let r = observer.lookup(&ns, &Pattern::any()).await;
    assert!(
        matches!(
            r,
            Err(Error::RegistryUnavailable { .. } | Error::Timeout { .. })
        ),
        "lookups fail while the database is down: {r:?}"
    );

    db.restart();
    // Someone comes and goes right after the restart, before the watcher's
    // poller has necessarily reconnected: the cursor must still catch it.
    let other = connect_sql(&url, config()).await;
    let visitor = record(&ns_name.parse().unwrap(), "visitor");
    other
        .publish(&visitor, Duration::from_secs(60), NamePolicy::Exclusive)
        .await
        .unwrap();
    other
        .unpublish(&ns, &visitor.name, visitor.instance)
        .await
        .unwrap();
    node_event(&mut ev, T, "RegistryRestored", |e| {
        matches!(e, NodeEvent::RegistryRestored).then_some(())
    })
    .await;

    // Per name: srv and cli expired, then joined again; the visitor joined and left.
    let mut seen: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let want: BTreeMap<String, Vec<&'static str>> = [
        ("cli".to_owned(), vec!["expired", "joined"]),
        ("srv".to_owned(), vec!["expired", "joined"]),
        ("visitor".to_owned(), vec!["joined", "left"]),
    ]
    .into_iter()
    .collect();
    while seen != want {
        let (name, kind) = match next_event(&mut watch, T).await {
            RegistryEvent::Joined(r) => (r.name.to_string(), "joined"),
            RegistryEvent::Updated(r) => (r.name.to_string(), "updated"),
            RegistryEvent::Left { name, .. } => (name.to_string(), "left"),
            RegistryEvent::Expired { name, .. } => (name.to_string(), "expired"),
            other => panic!("unexpected {other:?} (seen so far {seen:?})"),
        };
        seen.entry(name).or_default().push(kind);
        assert!(
            seen.iter()
                .all(|(n, kinds)| want.get(n).is_some_and(|w| w.starts_with(kinds))),
            "events out of order or extra: {seen:?}"
        );
    }
    let records = observer.lookup(&ns, &Pattern::any()).await.unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["cli", "srv"], "both nodes published again");
    assert!(records.iter().any(|r| r.instance == srv.instance()));
    // And nothing else trickles in.
    assert!(timeout(POLL * 5, watch.next()).await.is_err());
    cli.shutdown().await.unwrap();
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_running_nodes() {
    init_tracing();
    let Some(mut pg) = PostgresServer::start() else {
        return;
    };
    outage_under_running_nodes(&mut pg, "pg-outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outage_under_running_nodes() {
    init_tracing();
    let Some(mut db) = MariaDbServer::start() else {
        return;
    };
    outage_under_running_nodes(&mut db, "maria-outage").await;
}

/// An unreachable server is `RegistryUnavailable`, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_unavailable() {
    init_tracing();
    let port = masse_integration_tests::server::free_port();
    for (url, backend) in [
        (
            format!("postgres://u:secret@127.0.0.1:{port}/db"),
            "postgres",
        ),
        (format!("mysql://u:secret@127.0.0.1:{port}/db"), "mysql"),
    ] {
        let started = Instant::now();
        match SqlRegistry::connect_with(&url, config()).await {
            Err(Error::RegistryUnavailable { backend: b, source }) => {
                assert_eq!(b, backend);
                assert!(!source.to_string().contains("secret"));
            }
            other => panic!("{url}: expected RegistryUnavailable, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// NOTIFY wakes another handle's watcher long before its next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_watchers() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let slow = SqlConfig::new().with_poll_interval(Duration::from_secs(10));
    let watcher = SqlRegistry::connect_with(&pg.url(), slow.clone())
        .await
        .unwrap();
    let writer = SqlRegistry::connect_with(&pg.url(), slow).await.unwrap();
    let ns: Namespace = "notify".parse().unwrap();
    let mut w = watcher.watch(&ns).await.unwrap();
    // Wait for the listener to start: a first record reaches the watcher
    // only through a wake-up (the listener wakes everyone once it listens,
    // then on every NOTIFY), unless the 10 s poll comes first.
    let first = record(&"notify".parse().unwrap(), "first");
    writer
        .publish(&first, Duration::from_secs(60), NamePolicy::Takeover)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut w, Duration::from_secs(15)).await,
        RegistryEvent::Joined(first)
    );
    for i in 0..3 {
        let r = record(&"notify".parse().unwrap(), &format!("n{i}"));
        let published = Instant::now();
        writer
            .publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
            .await
            .unwrap();
        let ev = timeout(Duration::from_secs(2), w.next())
            .await
            .expect("woken by NOTIFY, not by the 10 s poll")
            .unwrap()
            .unwrap();
        assert_eq!(ev, RegistryEvent::Joined(r));
        assert!(published.elapsed() < Duration::from_secs(1));
    }
}

/// While notifications flow, pollers read only every 5 s; when the listening
/// connection is cut, they go back to the poll interval at once (events keep
/// coming without NOTIFY), and once the listener is back, NOTIFY again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_watchers_poll_while_the_listener_is_cut() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let config = SqlConfig::new().with_poll_interval(Duration::from_millis(200));
    let watcher = SqlRegistry::connect_with(&pg.url(), config.clone())
        .await
        .unwrap();
    let writer = SqlRegistry::connect_with(&pg.url(), config).await.unwrap();
    let ns: Namespace = "cut".parse().unwrap();
    let mut w = watcher.watch(&ns).await.unwrap();
    // The listening connection also runs the background work, so its last
    // query is not `LISTEN`: it goes by its application name.
    let listeners = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'masse-lane'";
    let wait_listeners = async |n: &'static str| {
        eventually(T, &format!("{n} listening connections"), || async {
            pg.psql(listeners) == n
        })
        .await
    };
    wait_listeners("2").await;

    let mut publish_and_see = async |name: &str, within: Duration, why: &str| {
        let r = record(&"cut".parse().unwrap(), name);
        writer
            .publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
            .await
            .unwrap();
        let ev = timeout(within, w.next())
            .await
            .unwrap_or_else(|_| panic!("{why}: no event within {within:?}"))
            .unwrap()
            .unwrap();
        assert_eq!(ev, RegistryEvent::Joined(r));
    };
    publish_and_see("before", Duration::from_secs(2), "NOTIFY").await;

    // Cut both handles' listening connections; until they listen again the
    // watcher must read at the 200 ms poll interval, not every 5 s.
    let cut = pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'masse-lane' AND pid <> pg_backend_pid()",
    );
    assert_eq!(cut, "2");
    publish_and_see("during", Duration::from_secs(2), "short polling while cut").await;

    wait_listeners("2").await;
    publish_and_see(
        "after",
        Duration::from_secs(2),
        "NOTIFY once listening again",
    )
    .await;
}

/// A handle at rest looks for expired records every poll, and that look
/// goes through the `expires_at` index: with 50 000 live names it must not
/// read the whole table (it did: 80-140 ms a look at 100 000 names, on
/// every handle, at every poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_expiry_probe_uses_the_index() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let reg = connect_sql(&pg.url(), config()).await;
    // The schema exists once a handle connected; fill it directly.
    pg.psql(
        "INSERT INTO masse_peers (namespace, name, instance, record, expires_at) \
         SELECT 'crowd', 'n' || i, 'x', '{}', 9000000000000 FROM generate_series(1, 50000) i",
    );
    pg.psql("ANALYZE masse_peers");
    let mut watch = reg.watch(&"quiet".parse().unwrap()).await.unwrap();
    let seq_scans = || {
        pg.psql("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'masse_peers'")
            .trim()
            .parse::<i64>()
            .expect("seq_scan count")
    };
    let expiry_lookups = || {
        pg.psql(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'masse_peers_expires'",
        )
        .trim()
        .parse::<i64>()
        .expect("idx_scan count")
    };
    // Statistics reach pg_stat_* within about a second, and the probe runs
    // at every poll (100 ms here): once its index scans show, what the
    // handle did at connect is counted too.
    let lookups = expiry_lookups();
    eventually(
        T,
        "the expiry probe to show in the index statistics",
        || async { expiry_lookups() > lookups },
    )
    .await;
    let (scans, lookups) = (seq_scans(), expiry_lookups());
    eventually(T, "five more expiry probes", || async {
        expiry_lookups() >= lookups + 5
    })
    .await;
    assert_eq!(seq_scans(), scans, "a poll read all of masse_peers");
    assert!(
        timeout(Duration::from_millis(10), watch.next())
            .await
            .is_err(),
        "no event for a quiet namespace"
    );
}

/// A session the server ends under an idle handle (an administrator's
/// `pg_terminate_backend`, a failover's shutdown) costs the next call
/// nothing: it sees the error on the dead connection and runs once more on
/// a fresh one, instead of failing with `RegistryUnavailable` while the
/// server is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_call_after_the_server_ended_the_session_succeeds() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let writer = connect_sql(&pg.url(), config()).await;
    let ns: Namespace = "ended".parse().unwrap();
    for round in 0..5 {
        let r = record(&"ended".parse().unwrap(), &format!("w-{round}"));
        writer
            .publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
            .await
            .unwrap();
        let ended = pg.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        );
        assert_ne!(ended, "0", "round {round}: no session to end");
        let found = writer
            .lookup(&ns, &Pattern::from(&r.name))
            .await
            .unwrap_or_else(|e| panic!("round {round}: lookup after the session ended: {e}"));
        assert_eq!(found, vec![r.clone()], "round {round}");
        writer
            .publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
            .await
            .unwrap_or_else(|e| panic!("round {round}: publish after the session ended: {e}"));
    }
}

/// Nodes starting together on an empty database all create the schema
/// (idempotently, under a lock) and work.
async fn many_handles_create_the_schema_at_once(url: String) {
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { SqlRegistry::connect_with(&url, config()).await })
        })
        .collect();
    let mut handles = Vec::new();
    for t in tasks {
        handles.push(t.await.unwrap().expect("concurrent connect"));
    }
    for (i, h) in handles.iter().enumerate() {
        h.publish(
            &record(&"schema".parse().unwrap(), &format!("n{i}")),
            Duration::from_secs(60),
            NamePolicy::Exclusive,
        )
        .await
        .unwrap();
    }
    let all = handles[0]
        .lookup(&"schema".parse().unwrap(), &Pattern::any())
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    let shown = format!("{:?}", handles[0]);
    assert!(!shown.contains("masse-pw"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_created_once_by_many() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    many_handles_create_the_schema_at_once(pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_schema_created_once_by_many() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    many_handles_create_the_schema_at_once(db.url()).await;
}

/// PostgreSQL over TLS (rustls): `sslmode=require` works when the
/// `tls-rustls-ring` feature is on, and is a clear configuration error
/// naming the feature when it is off. The server refuses plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    init_tracing();
    let Some(pg) = PostgresServer::start_tls() else {
        return;
    };
    let url = format!("{}?sslmode=require", pg.url());
    match SqlRegistry::connect_with(&url, config()).await {
        Ok(reg) => {
            let r = record(&"tls".parse().unwrap(), "secure");
            reg.publish(&r, Duration::from_secs(60), NamePolicy::Exclusive)
                .await
                .unwrap();
            let found = reg
                .lookup(&"tls".parse().unwrap(), &Pattern::any())
                .await
                .unwrap();
            assert_eq!(found, vec![r]);
        }
        Err(Error::InvalidAddress { reason, .. }) if reason.contains("tls-rustls-ring") => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "\n!!! SKIPPING the TLS round trip: masse-sql is built without `tls-rustls-ring`\n"
                );
            }
        }
        Err(e) => panic!("TLS connect failed: {e}"),
    }
    let plain = format!("{}?sslmode=disable", pg.url());
    assert!(
        SqlRegistry::connect_with(&plain, config()).await.is_err(),
        "the server only takes TLS"
    );
}

/// Server connections of the test database, not counting the one asking.
fn pg_connections(pg: &PostgresServer) -> usize {
    pg.psql(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .parse()
    .expect("a count")
}

/// Connections of the registry's user (the asking one is root's).
fn mariadb_connections(db: &MariaDbServer) -> usize {
    db.query(&format!(
        "SELECT count(*) FROM information_schema.processlist WHERE user = '{}'",
        masse_integration_tests::mariadb::USER
    ))
    .parse()
    .expect("a count")
}

/// Waits until `count` says `want`, up to `within`.
async fn wait_connections(
    count: &(impl Fn() -> usize + Clone + Send + 'static),
    want: usize,
    within: Duration,
    what: &str,
) {
    eventually(
        within,
        &format!("{want} server connections {what}"),
        || async {
            let c = count.clone();
            let n = tokio::task::spawn_blocking(c).await.unwrap();
            if n == want {
                Ok(Some(()))
            } else {
                Err(format!("{n} server connections"))
            }
        },
    )
    .await
}

/// A started node (publishing with heartbeats, watching its namespace)
/// holds exactly one server connection once its pool's idle timeout has
/// passed, and keeps to it across heartbeats and polls; a burst of lookups
/// opens at most `pool_size` more, which close again afterwards; events
/// still reach the node at once.
async fn node_at_rest_holds_one_connection(
    url: String,
    backend: &str,
    count: impl Fn() -> usize + Clone + Send + 'static,
) {
    let ns_name = "at-rest";
    let ns: Namespace = ns_name.parse().unwrap();
    let pool_size = 5;
    let config = SqlConfig::new().with_pool_size(pool_size);
    let reg = SqlRegistry::connect_with(&url, config.clone())
        .await
        .unwrap();
    // Heartbeats every 500 ms: several in each sampling window below.
    let node = masse::Node::builder("rest-a")
        .namespace(ns_name)
        .registry(reg.clone())
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let mut events = node.events();
    wait_connections(&count, 1, Duration::from_secs(10), "at rest").await;
    // It stays at one through heartbeats (every 500 ms), event polls and sweeps.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let c = count.clone();
        let n = tokio::task::spawn_blocking(c).await.unwrap();
        assert_eq!(n, 1, "{backend}: server connections of a node at rest");
        // Real time: sampling a window of several heartbeats, polls and
        // sweeps, in which nothing may open a second connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A burst: 20 tasks looking up for a second.
    let stop = Instant::now() + Duration::from_secs(1);
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let reg = reg.clone();
            let ns = ns.clone();
            tokio::spawn(async move {
                let mut n = 0u32;
                while Instant::now() < stop {
                    reg.lookup(&ns, &Pattern::any()).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut most = 0;
    while Instant::now() < stop {
        let c = count.clone();
        most = most.max(tokio::task::spawn_blocking(c).await.unwrap());
    }
    let mut done = 0;
    for l in lookups {
        done += l.await.unwrap();
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{backend}: at rest 1 server connection; under a burst of {done} lookups in 1 s \
             (20 tasks) at most {most}"
        );
    }
    // One more than lane + pool: a pooled connection that sqlx has closed
    // (and already replaced) may still be listed while its server process exits.
    assert!(
        most <= 2 + pool_size as usize,
        "{backend}: {most} connections under a burst"
    );
    assert!(most > 1, "{backend}: the burst overflowed into the pool");
    // Two idle timeouts (2 s each) and it is back to one.
    wait_connections(&count, 1, Duration::from_secs(10), "after the burst").await;

    // Events still reach the node at once.
    let other = SqlRegistry::connect_with(&url, config).await.unwrap();
    let r = record(&ns_name.parse().unwrap(), "rest-b");
    let published = Instant::now();
    other
        .publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
        .await
        .unwrap();
    node_event(&mut events, T, "PeerJoined rest-b", |ev| match ev {
        NodeEvent::PeerJoined(p) if p.name.as_str() == "rest-b" => Some(()),
        _ => None,
    })
    .await;
    assert!(
        published.elapsed() < Duration::from_secs(2),
        "{backend}: event after {:?}",
        published.elapsed()
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_node_at_rest_holds_one_connection() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let pg = Arc::new(pg);
    let counter = pg.clone();
    node_at_rest_holds_one_connection(pg.url(), "postgres", move || pg_connections(&counter)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_node_at_rest_holds_one_connection() {
    init_tracing();
    let Some(db) = MariaDbServer::start() else {
        return;
    };
    let db = Arc::new(db);
    let counter = db.clone();
    node_at_rest_holds_one_connection(db.url(), "mariadb", move || mariadb_connections(&counter))
        .await;
}

/// 90 handles, each publishing one name with heartbeats and watching the
/// namespace, on a PostgreSQL with its default `max_connections = 100`:
/// they all connect and run, hold one server connection each, and a publish
/// reaches every one of the 90 watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ninety_handles_fit_the_default_max_connections() {
    init_tracing();
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    assert_eq!(pg.psql("SHOW max_connections"), "100");
    let pg = Arc::new(pg);
    let url = pg.url();
    let ns_name = "crowd";
    let ns: Namespace = ns_name.parse().unwrap();
    let ttl = Duration::from_secs(3);
    const HANDLES: usize = 90;

    // The most connections seen, sampled while the handles start and run.
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pg, most, sampling) = (pg.clone(), most.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let n = pg_connections(&pg);
                most.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                // Real time: the sampling period of a count taken all along.
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let started = Instant::now();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    let mut watchers = Vec::new();
    let mut beats = Vec::new();
    for i in 0..HANDLES {
        let reg = SqlRegistry::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("handle {i}: {e}"));
        watchers.push(reg.watch(&ns).await.unwrap());
        let r = record(&ns_name.parse().unwrap(), &format!("n{i:02}"));
        reg.publish(&r, ttl, NamePolicy::Takeover).await.unwrap();
        let (beat, failures) = (reg.clone(), failures.clone());
        beats.push(tokio::spawn(async move {
            loop {
                // Real time: a heartbeat period, as a node's.
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = beat.refresh(&r.namespace, &r.name, r.instance, ttl).await {
                    tracing::warn!(name = %r.name, error = %e, "heartbeat failed");
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
        handles.push(reg);
    }
    let connected = started.elapsed();
    let counter = pg.clone();
    let count = move || pg_connections(&counter);
    wait_connections(
        &count,
        HANDLES,
        Duration::from_secs(10),
        "90 handles at rest",
    )
    .await;

    // One more name from one of them: every watcher sees it.
    let news = record(&ns_name.parse().unwrap(), "news");
    let published = Instant::now();
    handles[0]
        .publish(&news, ttl, NamePolicy::Takeover)
        .await
        .unwrap();
    let mut missed = 0;
    let mut expired = 0;
    let mut slowest = Duration::ZERO;
    for w in &mut watchers {
        let deadline = published + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, w.next()).await {
                Ok(Some(Ok(RegistryEvent::Joined(r)))) if r == news => {
                    slowest = slowest.max(published.elapsed());
                    break;
                }
                Ok(Some(Ok(RegistryEvent::Expired { .. }))) => expired += 1,
                Ok(Some(Ok(_))) => {}
                other => {
                    tracing::warn!(?other, "watcher did not see the news");
                    missed += 1;
                    break;
                }
            }
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "postgres: {HANDLES} handles connected in {connected:?}, at most {most} server \
             connections, {HANDLES} at rest; news reached all watchers within {slowest:?}, \
             missed {missed}"
        );
    }
    assert_eq!(missed, 0, "events missed");
    assert_eq!(expired, 0, "a heartbeat was late or failed");
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "heartbeats failed"
    );
    // The handles connect as the superuser, which may also take the 3
    // reserved connections: the server's limit here is 100.
    assert!(
        most <= 100,
        "{most} connections: more than the server allows"
    );
    for b in beats {
        b.abort();
    }
}
