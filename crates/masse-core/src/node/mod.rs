//! The [`Node`] runtime: a named participant that dials peers by name and
//! accepts their streams.

mod accept;
mod builder;
mod core;
mod dial;
mod event;
mod lifecycle;
mod pipe;
mod stats;
mod stream;

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use self::builder::NodeBuilder;
pub use self::dial::Reach;
pub use self::event::NodeEvent;
pub use self::stats::{NodeStats, STATS_SERVICE};
pub use self::stream::PeerStream;

use self::core::{Core, Route};
use crate::error::{Error, Result};
use crate::name::{Namespace, PeerName};
use crate::pattern::Pattern;
use crate::record::{InstanceId, PeerRecord};

/// How long [`Node::shutdown`] lets its tasks end on their own before it
/// aborts them.
const TASK_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A named participant in a namespace: it publishes where it can be reached,
/// dials other nodes by name, and accepts their streams.
///
/// ```
/// # async fn demo(tcp: impl masse_core::Interface + Clone) -> masse_core::Result<()> {
/// use masse_core::Node;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let greeter = Node::builder("greeter").interface(tcp.clone()).start().await?;
/// let client = Node::builder("client").interface(tcp).start().await?;
///
/// let mut s = client.connect("greeter").await?;
/// s.write_all(b"hi").await?;
/// let mut inbound = greeter.incoming().accept().await.expect("a stream");
/// let mut buf = [0; 2];
/// inbound.read_exact(&mut buf).await?;
/// assert_eq!(inbound.peer().as_str(), "client");
/// client.shutdown().await?;
/// greeter.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// Dropping a `Node` without [`shutdown`](Self::shutdown) stops its tasks at
/// once without unpublishing: its record then expires after the ttl, as if the
/// process had died.
pub struct Node {
    core: Arc<Core>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    span: tracing::Span,
}

impl Node {
    /// Starts configuring a node called `name` (1–128 of `[A-Za-z0-9._-]`).
    pub fn builder(name: impl AsRef<str>) -> NodeBuilder {
        NodeBuilder::new(name.as_ref())
    }

    /// This node's name.
    pub fn name(&self) -> &PeerName {
        &self.core.name
    }

