//! [`CachingRegistry`]: a coherent cache in front of any [`Registry`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{BoxStream, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::name::{Namespace, PeerName};
use crate::pattern::Pattern;
use crate::record::{InstanceId, PeerRecord};
use crate::registry::{NamePolicy, Registry, RegistryEvent};

/// Tuning for [`CachingRegistry`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CachingConfig {
    /// Longest time a non-empty result is served from cache while the watch is
    /// healthy. Watch events keep entries exact; this is a safety net.
    pub max_age: Duration,
    /// How long an empty result (a miss) is cached.
    pub negative_ttl: Duration,
    /// How long a backend lookup may take before it counts as a failure (and a
    /// stale entry is served, if there is one).
    pub lookup_timeout: Duration,
    /// After a backend failure, lookups that have a stale entry serve it without
    /// asking the backend for this long.
    pub retry_after: Duration,
    /// Longest wait between attempts to re-establish a broken watch.
    pub max_backoff: Duration,
    /// Cached results kept per namespace; the oldest are evicted beyond this.
    pub max_entries: usize,
}

impl Default for CachingConfig {
    fn default() -> Self {
        CachingConfig {
            max_age: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(1),
            lookup_timeout: Duration::from_secs(3),
            retry_after: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            max_entries: 10_000,
        }
    }
}

/// Where a [`CachedLookup`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Served from a cache entry kept current by the backend's watch.
    Cached,
    /// Fetched from the backend just now (possibly shared with concurrent callers).
    Fetched,
    /// The backend failed; this is the last known answer, which may be out of date.
    Stale,
}

/// The answer to [`CachingRegistry::lookup_cached`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CachedLookup {
    /// Matching records, sorted by name.
    pub records: Arc<Vec<PeerRecord>>,
    /// Whether they came from cache, the backend, or a stale entry.
    pub freshness: Freshness,
}

/// Counters of a [`CachingRegistry`], for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from cache.
    pub hits: u64,
    /// Lookups that needed the backend.
    pub misses: u64,
    /// Of the misses, those that joined a lookup already in flight.
    pub coalesced: u64,
    /// Lookups answered with a stale entry because the backend failed.
    pub stale: u64,
    /// Calls made to the backend's `lookup`.
    pub backend_lookups: u64,
}

/// Wraps any registry with a cache that stays coherent through the backend's
/// [`watch`](Registry::watch) events.
///
/// - A repeated lookup is answered from memory, without a backend round trip.
/// - Each namespace looked up gets one watch; its events update every cached
///   result they touch, so entries stay exact while the watch is healthy.
/// - Concurrent lookups of the same namespace and pattern share one backend call.
/// - Misses are cached for [`CachingConfig::negative_ttl`].
/// - While the backend fails, the last known answer is served and marked
///   [`Freshness::Stale`] (see [`lookup_cached`](Self::lookup_cached)).
/// - [`invalidate`](Self::invalidate) drops what is known about a name, for a
///   caller that found a cached address stale.
///
/// Writes and [`watch`](Registry::watch) go straight to the backend.
pub struct CachingRegistry<R> {
    shared: Arc<SharedState<R>>,
}

impl<R> Clone for CachingRegistry<R> {
    fn clone(&self) -> Self {
        CachingRegistry {
            shared: self.shared.clone(),
        }
    }
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<PeerRecord>>>>>;
type Key = (Namespace, Arc<str>);

struct SharedState<R> {
    backend: R,
    config: CachingConfig,
    cache: RwLock<HashMap<Namespace, NsCache>>,
    inflight: Mutex<HashMap<Key, Fetch>>,
    watchers: Mutex<HashMap<Namespace, WatchTask>>,
    stop: tokio::sync::watch::Sender<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
    backend_lookups: AtomicU64,
}

/// State of one namespace's watch, as seen by lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    /// The first attempt to watch is under way.
    Connecting,
    /// Events are flowing.
    Synced,
    /// The watch broke (or could not be established); retrying in the background.
    Broken,
}

struct WatchTask {
    handle: JoinHandle<()>,
    state: tokio::sync::watch::Receiver<WatchState>,
}

/// How long a first lookup in a namespace waits for its watch, so that its
/// answer can be cached at once.
const FIRST_WATCH_WAIT: Duration = Duration::from_secs(1);

/// How many recent events are kept to patch results fetched concurrently with them.
const RECENT_EVENTS: usize = 4096;

