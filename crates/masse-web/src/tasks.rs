//! The async glue: per watched namespace, a task that follows the registry's
//! watch and one that lists the namespace's leases every poll interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use masse_core::{CachingRegistry, DynRegistry, Namespace, Node, Pattern, Registry, RegistryEvent};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::Shared;

/// Longest wait before a failed watch is opened again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Spawns the tasks of every namespace in `shared`.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    registry: DynRegistry,
    nodes: Vec<Arc<Node>>,
    poll_interval: Duration,
    stats_interval: Duration,
) -> Vec<JoinHandle<()>> {
    // The cache turns a backend's `Resync` into ordinary events (names that
    // vanished meanwhile come out as `Expired`), as `masse watch` does.
    let cache = CachingRegistry::new(registry.clone());
    let mut tasks = Vec::new();
    for ns in &shared.namespaces {
        let poke = Arc::new(Notify::new());
        tasks.push(tokio::spawn(watch(
            shared.clone(),
            cache.clone(),
            ns.clone(),
            poke.clone(),
        )));
        tasks.push(tokio::spawn(poll(
            shared.clone(),
            registry.clone(),
            ns.clone(),
            poll_interval,
            poke,
        )));
    }
    if !nodes.is_empty() {
        tasks.push(tokio::spawn(crate::stats::poll(
            shared.clone(),
            nodes,
            stats_interval,
        )));
    }
    tasks
}

/// Follows the watch of `ns` into the view, opening it again (with backoff)
/// whenever it fails or ends; pokes the poller after each (re)open and each
/// join, so that liveness and the time left show up at once.
async fn watch(
    shared: Arc<Shared>,
    cache: CachingRegistry<DynRegistry>,
    ns: Namespace,
    poke: Arc<Notify>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match cache.watch(&ns).await {
            Ok(mut events) => {
                backoff = Duration::from_millis(100);
                poke.notify_one();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            let joined = matches!(
                                event,
                                RegistryEvent::Joined(_) | RegistryEvent::Updated(_)
                            );
                            let logged =
                                shared
                                    .view()
                                    .apply_event(&ns, event, masse_core::now_millis());
                            shared.publish(logged);
                            if joined {
                                poke.notify_one();
                            }
                        }
                        Err(e) => {
                            tracing::debug!(namespace = %ns, error = %e, "the watch reported an error")
                        }
                    }
                }
                tracing::debug!(namespace = %ns, "the watch ended; opening it again");
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "cannot watch the namespace; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists the leases of `ns` every `every` (or when poked) into the view.
async fn poll(
    shared: Arc<Shared>,
    registry: DynRegistry,
    ns: Namespace,
    every: Duration,
    poke: Arc<Notify>,
) {
    let all = Pattern::any();
    let limit = (every * 5).max(Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = poke.notified() => {}
        }
        let started = Instant::now();
        let listing = match tokio::time::timeout(limit, registry.lookup_leases(&ns, &all)).await {
            Ok(Ok(leases)) => Ok(leases),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", limit.as_secs_f64())),
        };
        let latency = started.elapsed();
        let logged = shared
            .view()
            .apply_listing(&ns, listing, latency, masse_core::now_millis());
        shared.publish(logged);
    }
}
