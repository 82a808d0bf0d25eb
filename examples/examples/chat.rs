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
                        boxes.lock().await.push((who.clone(), w));
                        show(format!("* {who} is here"));
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

/// Waits (up to 10 s) until `n` lines starting with `prefix` were shown.
async fn wait_for_lines(
    shown: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    n: usize,
    prefix: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut left = n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while left > 0 {
        match tokio::time::timeout_at(deadline, shown.recv()).await {
            Ok(Some(line)) if line.starts_with(prefix) => left -= 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(
                    format!("{left} of {n} lines starting with {prefix:?} never came").into(),
                );
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    masse_examples::init_logging();
    let arg = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    if arg == "demo" {
        // Three chatters in one process, on their own in-process registry.
        let registry: masse::DynRegistry = Arc::new(masse::MemoryRegistry::new());
        let (seen, mut shown) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut room = Vec::new();
        for name in ["chat-ann", "chat-bob", "chat-cy"] {
            let (me, seen) = (name.to_owned(), seen.clone());
            room.push(
                Chatter::join(name, registry.clone(), move |l| {
                    println!("{me:>9} sees {l}");
                    let _ = seen.send(l);
                })
                .await?,
            );
        }
        // Each of the three sees the two others arrive, then hears them.
        let pairs = room.len() * (room.len() - 1);
        wait_for_lines(&mut shown, pairs, "* ").await?;
        for (i, c) in room.iter().enumerate() {
            c.say(&format!("hello from {} ({i})", c.node.name())).await;
        }
        wait_for_lines(&mut shown, pairs, "[").await?;
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
