//! The accepting side: a bound TCP socket as a [`Listener`].

use std::net::SocketAddr;
use std::time::Duration;

use masse_core::addr::advertised_endpoints;
use masse_core::{
    AcceptBackoff, Accepted, Endpoint, Error, Listener, Protocol, Result, async_trait,
};

use crate::interface::set_nodelay;

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
    /// Set on each accepted socket where it is not inherited from the
    /// listener (not Linux).
    #[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
    silence: Option<Duration>,
    backoff: AcceptBackoff,
    failed: bool,
}

impl TcpListener {
    pub(crate) fn new(
        listener: tokio::net::TcpListener,
        advertised: Advertised,
        nodelay: bool,
        silence: Option<Duration>,
    ) -> Self {
        TcpListener {
            listener,
            advertised,
            nodelay,
            silence,
            backoff: AcceptBackoff::new(),
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
    /// retried after a backoff ([`AcceptBackoff`]); an error means the
    /// listener is broken for good.
    pub(crate) async fn accept_tcp(&mut self) -> Result<(tokio::net::TcpStream, SocketAddr)> {
        if self.failed {
            return Err(Error::Closed("tcp listener"));
        }
        loop {
            match self.listener.accept().await {
                Ok((stream, remote)) => {
                    self.backoff.reset();
                    set_nodelay(self.nodelay, &stream, "accepted");
                    #[cfg(not(any(target_os = "linux", target_os = "android")))]
                    if let Some(silence) = self.silence {
                        crate::interface::set_silence(silence, &stream, "accepted");
                    }
                    tracing::trace!(local = %self.advertised.local, %remote, "tcp accepted");
                    return Ok((stream, remote));
                }
                Err(e) => {
                    let listener =
                        format!("{} {}", self.advertised.protocol, self.advertised.local);
                    if let Err(fatal) = self.backoff.handle(e, &listener).await {
                        self.failed = true;
                        return Err(fatal);
                    }
                }
            }
        }
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
