//! The error type shared by every masse crate.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::record::InstanceId;

/// A boxed error from a backend (database driver, TLS library, ...), shareable so
/// that [`Error`] stays [`Clone`] and one failure can be handed to many waiters.
pub type BoxError = Arc<dyn StdError + Send + Sync + 'static>;

/// `Result` with masse's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in masse, split into cases a caller can act on.
///
/// Errors are cheap to clone: sources are reference-counted.
///
/// Branch on the variant (under [`Error::Connect`], on [`root`](Self::root)),
/// never on the message. In short:
///
/// - **fix the input or configuration, do not retry:**
///   [`InvalidName`](Self::InvalidName), [`InvalidPattern`](Self::InvalidPattern),
///   [`InvalidAddress`](Self::InvalidAddress), [`Config`](Self::Config),
///   [`Unsupported`](Self::Unsupported), [`RegistryUnauthorized`](Self::RegistryUnauthorized),
///   [`Unauthorized`](Self::Unauthorized);
/// - **retry later, with backoff** ([`is_transient`](Self::is_transient)):
///   [`RegistryUnavailable`](Self::RegistryUnavailable), [`Timeout`](Self::Timeout),
///   [`Refused`](Self::Refused) with [`RefuseCode::Busy`] or
///   [`RefuseCode::RegistryUnavailable`], connection-level [`Io`](Self::Io);
/// - **look the name up again** ([`is_stale_address`](Self::is_stale_address);
///   the node does it once by itself): [`WrongPeer`](Self::WrongPeer), stale
///   refusals ([`RefuseCode::is_stale`]), an address nobody answers at;
/// - **the name's state in the registry:** [`NotFound`](Self::NotFound),
///   [`NameTaken`](Self::NameTaken), [`NameLost`](Self::NameLost);
/// - **stop:** [`Closed`](Self::Closed), [`Registry`](Self::Registry),
///   [`Protocol`](Self::Protocol).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name, namespace or service name is not valid. `position` is the byte
    /// offset of the first offending character, if one character is at fault.
    ///
    /// Returned by [`PeerName::new`](crate::PeerName::new),
    /// [`Namespace::new`](crate::Namespace::new),
    /// [`validate_service`](crate::validate_service), and by the calls that
    /// take names as text: [`NodeBuilder::start`](crate::NodeBuilder::start)
    /// (its name, namespace and services), [`Node::connect`](crate::Node::connect)
    /// and [`connect_service`](crate::Node::connect_service) (the target and
    /// service), before anything is sent. The input is wrong: fix it;
    /// retrying the same input fails the same way.
    #[error("invalid {kind} {input:?}: {reason}")]
    InvalidName {
        /// What was being parsed: `"peer name"`, `"namespace"`, `"service"`.
        kind: &'static str,
        /// The rejected input (truncated to 200 bytes).
        input: String,
        /// Byte offset of the offending character, if any.
        position: Option<usize>,
        /// What is wrong with it.
        reason: String,
    },

    /// A glob pattern could not be compiled.
    ///
    /// Returned when a pattern is parsed: [`Pattern::new`](crate::Pattern::new)
    /// and the calls that take one as text ([`Node::to`](crate::Node::to)'s
    /// dials, [`Node::peers`](crate::Node::peers)), before the registry is
    /// asked. Fix the pattern; retrying fails the same way.
    #[error("invalid pattern {input:?} at byte {position}: {reason}")]
    InvalidPattern {
        /// The rejected pattern (truncated to 200 bytes).
        input: String,
        /// Byte offset where the problem was found.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An endpoint, URL or address could not be parsed, or cannot be used.
    ///
    /// Returned when one is parsed: an [`Endpoint`](crate::Endpoint), a
    /// `masse://namespace/name` target of [`Node::connect`](crate::Node::connect),
    /// an instance id or fingerprint, an interface's bind address
    /// (`TcpInterface::try_new`, or [`Interface::bind`](crate::Interface::bind)
    /// for one given as text), an advertised address a peer cannot dial
    /// ([`addr::check_advertised`](crate::addr::check_advertised), at bind),
    /// a registry URL (when the registry is opened). The configuration or
    /// input is wrong: fix it; retrying fails the same way.
    #[error("invalid {kind} {input:?}: {reason}")]
    InvalidAddress {
        /// What was being parsed: `"endpoint"`, `"socket address"`, `"url"`, ...
        kind: &'static str,
        /// The rejected input (truncated to 200 bytes).
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration value is out of range or inconsistent.
    ///
    /// Returned when the setting is checked: by
    /// [`NodeBuilder::start`](crate::NodeBuilder::start) (a namespace secret
    /// too short, inconsistent options), when a registry is opened (its
    /// configuration, client settings such as TLS options), by an identity
    /// file that cannot serve, and by `tls` and `quic` interfaces that have
    /// no identity to present ([`Interface::bind`](crate::Interface::bind),
    /// [`Interface::connect`](crate::Interface::connect)). Final: fix the
    /// configuration; the node does not retry it.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No live peer matches the name or pattern.
    ///
    /// Returned by [`Node::connect`](crate::Node::connect),
    /// [`connect_service`](crate::Node::connect_service),
    /// [`Node::to`](crate::Node::to) and
    /// [`Node::remote_stats`](crate::Node::remote_stats) when the lookup
    /// (through the node's cache) finds no record: the peer has not
    /// published yet, has expired or left. Never wrapped in
    /// [`Error::Connect`]. Not transient by itself: retry later only if the
    /// peer is expected to come (a fleet starting up), otherwise report it.
    #[error("no peer named {name:?} in namespace {namespace:?}")]
    NotFound {
        /// The namespace searched.
        namespace: String,
        /// The name or pattern looked up.
        name: String,
    },

    /// The peer that answered is not the one that was dialed (stale address).
    ///
    /// Returned by a dial (inside [`Error::Connect`] at
    /// [`ConnectStep::Handshake`]) when the acceptor at the record's address
    /// refuses with [`RefuseCode::WrongPeer`]: the address now belongs to
    /// another peer. The node has then already looked the name up again and
    /// dialed the fresh record once ([`is_stale_address`](Self::is_stale_address));
    /// seeing it, the registry still names that address (a record not yet
    /// expired): retry after the peer's TTL, or report it.
    #[error("dialed {expected:?} but reached {actual:?}")]
    WrongPeer {
        /// The name that was dialed.
        expected: String,
        /// Who answered, if it said.
        actual: String,
    },

    /// A *peer* did not check out or refused us: its certificate does not
    /// match the fingerprint its record publishes, it lacks the namespace
    /// secret, or it refused ours. (The *registry* refusing this process's
    /// credentials is [`Error::RegistryUnauthorized`].)
    ///
    /// Returned by a dial, inside [`Error::Connect`]: at
    /// [`ConnectStep::Transport`] when a `tls` or `quic` peer presents
    /// another certificate than its record pins (or its record pins none),
    /// or rejects ours; at [`ConnectStep::Handshake`] when the namespace
    /// secret's challenge fails either way or the acceptor refuses with
    /// [`RefuseCode::Unauthorized`]. At the transport step the node first
    /// looks the name up again once (a squatter on an address the peer
    /// left); what reaches the caller is final: fix the secret or identity,
    /// do not retry.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Why, as far as it is safe to say.
        reason: String,
    },

    /// [`NamePolicy::Exclusive`](crate::NamePolicy::Exclusive) publish while another
    /// live instance holds the name.
    ///
    /// Returned by [`Registry::publish`](crate::Registry::publish) with that
    /// policy, and so by [`NodeBuilder::start`](crate::NodeBuilder::start)
    /// of a node built with [`name_policy`](crate::NodeBuilder::name_policy)
    /// `Exclusive` (the default, `Takeover`, never fails so). `holder` is
    /// alive now: use another name, wait for its record to expire (it stops
    /// refreshing), or publish with `Takeover`. Retrying at once fails the
    /// same way.
    #[error("name {name:?} is held by live instance {holder}")]
    NameTaken {
        /// The contested name.
        name: String,
        /// The instance currently holding it.
        holder: InstanceId,
    },

    /// A refresh was refused because this instance no longer owns its name
    /// (it expired, or another instance took it over).
    ///
    /// Returned by [`Registry::refresh`](crate::Registry::refresh). A node's
    /// heartbeat handles it itself (it publishes again if nobody else holds
    /// the name, and otherwise gives the name up and says so in its
    /// events), so applications meet it only when they call a registry
    /// directly: publish again (`Exclusive` takes the name back only if it
    /// is free, failing with [`Error::NameTaken`] otherwise) or stop using
    /// the name. Retrying the refresh fails the same way.
    #[error("name {name:?} is no longer owned by instance {instance}")]
    NameLost {
        /// The lost name.
        name: String,
        /// The instance that lost it.
        instance: InstanceId,
    },

    /// The registry backend cannot be reached (connection refused, server gone,
    /// pool exhausted). Retrying later may succeed.
    ///
    /// Returned by every registry call and by opening a registry when the
    /// server or file cannot be reached or written *for now*: refused, reset
    /// or timed-out connections, a call not answered within the backend's
    /// call timeout (the source may then be an [`Error::Timeout`] of
    /// [`Operation::RegistryCall`]), a server shutting down, starting, in
    /// recovery or read-only, a full disk, a busy SQLite file, a Redis
    /// cluster failing over. Inside [`Error::Connect`] at
    /// [`ConnectStep::Lookup`] when a dial could not look the name up.
    /// Transient ([`is_transient`](Self::is_transient)): retry with backoff;
    /// a node keeps serving from its cache meanwhile and retries by itself.
    #[error("registry {backend} unavailable: {source}")]
    RegistryUnavailable {
        /// The backend's name: `"redis"`, `"postgres"`, `"memory"`, ...
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// The registry refused this process's credentials (wrong password,
    /// unknown user, missing permission, a TLS certificate it does not
    /// trust). Distinct from [`Error::Unauthorized`], which is a *peer*
    /// refusing a stream: the fix here is in the registry URL or the
    /// registry's user management, and retrying will not help.
    ///
    /// Returned mostly when a registry is opened (the first connection and
    /// its first command authenticate), and by any later call whose user
    /// lost a permission it needs. Final: fix the URL or the server's users
    /// and start again.
    #[error("registry {backend} refused the credentials: {source}")]
    RegistryUnauthorized {
        /// The backend's name.
        backend: &'static str,
        /// The server's answer.
        #[source]
        source: BoxError,
    },

    /// The registry backend answered with a failure that retrying will not fix
    /// (bad query, corrupt schema, permission denied).
    ///
    /// Returned by any registry call whose failure is not about reaching the
    /// server: a statement the database rejects, a schema or key of the
    /// wrong shape (damaged data: nothing was written), an answer masse
    /// cannot read. Final for that call: report it; the registry's data or
    /// schema needs attention.
    #[error("registry {backend} failed: {source}")]
    Registry {
        /// The backend's name.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// An operation did not complete in time. Branch on
    /// [`what`](Operation) to tell a slow peer from a slow registry (each
    /// [`Operation`] says which calls return it).
    ///
    /// Transient ([`is_transient`](Self::is_transient)): retry with backoff.
    /// Inside [`Error::Connect`] at [`ConnectStep::Transport`] or
    /// [`ConnectStep::Handshake`] it also says the address may be stale (a
    /// silent address), and the node has already looked the name up again
    /// once.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        what: Operation,
        /// The deadline that passed.
        after: Duration,
    },

    /// The remote side broke the wire protocol (malformed, oversized or
    /// unexpected message).
    ///
    /// Returned by the masse handshake (inside [`Error::Connect`] at
    /// [`ConnectStep::Handshake`] for a dial): bytes that are not masse's, a
    /// message too large or out of order; by a QUIC or TLS handshake that
    /// fails for another reason than a certificate; and by
    /// [`PeerRecord::from_json`](crate::PeerRecord::from_json) for a
    /// malformed record. At the handshake step the node treats it as a
    /// stale address (another program on the port) and looks the name up
    /// again once; what reaches the caller is final.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong with the bytes received.
        reason: String,
    },

    /// The remote side understood the request and refused it.
    ///
    /// Returned by a dial, inside [`Error::Connect`] at
    /// [`ConnectStep::Handshake`], when the acceptor answers with a refusal
    /// (every [`RefuseCode`] but `WrongPeer` and `Unauthorized`, which have
    /// their own variants), and by a QUIC dial whose pooled connections are
    /// all full ([`RefuseCode::Busy`]). Branch on `code`: each
    /// [`RefuseCode`] says what to do. Stale codes were already retried
    /// once after a fresh lookup; [`RefuseCode::Busy`] is
    /// [transient](Self::is_transient).
    #[error("refused by peer ({code}): {reason}")]
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable detail from the peer.
        reason: String,
    },

    /// Something asked of a backend or interface that it does not support.
    ///
    /// Returned by a dial (inside [`Error::Connect`] at
    /// [`ConnectStep::Transport`]) when the peer advertises no endpoint this
    /// node's interfaces speak, by an interface asked to dial a scheme it
    /// does not speak, by [`Registry::watch`](crate::Registry::watch) on a
    /// backend without change notifications (the cache then polls), and by
    /// helpers that need what is missing (a wrapper outside a Tokio
    /// runtime). Final: add the interface or feature, or take another path.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The node, listener or registry handle was shut down.
    ///
    /// Returned by a [`Node`](crate::Node)'s calls after
    /// [`Node::shutdown`](crate::Node::shutdown) (`"node"`), by
    /// [`Listener::accept`](crate::Listener::accept) once the listener is
    /// done (closed, or broken by a fatal accept error reported before), and
    /// by a [`CachingRegistry`](crate::CachingRegistry) shutting down (a
    /// watch it can no longer start). Never wrapped in
    /// [`Error::Connect`]. Final: stop using the handle.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// An I/O error from a socket or file.
    ///
    /// Returned by interfaces ([`Interface::bind`](crate::Interface::bind),
    /// [`Interface::connect`](crate::Interface::connect),
    /// [`Listener::accept`](crate::Listener::accept)), by reads and writes
    /// of streams, and by identity and socket files; usually with what was
    /// being done in its message ([`Error::io_context`]). Branch on the
    /// [`kind`](std::io::Error::kind): connection-level kinds are
    /// [transient](Self::is_transient), those of [`is_stale_io`] say nobody
    /// answers at the address (the node looks the name up again once);
    /// `AddrInUse`, `PermissionDenied` and the like need a fix.
    #[error("I/O error: {0}")]
    Io(#[source] Arc<std::io::Error>),

    /// Dialing a peer failed: says which peer, which endpoint and at which
    /// step, around the error that stopped it.
    ///
    /// Every failure of [`Node::connect`](crate::Node::connect),
    /// [`connect_service`](crate::Node::connect_service) and
    /// [`Node::to`](crate::Node::to) after the name was valid and the node
    /// running comes in this context, except [`Error::NotFound`] (which names
    /// the peer already). Branch on [`root`](Self::root), the error inside:
    /// [`Error::Refused`] with its [`RefuseCode`], [`Error::WrongPeer`],
    /// [`Error::Unauthorized`], [`Error::Timeout`], [`Error::Io`], ...
    #[error("connect to {peer:?}{} failed at {step}: {source}", endpoint.as_deref().map(|e| format!(" via {e}")).unwrap_or_default())]
    Connect {
        /// The name dialed.
        peer: String,
        /// The endpoint being tried (`tcp://10.0.0.7:4100`), if one was.
        endpoint: Option<String>,
        /// What the dialer was doing.
        step: ConnectStep,
        /// What went wrong; never itself a `Connect`.
        #[source]
        source: Box<Error>,
    },
}

