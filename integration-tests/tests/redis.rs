//! `RedisRegistry` against real `redis-server` processes started here: the
//! registry conformance suite (one server, a three-master cluster, TLS),
//! credentials, foreign data, watch resume and resync, and Redis going away
//! under running nodes.
//!
//! Without `redis-server` these tests print a loud notice and pass, except
//! under `CI=true`, where a missing server is a failure.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::testkit::RegistryConformance;
use masse::{
    DynRegistry, Error, NamePolicy, Namespace, NodeEvent, Pattern, PeerName, PeerRecord, Registry,
    RegistryEvent,
};
use masse_integration_tests::redis::{
    RedisCluster, RedisOptions, RedisServer, Resp, cluster_command, ok, raw_command,
};
use masse_integration_tests::{
    connect_redis, echo_forever, eventually, names, next_event, node_event, ns, record,
};
use masse_redis::{RedisConfig, RedisRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

/// The suite's short ttl and event slack: every handle sweeps every 250 ms.
const TTL: Duration = Duration::from_millis(600);
const SLACK: Duration = Duration::from_secs(1);
const T: Duration = Duration::from_secs(10);

/// Stores `bytes` as the record of `name`, live for a long time, the way
/// a foreign or broken writer would: straight into the hash and the index.
fn write_raw_record(
    send: impl Fn(&[&[u8]]) -> io::Result<Resp>,
    ns: &Namespace,
    name: &PeerName,
    bytes: &[u8],
) {
    let key = format!("masse:{{{ns}}}:peer:{name}");
    let index = format!("masse:{{{ns}}}:index");
    let far = b"99999999999999".as_slice();
    ok(send(&[
        b"HSET",
        key.as_bytes(),
        b"instance",
        b"00000000000000000000000000000000",
        b"record",
        bytes,
        b"expires",
        far,
    ]));
    ok(send(&[
        b"ZADD",
        index.as_bytes(),
        far,
        name.as_str().as_bytes(),
    ]));
}

/// Loses a namespace's event history the way a restore from an old
/// snapshot would: the stream and its counter start over.
fn lose_history(send: impl Fn(&[&[u8]]) -> io::Result<Resp>, ns: &Namespace) {
    let events = format!("masse:{{{ns}}}:events");
    let seq = format!("masse:{{{ns}}}:seq");
    // Two commands: in a cluster both keys share the namespace's slot, but
    // the helper sends one command at a time.
    ok(send(&[b"DEL", events.as_bytes()]));
    ok(send(&[b"DEL", seq.as_bytes()]));
}

fn suite(url: String) -> RegistryConformance {
    RegistryConformance::new(move || {
        let url = url.clone();
        async move { Arc::new(connect_redis(&url).await) as DynRegistry }
    })
    .ttl(TTL)
    .slack(SLACK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_server() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    let started = Instant::now();
    suite(server.url())
        .raw_writer(move |ns, name, bytes| async move {
            tokio::task::spawn_blocking(move || {
                write_raw_record(|a| raw_command(port, None, a), &ns, &name, &bytes)
            })
            .await
            .expect("raw writer");
        })
        .resync_trigger(move |ns| async move {
            tokio::task::spawn_blocking(move || lose_history(|a| raw_command(port, None, a), &ns))
                .await
                .expect("resync trigger");
        })
        .run()
        .await;
    tracing::info!(elapsed = ?started.elapsed(), "conformance on one server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let port = cluster.ports()[0];
    suite(cluster.url())
        .raw_writer(move |ns, name, bytes| async move {
            tokio::task::spawn_blocking(move || {
                write_raw_record(|a| cluster_command(port, a), &ns, &name, &bytes)
            })
            .await
            .expect("raw writer");
        })
        .resync_trigger(move |ns| async move {
            tokio::task::spawn_blocking(move || lose_history(|a| cluster_command(port, a), &ns))
                .await
                .expect("resync trigger");
        })
        .run()
        .await;
    // The namespaces really are spread over the masters (hash tags differ),
    // and each namespace's keys sit together on one of them.
    let reg = connect_redis(&cluster.url()).await;
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..12 {
        let n = ns(&format!("spread-{i}"));
        reg.publish(&record(&n, "x"), T, NamePolicy::Takeover)
            .await
            .expect("publish");
        for (j, node) in cluster.nodes().iter().enumerate() {
            let key = format!("masse:{{{n}}}:index");
            if let Ok(Resp::Int(1)) = node.command(&[b"EXISTS", key.as_bytes()]) {
                owners.insert(j);
                let peer = format!("masse:{{{n}}}:peer:x");
                assert_eq!(
                    node.command(&[b"EXISTS", peer.as_bytes()]).ok(),
                    Some(Resp::Int(1)),
                    "a namespace's keys share one node"
                );
            }
        }
    }
    assert!(owners.len() > 1, "12 namespaces all landed on one master");
}

/// A master of the cluster dies (no replicas, so its slots are gone): calls
/// for a namespace it held fail with a clear `RegistryUnavailable` within the
/// command deadline, never hang or panic; once it is back (empty, it rejoins
/// from its `nodes.conf`), publishing there works again, the namespace's
/// watcher is told to `Resync` (its events are gone) and then goes on, and a
/// namespace on another master kept its records throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_lost_and_back() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let reg = connect_redis(&cluster.url()).await;
    // Two namespaces on two different masters.
    let owner = |cluster: &RedisCluster, n: &Namespace| {
        let key = format!("masse:{{{n}}}:index");
        cluster
            .nodes()
            .iter()
            .position(|node| node.command(&[b"EXISTS", key.as_bytes()]).ok() == Some(Resp::Int(1)))
            .expect("some master holds the namespace")
    };
    let mut placed: Vec<(Namespace, usize, PeerRecord)> = Vec::new();
    for i in 0..24 {
        let n = ns(&format!("lost-{i}"));
        let r = record(&n, "x");
        reg.publish(&r, T * 6, NamePolicy::Takeover)
            .await
            .expect("publish");
        let at = owner(&cluster, &n);
        if placed.iter().all(|(_, o, _)| *o != at) {
            placed.push((n, at, r));
        }
        if placed.len() == 2 {
            break;
        }
    }
    assert_eq!(placed.len(), 2, "24 namespaces all on one master");
    let (lost_ns, lost_node, _) = placed[0].clone();
    let (kept_ns, _, kept) = placed[1].clone();
    let mut events = reg.watch(&lost_ns).await.expect("watch");

    cluster.node_mut(lost_node).kill();
    let started = Instant::now();
    let failed = reg
        .publish(&record(&lost_ns, "y"), T, NamePolicy::Takeover)
        .await;
    assert!(
        matches!(failed, Err(Error::RegistryUnavailable { .. })),
        "publish to a namespace on the dead master: {failed:?}"
    );
    let failed = reg.lookup(&lost_ns, &Pattern::any()).await;
    assert!(
        matches!(failed, Err(Error::RegistryUnavailable { .. })),
        "lookup in a namespace on the dead master: {failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failing calls took {:?}",
        started.elapsed()
    );

    cluster.node_mut(lost_node).restart();
    assert!(
        cluster.wait_ok(Duration::from_secs(30)),
        "cluster back to cluster_state:ok"
    );
    let again = record(&lost_ns, "z");
    publish_retrying(&reg, &again).await;
    assert_eq!(
        names(&reg.lookup(&lost_ns, &Pattern::any()).await.expect("lookup")),
        ["z"],
        "the restarted master came back empty; the new record is there"
    );
    assert_eq!(
        reg.lookup(&kept_ns, &Pattern::any()).await.expect("lookup"),
        vec![kept],
        "the other master kept its namespace"
    );
    assert_eq!(next_event(&mut events, T).await, RegistryEvent::Resync);
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Joined(again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_tls() {
    let Some(server) = RedisServer::start_with(RedisOptions::new().tls()) else {
        return;
    };
    let url = server.tls_url().expect("tls url");
    let ca = server.tls_ca_pem().expect("ca");
    // Without the CA the server's certificate is not trusted.
    match RedisRegistry::connect(&url).await {
        Err(
            e @ Error::RegistryUnauthorized {
                backend: "redis", ..
            },
        ) => {
            let reason = e.to_string();
            assert!(reason.contains("UnknownIssuer"), "{reason}");
            assert!(reason.contains("tls_root_certificate"), "{reason}");
        }
        other => panic!("an untrusted certificate must fail the connection, got {other:?}"),
    }
    let port = server.port();
    RegistryConformance::new(move || {
        let (url, ca) = (url.clone(), ca.clone());
        async move {
            let config = RedisConfig::new().with_tls_root_certificate(ca);
            let reg = RedisRegistry::connect_with(&url, config)
                .await
                .unwrap_or_else(|e| panic!("connect over TLS: {e}"));
            Arc::new(reg) as DynRegistry
        }
    })
    .ttl(TTL)
    .slack(SLACK)
    .raw_writer(move |ns, name, bytes| async move {
        tokio::task::spawn_blocking(move || {
            write_raw_record(|a| raw_command(port, None, a), &ns, &name, &bytes)
        })
        .await
        .expect("raw writer");
    })
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_never_shown() {
    let Some(server) = RedisServer::start_with(
        RedisOptions::new()
            .password("default-pw-1")
            .acl_user("alice", "on >alice-pw-2 ~* &* +@all")
            .acl_user("noscript", "on >noscript-pw-3 ~* &* +@all -@scripting"),
    ) else {
        return;
    };
    let n = ns("t-auth");
    for (userinfo, what) in [
        (":wrong-pw-9", "wrong default password"),
        ("alice:wrong-pw-9", "wrong ACL password"),
        ("mallory:wrong-pw-9", "unknown ACL user"),
    ] {
        match RedisRegistry::connect(&server.url_with(userinfo)).await {
            Err(e @ Error::RegistryUnauthorized { .. }) => {
                let reason = e.to_string();
                assert!(reason.contains("WRONGPASS"), "{what}: {reason}");
                assert!(
                    !reason.contains("wrong-pw-9"),
                    "{what}: password in {reason}"
                );
            }
            other => panic!("{what}: expected RegistryUnauthorized, got {other:?}"),
        }
    }
    match RedisRegistry::connect(&format!("redis://127.0.0.1:{}", server.port())).await {
        Err(e @ Error::RegistryUnauthorized { .. }) => {
            assert!(e.to_string().contains("NOAUTH"), "{e}")
        }
        other => panic!("no password: expected RegistryUnauthorized, got {other:?}"),
    }

    let reg = connect_redis(&server.url()).await;
    let debug = format!("{reg:?}");
    assert!(!debug.contains("default-pw-1"), "{debug}");
    assert!(debug.contains("***"), "{debug}");
    reg.publish(&record(&n, "a"), T, NamePolicy::Takeover)
        .await
        .expect("publish with the default user");

    let alice = connect_redis(&server.url_with("alice:alice-pw-2")).await;
    assert_eq!(
        alice
            .lookup(&n, &Pattern::any())
            .await
            .expect("lookup")
            .len(),
        1
    );

    // Connected, but not allowed to run scripts: a clear Unauthorized, not a generic failure.
    let limited = connect_redis(&server.url_with("noscript:noscript-pw-3")).await;
    match limited
        .publish(&record(&n, "b"), T, NamePolicy::Takeover)
        .await
    {
        Err(e @ Error::RegistryUnauthorized { .. }) => {
            assert!(e.to_string().contains("NOPERM"), "{e}")
        }
        other => panic!("ACL without scripting: expected RegistryUnauthorized, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_is_skipped_not_fatal() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("t-foreign");
    let mut events = reg.watch(&n).await.expect("watch");
    let good = record(&n, "good");
    reg.publish(&good, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Joined(good.clone())
    );

    let far = b"99999999999999".as_slice();
    let index = format!("masse:{{{n}}}:index");
    let events_key = format!("masse:{{{n}}}:events");
    // A string where a hash belongs, an index member that is no name, a
    // record for another peer, and stream entries that are not masse events.
    ok(server.command(&[b"SET", b"masse:{t-foreign}:peer:str", b"hello"]));
    ok(server.command(&[b"ZADD", index.as_bytes(), far, b"str"]));
    ok(server.command(&[b"ZADD", index.as_bytes(), far, b"not a name!"]));
    ok(server.command(&[b"ZADD", index.as_bytes(), far, b"\xff\xfe"]));
    write_raw_record(
        |a| server.command(a),
        &n,
        &"copy".parse().expect("name"),
        good.to_json().as_bytes(),
    );
    ok(server.command(&[b"XADD", events_key.as_bytes(), b"*", b"foo", b"bar"]));
    let seq = match ok(server.command(&[b"INCR", b"masse:{t-foreign}:seq"])) {
        Resp::Int(i) => i.to_string(),
        other => panic!("{other:?}"),
    };
    ok(server.command(&[
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
    ]));

    assert_eq!(
        reg.lookup(&n, &Pattern::any()).await.expect("lookup"),
        vec![good.clone()],
        "only the readable record of the right peer"
    );
    assert!(
        reg.lookup(&n, &"str".parse().expect("pattern"))
            .await
            .expect("lookup")
            .is_empty()
    );
    // A publish over a foreign value under the peer key replaces it.
    let over = record(&n, "str");
    reg.publish(&over, T, NamePolicy::Exclusive)
        .await
        .expect("publish over a foreign value");
    // The garbage events were skipped without a Resync; the real one arrives.
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Joined(over.clone())
    );
    assert_eq!(
        names(&reg.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["good", "str"]
    );
}

async fn publish_retrying(reg: &RedisRegistry, r: &PeerRecord) {
    let deadline = Instant::now() + T;
    loop {
        match reg.publish(r, T, NamePolicy::Takeover).await {
            Ok(()) => return,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                // Real time: the back-off of a retry loop.
                sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("publish {}: {e}", r.name),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_its_connection_is_killed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("t-resume");
    let mut events = reg.watch(&n).await.expect("watch");
    let a = record(&n, "a");
    reg.publish(&a, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Joined(a.clone())
    );

    // Drop every client connection (the watcher's too); the data stays.
    ok(server.command(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]));
    // Changes made while the watcher is reconnecting.
    let other = connect_redis(&server.url()).await;
    let (b, c) = (record(&n, "b"), record(&n, "c"));
    publish_retrying(&other, &b).await;
    publish_retrying(&other, &c).await;
    other
        .unpublish(&n, &a.name, a.instance)
        .await
        .expect("unpublish");

    assert_eq!(next_event(&mut events, T).await, RegistryEvent::Joined(b));
    assert_eq!(next_event(&mut events, T).await, RegistryEvent::Joined(c));
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Left {
            name: a.name.clone(),
            instance: a.instance
        },
        "resumed from the last event seen: nothing lost, no resync"
    );
}

/// The watch streams of one handle on one namespace share one reader (one
/// connection, one `XREAD` per event); each gets exactly the events after
/// its own `watch()`, and the reader stops with the last stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_one_handle_share_one_reader() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("t-share");
    let mut first = reg.watch(&n).await.expect("watch");
    let a = record(&n, "a");
    reg.publish(&a, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(next_event(&mut first, T).await, RegistryEvent::Joined(a));

    let mut second = reg.watch(&n).await.expect("watch");
    let b = record(&n, "b");
    reg.publish(&b, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut first, T).await,
        RegistryEvent::Joined(b.clone())
    );
    // Not `a`, which came before its watch.
    assert_eq!(next_event(&mut second, T).await, RegistryEvent::Joined(b));
    eventually(T, "one reader for both streams", || async {
        server.watch_readers().len() == 1
    })
    .await;

    drop(first);
    let c = record(&n, "c");
    reg.publish(&c, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(next_event(&mut second, T).await, RegistryEvent::Joined(c));

    drop(second);
    eventually(T, "the reader to stop with its last stream", || async {
        server.watch_readers().is_empty()
    })
    .await;
    // A new watch gets a new reader.
    let mut third = reg.watch(&n).await.expect("watch");
    let d = record(&n, "d");
    reg.publish(&d, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(next_event(&mut third, T).await, RegistryEvent::Joined(d));
}

/// A handle's reader that falls behind a trimmed event stream (here: it is
/// stalled while 400 updates are published with `MAXLEN ~ 10`) tells its
/// watchers `Resync`, then goes on with what is left, up to the latest
/// update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_behind_a_trimmed_stream_gets_resync() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = RedisRegistry::connect_with(&server.url(), RedisConfig::new().with_stream_maxlen(10))
        .await
        .expect("connect");
    let n = ns("t-trim");
    let mut events = reg.watch(&n).await.expect("watch");
    let mut r = record(&n, "busy");
    r.metadata.insert("round".into(), "start".into());
    reg.publish(&r, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert!(matches!(
        next_event(&mut events, T).await,
        RegistryEvent::Joined(_)
    ));
    server.stall_watch_readers();
    for round in 0..400u32 {
        r.metadata.insert("round".into(), round.to_string());
        reg.publish(&r, T, NamePolicy::Takeover)
            .await
            .expect("publish");
    }
    let len = match ok(server.command(&[b"XLEN", b"masse:{t-trim}:events"])) {
        Resp::Int(i) => i,
        other => panic!("{other:?}"),
    };
    assert!(
        len < 400,
        "the stream was trimmed (MAXLEN ~ 10): {len} entries"
    );
    server.resume_watch_readers();
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Resync,
        "the events the reader had not read are gone"
    );
    // Then it goes on with what is left, up to the latest update.
    loop {
        match next_event(&mut events, T).await {
            RegistryEvent::Updated(u) if u.metadata["round"] == "399" => break,
            RegistryEvent::Updated(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sixty handles look at the namespace's earliest expiry and sweep what is
/// due; when most peers of the namespace vanish at once, every one of them
/// is still reported `Expired`, exactly once, within the cap
/// (`max_sweep_interval`) of the last handle left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_sweeps_still_report_a_mass_expiry_once_and_in_time() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let config = RedisConfig::new()
        .with_sweep_interval(Duration::from_millis(50))
        .with_max_sweep_interval(Duration::from_millis(800));
    let n = ns("t-paced");
    let survivor = RedisRegistry::connect_with(&server.url(), config.clone())
        .await
        .expect("connect");
    let mut events = survivor.watch(&n).await.expect("watch");
    let kept = record(&n, "kept");
    survivor
        .publish(&kept, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    let mut doomed = Vec::new();
    let mut others = Vec::new();
    for i in 0..59 {
        let reg = RedisRegistry::connect_with(&server.url(), config.clone())
            .await
            .expect("connect");
        let r = record(&n, &format!("doomed-{i:02}"));
        reg.publish(&r, TTL, NamePolicy::Takeover)
            .await
            .expect("publish");
        doomed.push(r);
        others.push(reg);
    }
    for _ in 0..60 {
        assert!(matches!(
            next_event(&mut events, T).await,
            RegistryEvent::Joined(_)
        ));
    }
    // Let every handle look at the namespace, then every doomed handle goes.
    // Kept as a wait for time: each handle's sweeper takes that look
    // (poked by its publish) on its own task, and nothing outside shows
    // when it is done.
    sleep(Duration::from_millis(300)).await;
    drop(others);
    let gone = Instant::now();

    let mut expired = std::collections::HashSet::new();
    while expired.len() < doomed.len() {
        match next_event(&mut events, T).await {
            RegistryEvent::Expired { name, instance } => {
                let r = doomed
                    .iter()
                    .find(|r| r.name == name && r.instance == instance)
                    .unwrap_or_else(|| panic!("Expired for {name}, which was not doomed"));
                assert!(expired.insert(r.name.clone()), "{name} expired twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // ttl, then at most 1.5 x the cap for the survivor's next sweep, one tick
    // of rounding, and generous scheduling slack for a loaded machine.
    let within = TTL + Duration::from_millis(1200 + 50) + SLACK;
    assert!(
        gone.elapsed() < within,
        "all 59 Expired after {:?} (bound {within:?})",
        gone.elapsed()
    );
    // Exactly once, and the live peer untouched.
    if let Ok(Some(ev)) = timeout(Duration::from_millis(500), events.next()).await {
        panic!("nothing more expected, got {ev:?}");
    }
    assert_eq!(
        names(&survivor.lookup(&n, &Pattern::any()).await.expect("lookup")),
        ["kept"]
    );
}

/// One handle holding many names is the namespace's only sweeper: it looks
/// again when the earliest expiry is due (plus up to `sweep_interval`,
/// default 250 ms), so their `Expired` events come promptly, not at the
/// 10 s cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handle_with_many_names_sweeps_at_the_interval() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = connect_redis(&server.url()).await;
    let n = ns("t-many");
    let mut events = reg.watch(&n).await.expect("watch");
    for i in 0..100 {
        reg.publish(
            &record(&n, &format!("svc-{i:03}")),
            TTL,
            NamePolicy::Takeover,
        )
        .await
        .expect("publish");
    }
    for _ in 0..100 {
        assert!(matches!(
            next_event(&mut events, T).await,
            RegistryEvent::Joined(_)
        ));
    }
    let published = Instant::now();
    let mut expired = 0;
    while expired < 100 {
        match next_event(&mut events, T).await {
            RegistryEvent::Expired { .. } => expired += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // ttl, then 1.5 x 250 ms plus a tick at most, and scheduling slack.
    let within = TTL + Duration::from_millis(650) + SLACK;
    assert!(
        published.elapsed() < within,
        "100 Expired after {:?} (bound {within:?})",
        published.elapsed()
    );
}

/// `total_commands_processed` and the calls of each command, from
/// `INFO stats commandstats` (commands run inside scripts included).
fn command_counts(server: &RedisServer) -> (u64, Vec<(String, u64)>) {
    let Resp::Bulk(Some(text)) = ok(server.command(&[b"INFO", b"stats", b"commandstats"])) else {
        panic!("INFO reply")
    };
    let text = String::from_utf8(text).expect("INFO is text");
    let mut total = None;
    let mut calls = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("total_commands_processed:") {
            total = v.trim().parse().ok();
        } else if let Some((cmd, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|r| r.split_once(':'))
        {
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            calls.push((cmd.to_owned(), n));
        }
    }
    (total.expect("total_commands_processed"), calls)
}

/// The Redis load of one node: a handle publishing one name with a 10 s
/// ttl, refreshing it every ttl/3 and watching its namespace (as a started
/// node does), alone in the namespace (so its sweeper does all the
/// sweeping), makes the server process at most 2 commands a second, those
/// run inside scripts included: the budget of 2 000 commands/s per 1 000
/// nodes. Counted over three heartbeat periods (10 s, one default
/// `XREAD BLOCK`) after a warm-up of one, from the server's `INFO`
/// counters. A count, not a timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publishing_watching_handle_stays_within_its_command_budget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_secs(10);
    let period = ttl / 3;
    let periods = 3;
    let reg = connect_redis(&server.url()).await;
    let n = ns("t-budget");
    let r = record(&n, "node");
    reg.publish(&r, ttl, NamePolicy::Exclusive)
        .await
        .expect("publish");
    let mut events = reg.watch(&n).await.expect("watch");
    let reader = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            ev.expect("event");
        }
    });
    // Real time: a heartbeat period of warm-up, as a node's.
    sleep(period).await;
    reg.refresh(&n, &r.name, r.instance, ttl)
        .await
        .expect("refresh");

    let (total0, calls0) = command_counts(&server);
    let start = Instant::now();
    for _ in 0..periods {
        // Real time: the load of a node is counted over heartbeat periods.
        sleep(period).await;
        reg.refresh(&n, &r.name, r.instance, ttl)
            .await
            .expect("refresh");
    }
    let (total1, calls1) = command_counts(&server);
    let elapsed = start.elapsed();
    reader.abort();
    // The first INFO counts once it is done, so in the second reading.
    let commands = total1 - total0 - 1;
    let by_command: Vec<String> = calls1
        .iter()
        .filter_map(|(c, n)| {
            let before = calls0
                .iter()
                .find(|(c0, _)| c0 == c)
                .map_or(0, |(_, n0)| *n0);
            (*n > before && c != "info").then(|| format!("{c} {}", n - before))
        })
        .collect();
    tracing::info!(
        periods,
        ?elapsed,
        commands,
        by_command = %by_command.join(", "),
        "one node's commands"
    );
    // 2 commands/s over the window of whole heartbeat periods.
    let budget = (2.0 * (period * periods).as_secs_f64()).round() as u64;
    assert!(
        commands <= budget,
        "{commands} commands in {periods} heartbeat periods, budget {budget}: {}",
        by_command.join(", ")
    );
    // The watch still works.
    let mut events = reg.watch(&n).await.expect("watch");
    let other = record(&n, "other");
    reg.publish(&other, ttl, NamePolicy::Takeover)
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut events, T).await,
        RegistryEvent::Joined(other)
    );
}

async fn ping(node: &masse::Node, peer: &str) {
    let mut s = timeout(T, node.connect(peer))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect to {peer}: {e}"));
    s.write_all(b"z").await.expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("echo");
}

/// Redis is killed under two running nodes and restarted empty (no
/// persistence): the nodes keep reaching each other by name from their
/// caches, report the outage and the recovery, and publish their records
/// again; a watcher sees `Resync` (its stream is gone with the data) and
/// then the re-published records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_survive_redis_being_killed_and_restarted() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let n = ns("t-restart");
    let ttl = Duration::from_millis(900);
    let node = |name: &'static str| {
        let url = url.clone();
        async move {
            masse::Node::builder(name)
                .namespace("t-restart")
                .registry(connect_redis(&url).await)
                .interface(masse::TcpInterface::new("127.0.0.1:0"))
                .ttl(ttl)
                .start()
                .await
                .unwrap_or_else(|e| panic!("start {name}: {e}"))
        }
    };
    let srv = node("srv").await;
    echo_forever(&srv).await;
    let cli = node("cli").await;
    let mut ev = cli.events();
    // A watcher polled all along, so that it lives through the outage:
    // its connection breaks, it reconnects with backoff, then finds the
    // server's event counter (or the entries after its position) reset.
    let watcher = connect_redis(&url).await;
    let mut polled = watcher.watch(&n).await.expect("watch");
    let (tx, mut watch) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = polled.next().await {
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    ping(&cli, "srv").await; // warms the cache

    server.kill();
    node_event(&mut ev, T, "RegistryUnavailable", |e| {
        matches!(
            e,
            NodeEvent::RegistryUnavailable {
                error: Error::RegistryUnavailable {
                    backend: "redis",
                    ..
                } | Error::Timeout { .. }
            }
        )
        .then_some(())
    })
    .await;
    // Past the ttl, with the registry gone: still reachable by name.
    // Real time: the outage must outlast the records' ttl.
    sleep(ttl * 2).await;
    ping(&cli, "srv").await;

    server.restart();
    let restarted = Instant::now();
    node_event(&mut ev, T, "RegistryRestored", |e| {
        matches!(e, NodeEvent::RegistryRestored).then_some(())
    })
    .await;
    // Both records are back, published again by their nodes.
    let fresh = connect_redis(&url).await;
    eventually(T, "both records published again", || async {
        let found = fresh.lookup(&n, &Pattern::any()).await.expect("lookup");
        if names(&found) == ["cli", "srv"] {
            Ok(Some(()))
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    tracing::info!(after = ?restarted.elapsed(), "records re-published after the restart");
    // The watcher learns that its history is gone, then follows again.
    let mut resynced = false;
    let deadline = Instant::now() + T;
    while !resynced {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, watch.recv()).await {
            Ok(Some(Ok(RegistryEvent::Resync))) => resynced = true,
            Ok(Some(Ok(_))) => {}
            other => panic!("watcher: expected Resync after the restart, got {other:?}"),
        }
    }
    let late = record(&n, "late");
    fresh
        .publish(&late, T, NamePolicy::Takeover)
        .await
        .expect("publish");
    loop {
        match timeout(T, watch.recv()).await {
            Ok(Some(Ok(RegistryEvent::Joined(r)))) if r.name.as_str() == "late" => break,
            Ok(Some(Ok(RegistryEvent::Joined(_)))) => {}
            other => panic!("watcher after resync: {other:?}"),
        }
    }
    ping(&cli, "srv").await;
    srv.shutdown().await.expect("shutdown");
    cli.shutdown().await.expect("shutdown");
}

/// 100 registry handles (each with its own connection, as 100 nodes would
/// have) publish and then refresh every ttl/3 with a 1 s ttl for 30 s:
/// no refresh may fail and no record may expire.
#[ignore = "slow (30 s); run by name in CI"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_100_handles_for_30s_without_spurious_expiry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let n = ns("t-heartbeat");
    let ttl = Duration::from_secs(1);
    let run_for = Duration::from_secs(30);
    let watcher = connect_redis(&url).await;
    let mut events = watcher.watch(&n).await.expect("watch");
    let mut handles = Vec::new();
    for _ in 0..100 {
        handles.push(connect_redis(&url).await);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for (i, reg) in handles.into_iter().enumerate() {
        let r = record(&n, &format!("node-{i:03}"));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start, ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            reg.publish(&r, ttl, NamePolicy::Exclusive)
                .await
                .expect("publish");
            let (mut beats, mut slowest) = (0u32, Duration::ZERO);
            while Instant::now() < start + run_for {
                tick.tick().await;
                let t0 = Instant::now();
                reg.refresh(&r.namespace, &r.name, r.instance, ttl)
                    .await
                    .unwrap_or_else(|e| panic!("refresh of {} failed: {e}", r.name));
                slowest = slowest.max(t0.elapsed());
                beats += 1;
            }
            (beats, slowest)
        }));
    }
    let mut total = 0;
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (beats, s) = t.await.expect("heartbeat task");
        total += beats;
        slowest = slowest.max(s);
    }
    tracing::info!(total, ?slowest, "heartbeats done");
    let mut joined = 0;
    while let Ok(Some(ev)) = timeout(Duration::from_millis(500), events.next()).await {
        match ev.expect("event") {
            RegistryEvent::Joined(_) => joined += 1,
            other => panic!("spurious event during steady heartbeats: {other:?}"),
        }
    }
    assert_eq!(joined, 100);
    assert!(total >= 100 * 80, "too few heartbeats: {total}");
    assert_eq!(
        watcher
            .lookup(&n, &Pattern::any())
            .await
            .expect("lookup")
            .len(),
        100
    );
}
