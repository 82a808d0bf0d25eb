//! Watching a namespace: `XREAD BLOCK` on its event stream, from the last id seen.
//!
//! Each event carries `seq`, the namespace's event counter. A watcher expects
//! `seq` to go up by one; a jump means the stream was trimmed past events it
//! had not read, and a drop (or a counter lower than its own after a
//! reconnect) means the server lost its data (a restart without
//! persistence, a failover to a lagging replica). Either way it yields
//! [`RegistryEvent::Resync`] so that the caller lists again.
//!
//! One reader ("hub") per handle and namespace runs the `XREAD` loop on one
//! connection and fans the events out to every watch stream of that
//! namespace on the handle, as masse-sql's hubs do: a thousand watch streams
//! on twenty handles cost the server twenty reads per event, not a thousand.
//! Each stream receives exactly the events whose `seq` is above the counter
//! when its `watch()` returned.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::BoxStream;
use masse_core::{InstanceId, Namespace, PeerName, RegistryEvent, Result, WatchSender};
use redis::Value;
use tokio::sync::Notify;

use crate::codec::decode_record;
use crate::conn::Conn;
use crate::error;
use crate::keys::NsKeys;
use crate::registry::Inner;
use crate::scripts::SCRIPTS;
use crate::warned::warn_once;

/// Events asked for per `XREAD`.
const READ_COUNT: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Events a stream may have queued before it is marked lagging (it then
/// gets `Resync` once there is room again, and the events in between are
/// dropped).
const STREAM_CAPACITY: usize = 4096;

/// The hubs of one handle, by namespace.
#[derive(Debug, Default)]
pub(crate) struct Hubs(Mutex<HashMap<Namespace, Weak<Hub>>>);

/// The reader of one namespace on one handle.
#[derive(Debug)]
struct Hub {
    /// The streams it feeds. Locked across a new stream's position read,
    /// so that no event the hub hands out falls between that read and the
    /// stream's subscription (and the reader of a new hub starts at its
    /// first stream's position).
    state: Arc<tokio::sync::Mutex<HubState>>,
    /// Told when a stream is dropped, so that the reader stops at once
    /// after the last one.
    left: Arc<Notify>,
}

#[derive(Debug, Default)]
struct HubState {
    subs: Vec<Sub>,
    /// The reader stopped (its last stream was gone): a new watch makes a
    /// new hub.
    closed: bool,
}

#[derive(Debug)]
struct Sub {
    tx: WatchSender,
    /// The namespace's event counter when this stream's `watch()` returned:
    /// it receives the events above it.
    after: u64,
}

/// Starts a watch: the position is read before this returns, so every event
/// after it is delivered.
pub(crate) async fn watch(
    inner: Arc<Inner>,
    ns: &Namespace,
) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
    inner.track(ns);
    let keys = NsKeys::new(ns);
    let (tx, rx) = WatchSender::channel(STREAM_CAPACITY);
    let (hub, mut state, fresh) = loop {
        let found = {
            let mut hubs = inner.hubs.0.lock().unwrap_or_else(|p| p.into_inner());
            match hubs.get(ns).and_then(Weak::upgrade) {
                Some(hub) => Ok(hub),
                None => {
                    let hub = Arc::new(Hub {
                        state: Arc::new(tokio::sync::Mutex::new(HubState::default())),
                        left: Arc::new(Notify::new()),
                    });
                    // Locked before anyone else can find it.
                    let state = hub
                        .state
                        .clone()
                        .try_lock_owned()
                        .expect("a new hub is not locked");
                    hubs.insert(ns.clone(), Arc::downgrade(&hub));
                    Err((hub, state))
                }
            }
        };
        match found {
            Ok(hub) => {
                let state = hub.state.clone().lock_owned().await;
                if !state.closed {
                    break (hub, state, false);
                }
                // Its reader just stopped: make another.
                let mut hubs = inner.hubs.0.lock().unwrap_or_else(|p| p.into_inner());
                if hubs
                    .get(ns)
                    .is_some_and(|w| w.ptr_eq(&Arc::downgrade(&hub)))
                {
                    hubs.remove(ns);
                }
            }
            Err((hub, state)) => break (hub, state, true),
        }
    };
    let mut conn = inner.conn.clone();
    let (seq, last_id) = position(&inner, &mut conn, &keys).await?;
    tracing::debug!(namespace = %ns, seq, %last_id, shared = !fresh, "redis registry watch starts");
    state.subs.push(Sub { tx, after: seq });
    drop(state);
    if fresh {
        let watcher = Watcher {
            inner,
            ns: ns.clone(),
            keys,
            conn: None,
            last_id,
            seq,
            pending: VecDeque::new(),
            check_on_connect: false,
            backoff: MIN_BACKOFF,
            failing: false,
        };
        tokio::spawn(run(hub.clone(), watcher));
    }
    let guard = Left(hub.left.clone());
    Ok(Box::pin(futures::stream::unfold(
        (rx, guard, hub),
        |(mut rx, guard, hub)| async move {
            let ev = rx.recv().await?;
            Some((ev, (rx, guard, hub)))
        },
    )))
}

