//! The command line: global options and subcommands (clap derive).

use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES_HELP;

/// `--bind` when not given: every address, an ephemeral port (for `--interface
/// unix`: the default socket path).
pub(crate) const DEFAULT_BIND: &str = "0.0.0.0:0";

/// Full-duplex streams to named peers: list and watch the peers a registry
/// knows, listen under a name, connect to a name, and ping it.
#[derive(Debug, Parser)]
#[command(name = "masse", version, after_help = EXIT_CODES_HELP, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand takes (before or after its name).
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Registry URL: memory://, sqlite://PATH, postgres://…, mysql://…, redis://…, rediss://…,
    /// redis+cluster://H1,H2 [default: the embedded default registry]
    #[arg(
        long,
        global = true,
        env = "MASSE_REGISTRY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) registry: Option<String>,

    /// Namespace to work in [default: default]
    #[arg(long, global = true, env = "MASSE_NAMESPACE", value_name = "NS")]
    pub(crate) namespace: Option<String>,

    /// Name to join as, for commands that join without a name of their own
    /// (connect, ping, peers --stats) [default: "cli-" and 8 random hex digits]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// Transport for commands that join (tls and quic need a build with those
    /// features; unix is built in on Unix systems)
    #[arg(long, global = true, value_enum, default_value_t = InterfaceKind::Tcp)]
    pub(crate) interface: InterfaceKind,

    /// Address to bind for commands that join; 0.0.0.0 advertises this host's
    /// non-loopback addresses, 127.0.0.1 only loopback. With --interface unix:
    /// a socket path (default: one named after the node in $XDG_RUNTIME_DIR/masse)
    #[arg(long, global = true, default_value = DEFAULT_BIND, value_name = "ADDR")]
    pub(crate) bind: String,

    /// File holding the namespace secret (16 bytes or more; one trailing newline is not part
    /// of it) for commands that join: streams to and from nodes without the same secret are
    /// refused. MASSE_SECRET gives the secret itself instead (never on the command line,
    /// where other users could read it)
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) secret_file: Option<std::path::PathBuf>,

    /// How long a joined node's record lives without a heartbeat (it refreshes every ttl/3)
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) ttl: Duration,

    /// Deadline for reaching the registry and for opening a stream
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) timeout: Duration,

    /// Log to stderr: -v info, -vv debug, -vvv trace (default: warnings; RUST_LOG overrides)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// The transports `--interface` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum InterfaceKind {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 over TCP, peers authenticated by their identity fingerprint.
    Tls,
    /// QUIC.
    Quic,
    /// Unix domain sockets (peers on this host).
    Unix,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List the live peers whose names match PATTERN.
    ///
    /// Reads the registry directly, without joining, so it never lists itself.
    /// Columns: NAME, INSTANCE (first 8 hex digits), STATE (alive; evasive: it
    /// missed a heartbeat, less than half its ttl is left; unknown: the
    /// registry does not tell the time left, or the peer does not publish its
    /// ttl), TTL (time left before the record expires without a heartbeat, by
    /// the registry's clock, or -), ENDPOINTS, IDENTITY (short certificate
    /// fingerprint, or -), AGE (since the instance started), SERVICES,
    /// METADATA (k=v).
    Peers(PeersArgs),

    /// Print Joined/Updated/Left/Expired events as they happen.
    ///
    /// One line per event, with the UTC time it was received (RFC 3339),
    /// the event, the peer's name and instance, and its endpoints. Runs until
    /// Ctrl-C or until the registry ends the watch.
    Watch(WatchArgs),

    /// Join as NAME and pipe accepted streams to stdout and stdin to them (like nc -l).
    ///
    /// Prints `listening as NAME at <endpoints>` on stderr, then serves one
    /// stream at a time: its bytes go to stdout, stdin goes to it. When stdin
    /// ends, the write side of the stream is closed and reading goes on until
    /// the peer closes; when the peer closes first, stdin keeps being sent
    /// while it keeps coming (the stream closes after 1 s without input).
    /// Exits after the first stream unless --keep-open. With --exec, runs
    /// `sh -c CMD` per stream with the stream on its stdin and stdout (and
    /// MASSE_PEER, MASSE_PEER_INSTANCE, MASSE_SERVICE, MASSE_NAMESPACE in its
    /// environment); with --keep-open those run concurrently. `masse ping`
    /// does not disturb it (see there). Ctrl-C shuts the node down (it leaves
    /// the registry) and exits 0.
    Listen(ListenArgs),

    /// Join under an ephemeral name, open a stream to a peer, pipe stdin/stdout.
    ///
    /// TARGET is a name or masse://NAMESPACE/NAME[/SERVICE]. On stdin EOF the
    /// write side is closed and reading goes on until the peer closes; exits 0
    /// on a clean close. When the peer closes first, stdin keeps being sent
    /// while it keeps coming (the stream closes after 1 s without input).
    Connect(ConnectArgs),

    /// Time opening streams to a peer through the whole masse handshake.
    ///
    /// Each attempt dials TARGET (the name lookup, from the node's cache after
    /// the first attempt; the transport connect; the Hello) and times the
    /// peer's answer. Without --service, attempts ask for the reserved service
    /// `masse-ping`, which a peer answers in its handshake without involving
    /// its application: a Welcome, or a refusal because it does not offer that
    /// service, is the pong. With --service S only a Welcome counts, and the
    /// peer's application sees a stream that closes at once. Exits 0 if any
    /// attempt got an answer, otherwise with the code of the last failure.
    Ping(PingArgs),

    /// Serve a live web dashboard of one or more namespaces (and Prometheus /metrics).
    ///
    /// Watches the namespaces given as arguments (default: --namespace, else
    /// `default`) of the registry without joining them, and serves a page
    /// at http://LISTEN/ that shows every peer with its endpoints, services,
    /// metadata, age, time to expiry and liveness (alive, evasive, unknown),
    /// updated live, with the event feed and the registry's health; JSON at
    /// /api/peers and /api/events, Prometheus text at /metrics. Loopback
    /// only unless --allow-remote, which also needs a token.
    Dashboard(DashboardArgs),
}

