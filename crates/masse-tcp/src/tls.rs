//! [`TlsInterface`]: TLS 1.3 over the TCP sockets of [`TcpInterface`], with
//! peers authenticated by their [`Identity`] fingerprint.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use masse_core::tls::{
    ClientConfigs, handshake_error, peer_fingerprint, server_config, server_name,
};
use masse_core::{
    Accepted, BindContext, BoxIo, ConnectContext, Endpoint, Error, HandshakeBudget, Identity,
    Interface, Listener, PeerRecord, Protocol, Result, Ticket, async_trait,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::interface::TcpInterface;
use crate::listener::{Advertised, TcpListener};

/// TLS 1.3 streams over TCP: binds a TCP listener, dials `tls://` endpoints,
/// and authenticates both sides by certificate (DESIGN §5).
///
/// - **Dialing** presents our [`Identity`] as the client certificate and
///   accepts only a server whose certificate's public key has the
///   fingerprint in the dialed [`PeerRecord::identity`]; names, issuers and
///   validity dates are ignored (certificates are self-signed), the handshake
///   signature is checked. A record without an identity cannot be dialed
///   ([`Error::Unauthorized`]); a server with another key fails the dial
///   with [`Error::Unauthorized`] naming both fingerprints.
/// - **Accepting** requires a client certificate (any self-signed one: the
///   handshake proves the client holds its key) and reports its fingerprint
///   in [`Accepted::peer_identity`], for the node to check against the
///   registry record of the dialer's name.
/// - TLS 1.3 only, *ring* provider only, ALPN `masse/1`, no SNI.
///
/// Our identity comes from [`BindContext::identity`] / [`ConnectContext::identity`],
/// or, when the context carries none, from [`TlsInterface::identity`];
/// without either, `bind` and `connect` fail with [`Error::Config`].
///
/// The TCP side (address parsing, advertised endpoints, `TCP_NODELAY`,
/// backlog, accept error handling) is exactly [`TcpInterface`]'s.
///
/// Accepting never stalls on a slow or silent client. Bound by a node
/// ([`BindContext::defer_handshakes`]), [`Listener::accept`] returns each
/// TCP connection at once as a [`deferred`](Accepted::deferred) stream,
/// whose TLS handshake the node runs on that stream's own task; bound
/// otherwise, the listener accepts in a background task, runs each
/// handshake in a task of its own, and `accept` yields finished streams in
/// completion order (a few of them queue up if nobody accepts, then
/// handshaking pauses). Either way the handshake runs under
/// [`handshake_timeout`](Self::handshake_timeout) (or the node's handshake
/// timeout, if shorter; a node's own deadline then covers both), counted in
/// the node's
/// [`HandshakeBudget`] (or, bound without one, a budget of
/// [`max_concurrent_handshakes`](Self::max_concurrent_handshakes)): a
/// connection that has not sent its `ClientHello` yet is silent and may be
/// evicted for newer ones, one that has waits for a place, so idle sockets
/// cannot keep dialers out. A finished stream carries its budget ticket
/// and the client's fingerprint; a failed handshake is logged at `debug`
/// and finishes as `None`.
///
/// ```
/// use std::sync::Arc;
/// use masse_core::{Identity, Interface, Protocol};
/// use masse_tcp::TlsInterface;
///
/// let identity = Arc::new(Identity::generate("billing-7")?);
/// let tls = TlsInterface::new("127.0.0.1:0").identity(identity);
/// assert_eq!(tls.protocol(), Protocol::TLS);
/// # Ok::<(), masse_core::Error>(())
/// ```
#[derive(Clone)]
pub struct TlsInterface {
    tcp: TcpInterface,
    identity: Option<Arc<Identity>>,
    handshake_timeout: Duration,
    max_handshakes: usize,
    configs: Arc<ClientConfigs>,
}

impl TlsInterface {
    /// The default [`handshake_timeout`](Self::handshake_timeout).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`max_concurrent_handshakes`](Self::max_concurrent_handshakes).
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

    /// An interface that binds `addr` (see [`TcpInterface::new`]; an address
    /// that does not parse is reported by [`bind`](Interface::bind)).
    pub fn new(addr: impl AsRef<str>) -> Self {
        Self::from_tcp(TcpInterface::new(addr))
    }

    /// Like [`new`](Self::new), but an address that does not parse is an
    /// [`Error::InvalidAddress`] at once.
    pub fn try_new(addr: &str) -> Result<Self> {
        TcpInterface::try_new(addr).map(Self::from_tcp)
    }

    /// An interface that binds `addr`.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self::from_tcp(TcpInterface::from_addr(addr))
    }

    /// TLS over the TCP sockets `tcp` binds and dials, with all of its
    /// settings (address, advertised addresses, `TCP_NODELAY`, backlog).
    pub fn from_tcp(tcp: TcpInterface) -> Self {
        TlsInterface {
            tcp,
            identity: None,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
            configs: Arc::new(ClientConfigs::new()),
        }
    }

    /// The identity used when a [`BindContext`] or [`ConnectContext`]
    /// carries none (the node's runtime normally passes one in the context).
    pub fn identity(mut self, identity: Arc<Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// See [`TcpInterface::advertise`].
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.tcp = self.tcp.advertise(addr);
        self
    }

    /// See [`TcpInterface::include_loopback`].
    pub fn include_loopback(mut self, include: bool) -> Self {
        self.tcp = self.tcp.include_loopback(include);
        self
    }

    /// See [`TcpInterface::nodelay`] (default `true`).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.tcp = self.tcp.nodelay(nodelay);
        self
    }

    /// See [`TcpInterface::backlog`].
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.tcp = self.tcp.backlog(backlog);
        self
    }

    /// See [`TcpInterface::dead_peer_timeout`] (default 30 s).
    pub fn dead_peer_timeout(mut self, limit: Option<Duration>) -> Self {
        self.tcp = self.tcp.dead_peer_timeout(limit);
        self
    }

    /// How long an accepted connection may take to complete its TLS
    /// handshake before it is dropped (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](Self::DEFAULT_HANDSHAKE_TIMEOUT)). The
    /// dialing side is bounded by [`ConnectContext::connect_timeout`] instead,
    /// which covers the TCP connect and the handshake.
    pub fn handshake_timeout(mut self, limit: Duration) -> Self {
        self.handshake_timeout = limit;
        self
    }

    /// How many accepted connections may be in their TLS handshake at once
    /// when the listener is bound without a node's
    /// [`HandshakeBudget`] (default
    /// [`DEFAULT_MAX_HANDSHAKES`](Self::DEFAULT_MAX_HANDSHAKES), at least 1).
    pub fn max_concurrent_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }

    fn pick_identity<'a>(
        &'a self,
        from_ctx: Option<&'a Arc<Identity>>,
        role: &str,
    ) -> Result<&'a Arc<Identity>> {
        masse_core::tls::pick_identity(from_ctx, self.identity.as_ref(), Protocol::TLS, role)
    }
}

