//! [`Identity`]: a node's key pair and self-signed certificate, and the
//! [`Fingerprint`] that peers pin it by (DESIGN §5).
//!
//! Trust does not come from the certificate's names, issuer or validity
//! dates: a dialer accepts exactly the certificate whose public key hashes to
//! the fingerprint the registry lists for the peer it dialed. The certificate
//! is only the container TLS needs to carry the key.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};
use crate::record::Fingerprint;

/// The largest identity file [`Identity::load_or_create`] reads. A PEM file
/// with one certificate and one key is a few KiB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The PEM label of the certificate block.
const PEM_CERTIFICATE: &str = "CERTIFICATE";
/// The PEM label of a PKCS#8 private key block.
const PEM_PRIVATE_KEY: &str = "PRIVATE KEY";

/// A node's identity: a key pair and a self-signed X.509 certificate for it.
///
/// Peers know a node by the [`Fingerprint`] of its public key (SHA-256 over
/// the certificate's SubjectPublicKeyInfo), which the node publishes in its
/// [`PeerRecord`](crate::PeerRecord). The `tls` and `quic` interfaces present
/// the certificate and prove possession of the key in the TLS 1.3 handshake.
///
/// - Keys are ECDSA P-256 with SHA-256 signatures (`ecdsa_secp256r1_sha256`,
///   the signature scheme every TLS 1.3 implementation must support).
/// - Certificates carry one DNS subject alternative name,
///   [`Identity::SUBJECT_ALT_NAME`] (`"masse"`), and the node's name as the
///   subject common name, for people who inspect them. Neither is checked by
///   masse.
///
/// Ephemeral identities come from [`Identity::generate`]; a persistent one
/// from [`Identity::load_or_create`]. Cloning is cheap (reference-counted).
/// The private key is never printed by [`Debug`] and is zeroed when the last
/// clone is dropped.
///
/// ```
/// use masse_core::{Identity, fingerprint_of_cert};
/// let id = Identity::generate("billing-7")?;
/// assert_eq!(fingerprint_of_cert(id.cert_der())?, id.fingerprint());
/// let again = Identity::from_pem(&id.to_pem())?;
/// assert_eq!(again.fingerprint(), id.fingerprint());
/// # Ok::<(), masse_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    cert_der: Vec<u8>,
    key_der: zeroize::Zeroizing<Vec<u8>>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// The DNS subject alternative name of generated certificates, and the
    /// server name the `tls` and `quic` dialers use. Fixed rather than the
    /// node's name: names are not checked (the fingerprint is), a node name
    /// need not be a valid DNS name, and one identity file may serve a node
    /// under several names.
    pub const SUBJECT_ALT_NAME: &'static str = "masse";

    /// Generates a fresh ECDSA P-256 key pair and a self-signed certificate
    /// for it, with `name` as the subject common name (truncated to 64
    /// characters, the X.509 limit) and [`SUBJECT_ALT_NAME`](Self::SUBJECT_ALT_NAME)
    /// as its only subject alternative name.
    ///
    /// Fails with [`Error::Config`] only if the system's random number
    /// generator or the signing code fails.
    pub fn generate(name: &str) -> Result<Identity> {
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
            KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
        };
        let failed = |e: rcgen::Error| Error::Config(format!("cannot generate an identity: {e}"));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params =
            CertificateParams::new(vec![Self::SUBJECT_ALT_NAME.to_owned()]).map_err(failed)?;
        let mut dn = DistinguishedName::new();
        let common_name: String = name.chars().take(64).collect();
        dn.push(
            DnType::CommonName,
            if common_name.is_empty() {
                Self::SUBJECT_ALT_NAME.to_owned()
            } else {
                common_name
            },
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key).map_err(failed)?;
        Self::from_der(cert.der().to_vec(), key.serialize_der())
    }

    /// Builds an identity from a DER certificate and its PKCS#8 DER private
    /// key. Fails with [`Error::Config`] if either does not parse or the key
    /// does not belong to the certificate.
    pub fn from_der(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<Identity> {
        let key_der = zeroize::Zeroizing::new(key_der);
        let fingerprint = fingerprint_of_cert(&cert_der).map_err(|e| {
            Error::Config(format!(
                "identity certificate: {}",
                match e {
                    Error::Protocol { reason } => reason,
                    other => other.to_string(),
                }
            ))
        })?;
        let pkcs8 = PrivatePkcs8KeyDer::from(key_der.as_slice());
        let key = rcgen::KeyPair::try_from(&pkcs8).map_err(|e| {
            Error::Config(format!(
                "identity private key: not a usable PKCS#8 key ({e}); \
                 ECDSA P-256/P-384, Ed25519 and RSA keys are supported"
            ))
        })?;
        let key_fingerprint =
            spki_fingerprint(&rcgen::PublicKeyData::subject_public_key_info(&key));
        if key_fingerprint != fingerprint {
            return Err(Error::Config(format!(
                "identity: the private key (public key fingerprint {}) does not belong to \
                 the certificate (fingerprint {})",
                key_fingerprint.short(),
                fingerprint.short()
            )));
        }
        Ok(Identity {
            inner: Arc::new(Inner {
                cert_der,
                key_der,
                fingerprint,
            }),
        })
    }

    /// Parses an identity from PEM text holding exactly one `CERTIFICATE`
    /// block and one PKCS#8 `PRIVATE KEY` block, in any order (what
    /// [`to_pem`](Self::to_pem) writes). Anything else is an [`Error::Config`]
    /// saying what was found.
    pub fn from_pem(pem: &str) -> Result<Identity> {
        let blocks = pem::parse_many(pem)
            .map_err(|e| Error::Config(format!("identity PEM does not parse: {e}")))?;
        let mut cert = None;
        let mut key = None;
        for block in blocks {
            match block.tag() {
                PEM_CERTIFICATE if cert.is_none() => cert = Some(block.into_contents()),
                PEM_CERTIFICATE => {
                    return Err(Error::Config(
                        "identity PEM has more than one CERTIFICATE block; \
                         masse identities are a single self-signed certificate"
                            .into(),
                    ));
                }
                PEM_PRIVATE_KEY if key.is_none() => {
                    key = Some(zeroize::Zeroizing::new(block.into_contents()))
                }
                PEM_PRIVATE_KEY => {
                    return Err(Error::Config(
                        "identity PEM has more than one PRIVATE KEY block".into(),
                    ));
                }
                tag @ ("EC PRIVATE KEY" | "RSA PRIVATE KEY") => {
                    return Err(Error::Config(format!(
                        "identity PEM has an {tag} block; convert the key to PKCS#8 \
                         (`openssl pkcs8 -topk8 -nocrypt`)"
                    )));
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(Error::Config(
                        "identity PEM has an encrypted private key; masse reads \
                         unencrypted PKCS#8 keys (protect the file with its permissions)"
                            .into(),
                    ));
                }
                // Comments and other blocks (parameters, ...) are ignored.
                _ => {}
            }
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Identity::from_der(cert, key.to_vec()),
            (None, _) => Err(Error::Config(
                "identity PEM has no CERTIFICATE block".into(),
            )),
            (_, None) => Err(Error::Config(
                "identity PEM has no PRIVATE KEY (PKCS#8) block".into(),
            )),
        }
    }

    /// The identity as PEM text: the certificate, then the PKCS#8 private key.
    /// The text contains the private key: store it like a password.
    pub fn to_pem(&self) -> String {
        let blocks = [
            pem::Pem::new(PEM_CERTIFICATE, self.inner.cert_der.clone()),
            pem::Pem::new(PEM_PRIVATE_KEY, self.inner.key_der.to_vec()),
        ];
        pem::encode_many_config(
            &blocks,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Loads the identity stored at `path`, or, if there is no file there,
    /// generates one and stores it (PEM as written by [`to_pem`](Self::to_pem);
    /// on Unix the file is created with mode `0600`). Creating is atomic: two
    /// processes racing on the same path end up with the same identity.
    ///
    /// An unreadable file is an [`Error::Io`], a file that is not an identity
    /// an [`Error::Config`]; both name the path. A file readable by group or
    /// others is used, with a warning.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Identity> {
        let path = path.as_ref();
        match read_identity_file(path) {
            Ok(id) => return Ok(id),
            Err(ReadError::Missing) => {}
            Err(ReadError::Failed(e)) => return Err(e),
        }
        let id = Identity::generate(Self::SUBJECT_ALT_NAME)?;
        match create_identity_file(path, &id)? {
            Created::Written => {
                tracing::info!(path = %path.display(), fingerprint = %id.fingerprint(), "created a new identity");
                Ok(id)
            }
            // Another process created it first: use theirs.
            Created::AlreadyThere => match read_identity_file(path) {
                Ok(id) => Ok(id),
                Err(ReadError::Missing) => Err(io_error(
                    path,
                    "read",
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the file vanished while it was being created",
                    ),
                )),
                Err(ReadError::Failed(e)) => Err(e),
            },
        }
    }

    /// The SHA-256 fingerprint of the public key (over the certificate's
    /// SubjectPublicKeyInfo DER), as published in the node's record.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.fingerprint
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &[u8] {
        &self.inner.cert_der
    }

    /// The private key, PKCS#8 DER-encoded.
    pub fn key_der(&self) -> &[u8] {
        &self.inner.key_der
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.inner.fingerprint)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The SHA-256 fingerprint of the public key in an X.509 v3 certificate
/// (over its SubjectPublicKeyInfo DER, as [`Identity::fingerprint`]).
///
/// Only the certificate's structure is checked, not its signature, issuer or
/// validity. Input that is not a DER X.509 v3 certificate is an
/// [`Error::Protocol`], never a panic.
pub fn fingerprint_of_cert(cert_der: &[u8]) -> Result<Fingerprint> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Error::protocol(format!("not a DER X.509 v3 certificate: {e}")))?;
    Ok(spki_fingerprint(cert.subject_public_key_info().as_ref()))
}

