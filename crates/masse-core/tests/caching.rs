//! CachingRegistry behaviour beyond the conformance suite: hits, coalescing,
//! negative caching, stale serving, invalidation and patching of in-flight fetches.

mod common;

use common::{TestBackend, ns, pat, publish, rec};

use std::sync::atomic::Ordering;
use std::time::Duration;

use masse_core::{CachingConfig, CachingRegistry, Error, Freshness, Registry, RegistryEvent};

/// How long a change may take to reach the cache.
const SETTLE: Duration = Duration::from_secs(2);

/// Waits until the cache's watch on `ns()` is synced (`want`) or broken.
async fn synced(cache: &CachingRegistry<TestBackend>, want: bool) {
    let what = if want {
        "the watch synced"
    } else {
        "the watch broken"
    };
    common::wait_until(what, SETTLE, async || cache.is_synced(&ns()) == want).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_lookups_hit_the_cache_and_follow_events() {
    let backend = TestBackend::default();
    let cache = CachingRegistry::new(backend.clone());
    publish(&backend, &rec("db-1")).await;

    let first = cache.lookup_cached(&ns(), &pat("db-*")).await.unwrap();
    assert_eq!(first.freshness, Freshness::Fetched);
    synced(&cache, true).await;
    // The first fetch may have raced the watch being established; after it is,
    // one more fetch and then only hits.
    let _ = cache.lookup_cached(&ns(), &pat("db-*")).await.unwrap();
    let calls = backend.lookups.load(Ordering::SeqCst);
    for _ in 0..100 {
        let hit = cache.lookup_cached(&ns(), &pat("db-*")).await.unwrap();
        assert_eq!(hit.freshness, Freshness::Cached);
        assert_eq!(hit.records.len(), 1);
    }
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls,
        "hits never reach the backend"
    );

    // A peer joining elsewhere shows up in the cached answer without a backend call.
    let joined = rec("db-2");
    publish(&backend, &joined).await;
    common::wait_until("db-2 seen from the cache", SETTLE, async || {
        cache
            .lookup_cached(&ns(), &pat("db-*"))
            .await
            .map(|l| l.records.len() == 2)
            .unwrap_or(false)
    })
    .await;
    // And leaving removes it.
    backend
        .unpublish(&ns(), &joined.name, joined.instance)
        .await
        .unwrap();
    common::wait_until("db-2 gone from the cache", SETTLE, async || {
        cache
            .lookup_cached(&ns(), &pat("db-*"))
            .await
            .map(|l| l.records.len() == 1)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls,
        "kept fresh by events, not by refetching"
    );
    let stats = cache.stats();
    assert!(stats.hits >= 100, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_are_coalesced() {
    let backend = TestBackend::default();
    backend.hold.send_replace(Some("w-*".into()));
    publish(&backend, &rec("w-1")).await;
    let cache = CachingRegistry::new(backend.clone());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache.lookup(&ns(), &pat("w-*")).await
        }));
    }
    // The backend holds its answer until every other lookup joined the first.
    common::wait_until("99 lookups join the first", SETTLE, async || {
        cache.stats().coalesced == 99
    })
    .await;
    backend.hold.send_replace(None);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().len(), 1);
    }
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        2,
        "100 concurrent lookups, one backend call (and the watch's listing of the namespace)"
    );
    let stats = cache.stats();
    assert_eq!(stats.backend_lookups, 2);
    assert_eq!(stats.coalesced, 99, "{stats:?}");
}

/// On a paused clock: a miss expires exactly after `negative_ttl`.
#[tokio::test(start_paused = true)]
async fn misses_are_cached_briefly() {
    let backend = TestBackend::default();
    let negative_ttl = Duration::from_millis(300);
    let config = CachingConfig::default().with_negative_ttl(negative_ttl);
    let cache = CachingRegistry::with_config(backend.clone(), config);
    let _ = cache.lookup(&ns(), &pat("ghost")).await.unwrap();
    synced(&cache, true).await;
    assert!(cache.lookup(&ns(), &pat("ghost")).await.unwrap().is_empty());
    let calls = backend.lookups.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert!(cache.lookup(&ns(), &pat("ghost")).await.unwrap().is_empty());
    }
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls,
        "a miss is cached"
    );
    tokio::time::advance(negative_ttl - Duration::from_millis(1)).await;
    assert!(cache.lookup(&ns(), &pat("ghost")).await.unwrap().is_empty());
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls,
        "a miss is cached for negative_ttl"
    );
    tokio::time::advance(Duration::from_millis(2)).await;
    assert!(cache.lookup(&ns(), &pat("ghost")).await.unwrap().is_empty());
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls + 1,
        "…but only for negative_ttl"
    );
    // A join is seen at once, negative entry or not.
    let g = rec("ghost");
    publish(&backend, &g).await;
    common::wait_until("the joined ghost found", SETTLE, async || {
        cache
            .lookup(&ns(), &pat("ghost"))
            .await
            .map(|v| v.len() == 1)
            .unwrap_or(false)
    })
    .await;
}

