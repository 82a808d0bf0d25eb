//! [`SqlRegistry`]: the handle, its background tasks and the
//! [`Registry`] implementation.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use masse_core::{
    Error, InstanceId, Lease, NamePolicy, Namespace, Pattern, PeerName, PeerRecord, Registry,
    RegistryEvent, Result, WatchSender,
};
use tokio::sync::watch;

use crate::address::{open, redact, scheme};
use crate::codec;
use crate::config::SqlConfig;
use crate::error::{Fail, is_retryable, map_err, missing_table, poisons};
use crate::store::{Backend, Scan};
use crate::watch::{Hub, STREAM_CAPACITY};

/// How many times a transaction that lost a race (deadlock, serialization
/// failure, concurrent insert, busy SQLite file) is run again.
const ATTEMPTS: u32 = 8;

/// A [`Registry`] in an SQL database: SQLite (the embedded default),
/// PostgreSQL, or MySQL/MariaDB.
///
/// Every handle on the same database sees the same peers, whether it lives
/// in this process or another one. Cloning is cheap and gives another
/// reference to the same handle (same pool, same pollers).
///
/// ```no_run
/// # async fn doc() -> masse_core::Result<()> {
/// use masse_sql::SqlRegistry;
/// let local = SqlRegistry::connect("sqlite://./masse/registry.db?mode=rwc").await?;
/// let shared = SqlRegistry::connect("postgres://masse:secret@db.internal/masse").await?;
/// # let _ = (local, shared); Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqlRegistry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    backend: Arc<dyn Backend>,
    config: SqlConfig,
    /// The URL with its password masked.
    url: String,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    /// Whether database notifications currently wake the pollers
    /// (PostgreSQL `LISTEN`), so that they need not poll often.
    listening: AtomicBool,
    /// Background tasks end when this handle (and with it the sender) is dropped.
    shutdown: watch::Receiver<()>,
    _shutdown: watch::Sender<()>,
}

/// Starts a background task given the handle (weakly) and its shutdown signal.
pub(crate) type Spawn = Box<dyn FnOnce(Weak<Inner>, watch::Receiver<()>) + Send>;

/// What a dialect's `connect` hands back.
pub(crate) struct Connected {
    pub(crate) backend: Arc<dyn Backend>,
    /// Starts a task that wakes pollers when the database says so (PostgreSQL).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) listen: Option<Spawn>,
}

impl SqlRegistry {
    /// Connects with the default [`SqlConfig`]; see [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<SqlRegistry> {
        Self::connect_with(url, SqlConfig::default()).await
    }

    /// Connects to the database at `url`, creates the tables if they are
    /// missing, and starts this handle's sweeper.
    ///
    /// - `sqlite://path/to/file.db` (created with its directory unless the URL
    ///   sets `mode=`), `sqlite::memory:` (private to this handle);
    /// - `postgres://user:password@host:port/database` or `postgresql://…`;
    /// - `mysql://user:password@host:port/database` or `mariadb://…`.
    ///
    /// An unknown scheme, or one whose Cargo feature is not enabled, is
    /// [`Error::InvalidAddress`] naming the feature; a database that cannot be
    /// reached is [`Error::RegistryUnavailable`].
    pub async fn connect_with(url: &str, config: SqlConfig) -> Result<SqlRegistry> {
        config.validate()?;
        let shown = redact(url);
        let scheme = scheme(url).ok_or_else(|| Error::InvalidAddress {
            kind: "registry url",
            input: shown.clone(),
            reason: "expected a URL such as sqlite://path, postgres://… or mysql://…".into(),
        })?;
        let deadline = config.connect_timeout + Duration::from_secs(30);
        let opened = tokio::time::timeout(deadline, open(&scheme, url, &shown, &config))
            .await
            .map_err(|_| Error::Timeout {
                what: masse_core::Operation::RegistryConnect,
                after: deadline,
            })
            .and_then(|r| r)
            .inspect_err(
                |e| tracing::warn!(url = %shown, error = %e, "cannot open the SQL registry"),
            )?;
        let (tx, rx) = watch::channel(());
        let inner = Arc::new(Inner {
            backend: opened.backend,
            config,
            url: shown,
            hubs: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
            shutdown: rx,
            _shutdown: tx,
        });
        tokio::spawn(maintain(
            inner.backend.clone(),
            Arc::downgrade(&inner),
            inner.shutdown.clone(),
            inner.config.clone(),
        ));
        if let Some(listen) = opened.listen {
            listen(Arc::downgrade(&inner), inner.shutdown.clone());
        }
        tracing::info!(backend = inner.backend.name(), url = %inner.url, "SQL registry connected");
        Ok(SqlRegistry { inner })
    }

    /// The database behind this handle: `"sqlite"`, `"postgres"` or `"mysql"`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Stores `bytes` as the record of `name`, bypassing every check, as a
    /// damaged or foreign writer would. For tests of reader robustness only.
    #[doc(hidden)]
    pub async fn store_raw_record(
        &self,
        ns: &Namespace,
        name: &PeerName,
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        let ttl_ms = ttl_millis(ttl)?;
        self.call("store raw record", || {
            self.inner
                .backend
                .store_raw(ns.as_str(), name.as_str(), bytes, ttl_ms)
        })
        .await
    }

    /// Runs one backend call under the lookup timeout, again after lost races.
    async fn call<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        let backend = self.inner.backend.name();
        let attempts = async {
            let mut attempt = 0;
            let mut fresh_tried = false;
            let mut schema_tried = false;
            loop {
                match f().await {
                    Ok(v) => return Ok(v),
                    Err(Fail::Masse(e)) => return Err(e),
                    // The server restarted empty: the tables once more,
                    // then the call.
                    Err(Fail::Db(e)) if !schema_tried && missing_table(&e) => {
                        schema_tried = true;
                        self.inner.recreate_schema(&e).await?;
                    }
                    // The connection was closed with every older one: once
                    // more on a fresh connection (the fault may be over).
                    Err(Fail::Db(e)) if !fresh_tried && poisons(&e) => {
                        fresh_tried = true;
                        tracing::debug!(what, error = %e, "connection failed; once more on a fresh one");
                    }
                    Err(Fail::Db(e)) if attempt + 1 < ATTEMPTS && is_retryable(&e) => {
                        attempt += 1;
                        tracing::debug!(what, attempt, error = %e, "lost a race in the database; running the transaction again");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(Fail::Db(e)) => return Err(map_err(backend, e)),
                }
            }
        };
        let deadline = self.inner.config.call_timeout;
        tokio::time::timeout(deadline, attempts)
            .await
            .unwrap_or_else(|_| {
                // As on every backend: a call the server does not answer in
                // time means the registry is unavailable.
                Err(Error::unavailable(
                    backend,
                    Error::Timeout {
                        what: masse_core::Operation::RegistryCall,
                        after: deadline,
                    },
                ))
            })
    }
}

