//! [`TcpInterface`]: its configuration and the dialing side.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use masse_core::addr::{check_advertised, parse_socket_addr};
use masse_core::{
    BindContext, BoxIo, ConnectContext, Endpoint, Error, Interface, Listener, PeerRecord, Protocol,
    Result, async_trait, dial_within,
};
use tokio::net::{TcpSocket, TcpStream};

use crate::listener::{Advertised, TcpListener};

/// Plain TCP streams: binds a TCP listener and dials `tcp://` endpoints.
///
/// Configured with builder methods; the address is parsed when the interface
/// is built and an invalid one is reported by [`Interface::bind`] (or at once
/// by [`TcpInterface::try_new`]). Dialing honours
/// [`ConnectContext::connect_timeout`] and fails with [`Error::Timeout`] when it
/// passes.
///
/// ```
/// use masse_core::{Interface, Protocol};
/// use masse_tcp::TcpInterface;
///
/// let tcp = TcpInterface::new("127.0.0.1:0").nodelay(true).backlog(2048);
/// assert_eq!(tcp.protocol(), Protocol::TCP);
/// ```
#[derive(Debug, Clone)]
pub struct TcpInterface {
    addr: Result<SocketAddr>,
    advertise: Vec<SocketAddr>,
    include_loopback: bool,
    nodelay: bool,
    backlog: u32,
    silence: Option<Duration>,
}

impl TcpInterface {
    /// The default listen backlog.
    pub const DEFAULT_BACKLOG: u32 = 1024;
    /// The default [`dead_peer_timeout`](Self::dead_peer_timeout).
    pub const DEFAULT_DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

    /// An interface that binds `addr`, an IP address and port such as
    /// `"0.0.0.0:0"`, `"127.0.0.1:4100"` or `"[::1]:0"` (port 0: any free
    /// port). Host names are not resolved. If `addr` does not parse,
    /// [`bind`](Interface::bind) fails with [`Error::InvalidAddress`]; dialing
    /// works regardless.
    pub fn new(addr: impl AsRef<str>) -> Self {
        Self::with_addr(parse_addr(addr.as_ref()))
    }

    /// Like [`new`](TcpInterface::new), but an address that does not parse is
    /// an [`Error::InvalidAddress`] at once.
    pub fn try_new(addr: &str) -> Result<Self> {
        parse_addr(addr).map(Self::from_addr)
    }

