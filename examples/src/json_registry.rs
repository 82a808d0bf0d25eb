//! `JsonFileRegistry`: a registry kept in one JSON file, written against
//! masse's public traits only, as a third-party crate would.
//!
//! Several processes on one machine (or on a shared file system with working
//! locks) share peers through the file: every write takes an exclusive lock
//! on `<file>.lock`, reads the file, changes it and replaces it with an
//! atomic rename, so a reader never sees half a file. Lookups read without
//! the lock. Expired records are invisible to lookups at once and dropped by
//! the next write.
//!
//! A file has no change feed: [`watch`](Registry::watch) returns
//! [`Error::Unsupported`], and masse's `CachingRegistry` (in every node)
//! polls the namespace instead, so nodes still get `PeerJoined`,
//! `PeerUpdated` and `PeerExpired` events, within about one poll interval.
//!
//! [`register`] makes `json://<path>` URLs work wherever masse takes a
//! registry URL (`masse::registry_from_url`, `MASSE_REGISTRY`, …):
//! `json:///var/lib/app/peers.json` (absolute), `json://peers.json`
//! (relative to the working directory).
//!
//! The file is readable by an operator:
//!
//! ```json
//! { "namespaces": { "prod": { "db-1": { "expires_at_ms": 1767225600000,
//!   "record": { "name": "db-1", "endpoints": ["tcp://10.0.0.7:4100"], … } } } } }
//! ```
//!
//! [`lookup_leases`](Registry::lookup_leases) reports each record's time
//! left as its `expires_at_ms` minus the wall clock of the process that
//! reads the file (a file has no clock of its own), so it is only as right
//! as the clocks of the writer and the reader agree.
//!
//! `tests/json_registry.rs` runs masse's registry conformance suite against
//! it, and two nodes that find each other through a file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use masse::{
    BoxStream, DynRegistry, Error, InstanceId, Lease, NamePolicy, Namespace, Pattern, PeerName,
    PeerRecord, Registry, RegistryEvent, Result, WarnOnce, async_trait, now_millis,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The backend's name in errors.
const BACKEND: &str = "json-file";

/// The URL scheme [`register`] installs.
pub const SCHEME: &str = "json";

/// Makes `json://<path>` URLs open a [`JsonFileRegistry`] wherever masse
/// takes a registry URL. Call it once, at start-up.
pub fn register() -> Result<()> {
    masse::register_scheme(SCHEME, |url: String| async move {
        Ok(Arc::new(JsonFileRegistry::from_url(&url)?) as DynRegistry)
    })
}

/// A registry in one JSON file; see the [module docs](self). Clones share
/// the same file (and the same memory of which malformed entries were
/// already reported).
#[derive(Clone)]
pub struct JsonFileRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    /// Malformed entries are reported once per handle, not on every poll.
    warned: WarnOnce,
}

/// The file: namespaces, then names, then the stored entries. Entries stay
/// raw JSON here so that one an operator broke does not make the whole file
/// unreadable.
#[derive(Default, Serialize, Deserialize)]
struct Store {
    #[serde(default)]
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
}

/// One stored entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    expires_at_ms: u64,
    /// The record, as `PeerRecord` serialises.
    record: Value,
}

/// What reading one entry gave.
enum Read {
    /// A live record and its time left (ms).
    Live(PeerRecord, u64),
    Expired,
    Malformed(String),
}

fn read_entry(ns: &str, name: &str, value: &Value, now: u64) -> Read {
    let stored = match Stored::deserialize(value) {
        Ok(s) => s,
        Err(e) => return Read::Malformed(format!("not an entry: {e}")),
    };
    if stored.expires_at_ms <= now {
        return Read::Expired;
    }
    match PeerRecord::deserialize(&stored.record) {
        Ok(r) if r.namespace.as_str() == ns && r.name.as_str() == name => {
            Read::Live(r, stored.expires_at_ms - now)
        }
        Ok(r) => Read::Malformed(format!(
            "the record is {}/{}, stored under {ns}/{name}",
            r.namespace, r.name
        )),
        Err(e) => Read::Malformed(format!("malformed peer record: {e}")),
    }
}

