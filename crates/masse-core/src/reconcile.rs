//! [`Reconciler`]: what a watcher of one namespace knows, and how a listing
//! after a [`RegistryEvent::Resync`] turns into ordinary events.
//!
//! Pure state, no I/O and no clock of its own (the caller passes `now`), so
//! every case is a unit test. [`CachingRegistry`](crate::CachingRegistry)
//! drives one per watched namespace.
//!
//! The rules:
//!
//! - The watcher's view starts from a listing ([`Reconciler::new`]).
//! - Backend events update the view; an event that tells the watcher nothing
//!   new (a `Joined` of the record it already holds, a `Left`/`Expired` of an
//!   instance it does not hold) is dropped, so a change reported once by a
//!   diff is not reported again when the backend's own event follows.
//! - After a resync, a new listing is diffed against the view: new names give
//!   `Joined`, changed ones `Updated`. A name that vanished is only *suspect*
//!   for a grace period: an empty registry (restarted without its data) lists
//!   nothing until the live owners have re-published, and reporting them gone
//!   meanwhile would be a spurious `Expired` followed by a spurious `Joined`.
//!   Suspects stay in the view (a dialer keeps using their last record); when
//!   the grace is over, a second listing decides: still absent → exactly one
//!   `Expired` for the instance the watcher knew.
//! - A registry that cannot watch is polled: each listing is diffed against
//!   the view ([`Reconciler::poll`]). New names give `Joined`, changed ones
//!   `Updated`, and a name missing from a listing that is not empty is gone
//!   at once: one `Expired` (a listing cannot tell an unpublish from an
//!   expiry, and `Expired` claims no more than what is known). An *empty*
//!   listing while the view holds names is what a registry that lost its
//!   data lists (a node's own record is in every listing of its namespace):
//!   its names become suspects, settled as after a resync.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::name::PeerName;
use crate::pattern::Pattern;
use crate::record::PeerRecord;
use crate::registry::RegistryEvent;

/// A watcher's view of one namespace; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Reconciler {
    known: BTreeMap<PeerName, PeerRecord>,
    /// Names absent from the last listing, kept until their deadline.
    suspects: HashMap<PeerName, Instant>,
    grace: Duration,
}

impl Reconciler {
    /// A view that starts from `listing`; vanished names stay suspect for `grace`.
    pub(crate) fn new(listing: Vec<PeerRecord>, grace: Duration) -> Self {
        Reconciler {
            known: listing.into_iter().map(|r| (r.name.clone(), r)).collect(),
            suspects: HashMap::new(),
            grace,
        }
    }

    /// Applies a backend event and returns it if it tells the watcher
    /// something new, `None` if it repeats what the view already holds. A
    /// record of a name the watcher holds is `Updated`, of one it does not
    /// hold `Joined`, whatever the backend called it.
    /// `Resync` is never returned: the caller lists and calls [`resync`](Self::resync).
    pub(crate) fn event(&mut self, event: RegistryEvent) -> Option<RegistryEvent> {
        match &event {
            RegistryEvent::Joined(r) | RegistryEvent::Updated(r) => {
                self.suspects.remove(&r.name);
                let before = self.known.insert(r.name.clone(), r.clone());
                match before {
                    Some(old) if old == *r => None,
                    // The watcher holds the name: whatever the backend saw
                    // (a free name after it lost its data), to the watcher
                    // this is a change of a live name.
                    Some(_) => Some(RegistryEvent::Updated(r.clone())),
                    None => Some(RegistryEvent::Joined(r.clone())),
                }
            }
            RegistryEvent::Left { name, instance } | RegistryEvent::Expired { name, instance } => {
                if self.known.get(name).map(|r| r.instance) != Some(*instance) {
                    return None;
                }
                self.known.remove(name);
                self.suspects.remove(name);
                Some(event)
            }
            RegistryEvent::Resync => None,
        }
    }