/// A few milliseconds, growing, with jitter so that racers spread out.
fn backoff(attempt: u32) -> Duration {
    let jitter = (InstanceId::random().as_u128() % 5) as u64;
    Duration::from_millis(u64::from(attempt) * 3 + jitter)
}

fn ttl_millis(ttl: Duration) -> Result<i64> {
    if ttl.is_zero() {
        return Err(Error::Config("ttl must be greater than zero".into()));
    }
    // At least 1 ms; far-future ttls are capped well away from overflow.
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    Ok(i64::try_from(ms).unwrap_or(i64::MAX).clamp(1, i64::MAX / 4))
}

/// How often pollers read while notifications flow: only a safety net for a
/// notification lost without the listener noticing.
pub(crate) const LISTENING_POLL: Duration = Duration::from_secs(5);

impl Inner {
    /// How long a poller waits for a wake-up before reading anyway: the poll
    /// interval, or [`LISTENING_POLL`] (if longer) while notifications flow.
    pub(crate) fn poll_every(&self) -> Duration {
        if self.listening.load(Ordering::Relaxed) {
            self.config.poll_interval.max(LISTENING_POLL)
        } else {
            self.config.poll_interval
        }
    }

    /// Records whether notifications flow; when they stop, every poller
    /// reads at once and goes back to the short interval.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn set_listening(&self, on: bool) {
        let was = self.listening.swap(on, Ordering::Relaxed);
        if was != on {
            tracing::debug!(
                listening = on,
                poll_every = ?self.poll_every(),
                "registry pollers change pace"
            );
        }
        if was && !on {
            self.wake(None);
        }
    }

    /// The poller of `ns`, started if there is none.
    fn hub(self: &Arc<Self>, ns: &Namespace) -> Arc<Hub> {
        let mut hubs = self.lock_hubs();
        if let Some(hub) = hubs.get(ns.as_str()) {
            return hub.clone();
        }
        let hub = Arc::new(Hub::new(ns.clone()));
        hubs.insert(ns.as_str().to_owned(), hub.clone());
        tokio::spawn(crate::watch::run(
            hub.clone(),
            self.backend.clone(),
            Arc::downgrade(self),
            self.shutdown.clone(),
            self.config.poll_interval,
            self.config.call_timeout,
        ));
        hub
    }

    /// Called by a hub that stops, under its state lock.
    pub(crate) fn forget_hub(&self, hub: &Arc<Hub>) {
        let mut hubs = self.lock_hubs();
        if hubs
            .get(hub.ns.as_str())
            .is_some_and(|h| Arc::ptr_eq(h, hub))
        {
            hubs.remove(hub.ns.as_str());
        }
    }

    /// Our tables are gone (see [`missing_table`]): creates them again, and
    /// gives every watcher of this handle a `Resync` (the event log went with
    /// them). Heartbeats then find their records gone and publish them again.
    pub(crate) async fn recreate_schema(&self, cause: &sqlx::Error) -> Result<()> {
        let backend = self.backend.name();
        tracing::warn!(backend, error = %cause, "the registry's tables are missing (a server restarted empty?); creating them again");
        match self.backend.create_schema().await {
            Ok(()) => {
                self.reset_hubs().await;
                Ok(())
            }
            Err(Fail::Db(e)) => Err(map_err(backend, e)),
            Err(Fail::Masse(e)) => Err(e),
        }
    }

    /// The database was replaced: every watcher of this handle gets `Resync`
    /// on the next poll, which happens now.
    async fn reset_hubs(&self) {
        let hubs: Vec<Arc<Hub>> = self.lock_hubs().values().cloned().collect();
        for hub in hubs {
            hub.state.lock().await.reset = true;
            hub.wake.notify_one();
        }
    }

    /// Makes the poller of `ns` (or of every namespace) read now.
    pub(crate) fn wake(&self, ns: Option<&str>) {
        let hubs = self.lock_hubs();
        match ns {
            Some(ns) => {
                if let Some(h) = hubs.get(ns) {
                    h.wake.notify_one();
                }
            }
            None => hubs.values().for_each(|h| h.wake.notify_one()),
        }
    }

    fn lock_hubs(&self) -> MutexGuard<'_, HashMap<String, Arc<Hub>>> {
        // The map is only ever inserted into or removed from: still sound
        // after a panic elsewhere.
        self.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sweeps expired records every poll interval and prunes old events now and
