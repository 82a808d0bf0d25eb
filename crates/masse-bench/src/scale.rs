//! The `scale` group: what a fleet costs each registry.
//!
//! Against real servers started here (the throwaway ones of
//! `masse-integration-tests`, on free loopback ports; PostgreSQL and MariaDB
//! with their **default durability**: `fsync` on, the redo log flushed at
//! every commit), for each backend:
//!
//! - **names**: 100 000 names published into one namespace by
//!   [`PUBLISHERS`] concurrent publishers on one handle (the publish rate);
//!   exact-name lookups straight through the backend (uncached) there and in
//!   a namespace of 100 names, interleaved (p50, p99, and the ratio of the
//!   p50s); `lookup("*")` of the 100 000 (time, and the process's peak
//!   memory above what it held before); the prefix glob `worker-1*`
//!   (11 111 of the names) beside the time `*` takes per name;
//! - **watchers** (Redis, PostgreSQL): 1 000 watch streams of one namespace
//!   on [`WATCH_HANDLES`] handles; names published one at a time on another
//!   handle, and the time from `publish()` until the `Joined` event comes out
//!   of each of the 1 000 streams (p50, p99, and how many never came);
//! - **fleet** (Redis, PostgreSQL): started [`Node`]s, each with a registry
//!   handle of its own as a node in its own process has, publishing its name
//!   (ttl 10 s, heartbeat every ttl/3) and watching its namespace; over a
//!   window of whole heartbeat periods, the server's commands (Redis, `INFO`)
//!   or transactions (PostgreSQL, `pg_stat_database`) per second scaled to
//!   1 000 nodes, the server connections the fleet holds, and this process's
//!   memory per node. Redis runs 1 000 nodes; PostgreSQL 90, the most that a
//!   default `max_connections = 100` leaves room for (with the bench's own
//!   connections and the 3 reserved ones).
//!
//! Figures are `name value unit` lines; `#` lines say how they were taken.
//! `MASSE_SCALE_BACKENDS=redis,sqlite` (say) runs only those backends.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::{
    DynRegistry, NamePolicy, Namespace, Node, Pattern, RedisRegistry, Registry, RegistryEvent,
    SqlRegistry, TcpInterface,
};
use masse_integration_tests::mariadb::MariaDbServer;
use masse_integration_tests::postgres::PostgresServer;
use masse_integration_tests::redis::RedisServer;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::registry::{Backend, LONG_TTL, micros, millis, missing_binary, record};
use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

/// Concurrent publishers filling the big namespace.
const PUBLISHERS: usize = 128;
/// Names in the small namespace, the baseline of the exact lookups.
const SMALL: usize = 100;
/// Watch streams per handle in the watcher test.
const WATCH_STREAMS: usize = 50;
/// Handles carrying the watch streams.
const WATCH_HANDLES: usize = 20;
/// How long a published name may take to reach every watcher.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(10);
/// A node's default ttl; nodes heartbeat every ttl/3.
const NODE_TTL: Duration = Duration::from_secs(10);
/// Nodes on PostgreSQL: what a default `max_connections = 100` holds.
const PG_NODES: usize = 90;

/// The sizes of a run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    names: usize,
    lookups: usize,
    all_rounds: usize,
    probes: usize,
    redis_nodes: usize,
    pg_nodes: usize,
    /// Heartbeat periods in the fleet's measuring window.
    periods: u32,
}

impl Sizes {
    fn of(mode: Mode) -> Sizes {
        match mode {
            Mode::Full => Sizes {
                names: 100_000,
                lookups: 1_000,
                all_rounds: 5,
                probes: 40,
                redis_nodes: 1_000,
                pg_nodes: PG_NODES,
                periods: 3,
            },
            Mode::Quick => Sizes {
                names: 10_000,
                lookups: 200,
                all_rounds: 2,
                probes: 10,
                redis_nodes: 100,
                pg_nodes: 20,
                periods: 1,
            },
        }
    }

    fn watchers(self) -> usize {
        WATCH_HANDLES * WATCH_STREAMS
    }
}

