#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod codec;
mod config;
mod conn;
mod error;
mod keys;
mod registry;
mod scripts;
mod warned;
mod watch;

pub use config::RedisConfig;
pub use registry::RedisRegistry;
