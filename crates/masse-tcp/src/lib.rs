#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod advertise;
mod interface;
mod listener;
#[cfg(feature = "tls")]
mod tls;

pub use advertise::{advertised_addrs, advertised_endpoints, host_ips, parse_socket_addr};
pub use interface::TcpInterface;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::TlsInterface;
