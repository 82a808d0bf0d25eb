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
///   gave up on), a server still loading → [`Error::RegistryUnavailable`]
/// - wrong credentials (`WRONGPASS`), missing credentials (`NOAUTH`), ACL
///   denials (`NOPERM`), a TLS certificate refused either way →
///   [`Error::RegistryUnauthorized`] with a message that says what to fix
/// - a bad client setting (TLS options, URL details) → [`Error::Config`]
/// - a script that found a namespace key of the wrong type (`MASSECORRUPT`)
///   or refused an argument (`MASSEBADARG`), having written nothing →
///   [`Error::Registry`] naming the key
/// - anything else → [`Error::Registry`]
pub(crate) fn map(e: RedisError) -> Error {
    let code = e.code().unwrap_or_default().to_ascii_uppercase();
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
    match code.as_str() {
        "NOAUTH" => {
            return refused(
                format!(
                    "redis requires a password (NOAUTH): put the user and password in the registry URL, redis://user:password@host ({e})"
                ),
                e,
            );
        }
        "WRONGPASS" => {
            return refused(
                format!(
                    "redis refused the credentials (WRONGPASS): check the user name and password in the registry URL ({e})"
                ),
                e,
            );
        }
        "NOPERM" => {
            return refused(
                format!("the redis user lacks a permission masse needs (NOPERM): {e}"),
                e,
            );
        }
        "MASSECORRUPT" => {
            let detail = e.detail().unwrap_or_default();
            return Error::registry(
                BACKEND,
                Damaged {
                    what: format!("damaged registry data, nothing written: {detail}"),
                },
            );
        }
        "MASSEBADARG" => {
            let detail = e.detail().unwrap_or_default();
            return Error::registry(
                BACKEND,
                Damaged {
                    what: format!("a registry script refused its input, nothing written: {detail}"),
                },
            );
        }
        _ => {}
    }
    if let Some(tls) = tls_error(&e) {
        let hint = format!(
            "TLS with the redis server failed: {tls} (for a private CA, set RedisConfig::with_tls_root_certificate)"
        );
        return refused(hint, e);
    }
    // The cluster client reports a failed first connection to every seed
    // node as an I/O error with the cause flattened into text.
    if e.kind() == ErrorKind::Io
        && let Some(detail) = e.detail()
    {
        const TLS: [&str; 2] = ["invalid peer certificate", "received fatal alert"];
        const AUTH: [&str; 4] = ["WRONGPASS", "NOAUTH", "NOPERM", "AuthenticationFailed"];
        if TLS.iter().any(|m| detail.contains(m)) {
            let hint = format!(
                "TLS with the redis cluster failed: {detail} (for a private CA, set RedisConfig::with_tls_root_certificate)"
            );
            return refused(hint, e);
        }
        if AUTH.iter().any(|m| detail.contains(m)) {
            let hint = format!(
                "the redis cluster refused the credentials: check the user name and password in the registry URL ({detail})"
            );
            return refused(hint, e);
        }
    }
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
        )
        || code == "LOADING";
    if transient {
        Error::unavailable(BACKEND, e)
    } else {
        Error::registry(BACKEND, e)
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
pub(crate) fn tls_hint(e: Error, tls: bool) -> Error {
    match e {
        Error::RegistryUnavailable { backend, source }
            if tls && source.to_string().contains("timed out") =>
        {
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
}
