//! CachingRegistry over a registry that cannot watch: the namespace is
//! polled, and each listing is diffed into the events a watch would give.
//!
//! The tests run on a paused Tokio clock (it jumps to the next timer when
//! every task waits), so "within one poll interval" is checked exactly, and
//! a test that waits in vain for an event fails at once instead of hanging.
//! Logs go to a subscriber of the test's own, on the test's thread (a
//! current-thread runtime runs every task there).

mod common;

use common::{TestBackend, ns, pat, publish, rec};

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use masse_core::Subscription;
use masse_core::{
    CachingConfig, CachingRegistry, Error, Freshness, MemoryRegistry, NamePolicy, PeerRecord,
    Registry, RegistryEvent,
};
use tokio::time::{Instant, timeout};

const POLL: Duration = Duration::from_millis(200);
const GRACE: Duration = Duration::from_secs(3);
const LONG: Duration = Duration::from_secs(600);
/// One poll interval, and a hair: a timer due with the poll may fire first.
const WITHIN: Duration = Duration::from_millis(210);

fn config() -> CachingConfig {
    CachingConfig::default()
        .with_poll_interval(POLL)
        .with_resync_grace(GRACE)
}

fn expired(r: &PeerRecord) -> RegistryEvent {
    RegistryEvent::Expired {
        name: r.name.clone(),
        instance: r.instance,
    }
}

/// The next event, which must come within `within` of now.
async fn next_within(rx: &mut Subscription<RegistryEvent>, within: Duration) -> RegistryEvent {
    match timeout(within, rx.recv()).await {
        Ok(Ok(ev)) => ev,
        Ok(Err(e)) => panic!("subscription failed: {e}"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// Asserts that nothing arrives for `wait` (several polls).
async fn quiet(rx: &mut Subscription<RegistryEvent>, wait: Duration) {
    if let Ok(ev) = timeout(wait, rx.recv()).await {
        panic!("expected no event, got {ev:?}");
    }
}

/// What the code under test logged on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

impl Logs {
    /// Installs a subscriber that records every event of this thread.
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let guard = tracing::subscriber::set_default(logs.clone());
        (logs, guard)
    }

    /// (target, message) of the events at `level` or more severe.
    fn at_least(&self, level: tracing::Level) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _, _)| *l <= level)
            .map(|(_, t, m)| (t.clone(), m.clone()))
            .collect()
    }

    /// Events of the cache (any level) whose message contains `text`.
    fn cache_lines(&self, text: &str) -> usize {
        self.at_least(tracing::Level::TRACE)
            .iter()
            .filter(|(t, m)| t.starts_with("masse_core::caching") && m.contains(text))
            .count()
    }
}

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_owned(), message));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Joins, updates and departures of other processes arrive as events within
/// one poll interval, each once, with nothing between changes; a departure
/// through the cache itself is `Left`. No warning, and one line saying the
/// namespace is polled.
#[tokio::test(start_paused = true)]
async fn polls_turn_changes_into_events_once_each() {
    let (logs, _guard) = Logs::capture();
    let backend = TestBackend::without_watch();
    let cache = CachingRegistry::with_config(backend.clone(), config());
    let anchor = rec("other");
    publish(&backend, &anchor).await;
    let mut events = cache.subscribe(&ns()).await;
    assert!(
        cache.is_synced(&ns()),
        "the first poll makes the namespace synced"
    );
    quiet(&mut events, POLL * 3).await;

    // Another process publishes a: Joined, within one interval.
    let a = rec("a");
    publish(&backend, &a).await;
    assert_eq!(
        next_within(&mut events, WITHIN).await,
        RegistryEvent::Joined(a.clone())
    );
    quiet(&mut events, POLL * 3).await;

    // It changes its metadata, twice between two polls: one Updated, with
    // the last version.
    let mut a2 = a.clone().with_metadata("zone", "b");
    publish(&backend, &a2).await;
    a2.metadata.insert("zone".into(), "c".into());
    publish(&backend, &a2).await;
    assert_eq!(
        next_within(&mut events, WITHIN).await,
        RegistryEvent::Updated(a2.clone())
    );

    // Another instance takes the name over: Updated, not a departure.
    let a3 = rec("a");
    publish(&backend, &a3).await;
    assert_eq!(
        next_within(&mut events, WITHIN).await,
        RegistryEvent::Updated(a3.clone())
    );
    quiet(&mut events, POLL * 3).await;

    // It unpublishes (in another process): a listing cannot tell that from
    // an expiry, so it is Expired, once.
    backend
        .unpublish(&ns(), &a3.name, a3.instance)
        .await
        .unwrap();
    assert_eq!(next_within(&mut events, WITHIN).await, expired(&a3));
    quiet(&mut events, POLL * 3).await;

    // A record whose ttl runs out: Expired within one interval of the ttl.
    let short = rec("short");
    backend
        .publish(&short, Duration::from_millis(500), NamePolicy::Takeover)
        .await
        .unwrap();
    assert_eq!(
        next_within(&mut events, WITHIN).await,
        RegistryEvent::Joined(short.clone())
    );
    assert_eq!(
        next_within(&mut events, Duration::from_millis(500) + WITHIN).await,
        expired(&short)
    );
    quiet(&mut events, POLL * 3).await;

    // b leaves through this very cache: Left at once, and no Expired later.
    let b = rec("b");
    cache.publish(&b, LONG, NamePolicy::Takeover).await.unwrap();
    assert_eq!(
        next_within(&mut events, WITHIN).await,
        RegistryEvent::Joined(b.clone())
    );
    cache.unpublish(&ns(), &b.name, b.instance).await.unwrap();
    assert_eq!(
        next_within(&mut events, Duration::ZERO).await,
        RegistryEvent::Left {
            name: b.name.clone(),
            instance: b.instance
        }
    );
    quiet(&mut events, POLL * 5).await;

    assert!(
        logs.at_least(tracing::Level::WARN).is_empty(),
        "no warning: {:?}",
        logs.at_least(tracing::Level::WARN)
    );
    assert_eq!(
        logs.cache_lines("polling"),
        1,
        "{:?}",
        logs.at_least(tracing::Level::TRACE)
    );
    assert_eq!(
        logs.at_least(tracing::Level::TRACE)
            .iter()
            .filter(|(t, _)| t.starts_with("masse_core::caching"))
            .count(),
        1,
        "the cache says it polls, and nothing else: {:?}",
        logs.at_least(tracing::Level::TRACE)
    );
}