/// then; ends with the handle.
async fn maintain(
    backend: Arc<dyn Backend>,
    registry: Weak<Inner>,
    mut shutdown: watch::Receiver<()>,
    config: SqlConfig,
) {
    let prune_every = config.prune_every();
    let mut next_prune = tokio::time::Instant::now() + prune_every;
    let retention_ms = i64::try_from(config.event_retention.as_millis()).unwrap_or(i64::MAX);
    let max_events = i64::try_from(config.max_events).unwrap_or(i64::MAX);
    let mut failing = false;
    let mut reopen_failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(config.poll_interval) => {}
        }
        // SQLite: is the file at the path still the one the pool has open?
        match tokio::time::timeout(config.call_timeout * 2, backend.check_file()).await {
            Ok(Ok(reopened)) => {
                if reopen_failing {
                    reopen_failing = false;
                    tracing::info!("registry database file usable again");
                }
                if reopened && let Some(inner) = registry.upgrade() {
                    inner.reset_hubs().await;
                }
            }
            Ok(Err(e)) => {
                let e = match e {
                    Fail::Db(e) => map_err(backend.name(), e),
                    Fail::Masse(e) => e,
                };
                if !reopen_failing {
                    reopen_failing = true;
                    tracing::error!(error = %e, "cannot reopen the registry database file; retrying");
                } else {
                    tracing::debug!(error = %e, "still cannot reopen the registry database file");
                }
            }
            Err(_) => tracing::debug!("reopening the registry database file timed out; retrying"),
        }
        let swept = tokio::time::timeout(config.call_timeout, backend.sweep()).await;
        let error = match swept {
            Ok(Ok(touched)) => {
                if let Some(inner) = registry.upgrade() {
                    touched.iter().for_each(|ns| inner.wake(Some(ns)));
                }
                None
            }
            Ok(Err(Fail::Db(e))) if is_retryable(&e) => {
                tracing::debug!(error = %e, "sweep lost a race; next tick");
                None
            }
            Ok(Err(Fail::Db(e))) if missing_table(&e) => match registry.upgrade() {
                Some(inner) => inner.recreate_schema(&e).await.err().map(|e| e.to_string()),
                None => return,
            },
            Ok(Err(Fail::Db(e))) => Some(map_err(backend.name(), e).to_string()),
            Ok(Err(Fail::Masse(e))) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", config.call_timeout)),
        };
        match error {
            None if failing => {
                failing = false;
                tracing::info!("expired-record sweeper works again");
            }
            None => {}
            Some(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot sweep expired records; retrying");
            }
            Some(e) => tracing::debug!(error = %e, "still cannot sweep expired records"),
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + prune_every;
            match tokio::time::timeout(config.call_timeout, backend.prune(retention_ms, max_events))
                .await
            {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(deleted = n, "pruned old registry events"),
                Ok(Err(Fail::Db(e))) => tracing::debug!(error = %e, "pruning events failed; later"),
                Ok(Err(Fail::Masse(e))) => {
                    tracing::debug!(error = %e, "pruning events failed; later")
                }
                Err(_) => tracing::debug!("pruning events timed out; later"),
            }
        }
    }
}

