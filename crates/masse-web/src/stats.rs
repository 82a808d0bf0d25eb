//! Fetching the figures of peers that expose them ([`STATS_SERVICE`]),
//! through nodes the dashboard was given: the dashboard joins only then.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use masse_core::{InstanceId, Node, NodeStats, PeerName, STATS_SERVICE};

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
                    fetch(node, &name).await
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

/// Most bytes a stats document may have.
const MAX_DOCUMENT: u64 = 64 * 1024;

/// What [`Node::remote_stats`] does, as a `Send` future: that one holds a
/// `&PeerStream` across an await (`established()`), and a `PeerStream` is
/// not `Sync`, so it cannot run in a spawned task. Reading waits for the
/// peer's Welcome (or fails with its refusal) all the same.
async fn fetch(node: &Node, peer: &PeerName) -> masse_core::Result<NodeStats> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut s = node.connect_service(peer.as_str(), STATS_SERVICE).await?;
        // Nothing to send: say so, as `remote_stats` does.
        s.shutdown().await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut buf)
            .await?;
        if buf.len() as u64 > MAX_DOCUMENT {
            return Err(masse_core::Error::protocol("stats document too long"));
        }
        serde_json::from_slice::<NodeStats>(&buf)
            .map_err(|e| masse_core::Error::protocol(format!("malformed stats document: {e}")))
    };
    tokio::time::timeout(FETCH_TIMEOUT, read)
        .await
        .map_err(|_| masse_core::Error::Timeout {
            what: masse_core::Operation::Connect,
            after: FETCH_TIMEOUT,
        })?
}

/// How long one peer may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
