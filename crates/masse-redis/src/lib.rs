#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod backend;
mod config;
mod conn;
mod error;
mod keys;
mod scripts;
mod warned;
mod watch;

pub use backend::RedisRegistry;
pub use config::RedisConfig;
