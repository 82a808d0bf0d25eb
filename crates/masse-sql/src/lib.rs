#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// With no database feature every URL is refused and the machinery is unused.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

mod address;
mod codec;
mod config;
mod dialect;
mod error;
mod lane;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod registry;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
mod watch;

pub use config::SqlConfig;
pub use registry::SqlRegistry;
