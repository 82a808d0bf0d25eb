//! Choosing a registry at run time: [`registry_from_url`],
//! [`registry_from_env`], and the table of URL schemes behind them
//! ([`register_scheme`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};

use masse_core::{DynRegistry, Error, MemoryRegistry, Result};

/// The environment variable [`registry_from_env`] reads.
pub const REGISTRY_ENV: &str = "MASSE_REGISTRY";

/// What the scheme table holds for one scheme.
type Connect =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<DynRegistry>> + Send>> + Send + Sync>;

#[derive(Clone)]
enum Scheme {
    /// A backend that can connect.
    Ready(Connect),
    /// A backend of this workspace whose Cargo feature is off.
    #[cfg_attr(
        all(
            feature = "sqlite",
            feature = "postgres",
            feature = "mysql",
            feature = "redis"
        ),
        allow(dead_code)
    )]
    Disabled {
        /// The feature of the masse crate that enables it.
        feature: &'static str,
    },
}

/// The longest scheme name [`register_scheme`] accepts.
const MAX_SCHEME_LEN: usize = 32;

fn table() -> &'static RwLock<BTreeMap<String, Scheme>> {
    static TABLE: OnceLock<RwLock<BTreeMap<String, Scheme>>> = OnceLock::new();
    TABLE.get_or_init(|| RwLock::new(builtin_schemes()))
}

/// The schemes of this workspace's registries, each either ready or
/// disabled with the feature that enables it.
fn builtin_schemes() -> BTreeMap<String, Scheme> {
    fn ready<F, Fut>(f: F) -> Scheme
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<DynRegistry>> + Send + 'static,
    {
        Scheme::Ready(Arc::new(move |url| Box::pin(f(url))))
    }
    #[allow(unused_macros)]
    macro_rules! backend {
        ($feature:literal, $connect:expr) => {{
            #[cfg(feature = $feature)]
            let scheme = ready($connect);
            #[cfg(not(feature = $feature))]
            let scheme = Scheme::Disabled { feature: $feature };
            scheme
        }};
    }
    let mut t = BTreeMap::new();
    t.insert(
        "memory".to_owned(),
        ready(|_| async { Ok(Arc::new(MemoryRegistry::global()) as DynRegistry) }),
    );
    let sqlite = backend!("sqlite", |url: String| async move { sql(&url).await });
    let postgres = backend!("postgres", |url: String| async move { sql(&url).await });
    let mysql = backend!("mysql", |url: String| async move { sql(&url).await });
    let redis = backend!("redis", |url: String| async move { redis(&url).await });
    t.insert("sqlite".to_owned(), sqlite);
    for s in ["postgres", "postgresql"] {
        t.insert(s.to_owned(), postgres.clone());
    }
    for s in ["mysql", "mariadb"] {
        t.insert(s.to_owned(), mysql.clone());
    }
    for s in ["redis", "rediss", "redis+cluster", "rediss+cluster"] {
        t.insert(s.to_owned(), redis.clone());
    }
    t
}

/// Makes [`registry_from_url`] (and so [`registry_from_env`],
/// `NodeBuilderExt::registry_from_url` and the CLI's `--registry`) connect
/// URLs of `scheme` with `connect`, which gets the whole URL.
///
/// The table is process-wide. It starts with this workspace's own schemes
/// (see [`registry_from_url`]); registering a scheme that is already there
/// replaces it, so the last registration wins: an application can put its
/// own factory behind a built-in scheme (a Redis registry with settings of
/// its own, say). Register at start-up, before anything connects.
///
/// `scheme` is case-insensitive (stored lowercased) and follows RFC 3986: a
/// letter, then letters, digits, `+`, `-` or `.`, at most 32 in all; anything
/// else is an [`Error::InvalidAddress`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> masse::Result<()> {
/// use std::sync::Arc;
/// use masse::{DynRegistry, MemoryRegistry};
///
/// // `shared://<anything>`: one in-process registry per URL would go here;
/// // this one always hands out the same store.
/// let store = MemoryRegistry::new();
/// masse::register_scheme("shared", move |_url| {
///     let store = store.clone();
///     async move { Ok(Arc::new(store) as DynRegistry) }
/// })?;
/// let registry = masse::registry_from_url("shared://prod").await?;
/// assert!(masse::registered_schemes().contains(&"shared".to_owned()));
/// # Ok(()) }
/// ```
pub fn register_scheme<F, Fut>(scheme: &str, connect: F) -> Result<()>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<DynRegistry>> + Send + 'static,
{
    let scheme = validate_scheme(scheme)?;
    let connect: Connect = Arc::new(move |url| Box::pin(connect(url)));
    let before = table()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(scheme.clone(), Scheme::Ready(connect));
    match before {
        Some(Scheme::Ready(_)) => {
            tracing::debug!(%scheme, "registry scheme registered again; the new factory replaces the old one")
        }
        _ => tracing::debug!(%scheme, "registry scheme registered"),
    }
    Ok(())
}