/// Tells the hub that a stream was dropped.
struct Left(Arc<Notify>);

impl Drop for Left {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Reads for the hub's streams until the last one is dropped.
async fn run(hub: Arc<Hub>, mut watcher: Watcher) {
    let ns = watcher.ns.clone();
    let inner = Arc::downgrade(&watcher.inner);
    // The streams hold the hub; the reader holds it weakly, so the hub is
    // gone (and a new watch makes a new one) once they all are.
    let weak = Arc::downgrade(&hub);
    let left = hub.left.clone();
    drop(hub);
    loop {
        tokio::select! {
            () = watcher.round() => {}
            () = left.notified() => {}
        }
        let Some(hub) = weak.upgrade() else {
            break;
        };
        let mut state = hub.state.lock().await;
        let subs = &mut state.subs;
        subs.retain(|s| !s.tx.is_closed());
        while let Some((seq, ev)) = watcher.pending.pop_front() {
            match seq {
                // Lost events: everyone lists again, and takes what follows
                // (after a server reset the counter starts over).
                None => {
                    for sub in subs.iter_mut() {
                        sub.after = 0;
                        sub.tx.send(ev.clone());
                    }
                }
                Some(seq) => {
                    for sub in subs.iter_mut().filter(|s| seq > s.after) {
                        sub.tx.send(ev.clone());
                    }
                }
            }
        }
        if subs.is_empty() {
            state.closed = true;
            break;
        }
    }
    // A watch that made a new hub meanwhile keeps it; only ours is removed.
    if let Some(inner) = inner.upgrade() {
        let mut hubs = inner.hubs.0.lock().unwrap_or_else(|p| p.into_inner());
        if hubs.get(&ns).is_some_and(|w| w.strong_count() == 0) {
            hubs.remove(&ns);
        }
    }
    tracing::debug!(namespace = %ns, "last redis registry watch gone; its reader stops");
}

/// `(seq, last id)` of the namespace's stream, read atomically.
async fn position(inner: &Inner, conn: &mut Conn, keys: &NsKeys) -> Result<(u64, String)> {
    let mut inv = SCRIPTS.position.prepare_invoke();
    inv.key(&keys.events).key(&keys.seq);
    let after = inner.op_timeout();
    let (seq, id): (String, String) =
        match tokio::time::timeout(after, inv.invoke_async(conn)).await {
            Ok(r) => r.map_err(error::map)?,
            Err(_) => return Err(error::timed_out("a watch", after)),
        };
    let seq = seq.parse().unwrap_or_else(|_| {
        tracing::warn!(key = %keys.seq, value = %seq, "redis registry: event counter is not a number; counting from 0");
        0
    });
    Ok((seq, id))
}

struct Watcher {
    inner: Arc<Inner>,
    ns: Namespace,
    keys: NsKeys,
    /// The dedicated connection, once open.
    conn: Option<Conn>,
    /// The id of the last stream entry read.
    last_id: String,
    /// The `seq` of the last event read.
    seq: u64,
    /// Events read and not yet handed out, with their `seq` (`None` for
    /// the `Resync` of lost events).
    pending: VecDeque<(Option<u64>, RegistryEvent)>,
    /// After a reconnect: compare the server's counter with ours first.
    check_on_connect: bool,
    backoff: Duration,
    failing: bool,
}

impl Watcher {
    /// One round: one read (reconnecting as needed), or one back-off after
    /// a failure. What it read is in `pending`. Cancel-safe: a round dropped
    /// half-way loses nothing, as the position moves only with a reply.
    async fn round(&mut self) {
        if let Err(e) = self.read().await {
            self.conn = None;
            self.check_on_connect = true;
            if !self.failing {
                self.failing = true;
                if e.is_transient() {
                    tracing::warn!(namespace = %self.ns, error = %e, "redis registry watch lost its connection; reconnecting and resuming");
                } else {
                    tracing::warn!(namespace = %self.ns, key = %self.keys.events, error = %e, "redis registry watch cannot read the event stream; retrying until it is repaired");
                }
            } else {
                tracing::debug!(namespace = %self.ns, error = %e, retry_in = ?self.backoff, "redis registry watch still failing");
            }
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One round: connect if needed, then one `XREAD BLOCK`.
    async fn read(&mut self) -> Result<()> {
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                let mut c = self.inner.source.watch_conn(&self.inner.config).await?;
                if self.check_on_connect {
                    let (seq, last_id) = position(&self.inner, &mut c, &self.keys).await?;
                    if seq < self.seq {
                        tracing::warn!(namespace = %self.ns, ours = self.seq, server = seq, "redis registry lost its events (restart without persistence?); resync");
                        self.pending.push_back((None, RegistryEvent::Resync));
                        self.seq = seq;
                        self.last_id = last_id;
                    }
                    self.check_on_connect = false;
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(namespace = %self.ns, "redis registry watch reconnected; resuming");
                }
                self.backoff = MIN_BACKOFF;
                self.conn = Some(c.clone());
                c
            }
        };
        if !self.pending.is_empty() {
            return Ok(());
        }
        let config = &self.inner.config;
        let block = u64::try_from(config.block_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.keys.events)
            .arg(&self.last_id);
        let after = config.block_timeout + self.inner.op_timeout();
        let reply: Value = match tokio::time::timeout(after, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(error::map)?,
            Err(_) => return Err(error::timed_out("a watch read", after)),
        };
        for (id, fields) in entries(reply) {
            self.accept(id, fields);
        }
        Ok(())
    }

