//! The pure state behind the dashboard: what it knows about each watched
//! namespace (peers, their liveness, registry health), the event ring buffer
//! and the counters. No clock and no I/O: the async glue feeds it registry
//! events and lease listings with the time they were seen, so every rule here
//! is tested without sockets.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use masse_core::{
    InstanceId, Lease, Liveness, LivenessChange, LivenessTracker, Namespace, NodeStats, PeerName,
    PeerRecord, RegistryEvent,
};
use serde::Serialize;

/// A name missing from this many consecutive listings, and for at least
/// [`RECONCILE_GRACE`], is dropped even though the watch never said it left
/// (a safety net for a watch that lost events; normally the watch reports
/// `Left` or `Expired` first).
const RECONCILE_LISTINGS: u32 = 3;
/// See [`RECONCILE_LISTINGS`].
const RECONCILE_GRACE: Duration = Duration::from_secs(5);
/// How many instances dropped by reconciliation are remembered, so that a
/// late `Left`/`Expired` from the watch for one of them is not logged twice.
const RECONCILED_MEMORY: usize = 256;

/// What happened, as the event feed and `/api/events` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// A free name was published.
    Joined,
    /// A live name was published again (new record, or another instance).
    Updated,
    /// The instance unpublished itself.
    Left,
    /// The record ran out of time.
    Expired,
    /// The peer missed a heartbeat (less than half its ttl left).
    Evasive,
    /// An evasive peer refreshed its record again.
    Alive,
    /// Listing the namespace failed (the registry is unreachable or refused).
    RegistryDown,
    /// Listing the namespace works again.
    RegistryUp,
}

impl EventKind {
    /// Every kind, in the order `/metrics` lists them.
    pub(crate) const ALL: [EventKind; 8] = [
        EventKind::Joined,
        EventKind::Updated,
        EventKind::Left,
        EventKind::Expired,
        EventKind::Evasive,
        EventKind::Alive,
        EventKind::RegistryDown,
        EventKind::RegistryUp,
    ];

    /// The kind as written in JSON and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Updated => "updated",
            EventKind::Left => "left",
            EventKind::Expired => "expired",
            EventKind::Evasive => "evasive",
            EventKind::Alive => "alive",
            EventKind::RegistryDown => "registry_down",
            EventKind::RegistryUp => "registry_up",
        }
    }
}

/// One line of the event feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DashEvent {
    /// Increasing from 1 across all namespaces: the `since` cursor.
    pub(crate) id: u64,
    /// When the dashboard saw it, in ms since the Unix epoch.
    pub(crate) time_ms: u64,
    /// The namespace.
    pub(crate) namespace: Namespace,
    /// What happened.
    pub(crate) kind: EventKind,
    /// The peer's name (none for registry health events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<PeerName>,
    /// The peer's instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) instance: Option<InstanceId>,
    /// Endpoints (joined, updated), time left (evasive), an error (registry_down),
    /// or why the dashboard inferred the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// A bounded log of [`DashEvent`]s with increasing ids.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: VecDeque<DashEvent>,
    capacity: usize,
    next_id: u64,
}

impl EventLog {
    /// An empty log keeping the last `capacity` events (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        EventLog {
            events: VecDeque::with_capacity(capacity.clamp(1, 4096)),
            capacity: capacity.max(1),
            next_id: 1,
        }
    }

    fn push(&mut self, mut event: DashEvent) -> DashEvent {
        event.id = self.next_id;
        self.next_id += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
        event
    }

    /// Events with an id above `since`, oldest first, at most `limit` (the
    /// newest ones if there are more), and whether some after `since` were
    /// already dropped from the buffer.
    pub(crate) fn since(&self, since: u64, limit: usize) -> (Vec<DashEvent>, bool) {
        let truncated = self
            .events
            .front()
            .is_some_and(|first| first.id > since.saturating_add(1));
        let newer: Vec<&DashEvent> = self.events.iter().filter(|e| e.id > since).collect();
        let skip = newer.len().saturating_sub(limit);
        let out = newer.into_iter().skip(skip).cloned().collect();
        (out, truncated || skip > 0)
    }

    /// The id of the newest event (0 if none yet).
    pub(crate) fn last_id(&self) -> u64 {
        self.next_id - 1
    }
}

