//! Counters of a node: [`NodeStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::caching::CacheStats;
use crate::wrappers::MeterSnapshot;

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
    pub(crate) fn snapshot(&self, meter: MeterSnapshot, cache: CacheStats) -> NodeStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
        }
    }
}

/// A snapshot of a node's counters, from [`Node::stats`](crate::Node::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    pub registry_latency: Option<Duration>,
    /// A moving average of the heartbeat round trips to the registry.
    pub registry_latency_avg: Option<Duration>,
    /// The registry cache's counters.
    pub cache: CacheStats,
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
