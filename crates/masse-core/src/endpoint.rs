//! [`Endpoint`] and [`Protocol`]: where and how a peer can be reached.
//!
//! An endpoint is an open, URL-like value: a scheme naming the transport and
//! an address only that transport interprets. The workspace's interfaces
//! speak `tcp://ip:port`, `tls://ip:port`, `quic://ip:port` and
//! `unix:///absolute/path`; a third-party interface defines its own scheme
//! (`ws://…`, `vsock://…`) and parses its own addresses. Records keep every
//! endpoint they were published with, so a node that does not speak a scheme
//! skips that endpoint, never the peer.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize as _;
use std::sync::Arc;

use crate::error::{Error, Result, clip};

/// The transport an [`Interface`](crate::Interface) speaks, named by the
/// scheme of its endpoints: [`TCP`](Self::TCP), [`TLS`](Self::TLS),
/// [`QUIC`](Self::QUIC), [`UNIX`](Self::UNIX), or any scheme a third-party
/// interface defines with [`Protocol::new`].
///
/// A scheme is 1–32 characters: a letter, then letters, digits, `+`, `-` or
/// `.` (RFC 3986), compared case-insensitively (stored lowercase).
///
/// ```
/// use masse_core::Protocol;
/// let ws = Protocol::new("WS")?;
/// assert_eq!(ws.as_str(), "ws");
/// assert_eq!("tcp".parse::<Protocol>()?, Protocol::TCP);
/// assert!(Protocol::new("no spaces").is_err());
/// # Ok::<(), masse_core::Error>(())
/// ```
// Derived equality is by scheme name: `new` never makes a `Custom` of a
// builtin's name. Deriving it lets the constants be match patterns.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Protocol(Scheme);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Scheme {
    Builtin(&'static str),
    Custom(Arc<str>),
}

impl Protocol {
    /// Plain TCP: `tcp://ip:port`.
    pub const TCP: Protocol = Protocol(Scheme::Builtin("tcp"));
    /// TLS 1.3 over TCP: `tls://ip:port`.
    pub const TLS: Protocol = Protocol(Scheme::Builtin("tls"));
    /// QUIC (streams over UDP): `quic://ip:port`.
    pub const QUIC: Protocol = Protocol(Scheme::Builtin("quic"));
    /// Unix domain sockets: `unix:///absolute/path`.
    pub const UNIX: Protocol = Protocol(Scheme::Builtin("unix"));

    /// The longest scheme accepted.
    pub const MAX_LEN: usize = 32;

    const BUILTIN: [Protocol; 4] = [Self::TCP, Self::TLS, Self::QUIC, Self::UNIX];

    /// The protocol of scheme `scheme` (case-insensitive).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] if `scheme` is empty, longer than
    /// [`MAX_LEN`](Self::MAX_LEN), or not a letter followed by letters,
    /// digits, `+`, `-` or `.`.
    pub fn new(scheme: &str) -> Result<Protocol> {
        let invalid = |reason: &str| Error::InvalidAddress {
            kind: "protocol",
            input: clip(scheme),
            reason: reason.into(),
        };
        if scheme.is_empty() {
            return Err(invalid("empty scheme"));
        }
        if scheme.len() > Self::MAX_LEN {
            return Err(invalid("longer than 32 characters"));
        }
        let mut chars = scheme.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
            return Err(invalid("a scheme starts with a letter"));
        }
        if let Some(bad) =
            chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        {
            return Err(invalid(&format!(
                "{bad:?} is not allowed in a scheme (letters, digits, '+', '-', '.')"
            )));
        }
        let lower = scheme.to_ascii_lowercase();
        Ok(Self::BUILTIN
            .into_iter()
            .find(|p| p.as_str() == lower)
            .unwrap_or_else(|| Protocol(Scheme::Custom(lower.into()))))
    }

    /// The scheme, lowercase: `tcp`, `unix`, `ws`, ...
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Scheme::Builtin(s) => s,
            Scheme::Custom(s) => s,
        }
    }

    /// The URL scheme (same as [`as_str`](Self::as_str)).
    pub fn scheme(&self) -> &str {
        self.as_str()
    }

    /// True for `tcp`, `tls` and `quic`: the workspace's transports over IP,
    /// whose addresses are always `ip:port`. [`NodeBuilder::advertise`](crate::NodeBuilder::advertise)
    /// rewrites their endpoints; other schemes' only through
    /// [`advertise_for`](crate::NodeBuilder::advertise_for).
    pub fn is_ip(&self) -> bool {
        matches!(self.as_str(), "tcp" | "tls" | "quic")
    }
}

impl PartialOrd for Protocol {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Protocol {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol({})", self.as_str())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Protocol::new(s)
    }
}

