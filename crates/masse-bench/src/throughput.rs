//! Figure 1: one stream, 64 KiB writes, a raw tokio `TcpStream` against a
//! masse `PeerStream` between two nodes.
//!
//! Each round opens a fresh connection (not timed), then times from the first
//! write until the reader has seen end-of-stream after the last byte. Raw and
//! masse rounds alternate (raw first on even rounds, masse first on odd ones)
//! so that drift in machine load hits both; the medians are reported.

use std::time::Instant;

use masse::{Incoming, MemoryRegistry, Node, TcpInterface};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::median;
use crate::{BoxError, Figure, Mode};

/// Size of every write, and of the reader's buffer.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Measured rounds per side.
const ROUNDS: usize = 5;
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

fn bytes_per_round(mode: Mode) -> u64 {
    match mode {
        Mode::Full => 1 << 30,
        Mode::Quick => 256 << 20,
    }
}

pub(crate) fn describe(mode: Mode) -> String {
    format!(
        "tcp_throughput: {ROUNDS}+{ROUNDS} interleaved rounds x {} MiB, {} KiB writes, on 2 workers then on 1 thread",
        bytes_per_round(mode) >> 20,
        CHUNK / 1024
    )
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| bench(bytes_per_round(mode)))
}

async fn bench(per_round: u64) -> Result<Vec<Figure>, BoxError> {
    let mut raw = Raw::bind().await?;
    let mut masse = Masse::start().await?;

    // One short unreported round each: page in buffers, grow socket windows.
    raw.round(per_round / 8).await?;
    masse.round(per_round / 8).await?;

    let (mut raw_rates, mut masse_rates) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        if i % 2 == 0 {
            raw_rates.push(raw.round(per_round).await?);
            masse_rates.push(masse.round(per_round).await?);
        } else {
            masse_rates.push(masse.round(per_round).await?);
            raw_rates.push(raw.round(per_round).await?);
        }
    }
    masse.shutdown().await?;

    Ok(rate_figures("tcp_throughput", &raw_rates, &masse_rates))
}

/// `<bench>_raw`, `<bench>_masse` (medians, MiB/s) and `<bench>_ratio`
/// (masse over raw), after a comment line with every round's rate in the
/// order measured, so that the spread behind a median is on record.
pub(crate) fn rate_figures(bench: &str, raw: &[f64], masse: &[f64]) -> Vec<Figure> {
    let on = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => "1 thread",
        _ => "2 workers",
    };
    let list = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "# {bench} on {on}, MiB/s per round: raw {} | masse {}",
        list(raw),
        list(masse)
    );
    let (raw_median, masse_median) = (median(raw), median(masse));
    vec![
        Figure::new(format!("{bench}_raw"), raw_median, 1, "MiB/s"),
        Figure::new(format!("{bench}_masse"), masse_median, 1, "MiB/s"),
        Figure::new(format!("{bench}_ratio"), masse_median / raw_median, 3, "x"),
    ]
}

/// The baseline: a plain listener and `TcpStream`s with `TCP_NODELAY`, as
/// masse's `TcpInterface` sets it by default.
struct Raw {
    listener: TcpListener,
}

impl Raw {
    async fn bind() -> Result<Self, BoxError> {
        Ok(Raw {
            listener: TcpListener::bind("127.0.0.1:0").await?,
        })
    }

    async fn round(&mut self, bytes: u64) -> Result<f64, BoxError> {
        let client = TcpStream::connect(self.listener.local_addr()?).await?;
        let (server, _) = self.listener.accept().await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        transfer(client, server, bytes).await
    }
}

/// Two nodes on loopback TCP sharing an in-process registry: `source` dials
/// `sink` by name, `sink` takes the stream from its incoming queue.
struct Masse {
    source: Node,
    sink: Node,
    incoming: Incoming,
}

impl Masse {
    async fn start() -> Result<Self, BoxError> {
        let registry = MemoryRegistry::new();
        let node = |name: &str| {
            Node::builder(name)
                .namespace("bench-throughput")
                .registry(registry.clone())
                .interface(TcpInterface::new("127.0.0.1:0"))
                .start()
        };
        let sink = node("sink").await?;
        let incoming = sink.incoming();
        let source = node("source").await?;
        Ok(Masse {
            source,
            sink,
            incoming,
        })
    }

    async fn round(&mut self, bytes: u64) -> Result<f64, BoxError> {
        let client = self.source.connect("sink").await?;
        let server = self
            .incoming
            .accept()
            .await
            .ok_or("the sink node stopped accepting")?;
        transfer(client, server, bytes).await
    }

    async fn shutdown(self) -> Result<(), BoxError> {
        self.source.shutdown().await?;
        self.sink.shutdown().await?;
        Ok(())
    }
}

/// Writes `bytes` in [`CHUNK`]-sized writes to `writer` while a separate task
/// reads and discards them from `reader`; returns MiB/s from the first write
/// to the reader seeing end-of-stream.
pub(crate) async fn transfer<W, R>(mut writer: W, reader: R, bytes: u64) -> Result<f64, BoxError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin + Send + 'static,
{
    let reader = tokio::spawn(discard(reader));
    let chunk = vec![0xa5_u8; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        writer.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    writer.shutdown().await?;
    let received = reader.await??;
    let elapsed = start.elapsed();
    // Keep the writer open until the reader is done, then close it.
    drop(writer);
    if received != bytes {
        return Err(format!("sent {bytes} bytes but the reader got {received}").into());
    }
    Ok(bytes as f64 / MIB / elapsed.as_secs_f64())
}

/// Reads until end-of-stream, keeping only the count.
pub(crate) async fn discard<R: AsyncRead + Unpin>(mut reader: R) -> std::io::Result<u64> {
    let mut buf = vec![0_u8; CHUNK];
    let mut total = 0;
    loop {
        match reader.read(&mut buf).await? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}
