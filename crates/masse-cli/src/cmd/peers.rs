//! `masse peers [PATTERN] [--json] [--stats]`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use masse::metrics::Histogram;
use masse::{
    Lease, Namespace, Node, NodeStats, Pattern, PeerName, Registry, STATS_SERVICE, now_millis,
};

use crate::cli::{Global, PeersArgs};
use crate::error::{CliError, Exit};
use crate::output::{PEER_HEADERS, Table, format_ms, notice, one_line, out_line, peer_row};
use crate::setup::deadline;

/// How many peers `--stats` asks for their stats at once.
const REMOTE_STATS_CONCURRENCY: usize = 16;

pub(crate) async fn run(g: &Global, args: PeersArgs) -> Result<Exit, CliError> {
    let ns = g.namespace()?;
    let pattern = Pattern::new(&args.pattern)?;
    let name = if args.stats {
        Some(g.join_name()?)
    } else {
        None
    };
    let registry = g.registry().await?;
    let Some(name) = name else {
        let leases = deadline(
            g.timeout,
            registry.lookup_leases(&ns, &pattern),
            "the lookup",
        )
        .await??;
        print(&leases, &ns, &pattern, args.json, None)?;
        return Ok(Exit::Ok);
    };

    let node = g.start_node(&name, &ns, registry.clone(), &[], &[]).await?;
    let result = async {
        let t0 = Instant::now();
        deadline(g.timeout, node.peers(pattern.as_str()), "the lookup").await??;
        let cold = t0.elapsed();
        let t1 = Instant::now();
        deadline(g.timeout, node.peers(pattern.as_str()), "the lookup").await??;
        let warm = t1.elapsed();
        // The listing with each record's time left, from the registry itself.
        let mut leases = deadline(
            g.timeout,
            registry.lookup_leases(&ns, &pattern),
            "the lookup",
        )
        .await??;
        leases.retain(|l| l.record.instance != node.instance());
        let remote = remote_stats(&node, &leases).await;
        let stats = Stats {
            node: name.to_string(),
            cold,
            warm,
            counters: node.stats(),
            remote,
        };
        print(&leases, &ns, &pattern, args.json, Some(&stats))
    }
    .await;
    g.stop_node(&node).await;
    result.map(|()| Exit::Ok)
}

/// The stats of every listed peer that offers [`STATS_SERVICE`], in the
/// listing's order, each read through `node` (a failure is that peer's
/// alone).
async fn remote_stats(node: &Node, leases: &[Lease]) -> Vec<(PeerName, Result<NodeStats, String>)> {
    let offering: Vec<PeerName> = leases
        .iter()
        .filter(|l| l.record.offers(STATS_SERVICE))
        .map(|l| l.record.name.clone())
        .collect();
    futures::stream::iter(offering)
        .map(|peer| async move {
            // Bounded by the node's connect timeout (--timeout).
            let result = node
                .remote_stats(peer.as_str())
                .await
                .map_err(|e| one_line(&e.to_string()));
            (peer, result)
        })
        .buffered(REMOTE_STATS_CONCURRENCY)
        .collect()
        .await
}

/// What `--stats` measured.
struct Stats {
    node: String,
    cold: Duration,
    warm: Duration,
    counters: NodeStats,
    /// The peers' own stats, from their [`STATS_SERVICE`].
    remote: Vec<(PeerName, Result<NodeStats, String>)>,
}

/// The headers of the `--stats` table of the peers' own counters.
const REMOTE_HEADERS: [&str; 9] = [
    "PEER",
    "OPEN",
    "IN",
    "OUT",
    "RECEIVED",
    "SENT",
    "DIALS OK/ALL",
    "P50 LOOKUP/CONNECT/HANDSHAKE",
    "ERROR",
];

/// One peer's row of the `--stats` table.
fn remote_row(peer: &PeerName, stats: &Result<NodeStats, String>) -> Vec<String> {
    let mut row = vec![peer.to_string()];
    match stats {
        Ok(s) => {
            let dials =
                s.connects_ok + s.connects_not_found + s.connects_refused + s.connects_failed;
            row.extend([
                s.streams_open.to_string(),
                s.streams_inbound.to_string(),
                s.streams_outbound.to_string(),
                s.bytes_in.to_string(),
                s.bytes_out.to_string(),
                format!("{}/{dials}", s.connects_ok),
                [&s.dial_lookup, &s.dial_connect, &s.dial_handshake]
                    .map(p50)
                    .join("/"),
                String::new(),
            ]);
        }
        Err(e) => {
            row.extend(std::iter::repeat_n(String::new(), 7));
            row.push(e.clone());
        }
    }
    row
}

/// The median of a dial-step histogram, as the upper bound of its bucket
/// (`1ms`: at most 1 ms); `-` without samples, `>10s` past the last bucket.
fn p50(h: &Histogram) -> String {
    if h.count() == 0 {
        return "-".into();
    }
    match h.quantile_bound(0.5) {
        None => format!(">{}", bound(Histogram::BOUNDS_US[Histogram::BUCKETS - 1])),
        Some(d) => bound(d.as_micros() as u64),
    }
}

/// A bucket bound: `50µs`, `2.5ms`, `1s`.
fn bound(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{}ms", us as f64 / 1e3)
    } else {
        format!("{}s", us as f64 / 1e6)
    }
}

