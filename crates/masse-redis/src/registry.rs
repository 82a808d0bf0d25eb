//! [`RedisRegistry`]: the [`Registry`] implementation.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use masse_core::{
    Error, InstanceId, Lease, NamePolicy, Namespace, Pattern, PeerName, PeerRecord, Registry,
    RegistryEvent, Result,
};
use redis::{FromRedisValue, ScriptInvocation, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::address;
use crate::codec::{decode_record, server_time_ms, time_left};
use crate::config::RedisConfig;
use crate::conn::{Conn, Source};
use crate::error;
use crate::keys::{GRACE_MS, NsKeys};
use crate::scripts::SCRIPTS;
use crate::warned::warn_once;
use crate::watch;

/// How many names one `FETCH` script call reads.
const FETCH_CHUNK: usize = 256;
/// How many due members one `SWEEP` script call removes.
const SWEEP_LIMIT: usize = 256;
/// The longest accepted ttl (a year): longer ones are almost surely a unit mistake.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the server time learnt from a script reply is trusted (advanced
/// by the local clock) before the sweeper asks again.
const CLOCK_MAX_AGE: Duration = Duration::from_secs(300);

/// A [`Registry`] on Redis (a single server, TLS, or a Redis Cluster).
///
/// Cloning is cheap and shares the connection; [`connect`](Self::connect)
/// again for an independent handle (as another process would have).
///
/// Each handle sweeps the namespaces it has used for expired records: it
/// looks at a namespace's earliest expiry (one `ZRANGE`) when that is due,
/// or at the latest after [`max_sweep_interval`](RedisConfig::with_max_sweep_interval),
/// and sweeps once something is due. The sweep that removes a record reports
/// its `Expired` event, so the event comes once however many handles there
/// are. Lookups decide expiry by the server clock, so an expired record is
/// invisible at once, swept or not.
///
/// ```no_run
/// # async fn demo() -> masse_core::Result<()> {
/// use std::time::Duration;
/// use masse_core::{InstanceId, NamePolicy, Pattern, PeerRecord, Registry};
/// use masse_redis::RedisRegistry;
///
/// let registry = RedisRegistry::connect("redis://127.0.0.1:6379").await?;
/// let me = PeerRecord::new("prod".parse()?, "db-1".parse()?, InstanceId::random());
/// registry.publish(&me, Duration::from_secs(10), NamePolicy::Takeover).await?;
/// let found = registry.lookup(&"prod".parse()?, &Pattern::new("db-*")?).await?;
/// assert_eq!(found, vec![me]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: Conn,
    pub(crate) source: Source,
    pub(crate) config: RedisConfig,
    /// The URL without its password.
    display: String,
    /// The namespaces this handle sweeps.
    namespaces: Mutex<HashSet<Namespace>>,
    /// The server time (ms) per namespace, from the last script reply, and
    /// when that reply came.
    clocks: Mutex<HashMap<Namespace, (u64, Instant)>>,
    /// Namespaces whose earliest expiry may have come closer (a publish of
    /// this handle, a new namespace): the sweeper looks at them at once.
    poked: Mutex<HashSet<Namespace>>,
    /// Wakes the sweeper for `poked`.
    wake: Arc<Notify>,
    /// This handle's mark in a namespace's `sweeping` key while it sweeps.
    sweeper_id: String,
    sweeper: Mutex<Option<JoinHandle<()>>>,
    /// The malformed entries already logged.
    pub(crate) warned: masse_core::WarnOnce,
    /// The reader of each watched namespace, shared by this handle's watch
    /// streams of it.
    pub(crate) hubs: crate::watch::Hubs,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let slot = self.sweeper.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = slot.take() {
            task.abort();
        }
    }
}

