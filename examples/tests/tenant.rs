//! `TenantRegistry` passes masse's registry conformance suite: one test is
//! all a third-party registry needs.

use std::sync::Arc;

use masse::testkit::registry_conformance;
use masse::{DynRegistry, MemoryRegistry};
use masse_examples::tenant::TenantRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_registry_conforms() {
    let shared = MemoryRegistry::new();
    registry_conformance(move || {
        let handle = TenantRegistry::new("acme", shared.clone()).expect("valid tenant");
        async move { Arc::new(handle) as DynRegistry }
    })
    .await;
}

#[tokio::test]
async fn tenants_are_isolated() {
    use masse::{InstanceId, NamePolicy, PeerRecord, Registry};
    let shared = MemoryRegistry::new();
    let acme = TenantRegistry::new("acme", shared.clone()).unwrap();
    let globex = TenantRegistry::new("globex", shared.clone()).unwrap();
    let ns = "prod".parse().unwrap();
    let r = PeerRecord::new(
        "prod".parse().unwrap(),
        "api".parse().unwrap(),
        InstanceId::random(),
    );
    acme.publish(&r, std::time::Duration::from_secs(5), NamePolicy::Exclusive)
        .await
        .unwrap();
    assert_eq!(
        acme.lookup(&ns, &"*".parse().unwrap()).await.unwrap(),
        vec![r.clone()]
    );
    assert!(
        globex
            .lookup(&ns, &"*".parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    match TenantRegistry::new("a.b", shared.clone()) {
        Err(masse::Error::Config(why)) => assert!(why.contains("without '.'"), "{why}"),
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("a tenant with a '.' was accepted"),
    }
}
