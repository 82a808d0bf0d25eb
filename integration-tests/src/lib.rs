//! Shared helpers for the masse integration tests: logging, node set-up on
//! loopback, payload checksums.

pub mod mariadb;
pub mod postgres;
pub mod redis;
pub mod server;

use std::sync::Once;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use masse::{
    InstanceId, MemoryRegistry, NamePolicy, Namespace, Node, NodeBuilder, PeerName, PeerRecord,
    Registry, RegistryEvent, TcpInterface, async_trait,
};

/// Installs a `tracing` subscriber once (filter with `RUST_LOG`).
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
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

/// FNV-1a over `data`: cheap, and enough to catch lost or reordered bytes.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic pseudo-random bytes (xorshift) of length `len` from `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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

/// A registry whose watch never says anything: a dialer on it keeps the
/// records it looked up, like one whose watch lags behind.
#[derive(Debug, Clone)]
pub struct DeafWatch(pub MemoryRegistry);

#[async_trait]
impl Registry for DeafWatch {
    async fn publish(
        &self,
        record: &PeerRecord,
        ttl: Duration,
        policy: NamePolicy,
    ) -> masse::Result<()> {
        self.0.publish(record, ttl, policy).await
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> masse::Result<()> {
        self.0.refresh(ns, name, instance, ttl).await
    }

    async fn unpublish(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
    ) -> masse::Result<()> {
        self.0.unpublish(ns, name, instance).await
    }

    async fn lookup(
        &self,
        ns: &Namespace,
        pattern: &masse::Pattern,
    ) -> masse::Result<Vec<PeerRecord>> {
        self.0.lookup(ns, pattern).await
    }

    async fn watch(
        &self,
        _ns: &Namespace,
    ) -> masse::Result<BoxStream<'static, masse::Result<RegistryEvent>>> {
        Ok(futures::stream::pending().boxed())
    }
}
