//! Accepting through a registry outage: a TLS acceptor checks a dialer's
//! certificate against what its cache already knows before asking the
//! registry, so a known dialer still gets in while the registry is down; an
//! unknown one is refused with `RegistryUnavailable`, which its dialer
//! reports as such (not an EOF or a truncated handshake).

use std::time::Duration;

use masse::{MemoryRegistry, Node, RefuseCode, Registry, TlsInterface};
use masse_integration_tests::{FaultyRegistry, echo_forever, eventually, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn tls(name: &str, registry: impl Registry) -> masse::NodeBuilder {
    init_tracing();
    Node::builder(name)
        .namespace("outage-accept")
        .registry(registry)
        .interface(TlsInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_secs(5))
}

async fn echo(from: &Node, to: &str) -> masse::Result<()> {
    let mut s = from.connect(to).await?;
    s.write_all(b"ok").await?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await?;
    assert_eq!(&b, b"ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_dialer_gets_in_during_an_outage_and_a_stranger_is_told_why() {
    let reg = MemoryRegistry::new();
    let faulty = FaultyRegistry::new(reg.clone());
    let server = tls("server", faulty.clone()).start().await.unwrap();
    echo_forever(&server).await;
    let known = tls("known", reg.clone()).start().await.unwrap();
    // The server checks (and caches) the known dialer's certificate.
    timeout(T, echo(&known, "server")).await.unwrap().unwrap();

    faulty.set_down(true);
    // Known from the cache: still accepted.
    timeout(T, echo(&known, "server")).await.unwrap().unwrap();

    // A dialer the server has never seen, while it cannot ask the registry.
    let stranger = tls("stranger", reg.clone()).start().await.unwrap();
    let s = timeout(T, stranger.connect("server"))
        .await
        .unwrap()
        .unwrap();
    match timeout(T, s.established()).await.unwrap() {
        Err(e) => assert_eq!(
            e.refuse_code(),
            Some(RefuseCode::RegistryUnavailable),
            "{e}"
        ),
        Ok(()) => panic!("accepted a certificate nobody could check"),
    }

    // The registry is back: the stranger gets in (retried: the server's
    // cache may hold the failed lookup until its retry interval passes).
    faulty.set_down(false);
    eventually(
        T,
        "the stranger accepted once the registry is back",
        || async { echo(&stranger, "server").await.is_ok() },
    )
    .await;
}
