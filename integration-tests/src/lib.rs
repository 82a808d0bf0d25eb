//! Shared helpers for the masse integration tests: logging, node set-up on
//! loopback, payload checksums, and waiting for events and conditions
//! ([`next_event`], [`eventually`]) rather than for time.

pub mod browser;
pub mod mariadb;
pub mod postgres;
pub mod redis;
pub mod server;
pub mod wait;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use masse::{
    InstanceId, MemoryRegistry, NamePolicy, Namespace, Node, NodeBuilder, PeerName, PeerRecord,
    Registry, RegistryEvent, TcpInterface, async_trait,
};

pub use masse::testkit::fixtures::{fnv1a, init_tracing, next_event, payload};
pub use wait::{eventually, node_event};

/// A namespace; panics if `s` is not a valid one.
pub fn ns(s: &str) -> Namespace {
    s.parse().expect("namespace")
}

/// A record of `name` in `ns`, a fresh instance, with one TCP endpoint
/// (`127.0.0.1:4100`, which nothing dials).
pub fn record(ns: &Namespace, name: &str) -> PeerRecord {
    PeerRecord::new(
        ns.clone(),
        name.parse().expect("name"),
        InstanceId::random(),
    )
    .with_endpoint("tcp://127.0.0.1:4100".parse().expect("endpoint"))
}

/// The names of `records`, in their order.
pub fn names(records: &[PeerRecord]) -> Vec<&str> {
    records.iter().map(|r| r.name.as_str()).collect()
}

/// A Redis registry handle for `url`; panics, naming the URL, if it cannot
/// connect (a test fixture).
pub async fn connect_redis(url: &str) -> masse_redis::RedisRegistry {
    masse_redis::RedisRegistry::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A SQL registry handle for `url` with `config`; panics, naming the URL,
/// if it cannot connect (a test fixture).
pub async fn connect_sql(url: &str, config: masse_sql::SqlConfig) -> masse_sql::SqlRegistry {
    masse_sql::SqlRegistry::connect_with(url, config)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A builder for a node on loopback TCP, in `namespace`, on `registry`.
pub fn node(name: &str, namespace: &str, registry: &MemoryRegistry) -> NodeBuilder {
    init_tracing();
    Node::builder(name)
        .namespace(namespace)
        .registry(registry.clone())
        .interface(TcpInterface::new("127.0.0.1:0"))
        .ttl(Duration::from_secs(2))
}

/// Echoes every stream `node` accepts, until the node shuts down.
pub async fn echo_forever(node: &Node) {
    let mut incoming = node.incoming();
    tokio::spawn(async move {
        while let Some(mut s) = incoming.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
}

/// A [`MemoryRegistry`] with faults to switch on, for nodes under test:
///
/// - [`deaf`](Self::deaf): its watch never says anything, so a node on it
///   keeps the records it looked up, like one whose watch lags behind;
/// - [`set_down`](Self::set_down): every call fails as unreachable and the
///   events of an open watch are lost, as over a broken connection;
/// - [`watches`](Self::watches): how many watches were opened through it.
#[derive(Debug, Clone, Default)]
pub struct FaultyRegistry {
    inner: MemoryRegistry,
    deaf: bool,
    down: Arc<AtomicBool>,
    watches: Arc<AtomicUsize>,
}

impl FaultyRegistry {
    /// `inner`, with no fault on yet.
    pub fn new(inner: MemoryRegistry) -> Self {
        FaultyRegistry {
            inner,
            ..Self::default()
        }
    }

    /// `inner`, seen through a watch that never says anything.
    pub fn deaf(inner: MemoryRegistry) -> Self {
        FaultyRegistry {
            deaf: true,
            ..Self::new(inner)
        }
    }

    /// Makes the registry unreachable (`true`) or reachable again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Watches opened through this registry (and its clones) so far.
    pub fn watches(&self) -> usize {
        self.watches.load(Ordering::SeqCst)
    }

    fn check(&self) -> masse::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(masse::Error::unavailable(
                "memory",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for FaultyRegistry {
    async fn publish(
        &self,
        record: &PeerRecord,
        ttl: Duration,
        policy: NamePolicy,
    ) -> masse::Result<()> {
        self.check()?;
        self.inner.publish(record, ttl, policy).await
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> masse::Result<()> {
        self.check()?;
        self.inner.refresh(ns, name, instance, ttl).await
    }

    async fn unpublish(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
    ) -> masse::Result<()> {
        self.check()?;
        self.inner.unpublish(ns, name, instance).await
    }

    async fn lookup(
        &self,
        ns: &Namespace,
        pattern: &masse::Pattern,
    ) -> masse::Result<Vec<PeerRecord>> {
        self.check()?;
        self.inner.lookup(ns, pattern).await
    }

    async fn lookup_leases(
        &self,
        ns: &Namespace,
        pattern: &masse::Pattern,
    ) -> masse::Result<Vec<masse::Lease>> {
        self.check()?;
        self.inner.lookup_leases(ns, pattern).await
    }

    async fn watch(
        &self,
        ns: &Namespace,
    ) -> masse::Result<BoxStream<'static, masse::Result<RegistryEvent>>> {
        self.check()?;
        self.watches.fetch_add(1, Ordering::SeqCst);
        if self.deaf {
            return Ok(futures::stream::pending().boxed());
        }
        let down = self.down.clone();
        let events = self.inner.watch(ns).await?;
        Ok(events
            .filter(move |_| futures::future::ready(!down.load(Ordering::SeqCst)))
            .boxed())
    }
}