/// The schemes [`registry_from_url`] can connect now, sorted: this build's
/// own (by Cargo feature) and every one [registered](register_scheme).
pub fn registered_schemes() -> Vec<String> {
    table()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, s)| matches!(s, Scheme::Ready(_)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Checks a scheme name and lowercases it.
fn validate_scheme(scheme: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidAddress {
        kind: "registry url scheme",
        input: scheme.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    if scheme.is_empty() || scheme.len() > MAX_SCHEME_LEN {
        return Err(bad("must be 1 to 32 characters"));
    }
    if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(bad("must start with a letter"));
    }
    if let Some((i, c)) = scheme
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    {
        return Err(bad(&format!(
            "character {c:?} at byte {i}: only letters, digits, '+', '-' and '.' are allowed"
        )));
    }
    Ok(scheme.to_ascii_lowercase())
}

/// Connects to the registry a URL names, with the factory its scheme has in
/// the process-wide scheme table. The table starts with this workspace's
/// registries, as far as the enabled Cargo features go:
///
/// | URL | backend | feature |
/// |---|---|---|
/// | `memory://` | the process-wide [`MemoryRegistry`] | always |
/// | `sqlite://path/to/file.db`, `sqlite::memory:` | `SqlRegistry` | `sqlite` (default) |
/// | `postgres://user:pass@host/db`, `postgresql://…` | `SqlRegistry` | `postgres` |
/// | `mysql://user:pass@host/db`, `mariadb://…` | `SqlRegistry` | `mysql` |
/// | `redis://…`, `rediss://…`, `redis+cluster://h1,h2`, `rediss+cluster://h1,h2` | `RedisRegistry` | `redis` |
///
/// and [`register_scheme`] adds any other (a third-party registry crate, or
/// the application's own). The scheme is what precedes the first `:`,
/// case-insensitive.
///
/// A built-in scheme whose feature is off is an [`Error::InvalidAddress`]
/// that names the feature to enable; an unknown scheme is one that lists the
/// registered schemes.
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
    let found = table()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&scheme)
        .cloned();
    match found {
        Some(Scheme::Ready(connect)) => connect(url.to_owned()).await,
        Some(Scheme::Disabled { feature }) => Err(feature_off(url, feature)),
        None => Err(unknown_scheme(url)),
    }
}

