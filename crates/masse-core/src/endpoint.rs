//! [`Endpoint`] and [`Protocol`]: where and how a peer can be reached.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::error::{Error, Result, clip};

/// The wire protocol an [`Interface`](crate::Interface) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 over TCP.
    Tls,
    /// QUIC (streams over UDP).
    Quic,
}

impl Protocol {
    /// The URL scheme: `tcp`, `tls` or `quic`.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Quic => "quic",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "tls" => Ok(Protocol::Tls),
            "quic" => Ok(Protocol::Quic),
            _ => Err(Error::InvalidAddress {
                kind: "protocol",
                input: clip(s),
                reason: "expected tcp, tls or quic".into(),
            }),
        }
    }
}

/// An address a peer listens on, with its protocol: `tcp://10.0.0.7:4100`,
/// `quic://[::1]:4433`.
///
/// ```
/// use masse_core::{Endpoint, Protocol};
/// let e: Endpoint = "tcp://127.0.0.1:4100".parse()?;
/// assert_eq!(e.protocol, Protocol::Tcp);
/// assert_eq!(e.to_string(), "tcp://127.0.0.1:4100");
/// # Ok::<(), masse_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Endpoint {
    /// How to talk to it.
    pub protocol: Protocol,
    /// Where.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Builds an endpoint.
    pub fn new(protocol: Protocol, addr: SocketAddr) -> Self {
        Endpoint { protocol, addr }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol, self.addr)
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidAddress {
            kind: "endpoint",
            input: clip(s),
            reason: reason.into(),
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| invalid("expected <protocol>://<ip>:<port>"))?;
        let protocol = scheme
            .parse::<Protocol>()
            .map_err(|_| invalid("unknown protocol; expected tcp, tls or quic"))?;
        let addr = rest.parse::<SocketAddr>().map_err(|_| {
            invalid("expected an IP address and port such as 10.0.0.7:4100 or [::1]:4100")
        })?;
        Ok(Endpoint { protocol, addr })
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
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
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            let j = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
        }
    }

    #[test]
    fn rejects() {
        for s in [
            "10.0.0.7:4100",
            "udp://1.2.3.4:5",
            "tcp://host:5",
            "tcp://1.2.3.4",
            "tcp://1.2.3.4:99999",
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
    }
}
