//! Address helpers now live in `masse_core::addr`; re-exported here for
//! compatibility.

pub use masse_core::addr::{advertised_addrs, advertised_endpoints, host_ips, parse_socket_addr};
