//! The registry conformance suite: DESIGN §3 semantics, checked against a real backend.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::{Instant, sleep, timeout};

use crate::{
    DynRegistry, Endpoint, Error, InstanceId, NamePolicy, Namespace, Pattern, PeerName, PeerRecord,
    Registry as _, RegistryEvent, Result,
};

type Factory = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = DynRegistry> + Send>> + Send + Sync>;
type Injector = Arc<
    dyn Fn(Namespace, PeerName, Vec<u8>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;
type Trigger = Arc<dyn Fn(Namespace) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
type Events = BoxStream<'static, Result<RegistryEvent>>;

/// Runs the whole registry conformance suite with default settings.
///
/// `factory` is called several times; every call must return a new handle
/// (client) on the *same* backend store, as separate processes would have.
/// Each case works in a namespace of its own, so a shared store is fine.
/// Panics, naming the case, on the first violation.
pub async fn registry_conformance<F, Fut>(factory: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = DynRegistry> + Send + 'static,
{
    RegistryConformance::new(factory).run().await
}

/// The registry conformance suite, with settings for slower backends and an
/// optional hook to store raw bytes under a name (for the malformed-record case).
#[must_use = "call .run().await"]
pub struct RegistryConformance {
    factory: Factory,
    injector: Option<Injector>,
    resync: Option<Trigger>,
    ttl: Duration,
    slack: Duration,
    prefix: String,
    /// False for a backend declared unable to watch.
    watches: bool,
}

impl fmt::Debug for RegistryConformance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConformance")
            .field("ttl", &self.ttl)
            .field("slack", &self.slack)
            .field("injector", &self.injector.is_some())
            .field("resync_trigger", &self.resync.is_some())
            .field("watches", &self.watches)
            .finish_non_exhaustive()
    }
}

impl RegistryConformance {
    /// A suite over handles made by `factory` (see [`registry_conformance`]).
    pub fn new<F, Fut>(factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = DynRegistry> + Send + 'static,
    {
        RegistryConformance {
            factory: Arc::new(move || Box::pin(factory())),
            injector: None,
            resync: None,
            ttl: Duration::from_millis(600),
            slack: Duration::from_secs(2),
            prefix: format!("conf-{:08x}", InstanceId::random().as_u128() as u32),
            watches: true,
        }
    }

    /// Declares a backend that cannot watch: its [`watch`](crate::Registry::watch)
    /// returns [`Error::Unsupported`] (see
    /// [Registries that cannot watch](crate::Registry#registries-that-cannot-watch)),
    /// which the suite checks instead of the events. The cases that are only
    /// about events (watch order, a dropped watcher, resync) are left out;
    /// every other case still checks lookups, expiry, ownership and policies;
    /// and one more case checks that a [`CachingRegistry`](crate::CachingRegistry)
    /// over the backend, which polls it, reports joins, updates and
    /// departures. Backends that can watch must not use this: their events
    /// are part of the contract.
    pub fn without_watch(mut self) -> Self {
        self.watches = false;
        self
    }

    /// The short ttl used by expiry cases (default 600 ms). Backends whose
    /// expiry has a coarse clock need a longer one.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How late an event may arrive after the change that caused it, and an
    /// `Expired` after the deadline (default 2 s). Polling backends set their
    /// poll interval plus a margin.
    pub fn slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }

    /// A hook that stores `bytes` as the raw record of `name` in `namespace`,
    /// bypassing validation, so the suite can check that unreadable records are
    /// skipped. Without it, that case is left out.
    pub fn raw_writer<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Namespace, PeerName, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.injector = Some(Arc::new(move |ns, n, b| Box::pin(f(ns, n, b))));
        self
    }

    /// A hook that makes the backend lose the event history of `namespace`
    /// (not its records), as a server restarted from a snapshot or an event
    /// log pruned past its watchers would, so that watchers of the namespace
    /// get [`RegistryEvent::Resync`]. Without it, the resync case is left out.
    pub fn resync_trigger<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Namespace) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.resync = Some(Arc::new(move |ns| Box::pin(f(ns))));
        self
    }

    /// Runs every case, panicking with the case name on the first violation.
    /// Each case is also a public function of this module, to run alone.
    pub async fn run(self) {
        let ctx = &self;
        macro_rules! case {
            ($name:ident) => {{
                tracing::info!(case = stringify!($name), "registry conformance");
                let started = Instant::now();
                match timeout(Duration::from_secs(120), $name(ctx)).await {
                    Ok(()) => tracing::info!(case = stringify!($name), elapsed = ?started.elapsed(), "passed"),
                    Err(_) => panic!("registry conformance case `{}` hung for 120 s", stringify!($name)),
                }
            }};
        }
        case!(publish_then_lookup);
        case!(republish_updates);
        case!(takeover_replaces_and_fences_the_old_instance);
        case!(exclusive_refuses_a_live_name);
        case!(refresh_keeps_alive_and_checks_ownership);
        case!(unpublish_removes_only_own_instance);
        case!(expiry_is_immediate_and_reported_once);
        if ctx.watches {
            case!(watch_orders_events_per_name);
        }
        case!(glob_lookups);
        case!(namespaces_are_isolated);
        case!(many_concurrent_publishers);
        case!(zero_ttl_is_rejected);
        if ctx.watches {
            case!(dropped_watcher_does_not_disturb_others);
        }
        case!(refresh_after_expiry_is_name_lost);
        case!(leases_report_the_time_left);
        if !ctx.watches {
            tracing::info!("registry conformance: backend without watch, event-only cases skipped");
            case!(a_cache_polls_a_registry_without_watch);
        }
        if ctx.injector.is_some() {
            case!(malformed_records_are_skipped);
        } else {
            tracing::info!(
                "registry conformance: no raw writer given, malformed-record case skipped"
            );
        }
        if ctx.resync.is_some() && ctx.watches {
            case!(resync_then_listing_matches);
        } else {
            tracing::info!("registry conformance: no resync trigger given, resync case skipped");
        }
    }
}

