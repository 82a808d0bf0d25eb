//! The Node runtime over real loopback TCP, several nodes in one process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use masse::handshake::{self, Hello, Message};
use masse::{
    BoxIo, ConnectStep, Direction, Error, InstanceId, MemoryRegistry, NamePolicy, Namespace, Node,
    NodeEvent, PeerName, PeerRecord, RefuseCode, Registry, StreamContext,
};
use masse_integration_tests::{FaultyRegistry, echo_forever, eventually, fnv1a, node, payload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_name_and_talk() {
    let reg = MemoryRegistry::new();
    let a = node("alpha", "t-connect", &reg).start().await.unwrap();
    let b = node("beta", "t-connect", &reg).start().await.unwrap();
    let mut inbound = b.incoming();

    let mut s = a.connect("beta").await.unwrap();
    assert_eq!(s.peer().as_str(), "beta");
    assert_eq!(s.direction(), Direction::Outbound);
    assert_eq!(s.peer_instance(), b.instance());
    s.write_all(b"ping").await.unwrap();

    let mut r = timeout(T, inbound.accept()).await.unwrap().unwrap();
    assert_eq!(r.peer().as_str(), "alpha");
    assert_eq!(r.peer_instance(), a.instance());
    assert_eq!(r.direction(), Direction::Inbound);
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    r.write_all(b"pong").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // The same peer through a masse:// URL.
    let u = a.connect("masse://t-connect/beta").await.unwrap();
    assert_eq!(u.peer().as_str(), "beta");
    assert!(matches!(
        a.connect("masse://other-ns/beta").await,
        Err(Error::InvalidAddress { .. })
    ));
    assert!(matches!(
        a.connect("not a name").await,
        Err(Error::InvalidName { .. })
    ));

    match a.connect("nobody").await {
        Err(Error::NotFound { name, namespace }) => {
            assert_eq!(name, "nobody");
            assert_eq!(namespace, "t-connect");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let stats = a.stats();
    assert_eq!(stats.connects_ok, 2);
    assert_eq!(stats.connects_not_found, 1);
    assert_eq!(stats.bytes_out, 4);
    assert_eq!(stats.bytes_in, 4);
    assert!(
        stats.cache_hit_rate() > 0.0,
        "the masse:// dial hit the cache: {stats:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_pattern_reaches_all_others_but_not_itself() {
    let reg = MemoryRegistry::new();
    let me = node("worker-0", "t-to", &reg).start().await.unwrap();
    let mut others = Vec::new();
    for i in 1..=5 {
        let n = node(&format!("worker-{i}"), "t-to", &reg)
            .start()
            .await
            .unwrap();
        echo_forever(&n).await;
        others.push(n);
    }
    let bystander = node("db-1", "t-to", &reg).start().await.unwrap();

    let streams: Vec<_> = timeout(T, me.to("worker-*").collect::<Vec<_>>())
        .await
        .unwrap();
    let names: HashSet<String> = streams
        .iter()
        .map(|s| s.as_ref().unwrap().peer().to_string())
        .collect();
    let want: HashSet<String> = (1..=5).map(|i| format!("worker-{i}")).collect();
    assert_eq!(names, want, "every other worker, not itself, not db-1");

    let all: Vec<_> = timeout(T, me.to("*").collect::<Vec<_>>()).await.unwrap();
    assert_eq!(
        all.len(),
        6,
        "'*' reaches the 5 workers and db-1, not itself"
    );
    let with_self: Vec<_> = timeout(T, me.to("worker-*").include_self().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(with_self.len(), 6, "include_self adds itself");

    // One peer failing is an Err item, not the end of the stream.
    drop(others.pop()); // worker-5 dies without unpublishing: its record lingers
    let results: Vec<_> = timeout(T, me.to("worker-*").collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        matches!(failed[..], [Error::Connect { peer, .. }] if peer == "worker-5"),
        "one failed dial, to the dead worker-5: {failed:?}"
    );
    drop(bystander);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reaches_later_joiners_once() {
    let reg = MemoryRegistry::new();
    let me = node("hub", "t-follow", &reg).start().await.unwrap();
    let early = node("w-early", "t-follow", &reg).start().await.unwrap();
    let mut live = me.to("w-*").follow();
    let first = timeout(T, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.peer().as_str(), "w-early");

    let late = node("w-late", "t-follow", &reg).start().await.unwrap();
    let second = timeout(T, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.peer().as_str(), "w-late");
    assert_eq!(second.peer_instance(), late.instance());

    // Non-matching joiners and re-publishes of a known instance are not reached again.
    let _other = node("db", "t-follow", &reg).start().await.unwrap();
    let rec = late.record();
    reg.publish(&rec.clone(), Duration::from_secs(2), NamePolicy::Takeover)
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_millis(700), live.next())
            .await
            .is_err(),
        "nothing new to reach"
    );

    // A restarted peer is a new instance: reached again.
    drop(late);
    let late2 = node("w-late", "t-follow", &reg).start().await.unwrap();
    let third = timeout(T, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(third.peer_instance(), late2.instance());

    // Ends when the node shuts down.
    me.shutdown().await.unwrap();
    assert!(timeout(T, live.next()).await.unwrap().is_none());
    drop(early);
}

/// A registry whose watch never delivers anything: a cache on top of it keeps
/// whatever it fetched, like a dialer that missed a peer's restart.
#[derive(Debug, Clone)]
struct Deaf(MemoryRegistry);

#[masse::async_trait]
impl Registry for Deaf {
    async fn publish(&self, r: &PeerRecord, ttl: Duration, p: NamePolicy) -> masse::Result<()> {
        self.0.publish(r, ttl, p).await
    }
    async fn refresh(
        &self,
        ns: &Namespace,
        n: &PeerName,
        i: InstanceId,
        ttl: Duration,
    ) -> masse::Result<()> {
        self.0.refresh(ns, n, i, ttl).await
    }
    async fn unpublish(&self, ns: &Namespace, n: &PeerName, i: InstanceId) -> masse::Result<()> {
        self.0.unpublish(ns, n, i).await
    }
    async fn lookup(&self, ns: &Namespace, p: &masse::Pattern) -> masse::Result<Vec<PeerRecord>> {
        self.0.lookup(ns, p).await
    }
    async fn lookup_leases(
        &self,
        ns: &Namespace,
        p: &masse::Pattern,
    ) -> masse::Result<Vec<masse::Lease>> {
        self.0.lookup_leases(ns, p).await
    }
    async fn watch(
        &self,
        _ns: &Namespace,
    ) -> masse::Result<masse::BoxStream<'static, masse::Result<masse::RegistryEvent>>> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_on_a_new_port_is_reached_through_a_stale_cache() {
    let reg = MemoryRegistry::new();
    let dialer = masse::Node::builder("dialer")
        .namespace("t-restart")
        .registry(Deaf(reg.clone()))
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let svc = node("svc", "t-restart", &reg).start().await.unwrap();
    echo_forever(&svc).await;
    let old = svc.record();
    drop(dialer.connect("svc").await.unwrap());
    // Twice, so the answer is cached once the (silent) watch is up.
    drop(dialer.connect("svc").await.unwrap());
    assert!(
        dialer.stats().cache.hits >= 1,
        "the dialer's cache holds svc: {:?}",
        dialer.stats()
    );

    // svc dies (no unpublish) and comes back on another port; the dialer hears nothing.
    drop(svc);
    let svc2 = node("svc", "t-restart", &reg).start().await.unwrap();
    echo_forever(&svc2).await;
    assert_ne!(svc2.record().endpoints, old.endpoints);

    let mut s = timeout(T, dialer.connect("svc")).await.unwrap().unwrap();
    assert_eq!(
        s.peer_instance(),
        svc2.instance(),
        "reached the new instance"
    );
    assert_eq!(
        dialer.stats().stale_retries,
        1,
        "one refused dial, one fresh lookup, one retry"
    );
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();

    // A name that is gone for good is NotFound after the fresh lookup, not a transport error.
    let gone = svc2.record().endpoints[0].socket_addr().unwrap();
    drop(svc2);
    reg.unpublish(
        &"t-restart".parse().unwrap(),
        &"svc".parse().unwrap(),
        s.peer_instance(),
    )
    .await
    .unwrap();
    // The dropped node closes its listener from its own task: until then
    // the kernel still completes TCP connects to it (and a pipelined
    // connect returns before any answer), so wait for the port to refuse.
    timeout(T, async {
        while tokio::net::TcpStream::connect(gone).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dropped node's port still accepts");
    match dialer.connect("svc").await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_expires_once_per_watcher() {
    let reg = MemoryRegistry::new();
    let ttl = Duration::from_millis(900);
    let watchers: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                node(&format!("watcher-{i}"), "t-expire", &reg)
                    .ttl(ttl)
                    .start()
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let mut event_streams: Vec<_> = watchers.iter().map(|w| w.events()).collect();
    let victim = node("victim", "t-expire", &reg)
        .ttl(ttl)
        .start()
        .await
        .unwrap();
    let victim_instance = victim.instance();
    // Every watcher has seen the victim join before it dies.
    for (i, events) in event_streams.iter_mut().enumerate() {
        loop {
            match timeout(T, events.recv()).await {
                Ok(Some(NodeEvent::PeerJoined(r))) if r.instance == victim_instance => break,
                Ok(Some(_)) => {}
                other => panic!("watcher {i}: no PeerJoined for the victim: {other:?}"),
            }
        }
    }
    let killed_at = Instant::now();
    drop(victim);

    // Every watcher records when each PeerExpired arrives, for ttl + 1 s and
    // one more second to catch duplicates.
    let listen_until = killed_at + ttl + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for mut events in event_streams {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(ev)) = timeout(
                listen_until.saturating_duration_since(Instant::now()),
                events.recv(),
            )
            .await
            {
                if let NodeEvent::PeerExpired { name, instance } = ev {
                    seen.push((Instant::now(), name, instance));
                }
            }
            seen
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let seen = t.await.unwrap();
        assert_eq!(
            seen.len(),
            1,
            "watcher {i} saw exactly one PeerExpired: {seen:?}"
        );
        let (at, name, instance) = &seen[0];
        assert_eq!(name.as_str(), "victim");
        assert_eq!(*instance, victim_instance);
        assert!(
            at.duration_since(killed_at) <= ttl + Duration::from_secs(1),
            "watcher {i}: expired within ttl + 1 s"
        );
    }
    assert!(watchers[0].peers("victim").await.unwrap().is_empty());
    let stats = watchers[0].stats();
    assert!(
        stats.registry_latency.is_some() && stats.registry_latency_avg.is_some(),
        "heartbeats measured the registry round trip: {stats:?}"
    );
}

/// A dialed stream once the acceptor answered (`connect` itself returns as
/// soon as the `Hello` is out).
async fn answered(r: masse::Result<masse::PeerStream>) -> masse::Result<masse::PeerStream> {
    let s = r?;
    s.established().await?;
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_codes() {
    let reg = MemoryRegistry::new();
    let a = node("a", "t-refuse", &reg).start().await.unwrap();
    let b = node("b", "t-refuse", &reg)
        .service("rpc")
        .start()
        .await
        .unwrap();
    let b_ep = b.record().endpoints[0].socket_addr().unwrap();

    // Unknown service: the error names the peer, the endpoint and the step,
    // around the refusal.
    match answered(a.connect_service("b", "nope").await).await {
        Err(e @ Error::Connect { .. }) => {
            let Error::Connect {
                peer,
                endpoint,
                step,
                source,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(peer, "b");
            assert_eq!(
                endpoint.as_deref(),
                Some(&*b.record().endpoints[0].to_string())
            );
            assert_eq!(*step, ConnectStep::Handshake);
            assert!(
                matches!(
                    **source,
                    Error::Refused {
                        code: RefuseCode::NoSuchService,
                        ..
                    }
                ),
                "{source:?}"
            );
            assert_eq!(e.refuse_code(), Some(RefuseCode::NoSuchService));
            let shown = e.to_string();
            assert!(
                shown.starts_with("connect to \"b\" via tcp://") && shown.contains("at handshake"),
                "{shown}"
            );
        }
        other => panic!("expected NoSuchService, got {other:?}"),
    }
    // A known one works and is routed to incoming_service.
    let mut rpc = b.incoming_service("rpc");
    let s = a.connect_service("b", "rpc").await.unwrap();
    assert_eq!(s.service(), Some("rpc"));
    let r = timeout(T, rpc.accept()).await.unwrap().unwrap();
    assert_eq!(r.service(), Some("rpc"));

    // Wrong peer: a record for "ghost" that points at b.
    let ghost = PeerRecord::new(
        "t-refuse".parse().unwrap(),
        "ghost".parse().unwrap(),
        InstanceId::random(),
    )
    .with_endpoint(b.record().endpoints[0].clone());
    reg.publish(&ghost, Duration::from_secs(5), NamePolicy::Takeover)
        .await
        .unwrap();
    match answered(a.connect("ghost").await)
        .await
        .map_err(Error::into_root)
    {
        Err(Error::WrongPeer { expected, actual }) => {
            assert_eq!(expected, "ghost");
            assert_eq!(actual, "b", "the acceptor says who it is");
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }

    // Nobody on the endpoint: the error says the transport connect failed, where.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_ep: masse::Endpoint = format!("tcp://{}", closed.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(closed);
    let dead = PeerRecord::new(
        "t-refuse".parse().unwrap(),
        "dead".parse().unwrap(),
        InstanceId::random(),
    )
    .with_endpoint(dead_ep.clone());
    reg.publish(&dead, Duration::from_secs(5), NamePolicy::Takeover)
        .await
        .unwrap();
    match timeout(T, a.connect("dead")).await.unwrap() {
        Err(Error::Connect {
            peer,
            endpoint,
            step: ConnectStep::Transport,
            source,
        }) => {
            assert_eq!(peer, "dead");
            assert_eq!(endpoint, Some(dead_ep.to_string()));
            assert!(
                matches!(*source, Error::Io(ref e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
                "{source:?}"
            );
        }
        other => panic!("expected a transport failure, got {other:?}"),
    }

    // Wrong namespace, with a hand-made Hello.
    let mut raw = TcpStream::connect(b_ep).await.unwrap();
    let hello = Hello::new(
        "elsewhere".parse().unwrap(),
        "x".parse().unwrap(),
        InstanceId::random(),
        "b".parse().unwrap(),
    );
    handshake::write_message(&mut raw, &Message::Hello(hello))
        .await
        .unwrap();
    match handshake::read_message(&mut raw, T).await.unwrap() {
        Message::Refuse(r) => assert_eq!(r.code, RefuseCode::WrongNamespace),
        other => panic!("expected Refuse, got {other:?}"),
    }
    // And the stream is closed after a refusal.
    let mut rest = Vec::new();
    assert_eq!(
        timeout(T, raw.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_only_hurt_their_own_stream() {
    let reg = MemoryRegistry::new();
    let srv = node("srv", "t-garbage", &reg)
        .handshake_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    echo_forever(&srv).await;
    let cli = node("cli", "t-garbage", &reg).start().await.unwrap();
    let ep = srv.record().endpoints[0].socket_addr().unwrap();

    // Slow-loris: a length prefix and then nothing.
    let mut loris = TcpStream::connect(ep).await.unwrap();
    loris.write_all(&[0x00, 0x40]).await.unwrap();
    // Oversized length.
    let mut big = TcpStream::connect(ep).await.unwrap();
    big.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    // Garbage of the right size.
    let mut junk = TcpStream::connect(ep).await.unwrap();
    junk.write_all(b"\x00\x10GET / HTTP/1.1\r\n").await.unwrap();
    // Truncated: half a valid Hello, then close.
    let hello = Hello::new(
        "t-garbage".parse().unwrap(),
        "x".parse().unwrap(),
        InstanceId::random(),
        "srv".parse().unwrap(),
    );
    let frame = handshake::encode(&Message::Hello(hello));
    let mut trunc = TcpStream::connect(ep).await.unwrap();
    trunc.write_all(&frame[..frame.len() / 2]).await.unwrap();
    trunc.shutdown().await.unwrap();

    // Meanwhile a well-behaved peer is served at once.
    let mut s = timeout(T, cli.connect("srv")).await.unwrap().unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"hello");

    // Every bad connection is closed by the node (EOF), the slow one after the deadline.
    for (what, sock) in [
        ("oversized", &mut big),
        ("garbage", &mut junk),
        ("truncated", &mut trunc),
        ("slow", &mut loris),
    ] {
        let mut rest = Vec::new();
        let r = timeout(T, sock.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{what}: not closed"));
        assert!(
            r.is_err() || rest.is_empty(),
            "{what}: closed without a Welcome"
        );
    }
    assert!(srv.stats().handshakes_rejected >= 4, "{:?}", srv.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_lose_nothing() {
    let reg = MemoryRegistry::new();
    let srv = node("sink", "t-many", &reg).start().await.unwrap();
    let cli = Arc::new(node("source", "t-many", &reg).start().await.unwrap());
    let mut incoming = srv.incoming();
    // Server: read length + bytes + checksum, verify, answer with the checksum.
    let server = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..1000 {
            let mut s = incoming.accept().await.expect("stream");
            handlers.push(tokio::spawn(async move {
                let len = s.read_u32().await.unwrap() as usize;
                let mut data = vec![0u8; len];
                s.read_exact(&mut data).await.unwrap();
                let sum = s.read_u64().await.unwrap();
                assert_eq!(fnv1a(&data), sum, "payload intact");
                s.write_u64(sum).await.unwrap();
                s.flush().await.unwrap();
            }));
        }
        for h in handlers {
            h.await.unwrap();
        }
    });
    let mut clients = Vec::new();
    for i in 0..1000u64 {
        let cli = cli.clone();
        clients.push(tokio::spawn(async move {
            let mut s = cli.connect("sink").await.unwrap();
            let data = payload(i, 1 + (i as usize * 7919) % 65536);
            s.write_u32(data.len() as u32).await.unwrap();
            s.write_all(&data).await.unwrap();
            s.write_u64(fnv1a(&data)).await.unwrap();
            s.flush().await.unwrap();
            assert_eq!(s.read_u64().await.unwrap(), fnv1a(&data));
        }));
    }
    timeout(Duration::from_secs(60), async {
        for c in clients {
            c.await.unwrap();
        }
        server.await.unwrap();
    })
    .await
    .expect("1000 streams within 60 s");
    assert_eq!(cli.stats().connects_ok, 1000);
    assert_eq!(srv.stats().streams_inbound, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrappers_apply_in_the_order_added() {
    let reg = MemoryRegistry::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let tag = |t: &'static str, log: Arc<Mutex<Vec<String>>>| {
        move |mut io: BoxIo, ctx: &StreamContext| {
            let log = log.clone();
            let dir = ctx.direction;
            async move {
                log.lock().unwrap().push(format!("{t}:{dir:?}"));
                if dir == Direction::Outbound {
                    io.write_all(t.as_bytes()).await?;
                }
                Ok::<_, Error>(io)
            }
        }
    };
    let srv = node("plain", "t-wrap", &reg)
        .wrap(tag("x", log.clone()))
        .start()
        .await
        .unwrap();
    let cli = node("wrapped", "t-wrap", &reg)
        .wrap(tag("A", log.clone()))
        .wrap(tag("B", log.clone()))
        .wrap(tag("C", log.clone()))
        .start()
        .await
        .unwrap();
    let mut inc = srv.incoming();
    let _s = cli.connect("plain").await.unwrap();
    let mut r = timeout(T, inc.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 3];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"ABC",
        "the bytes each wrapper wrote arrive in the order the wrappers were added"
    );
    let log = log.lock().unwrap().clone();
    let outbound: Vec<&String> = log.iter().filter(|e| e.ends_with(":Outbound")).collect();
    assert_eq!(outbound, ["A:Outbound", "B:Outbound", "C:Outbound"]);
    assert!(
        log.contains(&"x:Inbound".to_string()),
        "the acceptor's wrappers run on inbound streams: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_peers_track_the_namespace() {
    let reg = MemoryRegistry::new();
    let mon = node("monitor", "t-events", &reg).start().await.unwrap();
    let mut ev = mon.events();
    let a = node("a", "t-events", &reg)
        .metadata("zone", "b")
        .start()
        .await
        .unwrap();
    let joined = loop {
        match timeout(T, ev.recv()).await.unwrap().unwrap() {
            NodeEvent::PeerJoined(r) => break r,
            _ => continue,
        }
    };
    assert_eq!(joined.name.as_str(), "a");
    assert_eq!(joined.metadata.get("zone").map(String::as_str), Some("b"));
    let peers = mon.peers("*").await.unwrap();
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "monitor"]);
    let a_inst = a.instance();
    a.shutdown().await.unwrap();
    loop {
        match timeout(T, ev.recv()).await.unwrap().unwrap() {
            NodeEvent::PeerLeft { name, instance } => {
                assert_eq!(name.as_str(), "a");
                assert_eq!(instance, a_inst);
                break;
            }
            NodeEvent::PeerExpired { .. } => panic!("a clean shutdown is a Left, not an Expired"),
            _ => continue,
        }
    }
    // Stream events report bytes.
    let b = node("b", "t-events", &reg).start().await.unwrap();
    echo_forever(&b).await;
    let mut s = mon.connect("b").await.unwrap();
    s.write_all(b"12345").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    drop(s);
    loop {
        match timeout(T, ev.recv()).await.unwrap().unwrap() {
            NodeEvent::StreamClosed {
                peer,
                bytes_in,
                bytes_out,
                direction,
                ..
            } => {
                assert_eq!(peer.as_str(), "b");
                assert_eq!(
                    (bytes_in, bytes_out, direction),
                    (5, 5, Direction::Outbound)
                );
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_taking_the_name_is_reported() {
    let reg = MemoryRegistry::new();
    let first = node("leader", "t-lost", &reg)
        .ttl(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let mut ev = first.events();
    let second = node("leader", "t-lost", &reg).start().await.unwrap();
    loop {
        match timeout(T, ev.recv()).await.unwrap().unwrap() {
            NodeEvent::NameLost { holder } => {
                assert_eq!(holder, Some(second.instance()));
                break;
            }
            _ => continue,
        }
    }
    // The name stays with the new holder.
    // Real time: a quiet window of several of the first node's heartbeat
    // periods (ttl/3 = 100 ms), in which it must not take the name back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let peers = second.peers("leader").await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].instance, second.instance());
    // An exclusive start fails while the name is held.
    match node("leader", "t-lost", &reg)
        .name_policy(NamePolicy::Exclusive)
        .start()
        .await
    {
        Err(Error::NameTaken { holder, .. }) => assert_eq!(holder, second.instance()),
        other => panic!("expected NameTaken, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_open_streams_and_refuses_new_ones() {
    let reg = MemoryRegistry::new();
    let srv = node("srv", "t-shut", &reg)
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let cli = node("cli", "t-shut", &reg).start().await.unwrap();
    let mut inc = srv.incoming();
    let mut s = cli.connect("srv").await.unwrap();
    let mut r = timeout(T, inc.accept()).await.unwrap().unwrap();
    let srv = Arc::new(srv);
    let srv2 = srv.clone();
    let started = Instant::now();
    let shut = tokio::spawn(async move { srv2.shutdown().await });
    // Real time: longer than a heartbeat period (ttl/3), a window in which
    // the heartbeat must not publish the record again while shutdown waits.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!shut.is_finished(), "shutdown waits for the open stream");
    assert!(
        cli.peers("srv").await.unwrap().is_empty(),
        "unpublished while draining"
    );
    // The open stream still works during the grace period.
    s.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    r.read_exact(&mut buf).await.unwrap();
    drop(r);
    timeout(T, shut).await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(cli.peers("srv").await.unwrap().is_empty(), "unpublished");
    assert!(matches!(
        cli.connect("srv").await,
        Err(Error::NotFound { .. })
    ));
    assert!(inc.accept().await.is_none(), "incoming ends after shutdown");
}

/// A registry that can be switched off, to play an outage: every call fails
/// and open watch streams end with an error, as with a server that went away.
#[derive(Debug, Clone)]
struct Switchable {
    inner: MemoryRegistry,
    down: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Switchable {
    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    fn check(&self) -> masse::Result<()> {
        if *self.down.borrow() {
            Err(Error::unavailable(
                "switchable",
                std::io::Error::other("switched off"),
            ))
        } else {
            Ok(())
        }
    }
}

#[masse::async_trait]
impl Registry for Switchable {
    async fn publish(&self, r: &PeerRecord, ttl: Duration, p: NamePolicy) -> masse::Result<()> {
        self.check()?;
        self.inner.publish(r, ttl, p).await
    }
    async fn refresh(
        &self,
        ns: &Namespace,
        n: &PeerName,
        i: InstanceId,
        ttl: Duration,
    ) -> masse::Result<()> {
        self.check()?;
        self.inner.refresh(ns, n, i, ttl).await
    }
    async fn unpublish(&self, ns: &Namespace, n: &PeerName, i: InstanceId) -> masse::Result<()> {
        self.check()?;
        self.inner.unpublish(ns, n, i).await
    }
    async fn lookup(&self, ns: &Namespace, p: &masse::Pattern) -> masse::Result<Vec<PeerRecord>> {
        self.check()?;
        self.inner.lookup(ns, p).await
    }
    async fn lookup_leases(
        &self,
        ns: &Namespace,
        p: &masse::Pattern,
    ) -> masse::Result<Vec<masse::Lease>> {
        self.check()?;
        self.inner.lookup_leases(ns, p).await
    }
    async fn watch(
        &self,
        ns: &Namespace,
    ) -> masse::Result<masse::BoxStream<'static, masse::Result<masse::RegistryEvent>>> {
        self.check()?;
        let events = self.inner.watch(ns).await?;
        let mut down = self.down.subscribe();
        let cut = futures::stream::once(async move {
            let _ = down.wait_for(|d| *d).await;
            Err(Error::unavailable(
                "switchable",
                std::io::Error::other("connection lost"),
            ))
        });
        Ok(Box::pin(futures::stream::select(events, cut)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_serves_from_cache_and_recovers() {
    let mem = MemoryRegistry::new();
    let reg = Switchable {
        inner: mem.clone(),
        down: Arc::new(tokio::sync::watch::channel(false).0),
    };
    let ttl = Duration::from_millis(600);
    let build = |name: &str| {
        masse_integration_tests::init_tracing();
        masse::Node::builder(name)
            .namespace("t-outage")
            .registry(reg.clone())
            .interface(masse::TcpInterface::new("127.0.0.1:0"))
            .ttl(ttl)
    };
    let srv = build("srv").start().await.unwrap();
    echo_forever(&srv).await;
    let cli = build("cli").start().await.unwrap();
    let mut ev = cli.events();
    drop(cli.connect("srv").await.unwrap()); // warms the cache

    reg.set_down(true);
    loop {
        match timeout(T, ev.recv()).await.unwrap().unwrap() {
            NodeEvent::RegistryUnavailable { error } => {
                assert!(matches!(
                    error,
                    Error::RegistryUnavailable {
                        backend: "switchable",
                        ..
                    }
                ));
                break;
            }
            _ => continue,
        }
    }
    // Still reaches srv by name from the cache, after the records expired in the backend.
    // Real time: the records' ttl must run out in the backend.
    tokio::time::sleep(ttl * 2).await;
    let mut s = timeout(T, cli.connect("srv"))
        .await
        .unwrap()
        .expect("served from cache while the registry is down");
    s.write_all(b"z").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert!(
        mem.lookup(&"t-outage".parse().unwrap(), &"*".parse().unwrap())
            .await
            .unwrap()
            .is_empty(),
        "both records expired in the backend"
    );

    reg.set_down(false);
    loop {
        match timeout(T, ev.recv()).await.unwrap().unwrap() {
            NodeEvent::RegistryRestored => break,
            _ => continue,
        }
    }
    // Both nodes re-published their records.
    eventually(T, "both records published again", || async {
        let found = mem
            .lookup(&"t-outage".parse().unwrap(), &"*".parse().unwrap())
            .await
            .unwrap();
        let names: Vec<&str> = found.iter().map(|r| r.name.as_str()).collect();
        names == ["cli", "srv"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_service_queues_streams_from_start() {
    // Start, then serve: a stream for the service that arrives before the
    // application asks for the service waits in the service's own queue.
    let reg = MemoryRegistry::new();
    let server = node("early", "t-early", &reg)
        .service("rpc")
        .start()
        .await
        .unwrap();
    let client = node("client", "t-early", &reg).start().await.unwrap();
    let mut s = client.connect_service("early", "rpc").await.unwrap();
    s.write_all(b"call").await.unwrap();
    // Answered (admitted to a queue) before anyone asked for the service.
    timeout(T, s.established()).await.unwrap().unwrap();
    let mut rpc = server.incoming_service("rpc");
    let mut got = timeout(T, rpc.accept()).await.unwrap().unwrap();
    assert_eq!(got.service(), Some("rpc"));
    let mut buf = [0u8; 4];
    timeout(T, got.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"call");
    // A plain stream still goes to incoming().
    let _plain = client.connect("early").await.unwrap();
    let plain = timeout(T, server.incoming().accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.service(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_opens_one_registry_watch_for_its_cache_and_its_events() {
    let reg = MemoryRegistry::new();
    let counted = FaultyRegistry::new(reg.clone());
    let a = Node::builder("a")
        .namespace("t-one-watch")
        .registry(counted.clone())
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let mut events = a.events();
    let b = node("b", "t-one-watch", &reg).start().await.unwrap();
    // The join reaches the node's events, and the dial is a cache hit.
    timeout(T, async {
        while let Some(ev) = events.next().await {
            if matches!(ev, NodeEvent::PeerJoined(ref r) if r.instance == b.instance()) {
                return;
            }
        }
    })
    .await
    .unwrap();
    let misses = a.stats().cache.misses;
    let s = a.connect("b").await.unwrap();
    s.established().await.unwrap();
    a.connect("b").await.unwrap().established().await.unwrap();
    assert!(
        a.stats().cache.misses <= misses + 1,
        "{:?}",
        a.stats().cache
    );
    assert_eq!(counted.watches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_a_handler_per_stream_and_serve_service_per_service() {
    let reg = MemoryRegistry::new();
    let server = node("served", "t-serve", &reg)
        .service("upper")
        .start()
        .await
        .unwrap();
    server.serve(|mut s| async move {
        let (mut r, mut w) = tokio::io::split(&mut s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    server.serve_service("upper", |mut s| async move {
        let mut buf = [0u8; 5];
        if s.read_exact(&mut buf).await.is_ok() {
            buf.make_ascii_uppercase();
            let _ = s.write_all(&buf).await;
        }
    });
    let client = node("client", "t-serve", &reg).start().await.unwrap();
    // Many at once: each on its own task.
    let mut all = Vec::new();
    for i in 0..50u8 {
        let client = &client;
        all.push(async move {
            let mut s = client.connect("served").await.unwrap();
            s.write_all(&[i; 3]).await.unwrap();
            let mut back = [0u8; 3];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [i; 3]);
        });
    }
    timeout(T, futures::future::join_all(all)).await.unwrap();
    let mut s = client.connect_service("served", "upper").await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"HELLO");
    assert_eq!(server.stats().streams_inbound, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_open_after_the_grace_are_closed_with_a_reason() {
    let reg = MemoryRegistry::new();
    let server = node("lingering", "t-grace", &reg)
        .shutdown_grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let mut incoming = server.incoming();
    let client = node("client", "t-grace", &reg).start().await.unwrap();
    let mut dialed = client.connect("lingering").await.unwrap();
    dialed.write_all(b"x").await.unwrap();
    let mut accepted = timeout(T, incoming.accept()).await.unwrap().unwrap();
    let mut one = [0u8; 1];
    accepted.read_exact(&mut one).await.unwrap();
    // The server's application waits for more that never comes.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let r = accepted.read(&mut buf).await;
        drop(accepted);
        r
    });
    timeout(T, server.shutdown()).await.unwrap().unwrap();
    let err = timeout(T, reader)
        .await
        .expect("the waiting read ends at the grace")
        .unwrap()
        .expect_err("the read fails");
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
    assert!(
        matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<Error>()),
            Some(Error::Closed(_))
        ),
        "{err:?}"
    );
    // The other end sees the stream end.
    let mut rest = Vec::new();
    assert_eq!(
        timeout(T, dialed.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );
}

/// A peer that also advertises transports this node lacks (a newer node,
/// or one with a Unix socket) stays visible and reachable through the
/// endpoint it shares; the others are kept in the record, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_mixing_unknown_and_known_schemes_is_reachable() {
    let reg = MemoryRegistry::new();
    let a = node("a", "t-mixed", &reg).start().await.unwrap();
    let b = node("b", "t-mixed", &reg).start().await.unwrap();
    echo_forever(&b).await;
    let mut events = a.events();

    // b's record, as a newer b would publish it: two endpoints a cannot
    // dial first, its TCP one last.
    let mut mixed = b.record();
    let tcp = mixed.endpoints.clone();
    mixed.endpoints = vec![
        "vsock+masse://3:4100".parse().unwrap(),
        "unix:///run/masse/t-mixed.b.sock".parse().unwrap(),
    ];
    mixed.endpoints.extend(tcp.iter().cloned());
    reg.publish(&mixed, Duration::from_secs(10), NamePolicy::Takeover)
        .await
        .unwrap();
    let seen = timeout(T, async {
        loop {
            match events.recv().await {
                Some(NodeEvent::PeerUpdated(r)) if r.name.as_str() == "b" => return r,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.endpoints, mixed.endpoints, "every endpoint is kept");

    let listed = a.peers("b").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].endpoints, mixed.endpoints);

    let mut s = timeout(T, a.connect("b")).await.unwrap().unwrap();
    s.write_all(b"mixed").await.unwrap();
    let mut back = [0u8; 5];
    timeout(T, s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"mixed");
    assert_eq!(*s.protocol(), masse::Protocol::TCP);
    assert_eq!(s.peer_instance(), b.instance());
    drop(s);

    // Nothing it speaks at all: a clear error, not a hang or a panic.
    let mut alien = PeerRecord::new(
        "t-mixed".parse().unwrap(),
        "alien".parse().unwrap(),
        InstanceId::random(),
    );
    alien.endpoints = vec!["vsock+masse://3:1".parse().unwrap()];
    reg.publish(&alien, Duration::from_secs(10), NamePolicy::Takeover)
        .await
        .unwrap();
    match timeout(T, a.connect("alien")).await.unwrap() {
        Err(e) => assert!(
            matches!(e.root(), Error::Unsupported(m) if m.contains("vsock+masse://3:1")),
            "{e:?}"
        ),
        Ok(_) => panic!("dialed an endpoint no interface speaks"),
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A peer whose heartbeats stop is reported evasive before it expires, alive
/// again when they resume, and expired when they stop for good: each change
/// once, in that order, and nothing for peers that keep beating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_misses_heartbeats_is_evasive_before_it_expires() {
    masse_integration_tests::init_tracing();
    let mem = MemoryRegistry::new();
    let flaky = FaultyRegistry::new(mem.clone());
    let ttl = Duration::from_secs(3);
    let build = |name: &str| {
        masse::Node::builder(name)
            .namespace("t-evasive")
            .interface(masse::TcpInterface::new("127.0.0.1:0"))
            .ttl(ttl)
    };
    let watcher = build("watcher")
        .registry(mem.clone())
        .liveness_events(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let mut ev = watcher.events();
    let steady = build("steady").registry(mem.clone()).start().await.unwrap();
    let flapper = build("flapper")
        .registry(flaky.clone())
        .start()
        .await
        .unwrap();
    let flapper_instance = flapper.instance();

    // The next event about a peer other than "steady"'s joining (which must
    // never be reported evasive).
    let mut next = async || loop {
        let e = timeout(T, ev.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        match &e {
            NodeEvent::PeerEvasive { name, .. } | NodeEvent::PeerAlive { name, .. }
                if name.as_str() == "steady" =>
            {
                panic!("a peer that keeps beating was reported: {e:?}")
            }
            NodeEvent::PeerEvasive { .. }
            | NodeEvent::PeerAlive { .. }
            | NodeEvent::PeerExpired { .. }
            | NodeEvent::PeerLeft { .. } => return e,
            _ => continue,
        }
    };

    flaky.set_down(true);
    let stopped = Instant::now();
    match next().await {
        NodeEvent::PeerEvasive {
            name,
            instance,
            expires_in,
        } => {
            assert_eq!(name.as_str(), "flapper");
            assert_eq!(instance, flapper_instance);
            assert!(expires_in < ttl / 2, "{expires_in:?} left");
            assert!(
                stopped.elapsed() < ttl,
                "reported before the record could expire"
            );
        }
        other => panic!("expected flapper evasive, got {other:?}"),
    }
    flaky.set_down(false);
    match next().await {
        NodeEvent::PeerAlive { name, instance } => {
            assert_eq!(name.as_str(), "flapper");
            assert_eq!(instance, flapper_instance);
        }
        other => panic!("expected flapper alive again, got {other:?}"),
    }

    flaky.set_down(true);
    assert!(
        matches!(next().await, NodeEvent::PeerEvasive { name, .. } if name.as_str() == "flapper")
    );
    match next().await {
        NodeEvent::PeerExpired { name, instance } => {
            assert_eq!(name.as_str(), "flapper");
            assert_eq!(instance, flapper_instance);
        }
        other => panic!("expected flapper expired after evasive, got {other:?}"),
    }
    drop(flapper);
    steady.shutdown().await.unwrap();
    watcher.shutdown().await.unwrap();
}