    /// Diffs a listing taken after a resync against the view: events for
    /// names that appeared or changed, in name order. Names that vanished
    /// become suspects until `now + grace` (a name already suspect keeps its
    /// deadline).
    pub(crate) fn resync(&mut self, listing: Vec<PeerRecord>, now: Instant) -> Vec<RegistryEvent> {
        let listed: BTreeMap<PeerName, PeerRecord> =
            listing.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut out = Vec::new();
        for name in self.known.keys() {
            if !listed.contains_key(name) {
                self.suspects
                    .entry(name.clone())
                    .or_insert(now + self.grace);
            }
        }
        self.take_listed(listed, &mut out);
        out
    }

    /// Diffs a listing taken by a poll against the view (see the [module
    /// docs](self)): names that appeared or changed give `Joined`/`Updated`;
    /// names absent from a non-empty listing give one `Expired` each, unless
    /// they are suspects whose grace is not over yet; an empty listing makes
    /// every name of the view a suspect (a suspect already keeps its
    /// deadline). Suspects whose grace is over and that are still absent
    /// give `Expired`. Events for vanished names come first, then the others
    /// in name order.
    pub(crate) fn poll(&mut self, listing: Vec<PeerRecord>, now: Instant) -> Vec<RegistryEvent> {
        if listing.is_empty() {
            let out = self.recheck(Vec::new(), now);
            let more = self.resync(Vec::new(), now);
            debug_assert!(more.is_empty(), "an empty listing adds nothing");
            return out;
        }
        let listed: BTreeMap<PeerName, PeerRecord> =
            listing.into_iter().map(|r| (r.name.clone(), r)).collect();
        let gone: Vec<PeerName> = self
            .known
            .keys()
            .filter(|name| {
                !listed.contains_key(*name)
                    && self.suspects.get(*name).is_none_or(|until| *until <= now)
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for name in gone {
            self.suspects.remove(&name);
            if let Some(record) = self.known.remove(&name) {
                out.push(RegistryEvent::Expired {
                    name,
                    instance: record.instance,
                });
            }
        }
        self.take_listed(listed, &mut out);
        out
    }

    /// The records of the view that `pattern` matches, suspects included,
    /// sorted by name.
    pub(crate) fn matching(&self, pattern: &Pattern) -> Vec<PeerRecord> {
        match pattern.as_exact() {
            Some(name) => self.known.get(name).cloned().into_iter().collect(),
            None => self
                .known
                .values()
                .filter(|r| pattern.matches(r.name.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Names of the view that `pattern` matches but `answer` (a lookup made
    /// while no watch is live, sorted by name) lacks become suspect: such an
    /// answer cannot tell a removal from a registry that lost its data. The
    /// next listing settles them. Returns whether any name is newly suspect.
    pub(crate) fn suspect_absent(
        &mut self,
        pattern: &Pattern,
        answer: &[PeerRecord],
        now: Instant,
    ) -> bool {
        let absent = |name: &PeerName| answer.binary_search_by(|r| r.name.cmp(name)).is_err();
        let mut missing: Vec<PeerName> = Vec::new();
        match pattern.as_exact() {
            Some(name) => {
                if self.known.contains_key(name) && absent(name) {
                    missing.push(name.clone());
                }
            }
            None => missing.extend(
                self.known
                    .keys()
                    .filter(|n| pattern.matches(n.as_str()) && absent(n))
                    .cloned(),
            ),
        }
        let mut any = false;
        for name in missing {
            if let std::collections::hash_map::Entry::Vacant(v) = self.suspects.entry(name) {
                v.insert(now + self.grace);
                any = true;
            }
        }
        any
    }

    /// When the earliest suspect's grace ends, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.suspects.values().min().copied()
    }

    /// True while some name awaits its second listing.
    pub(crate) fn has_suspects(&self) -> bool {
        !self.suspects.is_empty()
    }

    /// Is `record` (this very instance) only suspect, not confirmed by the
    /// last listing?
    pub(crate) fn is_suspect(&self, record: &PeerRecord) -> bool {
        !self.suspects.is_empty()
            && self.suspects.contains_key(&record.name)
            && self.known.get(&record.name).map(|r| r.instance) == Some(record.instance)
    }

    /// The suspect records (their last known version), for answers that
    /// must not treat them as absent yet.
    pub(crate) fn suspect_records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.suspects.keys().filter_map(|n| self.known.get(n))
    }

    /// Decides the suspects whose grace is over with a fresh listing: still
    /// absent → one `Expired`; present → `Updated` if it changed. Other names
    /// in the listing are diffed as by [`resync`](Self::resync), except that
    /// names that vanished since do not become suspects here (the backend's
    /// own events report them).
    pub(crate) fn recheck(&mut self, listing: Vec<PeerRecord>, now: Instant) -> Vec<RegistryEvent> {
        let listed: BTreeMap<PeerName, PeerRecord> =
            listing.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut out = Vec::new();
        let due: Vec<PeerName> = self
            .suspects
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.suspects.remove(&name);
            if listed.contains_key(&name) {
                continue;
            }
            if let Some(gone) = self.known.remove(&name) {
                out.push(RegistryEvent::Expired {
                    name,
                    instance: gone.instance,
                });
            }
        }
        self.take_listed(listed, &mut out);
        out
    }

    /// Takes every listed record into the view: `Joined` for a name it did
    /// not hold, `Updated` for one that changed; listed names are not suspect.
    fn take_listed(
        &mut self,
        listed: BTreeMap<PeerName, PeerRecord>,
        out: &mut Vec<RegistryEvent>,
    ) {
        for (name, record) in listed {
            self.suspects.remove(&name);
            match self.known.get(&name) {
                Some(k) if *k == record => {}
                Some(_) => out.push(RegistryEvent::Updated(record.clone())),
                None => out.push(RegistryEvent::Joined(record.clone())),
            }
            self.known.insert(name, record);
        }
    }

    #[cfg(test)]
    fn known(&self) -> Vec<&str> {
        self.known.keys().map(|n| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::InstanceId;

    fn rec(name: &str) -> PeerRecord {
        PeerRecord::new(
            "ns".parse().unwrap(),
            name.parse().unwrap(),
            InstanceId::random(),
        )
    }

    const GRACE: Duration = Duration::from_secs(4);

    #[test]
    fn duplicates_of_what_the_view_holds_are_dropped() {
        let a = rec("a");
        let mut r = Reconciler::new(vec![a.clone()], GRACE);
        assert_eq!(r.event(RegistryEvent::Joined(a.clone())), None);
        let b = rec("b");
        assert_eq!(
            r.event(RegistryEvent::Joined(b.clone())),
            Some(RegistryEvent::Joined(b.clone()))
        );
        let stranger = RegistryEvent::Expired {
            name: b.name.clone(),
            instance: InstanceId::random(),
        };
        assert_eq!(r.event(stranger), None, "not the instance we know");
        let gone = RegistryEvent::Left {
            name: b.name.clone(),
            instance: b.instance,
        };
        assert_eq!(r.event(gone.clone()), Some(gone.clone()));
        assert_eq!(r.event(gone), None, "reported once");
        assert_eq!(r.event(RegistryEvent::Resync), None);
        assert_eq!(r.known(), ["a"]);
        // A Joined of a name the watcher holds is a change of that name.
        let a2 = rec("a");
        assert_eq!(
            r.event(RegistryEvent::Joined(a2.clone())),
            Some(RegistryEvent::Updated(a2.clone()))
        );
        let unseen = rec("z");
        assert_eq!(
            r.event(RegistryEvent::Updated(unseen.clone())),
            Some(RegistryEvent::Joined(unseen))
        );
    }

    #[test]
    fn a_resync_reports_new_and_changed_names_and_suspects_vanished_ones() {
        let (a, b, c) = (rec("a"), rec("b"), rec("c"));
        let mut r = Reconciler::new(vec![a.clone(), b.clone(), c.clone()], GRACE);
        let t0 = Instant::now();
        let mut b2 = b.clone();
        b2.metadata.insert("k".into(), "v".into());
        let d = rec("d");
        let out = r.resync(vec![a.clone(), b2.clone(), d.clone()], t0);
        assert_eq!(
            out,
            vec![
                RegistryEvent::Updated(b2.clone()),
                RegistryEvent::Joined(d.clone())
            ]
        );
        assert!(r.is_suspect(&c), "c vanished: suspect, not gone");
        assert!(!r.is_suspect(&a));
        assert_eq!(r.known(), ["a", "b", "c", "d"]);
        assert_eq!(r.next_deadline(), Some(t0 + GRACE));
        let suspects: Vec<_> = r.suspect_records().collect();
        assert_eq!(suspects, vec![&c]);
    }

    #[test]
    fn an_owner_that_republishes_within_the_grace_is_never_reported_gone() {
        let (a, c) = (rec("a"), rec("c"));
        let mut r = Reconciler::new(vec![a.clone(), c.clone()], GRACE);
        let t0 = Instant::now();
        // Registry restarted empty: nothing listed.
        assert!(r.resync(vec![], t0).is_empty());
        assert!(r.is_suspect(&a) && r.is_suspect(&c));
        // a re-publishes the same record: nothing new for the watcher.
        assert_eq!(r.event(RegistryEvent::Joined(a.clone())), None);
        assert!(!r.is_suspect(&a));
        // After the grace c is still absent: exactly one Expired.
        let out = r.recheck(vec![a.clone()], t0 + GRACE);
        assert_eq!(
            out,
            vec![RegistryEvent::Expired {
                name: c.name.clone(),
                instance: c.instance
            }]
        );
        assert!(!r.has_suspects());
        // The backend's own late Expired for c (if it had one) is a duplicate.
        let late = RegistryEvent::Expired {
            name: c.name.clone(),
            instance: c.instance,
        };
        assert_eq!(r.event(late), None);
        assert_eq!(r.known(), ["a"]);
    }

    #[test]
    fn a_recheck_before_the_deadline_keeps_the_suspect() {
        let c = rec("c");
        let mut r = Reconciler::new(vec![c.clone()], GRACE);
        let t0 = Instant::now();
        r.resync(vec![], t0);
        assert!(r.recheck(vec![], t0 + GRACE / 2).is_empty());
        assert!(r.is_suspect(&c));
        // A second resync does not push the deadline back.
        r.resync(vec![], t0 + GRACE / 2);
        assert_eq!(r.next_deadline(), Some(t0 + GRACE));
        let out = r.recheck(vec![], t0 + GRACE);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn an_answer_without_a_watch_cannot_make_known_names_vanish() {
        let (a, b) = (rec("a"), rec("b"));
        let mut r = Reconciler::new(vec![a.clone(), b.clone()], GRACE);
        let t0 = Instant::now();
        let p = |s: &str| Pattern::new(s).unwrap();
        assert!(!r.suspect_absent(&p("a"), std::slice::from_ref(&a), t0));
        assert!(!r.suspect_absent(&p("c"), &[], t0));
        assert!(r.suspect_absent(&p("*"), &[], t0));
        assert!(r.is_suspect(&a) && r.is_suspect(&b));
        // The listing once the watch is back settles them.
        assert!(r.resync(vec![a.clone()], t0).is_empty());
        assert!(!r.is_suspect(&a));
        let out = r.recheck(vec![a.clone()], t0 + GRACE);
        assert_eq!(
            out,
            vec![RegistryEvent::Expired {
                name: b.name.clone(),
                instance: b.instance
            }]
        );
    }

    fn expired(r: &PeerRecord) -> RegistryEvent {
        RegistryEvent::Expired {
            name: r.name.clone(),
            instance: r.instance,
        }
    }

    #[test]
    fn a_poll_reports_what_changed_since_the_last_one_once() {
        let (a, b, c) = (rec("a"), rec("b"), rec("c"));
        let mut r = Reconciler::new(vec![a.clone(), b.clone()], GRACE);
        let t0 = Instant::now();
        // The same listing again: nothing.
        assert!(r.poll(vec![a.clone(), b.clone()], t0).is_empty());
        // c joins, b changes.
        let mut b2 = b.clone();
        b2.metadata.insert("k".into(), "v".into());
        let out = r.poll(vec![a.clone(), b2.clone(), c.clone()], t0);
        assert_eq!(
            out,
            vec![
                RegistryEvent::Updated(b2.clone()),
                RegistryEvent::Joined(c.clone())
            ]
        );
        assert!(
            r.poll(vec![a.clone(), b2.clone(), c.clone()], t0)
                .is_empty()
        );
        // a vanishes from a listing that still holds others: gone at once.
        let out = r.poll(vec![b2.clone(), c.clone()], t0);
        assert_eq!(out, vec![expired(&a)]);
        assert!(!r.has_suspects());
        assert!(r.poll(vec![b2.clone(), c.clone()], t0).is_empty());
        // A takeover is an update of the new instance, not a departure.
        let c2 = rec("c");
        assert_eq!(
            r.poll(vec![b2.clone(), c2.clone()], t0),
            vec![RegistryEvent::Updated(c2.clone())]
        );
        // The backend-less way to learn of a departure of our own (the
        // cache's unpublish) is an event; the next poll does not repeat it.
        let left = RegistryEvent::Left {
            name: b2.name.clone(),
            instance: b2.instance,
        };
        assert_eq!(r.event(left.clone()), Some(left));
        assert!(r.poll(vec![c2.clone()], t0).is_empty());
        assert_eq!(r.known(), ["c"]);
    }

    #[test]
    fn an_empty_poll_is_a_possible_loss_of_data_settled_after_the_grace() {
        let (a, b) = (rec("a"), rec("b"));
        let mut r = Reconciler::new(vec![a.clone(), b.clone()], GRACE);
        let t0 = Instant::now();
        assert!(r.poll(vec![], t0).is_empty());
        assert!(r.is_suspect(&a) && r.is_suspect(&b));
        // a re-publishes; b's grace is not over: a listing with a only
        // does not report b yet.
        assert!(r.poll(vec![a.clone()], t0 + GRACE / 2).is_empty());
        assert!(!r.is_suspect(&a) && r.is_suspect(&b));
        // Another empty listing does not push b's deadline back.
        assert!(r.poll(vec![], t0 + GRACE / 2).is_empty());
        assert!(r.poll(vec![a.clone()], t0 + GRACE / 2).is_empty());
        // Grace over, still absent: one Expired, then nothing more.
        assert_eq!(r.poll(vec![a.clone()], t0 + GRACE), vec![expired(&b)]);
        assert!(r.poll(vec![a.clone()], t0 + GRACE * 2).is_empty());
        assert_eq!(r.known(), ["a"]);
        // Settled on an empty listing as well.
        let mut r = Reconciler::new(vec![a.clone()], GRACE);
        assert!(r.poll(vec![], t0).is_empty());
        assert_eq!(r.poll(vec![], t0 + GRACE), vec![expired(&a)]);
        assert!(r.poll(vec![], t0 + GRACE * 2).is_empty());
    }

    #[test]
    fn matching_serves_the_view_suspects_included() {
        let (a, b, w) = (rec("a"), rec("b"), rec("w-1"));
        let mut r = Reconciler::new(vec![a.clone(), b.clone(), w.clone()], GRACE);
        r.resync(vec![a.clone(), w.clone()], Instant::now());
        let p = |s: &str| Pattern::new(s).unwrap();
        assert_eq!(r.matching(&p("*")), vec![a.clone(), b.clone(), w.clone()]);
        assert_eq!(r.matching(&p("b")), vec![b]);
        assert_eq!(r.matching(&p("w-*")), vec![w]);
        assert!(r.matching(&p("z")).is_empty());
    }

    #[test]
    fn a_takeover_during_the_gap_is_an_update_of_the_new_instance() {
        let a = rec("a");
        let mut r = Reconciler::new(vec![a.clone()], GRACE);
        let a2 = rec("a");
        let t0 = Instant::now();
        assert!(r.resync(vec![], t0).is_empty());
        let out = r.recheck(vec![a2.clone()], t0 + GRACE);
        assert_eq!(out, vec![RegistryEvent::Updated(a2.clone())]);
        // The old instance's Expired, if the backend still sends it, is stale.
        let old = RegistryEvent::Expired {
            name: a.name.clone(),
            instance: a.instance,
        };
        assert_eq!(r.event(old), None);
    }
}
