//! Redis registry faults end in recovery, proven against real `redis-server`
//! processes: malformed entries written with raw commands next to good
//! records (one server and the three-master cluster), namespace keys of the
//! wrong type under every script, event streams that vanish (FLUSHALL, a
//! deleted stream key, a restart without persistence), and a TLS cluster
//! reached through `rediss+cluster://`.
//!
//! Without `redis-server` these tests print a loud notice and pass, except
//! under `CI=true`, where a missing server is a failure.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::{Error, InstanceId, NamePolicy, Namespace, Pattern, Registry, RegistryEvent};
use masse_integration_tests::redis::{RedisCluster, RedisServer, Resp, cluster_command, ok};
use masse_integration_tests::server::{can_chattr, chattr};
use masse_integration_tests::{
    connect_redis, echo_forever, eventually, names, next_event, ns, record,
};
use masse_redis::{RedisConfig, RedisRegistry};
use tokio::time::{Instant, sleep, timeout};

const T: Duration = Duration::from_secs(10);
const SHORT_TTL: Duration = Duration::from_millis(600);

/// Sends one raw command (to a server, or to a cluster following MOVED).
type Raw = Arc<dyn Fn(&[&[u8]]) -> io::Result<Resp> + Send + Sync>;

/// Runs raw commands off the async runtime.
async fn raw(send: &Raw, args: &[&[u8]]) -> Resp {
    let send = send.clone();
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        ok(send(&refs))
    })
    .await
    .expect("raw command task")
}

/// A watch's events, queued by a task that polls the watch all along.
type Watch = futures::channel::mpsc::UnboundedReceiver<masse::Result<RegistryEvent>>;

/// Polls a watch all along (so that it lives through outages) into a
/// channel, read with [`next_event`] or [`drain_for`].
fn forward(mut events: masse::BoxStream<'static, masse::Result<RegistryEvent>>) -> Watch {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if tx.unbounded_send(ev).is_err() {
                return;
            }
        }
    });
    rx
}

/// Everything the watcher yields for `d`.
async fn drain_for(watch: &mut Watch, d: Duration) -> Vec<RegistryEvent> {
    let until = Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(ev)) = timeout(
        until.saturating_duration_since(Instant::now()),
        watch.next(),
    )
    .await
    {
        out.push(ev.expect("a watch yields events, not errors"));
    }
    out
}

async fn start_node(url: &str, namespace: &str, name: &str) -> masse::Node {
    masse::Node::builder(name)
        .namespace(namespace)
        .registry(connect_redis(url).await)
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_secs(3))
        .start()
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// The namespace's keys: type and `DUMP` of each (the `sweeping` mark, which
/// a sweep of due records sets for a moment, only if `with_sweepers`).
async fn snapshot(send: &Raw, n: &Namespace, with_sweepers: bool) -> BTreeMap<Vec<u8>, Resp> {
    let pattern = format!("masse:{{{n}}}:*");
    let Resp::Array(Some(keys)) = raw(send, &[b"KEYS", pattern.as_bytes()]).await else {
        panic!("KEYS")
    };
    let sweepers = format!("masse:{{{n}}}:sweeping");
    let mut out = BTreeMap::new();
    for k in keys {
        let Resp::Bulk(Some(k)) = k else {
            panic!("key")
        };
        if !with_sweepers && k == sweepers.as_bytes() {
            continue;
        }
        let t = raw(send, &[b"TYPE", &k]).await;
        let d = raw(send, &[b"DUMP", &k]).await;
        out.insert(k, Resp::Array(Some(vec![t, d])));
    }
    out
}

// ---------------------------------------------------------------------------
// 1. One bad entry never stops the machine.
// ---------------------------------------------------------------------------

/// Writes a peer hash and its index entry the way a broken writer would.
async fn raw_entry(send: &Raw, n: &Namespace, name: &str, fields: &[(&str, &[u8])], score: &str) {
    let key = format!("masse:{{{n}}}:peer:{name}");
    let index = format!("masse:{{{n}}}:index");
    if !fields.is_empty() {
        let mut args: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
        for (f, v) in fields {
            args.push(f.as_bytes());
            args.push(v);
        }
        raw(send, &args).await;
    }
    raw(
        send,
        &[b"ZADD", index.as_bytes(), score.as_bytes(), name.as_bytes()],
    )
    .await;
}

