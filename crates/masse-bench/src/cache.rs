//! Figure 3: `CachingRegistry` hits per second on one core.
//!
//! A `CachingRegistry` over a `MemoryRegistry` holding one record, warmed so
//! that the lookup is a hit (first lookup, wait for the watch to sync, lookup
//! again), then timed on a current-thread runtime: N calls of
//! `lookup_cached` (shares the records through an `Arc`) and N calls of the
//! trait method `Registry::lookup` (boxed future, clones the records).
//! Rounds of the two alternate; the medians are reported.
//!
//! Then the cost of applying a registry event, with 100, 10 000 and 100 000
//! names cached, either as one exact entry per name or as one `*` entry
//! holding them all. The backend is a scripted registry (fixed records, a
//! watch the bench feeds), not a `MemoryRegistry`, whose publish sweeps the
//! whole namespace and would hide the cache's cost. Each round sends a batch
//! of events (`Left` then `Joined` of names spread over the namespace) into
//! the watch and ends when a [`subscribe`](masse::CachingRegistry::subscribe)r
//! got them all, which happens after the cache applied each to its entries:
//! the figure is the whole path per event, watch stream and broadcast
//! included. Medians per event, and the ratio of the cost at 100 000 names
//! to the cost at 100 (about 1 when an event costs the same whatever the
//! cache holds). The `view_only` figures are the same path with no entry
//! cached: the part of the cost that is the watch and the view of the
//! namespace (an ordered map of every name), not the entries.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use masse::{
    CachingConfig, CachingRegistry, Endpoint, Freshness, InstanceId, MemoryRegistry, NamePolicy,
    Namespace, Pattern, PeerName, PeerRecord, Protocol, Registry, RegistryEvent, async_trait,
};
use tokio::sync::mpsc;

use crate::stats::median;
use crate::{BoxError, Figure, Mode};

const ROUNDS: usize = 5;

fn lookups_per_round(mode: Mode) -> u32 {
    match mode {
        Mode::Full => 2_000_000,
        Mode::Quick => 200_000,
    }
}

pub(crate) fn describe(mode: Mode) -> String {
    format!(
        "cache_lookup: {ROUNDS}+{ROUNDS} interleaved rounds x {} lookups, current_thread runtime; \
         event apply: {ROUNDS} rounds x {} events, {SIZES:?} names cached as exact entries or one '*'",
        lookups_per_round(mode),
        events_per_round(mode)
    )
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut figures = rt.block_on(bench(lookups_per_round(mode)))?;
    figures.extend(rt.block_on(event_figures(mode))?);
    Ok(figures)
}