/// What an [`Error::Timeout`] was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening a transport connection or stream to a peer (TCP, TLS, QUIC,
    /// Unix socket), or a whole connect by name (lookup, dial, handshake)
    /// past the node's connect timeout.
    ///
    /// From [`Interface::connect`](crate::Interface::connect) past
    /// [`ConnectContext::connect_timeout`](crate::ConnectContext::connect_timeout)
    /// (see [`dial_within`](crate::dial_within)) and from
    /// [`Node::connect`](crate::Node::connect) and its kin. A silent
    /// address: the node looks the name up again once; then retry later.
    Connect,
    /// The masse handshake on an open connection (the peer did not answer
    /// `Hello` / `Welcome` in time).
    ///
    /// From a dial (inside [`Error::Connect`] at
    /// [`ConnectStep::Handshake`], or on [`PeerStream::established`](crate::PeerStream::established)).
    /// The node looks the name up again once (something else may listen
    /// there); then retry later: the peer may be overloaded.
    Handshake,
    /// A QUIC connection to the peer had no stream credit left and none came
    /// back in time.
    ///
    /// From a QUIC [`Interface::connect`](crate::Interface::connect): the
    /// peer has as many streams open from us as it allows. Retry once some
    /// of them end, or raise the peer's stream limit.
    StreamCredit,
    /// Opening a registry: connecting to its server, setting up its storage.
    ///
    /// From the backends' `connect` (the SQL registry's whole opening
    /// deadline). Retry later, or check that the server runs.
    RegistryConnect,
    /// A call to a reachable registry (lookup, publish, refresh, ...) that
    /// did not answer in time.
    ///
    /// From the node's heartbeat and its registry cache, directly; from the
    /// SQL backend as the source of an [`Error::RegistryUnavailable`] (a
    /// call not answered in time is an unavailable registry, on every
    /// backend). Retry with backoff.
    RegistryCall,
    /// Reading a peer's stats with
    /// [`Node::remote_stats`](crate::Node::remote_stats) (the dial and the
    /// reply together). Retry later; the peer may be busy or gone.
    RemoteStats,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Connect => "connect",
            Operation::Handshake => "handshake",
            Operation::StreamCredit => "waiting for stream credit",
            Operation::RegistryConnect => "connecting to the registry",
            Operation::RegistryCall => "registry call",
            Operation::RemoteStats => "reading the peer's stats",
        })
    }
}

