//! The JSON documents of `/api/peers`, `/api/events` and the event stream
//! (their shape is documented in the crate README).

use masse_core::metrics::Histogram;
use masse_core::{Namespace, NodeStats, Pattern};
use serde_json::{Value, json};

use crate::Shared;
use crate::view::{DashEvent, NamespaceView, PeerView};

/// `/api/peers`: every watched namespace (or only `only`), its registry
/// health and its peers whose names match `pattern`, as of `now_ms`.
pub(crate) fn peers(
    shared: &Shared,
    only: Option<&Namespace>,
    pattern: Option<&Pattern>,
    now_ms: u64,
) -> Value {
    let view = shared.view();
    let namespaces: Vec<Value> = view
        .namespaces
        .iter()
        .filter(|(ns, _)| only.is_none_or(|o| o == *ns))
        .map(|(ns, v)| namespace(ns, v, pattern, now_ms))
        .collect();
    json!({
        "time_ms": now_ms,
        "last_event": view.events.last_id(),
        "namespaces": namespaces,
    })
}

fn namespace(ns: &Namespace, v: &NamespaceView, pattern: Option<&Pattern>, now_ms: u64) -> Value {
    let peers: Vec<Value> = v
        .peers
        .values()
        .filter(|p| pattern.is_none_or(|pat| pat.matches(p.record.name.as_str())))
        .map(|p| peer(p, now_ms))
        .collect();
    let states = v.states();
    let h = &v.health;
    json!({
        "namespace": ns,
        "registry": {
            "reachable": h.reachable,
            "latency_ms": h.latency.map(|d| d.as_secs_f64() * 1e3),
            "error": h.error,
            "checked_ms": (h.checked_ms > 0).then_some(h.checked_ms),
        },
        "states": {
            "alive": states[0].1,
            "evasive": states[1].1,
            "unknown": states[2].1,
        },
        "peers": peers,
    })
}

fn peer(p: &PeerView, now_ms: u64) -> Value {
    let r = &p.record;
    json!({
        "name": r.name,
        "instance": r.instance,
        "endpoints": r.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "identity": r.identity,
        "services": r.services,
        "metadata": r.metadata,
        "started_at_ms": r.started_at,
        "age_ms": now_ms.saturating_sub(r.started_at),
        "ttl_ms": r.ttl_ms,
        "expires_in_ms": p.expires_at_ms.map(|at| at.saturating_sub(now_ms)),
        "state": p.state.as_str(),
        "stats": p.stats.as_ref().map(|(at, s)| stats(*at, s)),
    })
}

/// A node's figures as `/api/peers` shows them.
fn stats(observed_ms: u64, s: &NodeStats) -> Value {
    json!({
        "observed_ms": observed_ms,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "streams_open": s.streams_open,
        "streams_inbound": s.streams_inbound,
        "streams_outbound": s.streams_outbound,
        "dials": {
            "ok": s.connects_ok,
            "not_found": s.connects_not_found,
            "refused": s.connects_refused,
            "failed": s.connects_failed,
        },
        "dial_steps_ms": {
            "lookup": quantiles(&s.dial_lookup),
            "connect": quantiles(&s.dial_connect),
            "handshake": quantiles(&s.dial_handshake),
        },
        "registry_latency_ms": s.registry_latency.map(|d| d.as_secs_f64() * 1e3),
    })
}

/// `{"count", "p50", "p99"}`: the upper bounds of the buckets holding the
/// median and the 99th percentile, in ms (`null` when empty or past 10 s).
fn quantiles(h: &Histogram) -> Value {
    let ms = |q| {
        h.quantile_bound(q)
            .map(|d: std::time::Duration| d.as_secs_f64() * 1e3)
    };
    json!({ "count": h.count(), "p50": ms(0.5), "p99": ms(0.99) })
}

/// `/api/events`: the events after `since` (of `only`, if given), at most
/// `limit`, with the cursor to pass next time.
pub(crate) fn events(shared: &Shared, since: u64, limit: usize, only: Option<&Namespace>) -> Value {
    let view = shared.view();
    let (events, truncated) = view.events.since(since, limit);
    let events: Vec<&DashEvent> = events
        .iter()
        .filter(|e| only.is_none_or(|o| *o == e.namespace))
        .collect();
    json!({
        "events": events,
        "next": view.events.last_id(),
        "truncated": truncated,
    })
}
