//! `PipeInterface`, a transport from outside masse with a scheme of its own,
//! passes masse's interface conformance suite and carries named streams
//! between nodes, alone or beside TCP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use masse::testkit::{InterfaceCase, InterfaceConformance};
use masse::{
    BindContext, ConnectContext, DynInterface, Error, InstanceId, Interface, MemoryRegistry, Node,
    PeerRecord, TcpInterface,
};
use masse_examples::pipe::{PIPE, PipeInterface};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// A fresh pipe name per case: the suite binds a new interface each time.
fn fresh() -> DynInterface {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Arc::new(PipeInterface::named(format!("conformance-{n}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_interface_conforms() {
    InterfaceConformance::new(|| async { fresh() }).run().await;
}

/// Cases run one by one too (a transport can give each its own test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_interface_cases_one_by_one() {
    let suite = InterfaceConformance::new(|| async { fresh() }).streams(50);
    for case in [InterfaceCase::HalfClose, InterfaceCase::Unreachable] {
        suite.run_case(case).await;
    }
}

fn ctx() -> (BindContext, ConnectContext) {
    let ns: masse::Namespace = "pipes".parse().unwrap();
    (
        BindContext::new(ns.clone(), "b".parse().unwrap(), InstanceId::random()),
        ConnectContext::new(ns, "a".parse().unwrap(), InstanceId::random()),
    )
}

#[tokio::test]
async fn a_taken_name_is_refused_and_a_gone_one_is_stale() {
    let (bind, connect) = ctx();
    let iface = PipeInterface::named("taken");
    let mut first = iface.bind(&bind).await.unwrap();
    match iface.bind(&bind).await {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        Err(e) => panic!("expected AddrInUse, got {e:?}"),
        Ok(_) => panic!("bound a pipe name twice"),
    }
    let ep = first.endpoints()[0].clone();
    assert_eq!(ep.to_string(), "pipe://taken");
    assert_eq!(ep.protocol(), &*PIPE);
    let peer = PeerRecord::new(
        "pipes".parse().unwrap(),
        "b".parse().unwrap(),
        InstanceId::random(),
    )
    .with_endpoint(ep.clone());
    first.close().await;
    let err = match iface.connect(&ep, &peer, &connect).await {
        Err(e) => e,
        Ok(_) => panic!("dialed a closed listener"),
    };
    assert!(err.is_stale_address(), "{err:?}");
    // The name is free again.
    let _again = iface.bind(&bind).await.unwrap();
    // Other schemes are not ours.
    let tcp: masse::Endpoint = "tcp://127.0.0.1:1".parse().unwrap();
    assert!(matches!(
        iface.connect(&tcp, &peer, &connect).await,
        Err(Error::Unsupported(_))
    ));
}

/// Two nodes talk by name over `pipe://`; a node with pipe and TCP is
/// reached by a pipe-only and a TCP-only dialer, each on its own transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_by_name_over_pipes() {
    let reg = MemoryRegistry::new();
    let start = |name: &str, pipe: bool, tcp: bool| {
        let mut b = Node::builder(name)
            .namespace("pipes-by-name")
            .registry(reg.clone());
        if pipe {
            b = b.interface(PipeInterface::new());
        }
        if tcp {
            b = b.interface(TcpInterface::new("127.0.0.1:0"));
        }
        b.start()
    };
    let server = start("server", true, true).await.unwrap();
    server.serve(|mut s| async move {
        let proto = s.protocol().to_string();
        let mut buf = [0u8; 4];
        if s.read_exact(&mut buf).await.is_ok() {
            let _ = s.write_all(format!("{proto}:").as_bytes()).await;
            let _ = s.write_all(&buf).await;
        }
    });
    let schemes: Vec<String> = server
        .record()
        .endpoints
        .iter()
        .map(|e| e.protocol().to_string())
        .collect();
    assert_eq!(schemes, ["pipe", "tcp"]);

    for (dialer, want) in [
        ("pipe-only", "pipe:ping"),
        ("tcp-only", "tcp:ping"),
        ("both", "pipe:ping"),
    ] {
        let node = start(dialer, dialer != "tcp-only", dialer != "pipe-only")
            .await
            .unwrap();
        let mut s = timeout(T, node.connect("server")).await.unwrap().unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut back = vec![0u8; want.len()];
        timeout(T, s.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), want, "{dialer}");
        drop(s);
        node.shutdown().await.unwrap();
    }
    server.shutdown().await.unwrap();
}
