//! The masse interface conformance suite, on IPv4 and IPv6 loopback.

mod common;

use std::sync::Arc;

use masse_core::DynInterface;
use masse_core::testkit::InterfaceConformance;
use masse_tcp::TcpInterface;

use masse_core::testkit::fixtures::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_ipv4_loopback() {
    init_tracing();
    InterfaceConformance::new(|| async {
        Arc::new(TcpInterface::new("127.0.0.1:0")) as DynInterface
    })
    .streams(1000)
    .payload_max(64 * 1024)
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_ipv6_loopback() {
    init_tracing();
    if common::without_ipv6_loopback("conformance_ipv6_loopback") {
        return;
    }
    masse_core::testkit::interface_conformance(|| async {
        Arc::new(TcpInterface::new("[::1]:0")) as DynInterface
    })
    .await;
}