impl RedisRegistry {
    /// Connects with the default [`RedisConfig`].
    ///
    /// - `redis://[user:password@]host[:port][/db]`: one server
    /// - `rediss://…`: the same over TLS (rustls; the system trust store unless
    ///   [`RedisConfig::with_tls_root_certificate`] is set)
    /// - `redis+cluster://[user:password@]host1:port1,host2:port2`: a Redis
    ///   Cluster, given some of its nodes (`rediss+cluster://` for TLS)
    ///
    /// Fails with [`Error::InvalidAddress`] (kind `"registry url"`) for any
    /// other URL, [`Error::RegistryUnauthorized`] if the server refuses the
    /// credentials, and [`Error::RegistryUnavailable`] if it cannot be reached.
    pub async fn connect(url: &str) -> Result<RedisRegistry> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects with `config` (see [`connect`](Self::connect) for the URL forms).
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<RedisRegistry> {
        config.validate()?;
        let target = address::parse(url, &config)?;
        let source = Source::new(url, &target, &config)?;
        let tls = target.tls();
        let conn = source
            .command_conn(&config)
            .await
            .map_err(|e| error::tls_hint(e, tls))?;
        // Connecting authenticates only if the URL has credentials; a PING
        // also catches a server that wants some (NOAUTH) or refuses this user.
        ping(&conn, &config)
            .await
            .map_err(|e| error::tls_hint(e, tls))?;
        let inner = Arc::new(Inner {
            conn,
            source,
            config,
            display: address::redact(url),
            namespaces: Mutex::new(HashSet::new()),
            clocks: Mutex::new(HashMap::new()),
            poked: Mutex::new(HashSet::new()),
            wake: Arc::new(Notify::new()),
            sweeper_id: InstanceId::random().to_string(),
            sweeper: Mutex::new(None),
            warned: masse_core::WarnOnce::new(),
            hubs: crate::watch::Hubs::default(),
        });
        let task = tokio::spawn(sweeper(Arc::downgrade(&inner), inner.wake.clone()));
        *inner.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        tracing::debug!(url = %inner.display, "connected to the redis registry");
        Ok(RedisRegistry { inner })
    }
}

