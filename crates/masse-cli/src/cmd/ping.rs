//! `masse ping TARGET [-c N] [-i INTERVAL] [--service S]`.

use std::time::{Duration, Instant};

use masse::{Error, RefuseCode};

use crate::cli::{Global, PingArgs};
use crate::error::{CliError, Exit, exit_for};
use crate::output::{format_ms, min_median_max, out_line};
use crate::setup::{PING_SERVICE, Target, interrupted};

pub(crate) async fn run(g: &Global, args: PingArgs) -> Result<Exit, CliError> {
    let target = Target::parse(&args.target)?;
    let ns = target.namespace(g)?;
    let explicit = target.service(args.service.as_deref())?;
    let service = explicit.clone().unwrap_or_else(|| PING_SERVICE.to_owned());
    let name = g.join_name()?;
    let registry = g.registry().await?;
    let node = g.start_node(&name, &ns, registry, &[], &[]).await?;
    let peer = target.name.as_str();

    let mut summary = Summary::default();
    let run = async {
        out_line(&format!(
            "PING {peer} in namespace {ns}: streams through the masse handshake (service {service})"
        ))?;
        let mut seq = 0u64;
        loop {
            seq += 1;
            let t0 = Instant::now();
            // Connected once the peer answered the handshake.
            let open = async {
                let stream = node.connect_service(peer, &service).await?;
                stream.established().await.map(|()| stream)
            };
            let attempt = tokio::time::timeout(g.timeout, open).await;
            let elapsed = t0.elapsed();
            let line = match attempt {
                Ok(Ok(stream)) => {
                    drop(stream);
                    summary.ok(elapsed);
                    format!("stream to {peer}: seq={seq} time={} ms", format_ms(elapsed))
                }
                // The usual pong of the reserved service: the peer answered
                // the handshake itself, without involving its application.
                Ok(Err(e))
                    if explicit.is_none() && e.refuse_code() == Some(RefuseCode::NoSuchService) =>
                {
                    summary.ok(elapsed);
                    format!("stream to {peer}: seq={seq} time={} ms", format_ms(elapsed))
                }
                Ok(Err(e)) => {
                    let line = format!("stream to {peer}: seq={seq} failed: {e}");
                    summary.failed(CliError::from(e));
                    line
                }
                Err(_) => {
                    let e = Error::Timeout {
                        what: masse::Operation::Connect,
                        after: g.timeout,
                    };
                    let line = format!("stream to {peer}: seq={seq} failed: {e}");
                    summary.failed(CliError::new(exit_for(&e), e.to_string()));
                    line
                }
            };
            if !out_line(&line)? {
                return Ok::<(), CliError>(());
            }
            if args.count.is_some_and(|c| seq >= c) {
                return Ok(());
            }
            tokio::time::sleep(args.interval).await;
        }
    };
    let outcome = tokio::select! {
        r = run => r,
        () = interrupted() => Ok(()),
    };
    g.stop_node(&node).await;
    outcome?;
    for line in summary.lines(peer) {
        out_line(&line)?;
    }
    match summary.last_error {
        Some(e) if summary.times.is_empty() => Err(e.context(format!("no answer from {peer}"))),
        _ => Ok(Exit::Ok),
    }
}

/// What the attempts gave.
#[derive(Debug, Default)]
struct Summary {
    times: Vec<Duration>,
    failures: u64,
    last_error: Option<CliError>,
}

impl Summary {
    fn ok(&mut self, t: Duration) {
        self.times.push(t);
    }

    fn failed(&mut self, e: CliError) {
        self.failures += 1;
        self.last_error = Some(e);
    }

    fn lines(&self, peer: &str) -> Vec<String> {
        let ok = self.times.len() as u64;
        let total = ok + self.failures;
        let loss = if total == 0 {
            0.0
        } else {
            self.failures as f64 * 100.0 / total as f64
        };
        let mut lines = vec![
            format!("--- {peer} ping statistics ---"),
            format!(
                "{total} attempts, {ok} answered, {} failed, {loss:.0}% loss",
                self.failures
            ),
        ];
        if let Some((min, median, max)) = min_median_max(&self.times) {
            lines.push(format!(
                "time min/median/max = {}/{}/{} ms",
                format_ms(min),
                format_ms(median),
                format_ms(max)
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        let mut s = Summary::default();
        s.ok(Duration::from_micros(400));
        s.ok(Duration::from_micros(1900));
        s.ok(Duration::from_micros(520));
        s.failed(CliError::new(Exit::Timeout, "late"));
        assert_eq!(
            s.lines("db-1"),
            vec![
                "--- db-1 ping statistics ---",
                "4 attempts, 3 answered, 1 failed, 25% loss",
                "time min/median/max = 0.400/0.520/1.900 ms",
            ]
        );
        let empty = Summary::default();
        assert_eq!(
            empty.lines("x")[1],
            "0 attempts, 0 answered, 0 failed, 0% loss"
        );
    }
}
