//! Figure 2: connect-by-name latency with a warm cache.
//!
//! One sample is the time from starting to connect until a 1-byte echo has
//! come back; the stream is then dropped. masse: `node.connect("echo")` (cached
//! lookup, TCP connect, handshake) against a raw `TcpStream::connect`. Each
//! iteration takes one sample of each, alternating which goes first, plus one
//! 1-byte ping-pong on an already open raw connection: the loopback round
//! trip, the unit of the overhead figures.
//!
//! The masse echo server runs its echo with `Node::serve` (a task per stream,
//! as the raw server spawns one per connection). A second pass dials a node
//! that echoes through the `incoming()` queue instead, whose hand-off from
//! the handshake's task to the application's costs a task switch more:
//! `connect_incoming_*`.
//!
//! A third pass calibrates: raw against a raw echo server that spends
//! [`SLOW_SERVER`] of CPU (a busy wait) before each echo, `connect_raw_slow_*`.
//! It shows what a little more work on the accepting side's critical path
//! costs on this machine: one thread pays about that much, but two workers
//! on a small VM may pay many times more, when the dialer's worker gets to
//! park and must be woken.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use masse::{MemoryRegistry, Node, TcpInterface};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

/// The extra CPU of the calibration pass's raw echo server, per echo.
const SLOW_SERVER: Duration = Duration::from_micros(2);

/// Reported iterations of a connect bench.
pub(crate) fn iterations(mode: Mode) -> usize {
    match mode {
        Mode::Full => 2000,
        Mode::Quick => 200,
    }
}

/// Unreported iterations first: the cache entry, the TLS session cache or
/// the pooled connection, the accept paths, the allocator.
pub(crate) fn warmup(mode: Mode) -> usize {
    iterations(mode) / 10
}

/// The header line of connect bench `name`.
pub(crate) fn describe_connect(name: &str, mode: Mode) -> String {
    format!(
        "{name}: {} interleaved iterations after {} warm-up",
        iterations(mode),
        warmup(mode)
    )
}

pub(crate) fn describe(mode: Mode) -> String {
    describe_connect("connect_latency", mode)
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| bench(warmup(mode), iterations(mode)))
}

async fn bench(warmup: usize, iterations: usize) -> Result<Vec<Figure>, BoxError> {
    let (addr, raw_server) = tcp_echo_server().await?;
    let (slow_addr, slow_server) = slow_echo_server(SLOW_SERVER).await?;

    // The masse echo node and the dialer, sharing an in-process registry.
    let registry = MemoryRegistry::new();
    let node = |name: &str| {
        Node::builder(name)
            .namespace("bench-latency")
            .registry(registry.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
    };
    let server = node("echo").await?;
    echo_serve(&server);
    let queued = node("echo-queue").await?;
    let queue_task = echo_incoming(&queued);
    let client = node("client").await?;
    warm_cache(&client, "connect_latency").await?;

    // For the loopback round trip: one connection kept open.
    let mut open = TcpStream::connect(addr).await?;
    open.set_nodelay(true)?;

    let misses_before = client.stats().cache.misses;
    let samples = interleave(
        warmup,
        iterations,
        &mut open,
        || raw_connect_echo(addr).boxed(),
        || masse_connect_echo(&client).boxed(),
    )
    .await?;
    let queue_samples = interleave(
        warmup,
        iterations,
        &mut open,
        || raw_connect_echo(addr).boxed(),
        || connect_echo(&client, "echo-queue").boxed(),
    )
    .await?;
    note_misses(&client, misses_before, "connect_latency");
    let slow_samples = interleave(
        warmup,
        iterations,
        &mut open,
        || raw_connect_echo(addr).boxed(),
        || raw_connect_echo(slow_addr).boxed(),
    )
    .await?;

    drop(open);
    client.shutdown().await?;
    server.shutdown().await?;
    queued.shutdown().await?;
    raw_server.abort();
    slow_server.abort();
    queue_task.abort();

    let Samples { raw, masse, rtt } = samples;
    let raw_p50 = percentile(&raw, 50.0);
    let masse_p50 = percentile(&masse, 50.0);
    let rtt_p50 = percentile(&rtt, 50.0);
    let q_raw = percentile(&queue_samples.raw, 50.0);
    let q_masse = percentile(&queue_samples.masse, 50.0);
    let q_rtt = percentile(&queue_samples.rtt, 50.0);
    let s_raw = percentile(&slow_samples.raw, 50.0);
    let s_slow = percentile(&slow_samples.masse, 50.0);
    let s_rtt = percentile(&slow_samples.rtt, 50.0);
    Ok(vec![
        Figure::new("connect_incoming_masse_p50", q_masse, 1, "us"),
        Figure::new("connect_incoming_raw_p50", q_raw, 1, "us"),
        Figure::new(
            "connect_incoming_overhead_rtts",
            (q_masse - q_raw) / q_rtt,
            2,
            "rtt",
        ),
        Figure::new("connect_raw_p50", raw_p50, 1, "us"),
        Figure::new("connect_raw_p99", percentile(&raw, 99.0), 1, "us"),
        Figure::new("connect_masse_p50", masse_p50, 1, "us"),
        Figure::new("connect_masse_p99", percentile(&masse, 99.0), 1, "us"),
        Figure::new("connect_overhead_p50", masse_p50 - raw_p50, 1, "us"),
        Figure::new("loopback_rtt_p50", rtt_p50, 1, "us"),
        Figure::new(
            "connect_overhead_rtts",
            (masse_p50 - raw_p50) / rtt_p50,
            2,
            "rtt",
        ),
        Figure::new("connect_raw_slow_p50", s_slow, 1, "us"),
        Figure::new(
            "connect_raw_slow_overhead_rtts",
            (s_slow - s_raw) / s_rtt,
            2,
            "rtt",
        ),
    ])
}

/// A raw TCP echo server on loopback (`TCP_NODELAY` on every accepted
/// connection): its address and the accepting task.
pub(crate) async fn tcp_echo_server() -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(echo(s));
        }
    });
    Ok((addr, task))
}

