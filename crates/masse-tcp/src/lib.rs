#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod advertise;
mod interface;
mod listener;

pub use advertise::advertised_addrs;
pub use interface::TcpInterface;