/// Cached lookups are served from the last poll: no backend round trip, and
/// a change shows within one interval.
#[tokio::test(start_paused = true)]
async fn cached_lookups_see_changes_within_one_interval() {
    let backend = TestBackend::without_watch();
    let cache = CachingRegistry::with_config(backend.clone(), config());
    let anchor = rec("other");
    publish(&backend, &anchor).await;
    let first = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(*first.records, vec![anchor.clone()]);
    let hit = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(hit.freshness, Freshness::Cached);
    let exact = cache.lookup_cached(&ns(), &pat("other")).await.unwrap();
    assert_eq!(*exact.records, vec![anchor.clone()]);

    let lookups = backend.lookups.load(Ordering::SeqCst);
    let start = Instant::now();
    // Polls and a sampler both wake on 10 ms boundaries: a change is seen
    // at most one interval (and one sample) after it was made.
    let bound = POLL + Duration::from_millis(10);

    // A joins: visible within one interval, from cache.
    let a = rec("a");
    publish(&backend, &a).await;
    common::wait_until("a seen from the cache", bound, async || {
        let got = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
        assert_eq!(got.freshness, Freshness::Cached);
        got.records.contains(&a)
    })
    .await;

    // A leaves: gone within one interval.
    backend.unpublish(&ns(), &a.name, a.instance).await.unwrap();
    common::wait_until("a gone from the cache", bound, async || {
        let got = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
        assert_eq!(got.freshness, Freshness::Cached);
        *got.records == vec![anchor.clone()]
    })
    .await;
    let exact = cache.lookup_cached(&ns(), &pat("other")).await.unwrap();
    assert_eq!(
        (exact.freshness, &*exact.records),
        (Freshness::Cached, &vec![anchor])
    );

    // All of that from the polls alone: one listing per interval.
    let spent = backend.lookups.load(Ordering::SeqCst) - lookups;
    let polls = (start.elapsed().as_millis() / POLL.as_millis()) as u64 + 1;
    assert!(
        spent <= polls,
        "{spent} backend lookups in {:?}",
        start.elapsed()
    );
}

