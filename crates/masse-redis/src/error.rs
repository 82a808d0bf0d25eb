//! Turning redis driver failures into masse errors a caller can act on.

use std::time::Duration;

use masse_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The backend name in [`Error::RegistryUnavailable`] and [`Error::Registry`].
pub(crate) const BACKEND: &str = "redis";

/// Maps a driver error:
///
/// - refused/reset connections, I/O errors, timeouts, a cluster that is down,
///   resharding or failing over (including `MOVED`/`ASK` redirects the driver
///   gave up on), a server still loading → [`Error::RegistryUnavailable`]
/// - wrong credentials (`WRONGPASS`), missing credentials (`NOAUTH`), ACL
///   denials (`NOPERM`) → [`Error::Unauthorized`] with a reason that says what to fix
/// - a bad client setting (TLS options, URL details) → [`Error::Config`]
/// - anything else → [`Error::Registry`]
pub(crate) fn map(e: RedisError) -> Error {
    let code = e.code().unwrap_or_default().to_ascii_uppercase();
    match e.kind() {
        ErrorKind::AuthenticationFailed => {
            return Error::Unauthorized {
                reason: format!(
                    "redis refused the credentials (WRONGPASS): check the user name and password in the registry URL ({e})"
                ),
            };
        }
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return Error::Unauthorized {
                reason: format!(
                    "the redis user lacks a permission masse needs (NOPERM; it needs EVALSHA, SCRIPT LOAD, XREAD, XREVRANGE, ZRANGEBYSCORE, TIME on keys masse:*): {e}"
                ),
            };
        }
        ErrorKind::InvalidClientConfig => {
            return Error::Config(format!("redis client settings: {e}"));
        }
        _ => {}
    }
    match code.as_str() {
        "NOAUTH" => {
            return Error::Unauthorized {
                reason: format!(
                    "redis requires a password (NOAUTH): put the user and password in the registry URL, redis://user:password@host ({e})"
                ),
            };
        }
        "WRONGPASS" => {
            return Error::Unauthorized {
                reason: format!(
                    "redis refused the credentials (WRONGPASS): check the user name and password in the registry URL ({e})"
                ),
            };
        }
        "NOPERM" => {
            return Error::Unauthorized {
                reason: format!("the redis user lacks a permission masse needs (NOPERM): {e}"),
            };
        }
        _ => {}
    }
    if let Some(tls) = tls_error(&e) {
        return Error::Unauthorized {
            reason: format!(
                "TLS with the redis server failed: {tls} (for a private CA, set RedisConfig::tls_root_certificate)"
            ),
        };
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
            Error::Unauthorized { reason } => assert!(reason.contains("WRONGPASS"), "{reason}"),
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
        match map(tls) {
            Error::Unauthorized { reason } => assert!(reason.contains("UnknownIssuer"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
