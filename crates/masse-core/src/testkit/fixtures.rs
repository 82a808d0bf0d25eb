//! Small fixtures shared by the workspace's tests: logging, payloads and
//! their checksum, and for interface tests that authenticate an identity,
//! the contexts an acceptor and a dialer pass, and the record a dialer
//! dials (all in namespace `test`, acceptor `acceptor`, dialer `dialer`).

use std::sync::{Arc, Once};

use crate::{BindContext, ConnectContext, Endpoint, Fingerprint, Identity, InstanceId, PeerRecord};

/// A fresh identity; panics if generation fails (a test fixture).
pub fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::generate(name).expect("generate identity"))
}

/// The context of an acceptor called `acceptor` proving itself with `id`.
pub fn bind_ctx(id: &Arc<Identity>) -> BindContext {
    plain_bind_ctx().with_identity(id.clone())
}

/// The context of a dialer called `dialer` proving itself with `id`.
pub fn connect_ctx(id: &Arc<Identity>) -> ConnectContext {
    plain_connect_ctx().with_identity(id.clone())
}

/// The context of an acceptor called `acceptor` without an identity (for
/// interfaces that do not authenticate, such as TCP and Unix sockets).
pub fn plain_bind_ctx() -> BindContext {
    BindContext::new(
        test_ns(),
        "acceptor".parse().expect("valid name"),
        InstanceId::random(),
    )
}

/// The context of a dialer called `dialer` without an identity.
pub fn plain_connect_ctx() -> ConnectContext {
    ConnectContext::new(
        test_ns(),
        "dialer".parse().expect("valid name"),
        InstanceId::random(),
    )
}

/// The record of `acceptor` at `ep`, listing `fingerprint` if given.
pub fn record(ep: &Endpoint, fingerprint: Option<Fingerprint>) -> PeerRecord {
    let r = PeerRecord::new(
        test_ns(),
        "acceptor".parse().expect("valid name"),
        InstanceId::random(),
    )
    .with_endpoint(ep.clone());
    match fingerprint {
        Some(f) => r.with_identity(f),
        None => r,
    }
}

fn test_ns() -> crate::Namespace {
    "test".parse().expect("valid namespace")
}

/// Installs a `tracing` subscriber that writes through the test harness,
/// once per process (filter with `RUST_LOG`, default `warn`).
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

/// FNV-1a (64 bit) over `data`: cheap, and enough to catch lost or
/// reordered bytes.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
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

/// The next item of a watch or event stream within `within`.
///
/// Panics, naming what happened instead, if the item is an error, the
/// stream ends or nothing arrives in time (a test fixture).
pub async fn next_event<T, E, S>(events: &mut S, within: std::time::Duration) -> T
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    match tokio::time::timeout(within, events.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("nothing arrived within {within:?}"),
    }
}

/// The next stream `listener` accepts, its transport handshake
/// [finished](crate::Accepted::finish), within `within`; panics if it fails
/// or hangs (a test fixture).
pub async fn accept_within(
    listener: &mut Box<dyn crate::Listener>,
    within: std::time::Duration,
) -> crate::Accepted {
    let accept = async { Ok::<_, crate::Error>(listener.accept().await?.finish().await) };
    match tokio::time::timeout(within, accept).await {
        Ok(Ok(Some(accepted))) => accepted,
        Ok(Ok(None)) => panic!("the accepted connection's transport handshake failed"),
        Ok(Err(e)) => panic!("accept failed: {e}"),
        Err(_) => panic!("accept hung for {within:?}"),
    }
}
