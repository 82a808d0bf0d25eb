//! The `memory` group: bytes per idle open stream and per idle node.
//!
//! Each case runs in a fresh copy of this program (so that nothing freed by
//! an earlier case is reused and hidden), on the bench runtime, and reports
//! how far the process's resident size grew per item: per stream, with
//! [`STREAMS`] streams open and idle after a 1-byte echo on each (both ends
//! live in the process, so a stream's figure is its dialing and its
//! accepting end together); per node, with [`NODES`] started nodes on one
//! in-process registry, idle. masse's streams are dialed by name between two
//! nodes; the raw baselines are tokio `TcpStream`s, tokio-rustls streams with
//! masse's TLS configuration, and quinn streams on one connection with
//! masse's transport settings, echoed the same way.

use masse::{MemoryRegistry, Node, PeerStream, QuicInterface, TcpInterface, TlsInterface};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::latency::{echo, one_byte_echo, tcp_echo_server};
use crate::scale::Memory;
use crate::secure::{Peers, echo_quinn, tls_echo_server};
use crate::{BoxError, Figure, Mode};

/// Streams open at once in a stream case (quinn's default per-connection
/// limit, which the raw baseline keeps, is 1 024).
const STREAMS: usize = 1_000;
/// Nodes in a node case.
const NODES: usize = 100;

/// The cases: `<kind>_raw` and `<kind>_masse` per stream, `node_<kind>` per node.
const CASES: [&str; 8] = [
    "tcp_raw",
    "tcp_masse",
    "tls_raw",
    "tls_masse",
    "quic_raw",
    "quic_masse",
    "node_tcp",
    "node_quic",
];

pub(crate) fn describe(_mode: Mode) -> String {
    format!(
        "memory: resident bytes per idle open stream ({STREAMS} streams: tcp, tls, quic, \
         masse and raw) and per idle node ({NODES} nodes: tcp, quic), each case in a fresh process"
    )
}

pub(crate) fn run(_mode: Mode) -> Result<Vec<Figure>, BoxError> {
    let mut bytes = std::collections::HashMap::new();
    for case in CASES {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([crate::CHILD_ARG, "memory", case])
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "memory case {case} failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let per: f64 = text
            .trim()
            .parse()
            .map_err(|e| format!("memory case {case} answered {text:?}: {e}"))?;
        bytes.insert(case, per);
    }
    let mut figures = Vec::new();
    for kind in ["tcp", "tls", "quic"] {
        let raw = bytes[format!("{kind}_raw").as_str()];
        let masse = bytes[format!("{kind}_masse").as_str()];
        figures.extend([
            Figure::new(format!("memory_stream_{kind}_raw"), raw, 0, "B"),
            Figure::new(format!("memory_stream_{kind}_masse"), masse, 0, "B"),
            Figure::new(
                format!("memory_stream_{kind}_overhead"),
                masse - raw,
                0,
                "B",
            ),
        ]);
    }
    for kind in ["tcp", "quic"] {
        figures.push(Figure::new(
            format!("memory_node_{kind}"),
            bytes[format!("node_{kind}").as_str()] / 1024.0,
            0,
            "KiB",
        ));
    }
    Ok(figures)
}

/// The child's side: runs one case and prints its bytes per item.
pub(crate) fn child(args: &[String]) -> Result<(), BoxError> {
    let [case] = args else {
        return Err("memory <case>".into());
    };
    let case = case.clone();
    let per = crate::on_workers(async move {
        let per = match case.as_str() {
            "tcp_raw" => tcp_raw().await?,
            "tcp_masse" => streams_masse(Kind::Tcp).await?,
            "tls_raw" => tls_raw().await?,
            "tls_masse" => streams_masse(Kind::Tls).await?,
            "quic_raw" => quic_raw().await?,
            "quic_masse" => streams_masse(Kind::Quic).await?,
            "node_tcp" => nodes(Kind::Tcp).await?,
            "node_quic" => nodes(Kind::Quic).await?,
            other => return Err(format!("no memory case {other}").into()),
        };
        Ok(vec![Figure::new("per", per, 0, "B")])
    })?;
    println!("{:.0}", per[0].value);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Tls,
    Quic,
}

/// Resident growth per item between `base` and now.
fn per_item(base: u64, items: usize) -> Result<f64, BoxError> {
    let now = Memory::resident().ok_or("no /proc/self/status")?;
    Ok(now.saturating_sub(base) as f64 / items as f64)
}

