//! SqlRegistry on a SQLite file: the conformance suite with handles as
//! separate processes would have them, and cross-handle behaviour.
#![cfg(feature = "sqlite")]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse_core::testkit::RegistryConformance;
use masse_core::{
    DynRegistry, Error, InstanceId, NamePolicy, Namespace, Pattern, PeerName, PeerRecord, Registry,
    RegistryEvent,
};
use masse_sql::{SqlConfig, SqlRegistry};
use tokio::time::timeout;

const POLL: Duration = Duration::from_millis(100);

use masse_core::testkit::fixtures::{init_tracing, next_event};

fn config() -> SqlConfig {
    SqlConfig::new().with_poll_interval(POLL)
}

fn url(dir: &tempfile::TempDir) -> String {
    // A directory that does not exist yet: connect creates it.
    format!("sqlite://{}/nested/registry.db", dir.path().display())
}

/// How long an event may take to arrive.
const EVENT: Duration = Duration::from_secs(3);

/// The conformance suite's raw writer: stores `bytes` unchecked as the
/// record of `name`, through `raw`.
fn raw_writer(
    raw: SqlRegistry,
) -> impl Fn(Namespace, PeerName, Vec<u8>) -> futures::future::BoxFuture<'static, ()> + Send + Sync
{
    move |ns, name, bytes| {
        let raw = raw.clone();
        Box::pin(async move {
            raw.store_raw_record(&ns, &name, &bytes, Duration::from_secs(60))
                .await
                .expect("raw write");
        })
    }
}

fn rec(ns: &str, name: &str) -> PeerRecord {
    PeerRecord::new(
        ns.parse().unwrap(),
        name.parse().unwrap(),
        InstanceId::random(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_shared_file() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let factory_url = url.clone();
    let reset_url = url.clone();
    let raw = SqlRegistry::connect_with(&url, config()).await.unwrap();
    RegistryConformance::new(move || {
        let url = factory_url.clone();
        async move {
            Arc::new(
                SqlRegistry::connect_with(&url, config())
                    .await
                    .expect("connect"),
            ) as DynRegistry
        }
    })
    .ttl(Duration::from_millis(600))
    .slack(POLL * 2 + Duration::from_millis(700))
    .raw_writer(raw_writer(raw))
    .resync_trigger(move |_ns| {
        // As a restore from an old copy would: the event log starts over.
        let url = reset_url.clone();
        async move {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("open the file");
            sqlx::query("DELETE FROM masse_events")
                .execute(&mut conn)
                .await
                .expect("empty the event log");
            sqlx::query("DELETE FROM sqlite_sequence WHERE name = 'masse_events'")
                .execute(&mut conn)
                .await
                .expect("restart the event ids");
            conn.close().await.expect("close");
        }
    })
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    init_tracing();
    let reg = SqlRegistry::connect_with("sqlite::memory:", config())
        .await
        .unwrap();
    let raw = reg.clone();
    RegistryConformance::new(move || {
        let reg = reg.clone();
        async move { Arc::new(reg) as DynRegistry }
    })
    .ttl(Duration::from_millis(600))
    .slack(POLL * 2 + Duration::from_millis(700))
    .raw_writer(raw_writer(raw))
    .run()
    .await;
}

/// Two handles on one file, as two processes would have: each sees the
/// other's records and events, and an expiry is reported once to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_see_each_other() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?mode=rwc", url(&dir));
    let a = SqlRegistry::connect_with(&url, config()).await.unwrap();
    let b = SqlRegistry::connect_with(&url, config()).await.unwrap();
    let ns: Namespace = "two".parse().unwrap();
    let mut wa = a.watch(&ns).await.unwrap();
    let mut wb = b.watch(&ns).await.unwrap();

    let ra = rec("two", "alpha");
    let rb = rec("two", "beta");
    a.publish(&ra, Duration::from_secs(60), NamePolicy::Exclusive)
        .await
        .unwrap();
    b.publish(&rb, Duration::from_millis(500), NamePolicy::Exclusive)
        .await
        .unwrap();
    for w in [&mut wa, &mut wb] {
        assert_eq!(
            next_event(w, EVENT).await,
            RegistryEvent::Joined(ra.clone())
        );
        assert_eq!(
            next_event(w, EVENT).await,
            RegistryEvent::Joined(rb.clone())
        );
    }
    assert_eq!(
        b.lookup(&ns, &Pattern::new("alpha").unwrap())
            .await
            .unwrap(),
        vec![ra.clone()]
    );
    // b's name is held: a cannot take it exclusively, but can take it over.
    let challenger = rec("two", "beta");
    assert!(matches!(
        a.publish(&challenger, Duration::from_secs(60), NamePolicy::Exclusive)
            .await,
        Err(Error::NameTaken { holder, .. }) if holder == rb.instance
    ));
    // b's record expires: both handles hear it exactly once.
    for w in [&mut wa, &mut wb] {
        assert_eq!(
            next_event(w, EVENT).await,
            RegistryEvent::Expired {
                name: rb.name.clone(),
                instance: rb.instance
            }
        );
    }
    // a leaves: b hears it.
    a.unpublish(&ns, &ra.name, ra.instance).await.unwrap();
    assert_eq!(
        next_event(&mut wb, EVENT).await,
        RegistryEvent::Left {
            name: ra.name.clone(),
            instance: ra.instance
        }
    );
    assert_eq!(
        next_event(&mut wa, EVENT).await,
        RegistryEvent::Left {
            name: ra.name.clone(),
            instance: ra.instance
        }
    );
    // Nothing more, for four polls (a window in which nothing may happen).
    tokio::select! {
        ev = wa.next() => panic!("a got more: {ev:?}"),
        ev = wb.next() => panic!("b got more: {ev:?}"),
        () = tokio::time::sleep(POLL * 4) => {}
    }
    assert!(format!("{a:?}").contains("sqlite"));
}

/// A watcher's stream ends when its handle is dropped, and several watchers
/// of one namespace share one poller without disturbing each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_their_handle() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let reg = SqlRegistry::connect_with(&url(&dir), config())
        .await
        .unwrap();
    let ns: Namespace = "ends".parse().unwrap();
    let mut w1 = reg.watch(&ns).await.unwrap();
    let mut w2 = reg.watch(&ns).await.unwrap();
    let r = rec("ends", "x");
    reg.publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
        .await
        .unwrap();
    for w in [&mut w1, &mut w2] {
        assert_eq!(next_event(w, EVENT).await, RegistryEvent::Joined(r.clone()));
    }
    drop(reg);
    for w in [&mut w1, &mut w2] {
        let end = timeout(Duration::from_secs(3), w.next()).await.unwrap();
        assert!(end.is_none(), "stream ends with the handle: {end:?}");
    }
}

