//! [`QuicInterface`]: configuration, the shared endpoint, and the dialing side
//! with its connection pool.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use masse_core::tls::{ClientConfigs, is_certificate_alert, server_config};
use masse_core::{
    BindContext, BoxIo, ConnectContext, Endpoint, Error, Fingerprint, Identity, Interface,
    Listener, PeerRecord, Protocol, RefuseCode, Result, async_trait,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::listener::{QuicListener, Sink, accept_loop};

/// QUIC streams: every masse stream is a bidirectional QUIC stream, and all
/// streams to one remote instance share one QUIC connection.
///
/// **Trust** is the same as on `tls` (DESIGN §5): TLS 1.3 inside QUIC, the
/// dialer accepts only the certificate whose public key has the fingerprint
/// of the dialed [`PeerRecord::identity`] (a record without one cannot be
/// dialed: [`Error::Unauthorized`]), the acceptor requires a client
/// certificate and reports its fingerprint in
/// [`Accepted::peer_identity`](masse_core::Accepted::peer_identity). Our
/// identity comes from the [`BindContext`] / [`ConnectContext`], or else from
/// [`QuicInterface::identity`]; without either, `bind` and `connect` fail with
/// [`Error::Config`].
///
/// **One UDP socket.** The interface owns one QUIC endpoint, bound to its
/// address at first use (`bind` or `connect`). A node that binds and dials
/// therefore dials from its listening socket. Dials that this socket cannot
/// make (another address family, or a loopback-bound socket dialing a
/// non-loopback address) use a second, client-only endpoint on an ephemeral
/// port. Clones of a `QuicInterface` share the endpoint and the pool; set
/// everything before first use.
///
/// **Pooling.** Connections are kept per (remote address, remote
/// fingerprint, own fingerprint), oldest first. Each
/// [`connect`](Interface::connect) opens a new bidirectional stream on the
/// first pooled connection with room for one: a connection carries as many
/// streams at once as the peer allows (its
/// [`max_concurrent_streams`](Self::max_concurrent_streams), 1 024 by
/// default). Only when every pooled connection is full is another one
/// dialed, one dial at a time per peer, up to
/// [`max_connections_per_peer`](Self::max_connections_per_peer) (default 4,
/// so 4 096 streams to a peer with default settings). When a stream opens on
/// an earlier connection again, later connections that carry no stream of
/// ours any more (all their data acknowledged) are closed. With every
/// connection full, `connect` waits a few round trips for a stream to finish
/// and then fails with [`Error::Refused`] and [`RefuseCode::Busy`]
/// (transient: retry later), never by sitting out the connect timeout. A
/// connection found dead is dropped from the pool and another is dialed.
/// Dialing is bounded by [`ConnectContext::connect_timeout`]. A peer that vanished without
/// closing its connections is noticed by the idle timeout (or, if it comes
/// back on the same address, by QUIC's stateless reset); until then a stream
/// opened towards it fails on its first read, which the node's dial retry
/// handles like any stale address.
///
/// **Streams open lazily.** The acceptor learns of a stream when the dialer
/// first sends on it (data, or a shutdown): a protocol in which the acceptor
/// speaks first would wait forever. The masse handshake has the dialer speak
/// first (`Hello`), so node streams always appear at once.
///
/// **Accepting** runs in background tasks: connection handshakes (each
/// within [`handshake_timeout`](Self::handshake_timeout), or the node's
/// handshake timeout if shorter, counted as silent in the node's
/// [`HandshakeBudget`](masse_core::HandshakeBudget), or in one of
/// [`max_concurrent_handshakes`](Self::max_concurrent_handshakes) if bound
/// without a node: under a flood of stalled handshakes the one stalled the
/// longest is dropped) and every connection's incoming streams, which
/// [`Listener::accept`] yields in arrival order. While no listener is bound, incoming connections are
/// refused and new streams on existing ones are reset.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use masse_core::{Identity, Interface, Protocol};
/// use masse_quic::QuicInterface;
///
/// let quic = QuicInterface::new("127.0.0.1:0")
///     .identity(Arc::new(Identity::generate("billing-7")?))
///     .idle_timeout(Duration::from_secs(20))
///     .keep_alive_interval(Some(Duration::from_secs(5)))
///     .max_concurrent_streams(256);
/// assert_eq!(quic.protocol(), Protocol::QUIC);
/// # Ok::<(), masse_core::Error>(())
/// ```
#[derive(Clone)]
pub struct QuicInterface {
    addr: Result<SocketAddr>,
    advertise: Vec<SocketAddr>,
    include_loopback: bool,
    identity: Option<Arc<Identity>>,
    settings: Settings,
    shared: Arc<Shared>,
}

/// Transport settings, copied into every QUIC configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) max_streams: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_handshakes: usize,
    pub(crate) max_connections: usize,
}

