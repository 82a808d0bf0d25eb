//! The masse interface conformance suite over QUIC, on IPv4 and IPv6
//! loopback, with one identity on both sides.

use std::sync::Arc;

use masse_core::DynInterface;
use masse_core::testkit::InterfaceConformance;
use masse_core::testkit::fixtures::{identity, init_tracing};
use masse_quic::QuicInterface;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_ipv4_loopback() {
    init_tracing();
    InterfaceConformance::new(|| async {
        Arc::new(QuicInterface::new("127.0.0.1:0")) as DynInterface
    })
    .identity(identity("conformance"))
    .streams(1000)
    .payload_max(64 * 1024)
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_ipv6_loopback() {
    init_tracing();
    if let Err(e) = std::net::UdpSocket::bind("[::1]:0") {
        tracing::warn!(
            error = %e,
            "SKIPPED conformance_ipv6_loopback: this host cannot bind [::1]:0 (no IPv6 loopback)"
        );
        return;
    }
    InterfaceConformance::new(|| async { Arc::new(QuicInterface::new("[::1]:0")) as DynInterface })
        .identity(identity("conformance"))
        .streams(200)
        .run()
        .await;
}