impl RegistryConformance {
    async fn handle(&self) -> DynRegistry {
        (self.factory)().await
    }

    fn ns(&self, case: &str) -> Namespace {
        let mut s = format!("{}-{case}", self.prefix);
        s.truncate(Namespace::MAX_LEN);
        Namespace::new(&s).expect("valid namespace")
    }

    fn long_ttl(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn watch(&self, reg: &DynRegistry, ns: &Namespace, case: &str) -> Events {
        reg.watch(ns)
            .await
            .unwrap_or_else(|e| panic!("[{case}] watch failed: {e}"))
    }

    /// A watch, or `None` for a backend declared [without
    /// watch](Self::without_watch), after checking that its `watch` says so.
    async fn watcher(&self, reg: &DynRegistry, ns: &Namespace, case: &str) -> Option<Events> {
        if self.watches {
            return Some(self.watch(reg, ns, case).await);
        }
        match reg.watch(ns).await {
            Err(Error::Unsupported(_)) => None,
            Err(e) => panic!(
                "[{case}] a backend without watch must answer watch with Unsupported, got {e}"
            ),
            Ok(_) => panic!("[{case}] the backend was declared without watch, but watch succeeded"),
        }
    }

    /// Asserts that the next event (within the slack) is `want`; nothing to
    /// check without a watch.
    async fn expect(
        &self,
        events: &mut Option<Events>,
        want: RegistryEvent,
        what: &str,
        case: &str,
    ) {
        if let Some(events) = events {
            assert_eq!(self.next(events, case).await, want, "[{case}] {what}");
        }
    }

    /// [`quiet`](Self::quiet), if there is a watch.
    async fn quiet_opt(&self, events: &mut Option<Events>, wait: Duration, case: &str) {
        if let Some(events) = events {
            self.quiet(events, wait, case).await;
        }
    }

    /// The next event, within the slack.
    async fn next(&self, events: &mut Events, case: &str) -> RegistryEvent {
        match timeout(self.slack, events.next()).await {
            Ok(Some(Ok(RegistryEvent::Resync))) => {
                panic!("[{case}] unexpected Resync on a healthy backend")
            }
            Ok(Some(Ok(ev))) => ev,
            Ok(Some(Err(e))) => panic!("[{case}] watch stream failed: {e}"),
            Ok(None) => panic!("[{case}] watch stream ended"),
            Err(_) => panic!("[{case}] no event within {:?}", self.slack),
        }
    }

    /// The next event within the slack, `Resync` included.
    async fn next_any(&self, events: &mut Events, case: &str) -> RegistryEvent {
        match timeout(self.slack, events.next()).await {
            Ok(Some(Ok(ev))) => ev,
            Ok(Some(Err(e))) => panic!("[{case}] watch stream failed: {e}"),
            Ok(None) => panic!("[{case}] watch stream ended"),
            Err(_) => panic!("[{case}] no event within {:?}", self.slack),
        }
    }

    /// Asserts no event arrives for `wait`.
    async fn quiet(&self, events: &mut Events, wait: Duration, case: &str) {
        if let Ok(Some(ev)) = timeout(wait, events.next()).await {
            panic!("[{case}] expected no more events, got {ev:?}");
        }
    }
}

fn record(ns: &Namespace, name: &str, port: u16) -> PeerRecord {
    PeerRecord::new(
        ns.clone(),
        PeerName::new(name).expect("valid name"),
        InstanceId::random(),
    )
    .with_endpoint(Endpoint::new(
        crate::Protocol::TCP,
        ([127, 0, 0, 1], port).into(),
    ))
}

fn pat(s: &str) -> Pattern {
    Pattern::new(s).expect("valid pattern")
}

fn names(records: &[PeerRecord]) -> Vec<&str> {
    records.iter().map(|r| r.name.as_str()).collect()
}

async fn lookup(reg: &DynRegistry, ns: &Namespace, p: &str, case: &str) -> Vec<PeerRecord> {
    reg.lookup(ns, &pat(p))
        .await
        .unwrap_or_else(|e| panic!("[{case}] lookup {p:?} failed: {e}"))
}

async fn publish(reg: &DynRegistry, r: &PeerRecord, ttl: Duration, policy: NamePolicy, case: &str) {
    reg.publish(r, ttl, policy)
        .await
        .unwrap_or_else(|e| panic!("[{case}] publish of {} failed: {e}", r.name));
}

/// A published record is found by exact and glob lookups, from this handle and another, and watchers get `Joined`.
pub async fn publish_then_lookup(c: &RegistryConformance) {
    let case = "publish_then_lookup";
    let reg = c.handle().await;
    let ns = c.ns("pub");
    let mut events = c.watcher(&reg, &ns, case).await;
    let r = record(&ns, "db-1", 4100)
        .with_service("rpc")
        .with_metadata("zone", "b");
    publish(&reg, &r, c.long_ttl(), NamePolicy::Takeover, case).await;
    c.expect(
        &mut events,
        RegistryEvent::Joined(r.clone()),
        "Joined",
        case,
    )
    .await;
    assert_eq!(
        lookup(&reg, &ns, "db-1", case).await,
        vec![r.clone()],
        "[{case}] exact lookup returns the record as published"
    );
    assert_eq!(
        lookup(&reg, &ns, "*", case).await,
        vec![r.clone()],
        "[{case}] '*' lookup"
    );
    assert!(
        lookup(&reg, &ns, "db-2", case).await.is_empty(),
        "[{case}] absent name"
    );
    let other = c.handle().await;
    assert_eq!(
        lookup(&other, &ns, "db-1", case).await,
        vec![r],
        "[{case}] another handle sees the record"
    );
}

/// Publishing again under the same instance replaces the record and emits `Updated`.
pub async fn republish_updates(c: &RegistryConformance) {
    let case = "republish_updates";
    let reg = c.handle().await;
    let ns = c.ns("upd");
    let mut events = c.watcher(&reg, &ns, case).await;
    let r1 = record(&ns, "svc", 1);
    publish(&reg, &r1, c.long_ttl(), NamePolicy::Takeover, case).await;
    let mut r2 = r1.clone();
    r2.endpoints = vec![Endpoint::new(
        crate::Protocol::TCP,
        ([127, 0, 0, 2], 2).into(),
    )];
    publish(&reg, &r2, c.long_ttl(), NamePolicy::Exclusive, case).await;
    c.expect(
        &mut events,
        RegistryEvent::Joined(r1),
        "first publish joins",
        case,
    )
    .await;
    c.expect(
        &mut events,
        RegistryEvent::Updated(r2.clone()),
        "same instance re-publish updates (exclusive allows it)",
        case,
    )
    .await;
    assert_eq!(
        lookup(&reg, &ns, "svc", case).await,
        vec![r2],
        "[{case}] lookup sees the new endpoints"
    );
}

/// `Takeover` replaces another instance's record (`Updated`), and the old instance can no longer refresh or unpublish it.
pub async fn takeover_replaces_and_fences_the_old_instance(c: &RegistryConformance) {
    let case = "takeover";
    let reg = c.handle().await;
    let ns = c.ns("take");
    let mut events = c.watcher(&reg, &ns, case).await;
    let old = record(&ns, "leader", 1);
    let new = record(&ns, "leader", 2);
    publish(&reg, &old, c.long_ttl(), NamePolicy::Takeover, case).await;
    publish(&reg, &new, c.long_ttl(), NamePolicy::Takeover, case).await;
    c.expect(
        &mut events,
        RegistryEvent::Joined(old.clone()),
        "Joined",
        case,
    )
    .await;
    c.expect(
        &mut events,
        RegistryEvent::Updated(new.clone()),
        "takeover emits Updated",
        case,
    )
    .await;
    assert_eq!(
        lookup(&reg, &ns, "leader", case).await,
        vec![new.clone()],
        "[{case}] lookup sees the new instance"
    );
    match reg
        .refresh(&ns, &old.name, old.instance, c.long_ttl())
        .await
    {
        Err(Error::NameLost { instance, .. }) => assert_eq!(instance, old.instance),
        other => {
            panic!("[{case}] refresh by the replaced instance must be NameLost, got {other:?}")
        }
    }
    reg.unpublish(&ns, &old.name, old.instance)
        .await
        .unwrap_or_else(|e| {
            panic!("[{case}] unpublish of a replaced instance must succeed as a no-op: {e}")
        });
    assert_eq!(
        lookup(&reg, &ns, "leader", case).await,
        vec![new],
        "[{case}] the old instance cannot remove the new one"
    );
    c.quiet_opt(&mut events, Duration::from_millis(200), case)
        .await;
}

/// `Exclusive` fails with `NameTaken` while another live instance holds the name, and succeeds once it expired.
pub async fn exclusive_refuses_a_live_name(c: &RegistryConformance) {
    let case = "exclusive";
    let reg = c.handle().await;
    let ns = c.ns("excl");
    let holder = record(&ns, "singleton", 1);
    let challenger = record(&ns, "singleton", 2);
    publish(&reg, &holder, c.long_ttl(), NamePolicy::Exclusive, case).await;
    match reg
        .publish(&challenger, c.long_ttl(), NamePolicy::Exclusive)
        .await
    {
        Err(Error::NameTaken { holder: h, .. }) => {
            assert_eq!(h, holder.instance, "[{case}] NameTaken names the holder")
        }
        other => panic!("[{case}] expected NameTaken, got {other:?}"),
    }
    assert_eq!(
        lookup(&reg, &ns, "singleton", case).await,
        vec![holder.clone()],
        "[{case}] holder kept"
    );
    reg.unpublish(&ns, &holder.name, holder.instance)
        .await
        .expect("unpublish");
    publish(&reg, &challenger, c.long_ttl(), NamePolicy::Exclusive, case).await;
    assert_eq!(
        lookup(&reg, &ns, "singleton", case).await,
        vec![challenger],
        "[{case}] free name can be taken"
    );

    // An expired holder does not block an exclusive publish.
    let short = record(&ns, "short", 3);
    publish(&reg, &short, c.ttl, NamePolicy::Exclusive, case).await;
    sleep(c.ttl + Duration::from_millis(100)).await;
    let after = record(&ns, "short", 4);
    publish(&reg, &after, c.long_ttl(), NamePolicy::Exclusive, case).await;
    assert_eq!(
        lookup(&reg, &ns, "short", case).await,
        vec![after],
        "[{case}] expired holder released the name"
    );
}

/// Refresh keeps a record alive past its first ttl, and is `NameLost` for anyone but the owner.
pub async fn refresh_keeps_alive_and_checks_ownership(c: &RegistryConformance) {
    let case = "refresh";
    let reg = c.handle().await;
    let ns = c.ns("refr");
    let ttl = c.ttl;
    let r = record(&ns, "beating", 1);
    publish(&reg, &r, ttl, NamePolicy::Takeover, case).await;
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        sleep(ttl / 3).await;
        reg.refresh(&ns, &r.name, r.instance, ttl)
            .await
            .unwrap_or_else(|e| panic!("[{case}] refresh of a live owner failed: {e}"));
        assert_eq!(
            lookup(&reg, &ns, "beating", case).await.len(),
            1,
            "[{case}] refreshed record stays visible past its first ttl"
        );
    }
    match reg
        .refresh(
            &ns,
            &PeerName::new("nobody").expect("name"),
            InstanceId::random(),
            ttl,
        )
        .await
    {
        Err(Error::NameLost { .. }) => {}
        other => panic!("[{case}] refresh of an unknown name must be NameLost, got {other:?}"),
    }
    match reg.refresh(&ns, &r.name, InstanceId::random(), ttl).await {
        Err(Error::NameLost { .. }) => {}
        other => panic!("[{case}] refresh by a stranger must be NameLost, got {other:?}"),
    }
}

