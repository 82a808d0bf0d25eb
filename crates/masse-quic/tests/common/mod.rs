//! What masse-quic's tests share: waiting for the dialer's stream counts.

#![allow(dead_code)]

use std::time::Duration;

use masse_quic::QuicInterface;

/// Waits until `cond` holds for the streams `quic` counts per pooled
/// connection; panics naming `what` and the counts after `within`.
pub(crate) async fn until_streams(
    quic: &QuicInterface,
    what: &str,
    within: Duration,
    cond: impl Fn(&[Vec<usize>]) -> bool,
) {
    let settled = tokio::time::timeout(within, async {
        while !cond(&quic.pooled_streams()) {
            // The interval of a bounded poll: the counts change on the
            // peer's acknowledgements, which the interface signals to no one.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if settled.is_err() {
        panic!(
            "{what}: not within {within:?}; streams per connection: {:?}",
            quic.pooled_streams()
        );
    }
}

/// Waits until `quic` counts no open stream.
pub(crate) async fn drained(quic: &QuicInterface, within: Duration) {
    until_streams(quic, "every stream closed", within, |c| {
        c.iter().flatten().all(|n| *n == 0)
    })
    .await;
}
