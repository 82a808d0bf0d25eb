//! How alive a peer looks: [`Lease`], [`Liveness`] and the
//! [`LivenessTracker`] behind the *evasive* state.
//!
//! A node refreshes its record every third of its TTL (the node publishes
//! that TTL in [`PeerRecord::ttl_ms`]). A healthy record therefore always has
//! more than two thirds of its TTL left. A peer whose record has less than
//! half its TTL left has missed a heartbeat, by at least half an interval, but
//! has not expired yet: it is **evasive** (the term comes from ZeroMQ's Zyre).
//! It becomes alive again with its next refresh, or expires.
//!
//! The time left comes from the registry's own clock ([`Registry::lookup_leases`](crate::Registry::lookup_leases)),
//! so the clocks of the peer and of the observer do not matter.

use std::collections::HashMap;
use std::time::Duration;

use crate::name::PeerName;
use crate::record::{InstanceId, PeerRecord};

/// A live record and the time it has left, as the registry saw it when it
/// answered [`Registry::lookup_leases`](crate::Registry::lookup_leases).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The record.
    pub record: PeerRecord,
    /// Time until the record expires without a refresh, by the registry's
    /// clock at the moment it answered; `None` if the backend cannot tell.
    pub expires_in: Option<Duration>,
}

impl Lease {
    /// A lease of `record` with `expires_in` left.
    pub fn new(record: PeerRecord, expires_in: Option<Duration>) -> Self {
        Lease { record, expires_in }
    }

    /// The records of `leases`, in their order: a backend's
    /// [`Registry::lookup`](crate::Registry::lookup) from its
    /// [`lookup_leases`](crate::Registry::lookup_leases).
    pub fn into_records(leases: impl IntoIterator<Item = Lease>) -> Vec<PeerRecord> {
        leases.into_iter().map(|lease| lease.record).collect()
    }

    /// The TTL the peer publishes with ([`PeerRecord::ttl_ms`]).
    pub fn ttl(&self) -> Option<Duration> {
        self.record.ttl_ms.map(Duration::from_millis)
    }

    /// Alive, evasive, or unknown (the backend or the peer does not say
    /// enough to tell).
    pub fn liveness(&self) -> Liveness {
        match (self.expires_in, self.ttl()) {
            (Some(left), Some(ttl)) if !ttl.is_zero() => {
                if left < ttl / 2 {
                    Liveness::Evasive
                } else {
                    Liveness::Alive
                }
            }
            _ => Liveness::Unknown,
        }
    }
}

/// How alive a listed peer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Liveness {
    /// It refreshed its record within the last heartbeat interval and a half.
    Alive,
    /// It missed a heartbeat: less than half its TTL is left, and it has not
    /// expired yet.
    Evasive,
    /// The backend does not report the time left, or the record does not
    /// carry its TTL (written by an older build or another implementation).
    Unknown,
}

impl Liveness {
    /// `"alive"`, `"evasive"` or `"unknown"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Evasive => "evasive",
            Liveness::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of a peer's liveness, from [`LivenessTracker::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LivenessChange {
    /// The instance missed a heartbeat and has `expires_in` left.
    Evasive {
        /// Its name.
        name: PeerName,
        /// The instance.
        instance: InstanceId,
        /// Time until it expires without a refresh.
        expires_in: Duration,
    },
    /// The instance was evasive and refreshed its record again.
    Alive {
        /// Its name.
        name: PeerName,
        /// The instance.
        instance: InstanceId,
    },
}

/// Turns successive listings of leases into [`LivenessChange`]s. Pure: no
/// clock, no I/O; whoever polls the registry feeds it.
///
/// Each instance is tracked on its own: a name taken over by another
/// instance starts over (the new instance is not "alive again"), and an
/// instance that vanished from the listing is forgotten without a change
/// (its departure is the registry's `Left` or `Expired` event). An instance
/// first seen evasive is reported evasive; one first seen alive is not
/// reported.
#[derive(Debug, Default)]
pub struct LivenessTracker {
    known: HashMap<PeerName, (InstanceId, Liveness)>,
}