const FAR: &str = "99999999999999";
const PAST: &str = "1000";
const INST: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Live garbage (never listed, never dialled, never swept: it is not due),
/// expired garbage (swept without an event), foreign stream entries
/// (skipped), all next to good peers that resolve, get dialled and expire
/// with exactly one `Expired` each.
async fn malformed_entries_scenario(url: &str, send: Raw, n: Namespace) {
    let reg = connect_redis(url).await;
    let mut watch = forward(reg.watch(&n).await.expect("watch"));
    let good1 = start_node(url, n.as_str(), "good-1").await;
    echo_forever(&good1).await;
    let good2 = start_node(url, n.as_str(), "good-2").await;
    echo_forever(&good2).await;
    let dialer = start_node(url, n.as_str(), "dialer").await;
    let good1_json = record(&n, "good-1").to_json();

    let live_garbage = [
        "bad-json",
        "copy",
        "list-key",
        "string-key",
        "missing",
        "bad-expires",
        "no-record",
        "bad-instance",
    ];
    raw_entry(
        &send,
        &n,
        "bad-json",
        &[
            ("instance", INST),
            ("record", b"{garbage"),
            ("expires", FAR.as_bytes()),
        ],
        FAR,
    )
    .await;
    raw_entry(
        &send,
        &n,
        "copy",
        &[
            ("instance", INST),
            ("record", good1_json.as_bytes()),
            ("expires", FAR.as_bytes()),
        ],
        FAR,
    )
    .await;
    let list_key = format!("masse:{{{n}}}:peer:list-key");
    raw(&send, &[b"RPUSH", list_key.as_bytes(), b"x"]).await;
    raw_entry(&send, &n, "list-key", &[], FAR).await;
    let string_key = format!("masse:{{{n}}}:peer:string-key");
    raw(&send, &[b"SET", string_key.as_bytes(), b"hello"]).await;
    raw_entry(&send, &n, "string-key", &[], FAR).await;
    raw_entry(&send, &n, "missing", &[], FAR).await;
    let own = record(&n, "bad-expires").to_json();
    raw_entry(
        &send,
        &n,
        "bad-expires",
        &[
            ("instance", INST),
            ("record", own.as_bytes()),
            ("expires", b"soon"),
        ],
        FAR,
    )
    .await;
    raw_entry(
        &send,
        &n,
        "no-record",
        &[("instance", INST), ("expires", FAR.as_bytes())],
        FAR,
    )
    .await;
    let own = record(&n, "bad-instance").to_json();
    raw_entry(
        &send,
        &n,
        "bad-instance",
        &[
            ("instance", b"zz"),
            ("record", own.as_bytes()),
            ("expires", b"notanumber"),
        ],
        FAR,
    )
    .await;
    // Expired garbage: due at once, must be swept without an event.
    let dead_garbage = [
        "dead-json",
        "dead-copy",
        "dead-list",
        "dead-missing",
        "dead-inf",
    ];
    raw_entry(
        &send,
        &n,
        "dead-json",
        &[
            ("instance", INST),
            ("record", b"{garbage"),
            ("expires", PAST.as_bytes()),
        ],
        PAST,
    )
    .await;
    raw_entry(
        &send,
        &n,
        "dead-copy",
        &[
            ("instance", INST),
            ("record", good1_json.as_bytes()),
            ("expires", PAST.as_bytes()),
        ],
        PAST,
    )
    .await;
    let dead_list = format!("masse:{{{n}}}:peer:dead-list");
    raw(&send, &[b"RPUSH", dead_list.as_bytes(), b"x"]).await;
    raw_entry(&send, &n, "dead-list", &[], PAST).await;
    raw_entry(&send, &n, "dead-missing", &[], PAST).await;
    // A score masse never writes: swept as foreign.
    raw_entry(&send, &n, "dead-inf", &[], "+inf").await;
    // Index members that are no peer names.
    let index = format!("masse:{{{n}}}:index");
    raw(
        &send,
        &[b"ZADD", index.as_bytes(), FAR.as_bytes(), b"not a name!"],
    )
    .await;
    raw(
        &send,
        &[b"ZADD", index.as_bytes(), FAR.as_bytes(), b"\xff\xfe"],
    )
    .await;
    // Stream entries that are not masse events: no seq; seq but garbage.
    let events_key = format!("masse:{{{n}}}:events");
    let seq_key = format!("masse:{{{n}}}:seq");
    raw(
        &send,
        &[b"XADD", events_key.as_bytes(), b"*", b"foo", b"bar"],
    )
    .await;
    let Resp::Int(seq) = raw(&send, &[b"INCR", seq_key.as_bytes()]).await else {
        panic!("INCR")
    };
    let seq = seq.to_string();
    raw(
        &send,
        &[
            b"XADD",
            events_key.as_bytes(),
            b"*",
            b"seq",
            seq.as_bytes(),
            b"type",
            b"joined",
            b"name",
            b"x",
            b"record",
            b"{garbage",
        ],
    )
    .await;
    let Resp::Int(seq) = raw(&send, &[b"INCR", seq_key.as_bytes()]).await else {
        panic!("INCR")
    };
    let seq = seq.to_string();
    raw(
        &send,
        &[
            b"XADD",
            events_key.as_bytes(),
            b"*",
            b"seq",
            seq.as_bytes(),
            b"type",
            b"expired",
            b"name",
            b"good-1",
            b"instance",
            b"nothex",
        ],
    )
    .await;

    // Lookups: the good peers, every time (the warnings are logged once).
    for _ in 0..3 {
        let found = reg.lookup(&n, &Pattern::any()).await.expect("lookup *");
        assert_eq!(names(&found), ["dialer", "good-1", "good-2"]);
    }
    for bad in live_garbage.iter().chain(dead_garbage.iter()) {
        let found = reg
            .lookup(&n, &bad.parse().expect("pattern"))
            .await
            .unwrap_or_else(|e| panic!("lookup {bad}: {e}"));
        assert!(found.is_empty(), "{bad}: {found:?}");
    }
    assert_eq!(
        names(
            &reg.lookup(&n, &"good-?".parse().expect("pattern"))
                .await
                .expect("lookup")
        ),
        ["good-1", "good-2"]
    );
    // A node dials every good peer and nothing else.
    let streams: Vec<_> = timeout(T, dialer.to("*").collect::<Vec<_>>())
        .await
        .expect("to(*) in time");
    let reached: BTreeSet<String> = streams
        .iter()
        .map(|s| match s {
            Ok(s) => s.peer().to_string(),
            Err(e) => panic!("dialling a good peer failed: {e}"),
        })
        .collect();
    assert_eq!(reached, BTreeSet::from(["good-1".into(), "good-2".into()]));

    // A good short-lived record next to the garbage: one Joined, one Expired.
    let short = record(&n, "short-1");
    reg.publish(&short, SHORT_TTL, NamePolicy::Takeover)
        .await
        .expect("publish");
    let published = Instant::now();
    let mut seen = Vec::new();
    loop {
        let ev = next_event(&mut watch, T).await;
        let done = matches!(&ev, RegistryEvent::Expired { name, .. } if name.as_str() == "short-1");
        seen.push(ev);
        if done {
            break;
        }
    }
    let expired_after = published.elapsed();
    seen.extend(drain_for(&mut watch, Duration::from_millis(1200)).await);
    assert!(
        !seen.contains(&RegistryEvent::Resync),
        "no resync: {seen:?}"
    );
    assert!(
        seen.contains(&RegistryEvent::Joined(short.clone())),
        "{seen:?}"
    );
    let expired: Vec<&RegistryEvent> = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                RegistryEvent::Expired { .. } | RegistryEvent::Left { .. }
            )
        })
        .collect();
    assert_eq!(
        expired,
        [&RegistryEvent::Expired {
            name: short.name.clone(),
            instance: short.instance
        }],
        "exactly one Expired, for the good record; none for the garbage"
    );
    eprintln!("malformed entries ({url}): good record Expired {expired_after:?} after publish");
    // The expired garbage is gone from the index and the keyspace; the live
    // garbage is not due and stays for an operator to look at.
    for dead in dead_garbage {
        assert_eq!(
            raw(&send, &[b"ZSCORE", index.as_bytes(), dead.as_bytes()]).await,
            Resp::Bulk(None),
            "{dead} still indexed"
        );
        let key = format!("masse:{{{n}}}:peer:{dead}");
        assert_eq!(
            raw(&send, &[b"EXISTS", key.as_bytes()]).await,
            Resp::Int(0),
            "{dead}"
        );
    }
    for live in live_garbage {
        assert_ne!(
            raw(&send, &[b"ZSCORE", index.as_bytes(), live.as_bytes()]).await,
            Resp::Bulk(None),
            "{live} is not due"
        );
    }
    // A publish over a live garbage name replaces it (Takeover).
    let over = record(&n, "bad-json");
    reg.publish(&over, Duration::from_secs(30), NamePolicy::Takeover)
        .await
        .expect("publish over garbage");
    assert_eq!(
        reg.lookup(&n, &"bad-json".parse().expect("pattern"))
            .await
            .expect("lookup"),
        vec![over]
    );
    for node in [good1, good2, dialer] {
        node.shutdown().await.expect("shutdown");
    }
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer"))
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count()
    }
}

