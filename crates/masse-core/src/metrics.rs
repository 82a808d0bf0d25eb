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

use crate::NodeStats;

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

/// Writes the `masse_node_*` families for `nodes`: each family once, then
/// one sample per node with that node's labels (typically `namespace` and
/// `peer`; none of them may be `direction`, `outcome`, `step` or `le`, which
/// these families add).
///
/// | family | kind | from [`NodeStats`] |
/// |---|---|---|
/// | `masse_node_streams_open` | gauge | `streams_open` |
/// | `masse_node_streams_total{direction="inbound\|outbound"}` | counter | `streams_inbound`, `streams_outbound` |
/// | `masse_node_bytes_received_total`, `masse_node_bytes_sent_total` | counter | `bytes_in`, `bytes_out` |
/// | `masse_node_dials_total{outcome="ok\|not_found\|refused\|failed"}` | counter | `connects_*` |
/// | `masse_node_dial_stale_retries_total` | counter | `stale_retries` |
/// | `masse_node_busy_refusals_total` | counter | `busy_refusals` |
/// | `masse_node_handshakes_rejected_total` | counter | `handshakes_rejected` |
/// | `masse_node_handshakes_in_progress` | gauge | `handshakes_in_progress` |
/// | `masse_node_registry_latency_seconds` | gauge | `registry_latency` (no sample before the first heartbeat) |
/// | `masse_node_cache_hits_total`, `masse_node_cache_misses_total` | counter | `cache.hits`, `cache.misses` |
/// | `masse_node_dial_step_duration_seconds{step="lookup\|connect\|handshake"}` | histogram | `dial_lookup`, `dial_connect`, `dial_handshake` |
///
/// ```
/// use masse_core::NodeStats;
/// use masse_core::metrics::{PrometheusText, write_node_metrics};
/// let stats = NodeStats::default();
/// let labels = [("namespace", "prod"), ("peer", "billing-7")];
/// let mut m = PrometheusText::new();
/// write_node_metrics(&mut m, &[(&labels, &stats)]);
/// assert!(m.finish().contains("masse_node_streams_open{namespace=\"prod\",peer=\"billing-7\"} 0\n"));
/// ```
pub fn write_node_metrics(m: &mut PrometheusText, nodes: &[(&[(&str, &str)], &NodeStats)]) {
    use MetricKind::{Counter, Gauge};
    type Get = fn(&NodeStats) -> u64;
    let simple: [(&str, MetricKind, &str, Get); 9] = [
        (
            "masse_node_streams_open",
            Gauge,
            "Streams open now, both directions.",
            |s| s.streams_open,
        ),
        (
            "masse_node_bytes_received_total",
            Counter,
            "Bytes read by the application from all streams.",
            |s| s.bytes_in,
        ),
        (
            "masse_node_bytes_sent_total",
            Counter,
            "Bytes written by the application to all streams.",
            |s| s.bytes_out,
        ),
        (
            "masse_node_dial_stale_retries_total",
            Counter,
            "Dials retried after a fresh lookup because the cached address was stale.",
            |s| s.stale_retries,
        ),
        (
            "masse_node_busy_refusals_total",
            Counter,
            "Inbound handshakes refused as Busy.",
            |s| s.busy_refusals,
        ),
        (
            "masse_node_handshakes_rejected_total",
            Counter,
            "Inbound connections dropped or refused during the handshake.",
            |s| s.handshakes_rejected,
        ),
        (
            "masse_node_handshakes_in_progress",
            Gauge,
            "Inbound handshakes in progress now.",
            |s| s.handshakes_in_progress,
        ),
        (
            "masse_node_cache_hits_total",
            Counter,
            "Registry lookups answered from the node's cache.",
            |s| s.cache.hits,
        ),
        (
            "masse_node_cache_misses_total",
            Counter,
            "Registry lookups that needed the registry.",
            |s| s.cache.misses,
        ),
    ];
    for (name, kind, help, get) in simple {
        m.family(name, kind, help);
        for (labels, stats) in nodes {
            m.sample(name, labels, get(stats) as f64);
        }
    }

    let name = "masse_node_streams_total";
    m.family(name, Counter, "Streams opened since start, by direction.");
    for (labels, stats) in nodes {
        for (direction, n) in [
            ("inbound", stats.streams_inbound),
            ("outbound", stats.streams_outbound),
        ] {
            m.sample(name, &with(labels, ("direction", direction)), n as f64);
        }
    }

    let name = "masse_node_dials_total";
    m.family(name, Counter, "Dials by name, by outcome.");
    for (labels, stats) in nodes {
        for (outcome, n) in [
            ("ok", stats.connects_ok),
            ("not_found", stats.connects_not_found),
            ("refused", stats.connects_refused),
            ("failed", stats.connects_failed),
        ] {
            m.sample(name, &with(labels, ("outcome", outcome)), n as f64);
        }
    }

    let name = "masse_node_registry_latency_seconds";
    m.family(
        name,
        Gauge,
        "The last heartbeat's round trip to the registry.",
    );
    for (labels, stats) in nodes {
        if let Some(d) = stats.registry_latency {
            m.sample(name, labels, d.as_secs_f64());
        }
    }

    let name = "masse_node_dial_step_duration_seconds";
    m.family(
        name,
        MetricKind::Histogram,
        "Duration of each step of dials by name: lookup, transport connect, handshake.",
    );
    for (labels, stats) in nodes {
        for (step, h) in [
            ("lookup", &stats.dial_lookup),
            ("connect", &stats.dial_connect),
            ("handshake", &stats.dial_handshake),
        ] {
            m.histogram(name, &with(labels, ("step", step)), h);
        }
    }
}