/// An address a peer listens on, with the scheme of its transport:
/// `tcp://10.0.0.7:4100`, `quic://[::1]:4433`, `unix:///run/masse/api.sock`,
/// `ws://10.0.0.7:80/masse`.
///
/// The address part is the transport's business. For `tcp`, `tls` and
/// `quic` it must be an `ip:port` ([`socket_addr`](Self::socket_addr) gives
/// it); for `unix` an absolute path ([`unix_path`](Self::unix_path)); for any
/// other scheme any text of 1–1024 printable, non-space characters (an
/// `ip:port` there is still available as a [`socket_addr`](Self::socket_addr)).
///
/// ```
/// use masse_core::{Endpoint, Protocol};
/// let e: Endpoint = "tcp://127.0.0.1:4100".parse()?;
/// assert_eq!(e.protocol(), &Protocol::TCP);
/// assert_eq!(e.socket_addr(), Some("127.0.0.1:4100".parse().unwrap()));
/// let u: Endpoint = "unix:///run/app.sock".parse()?;
/// assert_eq!(u.unix_path(), Some(std::path::Path::new("/run/app.sock")));
/// let w: Endpoint = "ws://10.0.0.7:80/masse".parse()?;
/// assert_eq!(w.address(), "10.0.0.7:80/masse");
/// assert_eq!(w.to_string(), "ws://10.0.0.7:80/masse");
/// # Ok::<(), masse_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    protocol: Protocol,
    address: Address,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Address {
    Socket(SocketAddr),
    Text(Arc<str>),
}

/// The longest address part of an endpoint accepted.
const MAX_ADDRESS: usize = 1024;

impl Endpoint {
    /// An endpoint at a socket address: `tcp://10.0.0.7:4100`.
    pub fn new(protocol: Protocol, addr: SocketAddr) -> Self {
        Endpoint {
            protocol,
            address: Address::Socket(addr),
        }
    }

    /// A `unix://` endpoint at an absolute socket path.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] if the path is relative, not UTF-8, empty
    /// or too long.
    pub fn unix(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = path.to_str().ok_or_else(|| Error::InvalidAddress {
            kind: "endpoint",
            input: clip(&path.to_string_lossy()),
            reason: "a unix socket path in an endpoint must be UTF-8".into(),
        })?;
        Self::with_address(Protocol::UNIX, text)
    }

    /// An endpoint of any scheme with its address part as text: what
    /// follows `scheme://`. Checked as [`FromStr`] checks it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] if the address does not suit the scheme.
    pub fn with_address(protocol: Protocol, address: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidAddress {
            kind: "endpoint",
            input: clip(&format!("{protocol}://{address}")),
            reason: reason.into(),
        };
        if protocol.is_ip() {
            let addr = address.parse::<SocketAddr>().map_err(|_| {
                invalid("expected an IP address and port such as 10.0.0.7:4100 or [::1]:4100")
            })?;
            return Ok(Endpoint::new(protocol, addr));
        }
        if address.is_empty() {
            return Err(invalid("empty address"));
        }
        if address.len() > MAX_ADDRESS {
            return Err(invalid("address longer than 1024 bytes"));
        }
        if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("spaces and control characters are not allowed"));
        }
        if protocol == Protocol::UNIX && !address.starts_with('/') {
            return Err(invalid(
                "expected an absolute socket path such as unix:///run/masse/api.sock",
            ));
        }
        let address = match address.parse::<SocketAddr>() {
            Ok(addr) if protocol != Protocol::UNIX => Address::Socket(addr),
            _ => Address::Text(address.into()),
        };
        Ok(Endpoint { protocol, address })
    }

    /// The transport, named by the scheme.
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// The address part: what follows `scheme://`.
    pub fn address(&self) -> Cow<'_, str> {
        match &self.address {
            Address::Socket(a) => Cow::Owned(a.to_string()),
            Address::Text(t) => Cow::Borrowed(t),
        }
    }

    /// The socket address, if the address part is an `ip:port` (always for
    /// `tcp`, `tls` and `quic`).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.address {
            Address::Socket(a) => Some(*a),
            Address::Text(_) => None,
        }
    }

    /// The socket address of an endpoint of `protocol`: what an IP
    /// interface's `connect` checks first.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for an endpoint of another scheme (or, for a
    /// third-party scheme, one whose address is not an `ip:port`).
    pub fn socket_addr_for(&self, protocol: &Protocol) -> Result<SocketAddr> {
        match self.socket_addr() {
            Some(addr) if self.protocol == *protocol => Ok(addr),
            _ => Err(Error::Unsupported(format!(
                "the {protocol} interface cannot dial {self}"
            ))),
        }
    }

    /// The socket path of a `unix://` endpoint.
    pub fn unix_path(&self) -> Option<&Path> {
        match &self.address {
            Address::Text(t) if self.protocol == Protocol::UNIX => Some(Path::new(&**t)),
            _ => None,
        }
    }

    /// The same endpoint at another socket address (same scheme).
    pub fn with_socket_addr(&self, addr: SocketAddr) -> Self {
        Endpoint::new(self.protocol.clone(), addr)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Socket(a) => write!(f, "{}://{a}", self.protocol),
            Address::Text(t) => write!(f, "{}://{t}", self.protocol),
        }
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| Error::InvalidAddress {
            kind: "endpoint",
            input: clip(s),
            reason: "expected <scheme>://<address>, such as tcp://10.0.0.7:4100".into(),
        })?;
        let protocol = Protocol::new(scheme).map_err(|e| match e {
            Error::InvalidAddress { reason, .. } => Error::InvalidAddress {
                kind: "endpoint",
                input: clip(s),
                reason,
            },
            other => other,
        })?;
        Endpoint::with_address(protocol, rest)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a record's endpoint list, skipping (with a warning) the entries