async fn bench(n: u32) -> Result<Vec<Figure>, BoxError> {
    let ns: Namespace = "bench-cache".parse()?;
    let name: PeerName = "svc".parse()?;
    let record = PeerRecord::new(ns.clone(), name.clone(), InstanceId::random())
        .with_endpoint(Endpoint::new(Protocol::TCP, "127.0.0.1:4100".parse()?));
    let backend = MemoryRegistry::new();
    backend
        .publish(&record, Duration::from_secs(600), NamePolicy::Exclusive)
        .await?;
    let cache = CachingRegistry::new(backend);
    let pattern = Pattern::from(&name);

    // Warm: the first lookup starts the watch; a result fetched before the
    // watch was up is not a hit, so look up again once it is.
    cache.lookup_cached(&ns, &pattern).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.is_synced(&ns) {
        if Instant::now() > deadline {
            return Err("the cache's watch did not sync within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cache.lookup_cached(&ns, &pattern).await?;
    let probe = cache.lookup_cached(&ns, &pattern).await?;
    if probe.freshness != Freshness::Cached || probe.records.len() != 1 {
        return Err(format!(
            "warm lookup not a cache hit: {:?}, {} records",
            probe.freshness,
            probe.records.len()
        )
        .into());
    }

    let hits_before = cache.stats().hits;
    let (mut cached_rates, mut trait_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        cached_rates.push(lookup_cached_rate(&cache, &ns, &pattern, n).await?);
        trait_rates.push(trait_lookup_rate(&cache, &ns, &pattern, n).await?);
    }
    let hits = cache.stats().hits - hits_before;
    let expected = 2 * u64::from(n) * ROUNDS as u64;
    if hits != expected {
        println!("# cache_lookup: {hits} of {expected} timed lookups were cache hits");
    }

    Ok(vec![
        Figure::new(
            "cache_hit_lookups_per_sec",
            median(&cached_rates) / 1e6,
            2,
            "M/s",
        ),
        Figure::new(
            "cache_trait_lookups_per_sec",
            median(&trait_rates) / 1e6,
            2,
            "M/s",
        ),
    ])
}

/// Lookups per second through `CachingRegistry::lookup_cached`.
async fn lookup_cached_rate(
    cache: &CachingRegistry<MemoryRegistry>,
    ns: &Namespace,
    pattern: &Pattern,
    n: u32,
) -> Result<f64, BoxError> {
    let start = Instant::now();
    for _ in 0..n {
        black_box(
            cache
                .lookup_cached(black_box(ns), black_box(pattern))
                .await?,
        );
    }
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

/// Lookups per second through the `Registry` trait.
async fn trait_lookup_rate(
    cache: &CachingRegistry<MemoryRegistry>,
    ns: &Namespace,
    pattern: &Pattern,
    n: u32,
) -> Result<f64, BoxError> {
    let start = Instant::now();
    for _ in 0..n {
        black_box(Registry::lookup(cache, black_box(ns), black_box(pattern)).await?);
    }
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

/// Cached names in the event-apply bench.
const SIZES: [usize; 3] = [100, 10_000, 100_000];

fn events_per_round(mode: Mode) -> usize {
    match mode {
        Mode::Full => 2_000,
        Mode::Quick => 200,
    }
}

/// What the cache holds while events are applied.
#[derive(Debug, Clone, Copy)]
enum Cached {
    /// One exact entry per name.
    Exact,
    /// One `*` entry holding every name.
    All,
    /// No entry: what an event costs the cache's watch and view (which
    /// knows every name) before it reaches any entry, for comparison.
    Nothing,
}

impl Cached {
    fn label(self) -> &'static str {
        match self {
            Cached::Exact => "exact",
            Cached::All => "glob",
            Cached::Nothing => "view_only",
        }
    }
}

/// Figures of the event-apply bench: for each kind of cached entries and
/// each size, the median cost of one event, then the ratio of the cost at
/// the largest size to the cost at the smallest (1 when an event costs the
/// same whatever the cache holds).
async fn event_figures(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    let mut figures = Vec::new();
    for cached in [Cached::Exact, Cached::All, Cached::Nothing] {
        let mut costs = Vec::new();
        for n in SIZES {
            let cost = event_apply_cost(cached, n, events_per_round(mode)).await?;
            figures.push(Figure::new(
                format!("cache_event_apply_{}_{n}", cached.label()),
                cost,
                0,
                "ns",
            ));
            costs.push(cost);
        }
        let first = costs.first().copied().unwrap_or(f64::NAN);
        let last = costs.last().copied().unwrap_or(f64::NAN);
        figures.push(Figure::new(
            format!("cache_event_apply_{}_ratio_100k_100", cached.label()),
            last / first,
            2,
            "x",
        ));
    }
    Ok(figures)
}

/// Median nanoseconds per event, end to end: the backend's watch delivers
/// a batch of events (a `Left` then a `Joined` of cached names spread over
/// the namespace), and the batch is over when a subscriber of the cache got
/// them all, i.e. once the cache applied them to its entries.
async fn event_apply_cost(cached: Cached, n: usize, per_round: usize) -> Result<f64, BoxError> {
    let ns: Namespace = "bench-cache-events".parse()?;
    let records: Vec<PeerRecord> = (0..n)
        .map(|i| {
            let name: PeerName = format!("peer-{i:06}").parse()?;
            let endpoint = Endpoint::new(
                Protocol::TCP,
                format!("127.0.0.1:{}", 1024 + i % 60_000).parse()?,
            );
            Ok(PeerRecord::new(ns.clone(), name, InstanceId::random()).with_endpoint(endpoint))
        })
        .collect::<Result<_, BoxError>>()?;
    let backend = ScriptedRegistry::new(records.clone());
    let config = CachingConfig::default().with_max_entries(n + 16);
    let cache = CachingRegistry::with_config(backend.clone(), config);
    let mut applied = cache.subscribe(&ns).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.is_synced(&ns) {
        if Instant::now() > deadline {
            return Err("the cache's watch did not sync within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    match cached {
        Cached::Exact => {
            for r in &records {
                cache.lookup_cached(&ns, &Pattern::from(&r.name)).await?;
            }
        }
        Cached::All => {
            cache.lookup_cached(&ns, &Pattern::any()).await?;
        }
        Cached::Nothing => {}
    }

    let mut next = 0usize;
    let mut samples = Vec::new();
    // One warm-up round, then the timed ones.
    for round in 0..=ROUNDS {
        let start = Instant::now();
        for _ in 0..per_round / 2 {
            // A stride coprime with every size: the names hit are spread
            // over the whole namespace.
            let r = &records[next % n];
            next += 7919;
            backend.send(RegistryEvent::Left {
                name: r.name.clone(),
                instance: r.instance,
            });
            backend.send(RegistryEvent::Joined(r.clone()));
        }
        for _ in 0..per_round / 2 * 2 {
            applied.recv().await?;
        }
        if round > 0 {
            samples.push(start.elapsed().as_nanos() as f64 / (per_round / 2 * 2) as f64);
        }
    }

    // The cache still answers every name, from its entries.
    let all = cache.lookup_cached(&ns, &Pattern::any()).await?;
    if all.records.len() != n {
        return Err(format!(
            "cache lists {} names after the events, not {n}",
            all.records.len()
        )
        .into());
    }
    Ok(median(&samples))
}

/// A backend with fixed records whose watch streams carry what the bench sends.
#[derive(Debug, Clone)]
struct ScriptedRegistry {
    records: Arc<BTreeMap<PeerName, PeerRecord>>,
    watchers: Arc<Mutex<Vec<mpsc::UnboundedSender<masse::Result<RegistryEvent>>>>>,
}

impl ScriptedRegistry {
    fn new(records: Vec<PeerRecord>) -> Self {
        ScriptedRegistry {
            records: Arc::new(records.into_iter().map(|r| (r.name.clone(), r)).collect()),
            watchers: Arc::default(),
        }
    }

    fn send(&self, event: RegistryEvent) {
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(Ok(event.clone())).is_ok());
    }
}

#[async_trait]
impl Registry for ScriptedRegistry {
    async fn publish(&self, _: &PeerRecord, _: Duration, _: NamePolicy) -> masse::Result<()> {
        Err(masse::Error::Unsupported(
            "the bench's backend is read-only".into(),
        ))
    }

    async fn refresh(
        &self,
        _: &Namespace,
        _: &PeerName,
        _: InstanceId,
        _: Duration,
    ) -> masse::Result<()> {
        Err(masse::Error::Unsupported(
            "the bench's backend is read-only".into(),
        ))
    }

    async fn unpublish(&self, _: &Namespace, _: &PeerName, _: InstanceId) -> masse::Result<()> {
        Err(masse::Error::Unsupported(
            "the bench's backend is read-only".into(),
        ))
    }

    async fn lookup(&self, _: &Namespace, pattern: &Pattern) -> masse::Result<Vec<PeerRecord>> {
        Ok(match pattern.as_exact() {
            Some(name) => self.records.get(name).cloned().into_iter().collect(),
            None => self
                .records
                .values()
                .filter(|r| pattern.matches(r.name.as_str()))
                .cloned()
                .collect(),
        })
    }

    async fn watch(
        &self,
        _: &Namespace,
    ) -> masse::Result<BoxStream<'static, masse::Result<RegistryEvent>>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}
