//! A node's stats served to other nodes: `NodeBuilder::expose_stats`,
//! `Node::remote_stats`, over real loopback TCP.

use std::time::Duration;

use masse::metrics::Histogram;
use masse::{Error, MemoryRegistry, NodeStats, RefuseCode, STATS_SERVICE};
use masse_integration_tests::node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_stats_reports_the_peers_counters_after_traffic() {
    let reg = MemoryRegistry::new();
    let server = node("server", "t-stats", &reg)
        .expose_stats(true)
        .start()
        .await
        .unwrap();
    let client = std::sync::Arc::new(node("client", "t-stats", &reg).start().await.unwrap());
    assert!(
        server.record().offers(STATS_SERVICE),
        "{:?}",
        server.record()
    );

    let mut inbound = server.incoming();
    let mut s = client.connect("server").await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut r = timeout(T, inbound.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await.unwrap();
    r.write_all(b"pong!").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();

    // The future is Send: a dashboard polls its peers from spawned tasks.
    let c = client.clone();
    let remote = tokio::spawn(async move { timeout(T, c.remote_stats("server")).await })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The traffic stream and the stats stream itself.
    assert_eq!(remote.streams_inbound, 2, "{remote:?}");
    assert_eq!(remote.streams_outbound, 0, "{remote:?}");
    assert_eq!(remote.bytes_in, 4, "{remote:?}");
    assert_eq!(remote.bytes_out, 5, "{remote:?}");
    assert_eq!(remote.streams_open, 2, "{remote:?}");
    // The counters the peer reports are its own, read at the time.
    let local = server.stats();
    assert_eq!(local.streams_inbound, remote.streams_inbound);
    assert!(local.bytes_out >= remote.bytes_out);

    // The stats stream never reached the application.
    assert!(
        timeout(Duration::from_millis(300), inbound.accept())
            .await
            .is_err(),
        "the stats stream must not show up in incoming()"
    );

    // The dialer timed each step of its two dials.
    let mine = client.stats();
    assert_eq!(mine.connects_ok, 2, "{mine:?}");
    assert_eq!(mine.dial_lookup.count(), 2, "{mine:?}");
    assert_eq!(mine.dial_connect.count(), 2, "{mine:?}");
    assert_eq!(mine.dial_handshake.count(), 2, "{mine:?}");

    // Its own metrics text carries them.
    let text = client.metrics_text();
    assert!(
        text.contains(
            "masse_node_dial_step_duration_seconds_count{namespace=\"t-stats\",peer=\"client\",step=\"connect\"} 2\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "masse_node_dials_total{namespace=\"t-stats\",peer=\"client\",outcome=\"ok\"} 2\n"
        ),
        "{text}"
    );

    drop((s, r));
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_switch_refuses_with_no_such_service() {
    let reg = MemoryRegistry::new();
    let quiet = node("quiet", "t-stats-off", &reg).start().await.unwrap();
    let client = node("client", "t-stats-off", &reg).start().await.unwrap();
    assert!(!quiet.record().offers(STATS_SERVICE));
    match timeout(T, client.remote_stats("quiet")).await.unwrap() {
        Err(e) => assert_eq!(e.refuse_code(), Some(RefuseCode::NoSuchService), "{e:?}"),
        Ok(s) => panic!("expected NoSuchService, got {s:?}"),
    }
    match client.remote_stats("nobody").await {
        Err(Error::NotFound { name, .. }) => assert_eq!(name, "nobody"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    client.shutdown().await.unwrap();
    quiet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_secret_protects_the_stats_service() {
    let secret = b"correct horse battery staple";
    let reg = MemoryRegistry::new();
    let server = node("server", "t-stats-secret", &reg)
        .secret(secret)
        .expose_stats(true)
        .start()
        .await
        .unwrap();
    let friend = node("friend", "t-stats-secret", &reg)
        .secret(secret)
        .start()
        .await
        .unwrap();
    let intruder = node("intruder", "t-stats-secret", &reg)
        .start()
        .await
        .unwrap();

    let stats = timeout(T, friend.remote_stats("server"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.streams_inbound, 1, "{stats:?}");

    match timeout(T, intruder.remote_stats("server"))
        .await
        .unwrap()
        .map_err(Error::into_root)
    {
        Err(Error::Unauthorized { .. }) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // The refused attempt was not served: still one stats stream.
    assert_eq!(server.stats().streams_inbound, 1);

    for n in [intruder, friend, server] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stats_answer_is_a_clean_error() {
    let reg = MemoryRegistry::new();
    // A fake stats server: it lists the service and answers it itself.
    let fake = node("fake", "t-stats-bad", &reg)
        .service(STATS_SERVICE)
        .shutdown_grace(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = node("client", "t-stats-bad", &reg)
        .connect_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap();

    let answers: [&[u8]; 4] = [
        b"{\"streams_open\": \"many\"",
        b"not json at all \xff\xfe",
        b"[1, 2, 3]",
        b"",
    ];
    for answer in answers {
        fake.serve_service(STATS_SERVICE, move |mut s| async move {
            let _ = s.write_all(answer).await;
            let _ = s.shutdown().await;
        });
        match timeout(T, client.remote_stats("fake")).await.unwrap() {
            Err(Error::Protocol { reason }) => {
                assert!(reason.contains("stats"), "{reason}");
            }
            other => panic!("{answer:?}: expected a protocol error, got {other:?}"),
        }
    }

    // Too long: more than 64 KiB, even if it were valid.
    fake.serve_service(STATS_SERVICE, |mut s| async move {
        let _ = s.write_all(&vec![b' '; 100 * 1024]).await;
        let _ = s.shutdown().await;
    });
    match timeout(T, client.remote_stats("fake")).await.unwrap() {
        Err(Error::Protocol { reason }) => assert!(reason.contains("longer"), "{reason}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }

    // Never answers: the connect timeout ends the wait.
    fake.serve_service(STATS_SERVICE, |mut s| async move {
        let _ = s.write_all(b"{").await;
        // Real time: a peer that stays silent past the dialer's timeout.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    match timeout(T, client.remote_stats("fake")).await.unwrap() {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }

    // A newer node's document with fields this version does not know, and
    // without some it does: read all the same.
    fake.serve_service(STATS_SERVICE, |mut s| async move {
        let doc = br#"{"streams_open": 3, "bytes_in": 9, "from_the_future": {"x": 1}, "registry_latency_us": 1500}"#;
        let _ = s.write_all(doc).await;
        let _ = s.shutdown().await;
    });
    let got = timeout(T, client.remote_stats("fake"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.streams_open, 3);
    assert_eq!(got.bytes_in, 9);
    assert_eq!(got.registry_latency, Some(Duration::from_micros(1500)));
    assert_eq!(got.dial_lookup, Histogram::default());
    assert_eq!(got.connects_ok, NodeStats::default().connects_ok);

    client.shutdown().await.unwrap();
    fake.shutdown().await.unwrap();
}