#[async_trait]
impl Registry for SqlRegistry {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        let ttl_ms = ttl_millis(ttl)?;
        let json = record.to_json();
        let wrote = self
            .call("publish", || {
                self.inner.backend.publish(record, &json, ttl_ms, policy)
            })
            .await?;
        if wrote {
            self.inner.wake(Some(record.namespace.as_str()));
        }
        Ok(())
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        let ttl_ms = ttl_millis(ttl)?;
        let instance_text = instance.to_string();
        let owned = self
            .call("refresh", || {
                self.inner
                    .backend
                    .refresh(ns.as_str(), name.as_str(), &instance_text, ttl_ms)
            })
            .await?;
        if owned {
            Ok(())
        } else {
            Err(Error::NameLost {
                name: name.to_string(),
                instance,
            })
        }
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        let instance = instance.to_string();
        let removed = self
            .call("unpublish", || {
                self.inner
                    .backend
                    .unpublish(ns.as_str(), name.as_str(), &instance)
            })
            .await?;
        if removed {
            self.inner.wake(Some(ns.as_str()));
        }
        Ok(())
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        Ok(Lease::into_records(self.leases(ns, pattern).await?))
    }

    /// The time left is the row's `expires_at` minus the database's clock
    /// (`{now}` of the dialect), computed by the lookup's own statement.
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        self.leases(ns, pattern).await
    }

    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        let (tx, mut rx) = WatchSender::channel(STREAM_CAPACITY);
        loop {
            let hub = self.inner.hub(ns);
            let mut st = hub.state.lock().await;
            if st.closed {
                // It stopped between the map and the lock; a new one is on the map.
                continue;
            }
            // Under the hub's lock no poll is running: every event after
            // `head` reaches this stream, and none before it.
            let head = self.call("watch", || self.inner.backend.head()).await?;
            st.subscribe(tx, head);
            break;
        }
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

impl SqlRegistry {
    /// What `lookup` and `lookup_leases` answer: one statement that reads
    /// the live rows and their time left by the database clock.
    async fn leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        let range;
        let scan = match pattern.as_exact() {
            Some(name) => Scan::Exact(name.as_str()),
            None if pattern.literal_prefix().is_empty() => Scan::All,
            None => match codec::prefix_range(pattern.literal_prefix()) {
                Some(r) => {
                    range = r;
                    Scan::Range(&range.0, &range.1)
                }
                // No valid name starts like that.
                None => return Ok(Vec::new()),
            },
        };
        let rows = self
            .call("lookup", || self.inner.backend.lookup(ns.as_str(), scan))
            .await?;
        Ok(codec::leases(ns, rows, |name| pattern.matches(name)))
    }
}

impl fmt::Debug for SqlRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlRegistry")
            .field("backend", &self.inner.backend.name())
            .field("url", &self.inner.url)
            .field("watched_namespaces", &self.inner.lock_hubs().len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert!(matches!(ttl_millis(Duration::ZERO), Err(Error::Config(_))));
        assert_eq!(ttl_millis(Duration::from_micros(10)).unwrap(), 1);
        assert_eq!(ttl_millis(Duration::from_millis(600)).unwrap(), 600);
        assert_eq!(ttl_millis(Duration::MAX).unwrap(), i64::MAX / 4);
    }

    #[tokio::test]
    async fn unknown_and_disabled_schemes_are_invalid_addresses() {
        for url in ["redis://localhost", "not a url", "ftp://user:pw@host/x"] {
            match SqlRegistry::connect(url).await {
                Err(Error::InvalidAddress { kind, input, .. }) => {
                    assert_eq!(kind, "registry url");
                    assert!(!input.contains("pw@"), "{input}");
                }
                other => panic!("{url}: expected InvalidAddress, got {other:?}"),
            }
        }
        #[cfg(feature = "mysql")]
        for url in ["mysql:///db", "mysql://user@/db", "mariadb://u:pw@:3306/db"] {
            let started = std::time::Instant::now();
            match SqlRegistry::connect(url).await {
                Err(Error::InvalidAddress { reason, input, .. }) => {
                    assert!(reason.contains("no server host"), "{url}: {reason}");
                    assert!(!input.contains("pw@"), "{input}");
                }
                other => panic!("{url}: expected InvalidAddress, got {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "no connect attempt"
            );
        }
        #[cfg(not(feature = "postgres"))]
        match SqlRegistry::connect("postgres://u:pw@h/db").await {
            Err(Error::InvalidAddress { reason, .. }) => {
                assert!(reason.contains("`postgres` feature"), "{reason}")
            }
            other => panic!("expected InvalidAddress, got {other:?}"),
        }
    }
}