    /// This node's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.core.namespace
    }

    /// This run's instance id.
    pub fn instance(&self) -> InstanceId {
        self.core.instance
    }

    /// The record this node publishes.
    pub fn record(&self) -> PeerRecord {
        self.core.record()
    }

    /// Opens a stream to the peer called `target`: a name (`"db-1"`), or a URL
    /// `masse://<namespace>/<name>[/<service>]` whose namespace must be this node's.
    ///
    /// The address comes from the registry cache; if it turns out stale (the
    /// peer moved or restarted), the name is looked up afresh and dialed once more.
    ///
    /// The stream is returned as soon as the `Hello` is sent: data may be
    /// written at once, and the acceptor's answer is read before the first
    /// byte comes back ([`PeerStream::established`] waits for it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] / [`Error::InvalidAddress`] for a bad target,
    /// [`Error::NotFound`] if no live peer has the name, [`Error::Closed`]
    /// after shutdown; anything else comes as [`Error::Connect`], naming the
    /// peer, the endpoint and the step, around the cause ([`Error::root`]):
    /// [`Error::Refused`] with its [`RefuseCode`](crate::RefuseCode),
    /// [`Error::WrongPeer`], [`Error::Unauthorized`], [`Error::Timeout`],
    /// [`Error::Io`], or a registry error at the lookup. A refusal read after
    /// this returns fails the first read or write (as an `io::Error` whose
    /// inner error is that `Error::Connect`) and [`PeerStream::established`].
    pub async fn connect(&self, target: impl AsRef<str>) -> Result<PeerStream> {
        let (name, service) = self.parse_target(target.as_ref())?;
        self.core
            .connect_name(&name, service.as_deref())
            .instrument(tracing::debug_span!(parent: &self.span, "peer", peer = %name))
            .await
    }

    /// Opens a stream to `service` on the peer called `name`; the peer refuses
    /// with `NoSuchService` if it does not offer it.
    pub async fn connect_service(
        &self,
        name: impl AsRef<str>,
        service: &str,
    ) -> Result<PeerStream> {
        let name = PeerName::new(name.as_ref())?;
        crate::name::validate_service(service)?;
        self.core
            .connect_name(&name, Some(service))
            .instrument(tracing::debug_span!(parent: &self.span, "peer", peer = %name))
            .await
    }

    /// Streams to every live peer whose name matches `pattern` (a glob such as
    /// `"worker-*"`), yielded as each is ready; this node itself is left out
    /// unless [`Reach::include_self`] is set. One peer's failure is an `Err`
    /// item, not the end. [`Reach::follow`] keeps going with every peer that
    /// joins later.
    pub fn to(&self, pattern: impl AsRef<str>) -> Reach {
        Reach::new(self.core.clone(), Pattern::new(pattern.as_ref()))
    }

    /// Every accepted stream that is not claimed by an
    /// [`incoming_service`](Self::incoming_service) receiver. Several
    /// `Incoming`s share one queue: each stream goes to one of them.
    pub fn incoming(&self) -> Incoming {
        Incoming::new(self.core.clone(), self.core.default_route.rx.clone())
    }

    /// Accepted streams that asked for `service`, including those that
    /// arrived since [`start`](NodeBuilder::start) (a service declared with
    /// [`NodeBuilder::service`] has its queue from then on). They never go to
    /// [`incoming`](Self::incoming).
    pub fn incoming_service(&self, service: &str) -> Incoming {
        let mut routes = self
            .core
            .service_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let route = routes
            .entry(service.to_owned())
            .or_insert_with(|| Route::new(self.core.config.incoming_capacity));
        Incoming::new(self.core.clone(), route.rx.clone())
    }

    /// Runs `handler` on every accepted stream that [`incoming`](Self::incoming)
    /// would get, from now on: each stream on a task of its own (the one that
    /// ran its handshake, or a new one if the handshake was done at once),
    /// without a queue, the way a raw server spawns a task per connection;
    /// never on the node's accept loop. It is the fastest way to serve: no hand-off
    /// between the handshake and the application. Streams queued before the
    /// call stay for `incoming`. Calling it again replaces the handler.
    ///
    /// ```
    /// # async fn demo(node: masse_core::Node) {
    /// use tokio::io::AsyncWriteExt;
    /// node.serve(|mut stream| async move {
    ///     let _ = stream.write_all(b"hello\n").await;
    /// });
    /// # }
    /// ```
    pub fn serve<F, Fut>(&self, handler: F)
    where
        F: Fn(PeerStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.set_handler(None, handler);
    }

    /// [`serve`](Self::serve) for the streams that asked for `service`
    /// (declared with [`NodeBuilder::service`]); they no longer go to
    /// [`incoming_service`](Self::incoming_service).
    pub fn serve_service<F, Fut>(&self, service: &str, handler: F)
    where
        F: Fn(PeerStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.set_handler(Some(service.to_owned()), handler);
    }

    fn set_handler<F, Fut>(&self, service: Option<String>, handler: F)
    where
        F: Fn(PeerStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let handler: core::Handler = Arc::new(move |s| Box::pin(handler(s)));
        self.core
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service, handler);
    }

    /// A receiver of this node's [`NodeEvent`]s from now on.
    pub fn events(&self) -> Events {
        Events {
            rx: tokio_stream_shim::BroadcastStream::new(self.core.events.subscribe()),
        }
    }

    /// The live peers whose names match `pattern`, for monitoring (this node
    /// included), sorted by name, through the node's registry cache.
    ///
    /// During a registry outage it answers with the last listing the cache
    /// has for `pattern` (as it stood when the registry stopped answering:
    /// peers that left or died since are still in it, and new ones are
    /// not); if the cache has none, it fails with the registry's error
    /// (usually [`Error::RegistryUnavailable`]). The node's
    /// [`NodeEvent::RegistryUnavailable`] and
    /// [`NodeEvent::RegistryRestored`] tell when that is the case. For the
    /// time each peer has left, use
    /// [`Registry::lookup_leases`](crate::Registry::lookup_leases) on the
    /// registry itself.
    pub async fn peers(&self, pattern: impl AsRef<str>) -> Result<Vec<PeerRecord>> {
        let pattern = Pattern::new(pattern.as_ref())?;
        let found = self
            .core
            .registry
            .lookup_cached(&self.core.namespace, &pattern)
            .await?;
        Ok(found.records.as_ref().clone())
    }

    /// Counters: streams, bytes, dials by outcome, cache hit rate.
    pub fn stats(&self) -> NodeStats {
        self.core.stats()
    }

    /// The [`NodeStats`] of the peer called `peer`, read from its
    /// [`STATS_SERVICE`] (see [`NodeBuilder::expose_stats`]): dialed by name
    /// like any [`connect_service`](Self::connect_service), so the
    /// namespace secret, TLS or QUIC identities and the wrappers apply. The
    /// answer is read within the node's connect timeout and is at most
    /// 64 KiB.
    ///
    /// # Errors
    ///
    /// Those of [`connect`](Self::connect): a peer that does not expose its
    /// stats refuses with [`RefuseCode::NoSuchService`](crate::RefuseCode)
    /// (inside [`Error::Connect`], see [`Error::root`]); a node without the
    /// namespace's secret gets `Unauthorized`. [`Error::Timeout`] if the
    /// answer takes longer than the connect timeout, [`Error::Protocol`] if it
    /// is not a stats document or is too long.
    pub async fn remote_stats(&self, peer: impl AsRef<str>) -> Result<NodeStats> {
        let timeout = self.core.config.connect_timeout;
        let read = async {
            let mut s = self.connect_service(peer, STATS_SERVICE).await?;
            s.established().await?;
            // Nothing to send: say so, for a peer that answers the service
            // itself and waits for the request to end.
            tokio::io::AsyncWriteExt::shutdown(&mut s).await?;
            read_stats(&mut s).await
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: crate::Operation::RemoteStats,
                after: timeout,
            }),
        }
    }

    /// This node's [`stats`](Self::stats) in the Prometheus text format
    /// (see [`write_node_metrics`](crate::metrics::write_node_metrics)),
    /// labelled with its `namespace` and its name as `peer`: for an
    /// application to serve on its own `/metrics`.
    pub fn metrics_text(&self) -> String {
        let stats = self.stats();
        let labels = [
            ("namespace", self.core.namespace.as_str()),
            ("peer", self.core.name.as_str()),
        ];
        let mut m = crate::metrics::PrometheusText::new();
        crate::metrics::write_node_metrics(&mut m, &[(&labels[..], &stats)]);
        m.finish()
    }

    /// Stops accepting, unpublishes, and waits up to the shutdown grace for
    /// open streams to close; then stops the node's tasks and returns once
    /// they have ended and every listener is closed, so the same port can be
    /// bound again at once. Idempotent. An unreachable registry is reported
    /// after the rest of the shutdown is done. Afterwards
    /// [`connect`](Self::connect) and [`to`](Self::to) fail with
    /// [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        let result = lifecycle::shutdown(&self.core)
            .instrument(self.span.clone())
            .await;
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        // Every task ends on its own once the node is stopping (an accept
        // loop closes its listener first); one stuck in a backend call is
        // aborted after a short wait. Either way it has ended on return.
        let deadline = tokio::time::Instant::now() + TASK_STOP_WAIT;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        result
    }

    fn parse_target(&self, target: &str) -> Result<(PeerName, Option<String>)> {
        let Some(rest) = target.strip_prefix("masse://") else {
            return Ok((PeerName::new(target)?, None));
        };
        let invalid = |reason: &str| Error::InvalidAddress {
            kind: "url",
            input: crate::error::clip(target),
            reason: reason.into(),
        };
        let mut parts = rest.split('/');
        let ns = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("missing namespace"))?;
        let name = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("missing peer name"))?;
        let service = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
        if parts.next().is_some() {
            return Err(invalid("expected masse://<namespace>/<name>[/<service>]"));
        }
        let ns = Namespace::new(ns)?;
        if ns != self.core.namespace {
            return Err(invalid(&format!(
                "namespace {ns} is not this node's namespace {}",
                self.core.namespace
            )));
        }
        if let Some(s) = &service {
            crate::name::validate_service(s)?;
        }
        Ok((PeerName::new(name)?, service))
    }
}