fn unknown_scheme(url: &str) -> Error {
    let (ready, disabled): (Vec<_>, Vec<_>) = {
        let table = table().read().unwrap_or_else(|p| p.into_inner());
        table
            .iter()
            .map(|(name, s)| (format!("{name}://"), matches!(s, Scheme::Ready(_))))
            .partition(|(_, ready)| *ready)
    };
    let names =
        |v: Vec<(String, bool)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(", ");
    let mut reason = format!("unknown scheme; registered schemes: {}", names(ready));
    if !disabled.is_empty() {
        reason.push_str(&format!(
            " (with more features of the masse crate: {})",
            names(disabled)
        ));
    }
    Error::InvalidAddress {
        kind: "registry url",
        input: redact(url),
        reason,
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

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
async fn sql(url: &str) -> Result<DynRegistry> {
    let r = masse_sql::SqlRegistry::connect(url).await?;
    Ok(Arc::new(r))
}

#[cfg(feature = "redis")]
async fn redis(url: &str) -> Result<DynRegistry> {
    let r = masse_redis::RedisRegistry::connect(url).await?;
    Ok(Arc::new(r))
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

pub(crate) use masse_core::redact;

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(e.contains("memory://"), "lists the registered schemes: {e}");
        #[cfg(feature = "sqlite")]
        assert!(e.contains("sqlite://"), "{e}");
        #[cfg(not(feature = "redis"))]
        assert!(
            e.contains("with more features of the masse crate: ") && e.contains("redis://"),
            "{e}"
        );
        #[cfg(feature = "redis")]
        assert!(!e.contains("more features"), "{e}");
        let e = error_of("no-scheme-at-all").await;
        assert!(e.contains("unknown scheme"), "{e}");
        let e = error_of("gopher://u:secret@x").await;
        assert!(!e.contains("secret"), "{e}");
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

    /// A factory that counts its calls and hands out one shared store.
    fn counting(
        calls: Arc<std::sync::atomic::AtomicUsize>,
        store: MemoryRegistry,
    ) -> impl Fn(String) -> std::future::Ready<Result<DynRegistry>> + Send + Sync + 'static {
        move |url| {
            assert!(url.contains("://"), "the factory gets the whole URL: {url}");
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(Arc::new(store.clone()) as DynRegistry))
        }
    }

    #[tokio::test]
    async fn a_registered_scheme_connects_case_insensitively() {
        use masse_core::{InstanceId, NamePolicy, PeerRecord, Registry};
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let store = MemoryRegistry::new();
        register_scheme("Test-Reg.v1", counting(calls.clone(), store.clone())).unwrap();
        assert!(registered_schemes().contains(&"test-reg.v1".to_owned()));
        let reg = registry_from_url("TEST-reg.V1://anything").await.unwrap();
        let r = PeerRecord::new(
            "ns".parse().unwrap(),
            "a".parse().unwrap(),
            InstanceId::random(),
        );
        reg.publish(&r, std::time::Duration::from_secs(5), NamePolicy::Takeover)
            .await
            .unwrap();
        assert_eq!(store.len(&"ns".parse().unwrap()), 1, "the factory's store");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let e = error_of("unregistered-x://").await;
        assert!(e.contains("test-reg.v1://"), "listed once registered: {e}");
    }

    #[tokio::test]
    async fn registering_again_replaces_the_factory() {
        let first = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let second = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        register_scheme("replaced", counting(first.clone(), MemoryRegistry::new())).unwrap();
        register_scheme("replaced", counting(second.clone(), MemoryRegistry::new())).unwrap();
        registry_from_url("replaced://x").await.unwrap();
        assert_eq!(first.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(second.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A factory's error is the caller's error.
        register_scheme("refusing", |url: String| async move {
            Err::<DynRegistry, _>(Error::Config(format!("{url} refused")))
        })
        .unwrap();
        match registry_from_url("refusing://x").await {
            Err(Error::Config(text)) => assert_eq!(text, "refusing://x refused"),
            Err(e) => panic!("expected the factory's error, got {e:?}"),
            Ok(_) => panic!("expected the factory's error"),
        }
    }

    #[test]
    fn scheme_names_are_checked() {
        for bad in [
            "",
            "1json",
            "+x",
            "js on",
            "json:",
            "json/",
            "é",
            &"x".repeat(33),
        ] {
            match register_scheme(bad, counting(Arc::default(), MemoryRegistry::new())) {
                Err(Error::InvalidAddress { kind, .. }) => assert_eq!(kind, "registry url scheme"),
                other => panic!("{bad:?} should be refused, got {other:?}"),
            }
        }
        assert_eq!(validate_scheme("Redis+Cluster").unwrap(), "redis+cluster");
        assert_eq!(validate_scheme(&"x".repeat(32)).unwrap(), "x".repeat(32));
    }

    #[test]
    fn the_builtin_schemes_are_in_the_table() {
        let table = builtin_schemes();
        for s in [
            "memory",
            "sqlite",
            "postgres",
            "postgresql",
            "mysql",
            "mariadb",
            "redis",
            "rediss",
            "redis+cluster",
            "rediss+cluster",
        ] {
            assert!(table.contains_key(s), "{s}");
            assert_eq!(validate_scheme(s).unwrap(), s, "a valid scheme name");
        }
        let ready = registered_schemes();
        assert!(ready.contains(&"memory".to_owned()));
        assert_eq!(
            ready.contains(&"sqlite".to_owned()),
            cfg!(feature = "sqlite")
        );
        assert_eq!(ready.contains(&"redis".to_owned()), cfg!(feature = "redis"));
        assert_eq!(
            ready.contains(&"mariadb".to_owned()),
            cfg!(feature = "mysql")
        );
    }

    /// A scheme whose feature is off can be given a factory of one's own.
    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn a_disabled_builtin_scheme_can_be_registered() {
        let e = error_of("postgresql://h/db").await;
        assert!(e.contains("enable the `postgres` feature"), "{e}");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        register_scheme("postgresql", counting(calls.clone(), MemoryRegistry::new())).unwrap();
        registry_from_url("postgresql://h/db").await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
