//! [`CachingRegistry`]: a coherent cache in front of any [`Registry`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::fanout::Fanout;
pub use crate::fanout::{RecvError, Subscription, TryRecvError};
use crate::liveness::Lease;
use crate::name::{Namespace, PeerName};
use crate::pattern::Pattern;
use crate::reconcile::Reconciler;
use crate::record::{InstanceId, PeerRecord};
use crate::registry::{NamePolicy, Registry, RegistryEvent};

/// Tuning for [`CachingRegistry`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CachingConfig {
    pub(crate) max_age: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) lookup_timeout: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_entries: usize,
    pub(crate) resync_grace: Duration,
    pub(crate) poll_interval: Duration,
}

/// The shortest [`CachingConfig::with_poll_interval`] honoured.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

impl Default for CachingConfig {
    fn default() -> Self {
        CachingConfig {
            max_age: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(1),
            lookup_timeout: Duration::from_secs(3),
            retry_after: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            max_entries: 10_000,
            resync_grace: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl CachingConfig {
    /// The defaults (see each setting).
    pub fn new() -> Self {
        Self::default()
    }

    /// Longest time a non-empty result is served from cache while the watch is
    /// healthy. Watch events keep entries exact; this is a safety net.
    pub fn with_max_age(mut self, value: Duration) -> Self {
        self.max_age = value;
        self
    }

    /// See [`with_max_age`](Self::with_max_age).
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// How long an empty result (a miss) is cached.
    pub fn with_negative_ttl(mut self, value: Duration) -> Self {
        self.negative_ttl = value;
        self
    }

    /// See [`with_negative_ttl`](Self::with_negative_ttl).
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// How long a backend lookup may take before it counts as a failure (and a
    /// stale entry is served, if there is one).
    pub fn with_lookup_timeout(mut self, value: Duration) -> Self {
        self.lookup_timeout = value;
        self
    }

    /// See [`with_lookup_timeout`](Self::with_lookup_timeout).
    pub fn lookup_timeout(&self) -> Duration {
        self.lookup_timeout
    }

    /// After a backend failure, lookups that have a stale entry serve it without
    /// asking the backend for this long.
    pub fn with_retry_after(mut self, value: Duration) -> Self {
        self.retry_after = value;
        self
    }

    /// See [`with_retry_after`](Self::with_retry_after).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Longest wait between attempts to re-establish a broken watch.
    pub fn with_max_backoff(mut self, value: Duration) -> Self {
        self.max_backoff = value;
        self
    }

    /// See [`with_max_backoff`](Self::with_max_backoff).
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// Cached results kept per namespace; the oldest are evicted beyond this.
    pub fn with_max_entries(mut self, value: usize) -> Self {
        self.max_entries = value;
        self
    }

    /// See [`with_max_entries`](Self::with_max_entries).
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// After the backend lost events ([`RegistryEvent::Resync`], or a watch
    /// that broke and came back), how long a name missing from the new
    /// listing is still served from its last known record before it is
    /// reported [`Expired`](RegistryEvent::Expired). It covers a registry
    /// restarted empty: its live owners re-publish within one heartbeat
    /// (ttl/3), so this should exceed the longest ttl/3 in the namespace plus
    /// a margin (default 5 s: ttls up to 9 s). A node raises it to its own
    /// ttl/3 + 2 s if that is longer; with peers on longer ttls, set it.
    pub fn with_resync_grace(mut self, value: Duration) -> Self {
        self.resync_grace = value;
        self
    }

    /// See [`with_resync_grace`](Self::with_resync_grace).
    pub fn resync_grace(&self) -> Duration {
        self.resync_grace
    }

    /// How often a namespace is listed when the backend cannot watch (its
    /// [`watch`](Registry::watch) fails with [`Error::Unsupported`]). Each
    /// listing is diffed with the last one into the same events a watch gives, so a
    /// change shows in cached lookups, [`subscribe`](CachingRegistry::subscribe)
    /// and [`watch`](Registry::watch) streams at most this long after it
    /// happened (see [`CachingRegistry`] for the details). Default 1 s: one
    /// listing per second per namespace and process is cheap for any store,
    /// and it adds at most a second to an `Expired`, which comes a whole ttl
    /// (10 s by default) after a crash anyway. Values under 10 ms count as 10 ms.
    pub fn with_poll_interval(mut self, value: Duration) -> Self {
        self.poll_interval = value;
        self
    }

    /// See [`with_poll_interval`](Self::with_poll_interval).
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}

/// Where a [`CachedLookup`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Served from a cache entry kept current by the backend's watch (or,
    /// for a backend that cannot watch, by its polls).
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

/// Counters of a [`CachingRegistry`], for monitoring. Serialised as a JSON
/// object of its counters; unknown fields are ignored, missing ones are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
/// - A backend that cannot watch (its `watch` fails with
///   [`Error::Unsupported`]) is polled instead, see below.
/// - Concurrent lookups of the same namespace and pattern share one backend call.
/// - Misses are cached for [`CachingConfig::with_negative_ttl`].
/// - While the backend fails, the last known answer is served and marked
///   [`Freshness::Stale`] (see [`lookup_cached`](Self::lookup_cached)).
/// - [`invalidate`](Self::invalidate) drops what is known about a name, for a
///   caller that found a cached address stale.
///
/// Writes go straight to the backend.
///
/// # Registries without watch
///
/// When the backend's [`watch`](Registry::watch) fails with
/// [`Error::Unsupported`], the namespace is listed (`lookup(ns, "*")`) every
/// [`CachingConfig::with_poll_interval`] instead, and each listing is diffed with
/// what the cache knew into the same events a watch would give:
///
/// - a new name is `Joined`, a changed record (or another instance of the
///   name) `Updated`;
/// - a name missing from a listing is `Expired`, once: a listing cannot tell
///   an unpublish from an expiry. (An unpublish through this very cache is
///   `Left` for the cache and its subscribers, as it knows.) A listing that
///   is empty while names were known looks like a registry that lost its
///   data, and is treated like a [`RegistryEvent::Resync`]: the names are kept for
///   [`CachingConfig::with_resync_grace`] and reported `Expired` only if they do
///   not come back by then;
/// - the events reach cached entries, [subscribers](Self::subscribe) (the
///   node's `PeerJoined`, `PeerLeft`, … events) and
///   [`watch`](Registry::watch) streams, like a watch's; each stream
///   returned by `watch` polls on its own.
///
/// A cached lookup is then served from the last poll: it may miss a change
/// made since, for at most one interval (plus the time the listing takes).
/// A lookup that misses the cache still asks the backend. A poll that fails
/// is handled like a broken watch: cached answers stop being hits, a lookup
/// that then fails serves the last known answer flagged
/// [`Freshness::Stale`], polls are retried with backoff (at once when the
/// backend answers another call), and the first poll that succeeds again is
/// diffed like a listing after a `Resync`.
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
    /// Woken when a backend call succeeds: broken watches retry at once
    /// instead of finishing their backoff.
    reachable: Arc<tokio::sync::Notify>,
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
    /// The watch broke (or could not be established), or a poll failed;
    /// retrying in the background.
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

/// Events a [subscriber](CachingRegistry::subscribe) may fall behind by
/// before it is told it lagged: the bound a node's own event channel has.
/// Each subscriber's queue only holds the events waiting for it (a
/// broadcast channel would allocate all 1 024 slots, about 220 bytes each,
/// in every idle node).
const SUBSCRIBER_CAPACITY: usize = 1024;

#[derive(Default)]
struct NsCache {
    /// What this process's watchers of the namespace know; `None` until the
    /// first listing.
    view: Option<Reconciler>,
    entries: Entries,
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
    /// Where every applied event goes, once someone [subscribed](CachingRegistry::subscribe).
    subscribers: Option<Fanout<RegistryEvent>>,
}

/// The cached results of one namespace, indexed so that an event reaches
/// the entries it can touch without visiting the others, and the oldest
/// entry is found without a scan.
#[derive(Default)]
struct Entries {
    /// Every entry, by pattern source. The source of an exact pattern is
    /// the one name it matches, so the entry an event about that name
    /// touches is one hash lookup away.
    by_pattern: HashMap<Arc<str>, Entry>,
    /// The sources of the glob entries, by the literal prefix of their
    /// pattern (empty for `*`): an event about a name visits the glob
    /// entries whose prefix starts the name. Glob entries are few.
    globs: HashMap<Box<str>, HashSet<Arc<str>>>,
    /// How many glob entries have a literal prefix of each length: the
    /// prefixes of a name worth looking up in `globs`.
    prefix_lens: BTreeMap<usize, usize>,
    /// Sources in insertion order, with the stamp of that insertion. An
    /// entry replaced or removed since leaves its pair behind, skipped when
    /// it comes up for eviction and dropped when the queue is compacted.
    order: VecDeque<(Arc<str>, u64)>,
    /// The stamp of the next insertion.
    next_stamp: u64,
}

impl Entries {
    fn get(&self, source: &str) -> Option<&Entry> {
        self.by_pattern.get(source)
    }

    /// Runs `f` on every entry whose pattern may match `name` (`f` still
    /// has to match it): the exact entry of that name, if cached, and the
    /// glob entries whose literal prefix starts the name. Costs a hash
    /// lookup per distinct prefix length, whatever the number of entries.
    fn touching(&mut self, name: &PeerName, mut f: impl FnMut(&mut Entry)) {
        let name = name.as_str();
        if let Some(e) = self.by_pattern.get_mut(name)
            && e.pattern.is_exact()
        {
            f(e);
        }
        for &len in self.prefix_lens.keys() {
            // Ascending: once longer than the name, all are.
            let Some(prefix) = name.get(..len) else { break };
            for source in self.globs.get(prefix).into_iter().flatten() {
                if let Some(e) = self.by_pattern.get_mut(source) {
                    f(e);
                }
            }
        }
    }

    /// Every entry, for the rare passes that concern them all (a watch
    /// re-established, a poll of a namespace that cannot be watched).
    fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.by_pattern.values_mut()
    }

    /// Stores `entry` under `source` (replacing an entry of the same
    /// pattern), first evicting the oldest entries to keep fewer than `max`
    /// others. Amortized O(1): each insertion queues one pair, and each pair
    /// is popped or compacted away once.
    fn insert(&mut self, source: Arc<str>, mut entry: Entry, max: usize) {
        self.remove(&source);
        while self.by_pattern.len() >= max.max(1) {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            if self
                .by_pattern
                .get(&oldest)
                .is_some_and(|e| e.stamp == stamp)
            {
                self.remove(&oldest);
            }
        }
        entry.stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.push_back((source.clone(), entry.stamp));
        if !entry.pattern.is_exact() {
            let prefix = entry.pattern.literal_prefix();
            self.globs
                .entry(prefix.into())
                .or_default()
                .insert(source.clone());
            *self.prefix_lens.entry(prefix.len()).or_default() += 1;
        }
        self.by_pattern.insert(source, entry);
        // Pairs left by replaced entries: drop them once they outnumber the
        // live ones, which takes as many insertions as the pass costs.
        if self.order.len() > 2 * self.by_pattern.len() + 16 {
            let live = &self.by_pattern;
            self.order
                .retain(|(source, stamp)| live.get(source).is_some_and(|e| e.stamp == *stamp));
        }
    }

    fn remove(&mut self, source: &str) {
        let Some(entry) = self.by_pattern.remove(source) else {
            return;
        };
        if entry.pattern.is_exact() {
            return;
        }
        let prefix = entry.pattern.literal_prefix();
        if let Some(sources) = self.globs.get_mut(prefix) {
            sources.remove(source);
            if sources.is_empty() {
                self.globs.remove(prefix);
            }
        }
        if let Some(n) = self.prefix_lens.get_mut(&prefix.len()) {
            *n -= 1;
            if *n == 0 {
                self.prefix_lens.remove(&prefix.len());
            }
        }
    }

    fn clear(&mut self) {
        self.by_pattern.clear();
        self.globs.clear();
        self.prefix_lens.clear();
        self.order.clear();
    }
}

struct Entry {
    pattern: Pattern,
    records: Records,
    valid_until: Instant,
    /// Its insertion in [`Entries::order`].
    stamp: u64,
    /// When the backend was asked for `records` (the start of the lookup,
    /// or of the poll they were last taken from).
    as_of: Instant,
}

impl Entry {
    fn new(
        pattern: Pattern,
        records: Vec<PeerRecord>,
        valid_until: Instant,
        as_of: Instant,
    ) -> Self {
        Entry {
            pattern,
            records: Records::new(records),
            valid_until,
            stamp: 0,
            as_of,
        }
    }

    fn apply(&mut self, event: &RegistryEvent, config: &CachingConfig, now: Instant) {
        let Some(name) = event.name() else { return };
        if !self.pattern.matches(name.as_str()) {
            return;
        }
        let was_empty = self.records.is_empty();
        match event {
            RegistryEvent::Joined(r) | RegistryEvent::Updated(r) => {
                self.records.set(name, Some(r.clone()));
            }
            RegistryEvent::Left { instance, .. } | RegistryEvent::Expired { instance, .. } => {
                if self
                    .records
                    .get(name)
                    .is_some_and(|r| r.instance == *instance)
                {
                    self.records.set(name, None);
                }
            }
            RegistryEvent::Resync => {}
        }
        if was_empty && !self.records.is_empty() {
            self.valid_until = now + config.max_age;
        }
    }
}

/// Below this many records, an entry is changed in place (an exact entry
/// holds at most one); from it on, changes wait in [`Records::pending`].
const IN_PLACE_MAX: usize = 16;

/// The records of an entry, sorted by name. A change costs O(log n) and
/// never copies the records: a large result (the `*` of a whole namespace)
/// keeps its changes aside until a lookup asks for it, which then builds
/// the new sorted vector once, however many changes came in between.
struct Records {
    /// The last snapshot taken in or handed out, sorted by name.
    base: Arc<Vec<PeerRecord>>,
    /// What changed since `base`, by name (`None`: the name is gone).
    /// Always empty while `base` is small: small results change in place.
    pending: BTreeMap<PeerName, Option<PeerRecord>>,
    /// `base` with `pending` applied, built by the first lookup that needs
    /// it (under the read lock, hence the cell), taken in as the new `base`
    /// by the next change. Only ever set while `pending` is not empty.
    merged: OnceLock<Arc<Vec<PeerRecord>>>,
    /// Number of records.
    len: usize,
}

impl Records {
    /// `records` must be sorted by name.
    fn new(records: Vec<PeerRecord>) -> Self {
        Records {
            len: records.len(),
            base: Arc::new(records),
            pending: BTreeMap::new(),
            merged: OnceLock::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The records, sorted by name, shared: O(1) unless the entry changed
    /// since the last snapshot, O(n) once then.
    fn snapshot(&self) -> Arc<Vec<PeerRecord>> {
        if self.pending.is_empty() {
            return self.base.clone();
        }
        self.merged
            .get_or_init(|| Arc::new(merge(&self.base, &self.pending, self.len)))
            .clone()
    }

    /// The record of `name`, if the entry holds one.
    fn get(&self, name: &PeerName) -> Option<&PeerRecord> {
        match self.pending.get(name) {
            Some(change) => change.as_ref(),
            None => self
                .base
                .binary_search_by(|r| r.name.cmp(name))
                .ok()
                .map(|i| &self.base[i]),
        }
    }

    /// Sets the record of `name` (`None` removes it).
    fn set(&mut self, name: &PeerName, record: Option<PeerRecord>) {
        let had = self.get(name).is_some();
        let has = record.is_some();
        if let Some(merged) = self.merged.take() {
            // A lookup built the merged records since the last change: start from them.
            self.base = merged;
            self.pending.clear();
        }
        if self.pending.is_empty() && self.base.len() < IN_PLACE_MAX {
            // Small: copying it (if a lookup still holds it) costs no more
            // than the map would.
            let base = Arc::make_mut(&mut self.base);
            match (base.binary_search_by(|r| r.name.cmp(name)), record) {
                (Ok(i), Some(r)) => base[i] = r,
                (Err(i), Some(r)) => base.insert(i, r),
                (Ok(i), None) => {
                    base.remove(i);
                }
                (Err(_), None) => {}
            }
        } else {
            self.pending.insert(name.clone(), record);
        }
        self.len = self.len + usize::from(has) - usize::from(had);
    }
}

/// `base` (sorted by name) with `changes` applied, `len` records.
fn merge(
    base: &[PeerRecord],
    changes: &BTreeMap<PeerName, Option<PeerRecord>>,
    len: usize,
) -> Vec<PeerRecord> {
    let mut out = Vec::with_capacity(len);
    let mut changes = changes.iter().peekable();
    for r in base {
        while let Some((_, change)) = changes.next_if(|(name, _)| **name < r.name) {
            out.extend(change.iter().cloned());
        }
        match changes.next_if(|(name, _)| **name == r.name) {
            Some((_, change)) => out.extend(change.iter().cloned()),
            None => out.push(r.clone()),
        }
    }
    for (_, change) in changes {
        out.extend(change.iter().cloned());
    }
    out
}

impl NsCache {
    /// Applies an event the view let through to the entries it touches,
    /// and keeps it for replay onto concurrent fetches. O(1) in the number
    /// of exact entries (see [`Entries::touching`]).
    fn apply(&mut self, event: RegistryEvent, config: &CachingConfig, now: Instant) {
        if let Some(name) = event.name() {
            self.entries
                .touching(name, |entry| entry.apply(&event, config, now));
        }
        if let Some(tx) = &mut self.subscribers {
            // A lagging subscriber is told by its queue.
            tx.send(&event);
        }
        self.seq += 1;
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, event));
    }

    /// In a polled namespace: every entry older than the listing taken at
    /// `taken` becomes the view's answer for its pattern. (Events keep
    /// entries in step with the view, but an entry fetched between two polls
    /// may hold a change the view has not seen, or miss one it will never
    /// see as a change; the next poll makes it the view's again.)
    ///
    /// This visits every entry, and lists the view for each: it runs once
    /// per poll (every [`CachingConfig::with_poll_interval`]), not per event.
    fn rebase_entries(&mut self, taken: Instant, config: &CachingConfig, now: Instant) {
        let Some(view) = self.view.as_ref() else {
            return;
        };
        for entry in self.entries.values_mut() {
            if entry.as_of >= taken {
                continue;
            }
            entry.as_of = taken;
            let records = view.matching(&entry.pattern);
            if *entry.records.snapshot() != records {
                if entry.records.is_empty() {
                    entry.valid_until = now + config.max_age;
                }
                entry.records = Records::new(records);
            }
        }
    }

    /// Starts a new epoch: fetches under way can no longer be cached as hits.
    fn new_epoch(&mut self) {
        self.recent.clear();
        self.epoch += 1;
        self.seq = 0;
    }

    /// Does `records` hold a record that is only suspect (see [`Reconciler`])?
    fn serves_suspect(&self, records: &[PeerRecord]) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| v.has_suspects() && records.iter().any(|r| v.is_suspect(r)))
    }