/// One peer as the dashboard knows it.
#[derive(Debug, Clone)]
pub(crate) struct PeerView {
    /// Its record.
    pub(crate) record: PeerRecord,
    /// Liveness at the last listing.
    pub(crate) state: Liveness,
    /// When the record expires without a refresh, in ms since the epoch, by
    /// this process's clock (the registry's time left added to the time of
    /// the listing); `None` if the backend does not tell.
    pub(crate) expires_at_ms: Option<u64>,
    /// Whether its arrival was logged, or it was there before the dashboard
    /// (the first listing); `false` for a row a listing added before the
    /// watch's `Joined`, which is then logged as `joined`, not `updated`.
    announced: bool,
    /// Consecutive listings that did not show it.
    missing: u32,
    /// When it was first missing from a listing.
    missing_since_ms: u64,
    /// The node's own figures, if it exposes them and the dashboard joined.
    pub(crate) stats: Option<(u64, NodeStats)>,
}

impl PeerView {
    fn new(record: PeerRecord) -> Self {
        PeerView {
            record,
            state: Liveness::Unknown,
            expires_at_ms: None,
            announced: false,
            missing: 0,
            missing_since_ms: 0,
            stats: None,
        }
    }
}

/// Whether the registry answered the last listing, and how fast.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Health {
    /// `None` before the first listing.
    pub(crate) reachable: Option<bool>,
    /// Round trip of the last successful listing.
    pub(crate) latency: Option<Duration>,
    /// The error of the last failed listing (cleared by a success).
    pub(crate) error: Option<String>,
    /// When the last listing ended, in ms since the epoch.
    pub(crate) checked_ms: u64,
}

/// Everything known about one watched namespace.
#[derive(Debug, Default)]
pub(crate) struct NamespaceView {
    /// Live peers by name.
    pub(crate) peers: BTreeMap<PeerName, PeerView>,
    tracker: LivenessTracker,
    /// Registry health.
    pub(crate) health: Health,
    /// Events seen, by kind (since the dashboard started).
    pub(crate) counts: BTreeMap<EventKind, u64>,
    /// Instances dropped by reconciliation, oldest first.
    reconciled: VecDeque<InstanceId>,
    /// Whether a listing succeeded yet.
    listed: bool,
}

impl NamespaceView {
    /// Peers by liveness: (alive, evasive, unknown).
    pub(crate) fn states(&self) -> [(Liveness, usize); 3] {
        let mut out = [
            (Liveness::Alive, 0),
            (Liveness::Evasive, 0),
            (Liveness::Unknown, 0),
        ];
        for p in self.peers.values() {
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == p.state) {
                slot.1 += 1;
            }
        }
        out
    }
}

/// The state of every watched namespace and the shared event log.
#[derive(Debug)]
pub(crate) struct View {
    /// Watched namespaces.
    pub(crate) namespaces: BTreeMap<Namespace, NamespaceView>,
    /// The event feed.
    pub(crate) events: EventLog,
    /// Bumped on every change, so a stream knows when to send a snapshot.
    pub(crate) version: u64,
}

impl View {
    /// A view of `namespaces`, keeping the last `event_capacity` events.
    pub(crate) fn new(
        namespaces: impl IntoIterator<Item = Namespace>,
        event_capacity: usize,
    ) -> Self {
        View {
            namespaces: namespaces
                .into_iter()
                .map(|ns| (ns, NamespaceView::default()))
                .collect(),
            events: EventLog::new(event_capacity),
            version: 0,
        }
    }

    fn log(
        &mut self,
        now_ms: u64,
        ns: &Namespace,
        kind: EventKind,
        peer: Option<(&PeerName, InstanceId)>,
        detail: Option<String>,
    ) -> DashEvent {
        if let Some(view) = self.namespaces.get_mut(ns) {
            *view.counts.entry(kind).or_default() += 1;
        }
        self.events.push(DashEvent {
            id: 0,
            time_ms: now_ms,
            namespace: ns.clone(),
            kind,
            name: peer.map(|(n, _)| n.clone()),
            instance: peer.map(|(_, i)| i),
            detail,
        })
    }

