//! Defaults that need the backends: [`NodeBuilderExt`].

use masse_core::NodeBuilder;

use crate::registry::{registry_from_env, registry_from_url};

/// Conveniences on [`NodeBuilder`] that `masse-core` cannot offer because
/// they need backend crates.
///
/// ```
/// use masse::prelude::*;
/// let builder = masse::Node::builder("worker-1").with_defaults();
/// # #[cfg(feature = "tcp")]
/// assert!(builder.has_interface());
/// assert!(builder.has_registry());
/// ```
pub trait NodeBuilderExt: Sized {
    /// Fills in what was not configured: the registry from
    /// [`registry_from_env`] and TCP on all addresses with an OS-chosen port
    /// (`0.0.0.0:0`, feature `tcp`).
    fn with_defaults(self) -> Self;

    /// Uses the registry named by `MASSE_REGISTRY` (see [`registry_from_env`]),
    /// connected when the node starts.
    fn registry_from_env(self) -> Self;

    /// Uses the registry `url` names (see [`registry_from_url`]), connected
    /// when the node starts; a bad URL is the error of `start`.
    fn registry_from_url(self, url: impl Into<String>) -> Self;
}

impl NodeBuilderExt for NodeBuilder {
    fn with_defaults(mut self) -> Self {
        if !self.has_registry() {
            self = self.registry_from_env();
        }
        #[cfg(feature = "tcp")]
        if !self.has_interface() {
            self = self.interface(masse_tcp::TcpInterface::new("0.0.0.0:0"));
        }
        self
    }

    fn registry_from_env(self) -> Self {
        self.registry_connect(registry_from_env())
    }

    fn registry_from_url(self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.registry_connect(async move { registry_from_url(&url).await })
    }
}
