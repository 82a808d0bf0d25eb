//! Stale addresses on real loopback sockets: a dialer whose cache still holds
//! an address the peer left (silent, squatted by another TLS key, or held by
//! a program that accepts and never answers) looks the name up once more and
//! reaches the peer where it is now, with the data it had written.
//!
//! Each test prints the measured time to recover; the bounds asserted are the
//! issue's (connect or handshake timeout plus one lookup), with slack for a
//! loaded machine.

#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use masse::{
    Endpoint, InstanceId, MemoryRegistry, NamePolicy, Node, NodeBuilder, PeerRecord, Protocol,
    Registry, TcpInterface, TlsInterface,
};
use masse_integration_tests::{FaultyRegistry, echo_forever, init_tracing, node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A loopback address where new connections go unanswered, like a host that
/// left the network: a listener with a backlog of 1 whose accept queue is
/// filled and never drained, so the kernel drops further SYNs. Keep the
/// returned values alive.
async fn silent_address() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        match timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            // Unanswered: the queue is full, the address is silent.
            Err(_) => return (addr, listener, held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// A dialer on `reg` that does not follow the registry's events, so its
/// cache keeps whatever it looked up, with a short connect timeout.
fn deaf(name: &str, ns: &str, reg: &MemoryRegistry) -> NodeBuilder {
    init_tracing();
    Node::builder(name)
        .namespace(ns)
        .registry(FaultyRegistry::deaf(reg.clone()))
        .ttl(Duration::from_secs(3))
        .connect_timeout(CONNECT_TIMEOUT)
        .handshake_timeout(CONNECT_TIMEOUT)
}

/// Makes `dialer` cache `stale` for its name, then puts `fresh` back in the
/// registry: the dialer's next connect starts from the stale address.
async fn cache_stale(reg: &MemoryRegistry, dialer: &Node, stale: &PeerRecord, fresh: &PeerRecord) {
    let ttl = Duration::from_secs(30);
    reg.publish(stale, ttl, NamePolicy::Takeover).await.unwrap();
    let seen = dialer.peers(stale.name.as_str()).await.unwrap();
    assert_eq!(
        seen[0].endpoints, stale.endpoints,
        "the dialer cached the stale record"
    );
    reg.publish(fresh, ttl, NamePolicy::Takeover).await.unwrap();
}

/// A TCP peer called "mover" that echoes, and a dialer (on a deaf watch)
/// whose cache says the peer is still at `old`, its former TCP address.
async fn moved_tcp_peer(ns: &str, reg: &MemoryRegistry, old: SocketAddr) -> (Node, Node) {
    let peer = node("mover", ns, reg).start().await.unwrap();
    echo_forever(&peer).await;
    let dialer = deaf("dialer", ns, reg)
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let mut stale = peer.record();
    stale.endpoints = vec![Endpoint::new(Protocol::TCP, old)];
    cache_stale(reg, &dialer, &stale, &peer.record()).await;
    (peer, dialer)
}

/// Connects, writes right away, reads the echo: the instance reached and the
/// time it all took.
async fn echo_timed(from: &Node, to: &str) -> (InstanceId, Duration) {
    let t0 = Instant::now();
    let mut s = timeout(T, from.connect(to)).await.unwrap().unwrap();
    s.write_all(b"where are you").await.unwrap();
    let mut back = [0u8; 13];
    timeout(T, s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"where are you");
    (s.peer_instance(), t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_old_address_costs_one_connect_timeout() {
    let reg = MemoryRegistry::new();
    let (silent, _listener, _held) = silent_address().await;
    let (peer, dialer) = moved_tcp_peer("df-silent", &reg, silent).await;

    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!(
        "silent old address: reached the new one in {took:?} (connect timeout {CONNECT_TIMEOUT:?})"
    );
    assert_eq!(reached, peer.instance());
    assert!(
        took >= CONNECT_TIMEOUT,
        "the silent address was tried first"
    );
    assert!(took < CONNECT_TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert_eq!(dialer.stats().stale_retries, 1);

    // The fresh record is cached now: the next dial goes straight there.
    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!("silent old address, next dial: {took:?}");
    assert_eq!(reached, peer.instance());
    assert_eq!(dialer.stats().stale_retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_accepts_and_never_answers_costs_one_handshake_timeout() {
    // The old address now belongs to something that takes the connection
    // and says nothing: the dialer's data is already written when the
    // handshake times out, and is replayed to the peer's new address.
    let reg = MemoryRegistry::new();
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            kept.push(s);
        }
    });
    let (peer, dialer) = moved_tcp_peer("df-mute", &reg, mute_addr).await;

    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!(
        "mute old address: reached the new one in {took:?} (handshake timeout {CONNECT_TIMEOUT:?})"
    );
    assert_eq!(reached, peer.instance());
    assert!(took >= CONNECT_TIMEOUT, "the mute address was tried first");
    assert!(took < CONNECT_TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert_eq!(dialer.stats().stale_retries, 1);
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_with_another_key_on_the_old_tls_address_is_passed_by() {
    let reg = MemoryRegistry::new();
    let tls = |name: &str| {
        init_tracing();
        Node::builder(name)
            .namespace("df-squat")
            .registry(reg.clone())
            .interface(TlsInterface::new("127.0.0.1:0"))
            .ttl(Duration::from_secs(3))
    };
    let squatter = tls("squatter").start().await.unwrap();
    echo_forever(&squatter).await;
    let peer = tls("mover").start().await.unwrap();
    echo_forever(&peer).await;
    let dialer = deaf("dialer", "df-squat", &reg)
        .interface(TlsInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    // The cached record pins the peer's key, at the squatter's address.
    let mut stale = peer.record();
    stale.endpoints = squatter.record().endpoints;
    cache_stale(&reg, &dialer, &stale, &peer.record()).await;

    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!("squatted old TLS address: reached the peer in {took:?}");
    assert_eq!(reached, peer.instance());
    assert_eq!(dialer.stats().stale_retries, 1);

    // If the registry itself says the squatter's address, it stays refused.
    reg.publish(&stale, Duration::from_secs(30), NamePolicy::Takeover)
        .await
        .unwrap();
    let fresh_dialer = deaf("dialer-2", "df-squat", &reg)
        .interface(TlsInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    match timeout(T, fresh_dialer.connect("mover")).await.unwrap() {
        Err(e) => assert!(
            matches!(e.root(), masse::Error::Unauthorized { .. }),
            "{e:?}"
        ),
        Ok(_) => panic!("dialed a squatter whose key is not the record's"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_old_address_recovers_at_once() {
    // Nobody listens on the old port any more (RST): no timeout to wait for.
    let reg = MemoryRegistry::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let (peer, dialer) = moved_tcp_peer("df-rst", &reg, closed_addr).await;
    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!("refused old address: reached the new one in {took:?}");
    assert_eq!(reached, peer.instance());
    assert!(took < CONNECT_TIMEOUT, "{took:?}");
}

/// Starts a node on a fixed port, reaches it, shuts it down, and at once
/// starts the next on the same port: 20 times, with no retry of the bind.
async fn restart_on_a_fixed_port(tls: bool) {
    let reg = MemoryRegistry::new();
    let ns = if tls {
        "df-restart-tls"
    } else {
        "df-restart-tcp"
    };
    let port = masse_integration_tests::server::free_port();
    let at = format!("127.0.0.1:{port}");
    let client = if tls {
        Node::builder("client").interface(TlsInterface::new("127.0.0.1:0"))
    } else {
        Node::builder("client").interface(TcpInterface::new("127.0.0.1:0"))
    }
    .namespace(ns)
    .registry(reg.clone())
    .ttl(Duration::from_secs(3))
    .start()
    .await
    .unwrap();
    let mut events = client.events();
    for round in 0..20 {
        let builder = Node::builder("fixed")
            .namespace(ns)
            .registry(reg.clone())
            .ttl(Duration::from_secs(3))
            .shutdown_grace(Duration::from_millis(100));
        let builder = if tls {
            builder.interface(TlsInterface::new(at.as_str()))
        } else {
            builder.interface(TcpInterface::new(at.as_str()))
        };
        let server = match builder.start().await {
            Ok(n) => n,
            Err(e) => panic!("round {round}: the port is still taken after shutdown: {e}"),
        };
        echo_forever(&server).await;
        // The client learns of the new instance from the registry's events.
        timeout(T, async {
            while let Some(ev) = events.next().await {
                if matches!(ev, masse::NodeEvent::PeerJoined(ref r) if r.instance == server.instance()) {
                    return;
                }
            }
        })
        .await
        .unwrap();
        let (reached, _) = echo_timed(&client, "fixed").await;
        assert_eq!(reached, server.instance(), "round {round}");
        server.shutdown().await.unwrap();
        match server.connect("client").await {
            Err(masse::Error::Closed(_)) => {}
            other => panic!("connect after shutdown: {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn shutdown_frees_the_port_at_once_on_a_current_thread_runtime() {
    restart_on_a_fixed_port(false).await;
    restart_on_a_fixed_port(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_frees_the_port_at_once_on_a_multi_thread_runtime() {
    restart_on_a_fixed_port(false).await;
    restart_on_a_fixed_port(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_quic_endpoint_beside_a_working_tcp_one_is_raced_then_remembered() {
    // The record lists a QUIC endpoint nobody answers (a UDP socket that
    // never reads) before a working TCP one; the dialer speaks both, QUIC
    // first.
    let reg = MemoryRegistry::new();
    let silent_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = node("both", "df-race", &reg).start().await.unwrap();
    echo_forever(&peer).await;
    let mut record = peer.record();
    record.endpoints.insert(
        0,
        Endpoint::new(Protocol::QUIC, silent_udp.local_addr().unwrap()),
    );
    reg.publish(&record, Duration::from_secs(30), NamePolicy::Takeover)
        .await
        .unwrap();
    let dialer = Node::builder("dialer")
        .namespace("df-race")
        .registry(reg.clone())
        .interface(masse::QuicInterface::new("127.0.0.1:0"))
        .interface(TcpInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_secs(3))
        .start()
        .await
        .unwrap();

    let (reached, first) = echo_timed(&dialer, "both").await;
    eprintln!("unanswered QUIC endpoint: first dial {first:?}");
    assert_eq!(reached, peer.instance());
    assert!(
        first >= Duration::from_millis(250),
        "{first:?}: TCP waited for the race delay"
    );
    assert!(
        first < Duration::from_millis(300) + Duration::from_millis(700),
        "{first:?}"
    );
    assert_eq!(dialer.stats().raced_endpoints, 1);

    // The overtaken QUIC endpoint is tried last now: no delay.
    let (reached, next) = echo_timed(&dialer, "both").await;
    eprintln!("unanswered QUIC endpoint: next dial {next:?}");
    assert_eq!(reached, peer.instance());
    assert!(next < Duration::from_millis(250), "{next:?}");
    assert_eq!(dialer.stats().raced_endpoints, 1);
}

/// TCP, except that a stream to `dead` opens at once and its connection is
/// gone by the first write: a pooled connection (QUIC) that the peer closed
/// just as a stream opened on it, which the dialer learns only then.
#[derive(Debug)]
struct DiesUnderTheStream {
    tcp: TcpInterface,
    dead: SocketAddr,
}

#[masse::async_trait]
impl masse::Interface for DiesUnderTheStream {
    fn protocol(&self) -> Protocol {
        Protocol::TCP
    }

    async fn bind(&self, ctx: &masse::BindContext) -> masse::Result<Box<dyn masse::Listener>> {
        self.tcp.bind(ctx).await
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        peer: &PeerRecord,
        ctx: &masse::ConnectContext,
    ) -> masse::Result<masse::BoxIo> {
        if endpoint.socket_addr() == Some(self.dead) {
            // The far end is dropped: writes fail with a broken pipe.
            let (near, _far) = tokio::io::duplex(64);
            return Ok(Box::new(near));
        }
        self.tcp.connect(endpoint, peer, ctx).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_under_the_first_write_is_replayed_to_the_fresh_record() {
    let reg = MemoryRegistry::new();
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let peer = node("mover", "df-dies", &reg).start().await.unwrap();
    echo_forever(&peer).await;
    let dialer = deaf("dialer", "df-dies", &reg)
        .interface(DiesUnderTheStream {
            tcp: TcpInterface::new("127.0.0.1:0"),
            dead,
        })
        .start()
        .await
        .unwrap();
    let mut stale = peer.record();
    stale.endpoints = vec![Endpoint::new(Protocol::TCP, dead)];
    cache_stale(&reg, &dialer, &stale, &peer.record()).await;

    // The connect succeeds on the dying connection; its first write fails
    // there, and the stream goes to the fresh record with that write.
    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!("connection dead under the first write: reached the peer in {took:?}");
    assert_eq!(reached, peer.instance());
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(dialer.stats().stale_retries, 1);

    // When the registry says the same, there is nowhere else to go: the
    // write fails at once, with the dial's context, and nothing hangs.
    let mut ghost = stale.clone();
    ghost.name = masse::PeerName::new("ghost").unwrap();
    ghost.instance = InstanceId::random();
    reg.publish(&ghost, Duration::from_secs(30), NamePolicy::Takeover)
        .await
        .unwrap();
    let mut s = timeout(T, dialer.connect("ghost")).await.unwrap().unwrap();
    let err = timeout(T, s.write_all(b"anyone?"))
        .await
        .unwrap()
        .unwrap_err();
    eprintln!("connection dead under the first write, no fresh record: {err}");
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err:?}");
    assert_eq!(dialer.stats().stale_retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_quic_connection_to_a_peer_that_moved_is_left_for_its_new_address() {
    // The dialer holds a pooled QUIC connection to the peer; the peer's
    // process goes away without a word (dropped, not shut down) and comes
    // back elsewhere as a new instance. The dialer's cache still says the
    // old address.
    let reg = MemoryRegistry::new();
    let quic = |name: &str| {
        init_tracing();
        Node::builder(name)
            .namespace("df-quic-move")
            .registry(reg.clone())
            .interface(masse::QuicInterface::new("127.0.0.1:0"))
            .ttl(Duration::from_secs(3))
    };
    let old = quic("mover").start().await.unwrap();
    echo_forever(&old).await;
    let dialer = deaf("dialer", "df-quic-move", &reg)
        .interface(masse::QuicInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let (reached, _) = echo_timed(&dialer, "mover").await;
    assert_eq!(reached, old.instance());
    let stale = old.record();
    drop(old);
    let new = quic("mover").start().await.unwrap();
    echo_forever(&new).await;
    assert_ne!(new.record().endpoints, stale.endpoints);

    let (reached, took) = echo_timed(&dialer, "mover").await;
    eprintln!("pooled QUIC connection to a moved peer: reached the new address in {took:?}");
    assert_eq!(reached, new.instance());
    assert!(took < CONNECT_TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert_eq!(dialer.stats().stale_retries, 1);
}
