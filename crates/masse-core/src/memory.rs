//! [`MemoryRegistry`]: a registry inside one process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::liveness::Lease;
use crate::name::{Namespace, PeerName};
use crate::pattern::Pattern;
use crate::record::{InstanceId, PeerRecord};
use crate::registry::{NamePolicy, Registry, RegistryEvent};

type EventTx = mpsc::UnboundedSender<Result<RegistryEvent>>;

/// A registry that lives in one process: for tests, and for apps whose nodes
/// all run in one binary. Cloning gives another handle on the same registry.
///
/// It meets every rule of the [`Registry`] contract: records expire for real
/// (invisible at once, one `Expired` event from a background sweeper), and every
/// watcher has its own unbounded queue, so events are never dropped or reordered.
///
/// ```
/// # tokio_test_shim::run(async {
/// use std::time::Duration;
/// use masse_core::{MemoryRegistry, NamePolicy, PeerRecord, Pattern, Registry, InstanceId};
/// let reg = MemoryRegistry::new();
/// let rec = PeerRecord::new("prod".parse()?, "db-1".parse()?, InstanceId::random());
/// reg.publish(&rec, Duration::from_secs(10), NamePolicy::Takeover).await?;
/// let found = reg.lookup(&"prod".parse()?, &Pattern::new("db-*")?).await?;
/// assert_eq!(found, vec![rec]);
/// # Ok::<(), masse_core::Error>(()) }).unwrap();
/// # mod tokio_test_shim { pub fn run<F: std::future::Future>(f: F) -> F::Output {
/// #   tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f) } }
/// ```
#[derive(Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    wake: Arc<Notify>,
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    namespaces: HashMap<Namespace, NsState>,
}

#[derive(Default)]
struct NsState {
    records: BTreeMap<PeerName, Entry>,
    watchers: Vec<EventTx>,
}

struct Entry {
    record: PeerRecord,
    expires_at: Instant,
}

impl NsState {
    fn emit(&mut self, event: RegistryEvent) {
        self.watchers
            .retain(|tx| tx.send(Ok(event.clone())).is_ok());
    }

    /// Removes every expired record, emitting one `Expired` for each.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<PeerName> = self
            .records
            .iter()
            .filter(|(_, e)| e.expires_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            if let Some(e) = self.records.remove(&name) {
                tracing::debug!(namespace = %e.record.namespace, %name, instance = %e.record.instance, "record expired");
                self.emit(RegistryEvent::Expired {
                    name,
                    instance: e.record.instance,
                });
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.records.values().map(|e| e.expires_at).min()
    }
}

impl MemoryRegistry {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry shared by everything in this process that asks for it:
    /// nodes built without an explicit registry meet here.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryRegistry> = OnceLock::new();
        GLOBAL.get_or_init(MemoryRegistry::new).clone()
    }

    /// Number of live records in `ns` (for tests and monitoring).
    pub fn len(&self, ns: &Namespace) -> usize {
        let mut state = self.lock();
        state.namespaces.get_mut(ns).map_or(0, |n| {
            n.sweep(Instant::now());
            n.records.len()
        })
    }

    /// True if `ns` has no live record.
    pub fn is_empty(&self, ns: &Namespace) -> bool {
        self.len(ns) == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way that matters more than losing the registry; keep serving.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the namespace's state after sweeping it, and makes sure the
    /// background sweeper is running so that watchers see `Expired` in time.
    fn with_ns<T>(&self, ns: &Namespace, f: impl FnOnce(&mut NsState, Instant) -> T) -> T {
        self.ensure_sweeper();
        let now = Instant::now();
        let mut state = self.lock();
        let ns_state = state.namespaces.entry(ns.clone()).or_default();
        ns_state.sweep(now);
        let out = f(ns_state, now);
        if ns_state.records.is_empty() && ns_state.watchers.is_empty() {
            state.namespaces.remove(ns);
        }
        out
    }

    fn ensure_sweeper(&self) {
        let mut slot = self.inner.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        *slot = Some(handle.spawn(sweeper(weak, self.inner.wake.clone())));
    }
}

/// Sleeps until the earliest expiry, sweeps, repeats; ends with the registry.
async fn sweeper(weak: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(inner) = weak.upgrade() else { return };
            let now = Instant::now();
            let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut next: Option<Instant> = None;
            state.namespaces.retain(|_, ns| {
                ns.sweep(now);
                if let Some(d) = ns.next_deadline() {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
                !(ns.records.is_empty() && ns.watchers.is_empty())
            });
            // Wake at least once a second, so a dropped registry ends this task.
            let cap = now + Duration::from_secs(1);
            next.map_or(cap, |n| n.min(cap))
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = wake.notified() => {}
        }
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        check_ttl(ttl)?;
        let result = self.with_ns(&record.namespace, |ns, now| {
            let expires_at = now + ttl;
            match ns.records.get_mut(&record.name) {
                Some(e)
                    if e.record.instance != record.instance && policy == NamePolicy::Exclusive =>
                {
                    Err(Error::NameTaken {
                        name: record.name.to_string(),
                        holder: e.record.instance,
                    })
                }
                Some(e) => {
                    e.expires_at = expires_at;
                    if e.record != *record {
                        e.record = record.clone();
                        ns.emit(RegistryEvent::Updated(record.clone()));
                    }
                    Ok(())
                }
                None => {
                    ns.records.insert(
                        record.name.clone(),
                        Entry {
                            record: record.clone(),
                            expires_at,
                        },
                    );
                    ns.emit(RegistryEvent::Joined(record.clone()));
                    Ok(())
                }
            }
        });
        self.inner.wake.notify_one();
        result
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        check_ttl(ttl)?;
        let result = self.with_ns(ns, |ns, now| match ns.records.get_mut(name) {
            Some(e) if e.record.instance == instance => {
                e.expires_at = now + ttl;
                Ok(())
            }
            _ => Err(Error::NameLost {
                name: name.to_string(),
                instance,
            }),
        });
        self.inner.wake.notify_one();
        result
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        self.with_ns(ns, |ns, _| {
            if ns
                .records
                .get(name)
                .is_some_and(|e| e.record.instance == instance)
            {
                ns.records.remove(name);
                ns.emit(RegistryEvent::Left {
                    name: name.clone(),
                    instance,
                });
            }
        });
        Ok(())
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        Ok(self.with_ns(ns, |ns, _| match pattern.as_exact() {
            Some(name) => ns
                .records
                .get(name)
                .map(|e| e.record.clone())
                .into_iter()
                .collect(),
            None => ns
                .records
                .values()
                .filter(|e| pattern.matches(e.record.name.as_str()))
                .map(|e| e.record.clone())
                .collect(),
        }))
    }

    /// The time left is the record's expiry instant minus now, by the
    /// process's monotonic clock.
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        Ok(self.with_ns(ns, |ns, now| {
            ns.records
                .values()
                .filter(|e| pattern.matches(e.record.name.as_str()))
                .map(|e| {
                    Lease::new(
                        e.record.clone(),
                        Some(e.expires_at.saturating_duration_since(now)),
                    )
                })
                .collect()
        }))
    }

    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.with_ns(ns, |ns, _| ns.watchers.push(tx));
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::Config("ttl must be greater than zero".into()));
    }
    Ok(())
}

impl fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryRegistry")
            .field("namespaces", &state.namespaces.len())
            .finish_non_exhaustive()
    }
}
