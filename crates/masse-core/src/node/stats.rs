//! Counters of a node: [`NodeStats`], and the reserved service
//! [`STATS_SERVICE`] that serves them to other nodes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::caching::CacheStats;
use crate::metrics::Histogram;
use crate::wrappers::MeterSnapshot;

/// The reserved service a node started with
/// [`NodeBuilder::expose_stats`](crate::NodeBuilder::expose_stats) answers:
/// each stream for it gets the node's [`NodeStats`] as one JSON document,
/// then the node closes it. Read it with
/// [`Node::remote_stats`](crate::Node::remote_stats).
pub const STATS_SERVICE: &str = "masse-stats";

/// The largest stats document [`Node::remote_stats`](crate::Node::remote_stats)
/// reads; a longer answer is a protocol error.
pub(crate) const STATS_MAX_BYTES: usize = 64 * 1024;

/// Answers one stream for [`STATS_SERVICE`]: the node's stats as JSON,
/// then the end of the stream.
pub(crate) async fn serve_stats(
    core: std::sync::Weak<super::core::Core>,
    mut s: super::PeerStream,
) {
    use tokio::io::AsyncWriteExt;
    let Some(core) = core.upgrade() else {
        return;
    };
    let stats = core.stats();
    drop(core);
    let doc = match serde_json::to_vec(&stats) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the node's stats");
            return;
        }
    };
    let result = async {
        s.write_all(&doc).await?;
        s.shutdown().await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(peer = %s.peer(), error = %e, "sending stats failed");
    }
}

/// Which step of a dial a duration was measured on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DialStep {
    Lookup,
    Connect,
    Handshake,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) streams_in: AtomicU64,
    pub(crate) streams_out: AtomicU64,
    pub(crate) connect_ok: AtomicU64,
    pub(crate) connect_not_found: AtomicU64,
    pub(crate) connect_refused: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) stale_retries: AtomicU64,
    pub(crate) raced_endpoints: AtomicU64,
    pub(crate) busy_refusals: AtomicU64,
    pub(crate) handshakes_rejected: AtomicU64,
    /// Last successful heartbeat round trip to the registry, in µs (0: none yet).
    pub(crate) registry_rtt_last_us: AtomicU64,
    /// Moving average (1/8 weight per sample) of the same, in µs.
    pub(crate) registry_rtt_avg_us: AtomicU64,
    /// Durations of the dial steps: lookup, transport connect, handshake.
    pub(crate) dial_steps: Mutex<[Histogram; 3]>,
}

impl Counters {
    /// Records one successful registry round trip.
    pub(crate) fn registry_rtt(&self, rtt: Duration) {
        let us = (rtt.as_micros() as u64).max(1);
        self.registry_rtt_last_us.store(us, Ordering::Relaxed);
        let avg = self.registry_rtt_avg_us.load(Ordering::Relaxed);
        let next = if avg == 0 { us } else { avg - avg / 8 + us / 8 };
        self.registry_rtt_avg_us.store(next, Ordering::Relaxed);
    }
}

impl Counters {
    /// Records how long one dial step took (successful or not).
    pub(crate) fn dial_step(&self, step: DialStep, took: Duration) {
        let mut h = self.dial_steps.lock().unwrap_or_else(|p| p.into_inner());
        h[step as usize].record(took);
    }

    pub(crate) fn snapshot(&self, meter: MeterSnapshot, cache: CacheStats) -> NodeStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let [dial_lookup, dial_connect, dial_handshake] =
            *self.dial_steps.lock().unwrap_or_else(|p| p.into_inner());
        NodeStats {
            streams_open: meter.streams_open,
            streams_inbound: l(&self.streams_in),
            streams_outbound: l(&self.streams_out),
            bytes_in: meter.bytes_in,
            bytes_out: meter.bytes_out,
            connects_ok: l(&self.connect_ok),
            connects_not_found: l(&self.connect_not_found),
            connects_refused: l(&self.connect_refused),
            connects_failed: l(&self.connect_failed),
            stale_retries: l(&self.stale_retries),
            raced_endpoints: l(&self.raced_endpoints),
            busy_refusals: l(&self.busy_refusals),
            silent_evictions: 0,
            handshakes_in_progress: 0,
            handshakes_rejected: l(&self.handshakes_rejected),
            registry_latency: micros(l(&self.registry_rtt_last_us)),
            registry_latency_avg: micros(l(&self.registry_rtt_avg_us)),
            cache,
            dial_lookup,
            dial_connect,
            dial_handshake,
        }
    }
}

