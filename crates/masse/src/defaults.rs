//! Defaults that need the backends: [`NodeBuilderExt`].

use masse_core::NodeBuilder;

/// Conveniences on [`NodeBuilder`] that `masse-core` cannot offer because
/// they need backend crates.
///
/// ```
/// use masse::prelude::*;
/// let builder = masse::Node::builder("worker-1").with_defaults();
/// # #[cfg(feature = "tcp")]
/// assert!(builder.has_interface());
/// ```
pub trait NodeBuilderExt: Sized {
    /// Fills in what was not configured: TCP on all addresses and an
    /// OS-chosen port (`0.0.0.0:0`, feature `tcp`) if no interface was added.
    fn with_defaults(self) -> Self;
}

impl NodeBuilderExt for NodeBuilder {
    fn with_defaults(self) -> Self {
        #[cfg(feature = "tcp")]
        if !self.has_interface() {
            return self.interface(masse_tcp::TcpInterface::new("0.0.0.0:0"));
        }
        self
    }
}