/// A lookup that fetched between two polls, while the view saw nothing
/// change, is made the poll's answer by the next poll: a name that left and
/// came back around it is not lost for good.
#[tokio::test(start_paused = true)]
async fn an_entry_fetched_between_polls_is_rebased_on_the_next_one() {
    let backend = TestBackend::without_watch();
    let cache = CachingRegistry::with_config(backend.clone(), config());
    let a = rec("a");
    let anchor = rec("other");
    publish(&backend, &anchor).await;
    publish(&backend, &a).await;
    let mut events = cache.subscribe(&ns()).await;
    // a is away for a moment between two polls, and a lookup (not cached
    // yet) catches it away.
    backend.unpublish(&ns(), &a.name, a.instance).await.unwrap();
    let away = cache.lookup_cached(&ns(), &pat("a*")).await.unwrap();
    assert!(away.records.is_empty());
    publish(&backend, &a).await;
    // The view never saw it go: no event; the entry follows the next poll.
    common::wait_until(
        "a back in the entry after the next poll",
        POLL + Duration::from_millis(10),
        async || {
            *cache
                .lookup_cached(&ns(), &pat("a*"))
                .await
                .unwrap()
                .records
                == [a.clone()]
        },
    )
    .await;
    quiet(&mut events, POLL * 3).await;
}

/// A failing poll is a broken watch: the namespace is no longer synced,
/// lookups serve the last answer flagged stale, polls are retried, and
/// after recovery the changes made meanwhile arrive as events: a new name
/// at once, a vanished one `Expired` once, after the grace. One warning for
/// the whole outage.
#[tokio::test(start_paused = true)]
async fn a_failing_poll_serves_stale_answers_and_recovers_with_the_right_events() {
    let (logs, _guard) = Logs::capture();
    let backend = TestBackend::without_watch();
    let cache = CachingRegistry::with_config(backend.clone(), config());
    let (anchor, a) = (rec("other"), rec("a"));
    publish(&backend, &anchor).await;
    publish(&backend, &a).await;
    let mut events = cache.subscribe(&ns()).await;
    let mut stream = cache.watch(&ns()).await.unwrap();
    let known = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(*known.records, vec![a.clone(), anchor.clone()]);

    backend.failing.store(true, Ordering::SeqCst);
    common::wait_until(
        "the failing poll makes the namespace unsynced",
        POLL + Duration::from_millis(10),
        async || !cache.is_synced(&ns()),
    )
    .await;
    let stale = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(stale.freshness, Freshness::Stale);
    assert_eq!(*stale.records, vec![a.clone(), anchor.clone()]);
    // Meanwhile b joins and a leaves, and several polls fail.
    let b = rec("b");
    publish(&backend, &b).await;
    backend.unpublish(&ns(), &a.name, a.instance).await.unwrap();
    // Nothing is reported while the polls fail.
    quiet(&mut events, Duration::from_secs(2)).await;
    let failures = backend.lookups.load(Ordering::SeqCst);
    assert!(failures >= 4, "polls are retried: {failures} lookups");

    backend.failing.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    // Retried within the longest backoff; b at once.
    let max_backoff = CachingConfig::default().max_backoff();
    assert_eq!(
        next_within(&mut events, max_backoff).await,
        RegistryEvent::Joined(b.clone())
    );
    assert!(cache.is_synced(&ns()));
    // a is suspect (the registry may have lost it): still served, flagged
    // stale, and Expired once its grace is over.
    let during = cache.lookup_cached(&ns(), &pat("a")).await.unwrap();
    assert_eq!(*during.records, vec![a.clone()]);
    assert_eq!(during.freshness, Freshness::Stale);
    assert_eq!(
        next_within(&mut events, max_backoff + GRACE + POLL).await,
        expired(&a)
    );
    assert!(recovered.elapsed() >= GRACE, "not before the grace");
    quiet(&mut events, POLL * 5).await;
    assert!(
        cache
            .lookup_cached(&ns(), &pat("a"))
            .await
            .unwrap()
            .records
            .is_empty()
    );

    // The watch stream saw the same, and nothing else.
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = timeout(POLL * 3, stream.next()).await {
        seen.push(ev.unwrap());
    }
    assert_eq!(seen, vec![RegistryEvent::Joined(b), expired(&a)]);

    let warnings = logs.at_least(tracing::Level::WARN);
    let poll_warnings = warnings
        .iter()
        .filter(|(_, m)| m.contains("registry poll failed"))
        .count();
    assert_eq!(
        poll_warnings, 2,
        "one per outage and poller (cache, stream): {warnings:?}"
    );
}

