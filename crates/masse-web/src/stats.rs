//! Fetching the figures of peers that expose them, through nodes the
//! dashboard was given (it joins only then).

use std::sync::Arc;
use std::time::Duration;

use masse_core::Node;

use crate::Shared;

/// Every `every`, asks each peer that exposes its figures, through the node
/// joined in its namespace, and stores the answer in the view.
pub(crate) async fn poll(shared: Arc<Shared>, nodes: Vec<Arc<Node>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for node in &nodes {
            // Filled in once nodes can expose their figures (`masse-stats`).
            let _ = (&shared, node);
        }
    }
}
