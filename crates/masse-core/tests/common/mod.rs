//! What masse-core's registry tests share: the error of a backend that is
//! down, and waiting for a condition with a deadline.

#![allow(dead_code)]

use std::time::Duration;

use masse_core::Error;
use tokio::time::Instant;

/// The error of a test backend called `backend` that is down.
pub(crate) fn down(backend: &'static str) -> Error {
    Error::unavailable(
        backend,
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "backend is down"),
    )
}

/// Waits until `cond` holds, checking it every 10 ms (of Tokio time: on a
/// paused clock the checks cost no real time); panics naming `what` if it
/// still does not hold `within` from now.
pub(crate) async fn wait_until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        // The interval between checks of a bounded wait, not a wait.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
