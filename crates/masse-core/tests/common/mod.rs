//! What masse-core's registry tests share: a backend for a cache to sit
//! on, the error of a backend that is down, and waiting for a condition with
//! a deadline.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use masse_core::{
    BoxStream, Error, InstanceId, Lease, MemoryRegistry, NamePolicy, Namespace, Pattern, PeerName,
    PeerRecord, Registry, RegistryEvent, Result, async_trait,
};
use tokio::time::Instant;

/// The namespace the tests use.
pub(crate) fn ns() -> Namespace {
    "test".parse().expect("namespace")
}

/// A record of `name` in [`ns`], a fresh instance, with an endpoint nobody
/// dials.
pub(crate) fn rec(name: &str) -> PeerRecord {
    PeerRecord::new(ns(), name.parse().expect("name"), InstanceId::random())
        .with_endpoint("tcp://127.0.0.1:1".parse().expect("endpoint"))
}

/// A pattern; panics if `p` is not a valid one.
pub(crate) fn pat(p: &str) -> Pattern {
    p.parse().expect("pattern")
}

/// A `MemoryRegistry` that counts lookups, and can be made to fail, to hold
/// its answers, to break its watches, or to have no watch at all.
#[derive(Debug, Clone, Default)]
pub(crate) struct TestBackend {
    pub(crate) inner: MemoryRegistry,
    pub(crate) lookups: Arc<AtomicU64>,
    /// While it names a pattern, a lookup of that pattern reads its answer,
    /// then holds it until this changes (so lookups can join it and changes
    /// land during it). Other lookups, such as the cache's listing of the
    /// namespace, go through.
    pub(crate) hold: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// Answers read and held so far.
    pub(crate) held: Arc<AtomicU64>,
    /// While true, every call fails as a backend that is down.
    pub(crate) failing: Arc<AtomicBool>,
    /// Flipped to end every open watch stream with an error.
    pub(crate) break_watch: Arc<tokio::sync::Notify>,
    /// `watch` is `Unsupported`: a registry that can only be polled.
    no_watch: bool,
}

impl TestBackend {
    /// A backend whose `watch` is `Unsupported`.
    pub(crate) fn without_watch() -> Self {
        TestBackend {
            no_watch: true,
            ..TestBackend::default()
        }
    }
}

#[async_trait]
impl Registry for TestBackend {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        self.inner.publish(record, ttl, policy).await
    }
    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        self.inner.refresh(ns, name, instance, ttl).await
    }
    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        self.inner.unpublish(ns, name, instance).await
    }
    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(down("test"));
        }
        let found = self.inner.lookup(ns, pattern).await?;
        let mut hold = self.hold.subscribe();
        let held = |h: &Option<String>| h.as_deref() == Some(pattern.as_str());
        if held(&hold.borrow_and_update()) {
            self.held.fetch_add(1, Ordering::SeqCst);
            let _ = hold.wait_for(|h| !held(h)).await;
        }
        Ok(found)
    }
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(down("test"));
        }
        self.inner.lookup_leases(ns, pattern).await
    }
    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        if self.no_watch {
            return Err(Error::Unsupported("this test registry cannot watch".into()));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(down("test"));
        }
        let inner = self.inner.watch(ns).await?;
        // Registered now, so that a break right after `watch` returns counts.
        let mut notified = Box::pin(self.break_watch.clone().notified_owned());
        notified.as_mut().enable();
        let broken = Box::pin(async move {
            notified.await;
            Err(down("test"))
        });
        // The events, until `break_watch` fires; then an error.
        Ok(futures::stream::select(inner, futures::stream::once(broken)).boxed())
    }
}

/// Publishes `r` for longer than any test runs (as another process would,
/// when `registry` is the backend under a cache).
pub(crate) async fn publish(registry: &impl Registry, r: &PeerRecord) {
    registry
        .publish(r, Duration::from_secs(600), NamePolicy::Takeover)
        .await
        .unwrap();
}

/// The error of a test backend called `backend` that is down.
pub(crate) fn down(backend: &'static str) -> Error {
    Error::unavailable(
        backend,
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "backend is down"),
    )
}

/// Waits until `cond` holds, checking it every 10 ms (of Tokio time: on a
/// paused clock the checks cost no real time); panics naming `what` if it
/// still does not hold `within` from now.
pub(crate) async fn wait_until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        // The interval between checks of a bounded wait, not a wait.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
