//! A chat room: every node named `chat-*` sees every other's lines.
//!
//! ```text
//! cargo run -p masse-examples --example chat -- demo        # three chatters in one process
//! cargo run -p masse-examples --example chat -- chat-ann    # one chatter per terminal; type lines
//! ```
//!
//! Each chatter reaches every current and future `chat-*` node with
//! `node.to("chat-*").follow()` and writes its lines to all of them; whatever
//! arrives on its incoming streams is printed with the sender's name. Nobody
//! lists addresses: a chatter that joins later is reached as soon as it
//! registers. The registry is `MASSE_REGISTRY` or the embedded SQLite file,
//! so chatters in separate terminals on one machine meet without a server.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::{Node, PeerStream, TcpInterface};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, WriteHalf};
use tokio::sync::Mutex;

/// Write halves of the streams to every other chatter.
type Outboxes = Arc<Mutex<Vec<(String, WriteHalf<PeerStream>)>>>;

struct Chatter {
    node: Node,
    outboxes: Outboxes,
}

impl Chatter {
    async fn join(
        name: &str,
        registry: masse::DynRegistry,
        show: impl Fn(String) + Send + Sync + 'static,
    ) -> masse::Result<Self> {
        let node = Node::builder(name)
            .namespace("chat")
            .registry_dyn(registry)
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
            .await?;
        let show = Arc::new(show);
        // Print what others say to us.
        let mut incoming = node.incoming();
        let shown = show.clone();
        tokio::spawn(async move {
            while let Some(stream) = incoming.accept().await {
                let show = shown.clone();
                tokio::spawn(async move {
                    let who = stream.peer().to_string();
                    let mut lines = BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        show(format!("[{who}] {line}"));
                    }
                });
            }
        });
        // Reach everyone in the room, now and later.
        let outboxes: Outboxes = Arc::default();
        let mut room = node.to("chat-*").follow();
        let boxes = outboxes.clone();
        tokio::spawn(async move {
            while let Some(reached) = room.next().await {
                match reached {
                    Ok(stream) => {
                        let who = stream.peer().to_string();
                        let (_, w) = tokio::io::split(stream);
                        show(format!("* {who} is here"));
                        boxes.lock().await.push((who, w));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not reach a chatter"),
                }
            }
        });
        Ok(Chatter { node, outboxes })
    }

    async fn say(&self, line: &str) {
        let mut boxes = self.outboxes.lock().await;
        let mut alive = Vec::with_capacity(boxes.len());
        for (who, mut w) in boxes.drain(..) {
            if w.write_all(format!("{line}\n").as_bytes()).await.is_ok() {
                alive.push((who, w));
            }
        }
        *boxes = alive;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    masse_examples::init_logging();
    let arg = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    if arg == "demo" {
        // Three chatters in one process, on their own in-process registry.
        let registry: masse::DynRegistry = Arc::new(masse::MemoryRegistry::new());
        let mut room = Vec::new();
        for name in ["chat-ann", "chat-bob", "chat-cy"] {
            let me = name.to_owned();
            room.push(
                Chatter::join(name, registry.clone(), move |l| {
                    println!("{me:>9} sees {l}")
                })
                .await?,
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, c) in room.iter().enumerate() {
            c.say(&format!("hello from {} ({i})", c.node.name())).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Hang up everywhere first, so no node waits on another's open stream.
        for c in &room {
            c.outboxes.lock().await.clear();
        }
        for c in room {
            c.node.shutdown().await?;
        }
        return Ok(());
    }
    let registry = masse::registry_from_env().await?;
    let me = Chatter::join(&arg, registry, |l| println!("{l}")).await?;
    eprintln!("joined as {arg}; type lines, Ctrl-D to leave");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        me.say(&line).await;
    }
    drop(me.outboxes);
    me.node.shutdown().await?;
    Ok(())
}