#[derive(Default)]
struct NsCache {
    entries: HashMap<Arc<str>, Entry>,
    /// True while a watch stream is delivering events for this namespace.
    synced: bool,
    /// Bumped every time the watch is (re)established.
    epoch: u64,
    /// Number of events applied in this epoch.
    seq: u64,
    /// The last events applied, with their sequence numbers.
    recent: VecDeque<(u64, RegistryEvent)>,
    /// Set after a backend failure: serve stale entries without asking until then.
    down_until: Option<Instant>,
}

struct Entry {
    pattern: Pattern,
    records: Arc<Vec<PeerRecord>>,
    valid_until: Instant,
    inserted: Instant,
}

impl Entry {
    fn apply(&mut self, event: &RegistryEvent, config: &CachingConfig, now: Instant) {
        let Some(name) = event.name() else { return };
        if !self.pattern.matches(name.as_str()) {
            return;
        }
        let was_empty = self.records.is_empty();
        let records = Arc::make_mut(&mut self.records);
        let pos = records.binary_search_by(|r| r.name.cmp(name));
        match event {
            RegistryEvent::Joined(r) | RegistryEvent::Updated(r) => match pos {
                Ok(i) => records[i] = r.clone(),
                Err(i) => records.insert(i, r.clone()),
            },
            RegistryEvent::Left { instance, .. } | RegistryEvent::Expired { instance, .. } => {
                if let Ok(i) = pos
                    && records[i].instance == *instance
                {
                    records.remove(i);
                }
            }
            RegistryEvent::Resync => {}
        }
        if was_empty && !records.is_empty() {
            self.valid_until = now + config.max_age;
        }
    }
}

impl NsCache {
    fn apply(&mut self, event: RegistryEvent, config: &CachingConfig, now: Instant) {
        if matches!(event, RegistryEvent::Resync) {
            self.invalidate_entries(now);
            self.recent.clear();
            self.epoch += 1;
            self.seq = 0;
            return;
        }
        for entry in self.entries.values_mut() {
            entry.apply(&event, config, now);
        }
        self.seq += 1;
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, event));
    }

    /// Turns every entry into a stale-only answer.
    fn invalidate_entries(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            e.valid_until = now;
        }
    }

    fn evict_if_full(&mut self, max: usize) {
        while self.entries.len() >= max.max(1) {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.inserted)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.entries.remove(&oldest);
        }
    }
}

impl<R: Registry> CachingRegistry<R> {
    /// Puts a cache with default settings in front of `backend`.
    pub fn new(backend: R) -> Self {
        Self::with_config(backend, CachingConfig::default())
    }

    /// Puts a cache with `config` in front of `backend`.
    pub fn with_config(backend: R, config: CachingConfig) -> Self {
        let (stop, _) = tokio::sync::watch::channel(());
        CachingRegistry {
            shared: Arc::new(SharedState {
                backend,
                config,
                cache: RwLock::default(),
                inflight: Mutex::default(),
                watchers: Mutex::default(),
                stop,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                coalesced: AtomicU64::new(0),
                stale: AtomicU64::new(0),
                backend_lookups: AtomicU64::new(0),
            }),
        }
    }

    /// The wrapped registry.
    pub fn backend(&self) -> &R {
        &self.shared.backend
    }

    /// The settings in force.
    pub fn config(&self) -> &CachingConfig {
        &self.shared.config
    }

