//! Choosing a registry at run time: [`registry_from_url`], [`registry_from_env`].

use std::path::PathBuf;
use std::sync::Arc;

use masse_core::{DynRegistry, Error, MemoryRegistry, Result};

/// The environment variable [`registry_from_env`] reads.
pub const REGISTRY_ENV: &str = "MASSE_REGISTRY";

/// Connects to the registry a URL names, with the backend its scheme selects
/// among the enabled Cargo features:
///
/// | URL | backend | feature |
/// |---|---|---|
/// | `memory://` | the process-wide [`MemoryRegistry`] | always |
/// | `sqlite://path/to/file.db`, `sqlite::memory:` | `SqlRegistry` | `sqlite` (default) |
/// | `postgres://user:pass@host/db` | `SqlRegistry` | `postgres` |
/// | `mysql://user:pass@host/db`, `mariadb://…` | `SqlRegistry` | `mysql` |
/// | `redis://…`, `rediss://…`, `redis+cluster://h1,h2`, `rediss+cluster://h1,h2` | `RedisRegistry` | `redis` |
///
/// A scheme whose feature is off is an [`Error::InvalidAddress`] that names
/// the feature to enable.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> masse::Result<()> {
/// let registry = masse::registry_from_url("memory://").await?;
/// assert!(masse::registry_from_url("gopher://x").await.is_err());
/// # Ok(()) }
/// ```
pub async fn registry_from_url(url: &str) -> Result<DynRegistry> {
    let scheme = url
        .split_once(':')
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase();
    match scheme.as_str() {
        "memory" => Ok(Arc::new(MemoryRegistry::global())),
        "sqlite" => sql(url, "sqlite").await,
        "postgres" | "postgresql" => sql(url, "postgres").await,
        "mysql" | "mariadb" => sql(url, "mysql").await,
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => redis(url).await,
        _ => Err(Error::InvalidAddress {
            kind: "registry url",
            input: redact(url),
            reason: "unknown scheme; expected memory://, sqlite://, postgres://, mysql://, redis://, rediss://, \
                     redis+cluster:// or rediss+cluster://"
                .into(),
        }),
    }
}

/// The registry named by `MASSE_REGISTRY`; if it is unset or empty, the
/// embedded SQLite file `masse/registry.db` in the user's data directory
/// (feature `sqlite`, created on first use). In a build without `sqlite`, an
/// unset variable is an [`Error::Config`] naming both fixes.
pub async fn registry_from_env() -> Result<DynRegistry> {
    match std::env::var(REGISTRY_ENV) {
        Ok(url) if !url.trim().is_empty() => {
            tracing::debug!(url = %redact(&url), "registry from {REGISTRY_ENV}");
            registry_from_url(url.trim()).await
        }
        _ => default_registry().await,
    }
}

/// The URL of the embedded default registry: a SQLite file in the user's data
/// directory (`$XDG_DATA_HOME/masse/registry.db`, else
/// `~/.local/share/masse/registry.db`; `%APPDATA%\masse\registry.db` on Windows).
pub fn default_registry_path() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            if cfg!(windows) {
                std::env::var_os("APPDATA").map(PathBuf::from)
            } else if cfg!(target_os = "macos") {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join("Library/Application Support"))
            } else {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
            }
        })
        .ok_or_else(|| {
            Error::Config(format!(
                "no data directory (set HOME or XDG_DATA_HOME), or name a registry in {REGISTRY_ENV}"
            ))
        })?;
    Ok(base.join("masse").join("registry.db"))
}

