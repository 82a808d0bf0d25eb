//! `masse peers [PATTERN] [--json] [--stats]`.

use std::time::{Duration, Instant};

use masse::{Namespace, NodeStats, Pattern, PeerRecord, Registry, now_millis};

use crate::cli::{Global, PeersArgs};
use crate::error::{CliError, Exit};
use crate::output::{PEER_HEADERS, Table, format_ms, notice, out_line, peer_row};
use crate::setup::deadline;

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
        let records = deadline(g.timeout, registry.lookup(&ns, &pattern), "the lookup").await??;
        print(&records, &ns, &pattern, args.json, None)?;
        return Ok(Exit::Ok);
    };

    let node = g.start_node(&name, &ns, registry, &[], &[]).await?;
    let result = async {
        let t0 = Instant::now();
        deadline(g.timeout, node.peers(pattern.as_str()), "the lookup").await??;
        let cold = t0.elapsed();
        let t1 = Instant::now();
        let mut records = deadline(g.timeout, node.peers(pattern.as_str()), "the lookup").await??;
        let warm = t1.elapsed();
        records.retain(|r| r.instance != node.instance());
        let stats = Stats {
            node: name.to_string(),
            cold,
            warm,
            counters: node.stats(),
        };
        print(&records, &ns, &pattern, args.json, Some(&stats))
    }
    .await;
    g.stop_node(&node).await;
    result.map(|()| Exit::Ok)
}

/// What `--stats` measured.
struct Stats {
    node: String,
    cold: Duration,
    warm: Duration,
    counters: NodeStats,
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

fn print(
    records: &[PeerRecord],
    ns: &Namespace,
    pattern: &Pattern,
    json: bool,
    stats: Option<&Stats>,
) -> Result<(), CliError> {
    let text = if json {
        let peers = serde_json::to_value(records)
            .map_err(|e| CliError::failure(format!("cannot encode the records: {e}")))?;
        let value = match stats {
            None => peers,
            Some(s) => serde_json::json!({ "peers": peers, "stats": s.json() }),
        };
        serde_json::to_string_pretty(&value)
            .map_err(|e| CliError::failure(format!("cannot encode the records: {e}")))?
    } else {
        let mut lines = Vec::new();
        if records.is_empty() {
            notice(format!("no live peer matches {pattern} in namespace {ns}"));
        } else {
            let now = now_millis();
            let mut table = Table::new(&PEER_HEADERS);
            for r in records {
                table.row(peer_row(r, now));
            }
            lines.push(table.render());
        }
        if let Some(s) = stats {
            if !lines.is_empty() {
                lines.push(String::new());
            }
            lines.extend(s.lines());
        }
        if lines.is_empty() {
            return Ok(());
        }
        lines.join("\n")
    };
    out_line(&text)?;
    Ok(())
}