/// `lookup_leases` lists what `lookup` lists, each with its time left by the
/// registry's clock (within the slack), and a refresh with a longer ttl
/// extends it; the record's `ttl_ms` survives storage.
pub async fn leases_report_the_time_left(c: &RegistryConformance) {
    let case = "leases";
    let reg = c.handle().await;
    let ns = c.ns("lease");
    let short = c.long_ttl();
    let mut a = record(&ns, "lease-a", 1);
    a.ttl_ms = Some(short.as_millis() as u64);
    let b = record(&ns, "lease-b", 2);
    publish(&reg, &a, short, NamePolicy::Takeover, case).await;
    publish(&reg, &b, short * 2, NamePolicy::Takeover, case).await;
    let pattern = Pattern::new("lease-*").expect("pattern");
    let leases = reg
        .lookup_leases(&ns, &pattern)
        .await
        .unwrap_or_else(|e| panic!("[{case}] lookup_leases failed: {e}"));
    let records: Vec<_> = leases.iter().map(|l| l.record.clone()).collect();
    assert_eq!(
        records,
        vec![a.clone(), b.clone()],
        "[{case}] same records as lookup, sorted"
    );
    let left = |i: usize| {
        leases[i]
            .expires_in
            .unwrap_or_else(|| panic!("[{case}] the backend must report the time left"))
    };
    let within = |got: Duration, ttl: Duration| got <= ttl && got + c.slack >= ttl;
    assert!(
        within(left(0), short),
        "[{case}] {:?} left of a {short:?} lease",
        left(0)
    );
    assert!(
        within(left(1), short * 2),
        "[{case}] {:?} left of a {:?} lease",
        left(1),
        short * 2
    );
    assert_eq!(
        leases[0].liveness(),
        crate::Liveness::Alive,
        "[{case}] a fresh lease is alive"
    );
    assert_eq!(
        leases[1].liveness(),
        crate::Liveness::Unknown,
        "[{case}] no ttl_ms: unknown"
    );
    reg.refresh(&ns, &a.name, a.instance, short * 3)
        .await
        .unwrap_or_else(|e| panic!("[{case}] refresh failed: {e}"));
    let exact = reg
        .lookup_leases(&ns, &Pattern::new("lease-a").expect("pattern"))
        .await
        .unwrap_or_else(|e| panic!("[{case}] exact lookup_leases failed: {e}"));
    assert_eq!(exact.len(), 1, "[{case}] exact lease lookup");
    let got = exact[0].expires_in.expect("time left");
    assert!(
        within(got, short * 3),
        "[{case}] {got:?} left after a refresh to {:?}",
        short * 3
    );
    assert_eq!(exact[0].liveness(), crate::Liveness::Alive);
    assert!(
        reg.lookup_leases(&ns, &Pattern::new("nobody").expect("pattern"))
            .await
            .unwrap_or_else(|e| panic!("[{case}] lookup_leases failed: {e}"))
            .is_empty(),
        "[{case}] absent name"
    );
}