pub(crate) fn describe(mode: Mode) -> String {
    let s = Sizes::of(mode);
    format!(
        "scale: sqlite postgres mariadb redis, {} names ({PUBLISHERS} publishers), {} lookups, \
         lookup \"*\" x {}; {} watchers x {} probes (redis, postgres); fleets of {} nodes on redis \
         and {} on postgres over {} heartbeat periods",
        s.names,
        s.lookups,
        s.all_rounds,
        s.watchers(),
        s.probes,
        s.redis_nodes,
        s.pg_nodes,
        s.periods
    )
}

/// A server of the group, stopped and deleted on drop.
enum Running {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresServer),
    Mariadb(MariaDbServer),
    Redis(RedisServer),
}

impl Running {
    fn start(backend: Backend) -> Result<Option<Running>, BoxError> {
        Ok(match backend {
            Backend::Sqlite => Some(Running::Sqlite(
                tempfile::Builder::new()
                    .prefix("masse-bench-scale-")
                    .tempdir()?,
            )),
            Backend::Postgres => PostgresServer::start_durable().map(Running::Postgres),
            Backend::Mariadb => MariaDbServer::start_durable().map(Running::Mariadb),
            Backend::Redis => RedisServer::start().map(Running::Redis),
        })
    }

    fn url(&self) -> String {
        match self {
            Running::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join("registry.db").display())
            }
            Running::Postgres(s) => s.url(),
            Running::Mariadb(s) => s.url(),
            Running::Redis(s) => s.url(),
        }
    }
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::registry::log_to_stderr();
    let sizes = Sizes::of(mode);
    println!(
        "# scale: postgres with its default durability (fsync on), mariadb with \
         innodb_flush_log_at_trx_commit=1 and a 128 MiB buffer pool (its defaults); \
         redis without persistence"
    );
    if let Some(limit) = open_files_limit()
        && limit < (sizes.redis_nodes as u64) * 4 + 512
    {
        println!(
            "# scale: the open-file limit is {limit}; the redis fleet needs about {} (ulimit -n)",
            sizes.redis_nodes * 4 + 512
        );
    }
    // MASSE_SCALE_BACKENDS=redis,postgres runs only those.
    let only = std::env::var("MASSE_SCALE_BACKENDS").ok();
    for backend in Backend::ALL {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|b| b.trim() == backend.name()))
        {
            continue;
        }
        if let Some(missing) = missing_binary(backend) {
            println!("# skipped scale {}: {missing} not found", backend.name());
            continue;
        }
        // One server at a time: none works in the background (vacuum,
        // checkpoints) while another is measured.
        let Some(server) = Running::start(backend)?.map(Arc::new) else {
            println!(
                "# skipped scale {}: the server harness found no server",
                backend.name()
            );
            continue;
        };
        let figures = crate::on_workers(bench(backend, server.url(), sizes))?;
        for f in figures {
            println!("{}", f.line());
        }
        if matches!(backend, Backend::Redis | Backend::Postgres) {
            let nodes = match backend {
                Backend::Redis => sizes.redis_nodes,
                _ => sizes.pg_nodes,
            };
            // A fleet the server cannot hold is a finding, not the end of the run.
            match crate::on_workers(fleet(backend, server.clone(), nodes, sizes.periods)) {
                Ok(figures) => {
                    for f in figures {
                        println!("{}", f.line());
                    }
                }
                Err(e) => println!(
                    "# scale {}: a fleet of {nodes} nodes failed: {e}",
                    backend.name()
                ),
            }
        }
        drop(server);
    }
    Ok(Vec::new())
}

/// A handle with the backend's default settings.
async fn connect(backend: Backend, url: &str) -> Result<DynRegistry, BoxError> {
    Ok(match backend {
        Backend::Redis => Arc::new(RedisRegistry::connect(url).await?),
        _ => Arc::new(SqlRegistry::connect(url).await?),
    })
}

/// Handles that fill the big namespace, as that many nodes publishing at
/// once would (a SQL handle publishes on its one steady connection, so the
/// commits of several handles share the log flushes).
const FILL_HANDLES: usize = 32;