/// SHA-256 over a SubjectPublicKeyInfo DER.
fn spki_fingerprint(spki_der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

enum ReadError {
    Missing,
    Failed(Error),
}

fn read_identity_file(path: &Path) -> std::result::Result<Identity, ReadError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Failed(io_error(path, "open", e))),
    };
    let meta = file
        .metadata()
        .map_err(|e| ReadError::Failed(io_error(path, "inspect", e)))?;
    if !meta.is_file() {
        return Err(ReadError::Failed(Error::Config(format!(
            "identity file {}: not a regular file",
            path.display()
        ))));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::Failed(Error::Config(format!(
            "identity file {}: {} bytes, too large for an identity (at most {MAX_FILE_BYTES})",
            path.display(),
            meta.len()
        ))));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "the identity file is readable by other users; `chmod 600` it"
            );
        }
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Failed(io_error(path, "read", e)))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ReadError::Failed(Error::Config(format!(
            "identity file {}: not PEM text (invalid UTF-8)",
            path.display()
        )))
    })?;
    Identity::from_pem(text).map_err(|e| {
        ReadError::Failed(match e {
            Error::Config(msg) => Error::Config(format!("identity file {}: {msg}", path.display())),
            other => other,
        })
    })
}

enum Created {
    Written,
    AlreadyThere,
}