    /// Adds the suspect records matching `pattern` that `records` (a fresh
    /// answer) lacks: a registry that lost its data must not make live names
    /// vanish. While no watch is live (a registry restarted empty is
    /// answering before the watch is back), names the view holds without
    /// having heard of their removal become suspect first (see
    /// [`Reconciler::suspect_absent`]); with a live watch the backend's
    /// answer stands.
    fn add_suspects(
        &mut self,
        pattern: &Pattern,
        records: &mut Vec<PeerRecord>,
        now: Instant,
    ) -> bool {
        if !self.synced
            && let Some(view) = self.view.as_mut()
            && view.suspect_absent(pattern, records, now)
        {
            tracing::debug!(%pattern, "a lookup lacks names this process knows alive; keeping them until a listing settles them");
        }
        let Some(view) = self.view.as_ref().filter(|v| v.has_suspects()) else {
            return false;
        };
        let mut added = false;
        for r in view.suspect_records() {
            if !pattern.matches(r.name.as_str()) {
                continue;
            }
            if let Err(i) = records.binary_search_by(|x| x.name.cmp(&r.name)) {
                records.insert(i, r.clone());
                added = true;
            }
        }
        added
    }

    /// Turns every entry into a stale-only answer. This visits every entry:
    /// it runs once each time the watch is (re)established.
    fn invalidate_entries(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            e.valid_until = now;
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
                reachable: Arc::new(tokio::sync::Notify::new()),
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
                    let records = entry.records.snapshot();
                    if nsc.synced && now < entry.valid_until {
                        shared.hits.fetch_add(1, Ordering::Relaxed);
                        let freshness = if nsc.serves_suspect(&records) {
                            Freshness::Stale
                        } else {
                            Freshness::Cached
                        };
                        return Ok(CachedLookup { records, freshness });
                    }
                    stale = Some(records);
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
            Ok(records) => {
                let suspect = read(&shared.cache)
                    .get(ns)
                    .is_some_and(|nsc| nsc.serves_suspect(&records));
                Ok(CachedLookup {
                    records,
                    freshness: if suspect {
                        Freshness::Stale
                    } else {
                        Freshness::Fetched
                    },
                })
            }
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

    /// The events of `ns` as this cache applies them, reconciled like
    /// [`watch`](Registry::watch) (never `Resync`; a name the backend lost is
    /// `Expired` once, after the grace, if its owner does not re-publish it).
    /// An event reaches the receiver after the cache has it, so a lookup made
    /// on it already sees the change. One backend watch (or, for a backend
    /// that cannot watch, one poll every [`CachingConfig::with_poll_interval`])
    /// serves the cache and every subscriber; it is started here if it is
    /// not running, and this waits (up to the lookup timeout) for its first
    /// attempt, so that no change after the return is missed when the
    /// backend is reachable.
    ///
    /// A subscription that falls more than 1 024 events behind gets
    /// [`RecvError::Lagged`]: list the
    /// namespace again to catch up. It holds no memory while no event waits
    /// for it.
    pub async fn subscribe(&self, ns: &Namespace) -> Subscription<RegistryEvent> {
        let rx = {
            let mut cache = write(&self.shared.cache);
            let nsc = cache.entry(ns.clone()).or_default();
            nsc.subscribers
                .get_or_insert_with(|| Fanout::new(SUBSCRIBER_CAPACITY))
                .subscribe()
        };
        if let Some(mut state) = self.ensure_watch(ns) {
            let _ = tokio::time::timeout(
                self.shared.config.lookup_timeout,
                state.wait_for(|s| *s != WatchState::Connecting),
            )
            .await;
        }
        rx
    }

    /// Stops serving every cached result in `ns` that could hold `name` as a
    /// hit, so the next lookup asks the backend. Call it when a cached address
    /// turned out stale. (The old answer is still served, flagged stale, if the
    /// backend then fails.)
    pub fn invalidate(&self, ns: &Namespace, name: &PeerName) {
        let now = Instant::now();
        let mut cache = write(&self.shared.cache);
        if let Some(nsc) = cache.get_mut(ns) {
            nsc.entries.touching(name, |e| {
                if e.pattern.matches(name.as_str()) {
                    e.valid_until = now;
                }
            });
        }
    }

    /// Forgets everything cached.
    pub fn invalidate_all(&self) {
        let mut cache = write(&self.shared.cache);
        for nsc in cache.values_mut() {
            nsc.entries.clear();
        }
    }

    /// True while the watch on `ns` is delivering events (cached answers are
    /// exact), or, for a backend that cannot watch, while its polls succeed
    /// (cached answers are at most one poll interval old).
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
        let task = reconciled_watch(
            Arc::downgrade(&self.shared),
            ns.clone(),
            self.shared.stop.subscribe(),
            CacheTarget { state: state_tx },
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
    let asked = Instant::now();
    let result = match tokio::time::timeout(
        shared.config.lookup_timeout,
        shared.backend.lookup(ns, &pattern),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: crate::Operation::RegistryCall,
            after: shared.config.lookup_timeout,
        }),
    };
    shared.answered(&result);
    let out = result.map(|mut records| {
        records.sort_by(|a, b| a.name.cmp(&b.name));
        let now = Instant::now();
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
        if nsc.add_suspects(&pattern, &mut records, now) {
            tracing::debug!(namespace = %ns, %pattern, "answer keeps names the registry lost until their owners re-publish");
        }
        let mut entry = Entry::new(pattern.clone(), records, now, asked);
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
            let records = entry.records.snapshot();
            nsc.entries
                .insert(src.clone(), entry, shared.config.max_entries);
            records
        } else {
            // Keep it for stale serving only: it is not valid as a cache hit.
            let records = entry.records.snapshot();
            nsc.entries
                .insert(src.clone(), entry, shared.config.max_entries);
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

/// Where a reconciled watch of one namespace delivers: the cache's own
/// entries, or one stream handed out by [`Registry::watch`]. Each method
/// runs the [`Reconciler`] step and delivers its output in one go, so that
/// events reach the target in the order the view produced them.
trait Target<R>: Send + 'static {
    /// A watch was (re)established and `listing` taken after it.
    fn rebase(&mut self, shared: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>);
    /// The backend lost events ([`RegistryEvent::Resync`]); `listing` follows it.
    fn resync(&mut self, shared: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>);
    /// A suspect's grace is over; `listing` decides.
    fn recheck(&mut self, shared: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>);
    /// A poll of a backend that cannot watch listed `listing`, asked at
    /// `taken`; the first poll (and the first after a failed one) is a
    /// [`rebase`](Self::rebase) instead.
    fn poll(
        &mut self,
        shared: &SharedState<R>,
        ns: &Namespace,
        listing: Vec<PeerRecord>,
        taken: Instant,
    );
    /// The backend cannot watch (`why`): the namespace is polled every `interval`.
    fn polling(&mut self, ns: &Namespace, interval: Duration, why: &str);
    /// An ordinary backend event.
    fn deliver(&mut self, shared: &SharedState<R>, ns: &Namespace, event: RegistryEvent);
    /// When the earliest suspect's grace ends.
    fn next_deadline(&self, shared: &SharedState<R>, ns: &Namespace) -> Option<Instant>;
    /// The watch broke or could not be (re)established. Returns whether to
    /// keep trying.
    fn down(&mut self, shared: &SharedState<R>, ns: &Namespace, error: Option<&Error>) -> bool;
    /// Resolves when nobody wants the output any more.
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

/// Runs one namespace's reconciled watch into `target`, re-establishing the
/// backend's watch with backoff whenever it breaks, or polling the namespace
/// if the backend cannot watch.
///
/// Every (re)established watch and every [`RegistryEvent::Resync`] is
/// followed by a listing of the namespace, which the [`Reconciler`] diffs
/// against what the target was told: it gets ordinary events for what
/// changed meanwhile, never a `Resync`, and a name that vanished is reported
/// `Expired` once, after [`CachingConfig::with_resync_grace`], if its owner did not
/// re-publish it by then.
async fn reconciled_watch<R: Registry, T: Target<R>>(
    weak: Weak<SharedState<R>>,
    ns: Namespace,
    mut stop: tokio::sync::watch::Receiver<()>,
    mut target: T,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let max_backoff = shared.config.max_backoff;
        let attempt = tokio::select! {
            r = shared.backend.watch(&ns) => r,
            _ = stop.changed() => return,
            _ = target.closed() => return,
        };
        if let Err(Error::Unsupported(why)) = &attempt {
            let interval = shared.config.poll_interval.max(MIN_POLL_INTERVAL);
            target.polling(&ns, interval, why);
            drop(shared);
            poll_namespace(&weak, &ns, &mut stop, &mut target).await;
            return;
        }
        let established = match attempt {
            Ok(stream) => match shared.list(&ns).await {
                Ok(listing) => {
                    target.rebase(&shared, &ns, listing);
                    Ok(stream)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match established {
            Ok(mut stream) => {
                drop(shared);
                backoff = Duration::from_millis(50);
                tracing::debug!(namespace = %ns, "registry watch established");
                follow_stream(&weak, &ns, &mut stream, &mut stop, &mut target).await;
                let Some(shared) = weak.upgrade() else { return };
                if !target.down(&shared, &ns, None) {
                    return;
                }
            }
            Err(e) => {
                if !target.down(&shared, &ns, Some(&e)) {
                    return;
                }
                tracing::warn!(namespace = %ns, error = %e, retry_in = ?backoff, "cannot watch registry");
            }
        }
        if stop.has_changed().is_err() {
            return;
        }
        let Some(shared) = weak.upgrade() else { return };
        let reachable = shared.reachable.clone().notified_owned();
        drop(shared);
        tokio::pin!(reachable);
        reachable.as_mut().enable();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            // The backend answered a call: no need to wait out the backoff.
            _ = &mut reachable => {}
            _ = stop.changed() => return,
            _ = target.closed() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Lists `ns` every poll interval and feeds the diffs into `target`, for a
/// backend that cannot watch. A failed poll is a broken watch: the target is
/// told it is down, polls are retried with backoff (cut short when the
/// backend answers another call), and the first one that succeeds again is a
/// rebase. Returns when stopped, when nobody wants the output, or when the
/// target gives up (a [`watch`](Registry::watch) stream whose first poll failed).
async fn poll_namespace<R: Registry, T: Target<R>>(
    weak: &Weak<SharedState<R>>,
    ns: &Namespace,
    stop: &mut tokio::sync::watch::Receiver<()>,
    target: &mut T,
) {
    let initial_backoff = Duration::from_millis(50);
    let mut backoff = initial_backoff;
    // Whether the last poll succeeded; `None` before the first one.
    let mut healthy: Option<bool> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let interval = shared.config.poll_interval.max(MIN_POLL_INTERVAL);
        let taken = Instant::now();
        let listing = tokio::select! {
            r = shared.list(ns) => r,
            _ = stop.changed() => return,
            _ = target.closed() => return,
        };
        shared.answered(&listing);
        let wait = match listing {
            Ok(listing) => {
                match healthy {
                    Some(true) => target.poll(&shared, ns, listing, taken),
                    Some(false) => {
                        tracing::info!(namespace = %ns, "registry reachable again; namespace listed and reconciled");
                        target.rebase(&shared, ns, listing);
                    }
                    None => target.rebase(&shared, ns, listing),
                }
                healthy = Some(true);
                backoff = initial_backoff;
                interval
            }
            Err(e) => {
                if !target.down(&shared, ns, Some(&e)) {
                    return;
                }
                if healthy == Some(false) {
                    tracing::debug!(namespace = %ns, error = %e, retry_in = ?backoff, "registry poll failed again");
                } else {
                    tracing::warn!(namespace = %ns, error = %e, retry_in = ?backoff, "registry poll failed; serving cached answers and retrying");
                }
                healthy = Some(false);
                let wait = backoff;
                backoff = (backoff * 2).min(shared.config.max_backoff.max(initial_backoff));
                wait
            }
        };
        let reachable = shared.reachable.clone().notified_owned();
        drop(shared);
        tokio::pin!(reachable);
        reachable.as_mut().enable();
        let after_failure = healthy == Some(false);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // The backend answered a call: no need to wait out the backoff.
            _ = &mut reachable, if after_failure => {}
            _ = stop.changed() => return,
            _ = target.closed() => return,
        }
    }
}

/// Feeds one established backend watch into `target` until it fails or
/// ends, listing again on `Resync` and when a suspect's grace is over.
async fn follow_stream<R: Registry, T: Target<R>>(
    weak: &Weak<SharedState<R>>,
    ns: &Namespace,
    stream: &mut BoxStream<'static, Result<RegistryEvent>>,
    stop: &mut tokio::sync::watch::Receiver<()>,
    target: &mut T,
) {
    // After a failed listing for a recheck, wait before the next one.
    let mut not_before: Option<Instant> = None;
    loop {
        let deadline = {
            let Some(shared) = weak.upgrade() else { return };
            let due = target.next_deadline(&shared, ns);
            due.map(|d| not_before.map_or(d, |nb| nb.max(d)))
        };
        let recheck = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => futures::future::pending().await,
            }
        };
        let next = tokio::select! {
            n = stream.next() => Some(n),
            _ = recheck => None,
            _ = stop.changed() => return,
            _ = target.closed() => return,
        };
        let Some(shared) = weak.upgrade() else { return };
        match next {
            None => match shared.list(ns).await {
                Ok(listing) => {
                    not_before = None;
                    target.recheck(&shared, ns, listing);
                }
                Err(e) => {
                    tracing::debug!(namespace = %ns, error = %e, "cannot list the namespace to settle vanished names; later");
                    not_before = Some(Instant::now() + shared.config.retry_after);
                }
            },
            Some(Some(Ok(RegistryEvent::Resync))) => match shared.list(ns).await {
                Ok(listing) => {
                    tracing::info!(namespace = %ns, "registry lost events; namespace listed again and reconciled");
                    target.resync(&shared, ns, listing);
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "registry lost events and cannot be listed; re-establishing the watch");
                    return;
                }
            },
            Some(Some(Ok(event))) => target.deliver(&shared, ns, event),
            Some(Some(Err(e))) => {
                tracing::warn!(namespace = %ns, error = %e, "registry watch failed; re-establishing");
                return;
            }
            Some(None) => {
                tracing::warn!(namespace = %ns, "registry watch ended; re-establishing");
                return;
            }
        }
    }
}

/// Logs an `Expired` the view made up after a grace.
fn log_settled(ns: &Namespace, events: &[RegistryEvent]) {
    for ev in events {
        if let RegistryEvent::Expired { name, instance } = ev {
            tracing::info!(namespace = %ns, %name, %instance, "name did not come back after the registry lost it; reporting it expired");
        }
    }
}

/// The cache's own target: entries are patched, lookups see the suspects.
struct CacheTarget {
    state: tokio::sync::watch::Sender<WatchState>,
}

impl CacheTarget {
    fn apply_all<R>(
        shared: &SharedState<R>,
        nsc: &mut NsCache,
        events: Vec<RegistryEvent>,
        now: Instant,
    ) {
        for ev in events {
            nsc.apply(ev, &shared.config, now);
        }
    }
}

impl<R: Registry> Target<R> for CacheTarget {
    fn rebase(&mut self, shared: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>) {
        let now = Instant::now();
        let mut cache = write(&shared.cache);
        let nsc = cache.entry(ns.clone()).or_default();
        // Entries fetched while unsynced may have missed events: they are no
        // longer hits, but stay as stale answers for outages.
        nsc.invalidate_entries(now);
        nsc.new_epoch();
        let events = match nsc.view.as_mut() {
            Some(view) => view.resync(listing, now),
            None => {
                nsc.view = Some(Reconciler::new(listing, shared.config.resync_grace));
                Vec::new()
            }
        };
        Self::apply_all(shared, nsc, events, now);
        nsc.synced = true;
        self.state.send_replace(WatchState::Synced);
    }

    fn resync(&mut self, shared: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>) {
        // Entries stay hits, patched with the diff; fetches under way are
        // not cached.
        let now = Instant::now();
        let mut cache = write(&shared.cache);
        let nsc = cache.entry(ns.clone()).or_default();
        nsc.new_epoch();
        let events = match nsc.view.as_mut() {
            Some(view) => view.resync(listing, now),
            None => Vec::new(),
        };
        Self::apply_all(shared, nsc, events, now);
    }

    fn recheck(&mut self, shared: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>) {
        let now = Instant::now();
        let mut cache = write(&shared.cache);
        let Some(nsc) = cache.get_mut(ns) else { return };
        let events = match nsc.view.as_mut() {
            Some(view) => view.recheck(listing, now),
            None => return,
        };
        log_settled(ns, &events);
        Self::apply_all(shared, nsc, events, now);
    }

    fn poll(
        &mut self,
        shared: &SharedState<R>,
        ns: &Namespace,
        listing: Vec<PeerRecord>,
        taken: Instant,
    ) {
        let now = Instant::now();
        let mut cache = write(&shared.cache);
        let nsc = cache.entry(ns.clone()).or_default();
        let events = match nsc.view.as_mut() {
            Some(view) => view.poll(listing, now),
            None => {
                nsc.view = Some(Reconciler::new(listing, shared.config.resync_grace));
                Vec::new()
            }
        };
        Self::apply_all(shared, nsc, events, now);
        nsc.rebase_entries(taken, &shared.config, now);
    }

    fn polling(&mut self, ns: &Namespace, interval: Duration, why: &str) {
        tracing::info!(namespace = %ns, ?interval, reason = %why, "registry cannot watch; polling the namespace");
    }

    fn deliver(&mut self, shared: &SharedState<R>, ns: &Namespace, event: RegistryEvent) {
        let now = Instant::now();
        let mut cache = write(&shared.cache);
        let nsc = cache.entry(ns.clone()).or_default();
        let event = match nsc.view.as_mut() {
            Some(view) => view.event(event),
            None => Some(event),
        };
        if let Some(event) = event {
            nsc.apply(event, &shared.config, now);
        }
    }

    fn next_deadline(&self, shared: &SharedState<R>, ns: &Namespace) -> Option<Instant> {
        read(&shared.cache)
            .get(ns)
            .and_then(|n| n.view.as_ref())
            .and_then(Reconciler::next_deadline)
    }

    fn down(&mut self, shared: &SharedState<R>, ns: &Namespace, _: Option<&Error>) -> bool {
        if let Some(nsc) = write(&shared.cache).get_mut(ns) {
            nsc.synced = false;
        }
        self.state.send_replace(WatchState::Broken);
        true
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        futures::future::pending()
    }
}

/// One stream of [`Registry::watch`] on the cache, with a view of its own:
/// it sees exactly the changes after `watch` returned, once each.
struct StreamTarget {
    view: Option<Reconciler>,
    tx: mpsc::UnboundedSender<Result<RegistryEvent>>,
    /// Told how the first attempt went; `None` once told.
    ready: Option<tokio::sync::oneshot::Sender<Result<()>>>,
}

impl StreamTarget {
    fn send(&self, events: Vec<RegistryEvent>) {
        for ev in events {
            let _ = self.tx.send(Ok(ev));
        }
    }
}

impl<R: Registry> Target<R> for StreamTarget {
    fn rebase(&mut self, shared: &SharedState<R>, _: &Namespace, listing: Vec<PeerRecord>) {
        let events = match self.view.as_mut() {
            Some(view) => view.resync(listing, Instant::now()),
            None => {
                self.view = Some(Reconciler::new(listing, shared.config.resync_grace));
                Vec::new()
            }
        };
        self.send(events);
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
        }
    }

    fn resync(&mut self, _: &SharedState<R>, _: &Namespace, listing: Vec<PeerRecord>) {
        if let Some(view) = self.view.as_mut() {
            let events = view.resync(listing, Instant::now());
            self.send(events);
        }
    }

    fn recheck(&mut self, _: &SharedState<R>, ns: &Namespace, listing: Vec<PeerRecord>) {
        if let Some(view) = self.view.as_mut() {
            let events = view.recheck(listing, Instant::now());
            log_settled(ns, &events);
            self.send(events);
        }
    }

    fn poll(&mut self, _: &SharedState<R>, _: &Namespace, listing: Vec<PeerRecord>, _: Instant) {
        if let Some(view) = self.view.as_mut() {
            let events = view.poll(listing, Instant::now());
            self.send(events);
        }
    }

    fn polling(&mut self, ns: &Namespace, interval: Duration, why: &str) {
        tracing::debug!(namespace = %ns, ?interval, reason = %why, "registry cannot watch; polling the namespace for a watch stream");
    }

    fn deliver(&mut self, _: &SharedState<R>, _: &Namespace, event: RegistryEvent) {
        let event = match self.view.as_mut() {
            Some(view) => view.event(event),
            None => Some(event),
        };
        if let Some(event) = event {
            let _ = self.tx.send(Ok(event));
        }
    }

    fn next_deadline(&self, _: &SharedState<R>, _: &Namespace) -> Option<Instant> {
        self.view.as_ref().and_then(Reconciler::next_deadline)
    }

    fn down(&mut self, _: &SharedState<R>, _: &Namespace, error: Option<&Error>) -> bool {
        match (self.ready.take(), error) {
            // The first attempt failed: `watch` returns the error.
            (Some(ready), Some(e)) => {
                let _ = ready.send(Err(e.clone()));
                false
            }
            (Some(ready), None) => {
                let _ = ready.send(Ok(()));
                true
            }
            (None, _) => true,
        }
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
}

impl<R> SharedState<R> {
    /// The backend answered a call (a success, or a verdict such as
    /// `NameLost`): wake broken watches out of their backoff.
    fn answered<T>(&self, result: &Result<T>) {
        if matches!(
            result,
            Ok(_) | Err(Error::NameLost { .. } | Error::NameTaken { .. })
        ) {
            self.reachable.notify_waiters();
        }
    }
}

impl<R: Registry> SharedState<R> {
    /// Every record of `ns`, straight from the backend.
    async fn list(&self, ns: &Namespace) -> Result<Vec<PeerRecord>> {
        let all = Pattern::new("*").expect("'*' is a valid pattern");
        self.backend_lookups.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.config.lookup_timeout, self.backend.lookup(ns, &all)).await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: crate::Operation::RegistryCall,
                after: self.config.lookup_timeout,
            }),
        }
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
        self.shared.answered(&result);
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
        let result = self.shared.backend.refresh(ns, name, instance, ttl).await;
        self.shared.answered(&result);
        result
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        let result = self.shared.backend.unpublish(ns, name, instance).await;
        self.shared.answered(&result);
        if result.is_ok() {
            // Read-your-writes: this handle knows the name is gone before
            // the backend's event says so (which the view then drops).
            let mut cache = write(&self.shared.cache);
            if let Some(nsc) = cache.get_mut(ns) {
                let left = RegistryEvent::Left {
                    name: name.clone(),
                    instance,
                };
                if let Some(ev) = nsc.view.as_mut().and_then(|v| v.event(left)) {
                    nsc.apply(ev, &self.shared.config, Instant::now());
                }
            }
        }
        self.invalidate(ns, name);
        result
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        let found = self.lookup_cached(ns, pattern).await?;
        Ok(Arc::unwrap_or_clone(found.records))
    }

    /// Asks the backend every time: the time left is not cached.
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        let result = self.shared.backend.lookup_leases(ns, pattern).await;
        self.shared.answered(&result);
        result
    }

    /// The namespace's events, reconciled: what the backend lost (a
    /// [`RegistryEvent::Resync`], a watch that broke and came back) comes
    /// back as ordinary events from a listing and a diff, each change once,
    /// and a name that vanished is reported `Expired` only if its owner does
    /// not re-publish it within [`CachingConfig::with_resync_grace`]. The stream
    /// never yields `Resync` and never fails once returned: while the
    /// backend is unreachable it pauses, and it ends when this cache (every
    /// clone of it) is dropped. Failing to watch at first (backend down) is
    /// the backend's error.
    ///
    /// On a backend that cannot watch, the stream is fed by polls of the
    /// namespace (see [Registries without watch](CachingRegistry#registries-without-watch)):
    /// changes arrive up to one [`CachingConfig::with_poll_interval`] late, a
    /// departure is `Expired` (a listing cannot tell it from an unpublish),
    /// and several changes of one name between two polls are one event.
    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.shared.backend.watch(ns).await;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let target = StreamTarget {
            view: None,
            tx,
            ready: Some(ready_tx),
        };
        rt.spawn(reconciled_watch(
            Arc::downgrade(&self.shared),
            ns.clone(),
            self.shared.stop.subscribe(),
            target,
        ));
        match ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Closed("registry cache")),
        }
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::PeerName;

    fn ns() -> Namespace {
        "cache-unit".parse().expect("valid namespace")
    }

    fn rec(name: &str, instance: InstanceId) -> PeerRecord {
        PeerRecord::new(ns(), name.parse().expect("valid name"), instance)
    }

    fn entry(pattern: &str, records: Vec<PeerRecord>) -> Entry {
        let now = Instant::now();
        Entry::new(
            Pattern::new(pattern).expect("valid pattern"),
            records,
            now + Duration::from_secs(60),
            now,
        )
    }

    fn names(records: &[PeerRecord]) -> Vec<&str> {
        records.iter().map(|r| r.name.as_str()).collect()
    }

    fn cache_with(patterns: &[&str]) -> NsCache {
        let mut nsc = NsCache::default();
        for p in patterns {
            nsc.entries.insert(Arc::from(*p), entry(p, Vec::new()), 100);
        }
        nsc
    }

    #[test]
    fn an_event_updates_the_exact_entry_of_its_name_only() {
        let config = CachingConfig::default();
        let now = Instant::now();
        let mut nsc = cache_with(&["a", "b"]);
        let a = rec("a", InstanceId::random());
        nsc.apply(RegistryEvent::Joined(a.clone()), &config, now);
        assert_eq!(
            *nsc.entries.get("a").unwrap().records.snapshot(),
            vec![a.clone()]
        );
        assert!(nsc.entries.get("b").unwrap().records.is_empty());
        // A departure of another instance does not remove the record.
        nsc.apply(
            RegistryEvent::Left {
                name: a.name.clone(),
                instance: InstanceId::random(),
            },
            &config,
            now,
        );
        assert_eq!(nsc.entries.get("a").unwrap().records.snapshot().len(), 1);
        nsc.apply(
            RegistryEvent::Expired {
                name: a.name.clone(),
                instance: a.instance,
            },
            &config,
            now,
        );
        assert!(nsc.entries.get("a").unwrap().records.is_empty());
        assert!(nsc.entries.get("a").unwrap().records.snapshot().is_empty());
    }

    #[test]
    fn an_event_updates_the_glob_entries_it_matches() {
        let config = CachingConfig::default();
        let now = Instant::now();
        let mut nsc = cache_with(&["*", "worker-*", "db-[0-9]", "w?rker-1", "worker-1"]);
        let w = rec("worker-1", InstanceId::random());
        nsc.apply(RegistryEvent::Joined(w.clone()), &config, now);
        let got = |nsc: &NsCache, p: &str| nsc.entries.get(p).unwrap().records.snapshot();
        for p in ["*", "worker-*", "w?rker-1", "worker-1"] {
            assert_eq!(*got(&nsc, p), vec![w.clone()], "{p}");
        }
        assert!(got(&nsc, "db-[0-9]").is_empty());
        let d = rec("db-1", InstanceId::random());
        nsc.apply(RegistryEvent::Joined(d.clone()), &config, now);
        assert_eq!(names(&got(&nsc, "*")), ["db-1", "worker-1"]);
        assert_eq!(*got(&nsc, "db-[0-9]"), vec![d]);
        assert_eq!(*got(&nsc, "worker-*"), vec![w]);
        // A removed glob leaves the index.
        nsc.entries.remove("worker-*");
        nsc.apply(
            RegistryEvent::Joined(rec("worker-2", InstanceId::random())),
            &config,
            now,
        );
        assert!(nsc.entries.get("worker-*").is_none());
        assert_eq!(names(&got(&nsc, "*")), ["db-1", "worker-1", "worker-2"]);
    }

    #[test]
    fn a_lazily_rebuilt_star_equals_a_fresh_listing_after_many_events() {
        let config = CachingConfig::default();
        let now = Instant::now();
        let instances: Vec<InstanceId> = (0..4).map(|_| InstanceId::random()).collect();
        let mut truth: BTreeMap<PeerName, PeerRecord> = BTreeMap::new();
        let initial: Vec<PeerRecord> = (0..300)
            .map(|i| rec(&format!("n{i:04}"), instances[0]))
            .collect();
        for r in &initial {
            truth.insert(r.name.clone(), r.clone());
        }
        let mut nsc = NsCache::default();
        nsc.entries
            .insert(Arc::from("*"), entry("*", initial.clone()), 100);
        let mut held = Vec::new();
        let mut x: u64 = 12345;
        for step in 0..20_000u32 {
            // A small linear congruential generator: deterministic events.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let name = format!("n{:04}", (x >> 33) % 500);
            let instance = instances[((x >> 20) % 4) as usize];
            let event = if (x >> 10).is_multiple_of(3) {
                RegistryEvent::Left {
                    name: name.parse().expect("valid name"),
                    instance,
                }
            } else {
                RegistryEvent::Joined(rec(&name, instance))
            };
            match &event {
                RegistryEvent::Joined(r) => {
                    truth.insert(r.name.clone(), r.clone());
                }
                RegistryEvent::Left { name, instance }
                    if truth.get(name).is_some_and(|r| r.instance == *instance) =>
                {
                    truth.remove(name);
                }
                _ => {}
            }
            nsc.apply(event, &config, now);
            let records = &nsc.entries.get("*").unwrap().records;
            assert_eq!(records.len, truth.len());
            if step % 997 == 0 {
                let snap = records.snapshot();
                assert_eq!(*snap, truth.values().cloned().collect::<Vec<_>>());
                held.push((snap.clone(), (*snap).clone()));
            }
        }
        let snap = nsc.entries.get("*").unwrap().records.snapshot();
        assert_eq!(*snap, truth.values().cloned().collect::<Vec<_>>());
        // Snapshots handed out never change afterwards.
        for (shared, copy) in held {
            assert_eq!(*shared, copy);
        }
    }

    #[test]
    fn eviction_drops_the_oldest_insertion_first() {
        let mut entries = Entries::default();
        let put = |entries: &mut Entries, p: &str| {
            entries.insert(Arc::from(p), entry(p, Vec::new()), 3);
        };
        put(&mut entries, "a");
        put(&mut entries, "b*");
        put(&mut entries, "c");
        // Fetched again: now the newest.
        put(&mut entries, "a");
        assert_eq!(entries.by_pattern.len(), 3);
        put(&mut entries, "d");
        assert!(entries.get("b*").is_none(), "the oldest goes first");
        assert!(entries.globs.is_empty() && entries.prefix_lens.is_empty());
        put(&mut entries, "e");
        assert!(entries.get("c").is_none());
        for p in ["a", "d", "e"] {
            assert!(entries.get(p).is_some(), "{p}");
        }
        put(&mut entries, "f");
        assert!(entries.get("a").is_none());
        // The same entry fetched again and again does not grow the queue.
        for _ in 0..1000 {
            put(&mut entries, "f");
        }
        assert_eq!(entries.by_pattern.len(), 3);
        assert!(entries.order.len() <= 2 * 3 + 16 + 1);
        put(&mut entries, "g");
        assert!(entries.get("d").is_none());
        for p in ["e", "f", "g"] {
            assert!(entries.get(p).is_some(), "{p}");
        }
    }
}
