//! Small fixtures for interface tests that authenticate: an identity, the
//! contexts an acceptor and a dialer pass, and the record a dialer dials.
//! All in namespace `test`, acceptor `acceptor`, dialer `dialer`.

use std::sync::Arc;

use crate::{BindContext, ConnectContext, Endpoint, Fingerprint, Identity, InstanceId, PeerRecord};

/// A fresh identity; panics if generation fails (a test fixture).
pub fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::generate(name).expect("generate identity"))
}

/// The context of an acceptor called `acceptor` proving itself with `id`.
pub fn bind_ctx(id: &Arc<Identity>) -> BindContext {
    BindContext::new(
        test_ns(),
        "acceptor".parse().expect("valid name"),
        InstanceId::random(),
    )
    .with_identity(id.clone())
}

/// The context of a dialer called `dialer` proving itself with `id`.
pub fn connect_ctx(id: &Arc<Identity>) -> ConnectContext {
    ConnectContext::new(
        test_ns(),
        "dialer".parse().expect("valid name"),
        InstanceId::random(),
    )
    .with_identity(id.clone())
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
