//! Turning redis driver failures into masse errors a caller can act on.

use std::time::Duration;

use masse_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The backend name in [`Error::RegistryUnavailable`] and [`Error::Registry`].
pub(crate) const BACKEND: &str = "redis";

/// The registry refused us: what to fix, and the driver's error behind it.
#[derive(Debug)]
struct Refused {
    hint: String,
    cause: RedisError,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hint)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

fn refused(hint: String, cause: RedisError) -> Error {
    Error::registry_unauthorized(BACKEND, Refused { hint, cause })
}

/// Data a script found damaged (`MASSECORRUPT`) or an argument it refused
/// (`MASSEBADARG`): nothing was written; the message names the key.
#[derive(Debug)]
struct Damaged {
    what: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Damaged {}

/// Maps a driver error:
///
/// - refused/reset connections, I/O errors, timeouts, a cluster that is down,
///   resharding or failing over (including `MOVED`/`ASK` redirects the driver
///   gave up on), a server still loading, a server refusing writes for now
///   (`OOM` at `maxmemory`, `MISCONF` when it cannot save to its disk,
///   `NOREPLICAS` short of `min-replicas-to-write`, `READONLY` on a replica)
///   → [`Error::RegistryUnavailable`]
/// - wrong credentials (`WRONGPASS`), missing credentials (`NOAUTH`), ACL
///   denials (`NOPERM`), a TLS certificate refused either way →
///   [`Error::RegistryUnauthorized`] with a message that says what to fix
/// - a bad client setting (TLS options, URL details) → [`Error::Config`]
/// - a script that found a namespace key of the wrong type (`MASSECORRUPT`)
///   or refused an argument (`MASSEBADARG`), having written nothing →
///   [`Error::Registry`] naming the key
/// - anything else → [`Error::Registry`]
pub(crate) fn map(e: RedisError) -> Error {
    match e.kind() {
        ErrorKind::AuthenticationFailed => {
            return refused(
                format!(
                    "redis refused the credentials (WRONGPASS): check the user name and password in the registry URL ({e})"
                ),
                e,
            );
        }
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return refused(
                format!(
                    "the redis user lacks a permission masse needs (NOPERM; it needs EVALSHA, SCRIPT LOAD, XREAD, XREVRANGE, ZRANGEBYSCORE, TIME on keys masse:*): {e}"
                ),
                e,
            );
        }
        ErrorKind::InvalidClientConfig => {
            return Error::Config(format!("redis client settings: {e}"));
        }
        _ => {}
    }
    match ExtensionCode::of(&e) {
        Some(ExtensionCode::NoAuth) => {
            return refused(
                format!(
                    "redis requires a password (NOAUTH): put the user and password in the registry URL, redis://user:password@host ({e})"
                ),
                e,
            );
        }
        Some(ExtensionCode::WrongPass) => {
            return refused(
                format!(
                    "redis refused the credentials (WRONGPASS): check the user name and password in the registry URL ({e})"
                ),
                e,
            );
        }
        Some(ExtensionCode::NoPerm) => {
            return refused(
                format!("the redis user lacks a permission masse needs (NOPERM): {e}"),
                e,
            );
        }
        Some(ExtensionCode::MasseCorrupt) => {
            let detail = e.detail().unwrap_or_default();
            return Error::registry(
                BACKEND,
                Damaged {
                    what: format!("damaged registry data, nothing written: {detail}"),
                },
            );
        }
        Some(ExtensionCode::MasseBadArg) => {
            let detail = e.detail().unwrap_or_default();
            return Error::registry(
                BACKEND,
                Damaged {
                    what: format!("a registry script refused its input, nothing written: {detail}"),
                },
            );
        }
        Some(ExtensionCode::WritesRefused) => return Error::unavailable(BACKEND, e),
        None => {}
    }
    if let Some(tls) = tls_error(&e) {
        let hint = format!(
            "TLS with the redis server failed: {tls} (for a private CA, set RedisConfig::with_tls_root_certificate)"
        );
        return refused(hint, e);
    }
    match flattened_cluster_cause(&e) {
        Some(ClusterCause::Tls(detail)) => {
            let hint = format!(
                "TLS with the redis cluster failed: {detail} (for a private CA, set RedisConfig::with_tls_root_certificate)"
            );
            return refused(hint, e);
        }
        Some(ClusterCause::Credentials(detail)) => {
            let hint = format!(
                "the redis cluster refused the credentials: check the user name and password in the registry URL ({detail})"
            );
            return refused(hint, e);
        }
        // Typed from here on: an I/O error of kind `TimedOut` around the
        // driver's, which `tls_hint` and callers recognise by kind.
        Some(ClusterCause::TimedOut) => {
            return Error::unavailable(
                BACKEND,
                std::io::Error::new(std::io::ErrorKind::TimedOut, e),
            );
        }
        None => {}
    }
    // `LOADING` (a server still loading its data set) is
    // `ServerErrorKind::BusyLoading` to the driver.
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                        // Redirects the driver gave up following: the
                        // cluster's map still names a master that is gone,
                        // or a failover is under way.
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::ReadOnly
                )
        );
    if transient {
        Error::unavailable(BACKEND, e)
    } else {
        Error::registry(BACKEND, e)
    }
}