/// Reads one stats document (at most [`stats::STATS_MAX_BYTES`]) to the
/// end of the stream and decodes it.
async fn read_stats<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<NodeStats> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let limit = stats::STATS_MAX_BYTES as u64 + 1;
    r.take(limit).read_to_end(&mut buf).await?;
    if buf.len() > stats::STATS_MAX_BYTES {
        return Err(Error::protocol(format!(
            "stats document longer than {} bytes",
            stats::STATS_MAX_BYTES
        )));
    }
    let malformed =
        |e: serde_json::Error| Error::protocol(format!("malformed stats document: {e}"));
    // An object only: serde would also read a struct from an array, by position.
    match serde_json::from_slice(&buf).map_err(malformed)? {
        doc @ serde_json::Value::Object(_) => serde_json::from_value(doc).map_err(malformed),
        _ => Err(Error::protocol(
            "malformed stats document: not a JSON object",
        )),
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.core.is_stopping() {
            tracing::debug!(parent: &self.span, "node dropped without shutdown; its record expires after the ttl");
        }
        self.core.stopping.send_replace(true);
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.core.name)
            .field("namespace", &self.core.namespace)
            .field("instance", &self.core.instance)
            .finish_non_exhaustive()
    }
}

/// Accepted streams; see [`Node::incoming`]. Ends when the node shuts down.
pub struct Incoming {
    inner: BoxStream<'static, PeerStream>,
}