impl Inner {
    /// An invocation of one of the scripts that change one name (publish,
    /// refresh, unpublish), with what they all take first: the namespace's
    /// index, event stream and counter, the name's hash, the stream's cap,
    /// the name and the instance. Also makes this handle sweep `ns`.
    fn name_script<'a>(
        &self,
        script: &'a redis::Script,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
    ) -> ScriptInvocation<'a> {
        self.track(ns);
        let keys = NsKeys::new(ns);
        let mut inv = script.prepare_invoke();
        inv.key(&keys.index)
            .key(&keys.events)
            .key(&keys.seq)
            .key(keys.peer(name))
            .arg(self.config.stream_maxlen)
            .arg(name.as_str())
            .arg(instance.to_string());
        inv
    }

    /// Logs the keys a script found of the wrong type and rebuilt.
    fn log_repairs<'a>(&self, ns: &Namespace, notes: impl Iterator<Item = &'a Vec<u8>>) {
        for note in notes {
            tracing::warn!(
                namespace = %ns,
                repaired = %String::from_utf8_lossy(note),
                "redis registry: a damaged key was deleted and rebuilt"
            );
        }
    }

    /// Remembers `ns` for sweeping.
    pub(crate) fn track(&self, ns: &Namespace) {
        let mut set = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        if !set.contains(ns) {
            set.insert(ns.clone());
            drop(set);
            tracing::debug!(namespace = %ns, "redis registry handle now sweeps this namespace");
            self.poke(ns);
        }
    }

    /// Has the sweeper look at `ns` at once.
    fn poke(&self, ns: &Namespace) {
        self.poked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.clone());
        self.wake.notify_one();
    }

    /// Notes the server time a script of `ns` replied with.
    fn note_clock(&self, ns: &Namespace, now_ms: Option<&Vec<u8>>) {
        let Some(ms) = now_ms
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        match clocks.get_mut(ns) {
            Some(c) => *c = (ms, Instant::now()),
            None => {
                clocks.insert(ns.clone(), (ms, Instant::now()));
            }
        }
    }

    /// The server time of `ns` now (ms), from the last reply advanced by the
    /// local clock, if that reply is recent enough.
    fn server_now(&self, ns: &Namespace) -> Option<f64> {
        let clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        let (ms, at) = clocks.get(ns)?;
        let age = at.elapsed();
        (age < CLOCK_MAX_AGE).then_some(*ms as f64 + age.as_secs_f64() * 1e3)
    }

    /// The longest a command may take, reconnecting included.
    pub(crate) fn op_timeout(&self) -> Duration {
        self.config.connect_timeout + self.config.call_timeout
    }

    /// Runs a script on the shared connection, under the command deadline.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        let after = self.op_timeout();
        match tokio::time::timeout(after, invocation.invoke_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(error::map),
            Err(_) => Err(error::timed_out(what, after)),
        }
    }

    /// Looks at the earliest expiry of `ns` (one `ZRANGE`, compared with
    /// the server time learnt from the last script reply) and sweeps if it
    /// is due, or if that server time is unknown or old.
    async fn look(&self, ns: &Namespace) -> Result<Look> {
        let keys = NsKeys::new(ns);
        if let Some(now) = self.server_now(ns) {
            match self.earliest(&keys).await? {
                None => {
                    return Ok(Look {
                        next_in: None,
                        busy: false,
                        expired: 0,
                    });
                }
                // `+inf` is no expiry masse writes: a sweep removes it.
                Some(at) if at.is_finite() && at > now => {
                    return Ok(Look {
                        next_in: Some(Duration::from_secs_f64((at - now) / 1e3)),
                        busy: false,
                        expired: 0,
                    });
                }
                Some(_) => {}
            }
        }
        self.sweep(ns, &keys).await
    }

    /// The lowest score in the index of `keys` (`None` if it is empty).
    async fn earliest(&self, keys: &NsKeys) -> Result<Option<f64>> {
        let mut conn = self.conn.clone();
        let after = self.op_timeout();
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&keys.index).arg(0).arg(0).arg("WITHSCORES");
        let reply: Value = match tokio::time::timeout(after, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(error::map)?,
            Err(_) => return Err(error::timed_out("a sweep", after)),
        };
        first_score(&reply).ok_or_else(|| error::unexpected("ZRANGE reply"))
    }

    /// Removes every due record of `ns`, one `Expired` event each, unless
    /// another handle is doing so (`busy`).
    async fn sweep(&self, ns: &Namespace, keys: &NsKeys) -> Result<Look> {
        let hold = u64::try_from(self.config.sweep_interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut total = 0;
        loop {
            let mut inv = SCRIPTS.sweep.prepare_invoke();
            inv.key(&keys.index)
                .key(&keys.events)
                .key(&keys.seq)
                .key(&keys.sweeping)
                .arg(self.config.stream_maxlen)
                .arg(&keys.peer_prefix)
                .arg(SWEEP_LIMIT)
                .arg(&self.sweeper_id)
                .arg(hold);
            let reply: Vec<Vec<u8>> = self.run("a sweep", &inv).await?;
            let field = |i: usize| {
                reply
                    .get(i)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .ok_or_else(|| error::unexpected("sweep script reply"))
            };
            let busy = match field(0)? {
                "swept" => false,
                "busy" => true,
                _ => return Err(error::unexpected("sweep script reply")),
            };
            let due: usize = field(1)?
                .parse()
                .map_err(|_| error::unexpected("sweep script reply"))?;
            let now: f64 = field(2)?
                .parse()
                .map_err(|_| error::unexpected("sweep script reply"))?;
            self.note_clock(ns, reply.get(2));
            let next = match field(3)? {
                "" => None,
                v => Some(
                    v.parse::<f64>()
                        .map_err(|_| error::unexpected("sweep script reply"))?,
                ),
            };
            for name in reply.iter().skip(4) {
                let name = String::from_utf8_lossy(name);
                let key = format!("{}{name}", keys.peer_prefix);
                warn_once!(
                    self.warned,
                    &key,
                    "swept unreadable",
                    namespace = %ns,
                    "redis registry: an expired entry that could not be read was removed, without an Expired event"
                );
            }
            total += due;
            if busy || due < SWEEP_LIMIT {
                let next_in = next
                    .filter(|at| at.is_finite())
                    .map(|at| Duration::from_secs_f64(((at - now) / 1e3).max(0.0)));
                return Ok(Look {
                    next_in,
                    busy,
                    expired: total,
                });
            }
        }
    }
}

/// What a sweeper's look at a namespace found.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Look {
    /// How long until the earliest expiry left (`None`: nothing indexed).
    next_in: Option<Duration>,
    /// Another handle was sweeping what is due.
    busy: bool,
    /// The records this look swept.
    expired: usize,
}