/// A server error code that redis 1.8.1 has no [`ServerErrorKind`] for
/// (it reports them as [`ErrorKind::Extension`] with the code as sent), and
/// that masse branches on. The code is the first word of a RESP error reply:
/// the protocol's machine-readable part, not its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtensionCode {
    /// `NOAUTH`: the server wants credentials and got none.
    NoAuth,
    /// `WRONGPASS`: wrong user name or password (outside the driver's own
    /// `AUTH` at connect, which it reports as
    /// [`ErrorKind::AuthenticationFailed`]).
    WrongPass,
    /// `NOPERM` when the driver did not map it to [`ServerErrorKind::NoPerm`].
    NoPerm,
    /// `MASSECORRUPT`: a masse script found a namespace key of the wrong
    /// type and wrote nothing.
    MasseCorrupt,
    /// `MASSEBADARG`: a masse script refused an argument and wrote nothing.
    MasseBadArg,
    /// `OOM`, `MISCONF`, `NOREPLICAS`: the server refuses writes until an
    /// operator or the server itself clears the condition (memory freed or
    /// `maxmemory` raised, a save to disk that works again, replicas back).
    WritesRefused,
}

impl ExtensionCode {
    /// The code of `e`, if it is a server error with one of these codes
    /// (compared without regard to case).
    fn of(e: &RedisError) -> Option<ExtensionCode> {
        let code = e.code()?;
        [
            ("NOAUTH", ExtensionCode::NoAuth),
            ("WRONGPASS", ExtensionCode::WrongPass),
            ("NOPERM", ExtensionCode::NoPerm),
            ("MASSECORRUPT", ExtensionCode::MasseCorrupt),
            ("MASSEBADARG", ExtensionCode::MasseBadArg),
            ("OOM", ExtensionCode::WritesRefused),
            ("MISCONF", ExtensionCode::WritesRefused),
            ("NOREPLICAS", ExtensionCode::WritesRefused),
        ]
        .into_iter()
        .find_map(|(name, c)| code.eq_ignore_ascii_case(name).then_some(c))
    }
}

/// Why a redis cluster client failed its first connection, as far as
/// [`flattened_cluster_cause`] can tell.
#[derive(Debug, PartialEq, Eq)]
enum ClusterCause<'a> {
    /// The TLS handshake with the seed nodes failed (a certificate refused
    /// either way); the driver's text of it.
    Tls(&'a str),
    /// A seed node refused the credentials; the driver's text of it.
    Credentials(&'a str),
    /// Connecting to the seed nodes timed out.
    TimedOut,
}

/// The cause of a redis cluster client's failed first connection.
///
/// **Text, because nothing else is left:** redis 1.8.1's cluster client
/// (`ClusterConnInner::create_initial_connections`) reports that no seed node
/// could be reached as an [`ErrorKind::Io`] error, "Failed to create initial
/// connections", whose detail is the last node's error *flattened with
/// `to_string()`*: its `ErrorKind`, its `io::Error` and the rustls error
/// behind it are gone, so [`tls_error`], [`RedisError::kind`] and
/// [`RedisError::is_timeout`] cannot see them. This function is the only
/// place that reads error text; it looks only at such errors (kind `Io`,
/// no I/O error inside, a detail) and knows the texts redis 1.8.1 and
/// rustls 0.23 write. Everything else is `None` and classified by type.
fn flattened_cluster_cause(e: &RedisError) -> Option<ClusterCause<'_>> {
    // Typed errors carry their cause; only the flattened one has none.
    if e.kind() != ErrorKind::Io || std::error::Error::source(e).is_some() {
        return None;
    }
    let detail = e.detail()?;
    // rustls::Error::InvalidCertificate and ::AlertReceived.
    const TLS: [&str; 2] = ["invalid peer certificate", "received fatal alert"];
    // Server codes, and redis's Debug of ErrorKind::AuthenticationFailed.
    const CREDENTIALS: [&str; 4] = ["WRONGPASS", "NOAUTH", "NOPERM", "AuthenticationFailed"];
    // io::ErrorKind::TimedOut's text ("timed out", "connection timed out").
    const TIMED_OUT: &str = "timed out";
    if TLS.iter().any(|m| detail.contains(m)) {
        Some(ClusterCause::Tls(detail))
    } else if CREDENTIALS.iter().any(|m| detail.contains(m)) {
        Some(ClusterCause::Credentials(detail))
    } else if detail.to_ascii_lowercase().contains(TIMED_OUT) {
        Some(ClusterCause::TimedOut)
    } else {
        None
    }
}

