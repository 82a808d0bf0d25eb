//! The `registry` group: the registry backends against real servers.
//!
//! For each backend (SQLite on a file in a temporary directory, PostgreSQL,
//! MariaDB, Redis; the servers are the throwaway ones of
//! `masse-integration-tests`, started on free loopback ports and stopped
//! afterwards) the group measures:
//!
//! - exact-name lookups straight through the backend and through a synced
//!   `CachingRegistry`, interleaved (for Redis also with a raw `GET` of a
//!   small key on a `MultiplexedConnection`, the floor of one round trip);
//! - publish → watch propagation: the time from calling `publish()` of a new
//!   name on one handle until its `Joined` event comes out of the watch
//!   stream of another handle (a separate `connect`, as another node has);
//! - `lookup(ns, "*")` with 10 000 live records;
//! - Redis only: the commands per second that 200 handles, each heartbeating
//!   one name every ttl/3 and watching the namespace (as a started node
//!   does), cause (refreshes, watch reads and each handle's sweeper), from
//!   the server's own `INFO` counters (commands run inside scripts
//!   included), scaled to 1000 nodes.
//!
//! A backend whose server binary is missing is skipped with a `# skipped`
//! line. Each backend runs on its own runtime (2 workers) and prints its lines
//! as soon as it is done, so a long run shows progress and a failure keeps the
//! figures already measured.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::{
    CachingRegistry, DynRegistry, Endpoint, Freshness, InstanceId, NamePolicy, Namespace, Pattern,
    PeerName, PeerRecord, Protocol, RedisRegistry, Registry, RegistryEvent, SqlConfig, SqlRegistry,
};
use masse_integration_tests::mariadb::MariaDbServer;
use masse_integration_tests::postgres::{DEFAULT_BIN_DIR, PostgresServer};
use masse_integration_tests::redis::RedisServer;
use masse_integration_tests::server::find_binary;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

/// The SQL backends' `SqlConfig::with_poll_interval`, set explicitly (it is the
/// default): how late a watcher on another handle hears of a change, except on
/// PostgreSQL where `LISTEN`/`NOTIFY` wakes it.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Records published for the exact-name lookups.
const LOOKUP_RECORDS: usize = 100;
/// Records published for `lookup(ns, "*")`.
const ALL_RECORDS: usize = 10_000;
/// Timed `lookup(ns, "*")` calls.
const ALL_ROUNDS: usize = 10;
/// Concurrent publishers filling the namespace for `lookup(ns, "*")`.
const PUBLISHERS: usize = 16;
/// Handles in the heartbeat load.
const HEARTBEAT_HANDLES: usize = 200;
/// The ttl of the heartbeating records; nodes refresh every ttl/3.
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// Long enough that nothing expires during the run.
pub(crate) const LONG_TTL: Duration = Duration::from_secs(600);
/// How long a propagation may take before the bench gives up on it.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(10);

fn lookup_iterations(mode: Mode) -> usize {
    match mode {
        Mode::Full => 2000,
        Mode::Quick => 200,
    }
}

fn propagations(mode: Mode) -> usize {
    match mode {
        Mode::Full => 200,
        Mode::Quick => 50,
    }
}

/// Over how long the timed publishes of the propagation bench are spread, at
/// random gaps (uniform, independent of the arrivals). For the polling
/// backends that is several poll cycles, so that the publishes fall at random
/// points of the cycle (one publish after each arrival would always start
/// just after a poll and wait a whole interval). For the others, a few ms per
/// publish, so that they rarely overlap.
fn propagation_span(backend: Backend, mode: Mode) -> Duration {
    match (backend, mode) {
        (Backend::Sqlite | Backend::Mariadb, Mode::Full) => Duration::from_secs(2),
        (Backend::Sqlite | Backend::Mariadb, Mode::Quick) => Duration::from_secs(1),
        (Backend::Postgres | Backend::Redis, _) => {
            Duration::from_millis(3) * propagations(mode) as u32
        }
    }
}

