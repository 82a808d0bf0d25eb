//! Fetching the figures of peers that expose them ([`STATS_SERVICE`]),
//! through nodes the dashboard was given: the dashboard joins only then.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use masse_core::{InstanceId, Node, PeerName, STATS_SERVICE};

use crate::Shared;

/// Every `every`, asks each peer whose record offers [`STATS_SERVICE`],
/// through the node joined in its namespace, and stores the answers in the
/// view (a failure keeps the last answer; its age is in `observed_ms`).
pub(crate) async fn poll(shared: Arc<Shared>, nodes: Vec<Arc<Node>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut changed = false;
        for node in &nodes {
            let ns = node.namespace().clone();
            let targets: Vec<(PeerName, InstanceId)> = {
                let view = shared.view();
                view.namespaces
                    .get(&ns)
                    .map(|v| {
                        v.peers
                            .values()
                            .filter(|p| p.record.offers(STATS_SERVICE))
                            .map(|p| (p.record.name.clone(), p.record.instance))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let answers = join_all(targets.into_iter().map(|(name, instance)| async move {
                let stats = if name == *node.name() {
                    Ok(node.stats())
                } else {
                    node.remote_stats(name.as_str()).await
                };
                (name, instance, stats)
            }))
            .await;
            let now = masse_core::now_millis();
            let mut view = shared.view();
            for (name, instance, stats) in answers {
                match stats {
                    Ok(stats) => {
                        view.set_stats(&ns, &name, instance, stats, now);
                        changed = true;
                    }
                    Err(e) => {
                        tracing::debug!(namespace = %ns, peer = %name, error = %e, "no figures from the peer")
                    }
                }
            }
        }
        if changed {
            shared.publish(Vec::new());
        }
    }
}
