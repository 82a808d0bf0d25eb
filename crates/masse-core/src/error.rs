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
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name, namespace or service name is not valid. `position` is the byte
    /// offset of the first offending character, if one character is at fault.
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
    #[error("invalid pattern {input:?} at byte {position}: {reason}")]
    InvalidPattern {
        /// The rejected pattern (truncated to 200 bytes).
        input: String,
        /// Byte offset where the problem was found.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An endpoint, URL or address could not be parsed.
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
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No live peer matches the name or pattern.
    #[error("no peer named {name:?} in namespace {namespace:?}")]
    NotFound {
        /// The namespace searched.
        namespace: String,
        /// The name or pattern looked up.
        name: String,
    },

    /// The peer that answered is not the one that was dialed (stale address).
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
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Why, as far as it is safe to say.
        reason: String,
    },

    /// [`NamePolicy::Exclusive`](crate::NamePolicy::Exclusive) publish while another
    /// live instance holds the name.
    #[error("name {name:?} is held by live instance {holder}")]
    NameTaken {
        /// The contested name.
        name: String,
        /// The instance currently holding it.
        holder: InstanceId,
    },

    /// A refresh was refused because this instance no longer owns its name
    /// (it expired, or another instance took it over).
    #[error("name {name:?} is no longer owned by instance {instance}")]
    NameLost {
        /// The lost name.
        name: String,
        /// The instance that lost it.
        instance: InstanceId,
    },

    /// The registry backend cannot be reached (connection refused, server gone,
    /// pool exhausted). Retrying later may succeed.
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
    #[error("registry {backend} failed: {source}")]
    Registry {
        /// The backend's name.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// An operation did not complete in time. Branch on
    /// [`what`](Operation) to tell a slow peer from a slow registry.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        what: Operation,
        /// The deadline that passed.
        after: Duration,
    },

    /// The remote side broke the wire protocol (malformed, oversized or
    /// unexpected message).
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong with the bytes received.
        reason: String,
    },

    /// The remote side understood the request and refused it.
    #[error("refused by peer ({code}): {reason}")]
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable detail from the peer.
        reason: String,
    },

    /// Something asked of a backend or interface that it does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The node, listener or registry handle was shut down.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// An I/O error from a socket or file.
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
    Connect,
    /// The masse handshake on an open connection (the peer did not answer
    /// `Hello` / `Welcome` in time).
    Handshake,
    /// A QUIC connection to the peer had no stream credit left and none came
    /// back in time.
    StreamCredit,
    /// Opening a registry: connecting to its server, setting up its storage.
    RegistryConnect,
    /// A call to a reachable registry (lookup, publish, refresh, ...) that
    /// did not answer in time.
    RegistryCall,
    /// Reading a peer's stats with
    /// [`Node::remote_stats`](crate::Node::remote_stats) (the dial and the
    /// reply together).
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
    /// Looking the name up in the registry (or its cache).
    Lookup,
    /// The interface's connect: TCP connect, TLS or QUIC handshake, or
    /// finding an endpoint this node can speak at all.
    Transport,
    /// The masse handshake: `Hello`, the namespace secret's challenge, and the
    /// acceptor's answer (a refusal arrives here).
    Handshake,
    /// The dialing node's own wrapper chain.
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
    /// to another peer. Stale.
    WrongPeer,
    /// The dialer is in another namespace.
    WrongNamespace,
    /// The acceptor does not offer the requested service.
    NoSuchService,
    /// The dialer could not prove who it is (namespace secret, or a
    /// certificate that is not the one registered for its name).
    Unauthorized,
    /// The acceptor is overloaded (its queue for the stream is full, too many
    /// handshakes) or shutting down. Retry later or elsewhere.
    Busy,
    /// The protocol version or a requested feature is not supported.
    Unsupported,
    /// The acceptor holds the name, but as another instance than the one the
    /// dialer's record named (the peer restarted). Stale.
    WrongInstance,
    /// The acceptor lost the name to another instance (a takeover) and no
    /// longer accepts for it. Stale.
    NameLost,
    /// One of the acceptor's wrappers refused the stream; the reason is the
    /// wrapper's error.
    WrapperFailed,
    /// The acceptor could not check the dialer because its registry is
    /// unreachable and its cache does not know the dialer. Retry later.
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

    /// True for failures that are expected to go away on their own (backend
    /// down, timeouts, connection-level I/O errors): worth a retry with backoff.
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
                code: RefuseCode::Busy,
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