/// The heartbeat window in refresh periods (ttl/3 each): every handle then
/// refreshes exactly this many times inside it, and, the window being a
/// whole number of default `XREAD BLOCK` timeouts (10 s), each idle watch
/// reads as many times in any window.
fn heartbeat_periods(mode: Mode) -> u32 {
    match mode {
        Mode::Full => 6,
        Mode::Quick => 3,
    }
}

fn refresh_period() -> Duration {
    HEARTBEAT_TTL / 3
}

pub(crate) fn describe(mode: Mode) -> String {
    let n = lookup_iterations(mode);
    format!(
        "registry: sqlite postgres mariadb redis, {n} interleaved lookups after {} warm-up \
         ({LOOKUP_RECORDS} records), {} propagations, lookup \"*\" of {ALL_RECORDS} x {ALL_ROUNDS}, \
         heartbeat {HEARTBEAT_HANDLES} handles (publish + watch) x {:.1} s",
        n / 10,
        propagations(mode),
        (refresh_period() * heartbeat_periods(mode)).as_secs_f64()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
    Mariadb,
    Redis,
}

impl Backend {
    pub(crate) const ALL: [Backend; 4] = [
        Backend::Sqlite,
        Backend::Postgres,
        Backend::Mariadb,
        Backend::Redis,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mariadb => "mariadb",
            Backend::Redis => "redis",
        }
    }
}

/// The server harnesses install a `tracing` subscriber that writes to
/// stdout; one on stderr first keeps backend warnings out of the figures.
pub(crate) fn log_to_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    log_to_stderr();

    // The servers start side by side (initdb and mariadb-install-db take a
    // second or two each) before anything is measured; each is stopped once
    // its backend is done, so that none works in the background (PostgreSQL's
    // autovacuum after 10 000 inserts) while another is measured.
    let starting: Vec<_> = Backend::ALL
        .into_iter()
        .map(|b| match missing_binary(b) {
            Some(missing) => (b, Err(missing)),
            None => (b, Ok(std::thread::spawn(move || start(b)))),
        })
        .collect();
    let mut servers = Vec::with_capacity(starting.len());
    for (backend, thread) in starting {
        let started = match thread {
            Err(missing) => {
                println!("# skipped registry {}: {missing} not found", backend.name());
                continue;
            }
            Ok(thread) => thread.join(),
        };
        match started {
            Ok(Ok(Some(server))) => servers.push((backend, server)),
            Ok(Ok(None)) => println!(
                "# skipped registry {}: the server harness found no server",
                backend.name()
            ),
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "it panicked".into());
                return Err(format!("the {} server did not start: {why}", backend.name()).into());
            }
        }
    }

    for (backend, server) in servers {
        if backend != Backend::Redis {
            println!(
                "# {} poll_interval {} ms",
                backend.name(),
                POLL_INTERVAL.as_millis()
            );
        }
        let figures = crate::on_workers(bench(backend, server.url.clone(), mode))?;
        for f in figures {
            println!("{}", f.line());
        }
        // Stops the server (blocking), outside any runtime.
        drop(server);
    }
    // Printed above, backend by backend.
    Ok(Vec::new())
}

/// A running server (or SQLite's directory), stopped and deleted on drop.
struct Server {
    url: String,
    _guard: Box<dyn Send>,
}

/// Starts `backend`'s server (its binaries are there); `None` if the harness
/// skips it anyway. Panics if the server does not come up.
fn start(backend: Backend) -> Result<Option<Server>, BoxError> {
    Ok(match backend {
        Backend::Sqlite => {
            let dir = tempfile::Builder::new()
                .prefix("masse-bench-sqlite-")
                .tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("registry.db").display());
            Some(Server {
                url,
                _guard: Box::new(dir),
            })
        }
        Backend::Postgres => PostgresServer::start().map(|s| Server {
            url: s.url(),
            _guard: Box::new(s),
        }),
        Backend::Mariadb => MariaDbServer::start().map(|s| Server {
            url: s.url(),
            _guard: Box::new(s),
        }),
        Backend::Redis => RedisServer::start().map(|s| Server {
            url: s.url(),
            _guard: Box::new(s),
        }),
    })
}