/// Writes `id` to a private temporary file next to `path`, then links it to
/// `path` only if nothing is there yet (so a reader never sees a half-written
/// file and a concurrent creator's identity is never overwritten).
fn create_identity_file(path: &Path, id: &Identity) -> Result<Created> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        Error::Config(format!(
            "identity file {}: the path names no file",
            path.display()
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", crate::InstanceId::random()));
    let tmp = dir.join(tmp_name);

    let pem = zeroize::Zeroizing::new(id.to_pem());
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path, "create", e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let outcome = match linked {
        Ok(()) => Ok(Created::Written),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::AlreadyThere),
        // File systems without hard links: a rename is atomic too, but would
        // replace a file created meanwhile; check just before.
        Err(_) if !path.exists() => std::fs::rename(&tmp, path)
            .map(|()| Created::Written)
            .map_err(|e| io_error(path, "create", e)),
        Err(_) => Ok(Created::AlreadyThere),
    };
    let _ = std::fs::remove_file(&tmp);
    outcome
}

/// An I/O error that names the identity file and what was being done; keeps
/// the original kind.
fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::from(std::io::Error::new(
        e.kind(),
        format!("cannot {what} identity file {}: {e}", path.display()),
    ))
}

/// rustls configurations that authenticate peers by their [`Identity`]
/// fingerprint, shared by the `tls` and `quic` interfaces (feature `rustls`).
///
/// - TLS 1.3 only, with the *ring* crypto provider, built from an explicit
///   provider (nothing process-global is installed).
/// - The dialer ([`client_config`](tls::client_config)) accepts exactly the server certificate
///   whose public key has the fingerprint it was given (the one in the
///   registry record it dialed), whatever the certificate's names, issuer or
///   validity dates; it still checks the handshake signature made with that
///   key. It presents its own identity as the client certificate.
/// - The acceptor ([`server_config`](tls::server_config)) requires a client certificate, any
///   self-signed one; the TLS handshake proves the client holds its key. The
///   fingerprint ([`peer_fingerprint`](tls::peer_fingerprint)) is for the node to check against the
///   registry.
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub mod tls {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, Mutex, OnceLock};

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
    use rustls::pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
    };
    use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
    use rustls::{
        CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
        ServerConfig, SignatureScheme,
    };

    use super::{Identity, fingerprint_of_cert};
    use crate::error::{Error, Result};
    use crate::record::Fingerprint;

    /// The ALPN protocol masse offers and requires on `tls` and `quic`.
    pub const ALPN: &[u8] = b"masse/1";

    /// The fingerprint a dialer must pin for `peer` at `endpoint`: a record
    /// without an identity cannot be authenticated, so it is
    /// [`Error::Unauthorized`](crate::Error::Unauthorized).
    pub fn pinned_fingerprint(
        peer: &crate::PeerRecord,
        endpoint: &crate::Endpoint,
    ) -> Result<Fingerprint> {
        peer.identity.ok_or_else(|| crate::Error::Unauthorized {
            reason: format!(
                "peer {:?} publishes no identity in its record, so {endpoint} cannot be \
                 authenticated; {} needs the peer's certificate fingerprint",
                peer.name.as_str(),
                endpoint.protocol()
            ),
        })
    }

    /// The identity an interface proves itself with: the node's (from the
    /// context) or the interface's own default; neither is a configuration error.
    pub fn pick_identity<'a>(
        from_ctx: Option<&'a Arc<Identity>>,
        own: Option<&'a Arc<Identity>>,
        protocol: crate::Protocol,
        role: &str,
    ) -> Result<&'a Arc<Identity>> {
        from_ctx.or(own).ok_or_else(|| {
            crate::Error::Config(format!(
                "the {protocol} interface needs an identity to {role}: it authenticates both sides by \
                 certificate; give the context one (nodes always do) or set the interface's identity"
            ))
        })
    }

    /// The server name dialers use ([`Identity::SUBJECT_ALT_NAME`]); never
    /// checked, and not sent (SNI is off).
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(Identity::SUBJECT_ALT_NAME).unwrap_or_else(|_| {
            // A fixed, valid DNS name; the fallback only satisfies the types.
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
        })
    }

    /// The *ring* crypto provider every masse configuration is built with.
    pub fn provider() -> Arc<CryptoProvider> {
        static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
        PROVIDER
            .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
            .clone()
    }

    fn algorithms() -> WebPkiSupportedAlgorithms {
        provider().signature_verification_algorithms
    }

    fn key_of(identity: &Identity) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der().to_vec()))
    }

    fn cert_of(identity: &Identity) -> CertificateDer<'static> {
        CertificateDer::from(identity.cert_der().to_vec())
    }

    fn config_error(side: &str, e: rustls::Error) -> Error {
        Error::Config(format!("cannot build the TLS {side} configuration: {e}"))
    }

    /// A client configuration that presents `identity` and accepts only a
    /// server whose certificate's public key has fingerprint `peer`.
    pub fn client_config(identity: &Identity, peer: Fingerprint) -> Result<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("client", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(peer)))
            .with_client_auth_cert(vec![cert_of(identity)], key_of(identity))
            .map_err(|e| config_error("client", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_sni = false;
        Ok(config)
    }

    /// A server configuration that presents `identity` and requires a client
    /// certificate (see [`RequireClientCert`]).
    pub fn server_config(identity: &Identity) -> Result<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("server", e))?
            .with_client_cert_verifier(Arc::new(RequireClientCert::new()))
            .with_single_cert(vec![cert_of(identity)], key_of(identity))
            .map_err(|e| config_error("server", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The fingerprint of the end-entity certificate of a verified peer
    /// chain (`peer_certificates()` of a finished handshake).
    pub fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
        let first = certs?.first()?;
        fingerprint_of_cert(first.as_ref()).ok()
    }

    /// Client configurations by (own identity, expected peer) fingerprint, so
    /// that repeated dials reuse one configuration and its TLS session cache.
    /// Holds at most [`ClientConfigs::CAPACITY`] entries; past that it starts
    /// over.
    #[derive(Default)]
    pub struct ClientConfigs {
        map: Mutex<HashMap<(Fingerprint, Fingerprint), Arc<ClientConfig>>>,
    }

    impl ClientConfigs {
        /// How many configurations are kept.
        pub const CAPACITY: usize = 1024;

        /// An empty cache.
        pub fn new() -> Self {
            Self::default()
        }

        /// The configuration for dialing `peer` as `identity`.
        pub fn get(&self, identity: &Identity, peer: Fingerprint) -> Result<Arc<ClientConfig>> {
            let key = (identity.fingerprint(), peer);
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(config) = map.get(&key) {
                return Ok(config.clone());
            }
            let config = Arc::new(client_config(identity, peer)?);
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
            map.insert(key, config.clone());
            Ok(config)
        }
    }

    impl fmt::Debug for ClientConfigs {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let len = self.map.lock().map(|m| m.len()).unwrap_or(0);
            f.debug_struct("ClientConfigs").field("len", &len).finish()
        }
    }

    /// Why a dialer rejected a server certificate: its public key is not the
    /// one the registry lists. Travels inside
    /// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`.
    ///
    /// Its `Debug` output is its message, with both fingerprints in full,
    /// because rustls formats the error that carries it with `Debug` (which
    /// is all a QUIC dialer gets to see).
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct FingerprintMismatch {
        /// The fingerprint in the peer's record.
        pub expected: Fingerprint,
        /// The fingerprint of the certificate presented.
        pub actual: Fingerprint,
    }

    impl fmt::Display for FingerprintMismatch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "the peer presented a certificate with fingerprint {}, but its record lists {}",
                self.actual, self.expected
            )
        }
    }

    impl fmt::Debug for FingerprintMismatch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Display::fmt(self, f)
        }
    }

    impl std::error::Error for FingerprintMismatch {}

    /// Dialer-side verifier: accepts exactly the certificate whose public key
    /// has the expected fingerprint; checks TLS 1.3 handshake signatures
    /// with the provider's algorithms. TLS 1.2 signatures are refused.
    #[derive(Debug)]
    pub struct PinnedServerVerifier {
        expected: Fingerprint,
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl PinnedServerVerifier {
        /// A verifier pinning `expected`.
        pub fn new(expected: Fingerprint) -> Self {
            PinnedServerVerifier {
                expected,
                algorithms: algorithms(),
            }
        }
    }

    impl ServerCertVerifier for PinnedServerVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            let actual = fingerprint_of_cert(end_entity.as_ref())
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if actual != self.expected {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(FingerprintMismatch {
                        expected: self.expected,
                        actual,
                    })),
                )));
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }

    /// Acceptor-side verifier: requires a client certificate and accepts any
    /// well-formed one (self-signed; no issuer, name or validity checks); the
    /// TLS 1.3 CertificateVerify signature, checked here with the provider's
    /// algorithms, proves the client holds its key. TLS 1.2 signatures are
    /// refused.
    #[derive(Debug)]
    pub struct RequireClientCert {
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl RequireClientCert {
        /// The verifier.
        pub fn new() -> Self {
            RequireClientCert {
                algorithms: algorithms(),
            }
        }
    }

    impl Default for RequireClientCert {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ClientCertVerifier for RequireClientCert {
        fn offer_client_auth(&self) -> bool {
            true
        }

        fn client_auth_mandatory(&self) -> bool {
            true
        }

        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _now: UnixTime,
        ) -> std::result::Result<ClientCertVerified, rustls::Error> {
            fingerprint_of_cert(end_entity.as_ref())
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            Ok(ClientCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }

    fn tls12_refused() -> rustls::Error {
        rustls::Error::General("masse speaks TLS 1.3 only".into())
    }

    /// What a failed TLS handshake means for a caller: [`Error::Unauthorized`]
    /// when a certificate was rejected (by us: wrong fingerprint, malformed;
    /// or by the peer, as an alert), [`Error::Protocol`] otherwise. `what`
    /// names the connection, e.g. `"tls://10.0.0.7:4100"`.
    pub fn handshake_error(what: &str, e: &rustls::Error) -> Error {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                match other.0.downcast_ref::<FingerprintMismatch>() {
                    Some(m) => Error::Unauthorized {
                        reason: format!("{what}: {m}"),
                    },
                    None => Error::Unauthorized {
                        reason: format!("{what}: certificate rejected: {other}"),
                    },
                }
            }
            rustls::Error::InvalidCertificate(c) => Error::Unauthorized {
                reason: format!("{what}: certificate rejected: {c:?}"),
            },
            rustls::Error::NoCertificatesPresented => Error::Unauthorized {
                reason: format!("{what}: the peer presented no certificate"),
            },
            rustls::Error::AlertReceived(
                alert @ (A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateExpired
                | A::CertificateRevoked),
            ) => Error::Unauthorized {
                reason: format!("{what}: the peer rejected our certificate ({alert:?})"),
            },
            other => Error::protocol(format!("{what}: TLS handshake failed: {other}")),
        }
    }

    /// Is a TLS alert number (as carried in a QUIC `CRYPTO_ERROR`, 0x100 +
    /// alert) one that reports a rejected certificate?
    pub fn is_certificate_alert(alert: u8) -> bool {
        // bad_certificate, unsupported_certificate, certificate_revoked,
        // certificate_expired, certificate_unknown, unknown_ca,
        // access_denied, certificate_required.
        matches!(alert, 42..=46 | 48 | 49 | 116)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_consistent() {
        let id = Identity::generate("billing-7").unwrap();
        assert_eq!(
            fingerprint_of_cert(id.cert_der()).unwrap(),
            id.fingerprint()
        );
        let other = Identity::generate("billing-7").unwrap();
        assert_ne!(other.fingerprint(), id.fingerprint());
        // The key is PKCS#8 and belongs to the certificate.
        let again = Identity::from_der(id.cert_der().to_vec(), id.key_der().to_vec()).unwrap();
        assert_eq!(again.fingerprint(), id.fingerprint());
        // Odd names still make a certificate.
        for name in ["", "x", &"long".repeat(100), "ünïcode name", "a_b.c-d"] {
            let id = Identity::generate(name).unwrap();
            assert_eq!(
                fingerprint_of_cert(id.cert_der()).unwrap(),
                id.fingerprint()
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let id = Identity::generate("secret").unwrap();
        let dbg = format!("{id:?}");
        assert!(dbg.contains("redacted"), "{dbg}");
        assert!(dbg.contains(&id.fingerprint().short()), "{dbg}");
        let key_hex: String = id.key_der()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!dbg.contains(&key_hex));
        assert!(!dbg.contains("PRIVATE"));
    }

    #[test]
    fn pem_roundtrip() {
        let id = Identity::generate("pem").unwrap();
        let pem = id.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.contains("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(!pem.contains('\r'));
        let back = Identity::from_pem(&pem).unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        assert_eq!(back.cert_der(), id.cert_der());
        assert_eq!(back.key_der(), id.key_der());
        // Key first, CRLF line endings and surrounding text are fine too.
        let (cert, key) = pem.split_at(pem.find("-----BEGIN PRIVATE KEY").unwrap());
        let swapped = format!("# my node\n{}\n{}", key, cert).replace('\n', "\r\n");
        assert_eq!(
            Identity::from_pem(&swapped).unwrap().fingerprint(),
            id.fingerprint()
        );
    }

    #[test]
    fn bad_pem_is_a_config_error() {
        let id = Identity::generate("a").unwrap();
        let other = Identity::generate("b").unwrap();
        let pem = id.to_pem();
        let key_start = pem.find("-----BEGIN PRIVATE KEY").unwrap();
        let (cert_only, key_only) = pem.split_at(key_start);
        let other_pem = other.to_pem();
        let other_key = &other_pem[other_pem.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no CERTIFICATE"),
            ("garbage".into(), "no CERTIFICATE"),
            (cert_only.into(), "no PRIVATE KEY"),
            (key_only.into(), "no CERTIFICATE"),
            (format!("{cert_only}{other_key}"), "does not belong"),
            (format!("{pem}{cert_only}"), "more than one CERTIFICATE"),
            (format!("{pem}{key_only}"), "more than one PRIVATE KEY"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned()
                    + key_only,
                "identity certificate",
            ),
            (
                cert_only.to_owned()
                    + "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "private key",
            ),
            (
                cert_only.to_owned() + &key_only.replace("PRIVATE KEY", "EC PRIVATE KEY"),
                "PKCS#8",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
                "does not parse|no CERTIFICATE",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n".into(),
                "does not parse|no CERTIFICATE",
            ),
        ];
        for (input, hint) in cases {
            match Identity::from_pem(&input) {
                Err(Error::Config(msg)) => assert!(
                    hint.split('|').any(|h| msg.contains(h)),
                    "{hint:?} not in {msg:?}"
                ),
                other => panic!("{hint}: expected Config, got {other:?}"),
            }
        }
    }

    #[test]
    fn fingerprint_of_garbage_is_an_error() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x03\x02\x01\x01",
            &[0xff; 300],
            b"hello world",
        ] {
            assert!(matches!(
                fingerprint_of_cert(bad),
                Err(Error::Protocol { .. })
            ));
        }
        // Truncations of a real certificate never panic.
        let id = Identity::generate("t").unwrap();
        let der = id.cert_der();
        for len in 0..der.len() {
            assert!(
                matches!(
                    fingerprint_of_cert(&der[..len]),
                    Err(Error::Protocol { .. })
                ),
                "length {len}"
            );
        }
        // Flipped bytes never panic (they may or may not still parse).
        for i in 0..der.len() {
            let mut bent = der.to_vec();
            bent[i] ^= 0x5a;
            let _ = fingerprint_of_cert(&bent);
        }
    }

    #[test]
    fn fingerprint_is_of_the_public_key() {
        let id = Identity::generate("k").unwrap();
        let key = rcgen::KeyPair::try_from(id.key_der()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(spki_fingerprint(&spki), id.fingerprint());
        // Same key, another certificate: same fingerprint.
        let params = rcgen::CertificateParams::new(vec!["other".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_ne!(cert.der().as_ref(), id.cert_der());
        assert_eq!(fingerprint_of_cert(cert.der()).unwrap(), id.fingerprint());
    }

    #[test]
    fn load_or_create_creates_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.pem");
        let created = Identity::load_or_create(&path).unwrap();
        let loaded = Identity::load_or_create(&path).unwrap();
        assert_eq!(created.fingerprint(), loaded.fingerprint());
        assert_eq!(created.key_der(), loaded.key_der());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            Identity::from_pem(&text).unwrap().fingerprint(),
            created.fingerprint()
        );
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.pem")]);
    }

    #[cfg(unix)]
    #[test]
    fn created_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.pem");
        Identity::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.pem");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Identity::load_or_create(&path).unwrap().fingerprint())
            })
            .collect();
        let prints: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(prints.iter().all(|p| *p == prints[0]), "{prints:?}");
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.pem");
        for content in [&b"not a pem file"[..], b"\xff\xfe\x00binary", b""] {
            std::fs::write(&path, content).unwrap();
            match Identity::load_or_create(&path) {
                Err(Error::Config(msg)) => {
                    assert!(msg.contains(&path.display().to_string()), "{msg}");
                }
                other => panic!("expected Config, got {other:?}"),
            }
            // The corrupt file is left alone.
            assert_eq!(std::fs::read(&path).unwrap(), content);
        }
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        assert!(
            matches!(Identity::load_or_create(&big), Err(Error::Config(m)) if m.contains("too large"))
        );
    }

    #[test]
    fn unreadable_path_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        match Identity::load_or_create(dir.path()) {
            Err(Error::Config(msg)) => assert!(msg.contains("not a regular file"), "{msg}"),
            Err(Error::Io(e)) => assert!(e.to_string().contains(&dir.path().display().to_string())),
            other => panic!("{other:?}"),
        }
        // A parent directory that does not exist.
        let missing = dir.path().join("no/such/dir/id.pem");
        match Identity::load_or_create(&missing) {
            Err(Error::Io(e)) => {
                assert!(e.to_string().contains("no/such/dir/id.pem"), "{e}");
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn permission_denied_is_an_io_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.pem");
        std::fs::write(&path, Identity::generate("l").unwrap().to_pem()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root reads anything; the check only means something for other users.
        if std::fs::read(&path).is_ok() {
            return;
        }
        match Identity::load_or_create(&path) {
            Err(Error::Io(e)) => assert!(e.to_string().contains("locked.pem"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn handshake_errors_are_classified() {
        use rustls::{AlertDescription, CertificateError, OtherError};
        let mismatch = tls::FingerprintMismatch {
            expected: Fingerprint([1; 32]),
            actual: Fingerprint([2; 32]),
        };
        let e = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            mismatch,
        ))));
        match tls::handshake_error("tls://127.0.0.1:1", &e) {
            Error::Unauthorized { reason } => {
                assert!(
                    reason.contains(&Fingerprint([1; 32]).to_string()),
                    "{reason}"
                );
                assert!(
                    reason.contains(&Fingerprint([2; 32]).to_string()),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            tls::handshake_error(
                "x",
                &rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
            ),
            Error::Unauthorized { .. }
        ));
        assert!(matches!(
            tls::handshake_error("x", &rustls::Error::DecryptError),
            Error::Protocol { .. }
        ));
        assert!(tls::is_certificate_alert(42) && tls::is_certificate_alert(116));
        assert!(!tls::is_certificate_alert(40));
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn configs_are_tls13_only() {
        let id = Identity::generate("c").unwrap();
        let client = tls::client_config(&id, Fingerprint([0; 32])).unwrap();
        let server = tls::server_config(&id).unwrap();
        assert_eq!(client.alpn_protocols, vec![tls::ALPN.to_vec()]);
        assert_eq!(server.alpn_protocols, vec![tls::ALPN.to_vec()]);
        assert!(!client.enable_sni);
        let cache = tls::ClientConfigs::new();
        let a = cache.get(&id, Fingerprint([0; 32])).unwrap();
        let b = cache.get(&id, Fingerprint([0; 32])).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = cache.get(&id, Fingerprint([1; 32])).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
