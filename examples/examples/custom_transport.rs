//! A transport from outside masse: `PipeInterface` (in
//! `examples/src/pipe.rs`) carries streams between nodes of one process
//! over in-memory pipes at `pipe://` endpoints, a scheme masse itself does
//! not know.
//!
//! ```text
//! cargo run -p masse-examples --example custom_transport
//! cargo test -p masse-examples --test pipe     # the conformance suite against it
//! ```
//!
//! `clock` listens on a pipe and on TCP; `visitor` speaks only pipes and
//! reaches it by name through the `pipe://` endpoint of its record.
#![allow(clippy::print_stdout)]

use masse::{MemoryRegistry, Node, TcpInterface};
use masse_examples::pipe::PipeInterface;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> masse::Result<()> {
    masse_examples::init_logging();
    let registry = MemoryRegistry::new();
    let clock = Node::builder("clock")
        .registry(registry.clone())
        .interface(PipeInterface::new())
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await?;
    clock.serve(|mut s| async move {
        let line = format!("hello {} over {}\n", s.peer(), s.protocol());
        let _ = s.write_all(line.as_bytes()).await;
    });
    for e in &clock.record().endpoints {
        println!("clock listens at {e}");
    }

    let visitor = Node::builder("visitor")
        .registry(registry)
        .interface(PipeInterface::new())
        .start()
        .await?;
    let mut s = visitor.connect("clock").await?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await?;
    print!("{reply}");

    drop(s);
    visitor.shutdown().await?;
    clock.shutdown().await?;
    Ok(())
}