/// The score of a `ZRANGE … 0 0 WITHSCORES` reply (RESP2 `[member, score]`
/// or RESP3 `[[member, score]]`); `Some(None)` for an empty index.
fn first_score(reply: &Value) -> Option<Option<f64>> {
    let score = |v: &Value| match v {
        Value::Double(d) => Some(*d),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<f64>().ok(),
        Value::SimpleString(s) => s.parse::<f64>().ok(),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    };
    match reply {
        Value::Nil => Some(None),
        Value::Array(items) => match items.as_slice() {
            [] => Some(None),
            [_, s] if !matches!(s, Value::Array(_)) => score(s).map(Some),
            [Value::Array(pair)] => match pair.as_slice() {
                [_, s] => score(s).map(Some),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

async fn ping(conn: &Conn, config: &RedisConfig) -> Result<()> {
    let mut conn = conn.clone();
    let after = config.connect_timeout + config.call_timeout;
    match tokio::time::timeout(after, redis::cmd("PING").query_async::<Value>(&mut conn)).await {
        Ok(r) => r.map(drop).map_err(error::map),
        Err(_) => Err(error::timed_out("PING", after)),
    }
}

/// Sweeps the handle's namespaces: looks at each when [`next_look`] after
/// its last look has passed, or at once when poked; ends with the handle. A
/// failed look is retried after a `sweep_interval`.
async fn sweeper(weak: Weak<Inner>, wake: Arc<Notify>) {
    let Some((interval, max)) = weak
        .upgrade()
        .map(|i| (i.config.sweep_interval, i.config.max_sweep_interval))
    else {
        return;
    };
    let random = RandomState::new();
    let mut draws: u64 = 0;
    // A uniform draw in [0, 1) from the top 53 bits.
    let mut unit = || {
        draws += 1;
        (random.hash_one(draws) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut next: HashMap<Namespace, Instant> = HashMap::new();
    let mut failing = false;
    loop {
        let until = next
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + max.max(interval));
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = wake.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let poked: Vec<Namespace> = inner
            .poked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for ns in poked {
            next.insert(ns, Instant::now());
        }
        let namespaces: Vec<Namespace> = inner
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for ns in namespaces {
            if next.get(&ns).is_some_and(|due| *due > Instant::now()) {
                continue;
            }
            let wait = match inner.look(&ns).await {
                Ok(look) => {
                    if failing {
                        failing = false;
                        tracing::debug!("redis registry sweeps work again");
                    }
                    if look.expired > 0 {
                        tracing::debug!(namespace = %ns, expired = look.expired, "swept expired records");
                    }
                    next_look(interval, max, look, unit(), unit())
                }
                Err(e) => {
                    if !e.is_transient() {
                        // Damaged data, not an outage: say which key, once.
                        let key = NsKeys::new(&ns).index;
                        warn_once!(
                            inner.warned,
                            &key,
                            &e.to_string(),
                            namespace = %ns,
                            error = %e,
                            "redis registry sweep refused; will retry"
                        );
                    } else if !failing {
                        failing = true;
                        tracing::debug!(namespace = %ns, error = %e, "redis registry sweep failed; will retry");
                    }
                    interval
                }
            };
            next.insert(ns, Instant::now() + wait);
        }
    }
}

/// How long a handle waits before looking at a namespace again: until its
/// earliest expiry plus up to one `interval` (`u` in [0, 1) picks where, so
/// that the handles waking for the same expiry spread out and the first
/// sweeps for all), at most `max` scaled by `0.75 + v/2` (never below
/// `interval`), which bounds how late the `Expired` of a record published
/// since the last look (by another handle) comes. After a `busy` look,
/// another handle is sweeping: one `interval`.
fn next_look(interval: Duration, max: Duration, look: Look, u: f64, v: f64) -> Duration {
    let clamp = |x: f64| {
        if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
    };
    if look.busy {
        return interval;
    }
    let cap = max.max(interval).mul_f64(0.75 + clamp(v) / 2.0);
    let wait = match look.next_in {
        Some(d) => d.saturating_add(interval.mul_f64(clamp(u))).min(cap),
        None => cap,
    };
    wait.max(Duration::from_millis(1))
}

/// Milliseconds for Redis, at least 1.
fn ttl_ms(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::Config("ttl must be greater than zero".into()));
    }
    if ttl > MAX_TTL {
        return Err(Error::Config(format!(
            "ttl {ttl:?} is longer than the maximum of one year"
        )));
    }
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        let ttl = ttl_ms(ttl)?;
        let inner = &self.inner;
        let ns = &record.namespace;
        let exclusive = if policy == NamePolicy::Exclusive {
            "1"
        } else {
            "0"
        };
        let mut inv = inner.name_script(&SCRIPTS.publish, ns, &record.name, record.instance);
        inv.arg(record.to_json())
            .arg(ttl)
            .arg(exclusive)
            .arg(GRACE_MS);
        let reply: Vec<Vec<u8>> = inner.run("a publish", &inv).await?;
        inner.note_clock(ns, reply.get(2));
        inner.log_repairs(ns, reply.iter().skip(3));
        // The new expiry may come before the earliest the sweeper knows.
        inner.poke(ns);
        match reply.first().map(Vec::as_slice) {
            Some(b"ok") => Ok(()),
            Some(b"taken") => {
                let raw = reply
                    .get(1)
                    .map(|h| String::from_utf8_lossy(h).into_owned());
                let holder = raw
                    .as_deref()
                    .and_then(|h| h.parse::<InstanceId>().ok())
                    .unwrap_or_else(|| {
                        tracing::warn!(namespace = %ns, name = %record.name, holder = ?raw, "redis registry: the name is held by a record with an unreadable instance id");
                        InstanceId::from_u128(0)
                    });
                Err(Error::NameTaken {
                    name: record.name.to_string(),
                    holder,
                })
            }
            _ => Err(error::unexpected("publish script reply")),
        }
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        let ttl = ttl_ms(ttl)?;
        let inner = &self.inner;
        let mut inv = inner.name_script(&SCRIPTS.refresh, ns, name, instance);
        inv.arg(ttl).arg(GRACE_MS);
        let reply: Vec<Vec<u8>> = inner.run("a refresh", &inv).await?;
        inner.note_clock(ns, reply.get(1));
        inner.log_repairs(ns, reply.iter().skip(2));
        if reply.first().map(Vec::as_slice) == Some(b"1") {
            Ok(())
        } else {
            Err(Error::NameLost {
                name: name.to_string(),
                instance,
            })
        }
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        let inner = &self.inner;
        let inv = inner.name_script(&SCRIPTS.unpublish, ns, name, instance);
        let _removed: i64 = inner.run("an unpublish", &inv).await?;
        Ok(())
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        Ok(Lease::into_records(self.leases(ns, pattern).await?))
    }

    /// The time left is the record's `expires` (ms, in its hash, in step
    /// with its index score) minus the server's `TIME`, both read by the
    /// same script (or, for an exact name on a single server, the same
    /// pipeline) that reads the record.
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        self.leases(ns, pattern).await
    }

    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        watch::watch(self.inner.clone(), ns).await
    }
}