/// The step of a dial that failed, in [`Error::Connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectStep {
    /// Looking the name up in the registry (or its cache). The error
    /// inside is a registry one ([`Error::RegistryUnavailable`],
    /// [`Error::Timeout`], ...): retry when the registry is back.
    /// ([`Error::NotFound`] is never wrapped.)
    Lookup,
    /// The interface's connect: TCP connect, TLS or QUIC handshake, or
    /// finding an endpoint this node can speak at all. The error inside is
    /// [`Error::Io`], [`Error::Timeout`], [`Error::Unauthorized`] (these may
    /// mean a stale address: the node looked the name up again once),
    /// [`Error::Unsupported`] (no common protocol: final) or
    /// [`Error::Config`] (no identity: final).
    Transport,
    /// The masse handshake: `Hello`, the namespace secret's challenge, and the
    /// acceptor's answer (a refusal arrives here). The error inside is
    /// [`Error::Refused`], [`Error::WrongPeer`], [`Error::Unauthorized`],
    /// [`Error::Timeout`], [`Error::Protocol`] or [`Error::Io`].
    Handshake,
    /// The dialing node's own wrapper chain: the error is the one a
    /// wrapper returned; what to do depends on that wrapper.
    Wrapper,
}

impl std::fmt::Display for ConnectStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectStep::Lookup => "lookup",
            ConnectStep::Transport => "transport connect",
            ConnectStep::Handshake => "handshake",
            ConnectStep::Wrapper => "wrapper",
        })
    }
}