/// A malformed entry is logged once per handle, not on every lookup, sweep
/// or watcher: five lookups, two watchers and several sweeps give one
/// warning per bad key. (A current-thread runtime, so that the handle's
/// sweeper and watchers log to this test's subscriber.)
#[tokio::test]
async fn a_malformed_entry_is_logged_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let n = ns("f-once");
    let reg = connect_redis(&server.url()).await;
    let mut w1 = reg.watch(&n).await.expect("watch");
    let mut w2 = reg.watch(&n).await.expect("watch");
    let good = record(&n, "good");
    reg.publish(&good, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    let far = FAR.as_bytes();
    let (bad, dead) = (
        "masse:{f-once}:peer:bad-json",
        "masse:{f-once}:peer:dead-json",
    );
    let index = "masse:{f-once}:index";
    for (key, score) in [(bad, far), (dead, PAST.as_bytes())] {
        ok(server.command(&[
            b"HSET",
            key.as_bytes(),
            b"instance",
            INST,
            b"record",
            b"{x",
            b"expires",
            score,
        ]));
        let member = key.rsplit(':').next().expect("name");
        ok(server.command(&[b"ZADD", index.as_bytes(), score, member.as_bytes()]));
    }
    let events = "masse:{f-once}:events";
    ok(server.command(&[b"XADD", events.as_bytes(), b"*", b"foo", b"bar"]));
    for _ in 0..5 {
        assert_eq!(
            reg.lookup(&n, &Pattern::any()).await.expect("lookup"),
            vec![good.clone()]
        );
    }
    let other = record(&n, "other");
    reg.publish(&other, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    for w in [&mut w1, &mut w2] {
        for want in [&good, &other] {
            let ev = timeout(T, w.next())
                .await
                .expect("event")
                .expect("open")
                .expect("ok");
            assert_eq!(ev, RegistryEvent::Joined(want.clone()));
        }
    }
    // The publish had the sweeper look at once: the expired entry is swept.
    eventually(T, "dead-json swept", || async {
        server.command(&[b"EXISTS", dead.as_bytes()]).ok() == Some(Resp::Int(0))
    })
    .await;
    // Real time: a quiet window of two sweep intervals (250 ms), in which
    // no warning may come again.
    sleep(Duration::from_millis(500)).await;
    assert_eq!(logs.count(bad), 1, "bad-json: one warning");
    assert_eq!(logs.count(dead), 1, "dead-json: one warning, when swept");
    assert_eq!(
        logs.count("without a sequence number"),
        1,
        "two watchers, one warning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_affect_only_themselves() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    let send: Raw =
        Arc::new(move |a: &[&[u8]]| masse_integration_tests::redis::raw_command(port, None, a));
    malformed_entries_scenario(&server.url(), send, ns("f-entries")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_affect_only_themselves_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let port = cluster.ports()[0];
    let send: Raw = Arc::new(move |a: &[&[u8]]| cluster_command(port, a));
    malformed_entries_scenario(&cluster.url(), send, ns("f-entries-c")).await;
}

// ---------------------------------------------------------------------------
// 2. Redis scripts never half-apply.
// ---------------------------------------------------------------------------

fn assert_registry_error_naming(r: masse::Result<impl std::fmt::Debug>, key: &str, what: &str) {
    match r {
        Err(
            e @ Error::Registry {
                backend: "redis", ..
            },
        ) => {
            let msg = e.to_string();
            assert!(msg.contains(key), "{what}: the error names {key}: {msg}");
            assert!(msg.contains("nothing written"), "{what}: {msg}");
        }
        other => panic!("{what}: expected Error::Registry naming {key}, got {other:?}"),
    }
}

/// Each script with each namespace key of the wrong type: unpublish, sweep
/// and pattern lookups refuse with an error naming the key and leave the
/// keyspace exactly as it was (a `DUMP` of every key before and after);
/// publish and refresh, the writers that own a name, repair the key (delete
/// and rebuild) and go on, and every live peer gets its entry back on its
/// next refresh. A replaced event stream or counter gives each watcher one
/// `Resync`, then every later event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_never_half_apply_and_writers_repair() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    let send: Raw =
        Arc::new(move |a: &[&[u8]]| masse_integration_tests::redis::raw_command(port, None, a));
    let n = ns("f-scripts");
    let reg = connect_redis(&server.url()).await;
    let mut watch = forward(reg.watch(&n).await.expect("watch"));
    let long = Duration::from_secs(60);
    let (a, b) = (record(&n, "a"), record(&n, "b"));
    for r in [&a, &b] {
        reg.publish(r, long, NamePolicy::Takeover)
            .await
            .expect("publish");
        assert_eq!(
            next_event(&mut watch, T).await,
            RegistryEvent::Joined(r.clone())
        );
    }
    let index = format!("masse:{{{n}}}:index");
    let events = format!("masse:{{{n}}}:events");
    let seq = format!("masse:{{{n}}}:seq");
    let peer_b = format!("masse:{{{n}}}:peer:b");
    // Let the handle look at the namespace once. Kept as a wait for time:
    // its sweeper takes that first look (poked by the watch and the
    // publishes) on its own task, and nothing outside shows when it is done.
    sleep(Duration::from_millis(400)).await;

    // --- The index replaced by a string.
    raw(&send, &[b"DEL", index.as_bytes()]).await;
    raw(&send, &[b"SET", index.as_bytes(), b"garbage"]).await;
    let before = snapshot(&send, &n, true).await;
    assert_registry_error_naming(
        reg.unpublish(&n, &a.name, a.instance).await,
        &index,
        "unpublish",
    );
    assert_registry_error_naming(reg.lookup(&n, &Pattern::any()).await, &index, "lookup *");
    // The handle's sweeper runs every 250 ms meanwhile and is refused too.
    // Real time: a quiet window of several sweep intervals, in which
    // nothing may be written.
    sleep(Duration::from_millis(800)).await;
    assert_eq!(
        snapshot(&send, &n, true).await,
        before,
        "index: nothing written"
    );
    // An exact lookup does not need the index.
    assert_eq!(
        reg.lookup(&n, &"a".parse().expect("pattern"))
            .await
            .expect("lookup a"),
        vec![a.clone()]
    );
    // b's heartbeat repairs the index and puts b back; a's puts a back.
    reg.refresh(&n, &b.name, b.instance, long)
        .await
        .expect("refresh repairs");
    assert_eq!(
        raw(&send, &[b"TYPE", index.as_bytes()]).await,
        Resp::Simple("zset".into())
    );
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["b"]
    );
    reg.refresh(&n, &a.name, a.instance, long)
        .await
        .expect("refresh re-adds");
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["a", "b"]
    );
    assert!(
        drain_for(&mut watch, Duration::from_millis(300))
            .await
            .is_empty(),
        "an index repair changes no record: no event"
    );

    // --- The event stream replaced by a hash.
    raw(&send, &[b"DEL", events.as_bytes()]).await;
    raw(&send, &[b"HSET", events.as_bytes(), b"foo", b"bar"]).await;
    let before = snapshot(&send, &n, true).await;
    assert_registry_error_naming(
        reg.unpublish(&n, &a.name, a.instance).await,
        &events,
        "unpublish",
    );
    // Real time: a quiet window of several sweep intervals (250 ms), in
    // which nothing may be written.
    sleep(Duration::from_millis(800)).await;
    assert_eq!(
        snapshot(&send, &n, true).await,
        before,
        "events: nothing written"
    );
    let c = record(&n, "c");
    reg.publish(&c, long, NamePolicy::Takeover)
        .await
        .expect("publish repairs");
    assert_eq!(
        raw(&send, &[b"TYPE", events.as_bytes()]).await,
        Resp::Simple("stream".into())
    );
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Resync,
        "the old stream is gone"
    );
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(c.clone())
    );
    reg.unpublish(&n, &c.name, c.instance)
        .await
        .expect("unpublish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Left {
            name: c.name.clone(),
            instance: c.instance
        },
        "one Resync, then every event"
    );

    // --- The event counter holds garbage.
    raw(&send, &[b"SET", seq.as_bytes(), b"garbage"]).await;
    let before = snapshot(&send, &n, true).await;
    assert_registry_error_naming(
        reg.unpublish(&n, &a.name, a.instance).await,
        &seq,
        "unpublish",
    );
    // Real time: a quiet window of several sweep intervals (250 ms), in
    // which nothing may be written.
    sleep(Duration::from_millis(800)).await;
    assert_eq!(
        snapshot(&send, &n, true).await,
        before,
        "seq: nothing written"
    );
    reg.refresh(&n, &a.name, a.instance, long)
        .await
        .expect("refresh repairs the counter");
    let d = record(&n, "d");
    reg.publish(&d, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Resync,
        "the counter was replaced"
    );
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(d.clone())
    );

    // --- A record key turned into a list: it is nobody's record any more.
    raw(&send, &[b"DEL", peer_b.as_bytes()]).await;
    raw(&send, &[b"RPUSH", peer_b.as_bytes(), b"x"]).await;
    let before = snapshot(&send, &n, false).await;
    match reg.refresh(&n, &b.name, b.instance, long).await {
        Err(Error::NameLost { .. }) => {}
        other => panic!("refresh over a list: expected NameLost, got {other:?}"),
    }
    reg.unpublish(&n, &b.name, b.instance)
        .await
        .expect("unpublish over a list is a no-op");
    assert!(
        reg.lookup(&n, &"b".parse().expect("pattern"))
            .await
            .expect("lookup")
            .is_empty()
    );
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["a", "d"]
    );
    assert_eq!(
        snapshot(&send, &n, false).await,
        before,
        "peer: nothing written"
    );
    // The node's answer to NameLost, an exclusive publish, takes it back.
    reg.publish(&b, long, NamePolicy::Exclusive)
        .await
        .expect("publish over a list");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(b.clone())
    );
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["a", "b", "d"]
    );
    assert!(
        drain_for(&mut watch, Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing else"
    );
}

