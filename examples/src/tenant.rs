//! `TenantRegistry`: a registry written against masse's public traits only, as
//! a third-party crate would. It gives several tenants one shared backend:
//! namespace `prod` of tenant `acme` is stored as namespace `acme.prod`, so
//! tenants never see each other's peers, and each tenant's nodes use plain
//! namespace names.
//!
//! `tests/tenant.rs` runs masse's registry conformance suite against it.

use std::time::Duration;

use futures::StreamExt;
use masse::{
    BoxStream, DynRegistry, Error, InstanceId, Lease, NamePolicy, Namespace, Pattern, PeerName,
    PeerRecord, Registry, RegistryEvent, Result, async_trait,
};

/// A view of `inner` for one tenant.
#[derive(Clone, Debug)]
pub struct TenantRegistry<R> {
    tenant: String,
    inner: R,
}

impl<R: Registry> TenantRegistry<R> {
    /// The view of `inner` for `tenant` (1–31 name characters, no `.`).
    pub fn new(tenant: &str, inner: R) -> Result<Self> {
        if tenant.is_empty() || tenant.len() > 31 || tenant.contains('.') {
            return Err(Error::Config(format!(
                "tenant {tenant:?} must be 1-31 characters without '.'"
            )));
        }
        // Validates the characters the same way masse validates namespaces.
        Namespace::new(tenant)?;
        Ok(TenantRegistry {
            tenant: tenant.to_owned(),
            inner,
        })
    }

    /// The backend namespace that stores `ns` of this tenant.
    fn outer(&self, ns: &Namespace) -> Result<Namespace> {
        Namespace::new(&format!("{}.{ns}", self.tenant))
    }

    fn to_outer(&self, record: &PeerRecord) -> Result<PeerRecord> {
        let mut r = record.clone();
        r.namespace = self.outer(&record.namespace)?;
        Ok(r)
    }

    fn to_inner(ns: &Namespace, mut record: PeerRecord) -> PeerRecord {
        record.namespace = ns.clone();
        record
    }
}

#[async_trait]
impl<R: Registry> Registry for TenantRegistry<R> {
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()> {
        self.inner
            .publish(&self.to_outer(record)?, ttl, policy)
            .await
    }

    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()> {
        self.inner
            .refresh(&self.outer(ns)?, name, instance, ttl)
            .await
    }

    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()> {
        self.inner.unpublish(&self.outer(ns)?, name, instance).await
    }

    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
        let found = self.inner.lookup(&self.outer(ns)?, pattern).await?;
        Ok(found.into_iter().map(|r| Self::to_inner(ns, r)).collect())
    }

    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        let found = self.inner.lookup_leases(&self.outer(ns)?, pattern).await?;
        Ok(found
            .into_iter()
            .map(|l| Lease::new(Self::to_inner(ns, l.record), l.expires_in))
            .collect())
    }

    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
        let ns = ns.clone();
        let events = self.inner.watch(&self.outer(&ns)?).await?;
        Ok(events
            .map(move |ev| {
                ev.map(|ev| match ev {
                    RegistryEvent::Joined(r) => RegistryEvent::Joined(Self::to_inner(&ns, r)),
                    RegistryEvent::Updated(r) => RegistryEvent::Updated(Self::to_inner(&ns, r)),
                    other => other,
                })
            })
            .boxed())
    }
}

/// Boxes a tenant view for `Node::builder(..).registry_dyn(..)`.
pub fn tenant(tenant: &str, inner: DynRegistry) -> Result<DynRegistry> {
    Ok(std::sync::Arc::new(TenantRegistry::new(tenant, inner)?))
}
