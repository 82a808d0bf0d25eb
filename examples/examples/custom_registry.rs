//! A registry from outside masse: `TenantRegistry` (in `examples/src/tenant.rs`)
//! implements the `Registry` trait to give two tenants one shared backend.
//!
//! ```text
//! cargo run -p masse-examples --example custom_registry
//! cargo test -p masse-examples --test tenant      # the conformance suite against it
//! ```
//!
//! Tenants `acme` and `globex` each run a node called `api` in namespace
//! `prod`, on one `MemoryRegistry`. Each tenant's client reaches its own `api`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use masse::{MemoryRegistry, Node, TcpInterface};
use masse_examples::tenant::tenant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> masse::Result<()> {
    masse_examples::init_logging();
    let shared: masse::DynRegistry = Arc::new(MemoryRegistry::new());
    let mut nodes = Vec::new();
    for t in ["acme", "globex"] {
        let api = Node::builder("api")
            .namespace("prod")
            .registry_dyn(tenant(t, shared.clone())?)
            .interface(TcpInterface::new("127.0.0.1:0"))
            .metadata("tenant", t)
            .start()
            .await?;
        let mut incoming = api.incoming();
        let who = t.to_owned();
        tokio::spawn(async move {
            while let Some(mut s) = incoming.accept().await {
                let _ = s.write_all(format!("api of {who}").as_bytes()).await;
            }
        });
        nodes.push(api);
    }
    for t in ["acme", "globex"] {
        let client = Node::builder("client")
            .namespace("prod")
            .registry_dyn(tenant(t, shared.clone())?)
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
            .await?;
        let mut s = client.connect("api").await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        println!("client of {t} reached: {answer}");
        drop(s);
        client.shutdown().await?;
    }
    let everyone = shared.lookup(&"acme.prod".parse()?, &"*".parse()?).await?;
    println!(
        "the backend stores acme's peers under namespace acme.prod: {:?}",
        everyone.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()
    );
    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}