    /// An interface that binds `addr`.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self::with_addr(Ok(addr))
    }

    fn with_addr(addr: Result<SocketAddr>) -> Self {
        TcpInterface {
            addr,
            advertise: Vec::new(),
            include_loopback: false,
            nodelay: true,
            backlog: Self::DEFAULT_BACKLOG,
            silence: Some(Self::DEFAULT_DEAD_PEER_TIMEOUT),
        }
    }

    /// Advertises `addr` instead of the addresses found by looking at the bound
    /// socket and the host (behind NAT, port forwarding, in a container).
    /// Repeatable: the endpoints are advertised in the order added. Port 0
    /// means the port actually bound. The address must be one a peer can dial:
    /// `0.0.0.0` or `::` makes [`bind`](Interface::bind) fail with
    /// [`Error::InvalidAddress`].
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise.push(addr);
        self
    }

    /// When bound to a wildcard address, also advertise loopback addresses
    /// (after the others). Default `false`: loopback is advertised only if the
    /// host has no other address of the bound family.
    pub fn include_loopback(mut self, include: bool) -> Self {
        self.include_loopback = include;
        self
    }

    /// Sets `TCP_NODELAY` on dialed and accepted sockets. Default `true`:
    /// masse streams carry request/response traffic that Nagle's algorithm
    /// would delay.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// How long the peer of an open stream may stay silent before the
    /// stream fails (default [`DEFAULT_DEAD_PEER_TIMEOUT`](Self::DEFAULT_DEAD_PEER_TIMEOUT);
    /// `None`: never, as plain TCP). A peer whose host went away without a
    /// word (power cut, cable, a network that drops everything) otherwise
    /// leaves reads waiting for ever. Past half of it without a byte from
    /// the peer, the kernel sends keepalive probes (every sixth of it, three
    /// at most); with no answer, or with data unacknowledged for all of it
    /// (Linux: `TCP_USER_TIMEOUT`), reads and writes fail with
    /// [`TimedOut`](std::io::ErrorKind::TimedOut). A peer that is merely
    /// slow or idle but alive answers the probes and is never cut off. At
    /// least 2 s (the probes count in whole seconds).
    pub fn dead_peer_timeout(mut self, limit: Option<Duration>) -> Self {
        self.silence = limit.map(|l| l.max(Duration::from_secs(2)));
        self
    }

    /// The listen backlog: how many connections the kernel queues before
    /// they are accepted (default [`DEFAULT_BACKLOG`](Self::DEFAULT_BACKLOG);
    /// the system may cap it, on Linux at `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog.max(1);
        self
    }

    /// Binds and listens as configured; the listener advertises `protocol`
    /// endpoints. Shared by the plain and the TLS interface.
    pub(crate) fn bind_tcp(&self, protocol: Protocol) -> Result<TcpListener> {
        let addr = self.addr.clone()?;
        check_advertised(&self.advertise)?;
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| Error::io_context(e, format!("create a socket to bind {protocol} {addr}")))?;
        // What std's TcpListener::bind does: a restarted node can rebind its
        // port while old connections linger in TIME_WAIT. (On Windows the
        // option would let two listeners share a port, so it stays off.)
        #[cfg(unix)]
        socket.set_reuseaddr(true).map_err(|e| {
            Error::io_context(e, format!("set SO_REUSEADDR to bind {protocol} {addr}"))
        })?;
        socket
            .bind(addr)
            .map_err(|e| Error::io_context(e, format!("bind {protocol} {addr}")))?;
        // Accepted sockets inherit the listener's keepalive settings (Linux).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(limit) = self.silence {
            watch_for_silence(socket2::SockRef::from(&socket), limit).map_err(|e| {
                Error::io_context(e, format!("set keepalive to bind {protocol} {addr}"))
            })?;
        }
        let listener = socket
            .listen(self.backlog)
            .map_err(|e| Error::io_context(e, format!("listen on {protocol} {addr}")))?;
        let local = listener.local_addr().map_err(|e| {
            Error::io_context(e, format!("read the address bound for {protocol} {addr}"))
        })?;
        Ok(TcpListener::new(
            listener,
            Advertised {
                protocol,
                local,
                advertise: self.advertise.clone(),
                include_loopback: self.include_loopback,
            },
            self.nodelay,
            self.silence,
        ))
    }

    /// Connects to `addr` within `limit` and sets `TCP_NODELAY` as
    /// configured. Shared by the plain and the TLS interface.
    pub(crate) async fn dial(&self, addr: SocketAddr, limit: Duration) -> Result<TcpStream> {
        let stream = dial_within(limit, TcpTarget(addr), TcpStream::connect(addr)).await?;
        set_nodelay(self.nodelay, &stream, "dialed");
        if let Some(silence) = self.silence {
            set_silence(silence, &stream, "dialed");
        }
        Ok(stream)
    }
}

/// A dialed address as a TCP URL, formatted only if the dial fails.
struct TcpTarget(SocketAddr);

impl fmt::Display for TcpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp://{}", self.0)
    }
}

impl Default for TcpInterface {
    /// Binds `0.0.0.0:0`: every IPv4 address, a free port.
    fn default() -> Self {
        Self::from_addr(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

impl From<SocketAddr> for TcpInterface {
    fn from(addr: SocketAddr) -> Self {
        Self::from_addr(addr)
    }
}

#[async_trait]
impl Interface for TcpInterface {
    fn protocol(&self) -> Protocol {
        Protocol::TCP
    }

    async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>> {
        let listener = self.bind_tcp(Protocol::TCP)?;
        tracing::info!(
            namespace = %ctx.namespace,
            name = %ctx.name,
            local = %listener.local_addr(),
            endpoints = ?listener.endpoints(),
            "tcp listener bound"
        );
        Ok(Box::new(listener))
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        peer: &PeerRecord,
        ctx: &ConnectContext,
    ) -> Result<BoxIo> {
        let addr = endpoint.socket_addr_for(&Protocol::TCP)?;
        let stream = self.dial(addr, ctx.connect_timeout).await?;
        tracing::debug!(peer = %peer.name, %endpoint, local = ?stream.local_addr().ok(), "tcp connected");
        Ok(Box::new(stream))
    }
}

/// Sets `TCP_NODELAY` on a `what` ("dialed", "accepted") socket if
/// `nodelay`; a failure is only logged (the stream works without it).
pub(crate) fn set_nodelay(nodelay: bool, stream: &TcpStream, what: &str) {
    if nodelay && let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, what, "cannot set TCP_NODELAY");
    }
}

/// Arms keepalive probes (and, on Linux, `TCP_USER_TIMEOUT`) so that a
/// peer silent for `limit` fails the socket's reads and writes; see
/// [`TcpInterface::dead_peer_timeout`].
pub(crate) fn watch_for_silence(
    sock: socket2::SockRef<'_>,
    limit: Duration,
) -> std::io::Result<()> {
    let secs = |d: Duration| d.max(Duration::from_secs(1));
    let probes = socket2::TcpKeepalive::new().with_time(secs(limit / 2));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let probes = probes.with_interval(secs(limit / 6)).with_retries(3);
    sock.set_tcp_keepalive(&probes)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(limit))?;
    Ok(())
}