/// Unpublish removes only the caller's own instance, emits `Left` once, and is a no-op after.
pub async fn unpublish_removes_only_own_instance(c: &RegistryConformance) {
    let case = "unpublish";
    let reg = c.handle().await;
    let ns = c.ns("unpub");
    let r = record(&ns, "leaving", 1);
    publish(&reg, &r, c.long_ttl(), NamePolicy::Takeover, case).await;
    let mut events = c.watcher(&reg, &ns, case).await;
    reg.unpublish(&ns, &r.name, InstanceId::random())
        .await
        .expect("stranger unpublish is a no-op");
    assert_eq!(
        lookup(&reg, &ns, "leaving", case).await.len(),
        1,
        "[{case}] a stranger cannot unpublish"
    );
    reg.unpublish(&ns, &r.name, r.instance)
        .await
        .expect("own unpublish");
    c.expect(
        &mut events,
        RegistryEvent::Left {
            name: r.name.clone(),
            instance: r.instance,
        },
        "Left",
        case,
    )
    .await;
    assert!(
        lookup(&reg, &ns, "leaving", case).await.is_empty(),
        "[{case}] gone after unpublish"
    );
    reg.unpublish(&ns, &r.name, r.instance)
        .await
        .expect("second unpublish is a no-op");
    c.quiet_opt(&mut events, Duration::from_millis(200), case)
        .await;
}