/// Why an acceptor refused a stream; sent on the wire as one byte.
///
/// A dialer maps a refusal to an [`Error`]: [`WrongPeer`](Self::WrongPeer) to
/// [`Error::WrongPeer`], [`Unauthorized`](Self::Unauthorized) to
/// [`Error::Unauthorized`], every other code to [`Error::Refused`] with the
/// code. The codes that say the dialer's record is stale
/// ([`is_stale`](Self::is_stale)) make the node look the name up again and
/// retry once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseCode {
    /// The acceptor is not the name that was dialed: the address now belongs
    /// to another peer. Stale: the dialer gets [`Error::WrongPeer`] after
    /// its node looked the name up again once.
    WrongPeer,
    /// The dialer is in another namespace. Final: the two nodes are
    /// configured for different namespaces.
    WrongNamespace,
    /// The acceptor does not offer the requested service
    /// ([`Node::connect_service`](crate::Node::connect_service)). Final for
    /// this peer: another instance, or a later version of it, may offer it.
    NoSuchService,
    /// The dialer could not prove who it is (namespace secret, or a
    /// certificate that is not the one registered for its name). The dialer
    /// gets [`Error::Unauthorized`]. Final: fix the secret or identity.
    Unauthorized,
    /// The acceptor is overloaded (its queue for the stream is full, too many
    /// handshakes) or shutting down. Retry later or elsewhere
    /// ([`Error::is_transient`] is true).
    Busy,
    /// The protocol version or a requested feature is not supported. Final
    /// until one side is upgraded.
    Unsupported,
    /// The acceptor holds the name, but as another instance than the one the
    /// dialer's record named (the peer restarted). Stale: the node looks
    /// the name up again and dials the fresh record once.
    WrongInstance,
    /// The acceptor lost the name to another instance (a takeover) and no
    /// longer accepts for it. Stale: the node looks the name up again and
    /// dials the fresh record once.
    NameLost,
    /// One of the acceptor's wrappers refused the stream; the reason is the
    /// wrapper's error. What to do depends on that wrapper (an access rule:
    /// final; a rate limit: later).
    WrapperFailed,
    /// The acceptor could not check the dialer because its registry is
    /// unreachable and its cache does not know the dialer. Retry later,
    /// with backoff ([`Error::is_transient`] is true for it).
    RegistryUnavailable,
}

