//! `connect_tls` and `connect_quic`: connect-by-name latency of two `Node`s
//! on `TlsInterface` or `QuicInterface` with a warm cache, against a raw
//! baseline with the same identities, TLS configuration and transport
//! settings.
//!
//! One sample is the time from starting to connect until a 1-byte echo has
//! come back; the stream is then dropped. masse: `client.connect("echo")`,
//! the server echoing with `Node::serve` (a task per stream, as the raw
//! servers spawn one per connection).
//! Raw TLS: a tokio-rustls connect over a new loopback `TcpStream` through one
//! `TlsConnector`, so that TLS 1.3 session resumption skips the certificates
//! after the first connection, as it does for the `TlsInterface`. Raw QUIC:
//! `open_bi` on one established quinn connection, as the `QuicInterface`
//! pools its connection to the peer after the first dial. Iterations run as
//! in `connect_latency`, each with one loopback ping-pong on an open raw TCP
//! connection, by which the overhead is divided.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use masse::{Identity, Interface, MemoryRegistry, Node, QuicInterface, TlsInterface};
use tokio::net::TcpStream;
use tokio_rustls::rustls::HandshakeKind;

use crate::latency::{
    Samples, describe_connect, echo_serve, interleave, iterations, masse_connect_echo, note_misses,
    tcp_echo_server, warm_cache, warmup,
};
use crate::secure::{Peers, echo_quinn, timed_echo, tls_echo_server};
use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

pub(crate) fn describe_tls(mode: Mode) -> String {
    describe_connect("connect_tls", mode)
}

pub(crate) fn describe_quic(mode: Mode) -> String {
    describe_connect("connect_quic", mode)
}

pub(crate) fn run_tls(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| tls(warmup(mode), iterations(mode)))
}

pub(crate) fn run_quic(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| quic(warmup(mode), iterations(mode)))
}

/// The echo node and the dialer, on `server_iface` and `client_iface`, with
/// the identities of `peers` and one in-process registry; the dialer's cache
/// is warm. Also the task that echoes every stream the echo node accepts.
async fn nodes<I: Interface>(
    bench: &str,
    peers: &Peers,
    server_iface: I,
    client_iface: I,
) -> Result<(Node, Node), BoxError> {
    let registry = MemoryRegistry::new();
    let node = |name: &str, identity: &Identity, iface: I| {
        Node::builder(name)
            .namespace("bench-connect")
            .registry(registry.clone())
            .identity(identity.clone())
            .interface(iface)
            .start()
    };
    let server = node("echo", &peers.server, server_iface).await?;
    echo_serve(&server);
    let client = node("client", &peers.client, client_iface).await?;
    warm_cache(&client, bench).await?;
    Ok((server, client))
}

async fn tls(warmup: usize, iterations: usize) -> Result<Vec<Figure>, BoxError> {
    let peers = Peers::generate()?;

    // The raw baseline: a tokio-rustls echo server, one connector.
    let (tls_addr, raw_task) = tls_echo_server(&peers).await?;
    let connector = peers.tls_connector()?;
    let full_handshakes = AtomicUsize::new(0);
    let (connector, full_handshakes) = (&connector, &full_handshakes);
    let raw_sample = move || {
        timed_echo(async move {
            let s = TcpStream::connect(tls_addr).await?;
            s.set_nodelay(true)?;
            let s = connector.connect(masse::tls::server_name(), s).await?;
            if s.get_ref().1.handshake_kind() != Some(HandshakeKind::Resumed) {
                full_handshakes.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(s)
        })
        .boxed()
    };

    let (rtt_addr, rtt_task) = tcp_echo_server().await?;
    let (server, client) = nodes(
        "connect_tls",
        &peers,
        TlsInterface::new("127.0.0.1:0"),
        TlsInterface::new("127.0.0.1:0"),
    )
    .await?;

    let mut open = TcpStream::connect(rtt_addr).await?;
    open.set_nodelay(true)?;
    let misses_before = client.stats().cache.misses;
    let samples = interleave(warmup, iterations, &mut open, raw_sample, || {
        masse_connect_echo(&client).boxed()
    })
    .await?;
    note_misses(&client, misses_before, "connect_tls");
    // The first raw connect is a full handshake, in the warm-up.
    let full = full_handshakes.load(Ordering::Relaxed);
    if full > 1 {
        println!("# connect_tls: {full} raw connects were full handshakes, not resumed");
    }

    drop(open);
    client.shutdown().await?;
    server.shutdown().await?;
    raw_task.abort();
    rtt_task.abort();
    Ok(figures("connect_tls", samples))
}

async fn quic(warmup: usize, iterations: usize) -> Result<Vec<Figure>, BoxError> {
    let peers = Peers::generate()?;

    // The raw baseline: echo on every stream of one established connection.
    let quinn_server = peers.quinn_server()?;
    let quinn_addr = quinn_server.local_addr()?;
    let raw_task = echo_quinn(quinn_server);
    let (_client_endpoint, conn) = peers.quinn_connect(quinn_addr).await?;
    let conn = &conn;
    let raw_sample = move || {
        timed_echo(async move {
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, BoxError>(tokio::io::join(recv, send))
        })
        .boxed()
    };

    // A clone shares the dialer's connection pool.
    let client_quic = QuicInterface::new("127.0.0.1:0");
    let (rtt_addr, rtt_task) = tcp_echo_server().await?;
    let (server, client) = nodes(
        "connect_quic",
        &peers,
        QuicInterface::new("127.0.0.1:0"),
        client_quic.clone(),
    )
    .await?;

    let mut open = TcpStream::connect(rtt_addr).await?;
    open.set_nodelay(true)?;
    let misses_before = client.stats().cache.misses;
    let samples = interleave(warmup, iterations, &mut open, raw_sample, || {
        masse_connect_echo(&client).boxed()
    })
    .await?;
    note_misses(&client, misses_before, "connect_quic");
    if client_quic.pooled_connections() != 1 {
        println!(
            "# connect_quic: the dialer holds {} connections, expected 1",
            client_quic.pooled_connections()
        );
    }

    drop(open);
    client.shutdown().await?;
    server.shutdown().await?;
    raw_task.abort();
    rtt_task.abort();
    Ok(figures("connect_quic", samples))
}

/// `<bench>_{masse,raw}_{p50,p99}`, the overhead of the p50s in µs and in
/// loopback round trips (p50 of the same run).
fn figures(bench: &str, samples: Samples) -> Vec<Figure> {
    let Samples { raw, masse, rtt } = samples;
    let masse_p50 = percentile(&masse, 50.0);
    let raw_p50 = percentile(&raw, 50.0);
    let overhead = masse_p50 - raw_p50;
    vec![
        Figure::new(format!("{bench}_masse_p50"), masse_p50, 1, "us"),
        Figure::new(
            format!("{bench}_masse_p99"),
            percentile(&masse, 99.0),
            1,
            "us",
        ),
        Figure::new(format!("{bench}_raw_p50"), raw_p50, 1, "us"),
        Figure::new(format!("{bench}_raw_p99"), percentile(&raw, 99.0), 1, "us"),
        Figure::new(format!("{bench}_overhead_p50"), overhead, 1, "us"),
        Figure::new(
            format!("{bench}_overhead_rtts"),
            overhead / percentile(&rtt, 50.0),
            2,
            "rtt",
        ),
    ]
}