    /// Applies one event from the registry's watch of `ns`; returns what was
    /// logged (nothing for a namespace not watched, a `Resync`, or a late
    /// departure the dashboard already inferred).
    pub(crate) fn apply_event(
        &mut self,
        ns: &Namespace,
        event: RegistryEvent,
        now_ms: u64,
    ) -> Vec<DashEvent> {
        let Some(view) = self.namespaces.get_mut(ns) else {
            return Vec::new();
        };
        self.version += 1;
        let left = matches!(event, RegistryEvent::Left { .. });
        let joined = matches!(event, RegistryEvent::Joined(_));
        match event {
            RegistryEvent::Joined(record) | RegistryEvent::Updated(record) => {
                let kind = match view.peers.get(&record.name) {
                    _ if !joined => EventKind::Updated,
                    // A Joined for a name already shown (one the first
                    // listing showed, or an earlier event) is an update.
                    Some(p) if p.announced => EventKind::Updated,
                    // Not shown, or a listing showed it before the watch
                    // told: this is its arrival.
                    _ => EventKind::Joined,
                };
                let name = record.name.clone();
                let instance = record.instance;
                let detail = endpoints(&record);
                let peer = match view.peers.remove(&name) {
                    Some(mut old) if old.record.instance == instance => {
                        old.record = record;
                        old.missing = 0;
                        old
                    }
                    _ => PeerView::new(record),
                };
                let mut peer = peer;
                peer.announced = true;
                view.peers.insert(name.clone(), peer);
                vec![self.log(now_ms, ns, kind, Some((&name, instance)), detail)]
            }
            RegistryEvent::Left { name, instance } | RegistryEvent::Expired { name, instance } => {
                let kind = if left {
                    EventKind::Left
                } else {
                    EventKind::Expired
                };
                if let Some(pos) = view.reconciled.iter().position(|i| *i == instance) {
                    view.reconciled.remove(pos);
                    return Vec::new();
                }
                if view
                    .peers
                    .get(&name)
                    .is_some_and(|p| p.record.instance == instance)
                {
                    view.peers.remove(&name);
                }
                vec![self.log(now_ms, ns, kind, Some((&name, instance)), None)]
            }
            // The caching registry reconciles lost events into ordinary
            // ones; a raw marker only means the next listing matters.
            _ => Vec::new(),
        }
    }