/// that are not endpoints at all, so one bad entry never hides the peer.
pub(crate) fn lenient_endpoints<'de, D>(d: D) -> std::result::Result<Vec<Endpoint>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = <Vec<serde_json::Value>>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|v| match v.as_str().map(str::parse::<Endpoint>) {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "skipping an endpoint of a record");
                None
            }
            None => {
                tracing::warn!(entry = %clip(&v.to_string()), "skipping a record's endpoint that is not a string");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for s in [
            "tcp://10.0.0.7:4100",
            "tls://[::1]:1",
            "quic://127.0.0.1:65535",
            "unix:///run/masse/api.sock",
            "ws://10.0.0.7:80/masse",
            "vsock://3:4100",
            "my+proto.v2://anything-here",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            let j = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
        }
    }

    #[test]
    fn typed_accessors() {
        let t: Endpoint = "TCP://10.0.0.7:4100".parse().unwrap();
        assert_eq!(t.protocol(), &Protocol::TCP);
        assert_eq!(t.to_string(), "tcp://10.0.0.7:4100");
        assert_eq!(t.socket_addr(), Some("10.0.0.7:4100".parse().unwrap()));
        assert_eq!(t.unix_path(), None);

        let u = Endpoint::unix("/tmp/x.sock").unwrap();
        assert_eq!(u.to_string(), "unix:///tmp/x.sock");
        assert_eq!(u.unix_path(), Some(Path::new("/tmp/x.sock")));
        assert_eq!(u.socket_addr(), None);

        // A third-party scheme with an ip:port still offers it.
        let w: Endpoint = "ws://10.0.0.7:80".parse().unwrap();
        assert_eq!(w.socket_addr(), Some("10.0.0.7:80".parse().unwrap()));
        assert!(!w.protocol().is_ip());
        assert_eq!(
            w.with_socket_addr("10.0.0.8:81".parse().unwrap())
                .to_string(),
            "ws://10.0.0.8:81"
        );
        // Builtins compare equal whichever way they were made.
        assert_eq!(Protocol::new("Quic").unwrap(), Protocol::QUIC);
        assert_eq!(Protocol::new("ws").unwrap(), Protocol::new("WS").unwrap());
    }

    #[test]
    fn rejects() {
        let long = format!("x://{}", "a".repeat(1025));
        for s in [
            "10.0.0.7:4100",
            "tcp://host:5",
            "tcp://1.2.3.4",
            "tcp://1.2.3.4:99999",
            "quic://",
            "unix://relative/path",
            "unix://",
            "ws://",
            "ws://has space",
            "1ws://x",
            "w s://x",
            "://x",
            long.as_str(),
            "",
        ] {
            let e = s.parse::<Endpoint>().unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidAddress {
                        kind: "endpoint",
                        ..
                    }
                ),
                "{s}: {e}"
            );
        }
        for bad in ["a".repeat(33), String::new()] {
            assert!(
                matches!(Protocol::new(&bad), Err(Error::InvalidAddress { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lenient_list_skips_bad_entries_only() {
        #[derive(serde::Deserialize)]
        struct R {
            #[serde(deserialize_with = "lenient_endpoints")]
            endpoints: Vec<Endpoint>,
        }
        let r: R = serde_json::from_str(
            r#"{"endpoints":["tcp://10.0.0.7:1","garbage",7,"future+proto://x","tcp://no:port"]}"#,
        )
        .unwrap();
        let got: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["tcp://10.0.0.7:1", "future+proto://x"]);
        // Not a list at all is still an error for the record.
        match serde_json::from_str::<R>(r#"{"endpoints":"tcp://10.0.0.7:1"}"#) {
            Err(e) => assert!(e.is_data(), "{e}"),
            Ok(_) => panic!("a string for the list was accepted"),
        }
    }
}
