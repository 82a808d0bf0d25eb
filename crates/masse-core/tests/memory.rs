//! MemoryRegistry and CachingRegistry<MemoryRegistry> against the conformance suite.

use std::sync::Arc;

use masse_core::testkit::registry_conformance;
use masse_core::{CachingRegistry, DynRegistry, MemoryRegistry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_registry_conforms() {
    let shared = MemoryRegistry::new();
    registry_conformance(move || {
        let handle = shared.clone();
        async move { Arc::new(handle) as DynRegistry }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_memory_registry_conforms() {
    let shared = MemoryRegistry::new();
    registry_conformance(move || {
        // A cache per handle, as every node has its own.
        let handle = CachingRegistry::new(shared.clone());
        async move { Arc::new(handle) as DynRegistry }
    })
    .await;
}