    /// Applies a listing of `ns` (every lease in it) that took `latency` and
    /// ended at `now_ms`, or its failure; returns what was logged: evasive
    /// and alive-again peers, registry down/up, and departures inferred for
    /// names the watch never reported gone (see [`RECONCILE_GRACE`]).
    pub(crate) fn apply_listing(
        &mut self,
        ns: &Namespace,
        listing: Result<Vec<Lease>, String>,
        latency: Duration,
        now_ms: u64,
    ) -> Vec<DashEvent> {
        let Some(view) = self.namespaces.get_mut(ns) else {
            return Vec::new();
        };
        self.version += 1;
        let was = view.health.reachable;
        view.health.checked_ms = now_ms;
        let leases = match listing {
            Err(error) => {
                view.health.reachable = Some(false);
                view.health.error = Some(error.clone());
                if was == Some(false) {
                    return Vec::new();
                }
                return vec![self.log(now_ms, ns, EventKind::RegistryDown, None, Some(error))];
            }
            Ok(leases) => leases,
        };
        view.health.reachable = Some(true);
        view.health.latency = Some(latency);
        view.health.error = None;
        // Peers of the first listing were there before the dashboard: not news.
        let first = !view.listed;
        view.listed = true;

        let changes = view.tracker.observe(&leases);
        let mut listed: HashSet<&PeerName> = HashSet::with_capacity(leases.len());
        for lease in &leases {
            let record = &lease.record;
            listed.insert(&record.name);
            let peer = view.peers.entry(record.name.clone()).or_insert_with(|| {
                let mut p = PeerView::new(record.clone());
                p.announced = first;
                p
            });
            if peer.record.instance != record.instance || peer.record != *record {
                // The watch has not told yet (or lost it): show what the
                // registry lists; the watch's event still gets logged.
                let same = peer.record.instance == record.instance;
                let stats = peer.stats.take().filter(|_| same);
                let announced = (peer.announced && same) || first;
                *peer = PeerView::new(record.clone());
                peer.stats = stats;
                peer.announced = announced;
            }
            peer.state = lease.liveness();
            peer.expires_at_ms = lease
                .expires_in
                .map(|d| now_ms.saturating_add(d.as_millis() as u64));
            peer.missing = 0;
        }
        let mut gone = Vec::new();
        for (name, peer) in view.peers.iter_mut() {
            if listed.contains(name) {
                continue;
            }
            if peer.missing == 0 {
                peer.missing_since_ms = now_ms;
            }
            peer.missing += 1;
            let grace = RECONCILE_GRACE.as_millis() as u64;
            if peer.missing >= RECONCILE_LISTINGS
                && now_ms.saturating_sub(peer.missing_since_ms) >= grace
            {
                gone.push((name.clone(), peer.record.instance));
            }
        }
        for (name, instance) in &gone {
            view.peers.remove(name);
            if view.reconciled.len() == RECONCILED_MEMORY {
                view.reconciled.pop_front();
            }
            view.reconciled.push_back(*instance);
        }

        let mut out = Vec::new();
        if was == Some(false) {
            out.push(self.log(now_ms, ns, EventKind::RegistryUp, None, None));
        }
        for change in changes {
            match change {
                LivenessChange::Evasive {
                    name,
                    instance,
                    expires_in,
                } => out.push(self.log(
                    now_ms,
                    ns,
                    EventKind::Evasive,
                    Some((&name, instance)),
                    Some(format!("expires in {:.1} s", expires_in.as_secs_f64())),
                )),
                LivenessChange::Alive { name, instance } => {
                    out.push(self.log(now_ms, ns, EventKind::Alive, Some((&name, instance)), None))
                }
                _ => {}
            }
        }
        for (name, instance) in gone {
            out.push(self.log(
                now_ms,
                ns,
                EventKind::Expired,
                Some((&name, instance)),
                Some("gone from the listing; the watch did not report it".to_owned()),
            ));
        }
        out
    }

    /// Stores the figures `name`'s `instance` reported at `now_ms`.
    pub(crate) fn set_stats(
        &mut self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        stats: NodeStats,
        now_ms: u64,
    ) {
        if let Some(peer) = self
            .namespaces
            .get_mut(ns)
            .and_then(|v| v.peers.get_mut(name))
            .filter(|p| p.record.instance == instance)
        {
            peer.stats = Some((now_ms, stats));
            self.version += 1;
        }
    }
}

