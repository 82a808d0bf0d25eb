//! The accepting side: a bound TCP socket as a [`Listener`].

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use masse_core::{Accepted, Endpoint, Error, Listener, Protocol, Result, async_trait};

use crate::advertise::{advertised_addrs, host_ips};
use crate::interface::io_context;

/// First pause after an accept error that a pending connection did not cause.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between retries of a failing accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A bound TCP listener.
#[derive(Debug)]
pub(crate) struct TcpListener {
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    advertise: Vec<SocketAddr>,
    include_loopback: bool,
    nodelay: bool,
    backoff: Option<Duration>,
    failed: bool,
}

impl TcpListener {
    pub(crate) fn new(
        listener: tokio::net::TcpListener,
        local: SocketAddr,
        advertise: Vec<SocketAddr>,
        include_loopback: bool,
        nodelay: bool,
    ) -> Self {
        TcpListener {
            listener,
            local,
            advertise,
            include_loopback,
            nodelay,
            backoff: None,
            failed: false,
        }
    }
}

/// What an accept error means for the listener.
#[derive(Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// One pending connection failed before it was accepted: try the next.
    Connection,
    /// The listener is broken (not listening any more): give up.
    Fatal,
    /// Out of file descriptors, buffers or memory, or something unexpected:
    /// retry after a pause, since the condition usually passes.
    Transient,
}

fn classify(e: &std::io::Error) -> AcceptFailure {
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

#[async_trait]
impl Listener for TcpListener {
    fn endpoints(&self) -> Vec<Endpoint> {
        let host = if self.advertise.is_empty() && self.local.ip().is_unspecified() {
            host_ips()
        } else {
            Vec::new()
        };
        advertised_addrs(self.local, &self.advertise, &host, self.include_loopback)
            .into_iter()
            .map(|addr| Endpoint::new(Protocol::Tcp, addr))
            .collect()
    }

    async fn accept(&mut self) -> Result<Accepted> {
        if self.failed {
            return Err(Error::Closed("tcp listener"));
        }
        loop {
            match self.listener.accept().await {
                Ok((stream, remote)) => {
                    self.backoff = None;
                    if self.nodelay
                        && let Err(e) = stream.set_nodelay(true)
                    {
                        tracing::debug!(error = %e, %remote, "cannot set TCP_NODELAY on an accepted socket");
                    }
                    tracing::trace!(local = %self.local, %remote, "tcp accepted");
                    return Ok(Accepted::new(Box::new(stream), Some(remote)));
                }
                Err(e) => match classify(&e) {
                    AcceptFailure::Connection => {
                        tracing::debug!(local = %self.local, error = %e, "a connection failed before it was accepted");
                    }
                    AcceptFailure::Transient => {
                        let delay = self
                            .backoff
                            .map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                        self.backoff = Some(delay);
                        tracing::warn!(
                            local = %self.local,
                            error = %e,
                            retry_in = ?delay,
                            "tcp accept failed; retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    AcceptFailure::Fatal => {
                        tracing::error!(local = %self.local, error = %e, "tcp listener failed; it accepts no more");
                        self.failed = true;
                        return Err(io_context(e, format!("accept on tcp {}", self.local)));
                    }
                },
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
        let of = |k: ErrorKind| classify(&std::io::Error::from(k));
        assert_eq!(of(ErrorKind::ConnectionAborted), Connection);
        assert_eq!(of(ErrorKind::ConnectionReset), Connection);
        assert_eq!(of(ErrorKind::Interrupted), Connection);
        assert_eq!(of(ErrorKind::InvalidInput), Fatal);
        assert_eq!(of(ErrorKind::OutOfMemory), Transient);
        assert_eq!(of(ErrorKind::PermissionDenied), Transient);
        assert_eq!(of(ErrorKind::Other), Transient);
        #[cfg(target_os = "linux")]
        {
            // EMFILE and ENFILE: out of file descriptors.
            assert_eq!(classify(&std::io::Error::from_raw_os_error(24)), Transient);
            assert_eq!(classify(&std::io::Error::from_raw_os_error(23)), Transient);
            // ENOBUFS.
            assert_eq!(classify(&std::io::Error::from_raw_os_error(105)), Transient);
            // ECONNABORTED.
            assert_eq!(
                classify(&std::io::Error::from_raw_os_error(103)),
                Connection
            );
        }
    }
}
