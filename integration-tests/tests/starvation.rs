//! Idle sockets cannot starve a node: with two thousand connections that say
//! nothing open on its TCP and TLS ports (more than its handshake budget's
//! silent pool holds), a dialer by name still gets in at once, the longest
//! silent are refused as `Busy` (TCP) or closed (TLS) to make room, and
//! every idle socket is released at its handshake deadline. On QUIC, where
//! the server holds no socket per client, the flood is of handshakes that
//! stall after the client's first packet: the same budget evicts the
//! longest stalled, and a dialer by name still gets in.
//!
//! One test in its own binary, the interfaces one after the other: it counts
//! the process's open file descriptors. The real-time waits here are the
//! thing under test (the handshake deadline, a flood reaching the server).

#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use masse::handshake::{self, Message};
use masse::{
    ConnectContext, Endpoint, Fingerprint, Identity, InstanceId, Interface, MemoryRegistry, Node,
    PeerRecord, Protocol, QuicInterface, RefuseCode, TcpInterface, TlsInterface,
};
use masse_integration_tests::{eventually, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const IDLE: usize = 2000;
const DEADLINE: Duration = Duration::from_secs(4);

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soft limit on open files, from /proc/self/limits.
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

async fn echo_by_name(client: &Node, to: &str) -> Duration {
    let t0 = Instant::now();
    let mut s = client.connect(to).await.expect("connect by name");
    s.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi");
    t0.elapsed()
}

async fn idle_sockets_cannot_keep_a_dialer_out(protocol: Protocol, idle: usize) {
    let reg = MemoryRegistry::new();
    let ns = format!("starve-{protocol}");
    let build = |name: &str| {
        let b = Node::builder(name)
            .namespace(&ns)
            .registry(reg.clone())
            .ttl(Duration::from_secs(10))
            .handshake_timeout(DEADLINE)
            // A silent pool (four times this, stretching to eight) of
            // half the idle sockets, whatever the open-file limit.
            .max_pending_handshakes((idle / 16).max(1));
        match protocol {
            Protocol::TLS => b.interface(TlsInterface::new("127.0.0.1:0")),
            _ => b.interface(TcpInterface::new("127.0.0.1:0")),
        }
    };
    let server = build("server").start().await.unwrap();
    server.serve(|mut s| async move {
        let (mut r, mut w) = tokio::io::split(&mut s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let client = build("client").start().await.unwrap();
    echo_by_name(&client, "server").await;
    let addr: SocketAddr = server.record().endpoints[0].socket_addr().unwrap();
    let baseline = open_fds();

    let mut sockets = Vec::with_capacity(idle);
    for _ in 0..idle {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    eprintln!(
        "{protocol}: {idle} idle sockets open, {} descriptors more",
        open_fds() - baseline
    );

    eprintln!(
        "{protocol}: before the dial: {} busy refusals, {} descriptors more",
        server.stats().busy_refusals,
        open_fds() - baseline
    );
    let took = timeout(Duration::from_secs(10), echo_by_name(&client, "server"))
        .await
        .expect("a dialer gets in past the idle sockets");
    eprintln!("{protocol}: connect by name + echo past {idle} idle sockets: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let stats = server.stats();
    eprintln!(
        "{protocol}: {} silent sockets evicted for newer ones, {} told Busy",
        stats.silent_evictions, stats.busy_refusals
    );
    assert!(stats.silent_evictions >= (idle / 2) as u64, "{stats:?}");

    // The oldest idle socket was evicted: on TCP it is told `Busy`.
    if protocol == Protocol::TCP {
        assert!(stats.busy_refusals > 0);
        match timeout(
            Duration::from_secs(5),
            handshake::read_message(&mut sockets[0], DEADLINE),
        )
        .await
        .expect("the evicted socket hears back")
        {
            Ok(Message::Refuse(r)) => assert_eq!(r.code, RefuseCode::Busy),
            other => panic!("expected a Busy refusal, got {other:?}"),
        }
    }

    // Every idle socket is released by the server at its deadline: only
    // our own ends stay open.
    let extra = eventually(
        DEADLINE + Duration::from_secs(3),
        &format!("{protocol}: the server to release the idle sockets"),
        || async {
            let extra = open_fds().saturating_sub(baseline);
            if extra <= idle + 16 {
                Ok(Some(extra))
            } else {
                Err(format!("{extra} descriptors above baseline"))
            }
        },
    )
    .await;
    eprintln!(
        "{protocol}: server released the idle sockets ({extra} descriptors above baseline, our {idle} ends included)"
    );
    // And the node still serves.
    echo_by_name(&client, "server").await;
    drop(sockets);
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// Starts `n` QUIC handshakes with `server` that stall after their first
/// packet: each dialer goes through a relay of its own that passes client
/// `Initial`s on and drops everything else, so the server waits for answers
/// that never come. Returns the tasks to abort when done.
async fn stalled_quic_handshakes(server: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let dialer = QuicInterface::new("127.0.0.1:0");
    let id = Arc::new(Identity::generate("stalling").unwrap());
    let ctx = ConnectContext::new(
        "starve-quic".parse().unwrap(),
        "stalling".parse().unwrap(),
        InstanceId::random(),
    )
    .with_identity(id)
    .with_connect_timeout(Duration::from_secs(30));
    let mut tasks = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ep = Endpoint::new(Protocol::QUIC, relay.local_addr().unwrap());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((len, from)) = relay.recv_from(&mut buf).await {
                // Long header, packet type Initial: on to the server. The
                // server's answers are dropped.
                if from != server && len > 0 && buf[0] & 0xf0 == 0xc0 {
                    let _ = relay.send_to(&buf[..len], server).await;
                }
            }
        }));
        // A relay address per dial: no pooled connection is shared.
        let mut record = PeerRecord::new(
            "starve-quic".parse().unwrap(),
            "ghost".parse().unwrap(),
            InstanceId::random(),
        )
        .with_endpoint(ep.clone());
        record.identity = Some(Fingerprint([7; 32]));
        let (dialer, ctx) = (dialer.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = dialer.connect(&ep, &record, &ctx).await;
        }));
    }
    tasks
}

async fn stalled_quic_handshakes_cannot_keep_a_dialer_out(stalled: usize) {
    // QUIC handshakes cost CPU on both ends: on two cores the flood takes
    // seconds, so the deadline is longer than the others', to let it finish
    // before the first stalled handshake is released.
    let deadline = Duration::from_secs(8);
    let reg = MemoryRegistry::new();
    let build = |name: &str| {
        Node::builder(name)
            .namespace("starve-quic")
            .registry(reg.clone())
            .ttl(Duration::from_secs(10))
            .handshake_timeout(deadline)
            .max_pending_handshakes((stalled / 16).max(1))
            .interface(QuicInterface::new("127.0.0.1:0"))
    };
    let server = build("server").start().await.unwrap();
    server.serve(|mut s| async move {
        let (mut r, mut w) = tokio::io::split(&mut s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let client = build("client").start().await.unwrap();
    let addr = server.record().endpoints[0].socket_addr().unwrap();
    let tasks = stalled_quic_handshakes(addr, stalled).await;
    // Until the flood has overflowed the budget's silent pool and most of it
    // has reached the server (how fast depends on the machine's CPU), or
    // until shortly before the first stalled handshake's deadline.
    let t0 = Instant::now();
    let flooded = eventually(deadline, "the flood to reach the server", || async {
        let s = server.stats();
        let seen = s.handshakes_in_progress + s.silent_evictions;
        s.silent_evictions > 0 && seen >= (stalled / 2) as u64
    });
    if timeout(deadline - Duration::from_secs(2), flooded)
        .await
        .is_err()
    {
        let s = server.stats();
        assert!(
            s.silent_evictions > 0,
            "the flood never filled the budget: {s:?}"
        );
    }
    eprintln!("quic: the flood reached the server in {:?}", t0.elapsed());
    let before = server.stats();
    eprintln!(
        "quic: {stalled} stalled handshakes: {} in progress, {} evicted",
        before.handshakes_in_progress, before.silent_evictions
    );
    let took = timeout(Duration::from_secs(10), echo_by_name(&client, "server"))
        .await
        .expect("a dialer gets in past the stalled handshakes");
    eprintln!("quic: connect by name + echo past {stalled} stalled handshakes: {took:?}");
    // A dialer kept out would wait for the first stalled handshake's
    // deadline; a third of it proves it got in past them, with room
    // for a flood whose handshakes still take CPU on a loaded two-core machine.
    assert!(took < deadline / 3, "{took:?}");
    assert!(before.silent_evictions > 0, "{before:?}");
    // The stalled dialers give up (until then they resend their `Initial`,
    // which the server takes for a new handshake each time), and what they
    // left in progress is released at its deadline.
    for t in tasks {
        t.abort();
    }
    eventually(
        deadline + Duration::from_secs(3),
        "every stalled handshake released",
        || async {
            let s = server.stats();
            if s.handshakes_in_progress == 0 {
                Ok(Some(()))
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    eprintln!("quic: every stalled handshake released");
    echo_by_name(&client, "server").await;
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_tcp_and_tls_ports_cannot_starve_a_node() {
    init_tracing();
    // Two descriptors per idle socket (both ends live in this process).
    let idle = IDLE.min(fd_limit().saturating_sub(512) / 2);
    if idle < IDLE {
        eprintln!("open-file limit {}: using {idle} idle sockets", fd_limit());
    }
    idle_sockets_cannot_keep_a_dialer_out(Protocol::TCP, idle).await;
    idle_sockets_cannot_keep_a_dialer_out(Protocol::TLS, idle).await;
    // A QUIC handshake costs the server a TLS handshake's CPU (in a debug
    // build, milliseconds): 400 stalled ones overflow a budget of 25 (its
    // silent pool holds 100, stretching to 200) in about two seconds.
    stalled_quic_handshakes_cannot_keep_a_dialer_out(400).await;
}
