//! Wrappers: turn every stream of a node into something else. Here a
//! compressing wrapper written for this example, `Metered` to see what it
//! saves, and `Latency` to try an application against a slow link.
//!
//! ```text
//! cargo run -p masse-examples --example custom_wrapper
//! ```
//!
//! Wrappers run in the order they are added, each around the previous one,
//! on both ends of a stream: the first sees the raw connection, the last is
//! what the application reads and writes. Both ends must agree on wrappers
//! that change the bytes (like compression).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use async_compression::tokio::bufread::DeflateDecoder;
use async_compression::tokio::write::DeflateEncoder;
use masse::{BoxIo, Latency, MemoryRegistry, Metered, Node, StreamContext, TcpInterface, Wrapper};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// Deflate in both directions. Every `flush` ends a compressed block, so
/// interactive protocols keep working; `shutdown` finishes the stream.
#[derive(Debug, Clone, Copy)]
struct Compress;

#[masse::async_trait]
impl Wrapper for Compress {
    async fn wrap(&self, io: BoxIo, _ctx: &StreamContext) -> masse::Result<BoxIo> {
        let (read, write) = tokio::io::split(io);
        let reader = DeflateDecoder::new(BufReader::new(read));
        let writer = DeflateEncoder::new(write);
        Ok(Box::new(tokio::io::join(reader, writer)))
    }
}

#[tokio::main]
async fn main() -> masse::Result<()> {
    masse_examples::init_logging();
    let registry = MemoryRegistry::new();
    let wire = Metered::new();
    let start = |name: &str, delay: Duration| {
        Node::builder(name)
            .namespace("wrappers")
            .registry(registry.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .wrap(wire.clone()) // sees the bytes on the wire ...
            .wrap(Latency::fixed(delay)) // ... after a simulated slow link ...
            .wrap(Compress) // ... of what the application wrote, compressed
            .start()
    };
    let server = start("server", Duration::from_millis(25)).await?;
    let client = start("client", Duration::ZERO).await?;

    let mut incoming = server.incoming();
    // Told when the server is done with a stream (and has closed it).
    let (served, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(mut s) = incoming.accept().await {
            let mut text = Vec::new();
            if s.read_to_end(&mut text).await.is_ok() {
                let _ = s
                    .write_all(format!("{} bytes received", text.len()).as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
            drop(s);
            let _ = served.send(());
        }
    });

    let text = "the quick brown fox jumps over the lazy dog. ".repeat(2000);
    let started = Instant::now();
    let mut s = client.connect("server").await?;
    s.write_all(text.as_bytes()).await?;
    s.shutdown().await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let took = started.elapsed();
    let app_bytes = s.bytes_out();
    drop(s);
    // Both ends closed before the meter is read.
    served_rx.recv().await;
    let on_wire = wire.totals();
    println!("server says: {answer}");
    println!(
        "the application wrote {app_bytes} bytes; {} crossed the wire (both nodes' wire bytes out)",
        on_wire.bytes_out
    );
    println!("round trip through the 25 ms link took {took:?} (at least 2 x 25 ms)");
    client.shutdown().await?;
    server.shutdown().await?;
    Ok(())
}