/// A snapshot of a node's counters, from [`Node::stats`](crate::Node::stats)
/// (or another node's, from [`Node::remote_stats`](crate::Node::remote_stats)).
///
/// Serialised as a JSON object with one field per counter; durations are
/// whole microseconds (`registry_latency_us`, `null` when unknown). Unknown
/// fields are ignored and missing ones take their default, so nodes of
/// different versions read each other's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NodeStats {
    /// Streams open now, both directions.
    pub streams_open: u64,
    /// Streams accepted since start.
    pub streams_inbound: u64,
    /// Streams dialed since start.
    pub streams_outbound: u64,
    /// Bytes read by the application from all streams.
    pub bytes_in: u64,
    /// Bytes written by the application to all streams.
    pub bytes_out: u64,
    /// Dials that ended with an open stream.
    pub connects_ok: u64,
    /// Dials to a name nobody holds.
    pub connects_not_found: u64,
    /// Dials the remote refused (wrong peer, no such service, busy, ...).
    pub connects_refused: u64,
    /// Dials that failed otherwise (transport errors, timeouts).
    pub connects_failed: u64,
    /// Dials retried after a fresh lookup because the cached address was stale.
    pub stale_retries: u64,
    /// Endpoint attempts started because the previous one was slow (see
    /// [`NodeBuilder::race_delay`](crate::NodeBuilder::race_delay)).
    pub raced_endpoints: u64,
    /// Inbound handshakes refused as `Busy`: evicted from the handshake
    /// budget's silent pool by newer ones (see
    /// [`HandshakeBudget`](crate::HandshakeBudget)), or their queue was full.
    pub busy_refusals: u64,
    /// Silent inbound connections (nothing sent yet) evicted from the
    /// handshake budget for newer ones, on every listener: those on plain
    /// TCP were told `Busy` (and are in `busy_refusals` too), those waiting
    /// for a TLS `ClientHello` were closed.
    pub silent_evictions: u64,
    /// Inbound handshakes in progress now, on every listener, silent or not.
    pub handshakes_in_progress: u64,
    /// Inbound connections dropped or refused during the handshake.
    pub handshakes_rejected: u64,
    /// The last heartbeat's round trip to the registry (`None` before the first).
    #[serde(rename = "registry_latency_us", with = "opt_micros")]
    pub registry_latency: Option<Duration>,
    /// A moving average of the heartbeat round trips to the registry.
    #[serde(rename = "registry_latency_avg_us", with = "opt_micros")]
    pub registry_latency_avg: Option<Duration>,
    /// The registry cache's counters.
    pub cache: CacheStats,
    /// How long dials by name took to look the name up (cache or registry),
    /// successful or not.
    pub dial_lookup: Histogram,
    /// How long the transport connects of dials took (TCP connect, TLS or
    /// QUIC handshake), successful or not; one sample per endpoint tried.
    pub dial_connect: Histogram,
    /// How long the masse handshake step of dials took before the stream was
    /// returned: encoding the `Hello`, and with a namespace secret its
    /// challenge-response round trip. Without a secret the `Hello` goes out
    /// with the first data and the acceptor's answer is read later, so this
    /// is near zero.
    pub dial_handshake: Histogram,
}

/// `Option<Duration>` as whole microseconds or `null`.
mod opt_micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_micros().min(u64::MAX as u128) as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_micros))
    }
}

fn micros(us: u64) -> Option<Duration> {
    (us > 0).then(|| Duration::from_micros(us))
}

impl NodeStats {
    /// Share of lookups answered from cache, 0.0–1.0.
    pub fn cache_hit_rate(&self) -> f64 {
        let total = self.cache.hits + self.cache.misses;
        if total == 0 {
            0.0
        } else {
            self.cache.hits as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_through_json_with_durations_in_micros() {
        let mut stats = NodeStats {
            streams_open: 1,
            bytes_in: 42,
            registry_latency: Some(Duration::from_micros(1_234)),
            ..NodeStats::default()
        };
        stats.cache.hits = 3;
        stats.dial_connect.record(Duration::from_millis(2));
        let json = serde_json::to_value(stats).unwrap();
        assert_eq!(json["registry_latency_us"], 1_234);
        assert!(json["registry_latency_avg_us"].is_null());
        assert_eq!(json["cache"]["hits"], 3);
        assert_eq!(json["dial_connect"]["sum_us"], 2_000);
        let back: NodeStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, stats);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        let doc = r#"{"bytes_out": 7, "cache": {"misses": 2, "new_counter": 1},
                      "dial_lookup": {"sum_us": 5}, "something_new": [1, 2]}"#;
        let stats: NodeStats = serde_json::from_str(doc).unwrap();
        assert_eq!(stats.bytes_out, 7);
        assert_eq!(stats.cache.misses, 2);
        assert_eq!(stats.dial_lookup.sum_us, 5);
        assert_eq!(stats.dial_lookup.count(), 0);
        assert_eq!(stats.registry_latency, None);
        let e = serde_json::from_str::<NodeStats>(r#"{"bytes_out": -1}"#).unwrap_err();
        assert!(e.is_data(), "{e}");
    }
}
