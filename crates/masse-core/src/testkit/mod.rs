//! Conformance suites for registries and interfaces.
//!
//! Every backend in the masse workspace runs these in its own tests, and a
//! third-party backend crate runs them by adding one test:
//!
//! ```no_run
//! # async fn doc() {
//! use std::sync::Arc;
//! use masse_core::{DynRegistry, MemoryRegistry};
//! let shared = MemoryRegistry::new();
//! masse_core::testkit::registry_conformance(move || {
//!     let handle = shared.clone();
//!     async move { Arc::new(handle) as DynRegistry }
//! })
//! .await;
//! # }
//! ```
//!
//! A registry that cannot watch (its `watch` returns
//! [`Error::Unsupported`](crate::Error::Unsupported)) declares it with
//! [`RegistryConformance::without_watch`]: the suite then checks everything
//! but the events, and that a polling [`CachingRegistry`](crate::CachingRegistry)
//! over it reports changes.

pub mod fixtures;
mod interface;
pub mod registry;

pub use interface::*;
pub use registry::{RegistryConformance, registry_conformance};
