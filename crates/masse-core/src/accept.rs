//! Accept errors of listeners over operating-system sockets (TCP, TLS over
//! TCP, Unix): what a failed `accept(2)` means for the listener, and the
//! pause before trying again. Shared by every interface crate that accepts
//! from such a socket; a third-party interface can use it the same way.

use std::fmt;
use std::io::{self, ErrorKind};
use std::time::Duration;

use crate::error::{Error, Result};

/// What a failed `accept` on a listening socket means for the listener,
/// judged by the error's [`ErrorKind`] alone ([`of`](Self::of)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcceptFailure {
    /// One pending connection failed before it was accepted (aborted,
    /// reset, refused, timed out or unreachable while in the backlog), or
    /// the call was interrupted: nothing is wrong with the listener, accept
    /// the next connection at once.
    Connection,
    /// The listener is broken for good (`EINVAL`: the socket is not
    /// listening any more): stop accepting and report the error.
    Fatal,
    /// Out of file descriptors (`EMFILE`, `ENFILE`), buffers (`ENOBUFS`) or
    /// memory, missing permission, or anything unexpected: the condition
    /// usually passes, so retry after a pause ([`AcceptBackoff`]) rather
    /// than spin or give up.
    Transient,
}

impl AcceptFailure {
    /// Classifies an error returned by `accept` on a listening socket.
    ///
    /// ```
    /// use std::io::{Error, ErrorKind};
    /// use masse_core::AcceptFailure;
    ///
    /// assert_eq!(AcceptFailure::of(&Error::from(ErrorKind::ConnectionAborted)), AcceptFailure::Connection);
    /// assert_eq!(AcceptFailure::of(&Error::from(ErrorKind::InvalidInput)), AcceptFailure::Fatal);
    /// assert_eq!(AcceptFailure::of(&Error::from(ErrorKind::OutOfMemory)), AcceptFailure::Transient);
    /// ```
    pub fn of(e: &io::Error) -> AcceptFailure {
        match e.kind() {
            ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable => AcceptFailure::Connection,
            // EINVAL: the socket is not listening.
            ErrorKind::InvalidInput => AcceptFailure::Fatal,
            _ => AcceptFailure::Transient,
        }
    }
}

