//! CachingRegistry after the backend lost its data: a registry restarted
//! empty under running watchers. Live owners re-publish within the grace and
//! are never reported gone; a dead one is reported `Expired` exactly once;
//! lookups keep answering with the last known record meanwhile.
//!
//! The tests run on a paused Tokio clock: the grace passes in no real time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ns, pat, rec};
use futures::StreamExt;
use masse_core::{
    BoxStream, CachingConfig, CachingRegistry, Error, Freshness, InstanceId, Lease, MemoryRegistry,
    NamePolicy, Namespace, Pattern, PeerName, PeerRecord, Registry, RegistryEvent, Result,
    async_trait,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

/// A registry that can be "restarted empty": its data is replaced by an
/// empty store, and every open watch breaks (as a server restart does) or,
/// with `resync_only`, yields `Resync` and goes on.
#[derive(Debug, Clone)]
struct Restartable {
    current: Arc<Mutex<MemoryRegistry>>,
    restarts: broadcast::Sender<bool>,
    /// While set, `watch` fails (the server answers lookups, not watches yet).
    watch_down: Arc<std::sync::atomic::AtomicBool>,
}

impl Restartable {
    fn new() -> Self {
        Restartable {
            current: Arc::new(Mutex::new(MemoryRegistry::new())),
            restarts: broadcast::channel(16).0,
            watch_down: Arc::default(),
        }
    }

    fn store(&self) -> MemoryRegistry {
        self.current.lock().unwrap().clone()
    }

    /// Loses every record. `break_watches`: open watches fail (a server
    /// restart); otherwise they yield `Resync` and continue on the new store.
    fn restart_empty(&self, break_watches: bool) {
        *self.current.lock().unwrap() = MemoryRegistry::new();
        let _ = self.restarts.send(break_watches);
    }
}

#[async_trait]
impl Registry for Restartable {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        self.store().publish(record, ttl, policy).await
    }
    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        self.store().refresh(ns, name, instance, ttl).await
    }
    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        self.store().unpublish(ns, name, instance).await
    }
    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        self.store().lookup(ns, pattern).await
    }
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        self.store().lookup_leases(ns, pattern).await
    }
    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        if self.watch_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::unavailable(
                "restartable",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            ));
        }
        let mut restarts = self.restarts.subscribe();
        let mut inner = self.store().watch(ns).await?;
        let this = self.clone();
        let ns = ns.clone();
        Ok(Box::pin(async_stream(move |tx| async move {
            loop {
                tokio::select! {
                    ev = inner.next() => match ev {
                        Some(ev) => if tx.send(ev).is_err() { return },
                        None => return,
                    },
                    r = restarts.recv() => match r {
                        Ok(true) | Err(_) => {
                            let _ = tx.send(Err(Error::unavailable(
                                "restartable",
                                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                            )));
                            return;
                        }
                        Ok(false) => {
                            inner = match this.store().watch(&ns).await {
                                Ok(s) => s,
                                Err(_) => return,
                            };
                            if tx.send(Ok(RegistryEvent::Resync)).is_err() {
                                return;
                            }
                        }
                    },
                }
            }
        })))
    }
}

/// A stream fed by a task.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<RegistryEvent>>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Result<RegistryEvent>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(f(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const TTL: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_millis(800);

fn cache(backend: &Restartable) -> CachingRegistry<Restartable> {
    let config = CachingConfig::default()
        .with_resync_grace(GRACE)
        .with_max_backoff(Duration::from_millis(100));
    CachingRegistry::with_config(backend.clone(), config)
}

/// Every event within `wait`.
async fn drain(
    events: &mut BoxStream<'static, Result<RegistryEvent>>,
    wait: Duration,
) -> Vec<RegistryEvent> {
    let mut out = Vec::new();
    let until = Instant::now() + wait;
    while let Ok(Some(ev)) = timeout(
        until.saturating_duration_since(Instant::now()),
        events.next(),
    )
    .await
    {
        out.push(ev.expect("a cache watch never fails"));
    }
    out
}