/// The first server binary of `backend` that is not installed, if any.
/// Checked here, before the harness (which fails under `CI=true` instead).
pub(crate) fn missing_binary(backend: Backend) -> Option<String> {
    let absent = |p: &Path| find_binary(&p.to_string_lossy()).is_none();
    match backend {
        Backend::Sqlite => None,
        Backend::Redis => ["redis-server"]
            .into_iter()
            .find(|b| absent(Path::new(b)))
            .map(str::to_owned),
        Backend::Postgres => {
            let dir = std::env::var_os("MASSE_PG_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
            ["pg_ctl", "initdb"]
                .into_iter()
                .map(|b| dir.join(b))
                .find(|p| absent(p))
                .map(|p| p.display().to_string())
        }
        Backend::Mariadb => ["mariadbd", "mariadb-install-db", "mariadb"]
            .into_iter()
            .find(|b| absent(Path::new(b)) && absent(&Path::new("/usr/sbin").join(b)))
            .map(str::to_owned),
    }
}

async fn connect(backend: Backend, url: &str) -> Result<DynRegistry, BoxError> {
    Ok(match backend {
        Backend::Redis => Arc::new(RedisRegistry::connect(url).await?),
        _ => Arc::new(
            SqlRegistry::connect_with(url, SqlConfig::new().with_poll_interval(POLL_INTERVAL))
                .await?,
        ),
    })
}

async fn bench(backend: Backend, url: String, mode: Mode) -> Result<Vec<Figure>, BoxError> {
    let mut rng = Rng::new();
    let mut figures = Vec::new();
    {
        let registry = connect(backend, &url).await?;
        let raw = match backend {
            Backend::Redis => Some(
                redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
            _ => None,
        };
        let n = lookup_iterations(mode);
        figures.extend(lookups(backend, &registry, raw.clone(), n / 10, n).await?);
        figures.extend(propagation(backend, &url, &registry, mode, &mut rng).await?);
        figures.extend(lookup_all(backend, &registry, raw).await?);
    }
    if backend == Backend::Redis {
        // Every other handle is gone: their sweepers would add to the count.
        tokio::time::sleep(Duration::from_millis(100)).await;
        figures.push(heartbeat(&url, heartbeat_periods(mode)).await?);
    }
    Ok(figures)
}

/// A record with one endpoint, the size of a typical node's.
pub(crate) fn record(ns: &Namespace, name: &str) -> Result<PeerRecord, BoxError> {
    let name: PeerName = name.parse()?;
    Ok(PeerRecord::new(ns.clone(), name, InstanceId::random())
        .with_endpoint(Endpoint::new(Protocol::TCP, "127.0.0.1:4100".parse()?)))
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Exact-name lookups: through the backend, through a synced cache, and for
/// Redis a raw `GET`; one sample of each per iteration, rotating the order.
async fn lookups(
    backend: Backend,
    registry: &DynRegistry,
    mut raw: Option<MultiplexedConnection>,
    warmup: usize,
    iterations: usize,
) -> Result<Vec<Figure>, BoxError> {
    let ns: Namespace = "bench-lookup".parse()?;
    let mut patterns = Vec::with_capacity(LOOKUP_RECORDS);
    let mut json = String::new();
    for i in 0..LOOKUP_RECORDS {
        let r = record(&ns, &format!("peer-{i:03}"))?;
        registry.publish(&r, LONG_TTL, NamePolicy::Takeover).await?;
        patterns.push(Pattern::from(&r.name));
        json = r.to_json();
    }
    const GET_KEY: &str = "masse-bench:get";
    if let Some(conn) = raw.as_mut() {
        // A value the size of a stored record.
        redis::cmd("SET")
            .arg(GET_KEY)
            .arg(&json)
            .query_async::<()>(conn)
            .await?;
    }

    let cache = CachingRegistry::new(registry.clone());
    cache.lookup_cached(&ns, &patterns[0]).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.is_synced(&ns) {
        if Instant::now() > deadline {
            return Err("the cache's watch did not sync within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every name once through the cache, so that every timed cached lookup is a hit.
    for p in &patterns {
        cache.lookup_cached(&ns, p).await?;
    }
    let probe = cache.lookup_cached(&ns, &patterns[0]).await?;
    if probe.freshness != Freshness::Cached || probe.records.len() != 1 {
        return Err(format!(
            "{}: warm lookup not a cache hit: {:?}, {} records",
            backend.name(),
            probe.freshness,
            probe.records.len()
        )
        .into());
    }

    let kinds = if raw.is_some() { 3 } else { 2 };
    let mut uncached = Vec::with_capacity(iterations);
    let mut cached = Vec::with_capacity(iterations);
    let mut get = Vec::with_capacity(iterations);
    let mut misses = 0;
    for i in 0..warmup + iterations {
        let pattern = &patterns[i % LOOKUP_RECORDS];
        let timed = i >= warmup;
        for slot in 0..kinds {
            match (slot + i) % kinds {
                0 => {
                    let start = Instant::now();
                    let found = registry.lookup(&ns, pattern).await?;
                    let t = start.elapsed();
                    if found.len() != 1 || found[0].name.as_str() != pattern.as_str() {
                        return Err(format!(
                            "{}: lookup of {pattern} found {} records",
                            backend.name(),
                            found.len()
                        )
                        .into());
                    }
                    if timed {
                        uncached.push(micros(t));
                    }
                }
                1 => {
                    let start = Instant::now();
                    let found = black_box(cache.lookup_cached(&ns, pattern).await?);
                    let t = start.elapsed();
                    if found.freshness != Freshness::Cached {
                        misses += u64::from(timed);
                    }
                    if timed {
                        cached.push(micros(t));
                    }
                }
                _ => {
                    let conn = raw.as_mut().ok_or("no raw connection")?;
                    let start = Instant::now();
                    let value: Vec<u8> = redis::cmd("GET").arg(GET_KEY).query_async(conn).await?;
                    let t = start.elapsed();
                    black_box(value);
                    if timed {
                        get.push(micros(t));
                    }
                }
            }
        }
    }
    if misses > 0 {
        println!(
            "# registry {}: {misses} of {iterations} timed cached lookups missed the cache",
            backend.name()
        );
    }
    drop(cache);

    let b = backend.name();
    let uncached_p50 = percentile(&uncached, 50.0);
    let mut figures = vec![
        Figure::new(format!("lookup_uncached_{b}_p50"), uncached_p50, 1, "us"),
        Figure::new(
            format!("lookup_uncached_{b}_p99"),
            percentile(&uncached, 99.0),
            1,
            "us",
        ),
        Figure::new(
            format!("lookup_cached_{b}_p50"),
            percentile(&cached, 50.0),
            3,
            "us",
        ),
    ];
    if !get.is_empty() {
        let get_p50 = percentile(&get, 50.0);
        figures.push(Figure::new("redis_raw_get_p50", get_p50, 1, "us"));
        figures.push(Figure::new(
            format!("lookup_uncached_{b}_vs_get_ratio"),
            uncached_p50 / get_p50,
            2,
            "x",
        ));
    }
    Ok(figures)
}

/// From calling `publish()` on `publisher` until the `Joined` event comes out
/// of the watch of another handle. Publishes are spread over
/// [`propagation_span`] at random gaps, whatever the arrivals.
async fn propagation(
    backend: Backend,
    url: &str,
    publisher: &DynRegistry,
    mode: Mode,
    rng: &mut Rng,
) -> Result<Vec<Figure>, BoxError> {
    let n = propagations(mode);
    let ns: Namespace = "bench-propagation".parse()?;
    let watcher = connect(backend, url).await?;
    let mut events = watcher.watch(&ns).await?;
    let (tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            match ev {
                Ok(RegistryEvent::Joined(r)) => {
                    if tx.send((r.name.to_string(), Instant::now())).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });

    // Warm-up: the watch's connection is up and reading.
    let warm = record(&ns, "warm")?;
    publisher
        .publish(&warm, LONG_TTL, NamePolicy::Takeover)
        .await?;
    wait_joined(&mut arrivals, warm.name.as_str()).await?;

    let mean_gap_us = (propagation_span(backend, mode).as_micros() as u64 / n.max(1) as u64).max(1);
    let mut published = HashMap::with_capacity(n);
    for i in 0..n {
        let r = record(&ns, &format!("p-{i}"))?;
        let start = Instant::now();
        publisher
            .publish(&r, LONG_TTL, NamePolicy::Takeover)
            .await?;
        published.insert(r.name.to_string(), start);
        tokio::time::sleep(Duration::from_micros(rng.below(2 * mean_gap_us))).await;
    }
    let mut latencies = Vec::with_capacity(n);
    let deadline = Instant::now() + ARRIVAL_DEADLINE;
    while latencies.len() < n {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some((name, at))) => {
                if let Some(start) = published.remove(&name) {
                    latencies.push(millis(at - start));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    reader.abort();
    if latencies.len() < n {
        return Err(format!(
            "{}: only {} of {n} Joined events arrived",
            backend.name(),
            latencies.len()
        )
        .into());
    }
    let b = backend.name();
    Ok(vec![
        Figure::new(
            format!("propagation_{b}_p50"),
            percentile(&latencies, 50.0),
            2,
            "ms",
        ),
        Figure::new(
            format!("propagation_{b}_p99"),
            percentile(&latencies, 99.0),
            2,
            "ms",
        ),
    ])
}

type Arrivals = tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>;

/// Waits until `name` has arrived (dropping other arrivals).
async fn wait_joined(arrivals: &mut Arrivals, name: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + ARRIVAL_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some((got, _))) if got == name => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(
                    format!("no Joined event for {name} within {ARRIVAL_DEADLINE:?}").into(),
                );
            }
        }
    }
}

/// `lookup(ns, "*")` (uncached) with [`ALL_RECORDS`] live records.
async fn lookup_all(
    backend: Backend,
    registry: &DynRegistry,
    mut raw: Option<MultiplexedConnection>,
) -> Result<Vec<Figure>, BoxError> {
    let ns: Namespace = "bench-all".parse()?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(PUBLISHERS);
    for w in 0..PUBLISHERS {
        let registry = registry.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..ALL_RECORDS).step_by(PUBLISHERS) {
                let r = record(&ns, &format!("node-{i:05}"))?;
                registry.publish(&r, LONG_TTL, NamePolicy::Takeover).await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "# registry {}: published {ALL_RECORDS} records in {:.1} s ({PUBLISHERS} concurrent publishers)",
        backend.name(),
        started.elapsed().as_secs_f64()
    );

    let all = Pattern::new("*")?;
    let mut samples = Vec::with_capacity(ALL_ROUNDS);
    let mut before = None;
    for round in 0..=ALL_ROUNDS {
        if round == 1
            && let Some(conn) = raw.as_mut()
        {
            before = Some(Counters::read(conn).await?);
        }
        let start = Instant::now();
        let found = registry.lookup(&ns, &all).await?;
        let t = start.elapsed();
        if found.len() != ALL_RECORDS {
            return Err(format!(
                "{}: lookup of * found {} of {ALL_RECORDS} records",
                backend.name(),
                found.len()
            )
            .into());
        }
        drop(black_box(found));
        // The first one is a warm-up.
        if round > 0 {
            samples.push(millis(t));
        }
    }
    if let (Some(conn), Some(before)) = (raw.as_mut(), before) {
        // Where the time goes: the scripts' share, by the server's clock.
        let after = Counters::read(conn).await?;
        let rounds = ALL_ROUNDS as f64;
        let (calls, usec) = after.since(&before, "evalsha");
        println!(
            "# registry redis: one lookup of * = {:.0} script calls taking {:.1} ms in redis-server \
             (INFO commandstats), {:.1} ms in all (mean of {ALL_ROUNDS})",
            calls as f64 / rounds,
            usec as f64 / rounds / 1e3,
            samples.iter().sum::<f64>() / rounds
        );
    }
    Ok(vec![Figure::new(
        format!("lookup_all_10k_{}_p50", backend.name()),
        percentile(&samples, 50.0),
        1,
        "ms",
    )])
}

/// Redis counters from `INFO stats commandstats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) total: u64,
    /// Calls and microseconds per command (lower case); commands run by
    /// scripts count, and a script's time includes theirs.
    commands: HashMap<String, (u64, u64)>,
}

impl Counters {
    pub(crate) async fn read(conn: &mut MultiplexedConnection) -> Result<Counters, BoxError> {
        let text: String = redis::cmd("INFO")
            .arg("stats")
            .arg("commandstats")
            .query_async(conn)
            .await?;
        Counters::parse(&text)
    }

    fn parse(info: &str) -> Result<Counters, BoxError> {
        let mut c = Counters::default();
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("total_commands_processed:") {
                c.total = v.trim().parse()?;
            } else if let Some(rest) = line.strip_prefix("cmdstat_") {
                // cmdstat_get:calls=12,usec=34,usec_per_call=2.83,…
                if let Some((cmd, stats)) = rest.split_once(':') {
                    let field = |name: &str| {
                        stats
                            .split(',')
                            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0)
                    };
                    c.commands
                        .insert(cmd.to_owned(), (field("calls"), field("usec")));
                }
            }
        }
        if c.total == 0 {
            return Err("INFO has no total_commands_processed".into());
        }
        Ok(c)
    }

    /// Calls of `cmd` since `before`, and the microseconds they took.
    fn since(&self, before: &Counters, cmd: &str) -> (u64, u64) {
        let (calls, usec) = self.commands.get(cmd).copied().unwrap_or_default();
        let (c0, u0) = before.commands.get(cmd).copied().unwrap_or_default();
        (calls.saturating_sub(c0), usec.saturating_sub(u0))
    }

    fn calls_since(&self, before: &Counters, cmd: &str) -> u64 {
        self.since(before, cmd).0
    }
}

/// [`HEARTBEAT_HANDLES`] handles, each holding one name with a 10 s ttl,
/// refreshing it every ttl/3 (their refresh times spread evenly over the
/// period) and watching the namespace, as a node does; every handle's
/// sweeper runs as it would in a node. The commands the server processed in
/// a window of whole refresh periods, per second, scaled to 1000 nodes.
async fn heartbeat(url: &str, periods: u32) -> Result<Figure, BoxError> {
    let ns: Namespace = "bench-heartbeat".parse()?;
    let period = refresh_period();
    let mut connecting = Vec::with_capacity(HEARTBEAT_HANDLES);
    for k in 0..HEARTBEAT_HANDLES {
        let url = url.to_owned();
        let ns = ns.clone();
        connecting.push(tokio::spawn(async move {
            let handle = RedisRegistry::connect(&url).await?;
            let r = record(&ns, &format!("node-{k:03}"))?;
            handle
                .publish(&r, HEARTBEAT_TTL, NamePolicy::Takeover)
                .await?;
            let mut events = handle.watch(&ns).await?;
            let reader = tokio::spawn(async move {
                while let Some(ev) = events.next().await {
                    if ev.is_err() {
                        return;
                    }
                }
            });
            Ok::<_, BoxError>((handle, r, reader))
        }));
    }
    let mut nodes = Vec::with_capacity(HEARTBEAT_HANDLES);
    let mut readers = Vec::with_capacity(HEARTBEAT_HANDLES);
    for c in connecting {
        let (handle, r, reader) = c.await??;
        nodes.push((handle, r));
        readers.push(reader);
    }
    // A warm-up of one period, refreshing every record (which also loads
    // the refresh script) and letting the start-up looks of the sweepers
    // and the watches' first reads pass.
    let refreshes = nodes
        .iter()
        .map(|(h, r)| h.refresh(&ns, &r.name, r.instance, HEARTBEAT_TTL));
    for done in futures::future::join_all(refreshes).await {
        done?;
    }
    tokio::time::sleep(period).await;

    let mut info = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let window = period * periods;
    let t0 = Instant::now();
    let before = Counters::read(&mut info).await?;
    let read_at = Instant::now();
    let mut tasks = Vec::with_capacity(HEARTBEAT_HANDLES);
    for (k, (handle, r)) in nodes.iter().enumerate() {
        let (handle, r, ns) = (handle.clone(), r.clone(), ns.clone());
        let phase = period.mul_f64((k as f64 + 0.5) / HEARTBEAT_HANDLES as f64);
        tasks.push(tokio::spawn(async move {
            for j in 0..periods {
                tokio::time::sleep_until(t0 + phase + period * j).await;
                handle
                    .refresh(&ns, &r.name, r.instance, HEARTBEAT_TTL)
                    .await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    tokio::time::sleep_until(t0 + window).await;
    let after = Counters::read(&mut info).await?;
    let elapsed = read_at.elapsed().as_secs_f64();
    for t in tasks {
        t.await??;
    }
    for r in readers {
        r.abort();
    }
    drop(nodes);

    // The first INFO is counted in `after` (a command counts once it is done).
    let commands = after.total.saturating_sub(before.total + 1);
    let per_sec = commands as f64 / elapsed;
    let scaled = per_sec * 1000.0 / HEARTBEAT_HANDLES as f64;
    let mut by_command: Vec<(String, u64)> = after
        .commands
        .keys()
        .map(|c| (c.clone(), after.calls_since(&before, c)))
        .filter(|(c, n)| *n > 0 && c != "info")
        .collect();
    by_command.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let breakdown: Vec<String> = by_command.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "# registry redis heartbeat: {HEARTBEAT_HANDLES} handles, each publishing one name \
         (ttl {:.0} s, refreshed every {:.2} s) and watching the namespace, for a window of \
         {elapsed:.2} s; commands = the server's total_commands_processed delta (commands run \
         inside scripts included), per second, x 1000 / {HEARTBEAT_HANDLES}",
        HEARTBEAT_TTL.as_secs_f64(),
        period.as_secs_f64(),
    );
    println!(
        "# registry redis heartbeat: {commands} commands ({:.2} per handle per second): {}",
        per_sec / HEARTBEAT_HANDLES as f64,
        breakdown.join(", ")
    );
    Ok(Figure::new(
        "redis_commands_per_sec_per_1000_nodes_ttl10s",
        scaled,
        0,
        "cmd/s",
    ))
}

/// xorshift64: spacing that does not line up with any poller.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Self {
        Rng(InstanceId::random().as_u128() as u64 | 1)
    }

    /// Uniform in `0..n` (near enough for spacing).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_counters() {
        let before = Counters::parse(
            "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:100\r\n\
             # Commandstats\r\ncmdstat_evalsha:calls=10,usec=200,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n",
        )
        .unwrap();
        let after = Counters::parse(
            "total_commands_processed:160\r\n\
             cmdstat_evalsha:calls=25,usec=500,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_time:calls=15,usec=15,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n",
        )
        .unwrap();
        assert_eq!(after.total - before.total, 60);
        assert_eq!(after.since(&before, "evalsha"), (15, 300));
        assert_eq!(after.calls_since(&before, "time"), 15);
        assert_eq!(after.calls_since(&before, "zadd"), 0);
        match Counters::parse("# Stats\r\n") {
            Err(e) => assert!(e.to_string().contains("no total_commands_processed"), "{e}"),
            Ok(c) => panic!("parsed {c:?} from INFO without counters"),
        }
    }

    #[test]
    fn propagation_spans_cover_poll_cycles() {
        for mode in [Mode::Full, Mode::Quick] {
            for b in [Backend::Sqlite, Backend::Mariadb] {
                assert!(propagation_span(b, mode) >= POLL_INTERVAL * 4);
            }
        }
        assert_eq!(
            Backend::ALL.map(Backend::name),
            ["sqlite", "postgres", "mariadb", "redis"]
        );
    }
}