/// `labels` and one more.
fn with<'a>(labels: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut all = Vec::with_capacity(labels.len() + 1);
    all.extend_from_slice(labels);
    all.push(extra);
    all
}

/// A latency histogram with fixed buckets from 50 µs to 10 s
/// ([`BOUNDS_US`](Self::BOUNDS_US)): small, `Copy`, and mergeable, so
/// nodes keep one per dial step and report it in
/// [`NodeStats`].
///
/// Serialised as `{"counts": [...], "sum_us": n}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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

    /// Two nodes' stats with something in every field `write_node_metrics` reads.
    fn two_nodes() -> (NodeStats, NodeStats) {
        let mut a = NodeStats {
            streams_open: 2,
            streams_inbound: 5,
            streams_outbound: 7,
            bytes_in: 1_000,
            bytes_out: 2_000,
            connects_ok: 7,
            connects_not_found: 1,
            connects_refused: 2,
            connects_failed: 3,
            stale_retries: 4,
            busy_refusals: 6,
            handshakes_rejected: 8,
            handshakes_in_progress: 1,
            registry_latency: Some(Duration::from_micros(1_500)),
            ..NodeStats::default()
        };
        a.cache.hits = 10;
        a.cache.misses = 11;
        a.dial_lookup.record(Duration::from_micros(20));
        a.dial_connect.record(Duration::from_micros(700));
        a.dial_connect.record(Duration::from_millis(30));
        a.dial_handshake.record(Duration::from_micros(3));
        // The second has no registry latency yet and no dials.
        (a, NodeStats::default())
    }

    fn node_text() -> String {
        let (a, b) = two_nodes();
        let la = [("namespace", "prod"), ("peer", "a")];
        let lb = [("namespace", "prod"), ("peer", "b\"q")];
        let mut m = PrometheusText::new();
        write_node_metrics(&mut m, &[(&la, &a), (&lb, &b)]);
        m.finish()
    }

    #[test]
    fn node_metrics_write_each_family_once_and_a_sample_per_node() {
        let text = node_text();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        let mut unique = families.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), families.len(), "{families:?}");
        assert_eq!(families.len(), 13, "{families:?}");
        for want in [
            "masse_node_streams_open{namespace=\"prod\",peer=\"a\"} 2\n",
            "masse_node_streams_open{namespace=\"prod\",peer=\"b\\\"q\"} 0\n",
            "masse_node_streams_total{namespace=\"prod\",peer=\"a\",direction=\"inbound\"} 5\n",
            "masse_node_streams_total{namespace=\"prod\",peer=\"a\",direction=\"outbound\"} 7\n",
            "masse_node_bytes_received_total{namespace=\"prod\",peer=\"a\"} 1000\n",
            "masse_node_bytes_sent_total{namespace=\"prod\",peer=\"a\"} 2000\n",
            "masse_node_dials_total{namespace=\"prod\",peer=\"a\",outcome=\"ok\"} 7\n",
            "masse_node_dials_total{namespace=\"prod\",peer=\"a\",outcome=\"not_found\"} 1\n",
            "masse_node_dials_total{namespace=\"prod\",peer=\"a\",outcome=\"refused\"} 2\n",
            "masse_node_dials_total{namespace=\"prod\",peer=\"a\",outcome=\"failed\"} 3\n",
            "masse_node_dial_stale_retries_total{namespace=\"prod\",peer=\"a\"} 4\n",
            "masse_node_busy_refusals_total{namespace=\"prod\",peer=\"a\"} 6\n",
            "masse_node_handshakes_rejected_total{namespace=\"prod\",peer=\"a\"} 8\n",
            "masse_node_registry_latency_seconds{namespace=\"prod\",peer=\"a\"} 0.0015\n",
            "masse_node_cache_hits_total{namespace=\"prod\",peer=\"a\"} 10\n",
            "masse_node_cache_misses_total{namespace=\"prod\",peer=\"a\"} 11\n",
            "masse_node_dial_step_duration_seconds_bucket{namespace=\"prod\",peer=\"a\",step=\"connect\",le=\"0.001\"} 1\n",
            "masse_node_dial_step_duration_seconds_count{namespace=\"prod\",peer=\"a\",step=\"connect\"} 2\n",
            "masse_node_dial_step_duration_seconds_count{namespace=\"prod\",peer=\"a\",step=\"lookup\"} 1\n",
            "masse_node_dial_step_duration_seconds_count{namespace=\"prod\",peer=\"b\\\"q\",step=\"handshake\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // No latency sample for a node that has none yet.
        assert!(
            !text.contains("masse_node_registry_latency_seconds{namespace=\"prod\",peer=\"b"),
            "{text}"
        );
        check_format(&text);
    }

    #[test]
    fn no_nodes_write_only_family_lines() {
        let mut m = PrometheusText::new();
        write_node_metrics(&mut m, &[]);
        let text = m.finish();
        assert!(text.lines().all(|l| l.starts_with("# ")), "{text}");
        check_format(&text);
    }

    /// A small checker of the text format: HELP then TYPE per family, every
    /// sample belongs to the family announced last (histograms by their
    /// `_bucket`/`_sum`/`_count` suffixes), names and labels well formed,
    /// values numbers, histogram buckets cumulative and ending at `+Inf`
    /// equal to `_count`.
    fn check_format(text: &str) {
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
                })
        };
        let mut family: Option<(String, String)> = None;
        let mut help_for: Option<String> = None;
        let mut last_bucket: Option<(String, f64)> = None;
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(valid_name(name), "{line}");
                help_for = Some(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                assert_eq!(help_for.as_deref(), Some(name), "TYPE without HELP: {line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(seen.insert(name.to_owned()), "family repeated: {line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {line}");
                }
                family = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (fam, kind) = family.as_ref().expect("a sample before any TYPE");
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let allowed: Vec<String> = if kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{fam}{s}"))
                    .collect()
            } else {
                vec![fam.clone()]
            };
            assert!(
                allowed.iter().any(|a| a == name),
                "{name} not in family {fam}"
            );
            // Labels: k="v" pairs, values escaped.
            let mut rest = labels;
            let mut le = None;
            let mut others = String::new();
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"").expect("label=\"");
                assert!(valid_name(k), "label {k} in {line}");
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match (escaped, c) {
                        (true, '\\' | '"' | 'n') => escaped = false,
                        (true, _) => panic!("bad escape in {line}"),
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        (false, _) => {}
                    }
                }
                let end = end.expect("closing quote");
                if k == "le" {
                    le = Some(after[..end].to_owned());
                } else {
                    others.push_str(&after[..end]);
                    others.push('\u{0}');
                }
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            if name.ends_with("_bucket") {
                let le = le.expect("a bucket has le");
                assert!(
                    le == "+Inf" || le.parse::<f64>().is_ok(),
                    "bad le in {line}"
                );
                if let Some((series, prev)) = &last_bucket
                    && *series == others
                {
                    assert!(value >= *prev, "buckets not cumulative: {line}");
                }
                last_bucket = Some((others, value));
            } else if name.ends_with("_count") && kind == "histogram" {
                let (series, inf) = last_bucket.take().expect("buckets before _count");
                assert_eq!(series, others, "{line}");
                assert_eq!(inf, value, "+Inf bucket != count: {line}");
            }
        }
    }

    /// `promtool check metrics` (Debian package `prometheus`) on the output;
    /// a missing promtool fails under `CI=true`, is skipped loudly otherwise.
    #[test]
    #[allow(clippy::print_stderr)] // the loud skip notice
    fn promtool_accepts_node_metrics() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let text = node_text();
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "promtool not found (Debian package prometheus); required under CI=true"
                );
                eprintln!(
                    "SKIPPED promtool_accepts_node_metrics: promtool not found (apt-get install prometheus)"
                );
                return;
            }
            Err(e) => panic!("running promtool: {e}"),
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}\n{}{}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

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
