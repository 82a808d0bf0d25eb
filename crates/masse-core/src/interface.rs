//! The [`Interface`] and [`Listener`] traits: how bytes get to a peer.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use crate::endpoint::{Endpoint, Protocol};
use crate::error::{Error, Operation, Result};
use crate::identity::Identity;
use crate::io::BoxIo;
use crate::name::{Namespace, PeerName};
use crate::record::{Fingerprint, InstanceId, PeerRecord};

/// What a node tells an interface when it binds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BindContext {
    /// The node's namespace.
    pub namespace: Namespace,
    /// The node's name.
    pub name: PeerName,
    /// The node's instance.
    pub instance: InstanceId,
    /// The node's identity (certificate and key), for interfaces that
    /// authenticate at the transport layer (`tls`, `quic`); they present it
    /// to peers that connect.
    pub identity: Option<Arc<Identity>>,
    /// The node's budget of inbound handshakes in progress. A listener that
    /// runs a handshake of its own (TLS) takes a [`Ticket`](crate::Ticket)
    /// from it before starting, gives up when the ticket is
    /// [evicted](crate::Ticket::evicted), and passes the ticket on in
    /// [`Accepted::ticket`]: then no socket can hold the node's handshakes
    /// hostage, whichever layer it idles in.
    pub handshake_budget: Option<Arc<crate::HandshakeBudget>>,
    /// How long a handshake of the listener's own may take, at most (the
    /// node passes its handshake timeout, shorter than a dialer's connect
    /// timeout by default).
    pub handshake_timeout: Option<Duration>,
    /// Whether the binder runs transport handshakes itself: if so, a
    /// listener with a handshake of its own (TLS) may return each
    /// connection at once as an [`Accepted::deferred`] stream instead of
    /// running the handshake on a task of its own. A node sets it (and runs
    /// each deferred handshake on the new stream's task, saving a task and
    /// a hand-off per connection); without it, [`Listener::accept`] yields
    /// finished streams.
    pub defer_handshakes: bool,
}

impl BindContext {
    /// A context for a node `name` in `namespace`.
    pub fn new(namespace: Namespace, name: PeerName, instance: InstanceId) -> Self {
        BindContext {
            namespace,
            name,
            instance,
            identity: None,
            handshake_budget: None,
            handshake_timeout: None,
            defer_handshakes: false,
        }
    }

    /// Sets [`defer_handshakes`](Self::defer_handshakes): the binder will
    /// [finish](Accepted::finish) deferred streams itself.
    pub fn with_deferred_handshakes(mut self) -> Self {
        self.defer_handshakes = true;
        self
    }

    /// Sets [`handshake_budget`](Self::handshake_budget) and
    /// [`handshake_timeout`](Self::handshake_timeout).
    pub fn with_handshake_budget(
        mut self,
        budget: Arc<crate::HandshakeBudget>,
        timeout: Duration,
    ) -> Self {
        self.handshake_budget = Some(budget);
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Sets the identity the listener presents to peers that connect.
    pub fn with_identity(mut self, identity: Arc<Identity>) -> Self {
        self.identity = Some(identity);
        self
    }
}

/// What a node tells an interface when it dials.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectContext {
    /// The dialer's namespace.
    pub namespace: Namespace,
    /// The dialer's name.
    pub local_name: PeerName,
    /// The dialer's instance.
    pub local_instance: InstanceId,
    /// How long the transport connection may take.
    pub connect_timeout: Duration,
    /// The dialer's identity (certificate and key), for interfaces that
    /// authenticate at the transport layer (`tls`, `quic`); they present it
    /// as the client certificate.
    pub identity: Option<Arc<Identity>>,
}

impl ConnectContext {
    /// A context for a dialer `local_name` with a 5 s connect timeout.
    pub fn new(namespace: Namespace, local_name: PeerName, local_instance: InstanceId) -> Self {
        ConnectContext {
            namespace,
            local_name,
            local_instance,
            connect_timeout: Duration::from_secs(5),
            identity: None,
        }
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the identity the dialer presents as its client certificate.
    pub fn with_identity(mut self, identity: Arc<Identity>) -> Self {
        self.identity = Some(identity);
        self
    }
}

/// A stream a [`Listener`] accepted, before the masse handshake.
#[non_exhaustive]
pub struct Accepted {
    /// The byte stream.
    pub io: BoxIo,
    /// The remote transport address, if the transport has one.
    pub remote_addr: Option<SocketAddr>,
    /// The remote's authenticated certificate fingerprint, on interfaces that
    /// authenticate at the transport layer.
    pub peer_identity: Option<Fingerprint>,
    /// The handshake budget's ticket the listener took for its own
    /// handshake, if it did (see [`BindContext::handshake_budget`]): the
    /// node's handshake continues under it.
    pub ticket: Option<crate::Ticket>,
    /// The user and process at the other end, on transports whose operating
    /// system tells (Unix domain sockets: `SO_PEERCRED`). Given to wrappers
    /// in [`StreamContext::peer_credentials`](crate::StreamContext::peer_credentials).
    pub peer_credentials: Option<PeerCredentials>,
    /// The transport's own handshake, still to run ([`Accepted::deferred`]).
    finish: Option<Finish>,
}

/// The rest of a transport handshake a [`Listener`] left to the stream's
/// own task: see [`Accepted::deferred`].
type Finish = Pin<Box<dyn Future<Output = Option<Accepted>> + Send>>;

/// Who is at the other end of a local stream, as the operating system
/// vouches for it (`SO_PEERCRED` on a Unix domain socket): unlike a name in
/// a handshake, it cannot be forged by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PeerCredentials {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, where the platform reports it.
    pub pid: Option<i32>,
}

