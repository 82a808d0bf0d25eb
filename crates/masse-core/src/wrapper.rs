//! The [`Wrapper`] trait: what a raw stream becomes.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::endpoint::Protocol;
use crate::error::Result;
use crate::interface::PeerCredentials;
use crate::io::BoxIo;
use crate::name::{Namespace, PeerName};
use crate::record::InstanceId;

/// Which side opened a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// They dialed.
    Inbound,
}

/// What a [`Wrapper`] knows about the stream it wraps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamContext {
    /// The namespace both ends live in.
    pub namespace: Namespace,
    /// Our name.
    pub local: PeerName,
    /// The other end's name.
    pub remote: PeerName,
    /// The other end's instance.
    pub remote_instance: InstanceId,
    /// Who opened the stream.
    pub direction: Direction,
    /// The transport it runs on.
    pub protocol: Protocol,
    /// The service requested by the dialer, if any.
    pub service: Option<String>,
    /// On an inbound stream over a transport that knows it (`unix`): the
    /// user and process at the other end, as the operating system vouches
    /// for them. A wrapper can refuse a stream on it (the dialer then gets
    /// a `WrapperFailed` refusal).
    pub peer_credentials: Option<PeerCredentials>,
}

impl StreamContext {
    /// Builds a context.
    pub fn new(
        namespace: Namespace,
        local: PeerName,
        remote: PeerName,
        remote_instance: InstanceId,
        direction: Direction,
        protocol: Protocol,
        service: Option<String>,
    ) -> Self {
        StreamContext {
            namespace,
            local,
            remote,
            remote_instance,
            direction,
            protocol,
            service,
            peer_credentials: None,
        }
    }

    /// Sets [`peer_credentials`](Self::peer_credentials).
    pub fn with_peer_credentials(mut self, credentials: Option<PeerCredentials>) -> Self {
        self.peer_credentials = credentials;
        self
    }
}

/// Turns a stream into another stream: framing, compression, metering,
/// simulated latency. Wrappers run in the order they were added, after the
/// masse handshake, on both ends of a stream.
///
/// Any `Fn(BoxIo, &StreamContext) -> impl Future<Output = Result<BoxIo>>` is a
/// wrapper (the future must not borrow the context; clone what it needs):
///
/// ```
/// use masse_core::{BoxIo, StreamContext, Wrapper, Result};
/// fn assert_wrapper<W: Wrapper>(_: W) {}
/// assert_wrapper(|io: BoxIo, ctx: &StreamContext| {
///     let remote = ctx.remote.clone();
///     async move {
///         tracing::debug!(%remote, "stream wrapped");
///         Ok::<_, masse_core::Error>(io)
///     }
/// });
/// ```
#[async_trait]
pub trait Wrapper: Send + Sync + 'static {
    /// Wraps `io`.
    async fn wrap(&self, io: BoxIo, ctx: &StreamContext) -> Result<BoxIo>;
}

#[async_trait]
impl<F, Fut> Wrapper for F
where
    F: Fn(BoxIo, &StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<BoxIo>> + Send + 'static,
{
    async fn wrap(&self, io: BoxIo, ctx: &StreamContext) -> Result<BoxIo> {
        (self)(io, ctx).await
    }
}

#[async_trait]
impl<T: Wrapper + ?Sized> Wrapper for Arc<T> {
    async fn wrap(&self, io: BoxIo, ctx: &StreamContext) -> Result<BoxIo> {
        (**self).wrap(io, ctx).await
    }
}

/// A wrapper chosen at run time.
pub type DynWrapper = Arc<dyn Wrapper>;