/// Repairs never hand a live name to someone else: with the index deleted
/// (or rebuilt by another writer), a live record still holds its name
/// against an `Exclusive` publish of another instance, its owner's refresh
/// puts it back in the index without any event, and a `Takeover` reports
/// `Updated`, not `Joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_keeps_live_names_owned() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("f-owned");
    let long = Duration::from_secs(60);
    let mut watch = forward(reg.watch(&n).await.expect("watch"));
    let (a, b) = (record(&n, "a"), record(&n, "b"));
    for r in [&a, &b] {
        reg.publish(r, long, NamePolicy::Takeover)
            .await
            .expect("publish");
        assert_eq!(
            next_event(&mut watch, T).await,
            RegistryEvent::Joined(r.clone())
        );
    }
    let index = format!("masse:{{{n}}}:index");
    server.command(&[b"DEL", index.as_bytes()]).expect("DEL");
    assert!(
        reg.lookup(&n, &Pattern::any())
            .await
            .expect("lookup")
            .is_empty()
    );
    let rival = record(&n, "a");
    match reg.publish(&rival, long, NamePolicy::Exclusive).await {
        Err(Error::NameTaken { holder, .. }) => assert_eq!(holder, a.instance),
        other => panic!("exclusive publish over a live name: {other:?}"),
    }
    reg.refresh(&n, &a.name, a.instance, long)
        .await
        .expect("the owner refreshes");
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["a"]
    );
    let mut b2 = b.clone();
    b2.instance = InstanceId::random();
    reg.publish(&b2, long, NamePolicy::Takeover)
        .await
        .expect("takeover");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Updated(b2.clone())
    );
    match reg.refresh(&n, &b.name, b.instance, long).await {
        Err(Error::NameLost { .. }) => {}
        other => panic!("the old owner of b: {other:?}"),
    }
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["a", "b"]
    );
    assert!(
        drain_for(&mut watch, Duration::from_millis(300))
            .await
            .is_empty(),
        "no other event"
    );
}

