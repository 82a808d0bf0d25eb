//! [`PeerRecord`] and the identifiers it carries.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::endpoint::Endpoint;
use crate::error::{Error, Result, clip};
use crate::name::{Namespace, PeerName};

/// Identifies one run of one node: random at every process start, so that a
/// restarted node is told apart from its previous incarnation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(u128);

impl InstanceId {
    /// A fresh random instance id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        // The OS RNG failing is not something a caller can recover from; fall back
        // to time and address entropy rather than abort.
        if getrandom::fill(&mut b).is_err() {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let a = &b as *const _ as usize as u128;
            b = (t ^ a.rotate_left(64)).to_le_bytes();
        }
        InstanceId(u128::from_le_bytes(b))
    }

    /// Wraps a raw value.
    pub const fn from_u128(v: u128) -> Self {
        InstanceId(v)
    }

    /// The raw value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({:032x})", self.0)
    }
}

impl FromStr for InstanceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 32 {
            return Err(Error::InvalidAddress {
                kind: "instance id",
                input: clip(s),
                reason: "expected 32 hexadecimal digits".into(),
            });
        }
        u128::from_str_radix(s, 16)
            .map(InstanceId)
            .map_err(|_| Error::InvalidAddress {
                kind: "instance id",
                input: clip(s),
                reason: "expected 32 hexadecimal digits".into(),
            })
    }
}