/// The rustls failure behind an I/O error (an untrusted or mismatched
/// certificate, a failed handshake): retrying will not fix it.
fn tls_error(e: &RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let source = std::error::Error::source(e)?;
    // The driver keeps its cause as a shared `Arc<dyn Error>`.
    let io = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>()?,
        None => source.downcast_ref::<std::io::Error>()?,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A first connection over TLS that timed out: the usual cause is a server
/// that does not speak TLS on that port (it waits for the rest of what it
/// takes for a command), so say so.
///
/// A timeout is recognised by type: the source is an I/O error of kind
/// `TimedOut` (from [`timed_out`], or a cluster's first connection) or a
/// [`RedisError`] that [`is_timeout`](RedisError::is_timeout).
pub(crate) fn tls_hint(e: Error, tls: bool) -> Error {
    match e {
        Error::RegistryUnavailable { backend, source } if tls && is_timeout(&*source) => {
            Error::unavailable(
                backend,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{source} (this is a TLS URL: if the server does not speak TLS on this port it never answers the handshake; check rediss:// against redis:// and the port)"
                    ),
                ),
            )
        }
        other => other,
    }
}

/// Whether a backend failure is a timeout.
fn is_timeout(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    source
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        || source
            .downcast_ref::<RedisError>()
            .is_some_and(RedisError::is_timeout)
}

/// The error for a command that got no answer in time.
pub(crate) fn timed_out(what: &'static str, after: Duration) -> Error {
    Error::unavailable(
        BACKEND,
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("redis did not answer {what} within {after:?}"),
        ),
    )
}