/// The same on a node: its index replaced under it, the node's next
/// heartbeat repairs it and the node is found again by pattern, with no
/// registry outage reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_heartbeat_repairs_a_corrupted_index() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let n = ns("f-heal");
    let ttl = Duration::from_millis(900);
    let node = masse::Node::builder("healer")
        .namespace("f-heal")
        .registry(connect_redis(&url).await)
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .ttl(ttl)
        .start()
        .await
        .expect("start");
    let reg = connect_redis(&url).await;
    let index = format!("masse:{{{n}}}:index");
    server.command(&[b"DEL", index.as_bytes()]).expect("DEL");
    server
        .command(&[b"SET", index.as_bytes(), b"garbage"])
        .expect("SET");
    let broken = Instant::now();
    assert_registry_error_naming(reg.lookup(&n, &Pattern::any()).await, &index, "lookup *");
    eventually(T, "the node to repair the index", || async {
        match reg.lookup(&n, &Pattern::any()).await {
            Ok(found) => Ok((names(&found) == ["healer"]).then_some(())),
            Err(e) => Err(e),
        }
    })
    .await;
    eprintln!(
        "corrupted index repaired by a heartbeat after {:?}",
        broken.elapsed()
    );
    node.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------
// 5. Event streams that vanish; a server restarted empty.
// ---------------------------------------------------------------------------