/// The accept-error policy of a listener over an operating-system socket:
/// [`handle`](Self::handle) skips a failed connection, pauses after a
/// [transient](AcceptFailure::Transient) failure (doubling the pause from
/// [`MIN`](Self::MIN) up to [`MAX`](Self::MAX) while failures repeat) and
/// turns a [fatal](AcceptFailure::Fatal) one into the error the listener
/// returns. Call [`reset`](Self::reset) after every successful accept.
///
/// ```no_run
/// # async fn run(listener: tokio::net::TcpListener) -> masse_core::Result<()> {
/// use masse_core::AcceptBackoff;
///
/// let mut backoff = AcceptBackoff::new();
/// loop {
///     match listener.accept().await {
///         Ok((stream, remote)) => {
///             backoff.reset();
///             // ... hand `stream` on
///         }
///         Err(e) => backoff.handle(e, &"tcp 0.0.0.0:4100").await?,
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    /// The first pause after a transient accept failure.
    pub const MIN: Duration = Duration::from_millis(10);
    /// The longest pause between retries of a failing accept.
    pub const MAX: Duration = Duration::from_secs(1);

    /// A policy with no failure yet.
    pub fn new() -> Self {
        AcceptBackoff::default()
    }

    /// Forgets past failures: the next transient failure pauses
    /// [`MIN`](Self::MIN) again. Call it when an accept succeeds.
    pub fn reset(&mut self) {
        self.delay = None;
    }

    /// The pause before the next retry: [`MIN`](Self::MIN) after a success
    /// or [`reset`](Self::reset), then twice the previous one, at most
    /// [`MAX`](Self::MAX).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay.map_or(Self::MIN, |d| (d * 2).min(Self::MAX));
        self.delay = Some(delay);
        delay
    }

    /// Deals with the error of one `accept` call on `listener` (shown in
    /// logs and in the error, e.g. `tcp 0.0.0.0:4100` or
    /// `unix:///run/a.sock`), as [`AcceptFailure::of`] classifies it:
    ///
    /// - [`Connection`](AcceptFailure::Connection): logged at debug level;
    ///   returns `Ok(())` at once: accept again.
    /// - [`Transient`](AcceptFailure::Transient): logged as a warning;
    ///   sleeps [`next_delay`](Self::next_delay), then returns `Ok(())`:
    ///   accept again. Cancel-safe (a dropped call only skips the pause).
    /// - [`Fatal`](AcceptFailure::Fatal): logged as an error; returns
    ///   [`Error::Io`] of `e`'s kind, in the context `accept on {listener}`
    ///   ([`Error::io_context`]): the listener accepts no more.
    pub async fn handle(
        &mut self,
        e: io::Error,
        listener: &(dyn fmt::Display + Sync),
    ) -> Result<()> {
        match AcceptFailure::of(&e) {
            AcceptFailure::Connection => {
                tracing::debug!(%listener, error = %e, "a connection failed before it was accepted");
                Ok(())
            }
            AcceptFailure::Transient => {
                let delay = self.next_delay();
                tracing::warn!(%listener, error = %e, retry_in = ?delay, "accept failed; retrying");
                tokio::time::sleep(delay).await;
                Ok(())
            }
            AcceptFailure::Fatal => {
                tracing::error!(%listener, error = %e, "listener failed; it accepts no more");
                Err(Error::io_context(e, format!("accept on {listener}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified() {
        use AcceptFailure::*;
        let of = |k: ErrorKind| AcceptFailure::of(&io::Error::from(k));
        assert_eq!(of(ErrorKind::ConnectionAborted), Connection);
        assert_eq!(of(ErrorKind::ConnectionReset), Connection);
        assert_eq!(of(ErrorKind::ConnectionRefused), Connection);
        assert_eq!(of(ErrorKind::Interrupted), Connection);
        assert_eq!(of(ErrorKind::WouldBlock), Connection);
        assert_eq!(of(ErrorKind::TimedOut), Connection);
        assert_eq!(of(ErrorKind::HostUnreachable), Connection);
        assert_eq!(of(ErrorKind::NetworkUnreachable), Connection);
        assert_eq!(of(ErrorKind::InvalidInput), Fatal);
        assert_eq!(of(ErrorKind::OutOfMemory), Transient);
        assert_eq!(of(ErrorKind::PermissionDenied), Transient);
        assert_eq!(of(ErrorKind::Other), Transient);
        #[cfg(target_os = "linux")]
        {
            let raw = |code| AcceptFailure::of(&io::Error::from_raw_os_error(code));
            // EMFILE and ENFILE: out of file descriptors.
            assert_eq!(raw(24), Transient);
            assert_eq!(raw(23), Transient);
            // ENOBUFS.
            assert_eq!(raw(105), Transient);
            // ECONNABORTED.
            assert_eq!(raw(103), Connection);
            // EINVAL.
            assert_eq!(raw(22), Fatal);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = AcceptBackoff::new();
        assert_eq!(b.next_delay(), AcceptBackoff::MIN);
        assert_eq!(b.next_delay(), AcceptBackoff::MIN * 2);
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), AcceptBackoff::MAX);
        b.reset();
        assert_eq!(b.next_delay(), AcceptBackoff::MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn handle_skips_pauses_or_fails() {
        let mut b = AcceptBackoff::new();
        let start = tokio::time::Instant::now();
        b.handle(
            io::Error::from(ErrorKind::ConnectionReset),
            &"tcp 127.0.0.1:1",
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.handle(io::Error::from_raw_os_error(24), &"tcp 127.0.0.1:1")
            .await
            .unwrap();
        assert_eq!(start.elapsed(), AcceptBackoff::MIN);
        match b
            .handle(io::Error::from(ErrorKind::InvalidInput), &"tcp 127.0.0.1:1")
            .await
        {
            Err(e @ Error::Io(_)) => {
                assert!(e.to_string().contains("accept on tcp 127.0.0.1:1"), "{e}");
                let Error::Io(io) = &e else { unreachable!() };
                assert_eq!(io.kind(), ErrorKind::InvalidInput);
            }
            other => panic!("{other:?}"),
        }
    }
}
