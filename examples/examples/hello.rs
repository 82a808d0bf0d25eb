//! Two nodes find each other by name and say hello, in one process.
//!
//! ```text
//! cargo run -p masse-examples --example hello
//! ```
//!
//! `alice` and `bob` each bind loopback TCP on a port the OS picks and publish
//! it in a registry (here the in-process `MemoryRegistry`). Neither knows the
//! other's address: `alice.connect("bob")` finds it by name. Then `bob` greets
//! every node matching `a*` with `to(...)`.
#![allow(clippy::print_stdout)]

use masse::{MemoryRegistry, Node, TcpInterface};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> masse::Result<()> {
    masse_examples::init_logging();
    let registry = MemoryRegistry::new();
    let start = |name: &str| {
        Node::builder(name)
            .namespace("hello")
            .registry(registry.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
    };
    let alice = start("alice").await?;
    let bob = start("bob").await?;
    println!("alice is at {}", alice.record().endpoints[0]);
    println!("bob   is at {}", bob.record().endpoints[0]);

    // Each node answers every stream it accepts with one line.
    for node in [&alice, &bob] {
        let me = node.name().clone();
        let mut incoming = node.incoming();
        tokio::spawn(async move {
            while let Some(stream) = incoming.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let peer = stream.peer().clone();
                    let (r, mut w) = tokio::io::split(stream);
                    let mut line = String::new();
                    if BufReader::new(r).read_line(&mut line).await.is_ok() {
                        let reply =
                            format!("hi there, {peer}! ({me} heard: {})\n", line.trim_end());
                        let _ = w.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
    }

    // Connect by name: no address anywhere in this code.
    let stream = alice.connect("bob").await?;
    println!(
        "alice -> bob: {}",
        ask(stream, "hello bob, this is alice").await?
    );

    // Reach every node whose name matches a pattern.
    let mut reach = bob.to("a*");
    while let Some(stream) = futures::StreamExt::next(&mut reach).await {
        let stream = stream?;
        let peer = stream.peer().clone();
        println!(
            "bob -> {peer}: {}",
            ask(stream, "hello, whoever you are").await?
        );
    }

    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}

/// Sends one line and returns the one-line answer.
async fn ask(stream: masse::PeerStream, line: &str) -> masse::Result<String> {
    let (r, mut w) = tokio::io::split(stream);
    w.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    Ok(answer.trim_end().to_owned())
}