    /// Takes one stream entry: checks the counter, decodes the event.
    fn accept(&mut self, id: String, fields: HashMap<String, Vec<u8>>) {
        self.last_id = id;
        let seq = fields
            .get("seq")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let Some(seq) = seq else {
            warn_once!(
                self.inner.warned,
                &self.keys.events,
                &format!("entry {} without seq", self.last_id),
                namespace = %self.ns,
                id = %self.last_id,
                "redis registry: stream entry without a sequence number; skipped"
            );
            return;
        };
        if seq != self.seq + 1 {
            tracing::warn!(namespace = %self.ns, expected = self.seq + 1, got = seq, "redis registry: events were lost (stream trimmed or server reset); resync");
            self.pending.push_back((None, RegistryEvent::Resync));
        }
        self.seq = seq;
        match decode_event(&self.ns, &fields) {
            Ok(ev) => self.pending.push_back((Some(seq), ev)),
            Err(why) => warn_once!(
                self.inner.warned,
                &self.keys.events,
                &format!("entry {}: {why}", self.last_id),
                namespace = %self.ns,
                id = %self.last_id,
                "redis registry: unreadable event skipped"
            ),
        }
    }
}

/// Decodes the fields of one event entry.
fn decode_event(
    ns: &Namespace,
    fields: &HashMap<String, Vec<u8>>,
) -> std::result::Result<RegistryEvent, String> {
    let text = |f: &str| {
        fields
            .get(f)
            .ok_or_else(|| format!("no `{f}` field"))
            .and_then(|v| std::str::from_utf8(v).map_err(|_| format!("`{f}` is not UTF-8")))
    };
    let kind = text("type")?;
    let name = text("name")?;
    match kind {
        "joined" | "updated" => {
            let json = fields.get("record").ok_or("no `record` field")?;
            let record = decode_record(ns, name, json)?;
            Ok(if kind == "joined" {
                RegistryEvent::Joined(record)
            } else {
                RegistryEvent::Updated(record)
            })
        }
        "left" | "expired" => {
            let name = PeerName::new(name).map_err(|e| e.to_string())?;
            let instance: InstanceId = text("instance")?.parse().map_err(|e| format!("{e}"))?;
            Ok(if kind == "left" {
                RegistryEvent::Left { name, instance }
            } else {
                RegistryEvent::Expired { name, instance }
            })
        }
        other => Err(format!("unknown event type {other:?}")),
    }
}

/// The `(id, fields)` entries of an `XREAD` reply (RESP2 or RESP3), skipping
/// anything that does not have that shape; `Nil` (timeout) gives none.
fn entries(reply: Value) -> Vec<(String, HashMap<String, Vec<u8>>)> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(items) = stream else {
            continue;
        };
        for item in items {
            let Value::Array(mut parts) = item else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop().unwrap_or(Value::Nil);
            let Some(id) = parts.pop().and_then(as_string) else {
                continue;
            };
            let mut map = HashMap::new();
            match fields {
                Value::Array(flat) => {
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let (Some(k), Some(v)) = (as_string(k), as_bytes(v)) {
                            map.insert(k, v);
                        }
                    }
                }
                Value::Map(pairs) => {
                    for (k, v) in pairs {
                        if let (Some(k), Some(v)) = (as_string(k), as_bytes(v)) {
                            map.insert(k, v);
                        }
                    }
                }
                _ => {}
            }
            out.push((id, map));
        }
    }
    out
}