impl RefuseCode {
    /// All codes, in wire order.
    pub const ALL: [RefuseCode; 10] = [
        RefuseCode::WrongPeer,
        RefuseCode::WrongNamespace,
        RefuseCode::NoSuchService,
        RefuseCode::Unauthorized,
        RefuseCode::Busy,
        RefuseCode::Unsupported,
        RefuseCode::WrongInstance,
        RefuseCode::NameLost,
        RefuseCode::WrapperFailed,
        RefuseCode::RegistryUnavailable,
    ];

    /// The code's wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            RefuseCode::WrongPeer => 1,
            RefuseCode::WrongNamespace => 2,
            RefuseCode::NoSuchService => 3,
            RefuseCode::Unauthorized => 4,
            RefuseCode::Busy => 5,
            RefuseCode::Unsupported => 6,
            RefuseCode::WrongInstance => 7,
            RefuseCode::NameLost => 8,
            RefuseCode::WrapperFailed => 9,
            RefuseCode::RegistryUnavailable => 10,
        }
    }

    /// Decodes a wire byte; `None` for an unknown code.
    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.to_u8() == b)
    }

    /// True if the refusal means the dialer's record of the peer is out of
    /// date (another peer, another instance, or a name taken over), so a
    /// fresh lookup may find the right one.
    pub fn is_stale(self) -> bool {
        matches!(
            self,
            RefuseCode::WrongPeer | RefuseCode::WrongInstance | RefuseCode::NameLost
        )
    }
}