/// An answer that does not have the shape the scripts return.
pub(crate) fn unexpected(what: &str) -> Error {
    Error::registry(
        BACKEND,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected answer from redis: {what}"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(matches!(
            map(io),
            Error::RegistryUnavailable {
                backend: "redis",
                ..
            }
        ));
        let auth = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        match map(auth) {
            e @ Error::RegistryUnauthorized {
                backend: "redis", ..
            } => {
                assert!(e.to_string().contains("WRONGPASS"), "{e}");
                assert!(!e.is_transient());
                assert!(std::error::Error::source(&e).is_some());
            }
            other => panic!("{other:?}"),
        }
        for (code, what) in [
            ("NOAUTH", "NOAUTH Authentication required."),
            ("WRONGPASS", "WRONGPASS invalid username-password pair"),
            ("NOPERM", "NOPERM this user has no permissions"),
        ] {
            let e = redis::make_extension_error(code.to_owned(), Some(what.to_owned()));
            match map(e) {
                e @ Error::RegistryUnauthorized { .. } => {
                    assert!(e.to_string().contains(code), "{e}")
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        let damaged = redis::make_extension_error(
            "MASSECORRUPT".to_owned(),
            Some("masse:{a}:index holds a string, not a zset".to_owned()),
        );
        match map(damaged) {
            e @ Error::Registry {
                backend: "redis", ..
            } => assert!(
                e.to_string().contains("masse:{a}:index holds a string"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        for (code, what) in [
            (
                "OOM",
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            (
                "MISCONF",
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            ),
            (
                "NOREPLICAS",
                "NOREPLICAS Not enough good replicas to write.",
            ),
        ] {
            let e = map(redis::make_extension_error(
                code.to_owned(),
                Some(what.to_owned()),
            ));
            assert!(
                matches!(e, Error::RegistryUnavailable { .. }),
                "{code}: {e:?}"
            );
            assert!(e.is_transient(), "{code}");
        }
        let cfg = RedisError::from((ErrorKind::InvalidClientConfig, "bad"));
        assert!(matches!(map(cfg), Error::Config(_)));
        let other = RedisError::from((ErrorKind::Client, "whatever"));
        assert!(matches!(
            map(other),
            Error::Registry {
                backend: "redis",
                ..
            }
        ));
        for kind in [ServerErrorKind::Moved, ServerErrorKind::ClusterDown] {
            let moved = RedisError::from((ErrorKind::Server(kind), "13142 127.0.0.1:42421"));
            assert!(
                matches!(map(moved), Error::RegistryUnavailable { .. }),
                "{kind:?}"
            );
        }
        assert!(timed_out("a lookup", Duration::from_secs(1)).is_transient());
        let tls = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let cluster_tls = RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            "Io: invalid peer certificate: UnknownIssuer".to_owned(),
        ));
        match map(cluster_tls) {
            e @ Error::RegistryUnauthorized { .. } => {
                assert!(e.to_string().contains("UnknownIssuer"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let cluster_down = RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            "Io: Connection refused (os error 111)".to_owned(),
        ));
        assert!(matches!(
            map(cluster_down),
            Error::RegistryUnavailable { .. }
        ));
        match map(tls) {
            e @ Error::RegistryUnauthorized { .. } => {
                assert!(e.to_string().contains("UnknownIssuer"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn initial(detail: &str) -> RedisError {
        RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            detail.to_owned(),
        ))
    }

    #[test]
    fn flattened_cluster_causes() {
        for (detail, cause) in [
            (
                "Io: invalid peer certificate: UnknownIssuer",
                Some(ClusterCause::Tls(
                    "Io: invalid peer certificate: UnknownIssuer",
                )),
            ),
            (
                "Io: received fatal alert: BadCertificate",
                Some(ClusterCause::Tls(
                    "Io: received fatal alert: BadCertificate",
                )),
            ),
            (
                "WRONGPASS invalid username-password pair",
                Some(ClusterCause::Credentials(
                    "WRONGPASS invalid username-password pair",
                )),
            ),
            (
                "Password authentication failed - AuthenticationFailed",
                Some(ClusterCause::Credentials(
                    "Password authentication failed - AuthenticationFailed",
                )),
            ),
            ("timed out", Some(ClusterCause::TimedOut)),
            (
                "Connection timed out (os error 110)",
                Some(ClusterCause::TimedOut),
            ),
            ("Connection refused (os error 111)", None),
        ] {
            assert_eq!(flattened_cluster_cause(&initial(detail)), cause, "{detail}");
        }
        // Typed errors are never read as text, whatever they say.
        let typed = RedisError::from(std::io::Error::other("invalid peer certificate"));
        assert_eq!(flattened_cluster_cause(&typed), None);
        let other_kind = RedisError::from((ErrorKind::Client, "x", "timed out".to_owned()));
        assert_eq!(flattened_cluster_cause(&other_kind), None);
        match map(initial("Io: timed out")) {
            Error::RegistryUnavailable { source, .. } => assert!(is_timeout(&*source)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_hint_knows_timeouts_by_type() {
        const HINT: &str = "this is a TLS URL";
        let ours = timed_out("the connection", Duration::from_secs(1));
        assert!(tls_hint(ours.clone(), true).to_string().contains(HINT));
        assert!(!tls_hint(ours, false).to_string().contains(HINT));
        let driver = map(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )));
        let hinted = tls_hint(driver, true);
        assert!(hinted.to_string().contains(HINT), "{hinted}");
        assert!(hinted.is_transient());
        let cluster = tls_hint(map(initial("Io: timed out")), true);
        assert!(cluster.to_string().contains(HINT), "{cluster}");
        // A message that only says "timed out" is not a timeout.
        let text = Error::unavailable(BACKEND, std::io::Error::other("the lease timed out"));
        assert!(!tls_hint(text, true).to_string().contains(HINT));
        let refused = map(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!tls_hint(refused, true).to_string().contains(HINT));
    }

    #[test]
    fn extension_codes_ignore_case() {
        let e = redis::make_extension_error("noauth".to_owned(), None);
        assert_eq!(ExtensionCode::of(&e), Some(ExtensionCode::NoAuth));
        let e = redis::make_extension_error("MASSEBADARG".to_owned(), None);
        assert_eq!(ExtensionCode::of(&e), Some(ExtensionCode::MasseBadArg));
        let e = redis::make_extension_error("SOMETHING".to_owned(), None);
        assert_eq!(ExtensionCode::of(&e), None);
    }
}