/// The endpoints of `record`, comma-separated, if it has any.
fn endpoints(record: &PeerRecord) -> Option<String> {
    (!record.endpoints.is_empty()).then(|| {
        record
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn ns() -> Namespace {
        Namespace::new("prod").unwrap()
    }

    fn record(name: &str, instance: u128) -> PeerRecord {
        let mut r = PeerRecord::new(
            ns(),
            PeerName::new(name).unwrap(),
            InstanceId::from_u128(instance),
        );
        r.ttl_ms = Some(3000);
        r
    }

    fn lease(name: &str, instance: u128, left_ms: u64) -> Lease {
        Lease::new(record(name, instance), Some(Duration::from_millis(left_ms)))
    }

    fn kinds(events: &[DashEvent]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn join_evasive_alive_leave() {
        let mut v = View::new([ns()], 100);
        assert!(v.apply_listing(&ns(), Ok(vec![]), ms(2), T0).is_empty());
        let e = v.apply_event(&ns(), RegistryEvent::Joined(record("a", 1)), T0 + 10);
        assert_eq!(kinds(&e), [EventKind::Joined]);
        assert_eq!(e[0].id, 1);
        let a = PeerName::new("a").unwrap();
        assert_eq!(v.namespaces[&ns()].peers[&a].state, Liveness::Unknown);

        assert!(
            v.apply_listing(&ns(), Ok(vec![lease("a", 1, 2900)]), ms(2), T0 + 100)
                .is_empty()
        );
        let p = &v.namespaces[&ns()].peers[&a];
        assert_eq!(p.state, Liveness::Alive);
        assert_eq!(p.expires_at_ms, Some(T0 + 3000));

        let e = v.apply_listing(&ns(), Ok(vec![lease("a", 1, 1000)]), ms(2), T0 + 2000);
        assert_eq!(kinds(&e), [EventKind::Evasive]);
        assert_eq!(v.namespaces[&ns()].peers[&a].state, Liveness::Evasive);
        assert_eq!(v.namespaces[&ns()].states()[1], (Liveness::Evasive, 1));

        let e = v.apply_listing(&ns(), Ok(vec![lease("a", 1, 3000)]), ms(2), T0 + 2100);
        assert_eq!(kinds(&e), [EventKind::Alive]);

        let e = v.apply_event(
            &ns(),
            RegistryEvent::Left {
                name: a.clone(),
                instance: InstanceId::from_u128(1),
            },
            T0 + 2200,
        );
        assert_eq!(kinds(&e), [EventKind::Left]);
        assert!(v.namespaces[&ns()].peers.is_empty());
        assert_eq!(v.namespaces[&ns()].counts[&EventKind::Joined], 1);
        assert_eq!(v.events.last_id(), 4);
    }

    #[test]
    fn the_first_listing_shows_peers_without_events() {
        let mut v = View::new([ns()], 100);
        let e = v.apply_listing(
            &ns(),
            Ok(vec![lease("a", 1, 3000), lease("b", 2, 500)]),
            ms(1),
            T0,
        );
        // b is evasive already: that is reported; a is not news.
        assert_eq!(kinds(&e), [EventKind::Evasive]);
        assert_eq!(v.namespaces[&ns()].peers.len(), 2);
        // A Joined racing the first listing is an update, not a second row.
        let e = v.apply_event(&ns(), RegistryEvent::Joined(record("a", 1)), T0 + 1);
        assert_eq!(kinds(&e), [EventKind::Updated]);
        assert_eq!(v.namespaces[&ns()].peers.len(), 2);
        // It keeps its liveness: same instance.
        assert_eq!(
            v.namespaces[&ns()].peers[&PeerName::new("a").unwrap()].state,
            Liveness::Alive
        );
    }

    #[test]
    fn a_join_the_listing_saw_first_is_still_a_join() {
        let mut v = View::new([ns()], 100);
        v.apply_listing(&ns(), Ok(vec![]), ms(1), T0);
        v.apply_listing(&ns(), Ok(vec![lease("a", 1, 3000)]), ms(1), T0 + 1);
        let e = v.apply_event(&ns(), RegistryEvent::Joined(record("a", 1)), T0 + 2);
        assert_eq!(kinds(&e), [EventKind::Joined]);
        // Published again: an update.
        let e = v.apply_event(&ns(), RegistryEvent::Updated(record("a", 1)), T0 + 3);
        assert_eq!(kinds(&e), [EventKind::Updated]);
        // Taken over by another instance the listing saw first: an update too.
        v.apply_listing(&ns(), Ok(vec![lease("a", 2, 3000)]), ms(1), T0 + 4);
        let e = v.apply_event(&ns(), RegistryEvent::Updated(record("a", 2)), T0 + 5);
        assert_eq!(kinds(&e), [EventKind::Updated]);
    }

    #[test]
    fn registry_down_and_up_are_logged_once() {
        let mut v = View::new([ns()], 100);
        let e = v.apply_listing(&ns(), Err("refused".into()), ms(0), T0);
        assert_eq!(kinds(&e), [EventKind::RegistryDown]);
        assert!(
            v.apply_listing(&ns(), Err("refused".into()), ms(0), T0 + 1)
                .is_empty()
        );
        let h = &v.namespaces[&ns()].health;
        assert_eq!(
            (h.reachable, h.error.as_deref()),
            (Some(false), Some("refused"))
        );
        let e = v.apply_listing(&ns(), Ok(vec![]), ms(3), T0 + 2);
        assert_eq!(kinds(&e), [EventKind::RegistryUp]);
        let h = &v.namespaces[&ns()].health;
        assert_eq!(
            (h.reachable, h.latency, h.error.clone()),
            (Some(true), Some(ms(3)), None)
        );
    }

    #[test]
    fn a_departure_the_watch_missed_is_inferred_once() {
        let mut v = View::new([ns()], 100);
        v.apply_listing(&ns(), Ok(vec![lease("a", 1, 3000)]), ms(1), T0);
        // Missing from three listings but not yet for the grace: kept.
        for i in 1..=3 {
            assert!(
                v.apply_listing(&ns(), Ok(vec![]), ms(1), T0 + i * 1000)
                    .is_empty()
            );
        }
        assert_eq!(v.namespaces[&ns()].peers.len(), 1);
        let e = v.apply_listing(&ns(), Ok(vec![]), ms(1), T0 + 6001);
        assert_eq!(kinds(&e), [EventKind::Expired]);
        assert!(v.namespaces[&ns()].peers.is_empty());
        // The watch's late report of the same departure is not logged again.
        let late = RegistryEvent::Expired {
            name: PeerName::new("a").unwrap(),
            instance: InstanceId::from_u128(1),
        };
        assert!(v.apply_event(&ns(), late.clone(), T0 + 7000).is_empty());
        // But a second one is (another departure of the same instance cannot
        // happen; this one is simply logged).
        assert_eq!(
            kinds(&v.apply_event(&ns(), late, T0 + 7001)),
            [EventKind::Expired]
        );
    }

    #[test]
    fn a_takeover_replaces_the_row_and_old_departures_do_not_remove_it() {
        let mut v = View::new([ns()], 100);
        v.apply_event(&ns(), RegistryEvent::Joined(record("a", 1)), T0);
        v.apply_event(&ns(), RegistryEvent::Updated(record("a", 2)), T0 + 1);
        let a = PeerName::new("a").unwrap();
        assert_eq!(
            v.namespaces[&ns()].peers[&a].record.instance,
            InstanceId::from_u128(2)
        );
        let e = v.apply_event(
            &ns(),
            RegistryEvent::Expired {
                name: a.clone(),
                instance: InstanceId::from_u128(1),
            },
            T0 + 2,
        );
        assert_eq!(kinds(&e), [EventKind::Expired]);
        assert_eq!(v.namespaces[&ns()].peers.len(), 1);
    }

    #[test]
    fn the_log_is_bounded_and_has_a_cursor() {
        let mut v = View::new([ns()], 3);
        for i in 0..5u128 {
            v.apply_event(
                &ns(),
                RegistryEvent::Joined(record(&format!("p{i}"), i)),
                T0,
            );
        }
        let (all, truncated) = v.events.since(0, 100);
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(truncated);
        let (newer, truncated) = v.events.since(3, 100);
        assert_eq!(newer.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
        assert!(!truncated);
        let (last, truncated) = v.events.since(2, 1);
        assert_eq!(last.iter().map(|e| e.id).collect::<Vec<_>>(), [5]);
        assert!(truncated);
        assert!(v.events.since(5, 10).0.is_empty());
        assert!(v.events.since(u64::MAX, 10).0.is_empty());
    }

    #[test]
    fn other_namespaces_are_ignored() {
        let mut v = View::new([ns()], 10);
        let other = Namespace::new("dev").unwrap();
        assert!(
            v.apply_event(&other, RegistryEvent::Joined(record("a", 1)), T0)
                .is_empty()
        );
        assert!(v.apply_listing(&other, Ok(vec![]), ms(1), T0).is_empty());
        assert_eq!(v.events.last_id(), 0);
    }
}