impl JsonFileRegistry {
    /// A registry in the file at `path` (created, with its directory, on
    /// the first write; a missing file is an empty registry).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        JsonFileRegistry {
            inner: Arc::new(Inner {
                path,
                lock_path: lock.into(),
                warned: WarnOnce::new(),
            }),
        }
    }

    /// The registry a `json://<path>` URL names: `json:///abs/file.json`,
    /// `json://relative/file.json`. The scheme is case-insensitive.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidAddress {
            kind: "registry url",
            input: url.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("expected json://<path>"));
        };
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(bad("expected json://<path>"));
        }
        if rest.is_empty() {
            return Err(bad("no file path after json://"));
        }
        Ok(Self::new(rest))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores `bytes` as the record of `name` in `ns`, unvalidated, live for
    /// an hour: for tests of how unreadable entries are handled (the
    /// conformance suite's raw writer). Bytes that are JSON are stored as
    /// that JSON, anything else as a string.
    pub async fn write_raw(&self, ns: &Namespace, name: &PeerName, bytes: Vec<u8>) -> Result<()> {
        let (ns, name) = (ns.to_string(), name.to_string());
        self.write(move |store, now| {
            let record = serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            let entry = Stored {
                expires_at_ms: now + 3_600_000,
                record,
            };
            store
                .namespaces
                .entry(ns)
                .or_default()
                .insert(name, to_value(&entry)?);
            Ok(((), true))
        })
        .await
    }

    /// Runs `f` on the store under the file lock, in a blocking thread, and
    /// writes the store back if `f` says it changed it (or expired entries
    /// were dropped).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store, u64) -> Result<(T, bool)> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            if let Some(dir) = inner.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|e| io_error(&inner.path, e))?;
            }
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&inner.lock_path)
                .map_err(|e| io_error(&inner.lock_path, e))?;
            lock.lock().map_err(|e| io_error(&inner.lock_path, e))?;
            let now = now_millis();
            let mut store = read_store(&inner.path)?;
            let swept = sweep(&mut store, now);
            let (out, changed) = f(&mut store, now)?;
            if changed || swept {
                write_store(&inner.path, &store)?;
            }
            // The lock goes with the file handle.
            drop(lock);
            Ok(out)
        })
        .await
    }

    /// The live record of `name`, if any (under the lock, in `write`).
    fn holder(store: &Store, ns: &str, name: &str, now: u64) -> Option<PeerRecord> {
        let value = store.namespaces.get(ns)?.get(name)?;
        match read_entry(ns, name, value, now) {
            Read::Live(r, _) => Some(r),
            Read::Expired | Read::Malformed(_) => None,
        }
    }
}

/// Drops every entry whose expiry has passed; keeps the ones it cannot read
/// (they are an operator's to fix, not ours to delete). Returns whether it
/// dropped any.
fn sweep(store: &mut Store, now: u64) -> bool {
    let mut dropped = false;
    for names in store.namespaces.values_mut() {
        names.retain(|_, v| {
            let expired = Stored::deserialize(&*v).is_ok_and(|s| s.expires_at_ms <= now);
            dropped |= expired;
            !expired
        });
    }
    store.namespaces.retain(|_, names| !names.is_empty());
    dropped
}

fn read_store(path: &Path) -> Result<Store> {
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Store::default()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::registry(
                BACKEND,
                format!("{} is not a registry file: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Store::default()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Writes the store to a temporary file next to `path`, flushes it to disk,
/// and renames it over `path`: readers see the old file or the new one.
fn write_store(path: &Path, store: &Store) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(store)
        .map_err(|e| Error::registry(BACKEND, format!("cannot serialise the registry: {e}")))?;
    json.push(b'\n');
    let file_name = path
        .file_name()
        .map_or_else(|| "registry".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{file_name}.{:08x}.tmp",
        InstanceId::random().as_u128() as u32
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(path, e));
    }
    Ok(())
}

fn to_value<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::registry(BACKEND, format!("cannot serialise an entry: {e}")))
}

/// An I/O failure on `path`: the registry is unavailable (retrying may help).
fn io_error(path: &Path, e: io::Error) -> Error {
    Error::unavailable(
        BACKEND,
        io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    )
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::unavailable(BACKEND, io::Error::other(e.to_string())))?
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::Config("ttl must be greater than zero".into()));
    }
    Ok(())
}

fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl Registry for JsonFileRegistry {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        check_ttl(ttl)?;
        let record = record.clone();
        self.write(move |store, now| {
            let (ns, name) = (record.namespace.as_str(), record.name.as_str());
            if let Some(holder) = Self::holder(store, ns, name, now)
                && holder.instance != record.instance
                && policy == NamePolicy::Exclusive
            {
                return Err(Error::NameTaken {
                    name: name.to_owned(),
                    holder: holder.instance,
                });
            }
            let entry = Stored {
                expires_at_ms: expiry(now, ttl),
                record: to_value(&record)?,
            };
            store
                .namespaces
                .entry(ns.to_owned())
                .or_default()
                .insert(name.to_owned(), to_value(&entry)?);
            Ok(((), true))
        })
        .await
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        check_ttl(ttl)?;
        let (ns, name) = (ns.to_string(), name.to_string());
        self.write(
            move |store, now| match Self::holder(store, &ns, &name, now) {
                Some(holder) if holder.instance == instance => {
                    let entry = Stored {
                        expires_at_ms: expiry(now, ttl),
                        record: to_value(&holder)?,
                    };
                    store
                        .namespaces
                        .entry(ns)
                        .or_default()
                        .insert(name, to_value(&entry)?);
                    Ok(((), true))
                }
                _ => Err(Error::NameLost { name, instance }),
            },
        )
        .await
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        let (ns, name) = (ns.to_string(), name.to_string());
        self.write(move |store, now| {
            let own = Self::holder(store, &ns, &name, now).is_some_and(|h| h.instance == instance);
            if own && let Some(names) = store.namespaces.get_mut(&ns) {
                names.remove(&name);
                if names.is_empty() {
                    store.namespaces.remove(&ns);
                }
            }
            Ok(((), own))
        })
        .await
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        Ok(Lease::into_records(self.leases(ns, pattern).await?))
    }

    /// The time left is `expires_at_ms` minus this process's wall clock.
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        self.leases(ns, pattern).await
    }

    async fn watch(&self, _: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        Err(Error::Unsupported(
            "a JSON file registry has no change feed; masse polls it".into(),
        ))
    }
}

impl JsonFileRegistry {
    /// What `lookup` and `lookup_leases` answer.
    async fn leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        let inner = self.inner.clone();
        let (ns, pattern) = (ns.to_string(), pattern.clone());
        blocking(move || {
            let store = read_store(&inner.path)?;
            let now = now_millis();
            let Some(names) = store.namespaces.get(&ns) else {
                return Ok(Vec::new());
            };
            let mut found = Vec::new();
            // BTreeMap order: sorted by name, as the contract wants.
            for (name, value) in names.iter().filter(|(n, _)| pattern.matches(n)) {
                match read_entry(&ns, name, value, now) {
                    Read::Live(r, left) => {
                        found.push(Lease::new(r, Some(Duration::from_millis(left))));
                    }
                    Read::Expired => {}
                    Read::Malformed(why) => {
                        let path = inner.path.display();
                        if inner.warned.first(&format!("{path} {ns}/{name} {why}")) {
                            tracing::warn!(file = %path, namespace = %ns, %name, reason = %why, "skipping an unreadable registry entry");
                        } else {
                            tracing::debug!(file = %path, namespace = %ns, %name, reason = %why, "skipping an unreadable registry entry");
                        }
                    }
                }
            }
            Ok(found)
        })
        .await
    }
}

impl fmt::Debug for JsonFileRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonFileRegistry")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file() {
        let r = JsonFileRegistry::from_url("json:///var/lib/app/peers.json").unwrap();
        assert_eq!(r.path(), Path::new("/var/lib/app/peers.json"));
        let r = JsonFileRegistry::from_url("JSON://peers.json").unwrap();
        assert_eq!(r.path(), Path::new("peers.json"));
        assert_eq!(
            r.inner.lock_path,
            PathBuf::from("peers.json.lock"),
            "the lock sits next to the file"
        );
        for bad in ["json://", "json:peers.json", "sqlite://x.db", "peers.json"] {
            assert!(
                matches!(
                    JsonFileRegistry::from_url(bad),
                    Err(Error::InvalidAddress { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn expired_entries_go_and_unreadable_ones_stay() {
        let mut store = Store::default();
        let names = store.namespaces.entry("ns".into()).or_default();
        names.insert(
            "old".into(),
            serde_json::json!({"expires_at_ms": 5, "record": {}}),
        );
        names.insert(
            "new".into(),
            serde_json::json!({"expires_at_ms": 50, "record": {}}),
        );
        names.insert("junk".into(), serde_json::json!("junk"));
        assert!(sweep(&mut store, 10));
        let left: Vec<_> = store.namespaces["ns"].keys().cloned().collect();
        assert_eq!(left, ["junk", "new"]);
        assert!(!sweep(&mut store, 10));
    }
}