/// FLUSHALL under a caught-up watcher: one `Resync` (the counter restarted),
/// then every event. A stream key deleted under a watcher that had not read
/// it yet: one `Resync` (the counter jumps past what it read), then every
/// event. A stream key deleted under a caught-up watcher loses nothing it
/// had not seen: no `Resync`, the next event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_stream_vanished_resyncs_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("f-vanish");
    let events_key = format!("masse:{{{n}}}:events");
    let long = Duration::from_secs(60);

    // FLUSHALL.
    let mut watch = forward(reg.watch(&n).await.expect("watch"));
    let a = record(&n, "a");
    reg.publish(&a, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(a.clone())
    );
    server.command(&[b"FLUSHALL"]).expect("FLUSHALL");
    let b = record(&n, "b");
    reg.publish(&b, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(next_event(&mut watch, T).await, RegistryEvent::Resync);
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(b.clone())
    );
    let c = record(&n, "c");
    reg.publish(&c, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(c.clone())
    );

    // Deleted under a caught-up watcher: nothing lost, no Resync.
    server
        .command(&[b"DEL", events_key.as_bytes()])
        .expect("DEL");
    let d = record(&n, "d");
    reg.publish(&d, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(d.clone())
    );
    drop(watch);

    // Deleted before a watcher read it: one Resync, then the next events.
    let mut lagging = reg.watch(&n).await.expect("watch");
    server.stall_watch_readers();
    let e = record(&n, "e");
    reg.publish(&e, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    server
        .command(&[b"DEL", events_key.as_bytes()])
        .expect("DEL");
    let f = record(&n, "f");
    reg.publish(&f, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    let g = record(&n, "g");
    reg.publish(&g, long, NamePolicy::Takeover)
        .await
        .expect("publish");
    server.resume_watch_readers();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            timeout(T, lagging.next())
                .await
                .expect("event")
                .expect("open")
                .expect("ok"),
        );
    }
    assert_eq!(
        got,
        [
            RegistryEvent::Resync,
            RegistryEvent::Joined(f),
            RegistryEvent::Joined(g)
        ]
    );
    if let Ok(Some(ev)) = timeout(Duration::from_millis(300), lagging.next()).await {
        panic!("nothing more expected, got {ev:?}");
    }
}

/// The id of the newest entry of `key`'s stream, and then `wipe` (a
/// command without arguments, or `DEL`) run in the same script: one round
/// trip, so that the next publish often lands in the same millisecond.
fn last_id_then(server: &RedisServer, key: &str, wipe: &str) -> String {
    let script = format!(
        "local id = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1] \
         if '{wipe}' == 'DEL' then redis.call('DEL', KEYS[1]) else redis.call('{wipe}') end \
         return id"
    );
    match server.command(&[b"EVAL", script.as_bytes(), b"1", key.as_bytes()]) {
        Ok(Resp::Bulk(Some(id))) => String::from_utf8(id).expect("utf-8 id"),
        other => panic!("EVAL gave {other:?}"),
    }
}

/// The id of the newest entry of `key`'s stream.
fn last_stream_id(server: &RedisServer, key: &str) -> String {
    let reply = server
        .command(&[b"XREVRANGE", key.as_bytes(), b"+", b"-", b"COUNT", b"1"])
        .expect("XREVRANGE");
    let Resp::Array(Some(entries)) = reply else {
        panic!("XREVRANGE gave {reply:?}");
    };
    let Some(Resp::Array(Some(entry))) = entries.first() else {
        panic!("no entry in {key}");
    };
    let Some(Resp::Bulk(Some(id))) = entry.first() else {
        panic!("entry without id: {entry:?}");
    };
    String::from_utf8(id.clone()).expect("utf-8 id")
}

/// `(ms, seq)` of a stream id.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("ms-seq");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// The first entry of a stream that replaced a flushed or deleted one lies
/// above every entry of the old one, even within the same millisecond
/// (plain `XADD *` restarts at `<ms>-0` there, and a watcher that read the
/// old entry would never see the new one). Flushes and deletes right after
/// a publish, many times: most rounds land in the same millisecond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_stream_starts_above_the_old_one() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("f-first-id");
    let events_key = format!("masse:{{{n}}}:events");
    let long = Duration::from_secs(60);
    let mut same_ms = 0;
    for round in 0..200 {
        let wipe = if round % 2 == 0 { "FLUSHALL" } else { "DEL" };
        let old = record(&n, &format!("old-{round}"));
        reg.publish(&old, long, NamePolicy::Takeover)
            .await
            .expect("publish");
        let before = stream_id(&last_id_then(&server, &events_key, wipe));
        let new = record(&n, &format!("new-{round}"));
        reg.publish(&new, long, NamePolicy::Takeover)
            .await
            .expect("publish");
        let after = stream_id(&last_stream_id(&server, &events_key));
        assert!(
            after > before,
            "round {round}: the new stream's first id {after:?} is not above the old {before:?}"
        );
        same_ms += usize::from(after.0 == before.0);
    }
    eprintln!("{same_ms} of 200 rounds put the old and new first entries in one millisecond");
}