impl Default for TlsInterface {
    /// Binds `0.0.0.0:0`: every IPv4 address, a free port.
    fn default() -> Self {
        Self::from_tcp(TcpInterface::default())
    }
}

impl From<SocketAddr> for TlsInterface {
    fn from(addr: SocketAddr) -> Self {
        Self::from_addr(addr)
    }
}

impl fmt::Debug for TlsInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsInterface")
            .field("tcp", &self.tcp)
            .field("identity", &self.identity)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Interface for TlsInterface {
    fn protocol(&self) -> Protocol {
        Protocol::TLS
    }

    async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>> {
        let identity = self.pick_identity(ctx.identity.as_ref(), "accept")?;
        let acceptor = TlsAcceptor::from(Arc::new(server_config(identity)?));
        let tcp = self.tcp.bind_tcp(Protocol::TLS)?;
        // The node's budget and deadline when bound by a node: the TLS
        // handshake counts with the masse handshake after it.
        let budget = ctx
            .handshake_budget
            .clone()
            .unwrap_or_else(|| HandshakeBudget::new(self.max_handshakes));
        let limit = ctx
            .handshake_timeout
            .map_or(self.handshake_timeout, |t| t.min(self.handshake_timeout));
        let local = tcp.local_addr();
        let listener = if ctx.defer_handshakes {
            // The binder's deadline covers the handshake already: a timer
            // of our own only if ours is shorter.
            let limit = match ctx.handshake_timeout {
                Some(binders) if limit >= binders => None,
                _ => Some(limit),
            };
            TlsListener::Deferred {
                tcp,
                acceptor,
                budget,
                limit,
            }
        } else {
            let advertised = tcp.advertised().clone();
            // Room for a few finished handshakes nobody has accepted yet;
            // past that, handshake tasks wait, so accepting pauses and the
            // kernel backlog absorbs the rest.
            let (tx, rx) = mpsc::channel(64);
            let task = tokio::spawn(accept_loop(tcp, acceptor, tx, budget, limit));
            TlsListener::Background {
                advertised,
                rx,
                task,
            }
        };
        tracing::info!(
            namespace = %ctx.namespace,
            name = %ctx.name,
            %local,
            identity = %identity.fingerprint().short(),
            endpoints = ?listener.endpoints(),
            "tls listener bound"
        );
        Ok(Box::new(listener))
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        peer: &PeerRecord,
        ctx: &ConnectContext,
    ) -> Result<BoxIo> {
        let addr = endpoint.socket_addr_for(&Protocol::TLS)?;
        let expected = masse_core::tls::pinned_fingerprint(peer, endpoint)?;
        let identity = self.pick_identity(ctx.identity.as_ref(), "dial")?;
        let config = self.configs.get(identity, expected)?;
        let limit = ctx.connect_timeout;
        let deadline = Instant::now() + limit;
        let stream = self.tcp.dial(addr, limit).await?;
        let handshake = TlsConnector::from(config).connect(server_name(), stream);
        let tls = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(dial_error(endpoint, e)),
            Err(_) => {
                return Err(Error::Timeout {
                    what: masse_core::Operation::Connect,
                    after: limit,
                });
            }
        };
        tracing::debug!(
            peer = %peer.name,
            %endpoint,
            identity = %expected.short(),
            resumed = matches!(tls.get_ref().1.handshake_kind(), Some(tokio_rustls::rustls::HandshakeKind::Resumed)),
            "tls connected"
        );
        Ok(Box::new(tls))
    }
}

