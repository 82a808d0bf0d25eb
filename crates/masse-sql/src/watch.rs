//! Watchers: one poller ("hub") per handle and namespace reads `masse_events`
//! from its cursor and fans the events out to every watch stream of that
//! namespace on the handle.
//!
//! Each stream remembers the event id that was the newest when `watch()`
//! returned and receives exactly the events after it. The hub keeps its cursor
//! across database outages, so a stream resumes where it stopped; only if the
//! events it still needed were pruned meanwhile does it get
//! [`RegistryEvent::Resync`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use masse_core::{Namespace, RegistryEvent, WatchSender};
use tokio::sync::{Mutex, Notify, watch};

use crate::codec;
use crate::dialect::EVENT_BATCH;
use crate::error::{Fail, map_err, missing_table};
use crate::registry::Inner;
use crate::store::{Backend, RawEvent};

/// Events a stream may have queued before it is marked lagging (it then gets
/// `Resync` once there is room again, and the events in between are dropped).
pub(crate) const STREAM_CAPACITY: usize = 4096;

/// The poller of one namespace on one handle.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) ns: Namespace,
    pub(crate) state: Mutex<HubState>,
    pub(crate) wake: Notify,
}

#[derive(Debug, Default)]
pub(crate) struct HubState {
    /// Every event up to this id has been handled (`None` until the first
    /// stream sets it).
    pub(crate) cursor: Option<i64>,
    pub(crate) subs: Vec<Sub>,
    /// The hub stopped; a new one must be made.
    pub(crate) closed: bool,
    /// The last poll failed (to log an outage once).
    failing: bool,
    /// The database was replaced under the handle: every stream gets
    /// `Resync` and the cursor starts over at the new log's head.
    pub(crate) reset: bool,
}

#[derive(Debug)]
pub(crate) struct Sub {
    tx: WatchSender,
    /// The newest event id when this stream's `watch()` returned.
    after: i64,
}

impl Hub {
    pub(crate) fn new(ns: Namespace) -> Self {
        Hub {
            ns,
            state: Mutex::new(HubState::default()),
            wake: Notify::new(),
        }
    }
}

impl HubState {
    /// Adds a stream that receives the events after `head`.
    pub(crate) fn subscribe(&mut self, tx: WatchSender, head: i64) {
        if self.cursor.is_none() {
            self.cursor = Some(head);
        }
        self.subs.push(Sub { tx, after: head });
    }
}

/// Runs the hub until its last stream is dropped or the handle goes away.
pub(crate) async fn run(
    hub: Arc<Hub>,
    backend: Arc<dyn Backend>,
    registry: Weak<Inner>,
    mut shutdown: watch::Receiver<()>,
    interval: Duration,
    deadline: Duration,
) {
    loop {
        let every = registry.upgrade().map_or(interval, |i| i.poll_every());
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
            _ = hub.wake.notified() => {}
        }
        let mut st = hub.state.lock().await;
        st.subs.retain(|s| !s.tx.is_closed());
        if st.subs.is_empty() {
            st.closed = true;
            if let Some(inner) = registry.upgrade() {
                inner.forget_hub(&hub);
            }
            tracing::debug!(namespace = %hub.ns, "last watcher gone; poller stops");
            return;
        }
        let polled = tokio::time::timeout(deadline, poll(&hub.ns, &mut st, &*backend)).await;
        let outcome = match polled {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Fail::Db(e))) => {
                if missing_table(&e) {
                    // The log starts over once the tables are back: its ids
                    // say nothing of what this cursor saw.
                    st.reset = true;
                }
                Err(map_err(backend.name(), e).to_string())
            }
            Ok(Err(Fail::Masse(e))) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {deadline:?}")),
        };
        match outcome {
            Ok(()) if st.failing => {
                st.failing = false;
                tracing::info!(namespace = %hub.ns, "registry events readable again; resuming from the cursor");
            }
            Ok(()) => {}
            Err(e) if !st.failing => {
                st.failing = true;
                tracing::warn!(namespace = %hub.ns, error = %e, "cannot read registry events; retrying, nothing is lost");
            }
            Err(e) => {
                tracing::debug!(namespace = %hub.ns, error = %e, "still cannot read registry events")
            }
        }
    }
}

/// Reads what happened since the cursor and hands it to the streams.
async fn poll(ns: &Namespace, st: &mut HubState, backend: &dyn Backend) -> Result<(), Fail> {
    let Some(cursor) = st.cursor else {
        return Ok(());
    };
    let head = backend.head().await?;
    if std::mem::take(&mut st.reset) {
        tracing::warn!(namespace = %ns, cursor, head, "registry database replaced, or its tables created again; watchers resync");
        st.cursor = Some(head);
        for sub in &mut st.subs {
            sub.after = head;
            sub.tx.send(RegistryEvent::Resync);
        }
        return Ok(());
    }
    if head < cursor {
        // The ids went backwards: the tables were dropped and made again.
        tracing::warn!(namespace = %ns, cursor, head, "registry event log was reset; watchers resync");
        st.cursor = Some(head);
        for sub in &mut st.subs {
            sub.after = head;
            sub.tx.send(RegistryEvent::Resync);
        }
        return Ok(());
    }
    if head == cursor {
        return Ok(());
    }
    let mut raw: Vec<RawEvent> = Vec::new();
    let mut after = cursor;
    loop {
        let batch = backend
            .read_events(ns.as_str(), after, head, EVENT_BATCH)
            .await?;
        let full = batch.rows as i64 >= EVENT_BATCH;
        let Some(last) = batch.events.last().map(|e| e.id) else {
            // Nothing readable (or nothing at all): no id to go on from.
            break;
        };
        after = last;
        raw.extend(batch.events);
        if !full {
            break;
        }
    }
    // Read after the events: a prune that raced the read shows up here.
    let pruned = backend.pruned_below().await?;
    st.cursor = Some(head);
    let events: Vec<(i64, RegistryEvent)> = raw
        .iter()
        .filter_map(|r| codec::event(ns, r).map(|e| (r.id, e)))
        .collect();
    for sub in &mut st.subs {
        if pruned > cursor.max(sub.after) {
            tracing::warn!(namespace = %ns, cursor = cursor.max(sub.after), pruned, "events were pruned before this watcher read them; Resync");
            sub.tx.send(RegistryEvent::Resync);
        }
        for (id, ev) in &events {
            if *id > sub.after {
                sub.tx.send(ev.clone());
            }
        }
    }
    Ok(())
}