/// `masse peers`.
#[derive(Debug, Args)]
pub(crate) struct PeersArgs {
    /// Glob over names: *, ?, [a-z], [!x]
    #[arg(default_value = "*")]
    pub(crate) pattern: String,

    /// Print the records as a JSON array, each with "state" and "ttl_left_ms" (null if
    /// unknown) added (with --stats: {"peers": [...], "stats": {...}}, and each peer that
    /// offers its stats with "stats" or "stats_error")
    #[arg(long)]
    pub(crate) json: bool,

    /// Also join under an ephemeral name and print that node's counters: the time of
    /// a cold lookup (registry round trip) and a warm one (the node's cache), cache
    /// hits/misses and hit rate, connects and streams. Then ask every listed peer that
    /// offers its stats (`masse listen --expose-stats`, NodeBuilder::expose_stats) for
    /// them, over an ordinary authenticated stream: streams open, in, out, bytes
    /// received and sent, dials ok of all, and the median lookup/connect/handshake
    /// time of its dials (the upper bound of its histogram bucket); a peer that cannot
    /// be read shows its error instead. The ephemeral node joins and leaves the
    /// namespace (watchers see it); it is not listed
    #[arg(long)]
    pub(crate) stats: bool,
}

/// `masse watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Glob over names: *, ?, [a-z], [!x]
    #[arg(default_value = "*")]
    pub(crate) pattern: String,

    /// One JSON object per line: {"time", "event", "name", "instance", "record"?}
    #[arg(long)]
    pub(crate) json: bool,

    /// The backend's events as they come, `resync` markers included, instead
    /// of reconciling what the registry lost into ordinary events
    #[arg(long)]
    pub(crate) raw: bool,
}

/// `masse listen`.
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// The name to listen as
    pub(crate) name: String,

    /// A service this node accepts (repeatable); streams for it are served
    /// like the others. A stream asking for a service not listed is refused
    #[arg(short, long = "service", value_name = "SERVICE")]
    pub(crate) services: Vec<String>,

    /// A metadata entry to publish (repeatable)
    #[arg(short, long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) metadata: Vec<(String, String)>,

    /// Accept further streams after one ends
    #[arg(short, long)]
    pub(crate) keep_open: bool,

    /// Run `sh -c CMD` for each stream, with the stream on its stdin and stdout
    #[arg(short, long, value_name = "CMD")]
    pub(crate) exec: Option<String>,

    /// Answer the reserved service masse-stats with this node's counters, for
    /// `masse peers --stats` (those streams are not served to stdout or --exec)
    #[arg(long)]
    pub(crate) expose_stats: bool,
}