/// A failed client handshake: a rejected certificate is
/// [`Error::Unauthorized`], a socket failure [`Error::Io`].
fn dial_error(endpoint: &Endpoint, e: std::io::Error) -> Error {
    let what = endpoint.to_string();
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
    {
        Some(tls) => handshake_error(&what, tls),
        None => Error::io_context(e, format!("tls handshake with {what}")),
    }
}

/// Accepts TCP connections and runs their handshakes, each in its own task
/// ([`finish`]); sends finished streams with their budget ticket.
async fn accept_loop(
    mut tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<Accepted>>,
    budget: Arc<HandshakeBudget>,
    limit: Duration,
) {
    let local = tcp.local_addr();
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let (stream, remote) = match tcp.accept_tcp().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // The listener is broken for good (see accept_tcp).
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let ticket = budget.admit();
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        handshakes.spawn(async move {
            if let Some(accepted) =
                finish(acceptor, stream, remote, local, Some(limit), ticket).await
            {
                // Fails only when the listener is gone.
                let _ = tx.send(Ok(accepted)).await;
            }
        });
    }
}

/// The TLS handshake of a connection accepted at `local` from `remote`,
/// under `ticket` and within `limit` (if not `None`, when the caller keeps
/// the deadline): silent until the `ClientHello` (a
/// newer connection may take the place meanwhile if the budget is full),
/// then waiting for a place among the handshakes going on. The stream
/// with its ticket and the client's fingerprint, or `None` (logged).
async fn finish(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    limit: Option<Duration>,
    ticket: Ticket,
) -> Option<Accepted> {
    let handshake = async {
        let mut first = [0u8; 1];
        tokio::select! {
            r = stream.peek(&mut first) => {
                if !matches!(r, Ok(n) if n > 0) {
                    tracing::debug!(%local, %remote, "tls client closed before its ClientHello");
                    return None;
                }
            }
            () = ticket.evicted() => {
                tracing::debug!(%local, %remote, "silent tls client evicted by a newer connection; closed");
                return None;
            }
        }
        // A place among the handshakes going on (crypto costs CPU).
        ticket.heard().await;
        handshake(&acceptor, stream, remote, local).await
    };
    let finished = match limit {
        Some(limit) => tokio::time::timeout(limit, handshake).await,
        None => Ok(handshake.await),
    };
    match finished {
        Ok(Some(mut accepted)) => {
            accepted.ticket = Some(ticket);
            Some(accepted)
        }
        Ok(None) => None,
        Err(_) => {
            tracing::debug!(%local, %remote, ?limit, "tls handshake timed out; connection dropped");
            None
        }
    }
}

