//! A registry from outside masse, under a URL scheme of its own:
//! `JsonFileRegistry` (in `examples/src/json_registry.rs`) keeps peers in one
//! JSON file and cannot watch it, so masse polls the file.
//!
//! ```text
//! cargo run -p masse-examples --example json_registry                  # a file in a temp dir
//! cargo run -p masse-examples --example json_registry -- ./peers.json  # a file of your own
//! cargo test -p masse-examples --test json_registry                    # conformance suite + two nodes
//! ```
//!
//! `json_registry::register()` puts the `json://` scheme in masse's scheme
//! table, so `registry_from_url("json://…")` (and `MASSE_REGISTRY`) open it
//! like any built-in registry. Two nodes, `alpha` and `beta`, start on the
//! same file; alpha hears beta join, they talk by name, and alpha hears beta
//! go, each within about one poll interval (1 s by default).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use masse::prelude::*;
use masse::{Node, NodeEvent, TcpInterface};
use masse_examples::json_registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> masse::Result<()> {
    masse_examples::init_logging();
    json_registry::register()?;
    let temp = std::env::temp_dir().join(format!("masse-json-{}", std::process::id()));
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| temp.join("peers.json"), PathBuf::from);
    let url = format!("json://{}", path.display());
    println!("registry: {url}");

    let start = |name: &'static str| {
        Node::builder(name)
            .namespace("demo")
            .registry_from_url(url.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
    };
    let alpha = start("alpha").await?;
    let mut events = alpha.events();
    let beta = start("beta").await?;
    let mut incoming = beta.incoming();
    tokio::spawn(async move {
        while let Some(mut s) = incoming.accept().await {
            let _ = s.write_all(b"hello from beta").await;
        }
    });

    let wait = Duration::from_secs(5);
    next_about(&mut events, "beta", wait).await;
    let mut s = alpha.connect("beta").await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    println!("alpha -> beta: {answer:?}");
    drop(s);
    println!("the file now holds:\n{}", std::fs::read_to_string(&path)?);

    beta.shutdown().await?;
    next_about(&mut events, "beta", wait).await;
    alpha.shutdown().await?;
    if std::env::args_os().nth(1).is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(())
}

/// Prints alpha's events until one about `peer` arrives.
async fn next_about(events: &mut masse::Events, peer: &str, wait: Duration) {
    while let Ok(Some(ev)) = tokio::time::timeout(wait, events.next()).await {
        let about = match &ev {
            NodeEvent::PeerJoined(r) | NodeEvent::PeerUpdated(r) => r.name.as_str() == peer,
            NodeEvent::PeerLeft { name, .. } | NodeEvent::PeerExpired { name, .. } => {
                name.as_str() == peer
            }
            _ => false,
        };
        if about {
            println!("alpha saw: {ev:?}");
            return;
        }
    }
    println!("alpha heard nothing about {peer} within {wait:?}");
}
