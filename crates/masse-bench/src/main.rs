#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// Printing the figures is this program's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cache;
mod connect_secure;
mod latency;
mod memory;
mod quic;
mod registry;
mod scale;
mod secure;
mod setup;
mod split;
mod stats;
mod throughput;
mod tls;

use std::process::ExitCode;

/// Whatever stops a bench: a bind, connect, lookup or I/O failure in its
/// set-up or traffic. Timings are never checked, only printed.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the run is: `--quick` is a smoke run with smaller rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Quick,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
        }
    }
}

/// One output line: `name value unit`.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    name: String,
    value: f64,
    decimals: usize,
    unit: &'static str,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, decimals: usize, unit: &'static str) -> Self {
        Figure {
            name: name.into(),
            value,
            decimals,
            unit,
        }
    }

    fn line(&self) -> String {
        format!(
            "{} {:.*} {}",
            self.name, self.decimals, self.value, self.unit
        )
    }
}

/// A bench: a name the filter matches, a one-line description of its
/// parameters for the header, and the function that measures it.
#[derive(Debug)]
struct Bench {
    name: &'static str,
    describe: fn(Mode) -> String,
    run: fn(Mode) -> Result<Vec<Figure>, BoxError>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "tcp_throughput",
        describe: throughput::describe,
        run: throughput::run,
    },
    Bench {
        name: "connect_latency",
        describe: latency::describe,
        run: latency::run,
    },
    Bench {
        name: "connect_split",
        describe: split::describe,
        run: split::run,
    },
    Bench {
        name: "cache_lookup",
        describe: cache::describe,
        run: cache::run,
    },
    Bench {
        name: "tls_throughput",
        describe: tls::describe,
        run: tls::run,
    },
    Bench {
        name: "quic_throughput",
        describe: quic::describe_throughput,
        run: quic::run_throughput,
    },
    Bench {
        name: "quic_new_stream_latency",
        describe: quic::describe_stream,
        run: quic::run_stream,
    },
    Bench {
        name: "connect_tls",
        describe: connect_secure::describe_tls,
        run: connect_secure::run_tls,
    },
    Bench {
        name: "connect_quic",
        describe: connect_secure::describe_quic,
        run: connect_secure::run_quic,
    },
    Bench {
        name: "setup_time",
        describe: setup::describe,
        run: setup::run,
    },
    Bench {
        name: "registry",
        describe: registry::describe,
        run: registry::run,
    },
    Bench {
        name: "memory",
        describe: memory::describe,
        run: memory::run,
    },
    Bench {
        name: "scale",
        describe: scale::describe,
        run: scale::run,
    },
];

/// Worker threads of the multi-thread runtime: the reference machine has 2 cores.
const WORKERS: usize = 2;

/// The runtime the network benches run on: multi-thread, [`WORKERS`] workers.
fn multi_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
}

/// Runs `bench` as a task on a fresh multi-thread runtime, so that every
/// future involved runs on the worker threads and none on the main thread.
fn on_workers<F>(bench: F) -> Result<Vec<Figure>, BoxError>
where
    F: Future<Output = Result<Vec<Figure>, BoxError>> + Send + 'static,
{
    let rt = multi_thread_runtime()?;
    rt.block_on(async { tokio::spawn(bench).await? })
}

/// Runs `bench` on a current-thread runtime, where every task of both ends
/// (and of quinn's endpoint drivers) shares one thread, and names its
/// figures `<name>_1thread`. With one thread the figure is bound by CPU cost
/// per byte alone; on two workers it also depends on which vCPU each end's
/// task lands on, which moves single rounds between distinct levels on a
/// small VM.
fn on_one_thread<F>(bench: F) -> Result<Vec<Figure>, BoxError>
where
    F: Future<Output = Result<Vec<Figure>, BoxError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let figures = rt.block_on(bench)?;
    Ok(figures
        .into_iter()
        .map(|f| Figure {
            name: format!("{}_1thread", f.name),
            ..f
        })
        .collect())
}

