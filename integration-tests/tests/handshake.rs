//! The handshake on real loopback sockets: a dialer whose cache still names
//! an instance that lost its name, or that restarted on the same address,
//! reaches the name's current holder on its first try with the data it had
//! already written; a wrapper on the accepting side refuses with its reason;
//! data written right after `connect` arrives, and a refusal fails the first
//! read with its typed error.

#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use masse::handshake::{self, Hello, Message};
use masse::{
    Error, InstanceId, MemoryRegistry, NamePolicy, Node, NodeEvent, RefuseCode, TcpInterface,
};
use masse_integration_tests::{FaultyRegistry, echo_forever, node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// A dialer whose cache does not follow the registry's events.
async fn deaf_dialer(namespace: &str, reg: &MemoryRegistry) -> Node {
    Node::builder("dialer")
        .namespace(namespace)
        .registry(FaultyRegistry::deaf(reg.clone()))
        .interface(TcpInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_secs(2))
        .start()
        .await
        .expect("dialer starts")
}

/// Writes `msg` right after connecting, then reads the echo: the stream's
/// peer instance, once the echo is back.
async fn echo_once(from: &Node, to: &str, msg: &[u8]) -> masse::Result<InstanceId> {
    let mut s = from.connect(to).await?;
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(s.peer_instance())
}

/// Waits for `NameLost` on `events` (subscribed before the takeover).
async fn name_lost(mut events: impl futures::Stream<Item = NodeEvent> + Unpin) {
    timeout(T, async {
        while let Some(ev) = events.next().await {
            if let NodeEvent::NameLost { .. } = ev {
                return;
            }
        }
        panic!("the node's events ended before NameLost");
    })
    .await
    .expect("NameLost within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_reaches_the_new_holder_after_a_takeover() {
    let reg = MemoryRegistry::new();
    let old = node("svc", "hs-takeover", &reg).start().await.unwrap();
    echo_forever(&old).await;
    let dialer = deaf_dialer("hs-takeover", &reg).await;
    assert_eq!(
        echo_once(&dialer, "svc", b"first").await.unwrap(),
        old.instance()
    );

    // Another instance takes the name over, on another port; the old one
    // learns it from its watch and stops accepting for the name.
    let events = old.events();
    let new = node("svc", "hs-takeover", &reg)
        .name_policy(NamePolicy::Takeover)
        .start()
        .await
        .unwrap();
    echo_forever(&new).await;
    name_lost(events).await;
    let refused_before = old.stats().handshakes_rejected;

    // The dialer's cache still names the old instance: its first connect
    // reaches the new one, with the bytes it wrote before the answer.
    let started = Instant::now();
    let reached = echo_once(&dialer, "svc", b"after the takeover")
        .await
        .expect("the first try after the takeover works");
    eprintln!(
        "takeover: connect + echo through the stale record took {:?}",
        started.elapsed()
    );
    assert_eq!(reached, new.instance());
    assert_eq!(dialer.stats().stale_retries, 1, "{:?}", dialer.stats());
    assert_eq!(
        old.stats().handshakes_rejected,
        refused_before + 1,
        "the old instance refused the stream (NameLost)"
    );
    // What the old instance answers, byte for byte: NameLost.
    let mut raw = tokio::net::TcpStream::connect(old.record().endpoints[0].socket_addr().unwrap())
        .await
        .unwrap();
    let hello = Hello::new(
        "hs-takeover".parse().unwrap(),
        "x".parse().unwrap(),
        InstanceId::random(),
        "svc".parse().unwrap(),
    )
    .expecting(old.instance());
    handshake::write_message(&mut raw, &Message::Hello(hello))
        .await
        .unwrap();
    match handshake::read_message(&mut raw, T).await.unwrap() {
        Message::Refuse(r) => assert_eq!(r.code, RefuseCode::NameLost, "{r:?}"),
        other => panic!("expected a NameLost refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_on_the_same_address_is_reached_on_the_first_try() {
    let reg = MemoryRegistry::new();
    let first = node("svc", "hs-restart", &reg).start().await.unwrap();
    echo_forever(&first).await;
    let addr = first.record().endpoints[0].socket_addr().unwrap();
    let dialer = deaf_dialer("hs-restart", &reg).await;
    assert_eq!(
        echo_once(&dialer, "svc", b"one").await.unwrap(),
        first.instance()
    );
    first.shutdown().await.unwrap();
    // `shutdown` returns once the listener's socket is closed.
    let second = Node::builder("svc")
        .namespace("hs-restart")
        .registry(reg.clone())
        .interface(TcpInterface::new(addr.to_string()))
        .ttl(Duration::from_secs(2))
        .start()
        .await
        .expect("the port is free again");
    echo_forever(&second).await;
    // The cached record has the right address and the wrong instance: the
    // new one refuses (WrongInstance), the dialer looks again and replays.
    let started = Instant::now();
    let reached = echo_once(&dialer, "svc", b"two").await.unwrap();
    eprintln!(
        "restart on the same port: connect + echo through the stale record took {:?}",
        started.elapsed()
    );
    assert_eq!(reached, second.instance());
    assert_eq!(dialer.stats().stale_retries, 1, "{:?}", dialer.stats());
}

/// An accepting wrapper that reads a 4-byte token first and refuses any
/// other than `good`.
fn token_check() -> impl masse::Wrapper {
    |mut io: masse::BoxIo, _ctx: &masse::StreamContext| async move {
        let mut token = [0u8; 4];
        io.read_exact(&mut token).await?;
        if &token != b"good" {
            return Err(Error::Unauthorized {
                reason: format!("bad token {:?}", String::from_utf8_lossy(&token)),
            });
        }
        Ok(io)
    }
}

/// A dialing wrapper that writes `token` first.
fn token(token: &'static [u8; 4]) -> impl masse::Wrapper {
    move |mut io: masse::BoxIo, ctx: &masse::StreamContext| {
        let outbound = ctx.direction == masse::Direction::Outbound;
        async move {
            if outbound {
                io.write_all(token).await?;
            }
            Ok(io)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapper_refuses_before_the_answer_with_its_reason() {
    let reg = MemoryRegistry::new();
    let server = node("guarded", "hs-wrap", &reg)
        .wrap(token_check())
        .start()
        .await
        .unwrap();
    echo_forever(&server).await;
    let bad = node("bad", "hs-wrap", &reg)
        .wrap(token(b"nope"))
        .start()
        .await
        .unwrap();
    let good = node("good", "hs-wrap", &reg)
        .wrap(token(b"good"))
        .start()
        .await
        .unwrap();

    let s = timeout(T, bad.connect("guarded")).await.unwrap().unwrap();
    match timeout(T, s.established())
        .await
        .unwrap()
        .map_err(Error::into_root)
    {
        Err(Error::Refused {
            code: RefuseCode::WrapperFailed,
            reason,
        }) => assert!(reason.contains("bad token \"nope\""), "{reason}"),
        other => panic!("expected WrapperFailed, got {other:?}"),
    }
    // The same refusal fails the first read of a stream that did not ask.
    let mut s = timeout(T, bad.connect("guarded")).await.unwrap().unwrap();
    let mut buf = [0u8; 1];
    let err = timeout(T, s.read(&mut buf)).await.unwrap().unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("the read error carries a masse::Error: {err:?}"))
        .root();
    assert!(
        matches!(
            inner,
            Error::Refused {
                code: RefuseCode::WrapperFailed,
                ..
            }
        ),
        "{inner:?}"
    );

    // The right token passes, and data flows both ways.
    let reached = timeout(T, echo_once(&good, "guarded", b"hello"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reached, server.instance());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_before_the_answer_arrives_in_order() {
    let reg = MemoryRegistry::new();
    let server = node("echo", "hs-pipe", &reg).start().await.unwrap();
    echo_forever(&server).await;
    let client = node("client", "hs-pipe", &reg).start().await.unwrap();
    // Several writes before any read, then everything back in order.
    let mut s = client.connect("echo").await.unwrap();
    let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
    for c in &chunks {
        s.write_all(c).await.unwrap();
    }
    let want: Vec<u8> = chunks.concat();
    let mut got = vec![0u8; want.len()];
    timeout(T, s.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, want);
    assert_eq!(s.peer_instance(), server.instance());
    timeout(T, s.established()).await.unwrap().unwrap();

    // A refusal (unknown service) fails the first read with its code.
    let mut s = client.connect_service("echo", "nope").await.unwrap();
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 1];
    let err = timeout(T, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let refused = Arc::new(err);
    assert!(
        matches!(
            refused
                .get_ref()
                .and_then(|e| e.downcast_ref::<Error>())
                .map(Error::root),
            Some(Error::Refused {
                code: RefuseCode::NoSuchService,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_handshake_messages_go_out_when_nobody_writes() {
    // The dialer's Hello waits for the first data, and the acceptor's Welcome
    // for the first reply; if neither side's application does anything, both
    // still go out (after a millisecond), so the stream opens on both ends.
    let reg = MemoryRegistry::new();
    let server = node("quiet", "hs-quiet", &reg).start().await.unwrap();
    let mut incoming = server.incoming();
    let client = node("client", "hs-quiet", &reg).start().await.unwrap();
    let s = client.connect("quiet").await.unwrap();
    // The client neither writes nor reads: the acceptor still gets the stream.
    let accepted = timeout(T, incoming.accept()).await.unwrap().unwrap();
    assert_eq!(accepted.peer().as_str(), "client");
    // The server neither writes nor reads: the client still gets the answer.
    timeout(T, s.established()).await.unwrap().unwrap();
    assert_eq!(s.peer_instance(), server.instance());
    // And after a while of silence, data still flows both ways.
    // Real time: a silence well past the 1 ms the held-back messages wait.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut s, mut accepted) = (s, accepted);
    s.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(T, accepted.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"late");
    accepted.write_all(b"back").await.unwrap();
    timeout(T, s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"back");
}