impl serde::Serialize for InstanceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for InstanceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of a node's certificate public key (SPKI), as published in its record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The first 8 bytes in hex, for display in tables and logs.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidAddress {
            kind: "fingerprint",
            input: clip(s),
            reason: "expected 64 hexadecimal digits (SHA-256)".into(),
        };
        if s.len() != 64 || !s.is_ascii() {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Fingerprint(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything the registry knows about one live node. Stored by registries as
/// JSON, so an operator can read it with `redis-cli` or `psql`:
///
/// ```json
/// {"version":1,"namespace":"prod","name":"billing-7","instance":"…32 hex…",
///  "endpoints":["tcp://10.0.0.7:4100"],"identity":null,"services":["rpc"],
///  "metadata":{"zone":"b"},"started_at":1764078000000}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct PeerRecord {
    /// Record schema version; [`PeerRecord::VERSION`] for records written by
    /// this build. Readers accept newer versions and ignore fields they do not know.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The namespace the node lives in.
    pub namespace: Namespace,
    /// The node's name.
    pub name: PeerName,
    /// This run of the node.
    pub instance: InstanceId,
    /// Where it accepts streams, in order of preference. Every endpoint is
    /// kept, whatever its scheme; an entry that is not an endpoint at all is
    /// skipped when the record is read (with a warning), not the record.
    #[serde(default, deserialize_with = "crate::endpoint::lenient_endpoints")]
    pub endpoints: Vec<Endpoint>,
    /// Fingerprint of its certificate, if it has an identity.
    #[serde(default)]
    pub identity: Option<Fingerprint>,
    /// The services it accepts (see `connect_service`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Free-form labels for operators and for selecting peers.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When this instance started, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_at: u64,
    /// The TTL the node publishes with, in milliseconds; it refreshes the
    /// record every third of it. Observers use it to tell an
    /// [evasive](crate::Liveness::Evasive) peer from a live one. `None` in
    /// records written before this field existed (and omitted from the JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

fn default_version() -> u32 {
    1
}

impl PeerRecord {
    /// The record schema version this build writes.
    pub const VERSION: u32 = 1;

    /// A record with no endpoints, services or metadata, started now.
    pub fn new(namespace: Namespace, name: PeerName, instance: InstanceId) -> Self {
        PeerRecord {
            version: Self::VERSION,
            namespace,
            name,
            instance,
            endpoints: Vec::new(),
            identity: None,
            services: Vec::new(),
            metadata: BTreeMap::new(),
            started_at: now_millis(),
            ttl_ms: None,
        }
    }

    /// Adds an endpoint.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Adds a service (not validated here; the node validates what it offers).
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.services.push(service.into());
        self
    }

    /// Sets one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the identity fingerprint.
    pub fn with_identity(mut self, identity: Fingerprint) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Does the node accept `service`?
    pub fn offers(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }

    /// Serialises to the JSON stored by registries.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a PeerRecord always serialises")
    }

    /// Parses a stored record. Unknown fields (from newer writers) are ignored;
    /// any malformed content is an [`Error::Protocol`] naming the problem.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json)
            .map_err(|e| Error::protocol(format!("malformed peer record: {e}")))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PeerRecord {
        PeerRecord::new(
            "prod".parse().unwrap(),
            "billing-7".parse().unwrap(),
            InstanceId::random(),
        )
        .with_endpoint("tcp://10.0.0.7:4100".parse().unwrap())
        .with_service("rpc")
        .with_metadata("zone", "b")
    }

    #[test]
    fn json_roundtrip() {
        let r = sample();
        let j = r.to_json();
        assert!(j.contains("\"name\":\"billing-7\""), "{j}");
        assert!(j.contains("\"tcp://10.0.0.7:4100\""), "{j}");
        assert_eq!(PeerRecord::from_json(j.as_bytes()).unwrap(), r);
    }

    #[test]
    fn newer_records_are_read() {
        let r = sample();
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        v["version"] = 7.into();
        v["weight"] = 3.into();
        let back = PeerRecord::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.name, r.name);
    }

    /// A record as the previous release wrote it (only tcp/tls/quic), and
    /// one from a newer node with a transport this build does not know.
    #[test]
    fn records_of_other_releases_keep_their_endpoints() {
        let old = br#"{"version":1,"namespace":"prod","name":"billing-7","instance":"000000000000000000000000000000ab","endpoints":["tcp://10.0.0.7:4100","quic://[::1]:4433"],"identity":null,"services":["rpc"],"metadata":{"zone":"b"},"started_at":1764078000000}"#;
        let r = PeerRecord::from_json(old).unwrap();
        let eps: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(eps, ["tcp://10.0.0.7:4100", "quic://[::1]:4433"]);
        assert_eq!(r.endpoints[0].protocol(), &crate::Protocol::TCP);
        // Written back byte for byte the same way.
        assert!(
            r.to_json()
                .contains(r#""endpoints":["tcp://10.0.0.7:4100","quic://[::1]:4433"]"#)
        );

        let newer = br#"{"version":2,"namespace":"prod","name":"billing-7","instance":"000000000000000000000000000000ab","endpoints":["vsock+masse://3:4100","unix:///run/b.sock","not an endpoint","tcp://10.0.0.7:4100"]}"#;
        let r = PeerRecord::from_json(newer).unwrap();
        let eps: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(
            eps,
            [
                "vsock+masse://3:4100",
                "unix:///run/b.sock",
                "tcp://10.0.0.7:4100"
            ]
        );
        // And kept when written again (a cache or a relay re-serialises it).
        let again = PeerRecord::from_json(r.to_json().as_bytes()).unwrap();
        assert_eq!(again.endpoints, r.endpoints);
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [&b"not json"[..], b"{}", b"{\"namespace\":\"a b\",\"name\":\"x\",\"instance\":\"00000000000000000000000000000001\"}", b"\xff\xfe"] {
            assert!(matches!(PeerRecord::from_json(bad), Err(Error::Protocol { .. })));
        }
    }

    #[test]
    fn ids_roundtrip() {
        let i = InstanceId::random();
        assert_eq!(i.to_string().parse::<InstanceId>().unwrap(), i);
        assert_ne!(InstanceId::random(), InstanceId::random());
        let f = Fingerprint([0xab; 32]);
        assert_eq!(f.to_string().parse::<Fingerprint>().unwrap(), f);
        assert_eq!(f.short(), "abababababababab");
        for bad in ["zz".to_owned(), "é".repeat(32)] {
            assert!(
                matches!(
                    bad.parse::<Fingerprint>(),
                    Err(Error::InvalidAddress { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
