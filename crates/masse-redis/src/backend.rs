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
    Error, InstanceId, NamePolicy, Namespace, Pattern, PeerName, PeerRecord, Registry,
    RegistryEvent, Result,
};
use redis::{FromRedisValue, ScriptInvocation, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::address;
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

/// A [`Registry`] on Redis (a single server, TLS, or a Redis Cluster).
///
/// Cloning is cheap and shares the connection; [`connect`](Self::connect)
/// again for an independent handle (as another process would have).
///
/// Each handle sweeps the namespaces it has used for expired records, pacing
/// itself by the number of handles doing the same so that together they sweep
/// a namespace about every [`sweep_interval`](RedisConfig::sweep_interval); the
/// sweep that removes a record reports its `Expired` event, so the event comes
/// once however many handles there are. Lookups decide expiry by the server
/// clock, so an expired record is invisible at once, swept or not.
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
    /// This handle's entry in each namespace's `sweepers` set.
    sweeper_id: String,
    sweeper: Mutex<Option<JoinHandle<()>>>,
    /// The malformed entries already logged.
    pub(crate) warned: masse_core::WarnOnce,
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
    ///   [`RedisConfig::tls_root_certificate`] is set)
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
            sweeper_id: InstanceId::random().to_string(),
            sweeper: Mutex::new(None),
            warned: masse_core::WarnOnce::new(),
        });
        let task = tokio::spawn(sweeper(Arc::downgrade(&inner)));
        *inner.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        tracing::debug!(url = %inner.display, "connected to the redis registry");
        Ok(RedisRegistry { inner })
    }
}

impl Inner {
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
            tracing::debug!(namespace = %ns, "redis registry handle now sweeps this namespace");
        }
    }

    /// The longest a command may take, reconnecting included.
    pub(crate) fn op_timeout(&self) -> Duration {
        self.config.connect_timeout + self.config.response_timeout
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

    /// Removes every due record of `ns`, one `Expired` event each, and
    /// notes this handle as one of the namespace's sweepers. Returns how many
    /// records were due and how many handles sweep the namespace.
    async fn sweep(&self, ns: &Namespace) -> Result<(usize, usize)> {
        let keys = NsKeys::new(ns);
        // An entry outlives the longest pause between two sweeps (1.5 x the
        // cap), so a live handle is always counted; a gone one drops out.
        let cap = self
            .config
            .max_sweep_interval
            .max(self.config.sweep_interval);
        let lease = u64::try_from((cap * 3).as_millis()).unwrap_or(u64::MAX);
        let mut total = 0;
        loop {
            let mut inv = SCRIPTS.sweep.prepare_invoke();
            inv.key(&keys.index)
                .key(&keys.events)
                .key(&keys.seq)
                .key(&keys.sweepers)
                .arg(self.config.stream_maxlen)
                .arg(&keys.peer_prefix)
                .arg(SWEEP_LIMIT)
                .arg(&self.sweeper_id)
                .arg(lease);
            let reply: Vec<Vec<u8>> = self.run("a sweep", &inv).await?;
            let count = |i: usize| {
                reply
                    .get(i)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| error::unexpected("sweep script reply"))
            };
            let (due, sweepers) = (count(0)?, count(1)?);
            for name in reply.iter().skip(2) {
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
            if due < SWEEP_LIMIT {
                return Ok((total, sweepers));
            }
        }
    }
}

async fn ping(conn: &Conn, config: &RedisConfig) -> Result<()> {
    let mut conn = conn.clone();
    let after = config.connect_timeout + config.response_timeout;
    match tokio::time::timeout(after, redis::cmd("PING").query_async::<Value>(&mut conn)).await {
        Ok(r) => r.map(drop).map_err(error::map),
        Err(_) => Err(error::timed_out("PING", after)),
    }
}

/// Sweeps the handle's namespaces, each when [`sweep_delay`] after its last
/// sweep has passed; ends with the handle. A failed sweep is retried at the
/// next tick.
async fn sweeper(weak: Weak<Inner>) {
    let Some((interval, max)) = weak
        .upgrade()
        .map(|i| (i.config.sweep_interval, i.config.max_sweep_interval))
    else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let random = RandomState::new();
    let mut draws: u64 = 0;
    let mut next: HashMap<Namespace, Instant> = HashMap::new();
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
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
            match inner.sweep(&ns).await {
                Ok((expired, sweepers)) => {
                    if failing {
                        failing = false;
                        tracing::debug!("redis registry sweeps work again");
                    }
                    if expired > 0 {
                        tracing::debug!(namespace = %ns, expired, "swept expired records");
                    }
                    draws += 1;
                    // A uniform draw in [0, 1) from the top 53 bits.
                    let unit = (random.hash_one(draws) >> 11) as f64 / (1u64 << 53) as f64;
                    next.insert(
                        ns,
                        Instant::now() + sweep_delay(interval, max, sweepers, unit),
                    );
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
                    break;
                }
            }
        }
    }
}