/// Records written by newer versions (higher `version`, unknown fields) are
/// read; garbage is skipped, also from the event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_and_garbage_records() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let reg = SqlRegistry::connect_with(&url(&dir), config())
        .await
        .unwrap();
    let ns: Namespace = "newer".parse().unwrap();
    let r = rec("newer", "future");
    let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    v["version"] = 99.into();
    v["hologram"] = serde_json::json!({"beam": true});
    let name: PeerName = "future".parse().unwrap();
    reg.store_raw_record(
        &ns,
        &name,
        v.to_string().as_bytes(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    reg.store_raw_record(
        &ns,
        &"garbage".parse().unwrap(),
        b"\x00\xff{",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let found = reg.lookup(&ns, &Pattern::any()).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].version, 99);
    assert_eq!(found[0].instance, r.instance);
}

#[tokio::test]
async fn bad_urls() {
    let bad = SqlRegistry::connect("sqlite://?mode=nonsense").await;
    assert!(
        matches!(
            bad,
            Err(Error::InvalidAddress {
                kind: "registry url",
                ..
            })
        ),
        "{bad:?}"
    );
    let missing = SqlRegistry::connect("sqlite:///nonexistent-dir/x.db?mode=rw").await;
    assert!(
        matches!(missing, Err(Error::RegistryUnavailable { .. })),
        "{missing:?}"
    );
    // No file named: refused, not some file or memory database picked quietly.
    for url in ["sqlite://", "sqlite:", "sqlite://?mode=rwc"] {
        match SqlRegistry::connect(url).await {
            Err(Error::InvalidAddress { reason, .. }) => {
                assert!(reason.contains("no database file"), "{url}: {reason}")
            }
            other => panic!("{url}: expected InvalidAddress, got {other:?}"),
        }
    }
}

/// A main file deleted with its write-ahead log left behind is refused with
/// an error that names both files and the fix.
#[tokio::test]
async fn a_wal_without_its_database_is_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reg.db");
    let wal = dir.path().join("reg.db-wal");
    std::fs::write(&wal, b"left over").unwrap();
    let url = format!("sqlite://{}", db.display());
    match SqlRegistry::connect_with(&url, config()).await {
        Err(
            e @ Error::Registry {
                backend: "sqlite", ..
            },
        ) => {
            let shown = e.to_string();
            assert!(shown.contains(&*db.to_string_lossy()), "{shown}");
            assert!(shown.contains(&*wal.to_string_lossy()), "{shown}");
            assert!(shown.contains("delete"), "{shown}");
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
    assert!(
        !db.exists(),
        "no empty file was created next to the old log"
    );
    std::fs::remove_file(&wal).unwrap();
    SqlRegistry::connect_with(&url, config()).await.unwrap();
}

/// A watcher whose cursor falls behind what was pruned gets `Resync`, then
/// the events that are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_events_make_a_lagging_watcher_resync() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    // The writer keeps at most 5 events and prunes every second; the
    // watcher's handle polls only every 2 s.
    let writer = SqlRegistry::connect_with(
        &url,
        SqlConfig::new()
            .with_poll_interval(POLL)
            .with_max_events(5)
            .with_event_retention(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let slow = SqlRegistry::connect_with(
        &url,
        SqlConfig::new().with_poll_interval(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let ns: Namespace = "pruned".parse().unwrap();
    let mut w = slow.watch(&ns).await.unwrap();
    let mut last = None;
    for i in 0..20 {
        let r = rec("pruned", &format!("p{i:02}"));
        writer
            .publish(&r, Duration::from_secs(60), NamePolicy::Takeover)
            .await
            .unwrap();
        last = Some(r);
    }
    assert_eq!(next_event(&mut w, EVENT).await, RegistryEvent::Resync);
    // Whatever survived the pruning follows, ending with the newest.
    let mut tail = Vec::new();
    while let Ok(Some(ev)) = timeout(Duration::from_millis(500), w.next()).await {
        tail.push(ev.unwrap());
    }
    assert!(!tail.is_empty() && tail.len() <= 5, "{tail:?}");
    assert_eq!(tail.last(), Some(&RegistryEvent::Joined(last.unwrap())));
}

/// Many processes opening a new file at once: the schema is created once
/// and everyone can work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_handles_create_the_schema_at_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let tasks: Vec<_> = (0..8)
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
            &rec("schema", &format!("n{i}")),
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
    assert_eq!(all.len(), 8);
}
