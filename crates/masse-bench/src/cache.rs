//! Figure 3: `CachingRegistry` hits per second on one core.
//!
//! A `CachingRegistry` over a `MemoryRegistry` holding one record, warmed so
//! that the lookup is a hit (first lookup, wait for the watch to sync, lookup
//! again), then timed on a current-thread runtime: N calls of
//! `lookup_cached` (shares the records through an `Arc`) and N calls of the
//! trait method `Registry::lookup` (boxed future, clones the records).
//! Rounds of the two alternate; the medians are reported.

use std::hint::black_box;
use std::time::{Duration, Instant};

use masse::{
    CachingRegistry, Endpoint, Freshness, InstanceId, MemoryRegistry, NamePolicy, Namespace,
    Pattern, PeerName, PeerRecord, Protocol, Registry,
};

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
        "cache_lookup: {ROUNDS}+{ROUNDS} interleaved rounds x {} lookups, current_thread runtime",
        lookups_per_round(mode)
    )
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(lookups_per_round(mode)))
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
