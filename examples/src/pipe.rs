//! `PipeInterface`: a transport written against masse's public traits the
//! way a third-party crate would write one, with a scheme of its own.
//!
//! Nodes of one process reach each other over in-memory pipes
//! ([`tokio::io::duplex`]) at `pipe://<name>` endpoints: no sockets, no
//! ports, no IP addresses. It shows what an interface has to get right (see
//! `docs/writing-a-backend.md`):
//!
//! - its own scheme ([`Protocol::new`]) for the endpoints it advertises and
//!   dials, and `Unsupported` for any other;
//! - an `accept` that is cancel-safe (a channel receive is);
//! - a closed or vanished listener fails a dial as a *stale address*
//!   (`ConnectionRefused`), so the node looks the name up again;
//! - the connect timeout kept by the interface itself (`Error::Timeout`);
//! - the listener's address released on `close` and on drop.
//!
//! It passes `masse::testkit::InterfaceConformance` (`tests/pipe.rs`).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use masse::{
    Accepted, BindContext, BoxIo, ConnectContext, Endpoint, Error, Interface, Listener, PeerRecord,
    Protocol, Result, async_trait,
};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// The `pipe` scheme.
pub static PIPE: LazyLock<Protocol> =
    LazyLock::new(|| Protocol::new("pipe").expect("a valid scheme"));

/// Streams dialed but not yet accepted, per listener.
const BACKLOG: usize = 128;

/// The listeners of this process, by pipe name.
static HUB: LazyLock<Mutex<HashMap<String, mpsc::Sender<DuplexStream>>>> =
    LazyLock::new(Mutex::default);

fn hub() -> std::sync::MutexGuard<'static, HashMap<String, mpsc::Sender<DuplexStream>>> {
    HUB.lock().unwrap_or_else(|p| p.into_inner())
}

/// In-memory streams between the nodes of one process, at `pipe://<name>`.
#[derive(Debug, Clone)]
pub struct PipeInterface {
    name: Option<String>,
    buffer: usize,
}

impl Default for PipeInterface {
    fn default() -> Self {
        Self::new()
    }
}

impl PipeInterface {
    /// Listens at `pipe://<namespace>.<name>.<instance>`, unique per node run.
    pub fn new() -> Self {
        PipeInterface {
            name: None,
            buffer: 64 * 1024,
        }
    }

    /// Listens at `pipe://<name>`.
    pub fn named(name: impl Into<String>) -> Self {
        PipeInterface {
            name: Some(name.into()),
            ..Self::new()
        }
    }

    /// Bytes buffered in each direction of a stream (default 64 KiB).
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(1);
        self
    }
}

fn refused(what: String) -> Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, what).into()
}

#[async_trait]
impl Interface for PipeInterface {
    fn protocol(&self) -> Protocol {
        PIPE.clone()
    }

    async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.{}", ctx.namespace, ctx.name, ctx.instance));
        let endpoint = Endpoint::with_address(PIPE.clone(), &name)?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        {
            let mut hub = hub();
            if hub.get(&name).is_some_and(|live| !live.is_closed()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{endpoint} is in use"),
                )
                .into());
            }
            hub.insert(name.clone(), tx.clone());
        }
        tracing::debug!(%endpoint, "pipe listening");
        Ok(Box::new(PipeListener {
            name,
            endpoint,
            tx,
            rx,
        }))
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        _peer: &PeerRecord,
        ctx: &ConnectContext,
    ) -> Result<BoxIo> {
        if endpoint.protocol() != &*PIPE {
            return Err(Error::Unsupported(format!(
                "the pipe interface cannot dial {endpoint}"
            )));
        }
        let name = endpoint.address();
        let listener = hub().get(name.as_ref()).cloned();
        let Some(listener) = listener else {
            return Err(refused(format!("nobody listens at {endpoint}")));
        };
        let (ours, theirs) = tokio::io::duplex(self.buffer);
        let limit: Duration = ctx.connect_timeout;
        match tokio::time::timeout(limit, listener.send(theirs)).await {
            Ok(Ok(())) => Ok(Box::new(ours)),
            Ok(Err(_)) => Err(refused(format!("the listener at {endpoint} closed"))),
            Err(_) => Err(Error::Timeout {
                what: masse::Operation::Connect,
                after: limit,
            }),
        }
    }
}

struct PipeListener {
    name: String,
    endpoint: Endpoint,
    /// Ours in the hub: removed only if still ours.
    tx: mpsc::Sender<DuplexStream>,
    rx: mpsc::Receiver<DuplexStream>,
}

impl PipeListener {
    fn release(&mut self) {
        let mut hub = hub();
        if hub
            .get(&self.name)
            .is_some_and(|t| t.same_channel(&self.tx))
        {
            hub.remove(&self.name);
        }
        drop(hub);
        // Dials already queued fail at once instead of waiting for an accept.
        self.rx.close();
    }
}

#[async_trait]
impl Listener for PipeListener {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![self.endpoint.clone()]
    }

    async fn accept(&mut self) -> Result<Accepted> {
        match self.rx.recv().await {
            Some(io) => Ok(Accepted::new(Box::new(io), None)),
            None => Err(Error::Closed("pipe listener")),
        }
    }

    async fn close(&mut self) {
        self.release();
    }
}

impl Drop for PipeListener {
    fn drop(&mut self) {
        self.release();
    }
}