/// An expired record is invisible at once and reported `Expired` exactly once, whatever the number of handles and watchers.
pub async fn expiry_is_immediate_and_reported_once(c: &RegistryConformance) {
    let case = "expiry";
    let ns = c.ns("exp");
    let ttl = c.ttl;
    // Several handles (as several nodes would have), two watchers on each.
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(c.handle().await);
    }
    let mut watchers = Vec::new();
    for h in &handles {
        for _ in 0..2 {
            watchers.extend(c.watcher(h, &ns, case).await);
        }
    }
    let doomed = record(&ns, "doomed", 1);
    let kept = record(&ns, "kept", 2);
    publish(&handles[0], &doomed, ttl, NamePolicy::Takeover, case).await;
    publish(&handles[1], &kept, c.long_ttl(), NamePolicy::Takeover, case).await;
    let published = Instant::now();
    for w in watchers.iter_mut() {
        let a = c.next(w, case).await;
        let b = c.next(w, case).await;
        assert!(
            matches!(a, RegistryEvent::Joined(_)) && matches!(b, RegistryEvent::Joined(_)),
            "[{case}] two Joined, got {a:?} {b:?}"
        );
    }
    // Keep every handle busy so that each one has the chance to sweep.
    tokio::time::sleep_until(published + ttl + Duration::from_millis(50)).await;
    for h in &handles {
        let seen = lookup(h, &ns, "*", case).await;
        assert_eq!(
            names(&seen),
            vec!["kept"],
            "[{case}] an expired record is invisible at once on every handle"
        );
    }
    for (i, w) in watchers.iter_mut().enumerate() {
        let ev = c.next(w, case).await;
        assert_eq!(
            ev,
            RegistryEvent::Expired {
                name: doomed.name.clone(),
                instance: doomed.instance
            },
            "[{case}] watcher {i} gets Expired"
        );
    }
    // Exactly once: nothing else arrives on any watcher, even while handles keep sweeping.
    let quiet_until = Instant::now() + c.slack;
    while Instant::now() < quiet_until {
        for h in &handles {
            let _ = lookup(h, &ns, "*", case).await;
        }
        sleep(Duration::from_millis(100)).await;
    }
    for w in watchers.iter_mut() {
        c.quiet(w, Duration::from_millis(50), case).await;
    }
}

/// Watchers see every event in order per name, and a watcher opened mid-way sees exactly the events after it returned.
pub async fn watch_orders_events_per_name(c: &RegistryConformance) {
    let case = "watch_order";
    let reg = c.handle().await;
    let ns = c.ns("order");
    let mut events = c.watch(&reg, &ns, case).await;
    let mut late = None;
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..5u16 {
        for name in ["a", "b", "c"] {
            let mut r = record(&ns, name, 1000 + round);
            r.metadata.insert("round".into(), round.to_string());
            publish(&reg, &r, c.long_ttl(), NamePolicy::Takeover, case).await;
            let kind = if round == 0 { "joined" } else { "updated" };
            expected
                .entry(name.into())
                .or_default()
                .push(format!("{kind}:{round}"));
            if round == 2 && name == "c" {
                late = Some(c.watch(&reg, &ns, case).await);
            }
            if round == 4 {
                reg.unpublish(&ns, &r.name, r.instance)
                    .await
                    .expect("unpublish");
                expected.entry(name.into()).or_default().push("left".into());
            }
        }
    }
    let total: usize = expected.values().map(Vec::len).sum();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..total {
        let ev = c.next(&mut events, case).await;
        let (name, tag) = match &ev {
            RegistryEvent::Joined(r) => (
                r.name.to_string(),
                format!("joined:{}", r.metadata["round"]),
            ),
            RegistryEvent::Updated(r) => (
                r.name.to_string(),
                format!("updated:{}", r.metadata["round"]),
            ),
            RegistryEvent::Left { name, .. } => (name.to_string(), "left".into()),
            other => panic!("[{case}] unexpected {other:?}"),
        };
        seen.entry(name).or_default().push(tag);
    }
    assert_eq!(seen, expected, "[{case}] every event, in order per name");
    c.quiet(&mut events, Duration::from_millis(200), case).await;
    // A watcher opened mid-way sees exactly what happened after it returned.
    let mut late = late.expect("late watcher");
    let mut count = 0;
    while timeout(Duration::from_millis(300).max(c.slack / 4), late.next())
        .await
        .is_ok_and(|e| e.is_some())
    {
        count += 1;
    }
    assert_eq!(
        count,
        total - 3 * 3,
        "[{case}] a watcher sees the events after it started, and only those"
    );
}

/// Glob patterns (`*`, `?`, classes, prefixes) select the right names, sorted.
pub async fn glob_lookups(c: &RegistryConformance) {
    let case = "glob";
    let reg = c.handle().await;
    let ns = c.ns("glob");
    for (i, n) in ["worker-1", "worker-2", "worker-10", "db-1", "db-x", "other"]
        .iter()
        .enumerate()
    {
        publish(
            &reg,
            &record(&ns, n, 2000 + i as u16),
            c.long_ttl(),
            NamePolicy::Takeover,
            case,
        )
        .await;
    }
    let cases: &[(&str, &[&str])] = &[
        (
            "*",
            &["db-1", "db-x", "other", "worker-1", "worker-10", "worker-2"],
        ),
        ("worker-*", &["worker-1", "worker-10", "worker-2"]),
        ("worker-?", &["worker-1", "worker-2"]),
        ("*-1", &["db-1", "worker-1"]),
        ("db-[0-9]", &["db-1"]),
        ("db-[!0-9]", &["db-x"]),
        ("[dw]*-1*", &["db-1", "worker-1", "worker-10"]),
        ("o?her", &["other"]),
        ("worker", &[]),
        ("%", &[]),
    ];
    for (p, want) in cases {
        if Pattern::new(p).is_err() {
            continue;
        }
        let got = lookup(&reg, &ns, p, case).await;
        assert_eq!(
            names(&got),
            *want,
            "[{case}] lookup {p:?} (results sorted by name)"
        );
    }
}

