#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(unix)]
mod interface;
#[cfg(unix)]
mod listener;
#[cfg(unix)]
mod path;

#[cfg(unix)]
pub use interface::UnixInterface;
