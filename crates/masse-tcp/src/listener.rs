//! The accepting side: a bound TCP socket as a [`Listener`].

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use masse_core::{Accepted, Endpoint, Error, Listener, Protocol, Result, async_trait};

use crate::interface::io_context;
use masse_core::addr::advertised_endpoints;

/// First pause after an accept error that a pending connection did not cause.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between retries of a failing accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a bound listener advertises: the rule of [`advertised_addrs`](masse_core::addr::advertised_addrs)
/// applied to its bound address, as endpoints of its protocol.
#[derive(Debug, Clone)]
pub(crate) struct Advertised {
    pub(crate) protocol: Protocol,
    pub(crate) local: SocketAddr,
    pub(crate) advertise: Vec<SocketAddr>,
    pub(crate) include_loopback: bool,
}

impl Advertised {
    /// The endpoints to advertise now (reads the host's addresses for a
    /// wildcard bind).
    pub(crate) fn endpoints(&self) -> Vec<Endpoint> {
        advertised_endpoints(
            self.protocol.clone(),
            self.local,
            &self.advertise,
            self.include_loopback,
        )
    }
}

/// A bound TCP listener.
#[derive(Debug)]
pub(crate) struct TcpListener {
    listener: tokio::net::TcpListener,
    advertised: Advertised,
    nodelay: bool,
    backoff: Option<Duration>,
    failed: bool,
}

impl TcpListener {
    pub(crate) fn new(
        listener: tokio::net::TcpListener,
        advertised: Advertised,
        nodelay: bool,
    ) -> Self {
        TcpListener {
            listener,
            advertised,
            nodelay,
            backoff: None,
            failed: false,
        }
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.advertised.local
    }

    /// What this listener advertises.
    #[cfg(feature = "tls")]
    pub(crate) fn advertised(&self) -> &Advertised {
        &self.advertised
    }

    /// Waits for the next TCP connection, with `TCP_NODELAY` set as
    /// configured. Connection-level failures are skipped, resource shortages
    /// retried after a backoff; an error means the listener is broken for good.
    pub(crate) async fn accept_tcp(&mut self) -> Result<(tokio::net::TcpStream, SocketAddr)> {
        let local = self.advertised.local;
        let protocol = self.advertised.protocol.clone();
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
                    tracing::trace!(%local, %remote, "tcp accepted");
                    return Ok((stream, remote));
                }
                Err(e) => match classify(&e) {
                    AcceptFailure::Connection => {
                        tracing::debug!(%local, error = %e, "a connection failed before it was accepted");
                    }
                    AcceptFailure::Transient => {
                        let delay = self
                            .backoff
                            .map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                        self.backoff = Some(delay);
                        tracing::warn!(
                            %local,
                            error = %e,
                            retry_in = ?delay,
                            "{protocol} accept failed; retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    AcceptFailure::Fatal => {
                        tracing::error!(%local, error = %e, "{protocol} listener failed; it accepts no more");
                        self.failed = true;
                        return Err(io_context(e, format!("accept on {protocol} {local}")));
                    }
                },
            }
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
        self.advertised.endpoints()
    }

    async fn accept(&mut self) -> Result<Accepted> {
        let (stream, remote) = self.accept_tcp().await?;
        Ok(Accepted::new(Box::new(stream), Some(remote)))
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