impl QuicInterface {
    /// The default [`idle_timeout`](Self::idle_timeout).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`keep_alive_interval`](Self::keep_alive_interval).
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);
    /// The default [`max_concurrent_streams`](Self::max_concurrent_streams).
    pub const DEFAULT_MAX_STREAMS: u32 = 1024;
    /// The default [`handshake_timeout`](Self::handshake_timeout).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`max_concurrent_handshakes`](Self::max_concurrent_handshakes).
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
    /// The default [`max_connections_per_peer`](Self::max_connections_per_peer).
    pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 4;

    /// An interface whose UDP socket binds `addr`, an IP address and port
    /// such as `"0.0.0.0:0"`, `"127.0.0.1:4433"` or `"[::1]:0"` (port 0: any
    /// free port). Host names are not resolved. If `addr` does not parse,
    /// [`bind`](Interface::bind) fails with [`Error::InvalidAddress`]; dialing
    /// works regardless (from an ephemeral port).
    pub fn new(addr: impl AsRef<str>) -> Self {
        Self::with_addr(masse_core::addr::parse_socket_addr(
            "quic socket address",
            addr.as_ref(),
        ))
    }

    /// Like [`new`](Self::new), but an address that does not parse is an
    /// [`Error::InvalidAddress`] at once.
    pub fn try_new(addr: &str) -> Result<Self> {
        masse_core::addr::parse_socket_addr("quic socket address", addr).map(Self::from_addr)
    }

    /// An interface whose UDP socket binds `addr`.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self::with_addr(Ok(addr))
    }

    fn with_addr(addr: Result<SocketAddr>) -> Self {
        QuicInterface {
            addr,
            advertise: Vec::new(),
            include_loopback: false,
            identity: None,
            settings: Settings {
                idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
                keep_alive: Some(Self::DEFAULT_KEEP_ALIVE),
                max_streams: Self::DEFAULT_MAX_STREAMS,
                handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
                max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
                max_connections: Self::DEFAULT_MAX_CONNECTIONS_PER_PEER,
            },
            shared: Arc::new(Shared::new()),
        }
    }

    /// The identity used when a [`BindContext`] or [`ConnectContext`]
    /// carries none (the node's runtime normally passes one in the context).
    pub fn identity(mut self, identity: Arc<Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Advertises `addr` instead of the addresses found by looking at the
    /// bound socket and the host, as `TcpInterface::advertise` in masse-tcp
    /// does (repeatable; port 0 means the port actually bound; an unspecified
    /// IP makes `bind` fail).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise.push(addr);
        self
    }

    /// When bound to a wildcard address, also advertise loopback addresses
    /// (after the others). Default `false`, as for TCP.
    pub fn include_loopback(mut self, include: bool) -> Self {
        self.include_loopback = include;
        self
    }

    /// How long a connection may go without hearing from the peer before it
    /// is closed (default [`DEFAULT_IDLE_TIMEOUT`](Self::DEFAULT_IDLE_TIMEOUT));
    /// the smaller of both sides' values applies. At most about 146 years;
    /// `Duration::ZERO` disables it (then only keep-alives or traffic detect
    /// a dead peer, never).
    pub fn idle_timeout(mut self, limit: Duration) -> Self {
        self.settings.idle_timeout = limit;
        self
    }

    /// How often to send a keep-alive on an otherwise idle connection
    /// (default [`DEFAULT_KEEP_ALIVE`](Self::DEFAULT_KEEP_ALIVE); `None`: never).
    /// Keep it below the idle timeout for pooled connections to outlive quiet
    /// periods.
    pub fn keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.settings.keep_alive = interval;
        self
    }

    /// How many streams a dialer may have open at once on one connection to
    /// this interface's listener (default
    /// [`DEFAULT_MAX_STREAMS`](Self::DEFAULT_MAX_STREAMS), at least 1). A
    /// masse dialer past the limit opens another connection (see
    /// [`max_connections_per_peer`](Self::max_connections_per_peer)).
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.settings.max_streams = n.max(1);
        self
    }

    /// How long an incoming connection may take to complete its handshake
    /// (default [`DEFAULT_HANDSHAKE_TIMEOUT`](Self::DEFAULT_HANDSHAKE_TIMEOUT)).
    pub fn handshake_timeout(mut self, limit: Duration) -> Self {
        self.settings.handshake_timeout = limit;
        self
    }

    /// The handshake budget of a listener bound without a node's (default
    /// [`DEFAULT_MAX_HANDSHAKES`](Self::DEFAULT_MAX_HANDSHAKES), at least 1;
    /// see [`HandshakeBudget::new`](masse_core::HandshakeBudget::new)).
    pub fn max_concurrent_handshakes(mut self, n: usize) -> Self {
        self.settings.max_handshakes = n.max(1);
        self
    }

    /// How many connections the dialing side keeps to one peer (remote
    /// address and identity) at most (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_PEER`](Self::DEFAULT_MAX_CONNECTIONS_PER_PEER),
    /// at least 1). Another connection is dialed only when every pooled one
    /// has as many streams open as the peer allows; with all of them full,
    /// [`connect`](Interface::connect) waits a few round trips for a stream
    /// to finish, then fails with [`Error::Refused`] and [`RefuseCode::Busy`].
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.settings.max_connections = n.max(1);
        self
    }

    /// How many live connections this interface (and its clones) keeps for
    /// dialing, for monitoring and tests.
    pub fn pooled_connections(&self) -> usize {
        self.pooled().iter().map(Vec::len).sum()
    }

    /// How many streams this interface (and its clones) opened are still
    /// open, on each pooled connection: one list per peer, oldest
    /// connection first, peers in no particular order. A stream counts
    /// until it is dropped and the peer has acknowledged all its data. For
    /// monitoring and tests.
    pub fn pooled_streams(&self) -> Vec<Vec<usize>> {
        self.pooled()
            .into_iter()
            .filter(|conns| !conns.is_empty())
            .collect()
    }

    /// Open streams per live pooled connection, per peer.
    fn pooled(&self) -> Vec<Vec<usize>> {
        let peers: Vec<Slot> = lock(&self.shared.pool).values().cloned().collect();
        peers
            .iter()
            .map(|peer| {
                lock(&peer.conns)
                    .iter()
                    .filter(|p| p.conn.close_reason().is_none())
                    .map(Pooled::open_streams)
                    .collect()
            })
            .collect()
    }

    fn pick_identity<'a>(
        &'a self,
        from_ctx: Option<&'a Arc<Identity>>,
        role: &str,
    ) -> Result<&'a Arc<Identity>> {
        masse_core::tls::pick_identity(from_ctx, self.identity.as_ref(), Protocol::QUIC, role)
    }

    /// The transport settings of connections we accept.
    fn server_transport(&self) -> Arc<TransportConfig> {
        let mut t = self.base_transport();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.settings.max_streams));
        Arc::new(t)
    }

    /// The transport settings of connections we dial: the peer may not open
    /// streams on them (we never accept any there).
    fn client_transport(&self) -> Arc<TransportConfig> {
        let mut t = self.base_transport();
        t.max_concurrent_bidi_streams(VarInt::from_u32(0));
        Arc::new(t)
    }

    fn base_transport(&self) -> TransportConfig {
        let mut t = TransportConfig::default();
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        let idle = IdleTimeout::try_from(self.settings.idle_timeout).ok();
        t.max_idle_timeout(if self.settings.idle_timeout.is_zero() {
            None
        } else {
            idle.or(Some(IdleTimeout::from(VarInt::MAX)))
        });
        t.keep_alive_interval(self.settings.keep_alive);
        t
    }

    /// The interface's endpoint, bound at first use.
    fn main_endpoint(&self, state: &mut State) -> Result<quinn::Endpoint> {
        if let Some(ep) = &state.endpoint {
            return Ok(ep.clone());
        }
        let addr = self.addr.clone()?;
        let ep = new_endpoint(addr)?;
        tracing::debug!(local = ?ep.local_addr().ok(), "quic endpoint bound");
        state.endpoint = Some(ep.clone());
        Ok(ep)
    }

    /// The endpoint to dial `remote` from: the main one if it can reach it,
    /// else a client-only endpoint of the right family.
    fn client_endpoint(&self, remote: SocketAddr) -> Result<quinn::Endpoint> {
        let mut state = self.shared.state();
        match self.main_endpoint(&mut state) {
            Ok(ep) => {
                if let Ok(local) = ep.local_addr()
                    && can_reach(local, remote)
                {
                    return Ok(ep);
                }
            }
            Err(Error::InvalidAddress { .. }) => {}
            Err(e) => return Err(e),
        }
        let slot = usize::from(remote.is_ipv6());
        if let Some(ep) = &state.fallback[slot] {
            return Ok(ep.clone());
        }
        let any = if remote.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let ep = new_endpoint(SocketAddr::new(any, 0))?;
        state.fallback[slot] = Some(ep.clone());
        Ok(ep)
    }

    /// Opens a stream on a pooled connection to `key`, dialing one if every
    /// pooled connection is full and the pool has room, else waiting a few
    /// round trips for a stream to finish.
    async fn open_stream(
        &self,
        key: PoolKey,
        identity: &Identity,
        endpoint: &Endpoint,
        deadline: Instant,
        limit: Duration,
    ) -> Result<QuicStream> {
        let max = self.settings.max_connections;
        let peer = self.shared.slot(key);
        for _ in 0..MAX_ROUNDS {
            let live = match peer.try_open(endpoint) {
                Ok(stream) => return Ok(stream),
                Err(live) => live,
            };
            if live < max {
                let Ok(dialing) = tokio::time::timeout_at(deadline, peer.dialing.lock()).await
                else {
                    return Err(Error::Timeout {
                        what: masse_core::Operation::Connect,
                        after: limit,
                    });
                };
                // Someone else may have dialed, or streams finished, meanwhile.
                match peer.try_open(endpoint) {
                    Ok(stream) => return Ok(stream),
                    Err(live) if live >= max => continue,
                    Err(_) => {}
                }
                let conn = self.dial(key, identity, endpoint, deadline, limit).await?;
                self.shared.watch(key, &conn);
                let pooled = Pooled::new(conn);
                let opened = tokio::time::timeout_at(deadline, pooled.conn.open_bi()).await;
                let stream = match opened {
                    Ok(Ok((send, recv))) => pooled.wrap(send, recv),
                    Ok(Err(e)) => return Err(connection_error(endpoint, e)),
                    Err(_) => None,
                };
                if live > 0 {
                    tracing::debug!(
                        %endpoint,
                        connections = live + 1,
                        "every pooled quic connection to the peer is at its stream limit; dialed another"
                    );
                }
                lock(&peer.conns).push(pooled);
                drop(dialing);
                return stream.map(|s| s.trace(endpoint)).ok_or(Error::Timeout {
                    what: masse_core::Operation::StreamCredit,
                    after: limit,
                });
            }
            // Every connection the pool may hold is full: a stream that
            // finishes gives its credit back within a round trip.
            let pooled = lock(&peer.conns).clone();
            if pooled.is_empty() {
                continue;
            }
            let rtt = pooled
                .iter()
                .map(|p| p.conn.rtt())
                .max()
                .unwrap_or_default();
            let wait_until =
                deadline.min(Instant::now() + (rtt * 4).clamp(CREDIT_WAIT_MIN, CREDIT_WAIT_MAX));
            for p in &pooled {
                // Without datagram support at the peer, nothing to ask.
                let _ = p
                    .conn
                    .send_datagram(bytes::Bytes::from_static(STREAMS_BLOCKED));
            }
            let mut opens: Vec<_> = pooled.iter().map(|p| Box::pin(p.conn.open_bi())).collect();
            let first = std::future::poll_fn(|cx| {
                for (i, open) in opens.iter_mut().enumerate() {
                    if let Poll::Ready(r) = open.as_mut().poll(cx) {
                        return Poll::Ready((i, r));
                    }
                }
                Poll::Pending
            });
            match tokio::time::timeout_at(wait_until, first).await {
                Ok((i, Ok((send, recv)))) => {
                    if let Some(stream) = pooled[i].wrap(send, recv) {
                        return Ok(stream.trace(endpoint));
                    }
                }
                Ok((i, Err(e))) => {
                    tracing::debug!(%endpoint, error = %e, "pooled quic connection is dead; dropped");
                    self.shared.evict(key, &pooled[i].conn);
                }
                Err(_) if wait_until >= deadline => {
                    return Err(Error::Timeout {
                        what: masse_core::Operation::StreamCredit,
                        after: limit,
                    });
                }
                Err(_) => break,
            }
        }
        let reason = format!(
            "{endpoint}: all {max} quic connections to the peer (max_connections_per_peer) \
             are at the peer's stream limit"
        );
        if BUSY_WARNED.first(&endpoint.to_string()) {
            tracing::warn!(%endpoint, connections = max, "{reason}; refused as busy (logged once per endpoint)");
        } else {
            tracing::debug!(%endpoint, connections = max, "{reason}; refused as busy");
        }
        Err(Error::Refused {
            code: RefuseCode::Busy,
            reason,
        })
    }

    /// Dials a new connection.
    async fn dial(
        &self,
        key: PoolKey,
        identity: &Identity,
        endpoint: &Endpoint,
        deadline: Instant,
        limit: Duration,
    ) -> Result<quinn::Connection> {
        let tls = CLIENT_CONFIGS.get(identity, key.peer)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| {
            Error::Config(format!("cannot build the QUIC client configuration: {e}"))
        })?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.client_transport());
        let from = self.client_endpoint(key.addr)?;
        let connecting = from
            .connect_with(config, key.addr, Identity::SUBJECT_ALT_NAME)
            .map_err(|e| connect_error(endpoint, e))?;
        match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => {
                tracing::debug!(
                    %endpoint,
                    local = ?from.local_addr().ok(),
                    identity = %key.peer.short(),
                    "quic connected"
                );
                Ok(conn)
            }
            Ok(Err(e)) => Err(connection_error(endpoint, e)),
            Err(_) => Err(Error::Timeout {
                what: masse_core::Operation::Connect,
                after: limit,
            }),
        }
    }
}