    /// Looks up `pattern` in `ns`, telling where the answer came from. The
    /// records are shared, not copied: this is the hot path of dialing.
    pub async fn lookup_cached(&self, ns: &Namespace, pattern: &Pattern) -> Result<CachedLookup> {
        let shared = &self.shared;
        let now = Instant::now();
        let mut stale: Option<Arc<Vec<PeerRecord>>> = None;
        {
            let cache = read(&shared.cache);
            if let Some(nsc) = cache.get(ns) {
                if let Some(entry) = nsc.entries.get(pattern.as_str()) {
                    if nsc.synced && now < entry.valid_until {
                        shared.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(CachedLookup {
                            records: entry.records.clone(),
                            freshness: Freshness::Cached,
                        });
                    }
                    stale = Some(entry.records.clone());
                }
                if let (Some(records), Some(until)) = (&stale, nsc.down_until)
                    && now < until
                {
                    shared.stale.fetch_add(1, Ordering::Relaxed);
                    return Ok(CachedLookup {
                        records: records.clone(),
                        freshness: Freshness::Stale,
                    });
                }
            }
        }
        shared.misses.fetch_add(1, Ordering::Relaxed);
        if let Some(mut state) = self.ensure_watch(ns)
            && *state.borrow() == WatchState::Connecting
        {
            // A fetch made before the watch is up cannot be cached; a short
            // wait on the first lookup saves a second round trip.
            let _ = tokio::time::timeout(
                FIRST_WATCH_WAIT,
                state.wait_for(|s| *s != WatchState::Connecting),
            )
            .await;
        }
        match self.fetch(ns, pattern).await {
            Ok(records) => Ok(CachedLookup {
                records,
                freshness: Freshness::Fetched,
            }),
            Err(e) => {
                {
                    let mut cache = write(&shared.cache);
                    if let Some(nsc) = cache.get_mut(ns) {
                        nsc.down_until = Some(Instant::now() + shared.config.retry_after);
                    }
                }
                match stale {
                    Some(records) => {
                        shared.stale.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(namespace = %ns, %pattern, error = %e, "registry lookup failed; serving the last known answer");
                        Ok(CachedLookup {
                            records,
                            freshness: Freshness::Stale,
                        })
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Stops serving every cached result in `ns` that could hold `name` as a
    /// hit, so the next lookup asks the backend. Call it when a cached address
    /// turned out stale. (The old answer is still served, flagged stale, if the
    /// backend then fails.)
    pub fn invalidate(&self, ns: &Namespace, name: &PeerName) {
        let now = Instant::now();
        let mut cache = write(&self.shared.cache);
        if let Some(nsc) = cache.get_mut(ns) {
            for e in nsc.entries.values_mut() {
                if e.pattern.matches(name.as_str()) {
                    e.valid_until = now;
                }
            }
        }
    }

    /// Forgets everything cached.
    pub fn invalidate_all(&self) {
        let mut cache = write(&self.shared.cache);
        for nsc in cache.values_mut() {
            nsc.entries.clear();
        }
    }

    /// True while the watch on `ns` is delivering events (cached answers are exact).
    pub fn is_synced(&self, ns: &Namespace) -> bool {
        read(&self.shared.cache).get(ns).is_some_and(|n| n.synced)
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let s = &self.shared;
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            coalesced: s.coalesced.load(Ordering::Relaxed),
            stale: s.stale.load(Ordering::Relaxed),
            backend_lookups: s.backend_lookups.load(Ordering::Relaxed),
        }
    }

    /// One backend lookup per (namespace, pattern) at a time; late callers join it.
    async fn fetch(&self, ns: &Namespace, pattern: &Pattern) -> Result<Arc<Vec<PeerRecord>>> {
        let key: Key = (ns.clone(), Arc::from(pattern.as_str()));
        let fut = {
            let mut inflight = self
                .shared
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(f) => {
                    self.shared.coalesced.fetch_add(1, Ordering::Relaxed);
                    f.clone()
                }
                None => {
                    let f = fetch_and_store(self.shared.clone(), key.clone(), pattern.clone())
                        .boxed()
                        .shared();
                    inflight.insert(key, f.clone());
                    f
                }
            }
        };
        fut.await
    }

    fn ensure_watch(&self, ns: &Namespace) -> Option<tokio::sync::watch::Receiver<WatchState>> {
        let mut watchers = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(t) = watchers.get(ns)
            && !t.handle.is_finished()
        {
            return Some(t.state.clone());
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (state_tx, state) = tokio::sync::watch::channel(WatchState::Connecting);
        let task = watch_task(
            Arc::downgrade(&self.shared),
            ns.clone(),
            self.shared.stop.subscribe(),
            state_tx,
        );
        let handle = rt.spawn(task);
        watchers.insert(
            ns.clone(),
            WatchTask {
                handle,
                state: state.clone(),
            },
        );
        Some(state)
    }
}

/// Asks the backend, then stores the answer patched with any events that
/// arrived meanwhile, so that a concurrent change is never lost.
async fn fetch_and_store<R: Registry>(
    shared: Arc<SharedState<R>>,
    key: Key,
    pattern: Pattern,
) -> Result<Arc<Vec<PeerRecord>>> {
    let (ns, src) = &key;
    let before = read(&shared.cache)
        .get(ns)
        .filter(|n| n.synced)
        .map(|n| (n.epoch, n.seq));
    shared.backend_lookups.fetch_add(1, Ordering::Relaxed);
    let result = match tokio::time::timeout(
        shared.config.lookup_timeout,
        shared.backend.lookup(ns, &pattern),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: "registry lookup",
            after: shared.config.lookup_timeout,
        }),
    };
    let out = result.map(|mut records| {
        records.sort_by(|a, b| a.name.cmp(&b.name));
        let now = Instant::now();
        let mut entry = Entry {
            pattern: pattern.clone(),
            records: Arc::new(records),
            valid_until: now,
            inserted: now,
        };
        let mut cache = write(&shared.cache);
        let nsc = cache.entry(ns.clone()).or_default();
        nsc.down_until = None;
        // Cache only if the watch was live for the whole fetch and every event
        // since it started is still in the replay buffer.
        let replayable = match before {
            Some((epoch, seq)) if nsc.synced && nsc.epoch == epoch => {
                nsc.seq - seq <= nsc.recent.len() as u64
            }
            _ => false,
        };
        if replayable {
            let (_, seq) = before.unwrap_or_default();
            for (_, ev) in nsc.recent.iter().filter(|(s, _)| *s > seq) {
                entry.apply(ev, &shared.config, now);
            }
            entry.valid_until = now
                + if entry.records.is_empty() {
                    shared.config.negative_ttl
                } else {
                    shared.config.max_age
                };
            let records = entry.records.clone();
            nsc.evict_if_full(shared.config.max_entries);
            nsc.entries.insert(src.clone(), entry);
            records
        } else {
            // Keep it for stale serving only: it is not valid as a cache hit.
            let records = entry.records.clone();
            nsc.evict_if_full(shared.config.max_entries);
            nsc.entries.insert(src.clone(), entry);
            records
        }
    });
    shared
        .inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    out
}

/// Keeps one namespace's entries current from the backend's watch, re-establishing
/// the watch with backoff whenever it breaks.
async fn watch_task<R: Registry>(
    weak: Weak<SharedState<R>>,
    ns: Namespace,
    mut stop: tokio::sync::watch::Receiver<()>,
    state: tokio::sync::watch::Sender<WatchState>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let max_backoff = shared.config.max_backoff;
        let attempt = tokio::select! {
            r = shared.backend.watch(&ns) => r,
            _ = stop.changed() => return,
        };
        drop(shared);
        match attempt {
            Ok(mut stream) => {
                backoff = Duration::from_millis(50);
                if let Some(shared) = weak.upgrade() {
                    let mut cache = write(&shared.cache);
                    let nsc = cache.entry(ns.clone()).or_default();
                    // Entries fetched while unsynced may have missed events: they
                    // are no longer hits, but stay as stale answers for outages.
                    nsc.invalidate_entries(Instant::now());
                    nsc.recent.clear();
                    nsc.synced = true;
                    state.send_replace(WatchState::Synced);
                    nsc.epoch += 1;
                    nsc.seq = 0;
                } else {
                    return;
                }
                tracing::debug!(namespace = %ns, "cache watch established");
                loop {
                    let next = tokio::select! {
                        n = stream.next() => n,
                        _ = stop.changed() => return,
                    };
                    let Some(shared) = weak.upgrade() else { return };
                    match next {
                        Some(Ok(event)) => {
                            let mut cache = write(&shared.cache);
                            cache.entry(ns.clone()).or_default().apply(
                                event,
                                &shared.config,
                                Instant::now(),
                            );
                        }
                        Some(Err(e)) => {
                            tracing::warn!(namespace = %ns, error = %e, "registry watch failed; cache serves stale answers until it is back");
                            break;
                        }
                        None => {
                            tracing::warn!(namespace = %ns, "registry watch ended; re-establishing");
                            break;
                        }
                    }
                }
                if let Some(shared) = weak.upgrade() {
                    let mut cache = write(&shared.cache);
                    if let Some(nsc) = cache.get_mut(&ns) {
                        nsc.synced = false;
                        state.send_replace(WatchState::Broken);
                    }
                }
            }
            Err(Error::Unsupported(what)) => {
                state.send_replace(WatchState::Broken);
                tracing::info!(namespace = %ns, %what, "registry has no watch; cache entries are not kept coherent");
                return;
            }
            Err(e) => {
                state.send_replace(WatchState::Broken);
                tracing::warn!(namespace = %ns, error = %e, retry_in = ?backoff, "cannot watch registry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<R: Registry> Registry for CachingRegistry<R> {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        let result = self.shared.backend.publish(record, ttl, policy).await;
        // Read-your-writes on this handle, without waiting for the watch event.
        self.invalidate(&record.namespace, &record.name);
        result
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        self.shared.backend.refresh(ns, name, instance, ttl).await
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        let result = self.shared.backend.unpublish(ns, name, instance).await;
        self.invalidate(ns, name);
        result
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        let found = self.lookup_cached(ns, pattern).await?;
        Ok(Arc::unwrap_or_clone(found.records))
    }

    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        self.shared.backend.watch(ns).await
    }
}

impl<R> Drop for SharedState<R> {
    fn drop(&mut self) {
        // Closing the channel ends every watch task.
        self.stop.send_replace(());
        for (_, task) in self
            .watchers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            task.handle.abort();
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for CachingRegistry<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingRegistry")
            .field("backend", &self.shared.backend)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