impl PeerCredentials {
    /// Credentials of user `uid`, group `gid`, process `pid`.
    pub fn new(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        PeerCredentials { uid, gid, pid }
    }
}

impl Accepted {
    /// An accepted stream with a remote address.
    pub fn new(io: BoxIo, remote_addr: Option<SocketAddr>) -> Self {
        Accepted {
            io,
            remote_addr,
            peer_identity: None,
            ticket: None,
            peer_credentials: None,
            finish: None,
        }
    }

    /// A connection whose transport handshake (TLS) is still to run:
    /// `finish` runs it and yields the stream, ready for the masse handshake,
    /// or `None` if it failed (the listener logs why). A node runs it on
    /// the new stream's own task, under its handshake deadline, so a
    /// listener needs no task per handshake and a slow one never holds up
    /// accepting. Until then [`io`](Self::io) fails every read and write.
    /// Only for a binder that asked for it ([`BindContext::defer_handshakes`]).
    pub fn deferred(
        remote_addr: Option<SocketAddr>,
        finish: impl Future<Output = Option<Accepted>> + Send + 'static,
    ) -> Self {
        Accepted {
            finish: Some(Box::pin(finish)),
            ..Accepted::new(Box::new(Unfinished), remote_addr)
        }
    }

    /// Whether the transport handshake is still to run ([`deferred`](Self::deferred)).
    pub fn is_deferred(&self) -> bool {
        self.finish.is_some()
    }

    /// Runs the transport handshake of a [`deferred`](Self::deferred)
    /// stream (returns any other at once): the stream ready for the masse
    /// handshake, or `None` if that handshake failed. Not bounded in time
    /// by itself beyond the listener's own handshake timeout.
    pub async fn finish(self) -> Option<Accepted> {
        match self.finish {
            Some(finish) => finish.await,
            None => Some(self),
        }
    }

    /// Sets [`peer_credentials`](Self::peer_credentials).
    pub fn with_peer_credentials(mut self, credentials: PeerCredentials) -> Self {
        self.peer_credentials = Some(credentials);
        self
    }
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("remote_addr", &self.remote_addr)
            .field("peer_identity", &self.peer_identity)
            .field("peer_credentials", &self.peer_credentials)
            .field("deferred", &self.is_deferred())
            .finish_non_exhaustive()
    }
}

/// The [`Accepted::io`] of a deferred stream: every read and write fails
/// until [`Accepted::finish`] has run the transport handshake.
struct Unfinished;

impl Unfinished {
    fn error() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "transport handshake not finished (see Accepted::finish)",
        )
    }
}

impl tokio::io::AsyncRead for Unfinished {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(Self::error()))
    }
}

impl tokio::io::AsyncWrite for Unfinished {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(Self::error()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(Self::error()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(Self::error()))
    }
}

/// A bound interface, accepting streams.
#[async_trait]
pub trait Listener: Send + Sync + 'static {
    /// The endpoints to advertise in the node's record.
    fn endpoints(&self) -> Vec<Endpoint>;

    /// Waits for the next stream. Errors on one incoming connection are
    /// reported and the listener stays usable; [`Error::Closed`](crate::Error::Closed)
    /// means it is done.
    ///
    /// # Cancel safety
    ///
    /// `accept` must be cancel-safe: the node races it against shutdown and
    /// other work in a `select!`, so a call may be dropped before it
    /// completes, and a connection that was already taken from the socket
    /// must not be lost when that happens (keep it in the listener for the
    /// next call, or take nothing until the future completes, as
    /// `TcpListener::accept` does).
    async fn accept(&mut self) -> Result<Accepted>;

    /// Stops listening. When it returns, every socket the listener owns is
    /// closed (its address can be bound again at once) and every task it
    /// started has ended. The node calls it once, on shutdown, before
    /// dropping the listener. The default does nothing, which is right for a
    /// listener that owns its socket directly (dropping it closes the socket);
    /// one that runs a task must end it here.
    async fn close(&mut self) {}
}

