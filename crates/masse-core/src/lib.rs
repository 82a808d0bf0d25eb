#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
mod budget;
mod endpoint;
mod error;
mod fanout;
mod identity;
mod interface;
mod io;
mod liveness;
mod name;
mod pattern;
mod reconcile;
mod record;
mod redact;
mod registry;
mod warn_once;
mod wrapper;

pub mod addr;
pub mod caching;
pub mod handshake;
pub mod memory;
pub mod metrics;
mod node;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;
pub mod wrappers;

pub use accept::{AcceptBackoff, AcceptFailure};
pub use budget::{HandshakeBudget, Ticket};
pub use caching::{
    CacheStats, CachedLookup, CachingConfig, CachingRegistry, Freshness, Subscription,
};
pub use endpoint::{Endpoint, Protocol};
pub use error::{BoxError, ConnectStep, Error, Operation, RefuseCode, Result, is_stale_io};
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use identity::tls;
pub use identity::{Identity, fingerprint_of_cert};
pub use interface::{
    Accepted, BindContext, ConnectContext, DynInterface, Interface, Listener, PeerCredentials,
    dial_within,
};
pub use io::{BoxIo, Io};
pub use liveness::{Lease, Liveness, LivenessChange, LivenessTracker};
pub use memory::MemoryRegistry;
pub use name::{Namespace, PeerName, validate_service};
pub use node::{
    Events, Incoming, Node, NodeBuilder, NodeEvent, NodeStats, PeerStream, Reach, STATS_SERVICE,
};
pub use pattern::Pattern;
pub use record::{Fingerprint, InstanceId, PeerRecord, now_millis};
pub use redact::redact;
pub use registry::{DynRegistry, NamePolicy, Registry, RegistryEvent, WatchSender};
pub use warn_once::WarnOnce;
pub use wrapper::{Direction, DynWrapper, StreamContext, Wrapper};
pub use wrappers::{Latency, MeterSnapshot, Metered};

// Re-exported so implementors of the traits use the same versions.
pub use async_trait::async_trait;
pub use futures::stream::BoxStream;