async fn bench(backend: Backend, url: String, sizes: Sizes) -> Result<Vec<Figure>, BoxError> {
    let b = backend.name();
    let registry = connect(backend, &url).await?;
    let mut fillers = Vec::with_capacity(FILL_HANDLES);
    for _ in 0..FILL_HANDLES {
        fillers.push(connect(backend, &url).await?);
    }
    let big: Namespace = "scale".parse()?;
    let small: Namespace = "scale-small".parse()?;
    let mut figures = Vec::new();

    // Fill.
    let started = Instant::now();
    publish_all(&fillers, &big, sizes.names).await?;
    let secs = started.elapsed().as_secs_f64();
    drop(fillers);
    println!(
        "# scale {b}: published {} names in {secs:.1} s ({PUBLISHERS} concurrent publishers on \
         {FILL_HANDLES} handles)",
        sizes.names
    );
    figures.push(Figure::new(
        format!("scale_publish_{b}_rate"),
        sizes.names as f64 / secs,
        0,
        "names/s",
    ));
    publish_all(std::slice::from_ref(&registry), &small, SMALL).await?;

    // Exact lookups, the big and the small namespace in turn (which goes
    // first alternates).
    let mut rng = crate::registry::Rng::new();
    let (mut at_big, mut at_small) = (Vec::new(), Vec::new());
    let warmup = sizes.lookups / 10;
    for i in 0..warmup + sizes.lookups {
        for k in 0..2 {
            let is_big = (i + k) % 2 == 0;
            let (ns, n) = if is_big {
                (&big, sizes.names)
            } else {
                (&small, SMALL)
            };
            let name = Pattern::new(&worker(rng.below(n as u64) as usize))?;
            let start = Instant::now();
            let found = registry.lookup(ns, &name).await?;
            let t = micros(start.elapsed());
            if found.len() != 1 {
                return Err(format!("{b}: lookup of {name} found {} records", found.len()).into());
            }
            if i >= warmup {
                if is_big { &mut at_big } else { &mut at_small }.push(t);
            }
        }
    }
    let (big_p50, small_p50) = (percentile(&at_big, 50.0), percentile(&at_small, 50.0));
    figures.extend([
        Figure::new(format!("scale_lookup_{b}_100k_p50"), big_p50, 1, "us"),
        Figure::new(
            format!("scale_lookup_{b}_100k_p99"),
            percentile(&at_big, 99.0),
            1,
            "us",
        ),
        Figure::new(format!("scale_lookup_{b}_100_p50"), small_p50, 1, "us"),
        Figure::new(
            format!("scale_lookup_{b}_100k_vs_100_ratio"),
            big_p50 / small_p50,
            2,
            "x",
        ),
    ]);

    // lookup("*"): time here, peak memory in a fresh process (where the
    // allocator holds nothing freed earlier that the lookup could reuse).
    let all = Pattern::new("*")?;
    let mut times = Vec::new();
    for round in 0..=sizes.all_rounds {
        let start = Instant::now();
        let found = registry.lookup(&big, &all).await?;
        let t = millis(start.elapsed());
        if found.len() != sizes.names {
            return Err(format!("{b}: * found {} of {} names", found.len(), sizes.names).into());
        }
        drop(found);
        if round > 0 {
            times.push(t);
        }
    }
    let all_p50 = percentile(&times, 50.0);
    figures.push(Figure::new(
        format!("scale_lookup_all_{b}_p50"),
        all_p50,
        1,
        "ms",
    ));
    match lookup_all_peak_in_child(backend, &url, sizes.names).await {
        Ok(bytes) => figures.push(Figure::new(
            format!("scale_lookup_all_{b}_peak_memory"),
            bytes as f64 / (1024.0 * 1024.0),
            1,
            "MiB",
        )),
        Err(e) => println!("# scale {b}: no peak memory figure: {e}"),
    }

    // A prefix glob: 1, 10..19, 100..199, ... of the names.
    let prefix = Pattern::new("worker-1*")?;
    let mut prefix_times = Vec::new();
    let mut matched = 0;
    for round in 0..=sizes.all_rounds {
        let start = Instant::now();
        let found = registry.lookup(&big, &prefix).await?;
        let t = millis(start.elapsed());
        matched = found.len();
        if round > 0 {
            prefix_times.push(t);
        }
    }
    let prefix_p50 = percentile(&prefix_times, 50.0);
    // Reading only the prefix's range costs about what `*` costs for as
    // many names; a scan of the whole namespace costs about all of `*`.
    let share = matched as f64 / sizes.names as f64;
    println!(
        "# scale {b}: worker-1* matches {matched} names ({:.1}% of the namespace)",
        share * 100.0
    );
    figures.extend([
        Figure::new(format!("scale_lookup_prefix_{b}_p50"), prefix_p50, 1, "ms"),
        Figure::new(
            format!("scale_lookup_prefix_{b}_vs_all_per_name"),
            prefix_p50 / (all_p50 * share),
            2,
            "x",
        ),
    ]);

    if matches!(backend, Backend::Redis | Backend::Postgres) {
        figures.extend(watchers(backend, &url, &registry, sizes.probes).await?);
    }
    Ok(figures)
}

