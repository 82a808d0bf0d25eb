//! Nodes over Unix domain sockets: by name, with the operating system's word
//! on who dialed, through a restart, and beside TCP.
#![cfg(unix)]
#![allow(clippy::print_stderr)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use masse::{
    BoxIo, Error, MemoryRegistry, Node, NodeBuilder, PeerCredentials, Protocol, RefuseCode,
    StreamContext, TcpInterface, UnixInterface,
};
use masse_integration_tests::{FaultyRegistry, echo_forever, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn unix_node(name: &str, ns: &str, reg: &MemoryRegistry, dir: &std::path::Path) -> NodeBuilder {
    init_tracing();
    Node::builder(name)
        .namespace(ns)
        .registry(reg.clone())
        .interface(UnixInterface::in_dir(dir))
        .ttl(Duration::from_secs(2))
}

fn own_uid(dir: &std::path::Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).unwrap())
}

async fn echo_once(node: &Node, to: &str, data: &[u8]) -> masse::PeerStream {
    let mut s = timeout(T, node.connect(to)).await.unwrap().unwrap();
    s.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    timeout(T, s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, data);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_talk_by_name_and_see_who_dialed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = MemoryRegistry::new();
    let seen: Arc<Mutex<Vec<Option<PeerCredentials>>>> = Arc::default();
    let wrapper_saw = seen.clone();
    let a = unix_node("a", "unix-talk", &reg, dir.path())
        .start()
        .await
        .unwrap();
    let b = unix_node("b", "unix-talk", &reg, dir.path())
        .wrap(move |io: BoxIo, ctx: &StreamContext| {
            wrapper_saw.lock().unwrap().push(ctx.peer_credentials);
            async move { Ok(io) }
        })
        .start()
        .await
        .unwrap();
    let b_ep = b.record().endpoints[0].clone();
    assert_eq!(*b_ep.protocol(), Protocol::UNIX);
    assert!(b_ep.unix_path().unwrap().starts_with(dir.path()));
    let mut inbound = b.incoming();

    let mut s = timeout(T, a.connect("b")).await.unwrap().unwrap();
    assert_eq!(*s.protocol(), Protocol::UNIX);
    assert_eq!(
        s.peer_credentials(),
        None,
        "known on the accepting side only"
    );
    s.write_all(b"ping").await.unwrap();
    let mut r = timeout(T, inbound.accept()).await.unwrap().unwrap();
    let creds = r.peer_credentials().expect("the acceptor knows who dialed");
    assert_eq!(creds.uid, own_uid(dir.path()));
    assert_eq!(creds.pid, Some(std::process::id() as i32));
    assert_eq!(seen.lock().unwrap().as_slice(), &[Some(creds)]);
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await.unwrap();
    r.write_all(b"pong").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // And the other way.
    echo_forever(&a).await;
    drop(echo_once(&b, "a", b"back").await);

    drop((s, r));
    let a_path = a.record().endpoints[0].unix_path().unwrap().to_owned();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(!a_path.exists(), "shutdown removes the socket file");
}

/// A wrapper on the acceptor that admits only another user: the dialer's
/// stream fails with the refusal, naming the wrapper's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapper_refuses_by_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let reg = MemoryRegistry::new();
    let uid = own_uid(dir.path());
    let guarded = unix_node("guarded", "unix-guard", &reg, dir.path())
        .wrap(move |io: BoxIo, ctx: &StreamContext| {
            let allowed = ctx.peer_credentials.is_some_and(|c| c.uid != uid);
            async move {
                if allowed {
                    Ok(io)
                } else {
                    Err(Error::Unauthorized {
                        reason: format!("uid {uid} may not connect"),
                    })
                }
            }
        })
        .start()
        .await
        .unwrap();
    echo_forever(&guarded).await;
    let dialer = unix_node("dialer", "unix-guard", &reg, dir.path())
        .start()
        .await
        .unwrap();
    let s = timeout(T, dialer.connect("guarded"))
        .await
        .unwrap()
        .unwrap();
    match timeout(T, s.established())
        .await
        .unwrap()
        .map_err(Error::into_root)
    {
        Err(Error::Refused {
            code: RefuseCode::WrapperFailed,
            reason,
        }) => assert!(
            reason.contains(&format!("uid {uid} may not connect")),
            "{reason}"
        ),
        other => panic!("expected a WrapperFailed refusal, got {other:?}"),
    }
    drop(s);
    dialer.shutdown().await.unwrap();
    guarded.shutdown().await.unwrap();
}

/// A node that dies and comes back listens at a new socket path (its
/// instance is in the file name); a dialer whose cache still has the old
/// one (its watch hears nothing) gets NotFound from the vanished file,
/// looks the name up again and reaches the new instance on the same
/// connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_reached_through_a_stale_cache() {
    let dir = tempfile::tempdir().unwrap();
    let reg = MemoryRegistry::new();
    let dialer = Node::builder("dialer")
        .namespace("unix-restart")
        .registry(FaultyRegistry::deaf(reg.clone()))
        .interface(UnixInterface::in_dir(dir.path()))
        .start()
        .await
        .unwrap();
    let svc = unix_node("svc", "unix-restart", &reg, dir.path())
        .start()
        .await
        .unwrap();
    echo_forever(&svc).await;
    drop(echo_once(&dialer, "svc", b"1").await);
    drop(echo_once(&dialer, "svc", b"2").await);
    assert!(dialer.stats().cache.hits >= 1, "{:?}", dialer.stats());
    let old = svc.record().endpoints[0].unix_path().unwrap().to_owned();

    svc.shutdown().await.unwrap();
    assert!(!old.exists());
    let svc2 = unix_node("svc", "unix-restart", &reg, dir.path())
        .start()
        .await
        .unwrap();
    echo_forever(&svc2).await;
    let started = tokio::time::Instant::now();
    let s = echo_once(&dialer, "svc", b"3").await;
    let recovered = started.elapsed();
    assert_eq!(s.peer_instance(), svc2.instance());
    assert_eq!(dialer.stats().stale_retries, 1, "{:?}", dialer.stats());
    eprintln!("RECOVERY unix restart: reached the new instance in {recovered:?}");
    drop(s);
    dialer.shutdown().await.unwrap();
    svc2.shutdown().await.unwrap();
}

/// A node with TCP and Unix sockets: a TCP-only dialer reaches it over TCP,
/// a Unix-only one over its socket, from the same record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_both_is_reached_by_either_kind_of_dialer() {
    let dir = tempfile::tempdir().unwrap();
    let reg = MemoryRegistry::new();
    let both = unix_node("both", "unix-mixed", &reg, dir.path())
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    both.serve(|mut s| async move {
        let proto = s.protocol().to_string();
        let _ = s.write_all(proto.as_bytes()).await;
    });
    let schemes: Vec<String> = both
        .record()
        .endpoints
        .iter()
        .map(|e| e.protocol().to_string())
        .collect();
    assert_eq!(schemes, ["unix", "tcp"]);
    let tcp_only = Node::builder("tcp-only")
        .namespace("unix-mixed")
        .registry(reg.clone())
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let unix_only = unix_node("unix-only", "unix-mixed", &reg, dir.path())
        .start()
        .await
        .unwrap();
    for (dialer, want) in [(&tcp_only, "tcp"), (&unix_only, "unix")] {
        let mut s = timeout(T, dialer.connect("both")).await.unwrap().unwrap();
        let mut got = String::new();
        timeout(T, s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, want);
    }
    tcp_only.shutdown().await.unwrap();
    unix_only.shutdown().await.unwrap();
    both.shutdown().await.unwrap();
}