/// `masse connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// A peer name, or masse://NAMESPACE/NAME[/SERVICE]
    pub(crate) target: String,

    /// The service to ask the peer for
    #[arg(short, long)]
    pub(crate) service: Option<String>,
}

/// `masse ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// A peer name, or masse://NAMESPACE/NAME[/SERVICE]
    pub(crate) target: String,

    /// Stop after N attempts [default: until Ctrl-C]
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,

    /// Time between attempts
    #[arg(short, long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) interval: Duration,

    /// Ask for this service (then only a Welcome counts as an answer)
    #[arg(short, long)]
    pub(crate) service: Option<String>,
}

/// `masse dashboard`.
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Namespaces to watch [default: --namespace, else default]
    #[arg(value_name = "NAMESPACE")]
    pub(crate) namespaces: Vec<String>,

    /// Address to serve the dashboard on
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub(crate) listen: String,

    /// Allow a non-loopback --listen address (requires --token)
    #[arg(long)]
    pub(crate) allow_remote: bool,

    /// Require this bearer token (`Authorization: Bearer T`, or `?token=T` in the browser)
    #[arg(
        long,
        env = "MASSE_DASHBOARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<String>,

    /// How often to list each namespace for liveness, time left and registry latency
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) poll: Duration,

    /// Also join each namespace (as --name, default cli- and 8 random hex digits) to show the traffic and
    /// dial figures of peers that expose them; the dashboard's node is listed too
    #[arg(long)]
    pub(crate) join: bool,
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (`250ms`,
/// `1.5s`, `2m`), or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 2s, 1.5m"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("duration {s:?} is out of range"))
}

/// Parses `KEY=VALUE`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("3"), Ok(ms(3000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        for (bad, why) in [
            ("", "invalid duration \"\""),
            ("s", "invalid duration \"s\""),
            ("1x", "invalid duration unit \"x\""),
            ("-1s", "invalid duration \"-1s\""),
            ("1..2s", "invalid duration \"1..2s\""),
            ("1e400s", "invalid duration unit \"e400s\""),
            ("99999999999999999999999h", "is out of range"),
        ] {
            match parse_duration(bad) {
                Err(e) => assert!(e.contains(why), "{bad:?}: {e:?} lacks {why:?}"),
                Ok(d) => panic!("{bad:?} parsed as {d:?}"),
            }
        }
    }

    #[test]
    fn key_values_parse() {
        assert_eq!(parse_key_value("zone=b"), Ok(("zone".into(), "b".into())));
        assert_eq!(parse_key_value("k="), Ok(("k".into(), String::new())));
        assert_eq!(
            parse_key_value("=v"),
            Err("expected KEY=VALUE, got \"=v\"".into())
        );
        assert_eq!(
            parse_key_value("novalue"),
            Err("expected KEY=VALUE, got \"novalue\"".into())
        );
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "masse",
            "--namespace",
            "prod",
            "ping",
            "db-1",
            "-c",
            "3",
            "-i",
            "100ms",
            "--registry",
            "memory://",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("prod"));
        assert_eq!(cli.global.registry.as_deref(), Some("memory://"));
        match cli.command {
            Command::Ping(p) => {
                assert_eq!(p.count, Some(3));
                assert_eq!(p.interval, Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
        for (args, kind) in [
            (
                &["masse", "ping", "x", "-c", "0"][..],
                clap::error::ErrorKind::ValueValidation,
            ),
            (
                &["masse", "--interface", "carrier-pigeon", "peers"][..],
                clap::error::ErrorKind::InvalidValue,
            ),
        ] {
            match Cli::try_parse_from(args) {
                Err(e) => assert_eq!(e.kind(), kind, "{args:?}: {e}"),
                Ok(cli) => panic!("{args:?} parsed as {cli:?}"),
            }
        }
    }
}