impl RedisRegistry {
    /// What `lookup` and `lookup_leases` answer: the live records matching
    /// `pattern`, sorted by name, each with its time left by the server
    /// clock (`None` only if the server sent a time left that is no whole
    /// number of milliseconds, which the scripts never do).
    async fn leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        let inner = &self.inner;
        inner.track(ns);
        let keys = NsKeys::new(ns);
        let mut names: Vec<String> = match pattern.as_exact() {
            // A single server: one round trip of plain commands. (In a
            // cluster `TIME` could come from another node than the key's;
            // there the `FETCH` script answers, also in one round trip.)
            Some(name) if !inner.source.is_cluster() => {
                return self.lookup_exact(ns, &keys, name.as_str()).await;
            }
            Some(name) => vec![name.to_string()],
            None => {
                let mut inv = SCRIPTS.names.prepare_invoke();
                inv.key(&keys.index).arg(pattern.literal_prefix());
                let raw: Vec<Vec<u8>> = inner.run("a lookup", &inv).await?;
                raw.into_iter()
                    .filter_map(|m| match String::from_utf8(m) {
                        Ok(s) if PeerName::new(&s).is_ok() => Some(s),
                        Ok(s) => {
                            warn_once!(inner.warned, &keys.index, &format!("member {s:?}"), namespace = %ns, member = %s, "redis registry: index member is not a peer name; skipped");
                            None
                        }
                        Err(e) => {
                            let member = String::from_utf8_lossy(e.as_bytes()).into_owned();
                            warn_once!(inner.warned, &keys.index, &format!("member {member:?}"), namespace = %ns, member = %member, "redis registry: index member is not UTF-8; skipped");
                            None
                        }
                    })
                    .filter(|n| pattern.matches(n))
                    .collect()
            }
        };
        names.sort_unstable();
        names.dedup();
        // The chunks are fetched concurrently (up to 8 in flight on the
        // multiplexed connection), in order, and each is decoded as soon as
        // it is in, while the server works on the next ones.
        let keys = &keys;
        let chunks: Vec<Vec<String>> = names.chunks(FETCH_CHUNK).map(<[String]>::to_vec).collect();
        let fetches = chunks.into_iter().map(|chunk| async move {
            let mut inv = SCRIPTS.fetch.prepare_invoke();
            inv.key(&keys.index).arg(&keys.peer_prefix);
            for n in chunk {
                inv.arg(n.as_str());
            }
            inner.run::<Vec<Vec<u8>>>("a lookup", &inv).await
        });
        let mut replies = futures::stream::iter(fetches).buffered(8);
        let mut out = Vec::with_capacity(names.len());
        while let Some(reply) = replies.try_next().await? {
            if !reply.len().is_multiple_of(4) {
                return Err(error::unexpected("lookup script reply not in quadruples"));
            }
            for quad in reply.chunks_exact(4) {
                let name = String::from_utf8_lossy(&quad[0]);
                let key = format!("{}{name}", keys.peer_prefix);
                let problem = match quad[1].as_slice() {
                    b"ok" => match decode_record(ns, &name, &quad[2]) {
                        Ok(r) => {
                            let left = std::str::from_utf8(&quad[3])
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                                .map(Duration::from_millis);
                            out.push(Lease::new(r, left));
                            continue;
                        }
                        Err(why) => why,
                    },
                    b"wrongtype" => "the key is not a hash".to_owned(),
                    b"missing" => "live in the index, but no record is stored".to_owned(),
                    b"norecord" => "the hash has no `record` field".to_owned(),
                    b"badexpires" => "the hash's `expires` is not a number".to_owned(),
                    other => format!("unknown status {:?}", String::from_utf8_lossy(other)),
                };
                warn_once!(
                    inner.warned,
                    &key,
                    &problem,
                    namespace = %ns,
                    "redis registry: unreadable entry skipped"
                );
            }
        }
        Ok(out)
    }

    /// The record of one name on a single server, and its time left:
    /// `TIME` and an `HMGET` of the record and its expiry, pipelined, with
    /// the same checks as the `FETCH` script.
    async fn lookup_exact(&self, ns: &Namespace, keys: &NsKeys, name: &str) -> Result<Vec<Lease>> {
        let inner = &self.inner;
        let key = format!("{}{name}", keys.peer_prefix);
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("TIME")
            .cmd("HMGET")
            .arg(&key)
            .arg("record")
            .arg("expires");
        let mut conn = inner.conn.clone();
        let after = inner.op_timeout();
        let mut reply: Vec<Value> =
            match tokio::time::timeout(after, pipe.query_async(&mut conn)).await {
                Ok(r) => r.map_err(error::map)?,
                Err(_) => return Err(error::timed_out("a lookup", after)),
            };
        let (Some(fields), Some(time)) = (reply.pop(), reply.pop()) else {
            return Err(error::unexpected("lookup reply"));
        };
        let now = server_time_ms(time).ok_or_else(|| error::unexpected("TIME reply"))?;
        let problem = match fields {
            Value::Array(mut f) if f.len() == 2 => {
                let expires = f.pop().unwrap_or(Value::Nil);
                let record = f.pop().unwrap_or(Value::Nil);
                let expires = match expires {
                    Value::Nil => None,
                    Value::BulkString(b) => Some(
                        std::str::from_utf8(&b)
                            .ok()
                            .and_then(|v| v.trim().parse::<f64>().ok()),
                    ),
                    _ => Some(None),
                };
                match (record, expires) {
                    (Value::Nil, None) => return Ok(Vec::new()),
                    (_, None | Some(None)) => "the hash's `expires` is not a number".to_owned(),
                    (_, Some(Some(e))) if e <= now as f64 => return Ok(Vec::new()),
                    (Value::BulkString(json), Some(Some(e))) => {
                        match decode_record(ns, name, &json) {
                            Ok(r) => return Ok(vec![Lease::new(r, time_left(e, now))]),
                            Err(why) => why,
                        }
                    }
                    _ => "the hash has no `record` field".to_owned(),
                }
            }
            Value::ServerError(e) if e.code() == "WRONGTYPE" => "the key is not a hash".to_owned(),
            Value::ServerError(e) => {
                return Err(error::map(redis::RedisError::from(e)));
            }
            _ => return Err(error::unexpected("HMGET reply")),
        };
        warn_once!(
            inner.warned,
            &key,
            &problem,
            namespace = %ns,
            "redis registry: unreadable entry skipped"
        );
        Ok(Vec::new())
    }
}

