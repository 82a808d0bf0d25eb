//! The greet demo: a `greeter` node offers `greet(name) -> "hi there, <name>"`
//! over RPC, and client nodes find it by name and call it.
//!
//! ```text
//! cargo run -p masse-examples --example greet              # greeter + clients alice and bob, one process
//! cargo run -p masse-examples --example greet -- serve     # only the greeter (one terminal) ...
//! cargo run -p masse-examples --example greet -- call carol  # ... and a client, in another
//! ```
//!
//! The registry is `MASSE_REGISTRY` if set (`sqlite://…`, `postgres://…`,
//! `redis://…`), else the embedded SQLite file in the user's data directory,
//! so separate processes on one machine find each other with no server at
//! all. The RPC layer is [tarpc] over the `PeerStream`, framed with a
//! length-delimited codec: masse carries bytes, tarpc brings the calls.
//!
//! The nodes bind loopback here (`127.0.0.1:0`); across machines bind
//! `0.0.0.0:0` (or use `.with_defaults()`) and point every node at one shared
//! registry.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use futures::StreamExt;
use masse::{Node, PeerStream, TcpInterface};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio_util::codec::LengthDelimitedCodec;

/// The RPC interface the greeter offers.
#[tarpc::service]
trait Greeter {
    /// Returns a greeting for `name`.
    async fn greet(name: String) -> String;
}

#[derive(Clone)]
struct GreeterServer;

impl Greeter for GreeterServer {
    async fn greet(self, _: tarpc::context::Context, name: String) -> String {
        format!("hi there, {name}")
    }
}

/// The masse service name the greeter accepts RPC streams on.
const SERVICE: &str = "greet";

async fn start(name: &str) -> masse::Result<Node> {
    Node::builder(name)
        .namespace("greet-demo")
        .registry_connect(masse::registry_from_env())
        .interface(TcpInterface::new("127.0.0.1:0"))
        .service(SERVICE)
        .start()
        .await
}

/// Serves `greet` on every stream that asks for the service, until the node stops.
async fn serve(greeter: &Node) {
    let mut streams = greeter.incoming_service(SERVICE);
    tokio::spawn(async move {
        while let Some(stream) = streams.next().await {
            let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
            let channel = BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(GreeterServer.serve())
                    .for_each(|call| async {
                        tokio::spawn(call);
                    }),
            );
        }
    });
}

/// Calls `greet` on the node named `greeter`, as the node `me`.
async fn call(me: &Node) -> Result<String, Box<dyn std::error::Error>> {
    let stream = me.connect_service("greeter", SERVICE).await?;
    let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
    let client = GreeterClient::new(tarpc::client::Config::default(), transport).spawn();
    Ok(client
        .greet(tarpc::context::current(), me.name().to_string())
        .await?)
}

fn framed(stream: PeerStream) -> tokio_util::codec::Framed<PeerStream, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder().new_framed(stream)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    masse_examples::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let greeter = start("greeter").await?;
            serve(&greeter).await;
            println!("greeter is up at {}", greeter.record().endpoints[0]);
            for name in ["alice", "bob"] {
                let client = start(name).await?;
                println!("{name} asked greeter: {}", call(&client).await?);
                client.shutdown().await?;
            }
            greeter.shutdown().await?;
        }
        ["serve"] => {
            let greeter = start("greeter").await?;
            serve(&greeter).await;
            println!(
                "greeter is up at {}; Ctrl-C to stop",
                greeter.record().endpoints[0]
            );
            tokio::signal::ctrl_c().await?;
            greeter.shutdown().await?;
        }
        ["call", name] => {
            let client = start(name).await?;
            let answer = tokio::time::timeout(Duration::from_secs(10), call(&client)).await??;
            println!("{name} asked greeter: {answer}");
            client.shutdown().await?;
        }
        _ => {
            eprintln!("usage: greet [serve | call NAME]");
            std::process::exit(2);
        }
    }
    Ok(())
}