impl LivenessTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state last seen for `name`, if it was listed.
    pub fn state(&self, name: &PeerName) -> Option<(InstanceId, Liveness)> {
        self.known.get(name).copied()
    }

    /// Feeds a complete listing of the tracked names (every lease matching
    /// the pattern the caller polls) and returns what changed since the last.
    pub fn observe<'a>(
        &mut self,
        leases: impl IntoIterator<Item = &'a Lease>,
    ) -> Vec<LivenessChange> {
        let mut changes = Vec::new();
        let mut next = HashMap::with_capacity(self.known.len());
        for lease in leases {
            let record = &lease.record;
            let now = lease.liveness();
            let before = self
                .known
                .get(&record.name)
                .filter(|(instance, _)| *instance == record.instance)
                .map(|(_, state)| *state);
            match (before, now) {
                (Some(Liveness::Evasive), Liveness::Evasive) => {}
                (_, Liveness::Evasive) => changes.push(LivenessChange::Evasive {
                    name: record.name.clone(),
                    instance: record.instance,
                    expires_in: lease.expires_in.unwrap_or_default(),
                }),
                (Some(Liveness::Evasive), Liveness::Alive) => changes.push(LivenessChange::Alive {
                    name: record.name.clone(),
                    instance: record.instance,
                }),
                _ => {}
            }
            next.insert(record.name.clone(), (record.instance, now));
        }
        self.known = next;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Namespace;

    fn lease(name: &str, instance: u128, ttl_ms: u64, left_ms: Option<u64>) -> Lease {
        let mut record = PeerRecord::new(
            Namespace::new("ns").unwrap(),
            PeerName::new(name).unwrap(),
            InstanceId::from_u128(instance),
        );
        record.ttl_ms = Some(ttl_ms);
        Lease::new(record, left_ms.map(Duration::from_millis))
    }

    #[test]
    fn liveness_follows_the_time_left() {
        assert_eq!(lease("a", 1, 9000, Some(9000)).liveness(), Liveness::Alive);
        assert_eq!(lease("a", 1, 9000, Some(4501)).liveness(), Liveness::Alive);
        assert_eq!(
            lease("a", 1, 9000, Some(4499)).liveness(),
            Liveness::Evasive
        );
        assert_eq!(lease("a", 1, 9000, Some(0)).liveness(), Liveness::Evasive);
        assert_eq!(lease("a", 1, 9000, None).liveness(), Liveness::Unknown);
        let mut no_ttl = lease("a", 1, 9000, Some(10));
        no_ttl.record.ttl_ms = None;
        assert_eq!(no_ttl.liveness(), Liveness::Unknown);
    }

    #[test]
    fn evasive_then_alive_then_gone() {
        let mut t = LivenessTracker::new();
        assert!(t.observe(&[lease("a", 1, 1000, Some(900))]).is_empty());
        let c = t.observe(&[lease("a", 1, 1000, Some(400))]);
        assert!(
            matches!(&c[..], [LivenessChange::Evasive { expires_in, .. }] if expires_in.as_millis() == 400)
        );
        // Still evasive: no repeat.
        assert!(t.observe(&[lease("a", 1, 1000, Some(200))]).is_empty());
        let c = t.observe(&[lease("a", 1, 1000, Some(1000))]);
        assert!(matches!(&c[..], [LivenessChange::Alive { .. }]));
        // Vanished: no change (the registry reports the departure).
        assert!(t.observe(&[]).is_empty());
        assert_eq!(t.state(&PeerName::new("a").unwrap()), None);
    }

    #[test]
    fn a_new_instance_starts_over() {
        let mut t = LivenessTracker::new();
        t.observe(&[lease("a", 1, 1000, Some(100))]);
        // Taken over by instance 2, alive: not "alive again".
        assert!(t.observe(&[lease("a", 2, 1000, Some(1000))]).is_empty());
        // Taken over by instance 3 that is already evasive: reported.
        let c = t.observe(&[lease("a", 3, 1000, Some(100))]);
        assert!(
            matches!(&c[..], [LivenessChange::Evasive { instance, .. }] if *instance == InstanceId::from_u128(3))
        );
    }

    #[test]
    fn unknown_is_never_reported() {
        let mut t = LivenessTracker::new();
        assert!(t.observe(&[lease("a", 1, 1000, None)]).is_empty());
        assert!(t.observe(&[lease("a", 1, 1000, None)]).is_empty());
    }
}
