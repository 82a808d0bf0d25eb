//! `/metrics`: the view in the Prometheus text format, written with
//! [`masse_core::metrics::PrometheusText`].

use masse_core::metrics::{MetricKind, PrometheusText, write_node_metrics};

use crate::Shared;
use crate::view::EventKind;

/// The exposition of everything the dashboard knows right now.
pub(crate) fn render(shared: &Shared) -> String {
    let now_ms = masse_core::now_millis();
    let view = shared.view();
    let mut m = PrometheusText::new();

    m.family(
        "masse_peers",
        MetricKind::Gauge,
        "Peers in the namespace, by liveness (alive, evasive, unknown).",
    );
    for (ns, v) in &view.namespaces {
        for (state, n) in v.states() {
            m.sample(
                "masse_peers",
                &[("namespace", ns.as_str()), ("state", state.as_str())],
                n as f64,
            );
        }
    }

    m.family(
        "masse_registry_events_total",
        MetricKind::Counter,
        "Events the dashboard saw in the namespace since it started, by kind.",
    );
    for (ns, v) in &view.namespaces {
        for kind in EventKind::ALL {
            let n = v.counts.get(&kind).copied().unwrap_or(0);
            m.sample(
                "masse_registry_events_total",
                &[("namespace", ns.as_str()), ("kind", kind.as_str())],
                n as f64,
            );
        }
    }

    m.family(
        "masse_registry_up",
        MetricKind::Gauge,
        "1 if the last listing of the namespace succeeded, 0 if it failed (absent before the first).",
    );
    for (ns, v) in &view.namespaces {
        if let Some(up) = v.health.reachable {
            m.sample(
                "masse_registry_up",
                &[("namespace", ns.as_str())],
                if up { 1.0 } else { 0.0 },
            );
        }
    }

    m.family(
        "masse_registry_latency_seconds",
        MetricKind::Gauge,
        "Round trip of the last successful listing of the namespace.",
    );
    for (ns, v) in &view.namespaces {
        if let Some(d) = v.health.latency {
            m.sample(
                "masse_registry_latency_seconds",
                &[("namespace", ns.as_str())],
                d.as_secs_f64(),
            );
        }
    }

    m.family(
        "masse_peer_expires_in_seconds",
        MetricKind::Gauge,
        "Time the peer's record has left without a refresh (only where the registry tells).",
    );
    for (ns, v) in &view.namespaces {
        for (name, p) in &v.peers {
            if let Some(at) = p.expires_at_ms {
                m.sample(
                    "masse_peer_expires_in_seconds",
                    &[("namespace", ns.as_str()), ("peer", name.as_str())],
                    at.saturating_sub(now_ms) as f64 / 1e3,
                );
            }
        }
    }

    // The figures of nodes that expose them (when the dashboard joined).
    let nodes: Vec<([(&str, &str); 2], &masse_core::NodeStats)> = view
        .namespaces
        .iter()
        .flat_map(|(ns, v)| {
            v.peers.iter().filter_map(move |(name, p)| {
                let (_, stats) = p.stats.as_ref()?;
                Some(([("namespace", ns.as_str()), ("peer", name.as_str())], stats))
            })
        })
        .collect();
    if !nodes.is_empty() {
        let refs: Vec<(&[(&str, &str)], &masse_core::NodeStats)> =
            nodes.iter().map(|(l, s)| (&l[..], *s)).collect();
        write_node_metrics(&mut m, &refs);
    }
    m.finish()
}