/// A stream from `watch` on a registry without watch is fed by polls: the
/// changes after `watch` returned, once each.
#[tokio::test(start_paused = true)]
async fn a_watch_stream_is_fed_by_polls() {
    let backend = TestBackend::without_watch();
    let cache = CachingRegistry::with_config(backend.clone(), config());
    let (anchor, a) = (rec("other"), rec("a"));
    publish(&backend, &anchor).await;
    let mut stream = cache.watch(&ns()).await.unwrap();
    let mut next = async || match timeout(WITHIN, stream.next()).await {
        Ok(Some(Ok(ev))) => Some(ev),
        Ok(other) => panic!("stream failed or ended: {other:?}"),
        Err(_) => None,
    };
    assert_eq!(next().await, None, "nothing about what was there before");
    publish(&backend, &a).await;
    assert_eq!(next().await, Some(RegistryEvent::Joined(a.clone())));
    let a2 = a.clone().with_service("rpc");
    publish(&backend, &a2).await;
    assert_eq!(next().await, Some(RegistryEvent::Updated(a2.clone())));
    backend
        .unpublish(&ns(), &a2.name, a2.instance)
        .await
        .unwrap();
    assert_eq!(next().await, Some(expired(&a2)));
    for _ in 0..5 {
        assert_eq!(next().await, None);
    }
}

/// A registry with no watch whose first poll fails: `watch` is that error,
/// as for a backend that is down.
#[tokio::test(start_paused = true)]
async fn a_watch_whose_first_poll_fails_is_an_error() {
    let backend = TestBackend::without_watch();
    backend.failing.store(true, Ordering::SeqCst);
    let cache = CachingRegistry::with_config(backend.clone(), config());
    match cache.watch(&ns()).await {
        Err(Error::RegistryUnavailable { .. }) => {}
        Err(e) => panic!("expected the backend's error, got {e:?}"),
        Ok(_) => panic!("expected an error"),
    }
}

/// A namespace that empties looks like a registry that lost its data: the
/// last names are kept (served, flagged stale) for the grace, then reported
/// `Expired` once, unless they come back.
#[tokio::test(start_paused = true)]
async fn an_emptied_namespace_is_settled_after_the_grace() {
    let backend = TestBackend::without_watch();
    let cache = CachingRegistry::with_config(backend.clone(), config());
    let (a, b) = (rec("a"), rec("b"));
    publish(&backend, &a).await;
    publish(&backend, &b).await;
    let mut events = cache.subscribe(&ns()).await;
    backend.unpublish(&ns(), &a.name, a.instance).await.unwrap();
    backend.unpublish(&ns(), &b.name, b.instance).await.unwrap();
    let emptied = Instant::now();
    // Two polls see the namespace empty (a window on the paused clock): no
    // event, and the names are kept, flagged stale.
    quiet(&mut events, POLL * 2).await;
    let kept = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(*kept.records, vec![a.clone(), b.clone()]);
    assert_eq!(kept.freshness, Freshness::Stale);
    // b's owner re-publishes within the grace (as after a registry restart).
    publish(&backend, &b).await;
    assert_eq!(
        next_within(&mut events, GRACE + POLL * 2).await,
        expired(&a)
    );
    assert!(emptied.elapsed() >= GRACE);
    quiet(&mut events, POLL * 5).await;
    assert_eq!(
        *cache.lookup_cached(&ns(), &pat("*")).await.unwrap().records,
        vec![b]
    );
}

/// The conformance suite accepts a registry declared without watch, and
/// runs its polling case against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_watch_passes_the_conformance_suite() {
    suite_without_watch(TestBackend::without_watch()).await;
}

/// A registry that can watch may not hide behind `without_watch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "declared without watch, but watch succeeded")]
async fn the_suite_refuses_a_watching_registry_declared_without_watch() {
    suite_without_watch(MemoryRegistry::new()).await;
}

/// The conformance suite on handles of `shared`, declared without watch.
async fn suite_without_watch(shared: impl Registry + Clone + 'static) {
    masse_core::testkit::RegistryConformance::new(move || {
        let handle = shared.clone();
        async move { Arc::new(handle) as masse_core::DynRegistry }
    })
    .without_watch()
    .run()
    .await;
}