/// A raw TCP echo server like [`tcp_echo_server`] that busy-waits `extra`
/// before each echo: more CPU on the accepting side, nothing else.
async fn slow_echo_server(extra: Duration) -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0_u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let started = Instant::now();
                    while started.elapsed() < extra {
                        std::hint::spin_loop();
                    }
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

/// Runs an echo on every stream `node` accepts, each on its stream's task.
pub(crate) fn echo_serve(node: &Node) {
    node.serve(echo);
}

/// Runs an echo on every stream `node` accepts, taken from `incoming()`.
pub(crate) fn echo_incoming(node: &Node) -> JoinHandle<()> {
    let mut incoming = node.incoming();
    tokio::spawn(async move {
        while let Some(s) = incoming.accept().await {
            tokio::spawn(echo(s));
        }
    })
}

/// The samples of a connect bench after the warm-up, in µs.
pub(crate) struct Samples {
    pub(crate) raw: Vec<f64>,
    pub(crate) masse: Vec<f64>,
    pub(crate) rtt: Vec<f64>,
}

/// `warmup` unreported iterations, then `iterations` reported ones; each
/// takes one `raw` and one `masse` sample (raw first on even iterations,
/// masse first on odd ones), then one ping-pong on `open`. (Boxed futures:
/// with `AsyncFn` the bench's future is not provably `Send`.)
pub(crate) async fn interleave<'a>(
    warmup: usize,
    iterations: usize,
    open: &mut TcpStream,
    raw: impl Fn() -> BoxFuture<'a, Result<Duration, BoxError>>,
    masse: impl Fn() -> BoxFuture<'a, Result<Duration, BoxError>>,
) -> Result<Samples, BoxError> {
    let mut samples = Samples {
        raw: Vec::with_capacity(iterations),
        masse: Vec::with_capacity(iterations),
        rtt: Vec::with_capacity(iterations),
    };
    for i in 0..warmup + iterations {
        let (r, m) = if i % 2 == 0 {
            let r = raw().await?;
            (r, masse().await?)
        } else {
            let m = masse().await?;
            (raw().await?, m)
        };
        let p = ping(open).await?;
        if i >= warmup {
            samples.raw.push(micros(r));
            samples.masse.push(micros(m));
            samples.rtt.push(micros(p));
        }
    }
    Ok(samples)
}

/// Says how many dials of `client` since `misses_before` missed the
/// registry cache, if any. Not an error: the figures are still printed, but
/// the reader should know.
pub(crate) fn note_misses(client: &Node, misses_before: u64, bench: &str) {
    let misses = client.stats().cache.misses - misses_before;
    if misses > 0 {
        println!("# {bench}: {misses} of the dials missed the registry cache");
    }
}

/// Dials until a dial is answered from the cache (the cache's watch may come
/// up after the first lookup, which then has to be fetched again).
pub(crate) async fn warm_cache(client: &Node, bench: &str) -> Result<(), BoxError> {
    for _ in 0..100 {
        let before = client.stats().cache.misses;
        masse_connect_echo(client).await?;
        if client.stats().cache.misses == before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("# {bench}: the registry cache did not warm up; dials include lookups");
    Ok(())
}

pub(crate) async fn raw_connect_echo(addr: SocketAddr) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let elapsed = one_byte_echo(&mut s, start).await?;
    drop(s);
    Ok(elapsed)
}

pub(crate) async fn masse_connect_echo(client: &Node) -> Result<Duration, BoxError> {
    connect_echo(client, "echo").await
}

pub(crate) async fn connect_echo(client: &Node, name: &str) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut s = client.connect(name).await?;
    let elapsed = one_byte_echo(&mut s, start).await?;
    drop(s);
    Ok(elapsed)
}

pub(crate) async fn ping(s: &mut TcpStream) -> Result<Duration, BoxError> {
    one_byte_echo(s, Instant::now()).await
}

/// Sends one byte, waits for it to come back; the time since `start`.
pub(crate) async fn one_byte_echo<S>(s: &mut S, start: Instant) -> Result<Duration, BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&[0x2a]).await?;
    s.flush().await?;
    let mut b = [0_u8; 1];
    s.read_exact(&mut b).await?;
    let elapsed = start.elapsed();
    if b[0] != 0x2a {
        return Err(format!("echo returned {:#04x}, not 0x2a", b[0]).into());
    }
    Ok(elapsed)
}

/// Writes back whatever it reads (flushed), until end-of-stream or an error.
pub(crate) async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0_u8; 64];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // A TLS stream may hold written records until flushed.
                if s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
