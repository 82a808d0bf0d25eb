//! Messages instead of bytes: `tokio_util::codec::LengthDelimitedCodec` over a
//! `PeerStream`.
//!
//! ```text
//! cargo run -p masse-examples --example framed
//! ```
//!
//! A `PeerStream` is `AsyncRead + AsyncWrite`, so any tokio-util codec frames
//! it. Here `counter` answers every frame it receives with the frame's length
//! and a running total; `sender` sends frames of a few sizes and prints the answers.
#![allow(clippy::print_stdout)]

use futures::{SinkExt, StreamExt};
use masse::{MemoryRegistry, Node, TcpInterface};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

#[tokio::main]
async fn main() -> masse::Result<()> {
    masse_examples::init_logging();
    let registry = MemoryRegistry::new();
    let start = |name: &str| {
        Node::builder(name)
            .namespace("framed")
            .registry(registry.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
    };
    let counter = start("counter").await?;
    let sender = start("sender").await?;

    let mut incoming = counter.incoming();
    tokio::spawn(async move {
        while let Some(stream) = incoming.accept().await {
            tokio::spawn(async move {
                let mut frames = Framed::new(stream, LengthDelimitedCodec::new());
                let mut total = 0usize;
                while let Some(Ok(frame)) = frames.next().await {
                    total += frame.len();
                    let answer = format!("got {} bytes, {total} so far", frame.len());
                    if frames.send(Bytes::from(answer)).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let stream = sender.connect("counter").await?;
    let mut frames = Framed::new(stream, LengthDelimitedCodec::new());
    for size in [1usize, 100, 64 * 1024, 1 << 20] {
        frames.send(Bytes::from(vec![b'x'; size])).await?;
        match frames.next().await {
            Some(Ok(answer)) => println!(
                "sent {size:>8} bytes -> {}",
                String::from_utf8_lossy(&answer)
            ),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    drop(frames);
    sender.shutdown().await?;
    counter.shutdown().await?;
    Ok(())
}
