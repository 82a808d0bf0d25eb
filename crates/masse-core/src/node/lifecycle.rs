//! Heartbeat, registry watch and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::core::Core;
use super::event::NodeEvent;
use crate::caching::{RecvError, Subscription};
use crate::error::{Error, Result};
use crate::liveness::{LivenessChange, LivenessTracker};
use crate::pattern::Pattern;
use crate::registry::{NamePolicy, Registry, RegistryEvent};

/// Refreshes the record every ttl/3. On failure: report `RegistryUnavailable`
/// once, retry with backoff, and on recovery re-publish if the record expired
/// meanwhile and report `RegistryRestored`. Ends on `NameLost` or shutdown.
pub(crate) async fn heartbeat(core: Arc<Core>) {
    let period = core.config.ttl / 3;
    let mut outage = false;
    let mut backoff = Duration::from_millis(100).min(period);
    loop {
        let wait = if outage { backoff } else { period };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = core.stopped() => return,
        }
        let refresh =
            core.registry
                .refresh(&core.namespace, &core.name, core.instance, core.config.ttl);
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(period, refresh).await {
            Ok(Ok(())) => {
                core.counters.registry_rtt(started.elapsed());
                Ok(())
            }
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: crate::Operation::RegistryCall,
                after: period,
            }),
        };
        if !core.is_accepting() {
            // Shutting down: the record is being removed on purpose.
            return;
        }
        let result = match result {
            Err(Error::NameLost { .. }) => republish_after_loss(&core).await,
            other => other.map(|()| true),
        };
        match result {
            Ok(true) => {
                if outage {
                    outage = false;
                    backoff = Duration::from_millis(100).min(period);
                    tracing::info!("registry reachable again");
                    core.emit(NodeEvent::RegistryRestored);
                }
            }
            Ok(false) => return,
            Err(e) => {
                if !outage {
                    outage = true;
                    tracing::warn!(error = %e, "registry unavailable; serving from cache and retrying");
                    core.emit(NodeEvent::RegistryUnavailable { error: e });
                }
                backoff = (backoff * 2).min(period);
            }
        }
    }
}

/// Our record is gone. If nobody else holds the name, publish it again
/// (`Ok(true)`); if another instance does, report `NameLost` (`Ok(false)`).
async fn republish_after_loss(core: &Arc<Core>) -> Result<bool> {
    let record = core.record();
    match core
        .registry
        .publish(&record, core.config.ttl, NamePolicy::Exclusive)
        .await
    {
        Ok(()) => {
            tracing::warn!("record had expired; published again");
            Ok(true)
        }
        Err(Error::NameTaken { holder, .. }) => {
            core.lose_name(Some(holder));
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Publishes the record again after the listeners' endpoints changed.
pub(crate) async fn republish_endpoints(core: &Arc<Core>) {
    let endpoints = core.compute_endpoints();
    let record = {
        let mut r = core.record.write().unwrap_or_else(|p| p.into_inner());
        if r.endpoints == endpoints {
            return;
        }
        r.endpoints = endpoints;
        r.clone()
    };
    tracing::info!(endpoints = ?record.endpoints, "addresses changed; re-publishing");
    if let Err(e) = core
        .registry
        .publish(&record, core.config.ttl, NamePolicy::Exclusive)
        .await
    {
        tracing::warn!(error = %e, "re-publishing new addresses failed; the heartbeat will retry");
    }
}

/// Turns the events the registry cache applies into node events and feeds
/// `follow()` subscribers: one backend watch serves the cache and the node,
/// and the cache's watch task re-establishes it whenever it breaks.
pub(crate) async fn watch_loop(core: Arc<Core>, mut events: Subscription<RegistryEvent>) {
    loop {
        let next = tokio::select! {
            n = events.recv() => n,
            _ = core.stopped() => return,
        };
        match next {
            Ok(ev) => dispatch(&core, ev),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "node fell behind the registry's events; followers list again"
                );
                core.registry_events.send(RegistryEvent::Resync);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn dispatch(core: &Core, ev: RegistryEvent) {
    let own = ev.instance() == Some(core.instance);
    // Another instance publishing our name took it over: stop accepting for
    // it at once, before the heartbeat notices.
    if let RegistryEvent::Joined(r) | RegistryEvent::Updated(r) = &ev
        && r.name == core.name
        && !own
    {
        core.lose_name(Some(r.instance));
    }
    if !own {
        let node_event = match &ev {
            RegistryEvent::Joined(r) => Some(NodeEvent::PeerJoined(r.clone())),
            RegistryEvent::Updated(r) => Some(NodeEvent::PeerUpdated(r.clone())),
            RegistryEvent::Left { name, instance } => Some(NodeEvent::PeerLeft {
                name: name.clone(),
                instance: *instance,
            }),
            RegistryEvent::Expired { name, instance } => Some(NodeEvent::PeerExpired {
                name: name.clone(),
                instance: *instance,
            }),
            _ => None,
        };
        if let Some(e) = node_event {
            core.emit(e);
        }
    }
    core.registry_events.send(ev);
}

/// Lists the namespace's leases every `poll` and turns what changed into
/// `PeerEvasive` / `PeerAlive` (see `NodeBuilder::liveness_events`). A failed
/// listing is skipped: the outage is the heartbeat's to report, and the
/// tracker keeps its state for the next listing.
pub(crate) async fn liveness_loop(core: Arc<Core>, poll: Duration) {
    let mut tracker = LivenessTracker::new();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let all = Pattern::new("*").expect("'*' is a valid pattern");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = core.stopped() => return,
        }
        let leases = match core.registry.lookup_leases(&core.namespace, &all).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::debug!(error = %e, "listing leases failed; liveness skips this poll");
                continue;
            }
        };
        let others = leases.iter().filter(|l| l.record.instance != core.instance);
        for change in tracker.observe(others) {
            core.emit(match change {
                LivenessChange::Evasive {
                    name,
                    instance,
                    expires_in,
                } => {
                    tracing::info!(peer = %name, %instance, ?expires_in, "peer is evasive: it missed a heartbeat");
                    NodeEvent::PeerEvasive {
                        name,
                        instance,
                        expires_in,
                    }
                }
                LivenessChange::Alive { name, instance } => {
                    tracing::info!(peer = %name, %instance, "evasive peer is alive again");
                    NodeEvent::PeerAlive { name, instance }
                }
            });
        }
    }
}

/// Stops accepting, unpublishes, waits for open streams (up to the grace),
/// then stops every task.
pub(crate) async fn shutdown(core: &Arc<Core>) -> Result<()> {
    if core.accepting.swap(false, Ordering::AcqRel) {
        tracing::info!("shutting down");
    }
    let unpublished = core
        .registry
        .unpublish(&core.namespace, &core.name, core.instance)
        .await;
    if let Err(e) = &unpublished {
        tracing::warn!(error = %e, "could not unpublish; the record will expire after the ttl");
    }
    let grace = tokio::time::sleep(core.config.shutdown_grace);
    tokio::pin!(grace);
    loop {
        let notified = core.stream_closed.notified();
        if core.streams_open() == 0 {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = &mut grace => {
                let open = core.streams_open();
                tracing::warn!(open, "shutdown grace over with streams still open; closing them");
                core.close_streams();
                break;
            }
        }
    }
    core.stopping.send_replace(true);
    unpublished
}
