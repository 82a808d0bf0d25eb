//! A registry that loses its data under running nodes: Redis SIGKILLed and
//! restarted empty while streams flow and dials go on. Live peers are never
//! `NotFound` and never reported gone; no byte is lost; a peer that died
//! during the outage is reported `PeerExpired` exactly once after Redis is
//! back (after the resync grace gave live owners time to re-publish).

// The measured recovery times are printed for the README's table.
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use masse::{Error, Node, NodeEvent, Pattern, Registry};
use masse_integration_tests::redis::RedisServer;
use masse_integration_tests::{echo_forever, eventually, fnv1a, init_tracing, node_event, payload};
use masse_redis::RedisRegistry;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

const T: Duration = Duration::from_secs(15);
const TTL: Duration = Duration::from_millis(1500);
const SERVERS: usize = 4;
const STREAMS: usize = 20;
const CHUNK: usize = 4096;

async fn node(url: &str, name: &str) -> Node {
    let registry = RedisRegistry::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    Node::builder(name)
        .namespace("resync")
        .registry(registry)
        .interface(masse::TcpInterface::new("127.0.0.1:0"))
        .ttl(TTL)
        .start()
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// Streams `CHUNK`-byte payloads through an echo peer until `stop`,
/// checking every byte that comes back; returns the bytes echoed.
async fn flow(mut s: masse::PeerStream, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut total = 0u64;
    let mut round = 0u64;
    let mut back = vec![0u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        let data = payload(seed ^ round, CHUNK);
        s.write_all(&data).await.expect("stream write");
        s.read_exact(&mut back)
            .await
            .expect("stream read: no byte lost");
        assert_eq!(fnv1a(&back), fnv1a(&data), "echoed bytes differ");
        total += CHUNK as u64;
        round += 1;
        // Real time: paces the traffic, so that it flows all through the fault.
        sleep(Duration::from_millis(5)).await;
    }
    s.shutdown().await.ok();
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_under_streams_and_dials() {
    init_tracing();
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let n = node(&url, &format!("srv-{i}")).await;
        echo_forever(&n).await;
        servers.push(n);
    }
    let doomed = node(&url, "doomed").await;
    echo_forever(&doomed).await;
    let cli = Arc::new(node(&url, "cli").await);
    let mut events = cli.events();
    // Every node event of the dialer, from before the fault to the end.
    let seen: Arc<Mutex<Vec<NodeEvent>>> = Arc::default();
    let mut tally = cli.events();
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(e) = tally.recv().await {
                seen.lock().unwrap().push(e);
            }
        })
    };

    // 20 streams, 5 per server, flowing through the whole fault.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flows = Vec::new();
    for i in 0..STREAMS {
        let s = timeout(T, cli.connect(format!("srv-{}", i % SERVERS).as_str()))
            .await
            .expect("connect in time")
            .expect("connect");
        flows.push(tokio::spawn(flow(s, i as u64 + 1, stop.clone())));
    }
    // Dials by name all along: each a new stream and a 1-byte echo.
    let not_found = Arc::new(AtomicU64::new(0));
    let dial_errors = Arc::new(AtomicU64::new(0));
    let dials_ok = Arc::new(AtomicU64::new(0));
    let dialer = {
        let (cli, stop) = (cli.clone(), stop.clone());
        let (not_found, dial_errors, dials_ok) =
            (not_found.clone(), dial_errors.clone(), dials_ok.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let peer = format!("srv-{}", i % SERVERS);
                i += 1;
                match timeout(T, cli.connect(peer.as_str())).await {
                    Ok(Ok(mut s)) => {
                        s.write_all(b"z").await.expect("dial write");
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.expect("dial echo");
                        dials_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(Error::NotFound { .. })) => {
                        not_found.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "dial failed");
                        dial_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => panic!("a dial to {peer} hung"),
                }
                // Real time: paces the dials, so that they go on all through the fault.
                sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Traffic flows before the fault: a few dials by name got through.
    eventually(T, "dials before the fault", || async {
        dials_ok.load(Ordering::Relaxed) >= 5
    })
    .await;

    server.kill();
    node_event(&mut events, T, "RegistryUnavailable", |e| {
        matches!(e, NodeEvent::RegistryUnavailable { .. }).then_some(())
    })
    .await;
    // A peer dies while the registry is gone: no goodbye, no unpublish.
    drop(doomed);
    // Real time: the outage outlasts the ttl, so that the doomed peer's
    // record would have expired by the time Redis is back.
    sleep(TTL * 2).await;

    server.restart();
    let restarted = Instant::now();
    node_event(&mut events, T, "RegistryRestored", |e| {
        matches!(e, NodeEvent::RegistryRestored).then_some(())
    })
    .await;
    let restored_after = restarted.elapsed();
    // Every live peer is published again.
    let fresh = RedisRegistry::connect(&url).await.expect("connect");
    let ns = "resync".parse().expect("namespace");
    eventually(T, "every live peer published again", || async {
        let found = fresh.lookup(&ns, &Pattern::any()).await.expect("lookup");
        let names: Vec<&str> = found.iter().map(|r| r.name.as_str()).collect();
        if names == ["cli", "srv-0", "srv-1", "srv-2", "srv-3"] {
            Ok(Some(()))
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let republished_after = restarted.elapsed();
    node_event(&mut events, T, "PeerExpired for doomed", |e| {
        matches!(e, NodeEvent::PeerExpired { name, .. } if name.as_str() == "doomed").then_some(())
    })
    .await;
    let gone_after = restarted.elapsed();

    // Keep flowing a while longer: a late spurious event would show here.
    // Real time: a quiet window of two ttls.
    sleep(TTL * 2).await;
    stop.store(true, Ordering::Relaxed);
    let mut bytes = 0;
    for f in flows {
        bytes += timeout(T, f)
            .await
            .expect("stream ended")
            .expect("stream task");
    }
    timeout(T, dialer)
        .await
        .expect("dialer ended")
        .expect("dialer task");
    match cli.connect("doomed").await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("doomed must be gone, got {:?}", other.map(|_| "a stream")),
    }

    let mut expired_doomed = 0;
    let mut spurious = Vec::new();
    collector.abort();
    for e in seen.lock().unwrap().drain(..) {
        match e {
            NodeEvent::Lagged { .. } => spurious.push("lagged".into()),
            NodeEvent::PeerExpired { name, .. } if name.as_str() == "doomed" => expired_doomed += 1,
            NodeEvent::PeerExpired { name, .. } | NodeEvent::PeerLeft { name, .. } => {
                spurious.push(name.to_string())
            }
            NodeEvent::PeerJoined(r) if r.name.as_str() != "doomed" => {
                spurious.push(format!("joined {}", r.name))
            }
            _ => {}
        }
    }
    eprintln!(
        "redis restarted empty: RegistryRestored after {restored_after:?}, live records back after \
         {republished_after:?}, dead peer reported gone after {gone_after:?}; {STREAMS} streams moved \
         {bytes} bytes, {} dials ok, {} NotFound, {} other dial errors",
        dials_ok.load(Ordering::Relaxed),
        not_found.load(Ordering::Relaxed),
        dial_errors.load(Ordering::Relaxed),
    );
    assert_eq!(
        not_found.load(Ordering::Relaxed),
        0,
        "no NotFound for live peers"
    );
    assert_eq!(
        dial_errors.load(Ordering::Relaxed),
        0,
        "no failed dial to a live peer"
    );
    assert_eq!(
        expired_doomed, 1,
        "the dead peer is reported gone exactly once"
    );
    assert!(
        spurious.is_empty(),
        "no event about live peers: {spurious:?}"
    );
    assert!(bytes > 0);
    for s in servers {
        s.shutdown().await.expect("shutdown");
    }
    cli.shutdown().await.expect("shutdown");
}