fn resident() -> Result<u64, BoxError> {
    Ok(Memory::resident().ok_or("no /proc/self/status")?)
}

/// Opens `n` streams with `open`, each echoing a byte, and keeps them; the
/// resident growth per stream. A few opened and dropped first warm up the
/// allocator, the pools and the caches.
async fn hold_open<S, F, Fut>(n: usize, open: F) -> Result<f64, BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, BoxError>>,
{
    for _ in 0..10 {
        open_echoed(&open).await?;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let base = resident()?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(open_echoed(&open).await?);
    }
    // Let the accepting ends settle into their idle reads.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let per = per_item(base, n)?;
    drop(held);
    Ok(per)
}

/// One stream from `open`, a byte echoed on it; a stall is an error.
async fn open_echoed<S, F, Fut>(open: &F) -> Result<S, BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, BoxError>>,
{
    let limit = std::time::Duration::from_secs(10);
    let mut s = tokio::time::timeout(limit, open())
        .await
        .map_err(|_| "opening a stream stalled")??;
    tokio::time::timeout(limit, one_byte_echo(&mut s, std::time::Instant::now()))
        .await
        .map_err(|_| "the echo stalled")??;
    Ok(s)
}

async fn tcp_raw() -> Result<f64, BoxError> {
    let (addr, _server) = tcp_echo_server().await?;
    hold_open(STREAMS, || async move {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    })
    .await
}

async fn tls_raw() -> Result<f64, BoxError> {
    let peers = Peers::generate()?;
    let (addr, _server) = tls_echo_server(&peers).await?;
    let connector = peers.tls_connector()?;
    let connector = &connector;
    hold_open(STREAMS, || async move {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(connector.connect(masse::tls::server_name(), s).await?)
    })
    .await
}

async fn quic_raw() -> Result<f64, BoxError> {
    let peers = Peers::generate()?;
    let server = peers.quinn_server()?;
    let addr = server.local_addr()?;
    let _server = echo_quinn(server);
    let (_endpoint, conn) = peers.quinn_connect(addr).await?;
    let conn = &conn;
    hold_open(STREAMS, || async move {
        let (send, recv) = conn.open_bi().await?;
        Ok(tokio::io::join(recv, send))
    })
    .await
}

/// Two nodes of `kind` on one in-process registry: the echo node and the dialer.
async fn pair(kind: Kind) -> Result<(Node, Node), BoxError> {
    let registry = MemoryRegistry::new();
    let peers = Peers::generate()?;
    let mut made = Vec::with_capacity(2);
    for (name, identity) in [("echo", &peers.server), ("client", &peers.client)] {
        let builder = Node::builder(name)
            .namespace("bench-memory")
            .registry(registry.clone())
            .identity((**identity).clone());
        let builder = match kind {
            Kind::Tcp => builder.interface(TcpInterface::new("127.0.0.1:0")),
            Kind::Tls => builder.interface(TlsInterface::new("127.0.0.1:0")),
            Kind::Quic => builder.interface(QuicInterface::new("127.0.0.1:0")),
        };
        made.push(builder.start().await?);
    }
    let client = made.pop().ok_or("no client node")?;
    let server = made.pop().ok_or("no echo node")?;
    server.serve(echo::<PeerStream>);
    Ok((server, client))
}

async fn streams_masse(kind: Kind) -> Result<f64, BoxError> {
    let (server, client) = pair(kind).await?;
    let client_ref = &client;
    let per = hold_open(
        STREAMS,
        || async move { Ok(client_ref.connect("echo").await?) },
    )
    .await?;
    client.shutdown().await?;
    server.shutdown().await?;
    Ok(per)
}

async fn nodes(kind: Kind) -> Result<f64, BoxError> {
    let registry = MemoryRegistry::new();
    let start = |k: usize| {
        let builder = Node::builder(format!("node-{k}"))
            .namespace("bench-memory-nodes")
            .registry(registry.clone());
        match kind {
            Kind::Quic => builder.interface(QuicInterface::new("127.0.0.1:0")),
            _ => builder.interface(TcpInterface::new("127.0.0.1:0")),
        }
        .start()
    };
    // One first: the runtime's, the registry's and the crypto's one-time costs.
    let first = start(NODES).await?;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let base = resident()?;
    let mut held = Vec::with_capacity(NODES);
    for k in 0..NODES {
        held.push(start(k).await?);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let per = per_item(base, NODES)?;
    for n in held {
        n.shutdown().await?;
    }
    first.shutdown().await?;
    Ok(per)
}
