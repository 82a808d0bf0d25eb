//! The masse interface conformance suite, on IPv4 and IPv6 loopback.

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
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        tracing::warn!(
            error = %e,
            "SKIPPED conformance_ipv6_loopback: this host cannot bind [::1]:0 (no IPv6 loopback)"
        );
        return;
    }
    masse_core::testkit::interface_conformance(|| async {
        Arc::new(TcpInterface::new("[::1]:0")) as DynInterface
    })
    .await;
}
