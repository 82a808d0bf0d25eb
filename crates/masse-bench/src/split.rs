//! `connect_split`: which end of a masse connect the overhead over raw is
//! spent on.
//!
//! Two interleaved passes against the same raw connect + 1-byte echo as
//! `connect_latency`:
//!
//! - **server side**: a raw `TcpStream` dials the masse echo node and speaks
//!   the protocol with bytes encoded once before the run (the `Hello` with
//!   the echo byte right behind it; then it reads the `Welcome` and the
//!   echo). Only the accepting node's work differs from raw.
//! - **client side**: `node.connect("fake")` dials a minimal acceptor that
//!   reads the `Hello` frame and answers a `Welcome` encoded once, with the
//!   echo byte. Only the dialing node's work differs from raw.
//!
//! The two overheads add up to about the whole of `connect_overhead`; where
//! each end's CPU is, and how much it is amplified on two workers, says
//! which end a cut pays off on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::FutureExt;
use masse::handshake::{Hello, Message, Welcome, encode};
use masse::{InstanceId, MemoryRegistry, NamePolicy, Node, PeerRecord, Registry, TcpInterface};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::latency::{
    Samples, connect_echo, describe_connect, echo, echo_serve, interleave, iterations, note_misses,
    raw_connect_echo, tcp_echo_server, warm_cache, warmup,
};
use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

const NAMESPACE: &str = "bench-split";

pub(crate) fn describe(mode: Mode) -> String {
    describe_connect("connect_split", mode) + ", per side"
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| bench(warmup(mode), iterations(mode)))
}

async fn bench(warmup: usize, iterations: usize) -> Result<Vec<Figure>, BoxError> {
    let (addr, raw_server) = tcp_echo_server().await?;
    let registry = MemoryRegistry::new();
    let node = |name: &str| {
        Node::builder(name)
            .namespace(NAMESPACE)
            .registry(registry.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
    };
    let server = node("echo").await?;
    echo_serve(&server);
    let server_addr = server
        .record()
        .endpoints
        .iter()
        .find_map(|e| e.socket_addr())
        .ok_or("the echo node has no TCP endpoint")?;

    // The minimal acceptor, published under its own instance.
    let fake_instance = InstanceId::random();
    let (fake_addr, fake_task) = fake_acceptor(fake_instance).await?;
    let record = PeerRecord::new(NAMESPACE.parse()?, "fake".parse()?, fake_instance)
        .with_endpoint(format!("tcp://{fake_addr}").parse()?);
    registry
        .publish(&record, Duration::from_secs(3600), NamePolicy::Takeover)
        .await?;

    let client = node("client").await?;
    warm_cache(&client, "connect_split").await?;
    for _ in 0..warmup {
        connect_echo(&client, "fake").await?;
    }

    // The raw dialer's Hello (as node "raw-client") and its echo byte.
    let mut hello = encode(&Message::Hello(
        Hello::new(
            NAMESPACE.parse()?,
            "raw-client".parse()?,
            InstanceId::random(),
            "echo".parse()?,
        )
        .expecting(server.instance()),
    ));
    hello.push(0x2a);
    let hello = &hello;

    let mut open = TcpStream::connect(addr).await?;
    open.set_nodelay(true)?;
    let misses_before = client.stats().cache.misses;
    let server_side = interleave(
        warmup,
        iterations,
        &mut open,
        || raw_connect_echo(addr).boxed(),
        || raw_masse_connect_echo(server_addr, hello).boxed(),
    )
    .await?;
    let client_side = interleave(
        warmup,
        iterations,
        &mut open,
        || raw_connect_echo(addr).boxed(),
        || connect_echo(&client, "fake").boxed(),
    )
    .await?;
    note_misses(&client, misses_before, "connect_split");

    drop(open);
    client.shutdown().await?;
    server.shutdown().await?;
    raw_server.abort();
    fake_task.abort();

    let mut figures = side("server", &server_side);
    figures.extend(side("client", &client_side));
    Ok(figures)
}

/// `connect_split_<name>_p50` and its overhead over its pass's raw, in
/// round trips.
fn side(name: &str, samples: &Samples) -> Vec<Figure> {
    let raw = percentile(&samples.raw, 50.0);
    let masse = percentile(&samples.masse, 50.0);
    let rtt = percentile(&samples.rtt, 50.0);
    vec![
        Figure::new(format!("connect_split_{name}_side_p50"), masse, 1, "us"),
        Figure::new(
            format!("connect_split_{name}_overhead_rtts"),
            (masse - raw) / rtt,
            2,
            "rtt",
        ),
    ]
}

/// A raw dialer speaking masse: connect, the `Hello` and the echo byte in
/// one write, then read up to the end of the `Welcome` and the echo.
async fn raw_masse_connect_echo(addr: SocketAddr, hello: &[u8]) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(hello).await?;
    let mut buf = [0u8; 256];
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err("the masse node closed before its Welcome and the echo".into());
        }
        have += n;
        if let Some(end) = frame_end(&buf[..have])
            && have > end
        {
            if buf[end] != 0x2a {
                return Err(format!("echo returned {:#04x}, not 0x2a", buf[end]).into());
            }
            return Ok(start.elapsed());
        }
    }
}

/// Where the handshake frame at the start of `buf` ends, once its length
/// prefix is in.
fn frame_end(buf: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]);
    Some(2 + usize::from(len))
}

/// An acceptor that only frames: reads the `Hello` frame (not checked),
/// answers a `Welcome` of `instance` encoded once, and echoes from then on.
async fn fake_acceptor(instance: InstanceId) -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let welcome = encode(&Message::Welcome(Welcome::new(instance)));
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let welcome = welcome.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut have = 0;
                let end = loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    match frame_end(&buf[..have]) {
                        Some(end) if end > buf.len() => return,
                        Some(end) if have >= end => break end,
                        _ => {}
                    }
                };
                // The Welcome, with whatever came after the Hello.
                let mut out = welcome;
                out.extend_from_slice(&buf[end..have]);
                if s.write_all(&out).await.is_ok() {
                    echo(s).await;
                }
            });
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_ends_after_its_length_prefix_and_body() {
        assert_eq!(frame_end(&[]), None);
        assert_eq!(frame_end(&[0]), None);
        assert_eq!(frame_end(&[0, 5]), Some(7));
        assert_eq!(frame_end(&[1, 0, 9]), Some(258));
        let welcome = encode(&Message::Welcome(Welcome::new(InstanceId::random())));
        assert_eq!(frame_end(&welcome), Some(welcome.len()));
    }
}