fn as_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn as_string(v: Value) -> Option<String> {
    as_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use masse_core::PeerRecord;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn xread_replies_are_parsed_leniently() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("masse:{ns}:events"),
            Value::Array(vec![
                entry("1-0", &[("seq", "1"), ("type", "left")]),
                Value::Int(7),
                Value::Array(vec![bulk("2-0")]),
                entry("3-0", &[("seq", "2")]),
            ]),
        ])]);
        let e = entries(reply);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "1-0");
        assert_eq!(e[0].1["type"], b"left");
        assert_eq!(e[1].0, "3-0");
        assert!(entries(Value::Nil).is_empty());
        assert!(entries(Value::Int(3)).is_empty());
    }

    #[test]
    fn events_decode_and_garbage_is_an_error() {
        let ns: Namespace = "ns".parse().unwrap();
        let r = PeerRecord::new(ns.clone(), "a".parse().unwrap(), InstanceId::random());
        let f = |pairs: &[(&str, String)]| -> HashMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let joined = f(&[
            ("type", "joined".into()),
            ("name", "a".into()),
            ("record", r.to_json()),
        ]);
        assert_eq!(
            decode_event(&ns, &joined),
            Ok(RegistryEvent::Joined(r.clone()))
        );
        let left = f(&[
            ("type", "expired".into()),
            ("name", "a".into()),
            ("instance", r.instance.to_string()),
        ]);
        assert_eq!(
            decode_event(&ns, &left),
            Ok(RegistryEvent::Expired {
                name: r.name.clone(),
                instance: r.instance
            })
        );
        for (bad, why) in [
            (
                f(&[
                    ("type", "joined".into()),
                    ("name", "a".into()),
                    ("record", "{".into()),
                ]),
                "malformed peer record",
            ),
            (
                f(&[
                    ("type", "joined".into()),
                    ("name", "b".into()),
                    ("record", r.to_json()),
                ]),
                "stored under this key",
            ),
            (
                f(&[
                    ("type", "left".into()),
                    ("name", "a b".into()),
                    ("instance", r.instance.to_string()),
                ]),
                "invalid peer name",
            ),
            (
                f(&[
                    ("type", "left".into()),
                    ("name", "a".into()),
                    ("instance", "zz".into()),
                ]),
                "invalid instance id",
            ),
            (
                f(&[("type", "exploded".into()), ("name", "a".into())]),
                "unknown event type",
            ),
            (f(&[]), "no `type` field"),
        ] {
            match decode_event(&ns, &bad) {
                Err(e) => assert!(e.contains(why), "{bad:?}: {e:?} lacks {why:?}"),
                Ok(ev) => panic!("{bad:?} decoded as {ev:?}"),
            }
        }
    }
}
