//! Many concurrent streams from one node to one peer over QUIC: past one
//! connection's stream limit the dialer opens more connections, freed
//! streams give their credit back, and with every allowed connection full a
//! connect is refused as busy at once.

#![allow(clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use masse_core::{Error, MemoryRegistry, Node, PeerStream, RefuseCode};
use masse_quic::QuicInterface;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STREAMS: usize = 2000;
/// How long closed streams may stay counted.
const DRAIN: Duration = Duration::from_secs(10);

/// The two tests run one after the other: 2 000 streams flooding loopback
/// UDP beside the credit test made the credit test lose a stream's credit
/// for over 10 s about once in ten runs on two cores (see its comments).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(name: &str, ns: &str, reg: &MemoryRegistry, quic: QuicInterface) -> Node {
    Node::builder(name)
        .namespace(ns)
        .registry(reg.clone())
        .interface(quic)
        .connect_timeout(CONNECT_TIMEOUT)
        .ttl(Duration::from_secs(5))
        .start()
        .await
        .unwrap()
}

/// Echoes every stream `node` accepts until its end.
async fn echo_forever(node: &Node) {
    let mut incoming = node.incoming();
    tokio::spawn(async move {
        while let Some(mut s) = incoming.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// Opens `n` streams to `peer` at once, each echoing one byte; returns
/// them all still open, and the slowest connect-and-echo.
async fn open_all(node: &Arc<Node>, peer: &str, n: usize) -> (Vec<PeerStream>, Duration) {
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (node, peer) = (node.clone(), peer.to_owned());
        tasks.spawn(async move {
            let started = Instant::now();
            let mut s = node.connect(&peer).await?;
            let byte = (i % 251) as u8;
            s.write_all(&[byte]).await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            assert_eq!(b[0], byte);
            Ok::<_, Error>((s, started.elapsed()))
        });
    }
    let (mut streams, mut slowest) = (Vec::new(), Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        let (s, took) = done
            .unwrap()
            .unwrap_or_else(|e| panic!("stream failed: {e}"));
        streams.push(s);
        slowest = slowest.max(took);
    }
    (streams, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_streams_to_one_peer_twice() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let reg = MemoryRegistry::new();
    let server = start("echo", "qs-scale", &reg, QuicInterface::new("127.0.0.1:0")).await;
    echo_forever(&server).await;
    let quic = QuicInterface::new("127.0.0.1:0");
    let dialer = Arc::new(start("dialer", "qs-scale", &reg, quic.clone()).await);

    for round in 0..2 {
        let started = Instant::now();
        let (streams, slowest) = open_all(&dialer, "echo", STREAMS).await;
        eprintln!(
            "round {round}: {STREAMS} concurrent streams in {:?}, slowest {slowest:?}, per connection {:?}",
            started.elapsed(),
            quic.pooled_streams()
        );
        assert_eq!(streams.len(), STREAMS);
        assert!(slowest < CONNECT_TIMEOUT / 2, "{slowest:?}");
        // 1 024 streams per connection by default: two connections.
        let per_conn = quic.pooled_streams();
        assert_eq!(per_conn.len(), 1, "{per_conn:?}");
        assert_eq!(per_conn[0].iter().sum::<usize>(), STREAMS, "{per_conn:?}");
        assert!(per_conn[0].len() >= 2, "{per_conn:?}");
        assert!(per_conn[0].len() <= QuicInterface::DEFAULT_MAX_CONNECTIONS_PER_PEER);
        drop(streams);
        common::drained(&quic, DRAIN).await;
    }
}

/// A node that has a peer's 16 streams open on the 2 connections it may
/// hold (8 streams each), dialer and echo server.
async fn full_pool(ns: &str) -> (Node, Arc<Node>, QuicInterface, Vec<PeerStream>) {
    let reg = MemoryRegistry::new();
    let server = start(
        "echo",
        ns,
        &reg,
        QuicInterface::new("127.0.0.1:0").max_concurrent_streams(8),
    )
    .await;
    echo_forever(&server).await;
    let quic = QuicInterface::new("127.0.0.1:0").max_connections_per_peer(2);
    let dialer = Arc::new(start("dialer", ns, &reg, quic.clone()).await);
    let (streams, _) = open_all(&dialer, "echo", 16).await;
    assert_eq!(quic.pooled_streams(), vec![vec![8, 8]]);
    (server, dialer, quic, streams)
}

/// A 17th connect to a full pool is refused as busy at once.
async fn refused_as_busy(dialer: &Node) {
    let started = Instant::now();
    match timeout(CONNECT_TIMEOUT, dialer.connect("echo")).await {
        Ok(Err(e)) => {
            assert_eq!(e.refuse_code(), Some(RefuseCode::Busy), "{e:?}");
            assert!(
                matches!(
                    e.root(),
                    Error::Refused {
                        code: RefuseCode::Busy,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.is_transient());
        }
        Ok(Ok(_)) => panic!("a 17th stream opened past 2 connections of 8"),
        Err(_) => panic!("the connect sat out its timeout"),
    }
    eprintln!("refused as busy after {:?}", started.elapsed());
}

/// Closes `streams`, then opens 16 again: the places come back.
async fn reopen_after_closing(
    dialer: &Node,
    quic: &QuicInterface,
    streams: Vec<PeerStream>,
) -> Vec<PeerStream> {
    drop(streams);
    common::drained(quic, DRAIN).await;
    // The peer grants the credit back once it has our acknowledgement of
    // its end of each stream (delayed up to 25 ms) and a round trip more;
    // until then a connect is refused as busy, and is retried.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut reopened = Vec::new();
    while reopened.len() < 16 {
        match dialer.connect("echo").await {
            Ok(mut s) => {
                s.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                reopened.push(s);
            }
            Err(e) if e.refuse_code() == Some(RefuseCode::Busy) && Instant::now() < deadline => {
                // Back-off of a retry until the credit is back.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!(
                "stream {} of 16 again: {e:?}; streams per connection {:?}",
                reopened.len() + 1,
                quic.pooled_streams()
            ),
        }
    }
    assert_eq!(quic.pooled_streams(), vec![vec![8, 8]]);
    reopened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_allowed_connection_full_a_connect_is_refused_as_busy_at_once() {
    let _alone = ONE_AT_A_TIME.lock().await;
    masse_core::testkit::fixtures::init_tracing();
    let (_server, dialer, quic, streams) = full_pool("qs-busy").await;
    refused_as_busy(&dialer).await;
    // Our side lets go of every stream that closes.
    drop(streams);
    common::drained(&quic, DRAIN).await;
}

/// One stream of a full connection closes: its place comes back, though
/// it is less than the eighth of the limit past which quinn announces
/// credit by itself (the dialer asks for it; see `listener::grant_credit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_closed_stream_of_a_full_connection_gives_its_place_back() {
    let _alone = ONE_AT_A_TIME.lock().await;
    masse_core::testkit::fixtures::init_tracing();
    let reg = MemoryRegistry::new();
    let server = start(
        "echo",
        "qs-one",
        &reg,
        QuicInterface::new("127.0.0.1:0").max_concurrent_streams(8),
    )
    .await;
    echo_forever(&server).await;
    let quic = QuicInterface::new("127.0.0.1:0").max_connections_per_peer(1);
    let dialer = Arc::new(start("dialer", "qs-one", &reg, quic.clone()).await);
    let (mut streams, _) = open_all(&dialer, "echo", 8).await;
    assert_eq!(quic.pooled_streams(), vec![vec![8]]);
    refused_as_busy(&dialer).await;

    drop(streams.pop());
    common::until_streams(&quic, "one stream closed", DRAIN, |c| c == [vec![7]]).await;
    let started = Instant::now();
    let deadline = started + CONNECT_TIMEOUT;
    let mut s = loop {
        match dialer.connect("echo").await {
            Ok(s) => break s,
            // The peer frees the stream a round trip after we let go.
            Err(e) if e.refuse_code() == Some(RefuseCode::Busy) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!(
                "the 8th stream again: {e:?}; streams per connection {:?}",
                quic.pooled_streams()
            ),
        }
    };
    eprintln!(
        "the closed stream's place back after {:?}",
        started.elapsed()
    );
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(quic.pooled_streams(), vec![vec![8]]);
}

/// After 16 streams on a full pool close, 16 open again: every place comes
/// back. Before the dialer asked for held-back credit, one connection
/// stayed a stream short (`[[7, 8]]`) in about one run in five: the last of
/// its streams to be freed was under quinn's eighth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_streams_give_every_place_back() {
    let _alone = ONE_AT_A_TIME.lock().await;
    masse_core::testkit::fixtures::init_tracing();
    let (_server, dialer, quic, streams) = full_pool("qs-reopen").await;
    reopen_after_closing(&dialer, &quic, streams).await;
}