impl fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespaces = self
            .inner
            .namespaces
            .lock()
            .map(|s| s.len())
            .unwrap_or_default();
        f.debug_struct("RedisRegistry")
            .field("url", &self.inner.display)
            .field(
                "mode",
                &if self.inner.source.is_cluster() {
                    "cluster"
                } else {
                    "single"
                },
            )
            .field("namespaces", &namespaces)
            .field("config", &self.inner.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_look_follows_the_earliest_expiry_and_is_bounded() {
        let ms = Duration::from_millis;
        let (interval, max) = (ms(250), Duration::from_secs(10));
        let look = |next_in: Option<Duration>, busy: bool| Look {
            next_in,
            busy,
            expired: 0,
        };
        // Until the earliest expiry, plus up to one interval.
        let due = look(Some(ms(3000)), false);
        assert_eq!(next_look(interval, max, due, 0.0, 0.5), ms(3000));
        assert_eq!(next_look(interval, max, due, 0.5, 0.5), ms(3125));
        // Capped at 0.75..1.25 x max, however far the expiry or if none.
        let far = look(Some(Duration::from_secs(600)), false);
        assert_eq!(next_look(interval, max, far, 0.5, 0.5), max);
        assert_eq!(
            next_look(interval, max, look(None, false), 0.9, 0.0),
            max.mul_f64(0.75)
        );
        assert_eq!(
            next_look(interval, max, look(None, false), 0.9, 1.0),
            max.mul_f64(1.25)
        );
        // Another handle is sweeping: one interval.
        assert_eq!(
            next_look(interval, max, look(None, true), 0.5, 0.5),
            interval
        );
        // Something due now: at once, but never zero; a cap below the
        // interval counts as the interval; out-of-range draws are clamped.
        assert_eq!(
            next_look(interval, max, look(Some(Duration::ZERO), false), 0.0, 0.5),
            ms(1)
        );
        assert_eq!(
            next_look(interval, ms(10), look(None, false), 0.5, 0.5),
            interval
        );
        assert_eq!(next_look(interval, max, due, -3.0, f64::NAN), ms(3000));
    }

    #[test]
    fn first_scores_of_resp2_and_resp3_replies() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            first_score(&Value::Array(vec![bulk("a"), bulk("1500")])),
            Some(Some(1500.0))
        );
        assert_eq!(
            first_score(&Value::Array(vec![bulk("a"), bulk("inf")])),
            Some(Some(f64::INFINITY))
        );
        assert_eq!(
            first_score(&Value::Array(vec![Value::Array(vec![
                bulk("a"),
                Value::Double(2.5)
            ])])),
            Some(Some(2.5))
        );
        assert_eq!(first_score(&Value::Array(vec![])), Some(None));
        assert_eq!(first_score(&Value::Array(vec![bulk("a")])), None);
        assert_eq!(first_score(&Value::Int(3)), None);
    }

    #[test]
    fn ttl_bounds() {
        assert!(matches!(ttl_ms(Duration::ZERO), Err(Error::Config(_))));
        assert_eq!(ttl_ms(Duration::from_micros(10)).unwrap(), 1);
        assert_eq!(ttl_ms(Duration::from_millis(600)).unwrap(), 600);
        assert!(matches!(
            ttl_ms(Duration::from_secs(400 * 24 * 3600)),
            Err(Error::Config(_))
        ));
    }

    #[tokio::test]
    async fn bad_urls_fail_before_any_connection() {
        match RedisRegistry::connect("memcached://u:hunter2@h:1").await {
            Err(Error::InvalidAddress { kind, input, .. }) => {
                assert_eq!(kind, "registry url");
                assert!(!input.contains("hunter2"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            RedisRegistry::connect("redis://h:notaport").await,
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(
            RedisRegistry::connect_with(
                "redis://h",
                RedisConfig::new().with_tls_root_certificate("x")
            )
            .await,
            Err(Error::Config(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // A port nothing listens on: bind, note, release.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let started = std::time::Instant::now();
        match RedisRegistry::connect(&format!("redis://127.0.0.1:{port}")).await {
            Err(
                e @ Error::RegistryUnavailable {
                    backend: "redis", ..
                },
            ) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