/// [`watch_for_silence`] on a `what` ("dialed", "accepted") stream; a
/// failure is only logged (the stream works without it).
pub(crate) fn set_silence(limit: Duration, stream: &TcpStream, what: &str) {
    if let Err(e) = watch_for_silence(socket2::SockRef::from(stream), limit) {
        tracing::debug!(error = %e, what, "cannot set TCP keepalive");
    }
}

/// Parses a bind address, explaining the usual mistakes.
fn parse_addr(input: &str) -> Result<SocketAddr> {
    parse_socket_addr("tcp socket address", input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use masse_core::InstanceId;

    fn bind_ctx() -> BindContext {
        BindContext::new(
            "test".parse().unwrap(),
            "tcp-unit".parse().unwrap(),
            InstanceId::random(),
        )
    }

    /// Both ends of a stream: the dialed socket and the accepted one.
    async fn both_ends(tcp: &TcpInterface) -> [TcpStream; 2] {
        let mut listener = tcp.bind_tcp(Protocol::TCP).unwrap();
        let addr = listener.local_addr();
        let (dialed, accepted) = tokio::join!(
            tcp.dial(addr, Duration::from_secs(5)),
            listener.accept_tcp()
        );
        [dialed.unwrap(), accepted.unwrap().0]
    }

    #[tokio::test]
    async fn both_ends_watch_for_a_silent_peer() {
        let limit = Duration::from_secs(6);
        let tcp = TcpInterface::new("127.0.0.1:0").dead_peer_timeout(Some(limit));
        for end in both_ends(&tcp).await {
            let sock = socket2::SockRef::from(&end);
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(3));
            assert_eq!(
                sock.tcp_keepalive_interval().unwrap(),
                Duration::from_secs(1)
            );
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
            assert_eq!(sock.tcp_user_timeout().unwrap(), Some(limit));
        }
        let plain = TcpInterface::new("127.0.0.1:0").dead_peer_timeout(None);
        for end in both_ends(&plain).await {
            let sock = socket2::SockRef::from(&end);
            assert!(!sock.keepalive().unwrap());
            assert_eq!(sock.tcp_user_timeout().unwrap(), None);
        }
        let default = TcpInterface::new("127.0.0.1:0");
        for end in both_ends(&default).await {
            let sock = socket2::SockRef::from(&end);
            assert_eq!(
                sock.tcp_user_timeout().unwrap(),
                Some(TcpInterface::DEFAULT_DEAD_PEER_TIMEOUT)
            );
        }
    }

    #[test]
    fn parses_addresses() {
        for s in ["0.0.0.0:0", "127.0.0.1:4100", "[::1]:0", "[::]:65535"] {
            assert_eq!(parse_addr(s).unwrap(), s.parse::<SocketAddr>().unwrap());
            assert!(TcpInterface::try_new(s).is_ok());
        }
    }

    #[test]
    fn invalid_addresses_explain_themselves() {
        for (s, hint) in [
            ("localhost:4100", "host names"),
            ("127.0.0.1", "missing port"),
            ("::1", "brackets"),
            (" 127.0.0.1:0", "white space"),
            ("127.0.0.1:99999", "expected an IP address"),
            ("", "expected an IP address"),
            ("::1:80", "brackets"),
        ] {
            match TcpInterface::try_new(s) {
                Err(Error::InvalidAddress {
                    kind,
                    input,
                    reason,
                }) => {
                    assert_eq!(kind, "tcp socket address");
                    assert_eq!(input, s);
                    assert!(reason.contains(hint), "{s:?}: {reason}");
                }
                other => panic!("{s:?}: expected InvalidAddress, got {other:?}"),
            }
        }
        let long = "x".repeat(1000);
        match parse_addr(&long) {
            Err(Error::InvalidAddress { input, .. }) => assert!(input.len() < 210),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn invalid_address_fails_at_bind() {
        let tcp = TcpInterface::new("not an address");
        match tcp.bind(&bind_ctx()).await {
            Err(Error::InvalidAddress { input, .. }) => assert_eq!(input, "not an address"),
            Err(other) => panic!("expected InvalidAddress, got {other:?}"),
            Ok(_) => panic!("bind of an invalid address succeeded"),
        }
    }

    #[tokio::test]
    async fn unspecified_advertise_address_is_rejected() {
        let tcp = TcpInterface::new("127.0.0.1:0").advertise("0.0.0.0:0".parse().unwrap());
        assert!(matches!(
            tcp.bind(&bind_ctx()).await,
            Err(Error::InvalidAddress {
                kind: "advertised address",
                ..
            })
        ));
    }
}
