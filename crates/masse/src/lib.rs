#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Everything public in masse-core: names, patterns, endpoints, records,
// errors, the Registry / Interface / Wrapper traits, the Node runtime, the
// registries and wrappers it ships, and its public modules.
#[doc(inline)]
pub use masse_core::*;

/// Conformance suites that a registry or interface crate runs in its tests.
///
/// Re-exported from `masse_core::testkit`; see there for the suites.
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
#[doc(inline)]
pub use masse_core::testkit;

// The glob above would also pick up `masse_core::testkit` whenever any crate in
// the build enables `masse-core/testkit` (feature unification). This private
// item shadows it on purpose, so `masse::testkit` exists only with this
// crate's own `testkit` feature.
#[cfg(not(feature = "testkit"))]
#[allow(hidden_glob_reexports)]
mod testkit {}

/// The TCP interface: plain TCP streams between nodes (`tcp://` endpoints).
///
/// Re-exports the [`masse-tcp`](https://docs.rs/masse-tcp) crate.
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub mod tcp {
    #[doc(inline)]
    pub use masse_tcp::*;
}

#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
#[doc(inline)]
pub use masse_tcp::TcpInterface;

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[doc(inline)]
pub use masse_tcp::TlsInterface;

#[cfg(feature = "quic")]
#[cfg_attr(docsrs, doc(cfg(feature = "quic")))]
#[doc(inline)]
pub use masse_quic::QuicInterface;

#[cfg(all(unix, feature = "unix"))]
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "unix"))))]
#[doc(inline)]
pub use masse_unix::UnixInterface;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use masse_redis::{RedisConfig, RedisRegistry};

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql")))
)]
#[doc(inline)]
pub use masse_sql::{SqlConfig, SqlRegistry};

mod defaults;
mod registry;
#[doc(inline)]
pub use defaults::NodeBuilderExt;
#[doc(inline)]
pub use registry::{
    REGISTRY_ENV, default_registry_path, register_scheme, registered_schemes, registry_from_env,
    registry_from_url,
};

/// The traits to import for the facade's conveniences: `use masse::prelude::*;`.
pub mod prelude {
    #[doc(no_inline)]
    pub use crate::NodeBuilderExt;
    #[doc(no_inline)]
    pub use crate::{Interface, Registry, Wrapper};
}