/// On a paused clock: the backend is asked again exactly `retry_after` after
/// it failed.
#[tokio::test(start_paused = true)]
async fn stale_answers_are_served_and_flagged_while_the_backend_is_down() {
    let backend = TestBackend::default();
    let retry_after = Duration::from_millis(100);
    let config = CachingConfig::default().with_retry_after(retry_after);
    let cache = CachingRegistry::with_config(backend.clone(), config);
    publish(&backend, &rec("db-1")).await;
    let _ = cache.lookup(&ns(), &pat("db-1")).await.unwrap();
    synced(&cache, true).await;
    let _ = cache.lookup(&ns(), &pat("db-1")).await.unwrap();

    backend.failing.store(true, Ordering::SeqCst);
    backend.break_watch.notify_waiters();
    synced(&cache, false).await;

    let stale = cache.lookup_cached(&ns(), &pat("db-1")).await.unwrap();
    assert_eq!(
        stale.freshness,
        Freshness::Stale,
        "backend down: last known answer, flagged"
    );
    assert_eq!(stale.records.len(), 1);
    // Within retry_after the backend is not asked again.
    let calls = backend.lookups.load(Ordering::SeqCst);
    let again = cache.lookup_cached(&ns(), &pat("db-1")).await.unwrap();
    assert_eq!(again.freshness, Freshness::Stale);
    assert_eq!(backend.lookups.load(Ordering::SeqCst), calls);
    assert!(cache.stats().stale >= 2);

    // Nothing known: the backend's error comes through.
    match cache.lookup(&ns(), &pat("unknown")).await {
        Err(Error::RegistryUnavailable { backend, .. }) => assert_eq!(backend, "test"),
        other => panic!("expected RegistryUnavailable, got {other:?}"),
    }

    // Recovery: the watch comes back and answers are fresh again.
    backend.failing.store(false, Ordering::SeqCst);
    synced(&cache, true).await;
    // The failed lookup of "unknown" holds lookups off for retry_after.
    tokio::time::advance(retry_after).await;
    let fresh = cache.lookup_cached(&ns(), &pat("db-1")).await.unwrap();
    assert_ne!(fresh.freshness, Freshness::Stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_forces_a_fresh_lookup() {
    let backend = TestBackend::default();
    let cache = CachingRegistry::new(backend.clone());
    publish(&backend, &rec("db-1")).await;
    let _ = cache.lookup(&ns(), &pat("db-1")).await.unwrap();
    synced(&cache, true).await;
    let _ = cache.lookup(&ns(), &pat("db-*")).await.unwrap();
    let _ = cache.lookup(&ns(), &pat("db-1")).await.unwrap();
    let _ = cache.lookup(&ns(), &pat("other")).await.unwrap();
    let calls = backend.lookups.load(Ordering::SeqCst);
    cache.invalidate(&ns(), &"db-1".parse().unwrap());
    let _ = cache.lookup(&ns(), &pat("db-1")).await.unwrap();
    let _ = cache.lookup(&ns(), &pat("db-*")).await.unwrap();
    let _ = cache.lookup(&ns(), &pat("other")).await.unwrap();
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls + 2,
        "both entries that could hold db-1 were dropped, 'other' was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_fetch_is_not_lost() {
    let backend = TestBackend::default();
    let cache = CachingRegistry::new(backend.clone());
    publish(&backend, &rec("n-1")).await;
    let _ = cache.lookup(&ns(), &pat("x")).await.unwrap();
    synced(&cache, true).await;

    // The backend reads its answer, then holds it; meanwhile n-2 joins, and
    // the cache has the event before the answer comes back.
    let mut events = cache.subscribe(&ns()).await;
    backend.hold.send_replace(Some("n-*".into()));
    let c2 = cache.clone();
    let fetch = tokio::spawn(async move { c2.lookup(&ns(), &pat("n-*")).await });
    common::wait_until("the backend reads its answer", SETTLE, async || {
        backend.held.load(Ordering::SeqCst) == 1
    })
    .await;
    let n2 = rec("n-2");
    publish(&backend, &n2).await;
    match tokio::time::timeout(SETTLE, events.recv()).await {
        Ok(Ok(RegistryEvent::Joined(r))) => assert_eq!(r, n2),
        other => panic!("expected n-2 to join, got {other:?}"),
    }
    let calls = backend.lookups.load(Ordering::SeqCst);
    backend.hold.send_replace(None);
    let fetched = fetch.await.unwrap().unwrap();
    assert_eq!(
        fetched.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["n-1", "n-2"],
        "the backend's answer predates the join; the event that arrived meanwhile was applied to it"
    );
    let hit = cache.lookup_cached(&ns(), &pat("n-*")).await.unwrap();
    assert_eq!(hit.freshness, Freshness::Cached);
    assert_eq!(hit.records.len(), 2);
    assert_eq!(
        backend.lookups.load(Ordering::SeqCst),
        calls,
        "served from the patched entry, not refetched"
    );
}