impl std::fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefuseCode::WrongPeer => "wrong peer",
            RefuseCode::WrongNamespace => "wrong namespace",
            RefuseCode::NoSuchService => "no such service",
            RefuseCode::Unauthorized => "unauthorized",
            RefuseCode::Busy => "busy",
            RefuseCode::Unsupported => "unsupported",
            RefuseCode::WrongInstance => "wrong instance",
            RefuseCode::NameLost => "name lost",
            RefuseCode::WrapperFailed => "wrapper failed",
            RefuseCode::RegistryUnavailable => "registry unavailable",
        })
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match e.root() {
            Error::Io(io) => return std::io::Error::new(io.kind(), e),
            Error::InvalidName { .. }
            | Error::InvalidPattern { .. }
            | Error::InvalidAddress { .. }
            | Error::Config(_) => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::WrongPeer { .. } | Error::Refused { .. } => ErrorKind::ConnectionRefused,
            Error::Unauthorized { .. } | Error::RegistryUnauthorized { .. } => {
                ErrorKind::PermissionDenied
            }
            Error::NameTaken { .. } => ErrorKind::AddrInUse,
            Error::Timeout { .. } => ErrorKind::TimedOut,
            Error::Protocol { .. } => ErrorKind::InvalidData,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Closed(_) => ErrorKind::BrokenPipe,
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

impl Error {
    /// An [`Error::Io`] that says what was being done (`"connect to
    /// unix:///run/a.sock"`), keeping `e`'s kind (so
    /// [`is_stale_address`](Self::is_stale_address) and
    /// [`is_transient`](Self::is_transient) still see it) and `e` itself as
    /// its source. For interfaces and registries to report I/O failures.
    pub fn io_context(e: std::io::Error, doing: impl Into<String>) -> Error {
        Error::from(std::io::Error::new(
            e.kind(),
            IoContext {
                doing: doing.into(),
                source: e,
            },
        ))
    }

    /// The error under any [`Error::Connect`] context: the one to branch on.
    pub fn root(&self) -> &Error {
        match self {
            Error::Connect { source, .. } => source.root(),
            other => other,
        }
    }

    /// Owned [`root`](Self::root).
    pub fn into_root(self) -> Error {
        match self {
            Error::Connect { source, .. } => source.into_root(),
            other => other,
        }
    }

    /// The refusal code, if the peer refused the stream (under any context).
    pub fn refuse_code(&self) -> Option<RefuseCode> {
        match self.root() {
            Error::Refused { code, .. } => Some(*code),
            Error::WrongPeer { .. } => Some(RefuseCode::WrongPeer),
            _ => None,
        }
    }

    /// Puts `self` in the context of a dial. An error that has a context
    /// already keeps it (the innermost step is the one that failed), and
    /// [`Error::NotFound`] and [`Error::Closed`] stay as they are.
    pub fn in_connect(
        self,
        peer: impl std::fmt::Display,
        endpoint: Option<&dyn std::fmt::Display>,
        step: ConnectStep,
    ) -> Error {
        match self {
            e @ (Error::Connect { .. } | Error::NotFound { .. } | Error::Closed(_)) => e,
            e => Error::Connect {
                peer: peer.to_string(),
                endpoint: endpoint.map(|e| e.to_string()),
                step,
                source: Box::new(e),
            },
        }
    }

    /// Wraps a backend failure that retrying may fix.
    pub fn unavailable(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Error::RegistryUnavailable {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// Wraps a backend failure that retrying will not fix.
    pub fn registry(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Error::Registry {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// Wraps the registry's refusal of our credentials.
    pub fn registry_unauthorized(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Error::RegistryUnauthorized {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// Builds a [`Error::Protocol`].
    pub fn protocol(reason: impl Into<String>) -> Self {
        Error::Protocol {
            reason: reason.into(),
        }
    }

    /// True if the failure says the address dialed may no longer be the
    /// peer's: the node then drops its cached record, looks the name up once
    /// more and dials the fresh record if it differs (if it does not, this
    /// error stands). Classified by the step that failed, never by message:
    ///
    /// - at the transport connect ([`ConnectStep::Transport`]): a timeout, a
    ///   certificate that is not the record's ([`Error::Unauthorized`]: a
    ///   squatter on an address the peer left), or an I/O error saying nobody
    ///   answers there ([`is_stale_io`]);
    /// - at the handshake ([`ConnectStep::Handshake`]): a stale refusal
    ///   ([`RefuseCode::is_stale`], [`Error::WrongPeer`]), no answer in time,
    ///   a connection closed or reset before the answer, or bytes that are not
    ///   masse's (another program on the port);
    /// - with no context: a stale refusal, or such an I/O error.
    ///
    /// Interfaces take part by failing `connect` with [`Error::Io`] of one of
    /// those kinds, [`Error::Timeout`] or [`Error::Unauthorized`] (see
    /// [`Interface::connect`](crate::Interface::connect)).
    pub fn is_stale_address(&self) -> bool {
        match self {
            Error::Connect { step, source, .. } => match (step, &**source) {
                (_, e) if e.is_stale_refusal() => true,
                (_, Error::Io(io)) => is_stale_io(io.kind()),
                (ConnectStep::Transport, Error::Timeout { .. } | Error::Unauthorized { .. }) => {
                    true
                }
                (ConnectStep::Handshake, Error::Timeout { .. } | Error::Protocol { .. }) => true,
                _ => false,
            },
            Error::Io(io) => is_stale_io(io.kind()),
            e => e.is_stale_refusal(),
        }
    }

    fn is_stale_refusal(&self) -> bool {
        match self {
            Error::Refused { code, .. } => code.is_stale(),
            Error::WrongPeer { .. } => true,
            _ => false,
        }
    }

    /// True for failures that are expected to go away on their own: worth a
    /// retry with backoff. Looks under any [`Error::Connect`] context
    /// ([`root`](Self::root)) and covers exactly:
    ///
    /// - [`Error::RegistryUnavailable`] (this process's registry);
    /// - [`Error::Timeout`], whatever the [`Operation`];
    /// - [`Error::Io`] of kind `ConnectionRefused`, `ConnectionReset`,
    ///   `ConnectionAborted`, `BrokenPipe`, `TimedOut`, `Interrupted` or
    ///   `UnexpectedEof`;
    /// - [`Error::Refused`] with [`RefuseCode::Busy`] or
    ///   [`RefuseCode::RegistryUnavailable`] (the acceptor could not check
    ///   the dialer because its own registry is down: it passes when that
    ///   registry is back).
    ///
    /// Everything else is false, including [`Error::NotFound`].
    pub fn is_transient(&self) -> bool {
        match self.root() {
            Error::RegistryUnavailable { .. } | Error::Timeout { .. } => true,
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::UnexpectedEof
            ),
            Error::Refused {
                code: RefuseCode::Busy | RefuseCode::RegistryUnavailable,
                ..
            } => true,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct IoContext {
    doing: String,
    source: std::io::Error,
}

impl fmt::Display for IoContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.doing, self.source)
    }
}

impl std::error::Error for IoContext {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// I/O error kinds that say nobody (or nobody masse) answers at an address:
/// refused, unreachable, reset or aborted, timed out, closed early, or no
/// such address at all (`NotFound`: a Unix socket file that is gone).
pub fn is_stale_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::NotFound
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::AddrNotAvailable
            | K::TimedOut
            | K::UnexpectedEof
            | K::BrokenPipe
            | K::NotConnected
    )
}

/// Truncates user input embedded in an error message.
pub(crate) fn clip(input: &str) -> String {
    const MAX: usize = 200;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind as K;

    #[test]
    fn io_context_keeps_kind_and_source() {
        let e = Error::io_context(
            std::io::Error::from(K::ConnectionRefused),
            "connect to tcp://127.0.0.1:1",
        );
        assert!(e.is_transient());
        assert!(
            e.to_string().contains("connect to tcp://127.0.0.1:1"),
            "{e}"
        );
        let Error::Io(io) = &e else { panic!("{e:?}") };
        assert_eq!(io.kind(), K::ConnectionRefused);
        assert!(std::error::Error::source(&**io).is_some());
    }

    #[test]
    fn transient_refusals_are_busy_and_the_peers_registry_down() {
        let refused = |code| Error::Refused {
            code,
            reason: String::new(),
        };
        for code in RefuseCode::ALL {
            let want = matches!(code, RefuseCode::Busy | RefuseCode::RegistryUnavailable);
            assert_eq!(refused(code).is_transient(), want, "{code:?}");
            let dialed = refused(code).in_connect("b", None, ConnectStep::Handshake);
            assert_eq!(dialed.is_transient(), want, "{code:?} under Connect");
        }
    }

    #[test]
    fn stale_io_kinds() {
        for k in [
            K::ConnectionRefused,
            K::NotFound,
            K::ConnectionReset,
            K::TimedOut,
            K::UnexpectedEof,
        ] {
            assert!(is_stale_io(k), "{k:?}");
            assert!(
                Error::from(std::io::Error::from(k)).is_stale_address(),
                "{k:?}"
            );
        }
        for k in [K::PermissionDenied, K::InvalidInput, K::AddrInUse, K::Other] {
            assert!(!is_stale_io(k), "{k:?}");
        }
    }
}