fn worker(i: usize) -> String {
    format!("worker-{i}")
}

/// Publishes `worker-0` .. `worker-{n-1}` with [`PUBLISHERS`] concurrent
/// publishers, spread over `handles`.
async fn publish_all(handles: &[DynRegistry], ns: &Namespace, n: usize) -> Result<(), BoxError> {
    let mut tasks = Vec::with_capacity(PUBLISHERS);
    for w in 0..PUBLISHERS {
        let (registry, ns) = (handles[w % handles.len()].clone(), ns.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(PUBLISHERS) {
                let r = record(&ns, &worker(i))?;
                registry.publish(&r, LONG_TTL, NamePolicy::Takeover).await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// 1 000 watch streams on [`WATCH_HANDLES`] handles; `probes` names
/// published one at a time (each once every watcher has it, or after the
/// deadline).
async fn watchers(
    backend: Backend,
    url: &str,
    publisher: &DynRegistry,
    probes: usize,
) -> Result<Vec<Figure>, BoxError> {
    let b = backend.name();
    let ns: Namespace = "scale-watch".parse()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut handles = Vec::with_capacity(WATCH_HANDLES);
    let mut tasks = Vec::new();
    for _ in 0..WATCH_HANDLES {
        let handle = connect(backend, url).await?;
        for _ in 0..WATCH_STREAMS {
            let mut events = handle.watch(&ns).await?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = events.next().await {
                    if let Ok(RegistryEvent::Joined(r)) = ev
                        && let Some(k) = r.name.as_str().strip_prefix("probe-")
                        && let Ok(k) = k.parse::<usize>()
                        && tx.send((k, Instant::now())).is_err()
                    {
                        return;
                    }
                }
            }));
        }
        handles.push(handle);
    }
    drop(tx);
    let watchers = WATCH_HANDLES * WATCH_STREAMS;
    let mut latencies = Vec::with_capacity(watchers * probes);
    // The same, counted from the moment the publish returned (the server
    // had committed it): what the watch path itself adds.
    let mut after_commit = Vec::with_capacity(watchers * probes);
    let mut publishes = Vec::with_capacity(probes);
    let mut missed = 0;
    for k in 0..probes {
        let r = record(&ns, &format!("probe-{k}"))?;
        let sent = Instant::now();
        publisher
            .publish(&r, LONG_TTL, NamePolicy::Takeover)
            .await?;
        let committed = Instant::now();
        publishes.push(millis(committed - sent));
        let deadline = sent + ARRIVAL_DEADLINE;
        let mut got = 0;
        while got < watchers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((j, at))) if j == k => {
                    got += 1;
                    latencies.push(millis(at.saturating_duration_since(sent)));
                    after_commit.push(millis(at.saturating_duration_since(committed)));
                }
                // A probe that came after its deadline: counted missed.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        missed += watchers - got;
        // A pause between probes, as between real changes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
    drop(handles);
    println!(
        "# scale {b}: {watchers} watch streams on {WATCH_HANDLES} handles, {probes} names published \
         one at a time on another handle"
    );
    Ok(vec![
        Figure::new(
            format!("scale_watchers_{b}_p50"),
            percentile(&latencies, 50.0),
            2,
            "ms",
        ),
        Figure::new(
            format!("scale_watchers_{b}_p99"),
            percentile(&latencies, 99.0),
            2,
            "ms",
        ),
        Figure::new(
            format!("scale_watchers_{b}_missed"),
            missed as f64,
            0,
            "events",
        ),
        Figure::new(
            format!("scale_watchers_{b}_publish_p50"),
            percentile(&publishes, 50.0),
            2,
            "ms",
        ),
        Figure::new(
            format!("scale_watchers_{b}_publish_max"),
            percentile(&publishes, 100.0),
            2,
            "ms",
        ),
        Figure::new(
            format!("scale_watchers_{b}_after_commit_p99"),
            percentile(&after_commit, 99.0),
            2,
            "ms",
        ),
    ])
}

/// `nodes` started nodes, each with a handle of its own; the load they
/// put on the server at rest.
async fn fleet(
    backend: Backend,
    server: Arc<Running>,
    nodes: usize,
    periods: u32,
) -> Result<Vec<Figure>, BoxError> {
    let b = backend.name();
    let url = server.url();
    let period = NODE_TTL / 3;
    let connections_before = server_connections(&server).await?;
    let rss_before = Memory::resident();
    let started = Instant::now();
    let fleet: Vec<Node> = futures::stream::iter(0..nodes)
        .map(|k| {
            let url = url.clone();
            async move {
                let handle = connect(backend, &url).await?;
                let node = Node::builder(format!("node-{k}"))
                    .namespace("scale-fleet")
                    .registry_dyn(handle)
                    .ttl(NODE_TTL)
                    .interface(TcpInterface::new("127.0.0.1:0"))
                    .start()
                    .await?;
                Ok::<Node, BoxError>(node)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!(
        "# scale {b}: started {nodes} nodes in {:.1} s (each with a registry handle of its own, \
         ttl {} s, heartbeat every ttl/3)",
        started.elapsed().as_secs_f64(),
        NODE_TTL.as_secs()
    );
    // Two heartbeat periods: past the start-up burst, and idle pooled
    // connections have had time to close.
    tokio::time::sleep(period * 2).await;
    let rss_after = Memory::resident();
    let window = period * periods;
    let before = server_load(&server).await?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = server_load(&server).await?;
    let secs = t0.elapsed().as_secs_f64();
    let connections = server_connections(&server)
        .await?
        .saturating_sub(connections_before);
    // Stopped 16 at a time, as they were started: a thousand unpublishes
    // at once in one process would measure this process, not the server.
    let failed = futures::stream::iter(fleet)
        .map(|n| async move { n.shutdown().await })
        .buffer_unordered(16)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    if failed > 0 {
        println!("# scale {b}: {failed} of {nodes} nodes did not shut down cleanly");
    }

    // The reading of `before` itself counts in `after`.
    let per_sec = after.saturating_sub(before + 1) as f64 / secs;
    let (what, unit) = match backend {
        Backend::Redis => ("commands", "cmd/s"),
        _ => ("transactions", "tx/s"),
    };
    println!(
        "# scale {b}: {nodes} nodes for {secs:.1} s: {per_sec:.0} server {what}/s ({}), \
         {connections} server connections",
        match backend {
            Backend::Redis => "INFO total_commands_processed",
            _ =>
                "pg_stat_database xact_commit + xact_rollback, flushed by the server about once a second",
        }
    );
    let mut figures = vec![
        Figure::new(
            format!("scale_fleet_{b}_{what}_per_sec_per_1000_nodes"),
            per_sec * 1000.0 / nodes as f64,
            0,
            unit,
        ),
        Figure::new(
            format!("scale_fleet_{b}_connections_per_node"),
            connections as f64 / nodes as f64,
            2,
            "conn",
        ),
    ];
    // A lower bound: the process reuses memory freed by the work before
    // (`masse-bench memory` measures a node in a fresh process).
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        figures.push(Figure::new(
            format!("scale_fleet_{b}_memory_per_node"),
            after.saturating_sub(before) as f64 / nodes as f64 / 1024.0,
            0,
            "KiB",
        ));
    }
    Ok(figures)
}

/// Client connections the server holds (the bench's own reading excluded).
async fn server_connections(server: &Arc<Running>) -> Result<u64, BoxError> {
    match &**server {
        Running::Redis(_) => {
            let text = redis_info(server, "clients").await?;
            Ok(info_field(&text, "connected_clients")?.saturating_sub(1))
        }
        Running::Postgres(_) => Ok(psql_number(
            server,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .await?
        .saturating_sub(1)),
        _ => Err("no connection count for this server".into()),
    }
}

/// The server's running count of commands (Redis) or transactions (PostgreSQL).
async fn server_load(server: &Arc<Running>) -> Result<u64, BoxError> {
    match &**server {
        Running::Redis(_) => {
            let text = redis_info(server, "stats").await?;
            info_field(&text, "total_commands_processed")
        }
        Running::Postgres(_) => {
            psql_number(
                server,
                "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database",
            )
            .await
        }
        _ => Err("no load counter for this server".into()),
    }
}

async fn redis_info(server: &Arc<Running>, section: &str) -> Result<String, BoxError> {
    let mut conn = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    Ok(redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await?)
}

fn info_field(info: &str, key: &str) -> Result<u64, BoxError> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| format!("INFO has no {key}"))?
        .trim()
        .parse()
        .map_err(Into::into)
}

/// One number from `psql` (the harness's, as the server's superuser).
async fn psql_number(server: &Arc<Running>, sql: &'static str) -> Result<u64, BoxError> {
    let server = server.clone();
    let out = tokio::task::spawn_blocking(move || match &*server {
        Running::Postgres(pg) => Some(pg.psql(sql)),
        _ => None,
    })
    .await?
    .ok_or("not a PostgreSQL server")?;
    out.trim()
        .parse()
        .map_err(|e| format!("psql answered {out:?} to {sql}: {e}").into())
}

/// Runs `lookup(scale, "*")` in a fresh copy of this program and returns
/// how far the child's peak resident size rose above its size just before.
async fn lookup_all_peak_in_child(
    backend: Backend,
    url: &str,
    names: usize,
) -> Result<u64, BoxError> {
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child
        .args([
            crate::CHILD_ARG,
            "lookup-all",
            backend.name(),
            url,
            &names.to_string(),
        ])
        .stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || child.output()).await??;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the child failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    text.trim()
        .parse()
        .map_err(|e| format!("the child answered {text:?}: {e}").into())
}

/// The child's side: `<backend> <url> <names>`; prints the peak growth in bytes.
pub(crate) fn lookup_all_child(args: &[String]) -> Result<(), BoxError> {
    let [backend, url, names] = args else {
        return Err("lookup-all <backend> <url> <names>".into());
    };
    let backend = Backend::ALL
        .into_iter()
        .find(|b| b.name() == backend)
        .ok_or_else(|| format!("no backend {backend}"))?;
    let names: usize = names.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let grown = rt.block_on(async {
        let registry = connect(backend, url).await?;
        let big: Namespace = "scale".parse()?;
        // One small lookup first: connections and caches up before the base.
        registry.lookup(&big, &Pattern::new("worker-0")?).await?;
        let base = Memory::reset_peak().ok_or("no /proc/self/clear_refs")?;
        let found = registry.lookup(&big, &Pattern::new("*")?).await?;
        if found.len() != names {
            return Err::<u64, BoxError>(
                format!("* found {} of {names} names", found.len()).into(),
            );
        }
        drop(found);
        let peak = Memory::field("VmHWM:").ok_or("no VmHWM")?;
        Ok(peak.saturating_sub(base))
    })?;
    println!("{grown}");
    Ok(())
}

/// This process's resident memory, from `/proc/self/status`.
pub(crate) struct Memory;

impl Memory {
    /// Resets the peak resident size (Linux: `5` into `/proc/self/clear_refs`)
    /// and returns the resident size now; `None` where that cannot be done.
    fn reset_peak() -> Option<u64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        Self::field("VmRSS:")
    }

    pub(crate) fn resident() -> Option<u64> {
        Self::field("VmRSS:")
    }

    /// A `kB` field of `/proc/self/status`, in bytes.
    fn field(key: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