/// The server side of one handshake; `None` (and a debug log) if it fails.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
) -> Option<Accepted> {
    let tls = match acceptor.accept(stream).await {
        Ok(tls) => tls,
        Err(e) => {
            let reason = match e
                .get_ref()
                .and_then(|i| i.downcast_ref::<tokio_rustls::rustls::Error>())
            {
                Some(tls) => handshake_error(&format!("tls from {remote}"), tls).to_string(),
                None => e.to_string(),
            };
            tracing::debug!(%local, %remote, error = %reason, "tls handshake failed; connection dropped");
            return None;
        }
    };
    // Client authentication is mandatory, so a finished handshake has a
    // verified client certificate.
    let Some(fingerprint) = peer_fingerprint(tls.get_ref().1.peer_certificates()) else {
        tracing::debug!(%local, %remote, "tls client without a usable certificate; connection dropped");
        return None;
    };
    tracing::trace!(%local, %remote, peer_identity = %fingerprint.short(), "tls accepted");
    let mut accepted = Accepted::new(Box::new(tls), Some(remote));
    accepted.peer_identity = Some(fingerprint);
    Some(accepted)
}

/// A bound TLS listener.
enum TlsListener {
    /// Bound by a node: TCP connections, their TLS handshake deferred to
    /// the stream's task.
    Deferred {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        budget: Arc<HandshakeBudget>,
        /// `None` when the binder's own deadline is the shorter one.
        limit: Option<Duration>,
    },
    /// Bound directly: TLS-handshaken streams from a background task.
    Background {
        advertised: Advertised,
        rx: mpsc::Receiver<Result<Accepted>>,
        task: JoinHandle<()>,
    },
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsListener::Deferred { tcp, limit, .. } => f
                .debug_struct("TlsListener")
                .field("tcp", tcp)
                .field("limit", limit)
                .finish_non_exhaustive(),
            TlsListener::Background { advertised, .. } => f
                .debug_struct("TlsListener")
                .field("advertised", advertised)
                .finish_non_exhaustive(),
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        if let TlsListener::Background { task, .. } = self {
            // Closes the socket and aborts the handshakes in flight.
            task.abort();
        }
    }
}

#[async_trait]
impl Listener for TlsListener {
    fn endpoints(&self) -> Vec<Endpoint> {
        match self {
            TlsListener::Deferred { tcp, .. } => tcp.advertised().endpoints(),
            TlsListener::Background { advertised, .. } => advertised.endpoints(),
        }
    }

    async fn accept(&mut self) -> Result<Accepted> {
        match self {
            TlsListener::Deferred {
                tcp,
                acceptor,
                budget,
                limit,
            } => {
                let (stream, remote) = tcp.accept_tcp().await?;
                // Counted from the TCP accept: a silent socket holds a
                // place in the silent pool, and may be evicted from it.
                let ticket = budget.admit();
                let finishing = finish(
                    acceptor.clone(),
                    stream,
                    remote,
                    tcp.local_addr(),
                    *limit,
                    ticket,
                );
                Ok(Accepted::deferred(Some(remote), finishing))
            }
            TlsListener::Background { rx, .. } => match rx.recv().await {
                Some(result) => result,
                None => Err(Error::Closed("tls listener")),
            },
        }
    }

    async fn close(&mut self) {
        if let TlsListener::Background { rx, task, .. } = self {
            // The task owns the socket: it is closed once the task has ended.
            task.abort();
            let _ = task.await;
            rx.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use masse_core::InstanceId;

    fn bind_ctx() -> BindContext {
        BindContext::new(
            "test".parse().unwrap(),
            "tls-unit".parse().unwrap(),
            InstanceId::random(),
        )
    }

    #[tokio::test]
    async fn bind_without_identity_is_a_config_error() {
        match TlsInterface::new("127.0.0.1:0").bind(&bind_ctx()).await {
            Err(Error::Config(msg)) => assert!(msg.contains("identity"), "{msg}"),
            Err(other) => panic!("expected Config, got {other:?}"),
            Ok(_) => panic!("bound without an identity"),
        }
    }

    #[tokio::test]
    async fn invalid_address_fails_at_bind() {
        let id = Arc::new(Identity::generate("x").unwrap());
        let tls = TlsInterface::new("not an address").identity(id);
        assert!(matches!(
            tls.bind(&bind_ctx()).await,
            Err(Error::InvalidAddress { .. })
        ));
        assert!(TlsInterface::try_new("localhost:1").is_err());
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        let id = Arc::new(Identity::generate("x").unwrap());
        let dbg = format!("{:?}", TlsInterface::default().identity(id));
        assert!(dbg.contains("redacted"), "{dbg}");
    }
}