/// How long one handle waits before sweeping a namespace again, when
/// `sweepers` handles (itself included) sweep it: `sweepers` × `interval`, so
/// that together they sweep it about every `interval`, at most `max` (never
/// below `interval`), scaled by `0.5 + unit` for `unit` in [0, 1) so that
/// handles started together drift apart.
fn sweep_delay(interval: Duration, max: Duration, sweepers: usize, unit: f64) -> Duration {
    let sweepers = u32::try_from(sweepers.max(1)).unwrap_or(u32::MAX);
    let base = interval.saturating_mul(sweepers).min(max.max(interval));
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    base.mul_f64(0.5 + unit)
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

/// Parses a stored record, checking that it is the one the key says; the
/// error says what is wrong with an unreadable or misplaced one.
pub(crate) fn decode_record(
    ns: &Namespace,
    name: &str,
    json: &[u8],
) -> std::result::Result<PeerRecord, String> {
    match PeerRecord::from_json(json) {
        Ok(r) if &r.namespace == ns && r.name.as_str() == name => Ok(r),
        Ok(r) => Err(format!(
            "the record of {}/{} is stored under this key",
            r.namespace, r.name
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        let ttl = ttl_ms(ttl)?;
        let inner = &self.inner;
        let ns = &record.namespace;
        inner.track(ns);
        let keys = NsKeys::new(ns);
        let exclusive = if policy == NamePolicy::Exclusive {
            "1"
        } else {
            "0"
        };
        let mut inv = SCRIPTS.publish.prepare_invoke();
        inv.key(&keys.index)
            .key(&keys.events)
            .key(&keys.seq)
            .key(keys.peer(&record.name))
            .arg(inner.config.stream_maxlen)
            .arg(record.name.as_str())
            .arg(record.instance.to_string())
            .arg(record.to_json())
            .arg(ttl)
            .arg(exclusive)
            .arg(GRACE_MS);
        let reply: Vec<Vec<u8>> = inner.run("a publish", &inv).await?;
        inner.log_repairs(ns, reply.iter().skip(2));
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
        inner.track(ns);
        let keys = NsKeys::new(ns);
        let mut inv = SCRIPTS.refresh.prepare_invoke();
        inv.key(&keys.index)
            .key(&keys.events)
            .key(&keys.seq)
            .key(keys.peer(name))
            .arg(inner.config.stream_maxlen)
            .arg(name.as_str())
            .arg(instance.to_string())
            .arg(ttl)
            .arg(GRACE_MS);
        let reply: Vec<Vec<u8>> = inner.run("a refresh", &inv).await?;
        inner.log_repairs(ns, reply.iter().skip(1));
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
        inner.track(ns);
        let keys = NsKeys::new(ns);
        let mut inv = SCRIPTS.unpublish.prepare_invoke();
        inv.key(&keys.index)
            .key(&keys.events)
            .key(&keys.seq)
            .key(keys.peer(name))
            .arg(inner.config.stream_maxlen)
            .arg(name.as_str())
            .arg(instance.to_string());
        let _removed: i64 = inner.run("an unpublish", &inv).await?;
        Ok(())
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        let inner = &self.inner;
        inner.track(ns);
        let keys = NsKeys::new(ns);
        let mut names: Vec<String> = match pattern.as_exact() {
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
            if !reply.len().is_multiple_of(3) {
                return Err(error::unexpected("lookup script reply not in triples"));
            }
            for triple in reply.chunks_exact(3) {
                let name = String::from_utf8_lossy(&triple[0]);
                let key = format!("{}{name}", keys.peer_prefix);
                let problem = match triple[1].as_slice() {
                    b"ok" => match decode_record(ns, &name, &triple[2]) {
                        Ok(r) => {
                            out.push(r);
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

    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        watch::watch(self.inner.clone(), ns).await
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
    fn sweep_delay_spreads_handles_and_is_bounded() {
        let ms = Duration::from_millis;
        let (interval, max) = (ms(250), Duration::from_secs(5));
        // Alone: every interval, ±50 %.
        assert_eq!(sweep_delay(interval, max, 0, 0.5), ms(250));
        assert_eq!(sweep_delay(interval, max, 1, 0.0), ms(125));
        assert!(sweep_delay(interval, max, 1, 0.999_999) < ms(375));
        // Ten handles share the namespace: each sweeps a tenth as often.
        assert_eq!(sweep_delay(interval, max, 10, 0.5), ms(2500));
        // Capped on average at `max`, however many handles.
        assert_eq!(sweep_delay(interval, max, 1_000_000, 0.5), max);
        assert_eq!(
            sweep_delay(interval, max, usize::MAX, 1.0),
            max.mul_f64(1.5)
        );
        // A cap below the interval counts as the interval; out-of-range draws are clamped.
        assert_eq!(sweep_delay(interval, ms(10), 100, 0.5), ms(250));
        assert_eq!(sweep_delay(interval, max, 1, -3.0), ms(125));
        assert_eq!(sweep_delay(interval, max, 1, f64::NAN), ms(125));
    }

    #[test]
    fn ttl_bounds() {
        assert!(ttl_ms(Duration::ZERO).is_err());
        assert_eq!(ttl_ms(Duration::from_micros(10)).unwrap(), 1);
        assert_eq!(ttl_ms(Duration::from_millis(600)).unwrap(), 600);
        assert!(ttl_ms(Duration::from_secs(400 * 24 * 3600)).is_err());
    }

    #[test]
    fn records_are_checked_against_their_key() {
        let ns: Namespace = "prod".parse().unwrap();
        let r = PeerRecord::new(ns.clone(), "a".parse().unwrap(), InstanceId::random());
        let json = r.to_json();
        assert_eq!(decode_record(&ns, "a", json.as_bytes()), Ok(r));
        let why = decode_record(&ns, "b", json.as_bytes()).unwrap_err();
        assert!(why.contains("prod/a"), "{why}");
        assert!(decode_record(&"other".parse().unwrap(), "a", json.as_bytes()).is_err());
        assert!(decode_record(&ns, "a", b"\xff\x00garbage").is_err());
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
            RedisRegistry::connect_with("redis://h", RedisConfig::new().tls_root_certificate("x"))
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