/// [`on_workers`], then [`on_one_thread`]: both sets of figures.
fn on_workers_then_one_thread<F>(bench: impl Fn() -> F) -> Result<Vec<Figure>, BoxError>
where
    F: Future<Output = Result<Vec<Figure>, BoxError>> + Send + 'static,
{
    let mut figures = on_workers(bench())?;
    figures.extend(on_one_thread(bench())?);
    Ok(figures)
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    mode: Mode,
    filter: Option<String>,
}

const USAGE: &str = "\
usage: cargo run --release -p masse-bench [-- [--quick] [FILTER]]

  --quick   short smoke run (smaller rounds, fewer iterations)
  FILTER    run only the benches whose name contains FILTER:
            tcp_throughput, connect_latency, connect_split, cache_lookup, tls_throughput,
            quic_throughput, quic_new_stream_latency, connect_tls,
            connect_quic, setup_time,
            memory, registry (starts PostgreSQL, MariaDB and Redis servers),
            scale (the same servers, durable; 100 000 names, 1 000 watchers,
            fleets of nodes; a few minutes, needs ulimit -n 8192)

Prints one `name value unit` line per figure; lines starting with # are comments.";

/// The first argument of a copy of this program that a bench runs to
/// measure something in a fresh process (`scale`, `memory`).
const CHILD_ARG: &str = "--child";

/// `Ok(None)` asks for the usage text.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        mode: Mode::Full,
        filter: None,
    };
    for arg in args {
        match arg.as_str() {
            "--quick" => parsed.mode = Mode::Quick,
            "-h" | "--help" => return Ok(None),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if parsed.filter.is_some() => return Err(format!("more than one filter: {arg}")),
            _ => parsed.filter = Some(arg),
        }
    }
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(CHILD_ARG) {
        // A measuring child of the `scale` or `memory` bench.
        let run = match raw.get(1).map(String::as_str) {
            Some("lookup-all") => scale::lookup_all_child(&raw[2..]),
            Some("memory") => memory::child(&raw[2..]),
            other => Err(format!("no child {other:?}").into()),
        };
        return match run {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("masse-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(raw) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("masse-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<&Bench> = BENCHES
        .iter()
        .filter(|b| args.filter.as_deref().is_none_or(|f| b.name.contains(f)))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "masse-bench: no bench name contains {:?}\n\n{USAGE}",
            args.filter.unwrap_or_default()
        );
        return ExitCode::from(2);
    }

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let plan: Vec<String> = selected.iter().map(|b| (b.describe)(args.mode)).collect();
    let mode = args.mode.name();
    let setup = format!("workers={WORKERS} loopback=127.0.0.1 registry=MemoryRegistry");
    println!(
        "# masse-bench nproc={nproc} mode={mode} {setup}; {}",
        plan.join("; ")
    );
    for bench in selected {
        match (bench.run)(args.mode) {
            Ok(figures) => {
                for f in figures {
                    println!("{}", f.line());
                }
            }
            Err(e) => {
                eprintln!("masse-bench: {} failed: {e}", bench.name);
                return ExitCode::FAILURE;
            }
        }
    }
    println!("# done");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let full = Args {
            mode: Mode::Full,
            filter: None,
        };
        assert_eq!(parse(&[]), Ok(Some(full)));
        let quick_cache = Args {
            mode: Mode::Quick,
            filter: Some("cache".into()),
        };
        assert_eq!(parse(&["cache", "--quick"]), Ok(Some(quick_cache)));
        assert_eq!(parse(&["--help"]), Ok(None));
        assert_eq!(parse(&["--fast"]), Err("unknown option --fast".into()));
        assert_eq!(parse(&["a", "b"]), Err("more than one filter: b".into()));
    }

    #[test]
    fn figure_line_is_name_value_unit() {
        assert_eq!(
            Figure::new("x_ratio", 0.98123, 3, "x").line(),
            "x_ratio 0.981 x"
        );
        assert_eq!(
            Figure::new("t", 2345.64, 1, "MiB/s").line(),
            "t 2345.6 MiB/s"
        );
    }

    #[test]
    fn bench_names_are_distinct_filters() {
        for b in BENCHES {
            let matching = BENCHES.iter().filter(|o| o.name.contains(b.name)).count();
            assert_eq!(matching, 1, "{} selects only itself", b.name);
        }
    }
}