async fn restarted_empty(break_watches: bool) {
    let backend = Restartable::new();
    let (a, b, c) = (rec("a"), rec("b"), rec("c"));
    for r in [&a, &b, &c] {
        backend.publish(r, TTL, NamePolicy::Takeover).await.unwrap();
    }
    let cache = cache(&backend);
    let mut events = cache.watch(&ns()).await.unwrap();
    assert_eq!(
        cache
            .lookup_cached(&ns(), &pat("b"))
            .await
            .unwrap()
            .records
            .len(),
        1
    );
    let all = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(all.records.len(), 3);

    backend.restart_empty(break_watches);
    // a comes back as it was; c comes back as a new instance; b is dead.
    // They re-publish a while after the restart (time on the paused clock).
    tokio::time::sleep(GRACE / 4).await;
    backend
        .publish(&a, TTL, NamePolicy::Exclusive)
        .await
        .unwrap();
    let c2 = rec("c");
    backend
        .publish(&c2, TTL, NamePolicy::Exclusive)
        .await
        .unwrap();

    // Within the grace, b is still served, flagged stale, never NotFound.
    let during = cache.lookup_cached(&ns(), &pat("b")).await.unwrap();
    assert_eq!(
        during.records.as_slice(),
        std::slice::from_ref(&b),
        "b still served during the grace"
    );
    assert_eq!(during.freshness, Freshness::Stale);
    let star = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    let names: Vec<&str> = star.records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"], "'*' keeps the suspect too");

    let got = drain(&mut events, GRACE * 3).await;
    assert_eq!(
        got,
        vec![
            RegistryEvent::Updated(c2.clone()),
            RegistryEvent::Expired {
                name: b.name.clone(),
                instance: b.instance
            },
        ],
        "one Updated for the new instance of c, one Expired for b, nothing for a, no Resync"
    );
    let after = cache.lookup_cached(&ns(), &pat("b")).await.unwrap();
    assert!(after.records.is_empty(), "b gone after the grace");
    let a_now = cache.lookup_cached(&ns(), &pat("a")).await.unwrap();
    assert_eq!(a_now.records.as_slice(), std::slice::from_ref(&a));
    assert_ne!(a_now.freshness, Freshness::Stale);
    // Later changes flow as usual, once each.
    let d = rec("d");
    backend
        .publish(&d, TTL, NamePolicy::Takeover)
        .await
        .unwrap();
    assert_eq!(
        drain(&mut events, Duration::from_millis(300)).await,
        vec![RegistryEvent::Joined(d)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_registry_restarted_empty_under_a_broken_watch_reconciles() {
    restarted_empty(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_resync_marker_reconciles_without_breaking_the_watch() {
    restarted_empty(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_starts_while_the_backend_is_down_fails() {
    #[derive(Debug)]
    struct Down;
    #[async_trait]
    impl Registry for Down {
        async fn publish(&self, _: &PeerRecord, _: Duration, _: NamePolicy) -> Result<()> {
            Err(down())
        }
        async fn refresh(
            &self,
            _: &Namespace,
            _: &PeerName,
            _: InstanceId,
            _: Duration,
        ) -> Result<()> {
            Err(down())
        }
        async fn unpublish(&self, _: &Namespace, _: &PeerName, _: InstanceId) -> Result<()> {
            Err(down())
        }
        async fn lookup(&self, _: &Namespace, _: &Pattern) -> Result<Vec<PeerRecord>> {
            Err(down())
        }
        async fn watch(&self, _: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
            Err(down())
        }
    }
    fn down() -> Error {
        Error::unavailable(
            "down",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )
    }
    let cache = CachingRegistry::new(Down);
    match cache.watch(&ns()).await {
        Err(Error::RegistryUnavailable {
            backend: "down", ..
        }) => {}
        Err(e) => panic!("expected the backend's error, got {e:?}"),
        Ok(_) => panic!("expected the backend's error, got a stream"),
    }
}

/// Between the restart and the watch coming back, a lookup reaches the empty
/// registry: it must not make a live name `NotFound`.
#[tokio::test(start_paused = true)]
async fn an_answer_while_the_watch_is_down_keeps_known_names() {
    let backend = Restartable::new();
    let (a, b) = (rec("a"), rec("b"));
    for r in [&a, &b] {
        backend.publish(r, TTL, NamePolicy::Takeover).await.unwrap();
    }
    let cache = cache(&backend);
    let mut events = cache.watch(&ns()).await.unwrap();
    assert_eq!(
        cache
            .lookup_cached(&ns(), &pat("a"))
            .await
            .unwrap()
            .freshness,
        Freshness::Fetched
    );
    backend
        .watch_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    backend.restart_empty(true);
    // As with a server that died: the watch is down before anyone asks.
    common::wait_until(
        "the watch notices the restart",
        Duration::from_secs(2),
        async || !cache.is_synced(&ns()),
    )
    .await;
    // Until the watch is back, every answer keeps a and b (flagged stale).
    let until = Instant::now() + GRACE;
    while Instant::now() < until {
        for (p, want) in [("a", &a), ("b", &b)] {
            let got = cache.lookup_cached(&ns(), &pat(p)).await.unwrap();
            assert_eq!(got.records.as_slice(), std::slice::from_ref(want), "{p}");
        }
        // Checked through the whole grace (time on the paused clock).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = cache.lookup_cached(&ns(), &pat("*")).await.unwrap();
    assert_eq!(got.freshness, Freshness::Stale);
    assert_eq!(got.records.len(), 2);
    // a re-publishes, the watch comes back; b is settled after its grace.
    backend
        .publish(&a, TTL, NamePolicy::Exclusive)
        .await
        .unwrap();
    backend
        .watch_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let got = drain(&mut events, GRACE * 3).await;
    assert_eq!(
        got,
        vec![RegistryEvent::Expired {
            name: b.name.clone(),
            instance: b.instance
        }],
        "only b is reported gone, once"
    );
    assert!(
        cache
            .lookup_cached(&ns(), &pat("b"))
            .await
            .unwrap()
            .records
            .is_empty()
    );
}