/// How bytes get to a peer: a transport (TCP, TLS, QUIC, ...).
///
/// Checked by `testkit::interface_conformance` with feature `testkit`.
/// Implementations are [`Debug`](std::fmt::Debug) so that nodes and errors
/// can say which transport (and which bind address) they use.
#[async_trait]
pub trait Interface: std::fmt::Debug + Send + Sync + 'static {
    /// The protocol (endpoint scheme) this interface's listeners advertise
    /// and its streams report in [`StreamContext::protocol`](crate::StreamContext::protocol).
    fn protocol(&self) -> Protocol;

    /// Whether this interface can dial endpoints of `protocol`. The node
    /// offers [`connect`](Self::connect) only endpoints it speaks and skips
    /// the others of a record (a peer may advertise transports this node
    /// lacks). Default: `protocol` is [`self.protocol()`](Self::protocol).
    fn speaks(&self, protocol: &Protocol) -> bool {
        *protocol == self.protocol()
    }

    /// Starts listening.
    async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>>;

    /// Opens a stream to `endpoint`, which `peer` advertised, within
    /// [`ConnectContext::connect_timeout`] (the node's own timer is only a
    /// backstop a second later).
    ///
    /// # Errors
    ///
    /// The node looks the name up again when a failure says the address may
    /// no longer be the peer's ([`Error::is_stale_address`](crate::Error::is_stale_address)),
    /// so fail with one of these when it is so:
    ///
    /// - [`Error::Io`](crate::Error::Io) of a kind [`is_stale_io`](crate::is_stale_io)
    ///   accepts: refused, unreachable, reset, aborted, timed out, closed
    ///   early (a pooled connection found dead after the peer moved: drop it
    ///   from the pool and fail so), not found (a Unix socket file gone);
    /// - [`Error::Timeout`](crate::Error::Timeout) when the connect timeout
    ///   passes (nobody answers: a silent address);
    /// - [`Error::Unauthorized`](crate::Error::Unauthorized) when the peer's
    ///   certificate is not the one `peer` pins (a squatter on an address
    ///   the peer left; refused for good only if the fresh record says the
    ///   same).
    ///
    /// Anything else ([`Error::Config`](crate::Error::Config),
    /// [`Error::Unsupported`](crate::Error::Unsupported), ...) is final.
    async fn connect(
        &self,
        endpoint: &Endpoint,
        peer: &PeerRecord,
        ctx: &ConnectContext,
    ) -> Result<BoxIo>;
}

macro_rules! forward_interface {
    ($ptr:ident) => {
        #[async_trait]
        impl<T: Interface + ?Sized> Interface for $ptr<T> {
            fn protocol(&self) -> Protocol {
                (**self).protocol()
            }
            fn speaks(&self, protocol: &Protocol) -> bool {
                (**self).speaks(protocol)
            }
            async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>> {
                (**self).bind(ctx).await
            }
            async fn connect(
                &self,
                endpoint: &Endpoint,
                peer: &PeerRecord,
                ctx: &ConnectContext,
            ) -> Result<BoxIo> {
                (**self).connect(endpoint, peer, ctx).await
            }
        }
    };
}

forward_interface!(Arc);
forward_interface!(Box);

#[async_trait]
impl<T: Listener + ?Sized> Listener for Box<T> {
    fn endpoints(&self) -> Vec<Endpoint> {
        (**self).endpoints()
    }
    async fn accept(&mut self) -> Result<Accepted> {
        (**self).accept().await
    }
    async fn close(&mut self) {
        (**self).close().await
    }
}

/// An interface chosen at run time.
pub type DynInterface = Arc<dyn Interface>;

/// Runs `dial` (a transport connect) for at most `limit`, failing as
/// [`Interface::connect`] should: [`Error::Timeout`] with
/// [`Operation::Connect`] when `limit` passes, [`Error::Io`] of the socket
/// error's kind in the context `connect to {target}`
/// ([`Error::io_context`]) when the dial fails. Both let the node tell a
/// stale address ([`Error::is_stale_address`]).
///
/// ```no_run
/// # async fn run() {
/// use std::time::Duration;
/// use masse_core::{Error, dial_within};
///
/// let dial = tokio::net::TcpStream::connect("127.0.0.1:1");
/// match dial_within(Duration::from_secs(1), "tcp://127.0.0.1:1", dial).await {
///     Ok(_stream) => {}
///     Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
///     Err(other) => panic!("{other}"),
/// }
/// # }
/// ```
pub async fn dial_within<T>(
    limit: Duration,
    target: impl fmt::Display,
    dial: impl Future<Output = std::io::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, dial).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => Err(Error::io_context(e, format!("connect to {target}"))),
        Err(_) => Err(Error::Timeout {
            what: Operation::Connect,
            after: limit,
        }),
    }
}