impl Stats {
    fn lines(&self) -> Vec<String> {
        let c = &self.counters;
        vec![
            format!(
                "lookup through node {}: cold {} ms (registry), warm {} ms (cache)",
                self.node,
                format_ms(self.cold),
                format_ms(self.warm)
            ),
            format!(
                "cache: {} hits, {} misses, hit rate {:.1}%, {} coalesced, {} stale, {} backend lookups",
                c.cache.hits,
                c.cache.misses,
                c.cache_hit_rate() * 100.0,
                c.cache.coalesced,
                c.cache.stale,
                c.cache.backend_lookups
            ),
            format!(
                "connects: {} ok, {} not found, {} refused, {} failed, {} stale retries; streams: {} in, {} out",
                c.connects_ok,
                c.connects_not_found,
                c.connects_refused,
                c.connects_failed,
                c.stale_retries,
                c.streams_inbound,
                c.streams_outbound
            ),
        ]
    }

    /// The table of the peers' own counters, if any peer offers them.
    fn remote_table(&self) -> Option<String> {
        if self.remote.is_empty() {
            return None;
        }
        let mut t = Table::new(&REMOTE_HEADERS);
        for (peer, stats) in &self.remote {
            t.row(remote_row(peer, stats));
        }
        Some(t.render())
    }

    fn json(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "node": self.node,
            "lookup_cold_ms": self.cold.as_secs_f64() * 1000.0,
            "lookup_warm_ms": self.warm.as_secs_f64() * 1000.0,
            "cache": {
                "hits": c.cache.hits,
                "misses": c.cache.misses,
                "hit_rate": c.cache_hit_rate(),
                "coalesced": c.cache.coalesced,
                "stale": c.cache.stale,
                "backend_lookups": c.cache.backend_lookups,
            },
            "connects": {
                "ok": c.connects_ok,
                "not_found": c.connects_not_found,
                "refused": c.connects_refused,
                "failed": c.connects_failed,
                "stale_retries": c.stale_retries,
            },
            "streams": { "inbound": c.streams_inbound, "outbound": c.streams_outbound },
        })
    }
}

/// A lease as JSON: its record's fields, plus `state` (`alive`, `evasive`,
/// `unknown`) and `ttl_left_ms` (`null` when the registry cannot tell);
/// with `--stats`, `stats` (the peer's own [`NodeStats`]) or `stats_error`
/// for a peer that offers them.
fn lease_json(lease: &Lease, stats: Option<&Stats>) -> Result<serde_json::Value, CliError> {
    let mut v = serde_json::to_value(&lease.record)
        .map_err(|e| CliError::failure(format!("cannot encode the records: {e}")))?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("state".into(), lease.liveness().as_str().into());
        obj.insert(
            "ttl_left_ms".into(),
            lease
                .expires_in
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
                .into(),
        );
        let remote = stats.and_then(|s| {
            s.remote
                .iter()
                .find(|(peer, _)| *peer == lease.record.name)
                .map(|(_, r)| r)
        });
        match remote {
            Some(Ok(s)) => {
                let s = serde_json::to_value(s)
                    .map_err(|e| CliError::failure(format!("cannot encode the stats: {e}")))?;
                obj.insert("stats".into(), s);
            }
            Some(Err(e)) => {
                obj.insert("stats_error".into(), e.clone().into());
            }
            None => {}
        }
    }
    Ok(v)
}

fn print(
    leases: &[Lease],
    ns: &Namespace,
    pattern: &Pattern,
    json: bool,
    stats: Option<&Stats>,
) -> Result<(), CliError> {
    let text = if json {
        let peers = leases
            .iter()
            .map(|l| lease_json(l, stats))
            .collect::<Result<Vec<_>, _>>()?;
        let peers = serde_json::Value::Array(peers);
        let value = match stats {
            None => peers,
            Some(s) => serde_json::json!({ "peers": peers, "stats": s.json() }),
        };
        serde_json::to_string_pretty(&value)
            .map_err(|e| CliError::failure(format!("cannot encode the records: {e}")))?
    } else {
        let mut lines = Vec::new();
        if leases.is_empty() {
            notice(format!("no live peer matches {pattern} in namespace {ns}"));
        } else {
            let now = now_millis();
            let mut table = Table::new(&PEER_HEADERS);
            for l in leases {
                table.row(peer_row(l, now));
            }
            lines.push(table.render());
        }
        if let Some(s) = stats {
            if !lines.is_empty() {
                lines.push(String::new());
            }
            lines.extend(s.lines());
            if let Some(t) = s.remote_table() {
                lines.push(String::new());
                lines.push(t);
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        lines.join("\n")
    };
    out_line(&text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_rows_show_counters_or_the_error() {
        let mut s = NodeStats::default();
        s.streams_open = 1;
        s.streams_inbound = 4;
        s.bytes_in = 10;
        s.bytes_out = 20;
        s.connects_ok = 3;
        s.connects_refused = 1;
        s.dial_connect.record(Duration::from_micros(700));
        s.dial_lookup.record(Duration::from_secs(20));
        let peer: PeerName = "db-1".parse().unwrap();
        assert_eq!(
            remote_row(&peer, &Ok(s)),
            ["db-1", "1", "4", "0", "10", "20", "3/4", ">10s/1ms/-", ""]
        );
        let row = remote_row(&peer, &Err("refused".into()));
        assert_eq!(row[0], "db-1");
        assert_eq!(row[8], "refused");
        assert!(row[1..8].iter().all(String::is_empty));
        assert_eq!(bound(50), "50µs");
        assert_eq!(bound(2_500), "2.5ms");
        assert_eq!(bound(1_000_000), "1s");
    }
}