impl Default for QuicInterface {
    /// Binds `0.0.0.0:0`: every IPv4 address, a free port.
    fn default() -> Self {
        Self::from_addr(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

impl From<SocketAddr> for QuicInterface {
    fn from(addr: SocketAddr) -> Self {
        Self::from_addr(addr)
    }
}

impl fmt::Debug for QuicInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("QuicInterface")
            .field("addr", &self.addr)
            .field("advertise", &self.advertise)
            .field("include_loopback", &self.include_loopback)
            .field("identity", &self.identity)
            .field("settings", &self.settings)
            .field(
                "bound",
                &state.endpoint.as_ref().and_then(|e| e.local_addr().ok()),
            )
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Interface for QuicInterface {
    fn protocol(&self) -> Protocol {
        Protocol::QUIC
    }

    async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>> {
        masse_core::addr::check_advertised(&self.advertise)?;
        let identity = self.pick_identity(ctx.identity.as_ref(), "accept")?;
        let crypto = QuicServerConfig::try_from(server_config(identity)?).map_err(|e| {
            Error::Config(format!("cannot build the QUIC server configuration: {e}"))
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(self.server_transport());

        let (tx, rx) = mpsc::channel(64);
        let mut state = self.shared.state();
        if state.sink.lock().map(|s| s.is_open()).unwrap_or(false) {
            return Err(Error::Config(
                "this quic interface already has a listener; drop it first, or use another \
                 interface (each one owns one UDP socket)"
                    .into(),
            ));
        }
        let endpoint = self.main_endpoint(&mut state)?;
        let local = endpoint
            .local_addr()
            .map_err(|e| Error::io_context(e, "read the address bound for quic"))?;
        endpoint.set_server_config(Some(config));
        let generation = {
            let mut sink = lock(&state.sink);
            let budget = ctx.handshake_budget.clone().map(|b| {
                (
                    b,
                    ctx.handshake_timeout
                        .unwrap_or(self.settings.handshake_timeout),
                )
            });
            sink.open(tx, budget)
        };
        if state.accept_task.is_none() {
            state.accept_task = Some(AbortOnDrop(tokio::spawn(accept_loop(
                endpoint.clone(),
                state.sink.clone(),
                self.settings,
            ))));
        }
        let listener = QuicListener::new(
            self.shared.clone(),
            state.sink.clone(),
            generation,
            rx,
            local,
            self.advertise.clone(),
            self.include_loopback,
        );
        drop(state);
        tracing::info!(
            namespace = %ctx.namespace,
            name = %ctx.name,
            %local,
            identity = %identity.fingerprint().short(),
            endpoints = ?listener.endpoints(),
            "quic listener bound"
        );
        Ok(Box::new(listener))
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        peer: &PeerRecord,
        ctx: &ConnectContext,
    ) -> Result<BoxIo> {
        let addr = endpoint.socket_addr_for(&Protocol::QUIC)?;
        let expected = masse_core::tls::pinned_fingerprint(peer, endpoint)?;
        let identity = self.pick_identity(ctx.identity.as_ref(), "dial")?;
        let key = PoolKey {
            addr,
            peer: expected,
            own: identity.fingerprint(),
        };
        let limit = ctx.connect_timeout;
        let deadline = Instant::now() + limit;
        let stream = self
            .open_stream(key, identity, endpoint, deadline, limit)
            .await?;
        Ok(Box::new(stream))
    }
}

/// Pool key: one connection per remote address, remote key and own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    peer: Fingerprint,
    own: Fingerprint,
}

/// The datagram a dialer sends on each pooled connection it finds at the
/// peer's stream limit: the peer then announces any credit it holds back
/// (see `listener::grant_credit`). A peer that does not know it ignores it.
pub(crate) const STREAMS_BLOCKED: &[u8] = b"masse/streams-blocked";

/// How often [`QuicInterface::open_stream`] goes round (a dead connection
/// dropped, a stream opened on a connection being retired) before giving up.
const MAX_ROUNDS: usize = 8;
/// How long a dialer whose pool is full waits for a stream to finish: four
/// round trips, within these bounds (and the connect timeout). The credit of
/// a finished stream comes back once the peer has our acknowledgement of
/// its end (delayed up to 25 ms by default) and a round trip more.
const CREDIT_WAIT_MIN: Duration = Duration::from_millis(50);
const CREDIT_WAIT_MAX: Duration = Duration::from_secs(1);

/// The TLS client configurations of every interface in the process, by own
/// and peer fingerprint: building one costs a key parse, and sharing one
/// shares its TLS session cache, so a new interface (a node restarted in the
/// process, a short-lived client) resumes sessions instead of running full
/// certificate handshakes.
static CLIENT_CONFIGS: std::sync::LazyLock<ClientConfigs> =
    std::sync::LazyLock::new(ClientConfigs::new);

static BUSY_WARNED: masse_core::WarnOnce = masse_core::WarnOnce::new();

/// The connections to one peer.
#[derive(Default)]
struct PeerConns {
    /// Oldest first: a stream goes to the first one with room.
    conns: Mutex<Vec<Pooled>>,
    /// Held while dialing: one new connection at a time.
    dialing: tokio::sync::Mutex<()>,
}

impl PeerConns {
    /// Opens a stream on the first connection with room for one, without
    /// waiting, dropping dead connections on the way; closes idle
    /// connections after the one used. Else the number of live connections.
    fn try_open(&self, endpoint: &Endpoint) -> Result<QuicStream, usize> {
        let mut conns = lock(&self.conns);
        let mut i = 0;
        while i < conns.len() {
            match poll_once(conns[i].conn.open_bi()) {
                None => i += 1,
                Some(Err(e)) => {
                    tracing::debug!(%endpoint, error = %e, "pooled quic connection is dead; dropped");
                    conns.remove(i);
                }
                Some(Ok((send, recv))) => {
                    let Some(stream) = conns[i].wrap(send, recv) else {
                        conns.remove(i);
                        continue;
                    };
                    let mut j = i + 1;
                    while j < conns.len() {
                        if conns[j].retire() {
                            let idle = conns.remove(j);
                            tracing::debug!(%endpoint, "extra quic connection to the peer idle; closed");
                            idle.conn.close(VarInt::from_u32(0), b"idle");
                        } else {
                            j += 1;
                        }
                    }
                    return Ok(stream.trace(endpoint));
                }
            }
        }
        Err(conns.len())
    }
}

type Slot = Arc<PeerConns>;

/// A pooled connection, and how many of our streams on it are in use.
#[derive(Clone)]
struct Pooled {
    conn: quinn::Connection,
    /// Open streams, plus [`RETIRED`] once the connection is being closed.
    streams: Arc<AtomicUsize>,
}

/// Added to the stream count of a connection being closed.
const RETIRED: usize = usize::MAX / 2;

impl Pooled {
    fn new(conn: quinn::Connection) -> Self {
        Pooled {
            conn,
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts a stream just opened on this connection; `None` if the
    /// connection is being closed (the stream is dropped).
    fn wrap(&self, send: SendStream, recv: RecvStream) -> Option<QuicStream> {
        let before = self.streams.fetch_add(1, Ordering::AcqRel);
        let open = OpenStream(self.streams.clone());
        (before < RETIRED).then(|| QuicStream {
            recv,
            send,
            open: Some(open),
        })
    }

    /// Marks the connection for closing if none of our streams uses it.
    fn retire(&self) -> bool {
        self.streams
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Acquire) % RETIRED
    }
}

/// One stream in a connection's count, until dropped.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A masse stream on a pooled connection. Once dropped, it stays counted
/// until the peer has acknowledged everything sent on it (or stopped it),
/// so a connection is never closed under data still in flight.
struct QuicStream {
    recv: RecvStream,
    send: SendStream,
    open: Option<OpenStream>,
}

impl QuicStream {
    fn trace(self, endpoint: &Endpoint) -> Self {
        tracing::trace!(%endpoint, stream = %self.send.id(), "quic stream opened");
        self
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        let open = self.open.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Dropping `send` finishes the stream.
            let done = self.send.stopped();
            rt.spawn(async move {
                let _ = done.await;
                drop(open);
            });
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// Polls `fut` once: its output if it is ready at once.
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// What the clones of one interface share.
pub(crate) struct Shared {
    state: Mutex<State>,
    pool: Mutex<HashMap<PoolKey, Slot>>,
    /// Dropped with `Shared`: tells the pool watchers to let go.
    alive: watch::Sender<()>,
}

pub(crate) struct State {
    endpoint: Option<quinn::Endpoint>,
    /// Client-only endpoints, IPv4 and IPv6.
    fallback: [Option<quinn::Endpoint>; 2],
    sink: Arc<Mutex<Sink>>,
    accept_task: Option<AbortOnDrop>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            state: Mutex::new(State {
                endpoint: None,
                fallback: [None, None],
                sink: Arc::new(Mutex::new(Sink::default())),
                accept_task: None,
            }),
            pool: Mutex::new(HashMap::new()),
            alive: watch::channel(()).0,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn slot(&self, key: PoolKey) -> Slot {
        lock(&self.pool).entry(key).or_default().clone()
    }

    /// Forgets `conn` if it is still pooled for `key`, and the peer when it
    /// has no connection left and none is being dialed.
    fn evict(&self, key: PoolKey, conn: &quinn::Connection) {
        let mut pool = lock(&self.pool);
        let Some(peer) = pool.get(&key).cloned() else {
            return;
        };
        let mut conns = lock(&peer.conns);
        conns.retain(|p| p.conn.stable_id() != conn.stable_id());
        if conns.is_empty() && peer.dialing.try_lock().is_ok() {
            drop(conns);
            pool.remove(&key);
        }
    }

    /// Evicts `conn` from the pool when it closes; lets go of it when the
    /// interface is dropped.
    fn watch(self: &Arc<Self>, key: PoolKey, conn: &quinn::Connection) {
        let (weak, conn, mut alive) = (Arc::downgrade(self), conn.clone(), self.alive.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                reason = conn.closed() => {
                    tracing::debug!(remote = %key.addr, %reason, "pooled quic connection closed");
                    if let Some(shared) = Weak::upgrade(&weak) {
                        shared.evict(key, &conn);
                    }
                }
                _ = alive.changed() => {}
            }
        });
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A QUIC endpoint on a UDP socket bound to `addr`, without a server role yet.
fn new_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)
        .map_err(|e| Error::io_context(e, format!("bind quic {addr}")))?;
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .map_err(|e| Error::io_context(e, format!("start a quic endpoint on {addr}")))
}

/// Can an endpoint bound to `local` send to `remote`? Same family (or an
/// IPv6 wildcard, which is dual-stack), and a loopback-bound socket only to
/// loopback.
fn can_reach(local: SocketAddr, remote: SocketAddr) -> bool {
    let family = local.is_ipv4() == remote.is_ipv4()
        || matches!(local.ip(), IpAddr::V6(v6) if v6.is_unspecified());
    let scope =
        local.ip().is_unspecified() || local.ip().is_loopback() == remote.ip().is_loopback();
    family && scope
}

fn connect_error(endpoint: &Endpoint, e: quinn::ConnectError) -> Error {
    match e {
        quinn::ConnectError::InvalidRemoteAddress(addr) => Error::InvalidAddress {
            kind: "quic remote address",
            input: addr.to_string(),
            reason: "not a dialable address".into(),
        },
        other => Error::from(std::io::Error::other(format!(
            "quic connect to {endpoint}: {other}"
        ))),
    }
}

/// What a failed connection means: a certificate problem on either side is
/// [`Error::Unauthorized`], the rest an I/O error of a telling kind.
pub(crate) fn connection_error(endpoint: &Endpoint, e: ConnectionError) -> Error {
    use std::io::ErrorKind;
    let crypto_alert = |code: u64| -> Option<u8> {
        (0x100..=0x1ff)
            .contains(&code)
            .then_some((code & 0xff) as u8)
    };
    let kind = match &e {
        ConnectionError::TransportError(te) => {
            if let Some(alert) = crypto_alert(u64::from(te.code))
                && is_certificate_alert(alert)
            {
                return Error::Unauthorized {
                    reason: format!("{endpoint}: {}", te.reason),
                };
            }
            if crypto_alert(u64::from(te.code)).is_some() {
                return Error::protocol(format!("{endpoint}: TLS handshake failed: {}", te.reason));
            }
            ErrorKind::InvalidData
        }
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            if let Some(alert) = crypto_alert(code)
                && is_certificate_alert(alert)
            {
                return Error::Unauthorized {
                    reason: format!("{endpoint}: the peer rejected our certificate ({close})"),
                };
            }
            if code == 0x2 {
                ErrorKind::ConnectionRefused
            } else {
                ErrorKind::ConnectionAborted
            }
        }
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => {
            ErrorKind::ConnectionAborted
        }
        ConnectionError::Reset => ErrorKind::ConnectionReset,
        ConnectionError::TimedOut => ErrorKind::TimedOut,
        ConnectionError::VersionMismatch | ConnectionError::CidsExhausted => ErrorKind::Other,
    };
    Error::from(std::io::Error::new(
        kind,
        format!("quic connection to {endpoint}: {e}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reachability() {
        assert!(can_reach(sa("127.0.0.1:1"), sa("127.0.0.1:2")));
        assert!(!can_reach(sa("127.0.0.1:1"), sa("10.0.0.1:2")));
        assert!(can_reach(sa("0.0.0.0:1"), sa("10.0.0.1:2")));
        assert!(can_reach(sa("0.0.0.0:1"), sa("127.0.0.1:2")));
        assert!(!can_reach(sa("0.0.0.0:1"), sa("[::1]:2")));
        assert!(can_reach(sa("[::]:1"), sa("10.0.0.1:2")));
        assert!(can_reach(sa("[::1]:1"), sa("[::1]:2")));
        assert!(!can_reach(sa("[::1]:1"), sa("127.0.0.1:2")));
        assert!(can_reach(sa("10.0.0.7:1"), sa("10.0.0.1:2")));
    }

    #[test]
    fn certificate_alerts_are_unauthorized() {
        let ep: Endpoint = "quic://127.0.0.1:1".parse().unwrap();
        let close = |code: u64| {
            ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto((code & 0xff) as u8),
                frame_type: None,
                reason: Default::default(),
            })
        };
        assert!(matches!(
            connection_error(&ep, close(0x100 + 116)),
            Error::Unauthorized { .. }
        ));
        assert!(matches!(
            connection_error(&ep, close(0x100 + 42)),
            Error::Unauthorized { .. }
        ));
        match connection_error(&ep, ConnectionError::TimedOut) {
            Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        match connection_error(&ep, ConnectionError::Reset) {
            e @ Error::Io(_) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_settings() {
        let q = QuicInterface::new("127.0.0.1:0")
            .idle_timeout(Duration::ZERO)
            .keep_alive_interval(None)
            .max_concurrent_streams(0);
        assert_eq!(q.settings.max_streams, 1);
        let _ = q.server_transport();
        let _ = q.client_transport();
        let huge = QuicInterface::new("127.0.0.1:0").idle_timeout(Duration::MAX);
        let _ = huge.server_transport();
    }
}