#[cfg(feature = "sqlite")]
async fn default_registry() -> Result<DynRegistry> {
    let path = default_registry_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!(
                "cannot create the registry directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    tracing::debug!(path = %path.display(), "using the embedded SQLite registry");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    registry_from_url(&url).await
}

/// Without the embedded registry, an unset `MASSE_REGISTRY` is a mistake to
/// report, not a reason to fall back silently to a registry no other process
/// can see.
#[cfg(not(feature = "sqlite"))]
async fn default_registry() -> Result<DynRegistry> {
    Err(no_default_registry())
}

/// The error of [`registry_from_env`] when `MASSE_REGISTRY` is unset in a
/// build without the `sqlite` feature.
#[cfg_attr(feature = "sqlite", allow(dead_code))]
fn no_default_registry() -> Error {
    Error::Config(format!(
        "{REGISTRY_ENV} is unset and this build of masse has no embedded registry: \
         set {REGISTRY_ENV} to a registry URL (redis://host:6379, postgres://…, \
         memory:// for nodes of this process only), or enable the `sqlite` feature \
         of the masse crate for the embedded SQLite default"
    ))
}

#[allow(unused_variables)]
async fn sql(url: &str, feature: &'static str) -> Result<DynRegistry> {
    let enabled = match feature {
        "sqlite" => cfg!(feature = "sqlite"),
        "postgres" => cfg!(feature = "postgres"),
        _ => cfg!(feature = "mysql"),
    };
    if !enabled {
        return Err(feature_off(url, feature));
    }
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    {
        let r = masse_sql::SqlRegistry::connect(url).await?;
        Ok(Arc::new(r))
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    unreachable!("checked above")
}

#[allow(unused_variables)]
async fn redis(url: &str) -> Result<DynRegistry> {
    #[cfg(feature = "redis")]
    {
        let r = masse_redis::RedisRegistry::connect(url).await?;
        Ok(Arc::new(r))
    }
    #[cfg(not(feature = "redis"))]
    Err(feature_off(url, "redis"))
}

fn feature_off(url: &str, feature: &str) -> Error {
    Error::InvalidAddress {
        kind: "registry url",
        input: redact(url),
        reason: format!(
            "this build of masse has no {feature} support; enable the `{feature}` feature of the masse crate"
        ),
    }
}

/// The URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _pass)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    async fn error_of(url: &str) -> String {
        match registry_from_url(url).await {
            Ok(_) => panic!("{url} should not connect"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_unset_registry_without_sqlite_names_both_fixes() {
        let e = no_default_registry();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("MASSE_REGISTRY"), "{text}");
        assert!(text.contains("`sqlite` feature"), "{text}");
    }

    /// Run by CI with `--no-default-features`: the wiring, not just the text.
    #[cfg(not(feature = "sqlite"))]
    #[tokio::test]
    async fn an_unset_registry_without_sqlite_is_an_error() {
        // Checked only where the variable is unset (no test here sets it).
        let unset = std::env::var_os(REGISTRY_ENV).is_none();
        if unset {
            match registry_from_env().await {
                Err(Error::Config(text)) => assert!(text.contains("`sqlite` feature"), "{text}"),
                Err(e) => panic!("expected Config, got {e:?}"),
                Ok(_) => panic!("expected an error, got a registry"),
            }
        }
    }

    #[tokio::test]
    async fn unknown_and_disabled_schemes_are_clear_errors() {
        let e = error_of("gopher://x").await;
        assert!(e.contains("unknown scheme"), "{e}");
        #[cfg(not(feature = "redis"))]
        {
            let e = error_of("redis://127.0.0.1:1").await;
            assert!(e.contains("enable the `redis` feature"), "{e}");
            let e = error_of("rediss+cluster://127.0.0.1:1").await;
            assert!(e.contains("enable the `redis` feature"), "{e}");
        }
        #[cfg(feature = "redis")]
        {
            // Dispatched to the Redis backend (not "unknown scheme"): a TLS
            // cluster URL with no server behind it is unreachable.
            let e = error_of("rediss+cluster://127.0.0.1:1,127.0.0.1:2").await;
            assert!(!e.contains("unknown scheme"), "{e}");
            assert!(e.contains("redis"), "{e}");
        }
    }
}
