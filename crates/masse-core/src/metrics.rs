//! Metrics in the Prometheus text exposition format (version 0.0.4), with no
//! dependency: [`PrometheusText`] writes families and samples, and
//! [`Histogram`] is the fixed-bucket latency histogram nodes keep.
//!
//! Names are `masse_*` with their unit in the name (`_seconds`, `_bytes`),
//! counters end in `_total`, and the labels are `namespace` and `peer`.
//!
//! ```
//! use masse_core::metrics::{MetricKind, PrometheusText};
//! let mut m = PrometheusText::new();
//! m.family("masse_peers", MetricKind::Gauge, "Peers in the namespace, by liveness.")
//!     .sample("masse_peers", &[("namespace", "prod"), ("state", "alive")], 3.0);
//! assert!(m.finish().contains("masse_peers{namespace=\"prod\",state=\"alive\"} 3\n"));
//! ```

use std::fmt::Write as _;
use std::time::Duration;

/// The kind of a metric family, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (resets when the process restarts); name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count (see [`PrometheusText::histogram`]).
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A Prometheus text exposition being written (`Content-Type: text/plain;
/// version=0.0.4`, see [`PrometheusText::CONTENT_TYPE`]).
///
/// Write each family's [`family`](Self::family) line once, then its samples;
/// label values are escaped here. Families must not repeat in one
/// exposition: write all the samples of one family together.
#[derive(Debug, Default, Clone)]
pub struct PrometheusText {
    out: String,
}

impl PrometheusText {
    /// The HTTP `Content-Type` of this format.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
        self
    }

    /// The samples of one histogram (its family line must come first):
    /// cumulative `name_bucket{le=…}` lines in seconds, `+Inf`, `name_sum`
    /// and `name_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, bound) in Histogram::BOUNDS_US.iter().enumerate() {
            cumulative += h.counts[i];
            let le = format_seconds(*bound as f64 / 1e6);
            self.out.push_str(&bucket);
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.out.push_str(&bucket);
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count());
        self.sample(&format!("{name}_sum"), labels, h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, h.count() as f64)
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The exposition.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (k, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn format_seconds(s: f64) -> String {
    let mut out = String::new();
    write_value(&mut out, s);
    out
}

/// A latency histogram with fixed buckets from 50 µs to 10 s
/// ([`BOUNDS_US`](Self::BOUNDS_US)): small, `Copy`, and mergeable, so
/// nodes keep one per dial step and report it in
/// [`NodeStats`](crate::NodeStats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Samples per bucket: `counts[i]` counts the samples at most
    /// `BOUNDS_US[i]` and above the bound before; the last counts the rest.
    pub counts: [u64; Histogram::BUCKETS + 1],
    /// Sum of every sample, in µs.
    pub sum_us: u64,
}

impl Histogram {
    /// Number of finite buckets.
    pub const BUCKETS: usize = 16;
    /// Upper bounds of the finite buckets, in µs.
    pub const BOUNDS_US: [u64; Histogram::BUCKETS] = [
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 10_000_000,
    ];

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = Self::BOUNDS_US.partition_point(|b| *b < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// The upper bound of the bucket holding quantile `q` (0.0–1.0), or
    /// `None` if empty or in the overflow bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::BOUNDS_US.get(i).map(|us| Duration::from_micros(*us));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(51));
        h.record(Duration::from_secs(60));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[Histogram::BUCKETS], 1);
        assert_eq!(h.count(), 3);
        assert_eq!(h.quantile_bound(0.5), Some(Duration::from_micros(100)));
        assert_eq!(h.quantile_bound(1.0), None);
    }

    #[test]
    fn writes_the_text_format() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(2));
        let mut m = PrometheusText::new();
        m.family("masse_up", MetricKind::Gauge, "Up.\nReally")
            .sample("masse_up", &[("peer", "a\"b\\c\nd")], 1.0)
            .family("masse_dial_seconds", MetricKind::Histogram, "Dials.")
            .histogram("masse_dial_seconds", &[("peer", "x")], &h);
        let text = m.finish();
        assert!(text.starts_with("# HELP masse_up Up.\\nReally\n# TYPE masse_up gauge\n"));
        assert!(
            text.contains("masse_up{peer=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("masse_dial_seconds_bucket{peer=\"x\",le=\"0.00025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("masse_dial_seconds_bucket{peer=\"x\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("masse_dial_seconds_bucket{peer=\"x\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("masse_dial_seconds_sum{peer=\"x\"} 0.0023\n"),
            "{text}"
        );
        assert!(
            text.contains("masse_dial_seconds_count{peer=\"x\"} 2\n"),
            "{text}"
        );
    }
}
