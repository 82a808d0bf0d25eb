//! Registry URLs: which database, whether it insists on TLS, and a form
//! safe to print ([`redact`]).

use masse_core::{Error, Result};

use crate::config::SqlConfig;
use crate::registry::Connected;

pub(crate) async fn open(
    scheme: &str,
    url: &str,
    shown: &str,
    config: &SqlConfig,
) -> Result<Connected> {
    let _ = (url, config);
    if scheme != "sqlite" && requires_tls(url) && !cfg!(feature = "tls-rustls-ring") {
        return Err(Error::InvalidAddress {
            kind: "registry url",
            input: shown.to_owned(),
            reason: "the URL requires TLS, which is not compiled in: enable the \
                     `tls-rustls-ring` feature of masse-sql (or `tls` of masse)"
                .into(),
        });
    }
    match scheme {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return crate::sqlite::connect(url, shown, config).await;
            #[cfg(not(feature = "sqlite"))]
            return Err(feature_off(shown, "sqlite", "SQLite"));
        }
        "postgres" | "postgresql" => {
            #[cfg(feature = "postgres")]
            return crate::postgres::connect(url, shown, config).await;
            #[cfg(not(feature = "postgres"))]
            return Err(feature_off(shown, "postgres", "PostgreSQL"));
        }
        "mysql" | "mariadb" => {
            #[cfg(feature = "mysql")]
            return crate::mysql::connect(url, shown, config).await;
            #[cfg(not(feature = "mysql"))]
            return Err(feature_off(shown, "mysql", "MySQL/MariaDB"));
        }
        other => Err(Error::InvalidAddress {
            kind: "registry url",
            input: shown.to_owned(),
            reason: format!(
                "unknown scheme `{other}:`; the SQL registry takes sqlite:, postgres:, postgresql:, mysql: and mariadb:"
            ),
        }),
    }
}

#[allow(dead_code)]
fn feature_off(shown: &str, feature: &str, what: &str) -> Error {
    Error::InvalidAddress {
        kind: "registry url",
        input: shown.to_owned(),
        reason: format!(
            "{what} support is not compiled in: enable the `{feature}` feature of masse-sql (or of masse)"
        ),
    }
}

/// Does the URL insist on TLS (`sslmode=require`, `ssl-mode=VERIFY_CA`, …)?
fn requires_tls(url: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').any(|pair| {
        pair.split_once('=').is_some_and(|(k, v)| {
            matches!(k, "sslmode" | "ssl-mode")
                && matches!(
                    v.to_ascii_lowercase().replace('_', "-").as_str(),
                    "require" | "required" | "verify-ca" | "verify-full" | "verify-identity"
                )
        })
    })
}

/// The URL scheme, lower-cased (`sqlite::memory:` has scheme `sqlite`).
pub(crate) fn scheme(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once(':')?;
    let ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    ok.then(|| scheme.to_ascii_lowercase())
}

pub(crate) use masse_core::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(scheme("sqlite::memory:").as_deref(), Some("sqlite"));
        assert_eq!(scheme("PostgreSQL://h/db").as_deref(), Some("postgresql"));
        assert_eq!(scheme("mariadb://h/db").as_deref(), Some("mariadb"));
        assert_eq!(scheme("no scheme here"), None);
        assert_eq!(scheme(":x"), None);
        assert_eq!(scheme("a b://"), None);
    }

    #[test]
    fn tls_requirements() {
        assert!(requires_tls("postgres://h/db?sslmode=require"));
        assert!(requires_tls("postgres://h/db?a=b&sslmode=verify-full"));
        assert!(requires_tls("mysql://h/db?ssl-mode=VERIFY_IDENTITY"));
        assert!(requires_tls("mysql://h/db?ssl-mode=REQUIRED#x"));
        assert!(!requires_tls("postgres://h/db?sslmode=prefer"));
        assert!(!requires_tls("mysql://h/db?ssl-mode=DISABLED"));
        assert!(!requires_tls("postgres://h/db"));
    }
}