/// SIGKILL and an empty restart under one registry handle: its pooled
/// connection recovers by itself (no new handle), the watcher yields exactly
/// one `Resync` and then every later event, and sweeps work again (a record
/// published after the restart expires with one `Expired`). Prints the time
/// from the restart to the first successful publish and to the watcher's
/// first event after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_empty_recovers_publish_watch_and_sweep() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("f-restart");
    let mut watch = forward(reg.watch(&n).await.expect("watch"));
    let a = record(&n, "a");
    reg.publish(&a, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(a.clone())
    );

    server.kill();
    assert!(
        reg.publish(&a, T, NamePolicy::Takeover).await.is_err(),
        "server down"
    );
    server.restart();
    let restarted = Instant::now();
    let b = record(&n, "b");
    let mut attempts = 0;
    loop {
        attempts += 1;
        match reg.publish(&b, T, NamePolicy::Takeover).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && restarted.elapsed() < T => {
                // Real time: the back-off of a retry loop, which counts its
                // attempts for the report below.
                sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("publish after restart: {e}"),
        }
    }
    let to_publish = restarted.elapsed();
    assert_eq!(next_event(&mut watch, T).await, RegistryEvent::Resync);
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(b.clone())
    );
    let to_watch = restarted.elapsed();
    // Sweeps after the empty restart: a short record expires once.
    let c = record(&n, "c");
    reg.publish(&c, SHORT_TTL, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(c.clone())
    );
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Expired {
            name: c.name.clone(),
            instance: c.instance
        }
    );
    assert!(
        drain_for(&mut watch, Duration::from_millis(500))
            .await
            .is_empty(),
        "exactly one Resync, one Expired"
    );
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["b"]
    );
    eprintln!(
        "restart empty: first publish {to_publish:?} after the restart ({attempts} attempts), watcher delivering again after {to_watch:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. rediss+cluster:// through registry_from_url.
// ---------------------------------------------------------------------------

/// A real TLS cluster (three masters, `--tls-cluster yes`): through
/// `masse::registry_from_url("rediss+cluster://…")` without the private CA
/// the registry refuses with `RegistryUnauthorized` (TLS was spoken to the
/// nodes, and their certificate checked); with the CA
/// (`RedisRegistry::connect_with`) publish, lookup, watch and expiry work on
/// every master, over TLS only (the driver was told the TLS ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_url_reaches_a_tls_cluster() {
    let Some(cluster) = RedisCluster::start_tls() else {
        return;
    };
    let url = cluster.tls_url().expect("tls url");
    let ca = cluster.tls_ca_pem().expect("ca");
    match timeout(T * 2, masse::registry_from_url(&url)).await {
        Ok(Err(
            e @ Error::RegistryUnauthorized {
                backend: "redis", ..
            },
        )) => {
            assert!(e.to_string().contains("UnknownIssuer"), "{e}")
        }
        Ok(Err(e)) => panic!("registry_from_url without the CA: {e:?}"),
        Ok(Ok(_)) => panic!("registry_from_url without the CA connected"),
        Err(_) => panic!("registry_from_url without the CA hung"),
    }
    let reg = RedisRegistry::connect_with(&url, RedisConfig::new().with_tls_root_certificate(ca))
        .await
        .unwrap_or_else(|e| panic!("connect to the TLS cluster: {e}"));
    // Namespaces on every master.
    let mut owners = BTreeSet::new();
    for i in 0..12 {
        let n = ns(&format!("tls-{i}"));
        let r = record(&n, "x");
        reg.publish(&r, T, NamePolicy::Takeover)
            .await
            .expect("publish over TLS");
        assert_eq!(
            reg.lookup(&n, &Pattern::any()).await.expect("lookup"),
            vec![r]
        );
        let key = format!("masse:{{{n}}}:index");
        for (j, node) in cluster.nodes().iter().enumerate() {
            if node.command(&[b"EXISTS", key.as_bytes()]).ok() == Some(Resp::Int(1)) {
                owners.insert(j);
            }
        }
    }
    assert_eq!(owners.len(), 3, "12 namespaces reached every master");
    let n = ns("tls-watch");
    let mut watch = forward(reg.watch(&n).await.expect("watch"));
    let r = record(&n, "short");
    reg.publish(&r, SHORT_TTL, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Joined(r.clone())
    );
    assert_eq!(
        next_event(&mut watch, T).await,
        RegistryEvent::Expired {
            name: r.name.clone(),
            instance: r.instance
        }
    );
}

/// A TLS URL for a cluster is parsed as one (dispatched to Redis, TLS to
/// every node): against a plain server it fails with a clear TLS error
/// naming the registry, never as an unknown scheme, a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_url_against_a_plain_server_is_a_clear_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = format!("rediss+cluster://127.0.0.1:{}", server.port());
    let started = Instant::now();
    match timeout(T * 2, masse::registry_from_url(&url)).await {
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(msg.contains("redis"), "{msg}");
            assert!(!msg.contains("unknown scheme"), "{msg}");
            assert!(!msg.contains("feature"), "dispatched to the backend: {msg}");
            assert!(msg.contains("TLS"), "says TLS is the likely cause: {msg}");
            assert!(
                matches!(
                    e,
                    Error::RegistryUnavailable {
                        backend: "redis",
                        ..
                    } | Error::RegistryUnauthorized {
                        backend: "redis",
                        ..
                    }
                ),
                "{e:?}"
            );
            eprintln!(
                "rediss+cluster:// to a plain server: {e:?} after {:?}",
                started.elapsed()
            );
        }
        Ok(Ok(_)) => panic!("TLS to a plain server cannot succeed"),
        Err(_) => panic!("rediss+cluster:// to a plain server hung"),
    }
}