/// Records and events of one namespace never show in another.
pub async fn namespaces_are_isolated(c: &RegistryConformance) {
    let case = "namespaces";
    let reg = c.handle().await;
    let ns1 = c.ns("iso1");
    let ns2 = c.ns("iso2");
    let mut w1 = c.watcher(&reg, &ns1, case).await;
    let r1 = record(&ns1, "same", 1);
    let r2 = record(&ns2, "same", 2);
    publish(&reg, &r1, c.long_ttl(), NamePolicy::Exclusive, case).await;
    publish(&reg, &r2, c.long_ttl(), NamePolicy::Exclusive, case).await;
    assert_eq!(
        lookup(&reg, &ns1, "*", case).await,
        vec![r1.clone()],
        "[{case}] ns1 sees only its own"
    );
    assert_eq!(
        lookup(&reg, &ns2, "*", case).await,
        vec![r2],
        "[{case}] ns2 sees only its own"
    );
    c.expect(&mut w1, RegistryEvent::Joined(r1), "ns1 watcher", case)
        .await;
    c.quiet_opt(&mut w1, Duration::from_millis(200), case).await;
}

/// Many concurrent publishers on many handles all land; exactly one exclusive publisher wins a contended name.
pub async fn many_concurrent_publishers(c: &RegistryConformance) {
    let case = "many";
    let ns = c.ns("many");
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(c.handle().await);
    }
    let mut tasks = Vec::new();
    for i in 0..200u16 {
        let reg = handles[usize::from(i) % handles.len()].clone();
        let r = record(&ns, &format!("node-{i:03}"), 3000 + i);
        tasks.push(tokio::spawn(async move {
            reg.publish(&r, Duration::from_secs(60), NamePolicy::Exclusive)
                .await
        }));
    }
    for t in tasks {
        t.await
            .expect("publisher task")
            .unwrap_or_else(|e| panic!("[{case}] concurrent publish failed: {e}"));
    }
    let reg = c.handle().await;
    let all = lookup(&reg, &ns, "*", case).await;
    assert_eq!(
        all.len(),
        200,
        "[{case}] every concurrent publish is visible"
    );
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "[{case}] results sorted by name"
    );
    // Contended exclusive publish of one name: exactly one winner.
    let mut tasks = Vec::new();
    for i in 0..20u16 {
        let reg = handles[usize::from(i) % handles.len()].clone();
        let r = record(&ns, "contended", 4000 + i);
        tasks.push(tokio::spawn(async move {
            reg.publish(&r, Duration::from_secs(60), NamePolicy::Exclusive)
                .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => winners += 1,
            Err(Error::NameTaken { .. }) => {}
            Err(e) => panic!("[{case}] contended exclusive publish failed with {e}"),
        }
    }
    assert_eq!(
        winners, 1,
        "[{case}] exactly one exclusive publisher wins a contended name"
    );
}

/// A zero ttl is an error and stores nothing.
pub async fn zero_ttl_is_rejected(c: &RegistryConformance) {
    let case = "zero_ttl";
    let reg = c.handle().await;
    let ns = c.ns("ttl0");
    let r = record(&ns, "x", 1);
    assert!(
        reg.publish(&r, Duration::ZERO, NamePolicy::Takeover)
            .await
            .is_err(),
        "[{case}] publish with ttl 0 is an error"
    );
    assert!(
        lookup(&reg, &ns, "x", case).await.is_empty(),
        "[{case}] nothing stored"
    );
}

/// Dropping a watch stream does not disturb the others on the same handle.
pub async fn dropped_watcher_does_not_disturb_others(c: &RegistryConformance) {
    let case = "dropped_watcher";
    let reg = c.handle().await;
    let ns = c.ns("dropw");
    let dropped = c.watch(&reg, &ns, case).await;
    let mut kept = c.watch(&reg, &ns, case).await;
    drop(dropped);
    let r = record(&ns, "x", 1);
    publish(&reg, &r, c.long_ttl(), NamePolicy::Takeover, case).await;
    assert_eq!(
        c.next(&mut kept, case).await,
        RegistryEvent::Joined(r),
        "[{case}] remaining watcher still served"
    );
}

/// Unreadable records stored next to good ones (needs [`RegistryConformance::raw_writer`]) are skipped by lookups, and do not stop the good ones from expiring with their event.
pub async fn malformed_records_are_skipped(c: &RegistryConformance) {
    let case = "malformed";
    let inject = c
        .injector
        .clone()
        .expect("malformed_records_are_skipped needs RegistryConformance::raw_writer");
    let reg = c.handle().await;
    let ns = c.ns("bad");
    let good = record(&ns, "good-1", 1);
    publish(&reg, &good, c.long_ttl(), NamePolicy::Takeover, case).await;
    let garbage: [&[u8]; 4] = [
        b"not json at all",
        b"{\"name\":",
        b"{\"version\":1}",
        b"\xff\xfe\x00binary",
    ];
    for (i, bytes) in garbage.iter().enumerate() {
        inject(
            ns.clone(),
            PeerName::new(&format!("good-bad{i}")).expect("name"),
            bytes.to_vec(),
        )
        .await;
    }
    let found = lookup(&reg, &ns, "good*", case).await;
    assert_eq!(
        found,
        vec![good.clone()],
        "[{case}] unreadable records are skipped, readable ones returned"
    );
    let exact = lookup(&reg, &ns, "good-bad0", case).await;
    assert!(
        exact.is_empty(),
        "[{case}] an unreadable record is not found by exact lookup either"
    );
    // The garbage does not stop the machine: a good record next to it still
    // expires, with its one event, and '*' still lists the good ones.
    let mut events = c.watcher(&reg, &ns, case).await;
    let short = record(&ns, "good-2", 2);
    publish(&reg, &short, c.ttl, NamePolicy::Takeover, case).await;
    c.expect(
        &mut events,
        RegistryEvent::Joined(short.clone()),
        "Joined next to garbage",
        case,
    )
    .await;
    let Some(events) = events.as_mut() else {
        sleep(c.ttl + Duration::from_millis(50)).await;
        assert!(
            lookup(&reg, &ns, "good-2", case).await.is_empty(),
            "[{case}] a good record next to unreadable ones expires"
        );
        assert_eq!(
            lookup(&reg, &ns, "*", case).await,
            vec![good],
            "[{case}] '*' lists the good records only"
        );
        return;
    };
    match timeout(c.ttl + c.slack, events.next()).await {
        Ok(Some(Ok(RegistryEvent::Expired { name, instance }))) => assert_eq!(
            (name, instance),
            (short.name.clone(), short.instance),
            "[{case}] the expiry reported is the good record's"
        ),
        Ok(Some(Ok(other))) => panic!("[{case}] expected the good record's Expired, got {other:?}"),
        Ok(Some(Err(e))) => panic!("[{case}] watch stream failed: {e}"),
        Ok(None) => panic!("[{case}] watch stream ended"),
        Err(_) => panic!(
            "[{case}] a good record next to unreadable ones did not expire within ttl + slack"
        ),
    }
    assert_eq!(
        lookup(&reg, &ns, "*", case).await,
        vec![good],
        "[{case}] '*' lists the good records only"
    );
}

/// A refresh after the record's ttl ran out is `NameLost`, and does not
/// bring the record back: it stays invisible and is reported `Expired` once.
pub async fn refresh_after_expiry_is_name_lost(c: &RegistryConformance) {
    let case = "refresh_after_expiry";
    let reg = c.handle().await;
    let ns = c.ns("relost");
    let mut events = c.watcher(&reg, &ns, case).await;
    let r = record(&ns, "late", 1);
    publish(&reg, &r, c.ttl, NamePolicy::Takeover, case).await;
    c.expect(
        &mut events,
        RegistryEvent::Joined(r.clone()),
        "Joined",
        case,
    )
    .await;
    sleep(c.ttl + Duration::from_millis(50)).await;
    match reg.refresh(&ns, &r.name, r.instance, c.long_ttl()).await {
        Err(Error::NameLost { instance, .. }) => assert_eq!(instance, r.instance),
        other => panic!("[{case}] refresh after expiry must be NameLost, got {other:?}"),
    }
    assert!(
        lookup(&reg, &ns, "late", case).await.is_empty(),
        "[{case}] the refresh did not revive the record"
    );
    c.expect(
        &mut events,
        RegistryEvent::Expired {
            name: r.name.clone(),
            instance: r.instance,
        },
        "one Expired",
        case,
    )
    .await;
    c.quiet_opt(&mut events, Duration::from_millis(300), case)
        .await;
    assert!(
        lookup(&reg, &ns, "*", case).await.is_empty(),
        "[{case}] still gone"
    );
    // The owner's way back is to publish again.
    publish(&reg, &r, c.long_ttl(), NamePolicy::Exclusive, case).await;
    c.expect(
        &mut events,
        RegistryEvent::Joined(r.clone()),
        "Joined again after publishing anew",
        case,
    )
    .await;
}

/// After the backend lost a namespace's event history (needs
/// [`RegistryConformance::resync_trigger`]): a raw watcher gets `Resync` (or
/// nothing, if the handle reconciles by itself), listings still match what
/// is stored, later events flow, and a [`CachingRegistry`](crate::CachingRegistry)
/// over the backend reports each later change exactly once, with no `Resync`
/// and nothing for names that did not change.
pub async fn resync_then_listing_matches(c: &RegistryConformance) {
    let case = "resync";
    let trigger = c
        .resync
        .clone()
        .expect("resync_then_listing_matches needs RegistryConformance::resync_trigger");
    let reg = c.handle().await;
    let ns = c.ns("resync");
    let (a, b) = (record(&ns, "a", 1), record(&ns, "b", 2));
    publish(&reg, &a, c.long_ttl(), NamePolicy::Takeover, case).await;
    publish(&reg, &b, c.long_ttl(), NamePolicy::Takeover, case).await;
    let mut raw = c.watch(&reg, &ns, case).await;
    let cached = crate::CachingRegistry::new(c.handle().await);
    let mut reconciled = cached
        .watch(&ns)
        .await
        .unwrap_or_else(|e| panic!("[{case}] cached watch failed: {e}"));
    trigger(ns.clone()).await;
    let cc = record(&ns, "c", 3);
    publish(&reg, &cc, c.long_ttl(), NamePolicy::Takeover, case).await;
    // The raw watcher: Joined(c), or a Resync whose listing holds c (a
    // change made around the loss may be folded into the listing).
    let resynced = match timeout(c.slack * 2, raw.next()).await {
        Ok(Some(Ok(RegistryEvent::Resync))) => {
            let listed = lookup(&reg, &ns, "*", case).await;
            assert!(
                listed.contains(&cc),
                "[{case}] a listing after Resync holds what was published: {listed:?}"
            );
            true
        }
        Ok(Some(Ok(RegistryEvent::Joined(r)))) if r == cc => false,
        Ok(Some(Ok(other))) => {
            panic!("[{case}] unexpected event after the history was lost: {other:?}")
        }
        Ok(Some(Err(e))) => panic!("[{case}] watch stream failed: {e}"),
        Ok(None) => panic!("[{case}] watch stream ended"),
        Err(_) => panic!("[{case}] neither Resync nor Joined after the history was lost"),
    };
    // Either way, events flow again afterwards.
    let d = record(&ns, "d", 4);
    publish(&reg, &d, c.long_ttl(), NamePolicy::Takeover, case).await;
    loop {
        match c.next_any(&mut raw, case).await {
            RegistryEvent::Joined(r) if r == d => break,
            // A second marker, or c's own event, may still be on the way.
            RegistryEvent::Resync => {}
            RegistryEvent::Joined(r) if r == cc && resynced => {}
            other => panic!("[{case}] unexpected event after the resync: {other:?}"),
        }
    }
    reg.unpublish(&ns, &d.name, d.instance)
        .await
        .unwrap_or_else(|e| panic!("[{case}] unpublish failed: {e}"));
    let all = vec![a.clone(), b.clone(), cc.clone()];
    assert_eq!(
        lookup(&reg, &ns, "*", case).await,
        all,
        "[{case}] the listing after a resync matches what is stored"
    );
    assert_eq!(
        lookup(&c.handle().await, &ns, "*", case).await,
        all,
        "[{case}] another handle lists the same"
    );
    // The cache: each change once. Changes made before it noticed the loss
    // are folded into its listing: d (joined and gone) may show as its two
    // events or not at all.
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = timeout(c.slack, reconciled.next()).await {
        match ev {
            Ok(RegistryEvent::Resync) => panic!("[{case}] a cache watch never yields Resync"),
            Ok(ev) => seen.push(ev),
            Err(e) => panic!("[{case}] cache watch failed: {e}"),
        }
    }
    // Caught up: a departure now is an ordinary event.
    reg.unpublish(&ns, &a.name, a.instance)
        .await
        .unwrap_or_else(|e| panic!("[{case}] unpublish failed: {e}"));
    let left_a = RegistryEvent::Left {
        name: a.name.clone(),
        instance: a.instance,
    };
    assert_eq!(
        c.next(&mut reconciled, case).await,
        left_a,
        "[{case}] the cache reports a later departure"
    );
    seen.push(left_a.clone());
    let about = |n: &PeerName| -> Vec<&RegistryEvent> {
        seen.iter().filter(|e| e.name() == Some(n)).collect()
    };
    assert_eq!(
        about(&cc.name),
        vec![&RegistryEvent::Joined(cc.clone())],
        "[{case}] the cache reports c's arrival once: {seen:?}"
    );
    assert_eq!(
        about(&a.name),
        vec![&left_a],
        "[{case}] and a's departure once: {seen:?}"
    );
    assert!(
        about(&b.name).is_empty(),
        "[{case}] nothing about b, which did not change: {seen:?}"
    );
    let d_events = about(&d.name);
    assert!(
        d_events.is_empty()
            || d_events
                == vec![
                    &RegistryEvent::Joined(d.clone()),
                    &RegistryEvent::Left {
                        name: d.name.clone(),
                        instance: d.instance
                    }
                ],
        "[{case}] d's passage is reported whole or not at all: {seen:?}"
    );
    c.quiet(&mut reconciled, Duration::from_millis(300), case)
        .await;
    assert_eq!(
        cached
            .lookup(&ns, &pat("*"))
            .await
            .unwrap_or_else(|e| panic!("[{case}] cached lookup failed: {e}")),
        vec![b, cc],
        "[{case}] the cache agrees with the backend"
    );
}

/// For a backend [without watch](RegistryConformance::without_watch): a
/// [`CachingRegistry`](crate::CachingRegistry) over it polls the namespace,
/// and its watch stream reports a join, an update and a departure made
/// through another handle (the departure as `Expired`: a listing cannot tell
/// it from an expiry), an expiry, each once.
pub async fn a_cache_polls_a_registry_without_watch(c: &RegistryConformance) {
    let case = "polled";
    let reg = c.handle().await;
    let ns = c.ns("polled");
    let config = crate::CachingConfig {
        poll_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let cached = crate::CachingRegistry::with_config(c.handle().await, config);
    // A name that stays, so that departures leave a non-empty namespace.
    let stays = record(&ns, "stays", 1);
    publish(&reg, &stays, c.long_ttl(), NamePolicy::Takeover, case).await;
    let mut events = cached
        .watch(&ns)
        .await
        .unwrap_or_else(|e| panic!("[{case}] a cache over a backend without watch polls it: {e}"));
    let a = record(&ns, "a", 2);
    publish(&reg, &a, c.long_ttl(), NamePolicy::Takeover, case).await;
    assert_eq!(
        c.next(&mut events, case).await,
        RegistryEvent::Joined(a.clone()),
        "[{case}] Joined"
    );
    let a2 = a.clone().with_metadata("round", "2");
    publish(&reg, &a2, c.long_ttl(), NamePolicy::Takeover, case).await;
    assert_eq!(
        c.next(&mut events, case).await,
        RegistryEvent::Updated(a2.clone()),
        "[{case}] Updated"
    );
    reg.unpublish(&ns, &a2.name, a2.instance)
        .await
        .unwrap_or_else(|e| panic!("[{case}] unpublish failed: {e}"));
    let gone = RegistryEvent::Expired {
        name: a2.name.clone(),
        instance: a2.instance,
    };
    assert_eq!(
        c.next(&mut events, case).await,
        gone,
        "[{case}] a departure is Expired"
    );
    let short = record(&ns, "short", 3);
    publish(&reg, &short, c.ttl, NamePolicy::Takeover, case).await;
    assert_eq!(
        c.next(&mut events, case).await,
        RegistryEvent::Joined(short.clone()),
        "[{case}] Joined"
    );
    match timeout(c.ttl + c.slack, events.next()).await {
        Ok(Some(Ok(ev))) => assert_eq!(
            ev,
            RegistryEvent::Expired {
                name: short.name.clone(),
                instance: short.instance
            },
            "[{case}] Expired"
        ),
        other => panic!("[{case}] expected Expired within ttl + slack, got {other:?}"),
    }
    c.quiet(&mut events, Duration::from_millis(500), case).await;
    assert_eq!(
        cached
            .lookup(&ns, &pat("*"))
            .await
            .unwrap_or_else(|e| panic!("[{case}] cached lookup failed: {e}")),
        vec![stays],
        "[{case}] the cache agrees with the backend"
    );
}