impl Incoming {
    fn new(
        core: Arc<Core>,
        rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<PeerStream>>>,
    ) -> Self {
        let inner = futures::stream::unfold((core, rx), |(core, rx)| async move {
            let next = {
                let mut guard = tokio::select! {
                    g = rx.lock() => g,
                    _ = core.stopped() => return None,
                };
                tokio::select! {
                    s = guard.recv() => s,
                    _ = core.stopped() => guard.try_recv().ok(),
                }
            };
            next.map(|s| (s, (core, rx)))
        });
        Incoming {
            inner: Box::pin(inner),
        }
    }

    /// The next accepted stream; `None` once the node has shut down.
    pub async fn accept(&mut self) -> Option<PeerStream> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for Incoming {
    type Item = PeerStream;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerStream>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

/// A node's events; see [`Node::events`]. A receiver that falls behind gets
/// [`NodeEvent::Lagged`] instead of the events it missed.
pub struct Events {
    rx: tokio_stream_shim::BroadcastStream<NodeEvent>,
}

impl Events {
    /// The next event; `None` once the node is gone.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for Events {
    type Item = NodeEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// A `Stream` over a broadcast receiver (what `tokio-stream` offers, without the dependency).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::Stream;
    use futures::stream::BoxStream;
    use tokio::sync::broadcast::{self, error::RecvError};

    use super::NodeEvent;

    pub(super) struct BroadcastStream<T> {
        inner: BoxStream<'static, T>,
    }

    impl BroadcastStream<NodeEvent> {
        pub(super) fn new(rx: broadcast::Receiver<NodeEvent>) -> Self {
            let inner = futures::stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Ok(ev) => Some((ev, rx)),
                    Err(RecvError::Lagged(missed)) => Some((NodeEvent::Lagged { missed }, rx)),
                    Err(RecvError::Closed) => None,
                }
            });
            BroadcastStream {
                inner: Box::pin(inner),
            }
        }
    }

    impl<T> Stream for BroadcastStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.inner.as_mut().poll_next(cx)
        }
    }
}