/// The first `RegistryUnavailable` among `events` (a `NameLost` first fails).
async fn next_unavailable(events: &mut masse::Events) -> Error {
    masse_integration_tests::node_event(events, T, "RegistryUnavailable", |e| match e {
        masse::NodeEvent::RegistryUnavailable { error } => Some(error.clone()),
        masse::NodeEvent::NameLost { .. } => panic!("the node lost its name: {e:?}"),
        _ => None,
    })
    .await
}

/// The next `RegistryRestored` among `events` (a `NameLost` first fails).
async fn next_restored(events: &mut masse::Events) {
    masse_integration_tests::node_event(events, T, "RegistryRestored", |e| match e {
        masse::NodeEvent::RegistryRestored => Some(()),
        masse::NodeEvent::NameLost { .. } => panic!("the node lost its name: {e:?}"),
        _ => None,
    })
    .await
}

/// Two nodes on `server`; `inject` makes it refuse writes for two ttls
/// (the records expire meanwhile), `remove` ends that. Both nodes must
/// report `RegistryUnavailable`, then `RegistryRestored` within a heartbeat
/// period of the end, keep their names and dial each other.
async fn refused_writes_cycle(
    what: &str,
    server: &RedisServer,
    ns: &str,
    inject: impl FnOnce(),
    remove: impl FnOnce(),
) {
    let url = server.url();
    let a = start_node(&url, ns, "alpha").await;
    let b = start_node(&url, ns, "beta").await;
    echo_forever(&a).await;
    echo_forever(&b).await;
    let (mut ev_a, mut ev_b) = (a.events(), b.events());
    drop(timeout(T, a.connect("beta")).await.unwrap().unwrap());

    tokio::task::block_in_place(inject);
    let e = next_unavailable(&mut ev_a).await;
    eprintln!("{what}: alpha sees {e}");
    assert!(e.is_transient(), "{e:?}");
    next_unavailable(&mut ev_b).await;
    sleep(Duration::from_secs(6)).await;

    tokio::task::block_in_place(remove);
    let removed = Instant::now();
    next_restored(&mut ev_a).await;
    next_restored(&mut ev_b).await;
    let restored = removed.elapsed();
    let reg = connect_redis(&url).await;
    let n: Namespace = ns.parse().unwrap();
    eventually(T, "both published again", || async {
        let found = reg.lookup(&n, &Pattern::any()).await.ok()?;
        [&a, &b]
            .iter()
            .all(|node| found.iter().any(|r| r.instance == node.instance()))
            .then_some(())
    })
    .await;
    for (from, to) in [(&a, "beta"), (&b, "alpha")] {
        drop(timeout(T, from.connect(to)).await.unwrap().unwrap());
    }
    eprintln!(
        "RECOVERY {what}: restored {restored:?}, both published and dialing {:?}",
        removed.elapsed()
    );
    assert!(restored < Duration::from_secs(3), "{restored:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_refusing_writes_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    refused_writes_cycle(
        "redis maxmemory reached",
        &server,
        "redis-oom",
        || {
            ok(server.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]));
            ok(server.command(&[b"CONFIG", b"SET", b"maxmemory", b"1"]));
        },
        || {
            ok(server.command(&[b"CONFIG", b"SET", b"maxmemory", b"0"]));
        },
    )
    .await;
}

/// Runs `BGSAVE`s (one at a time) until `INFO persistence` reports the
/// last one's outcome as `status` (`ok` or `err`).
fn bgsave_until(server: &RedisServer, status: &str) {
    let want = format!("rdb_last_bgsave_status:{status}");
    let deadline = std::time::Instant::now() + T;
    let mut started = false;
    loop {
        let info = ok(server.command(&[b"INFO", b"persistence"]))
            .text()
            .unwrap_or_default();
        let idle = info.contains("rdb_bgsave_in_progress:0");
        if started && idle && info.contains(&want) {
            return;
        }
        if idle {
            started = server.command(&[b"BGSAVE"]).is_ok();
        }
        assert!(std::time::Instant::now() < deadline, "no {want}: {info}");
        // The interval of a bounded poll: the save runs in a child process.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_save_refusing_writes_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = server.dir().to_owned();
    if !can_chattr(&dir) {
        return;
    }
    refused_writes_cycle(
        "redis cannot save (MISCONF)",
        &server,
        "redis-misconf",
        || {
            // Snapshots on, and the directory they go to made immutable: the
            // save fails, and the server refuses writes (MISCONF).
            ok(server.command(&[b"CONFIG", b"SET", b"save", b"3600 1"]));
            ok(server.command(&[b"CONFIG", b"SET", b"stop-writes-on-bgsave-error", b"yes"]));
            chattr("+i", &dir);
            bgsave_until(&server, "err");
        },
        || {
            chattr("-i", &dir);
            bgsave_until(&server, "ok");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_turned_read_only_replica_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The replica of a master that does not answer (a port nothing listens
    // on): it keeps its data set and refuses writes (READONLY).
    let nobody = masse_integration_tests::server::free_port().to_string();
    refused_writes_cycle(
        "redis turned replica (READONLY)",
        &server,
        "redis-readonly",
        || {
            ok(server.command(&[b"REPLICAOF", b"127.0.0.1", nobody.as_bytes()]));
        },
        || {
            ok(server.command(&[b"REPLICAOF", b"NO", b"ONE"]));
        },
    )
    .await;
}
