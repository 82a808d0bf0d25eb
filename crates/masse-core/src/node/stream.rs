//! [`PeerStream`]: a stream to or from a named peer.

use std::fmt;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::core::Core;
use super::event::NodeEvent;
use crate::endpoint::Protocol;
use crate::io::BoxIo;
use crate::name::PeerName;
use crate::record::{InstanceId, PeerRecord};
use crate::wrapper::Direction;

/// What is known about the other end of a [`PeerStream`].
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    pub(crate) peer: PeerName,
    pub(crate) peer_instance: InstanceId,
    pub(crate) record: Option<PeerRecord>,
    pub(crate) direction: Direction,
    pub(crate) service: Option<String>,
    pub(crate) protocol: Protocol,
}

/// A full-duplex byte stream to a named peer, after the masse handshake and
/// the node's wrappers.
///
/// It is [`AsyncRead`] + [`AsyncWrite`]: split it with [`tokio::io::split`],
/// frame it with `tokio_util::codec::Framed`, or hand it to an RPC transport.
/// Dropping it closes the stream and emits [`NodeEvent::StreamClosed`].
pub struct PeerStream {
    io: BoxIo,
    info: StreamInfo,
    bytes_in: u64,
    bytes_out: u64,
    core: Arc<Core>,
}

impl PeerStream {
    pub(crate) fn new(core: Arc<Core>, io: BoxIo, info: StreamInfo) -> Self {
        let counters = &core.counters;
        counters.streams_open.fetch_add(1, Ordering::Relaxed);
        match info.direction {
            Direction::Inbound => counters.streams_in.fetch_add(1, Ordering::Relaxed),
            Direction::Outbound => counters.streams_out.fetch_add(1, Ordering::Relaxed),
        };
        core.emit(NodeEvent::StreamOpened {
            peer: info.peer.clone(),
            direction: info.direction,
            service: info.service.clone(),
            protocol: info.protocol,
        });
        tracing::debug!(peer = %info.peer, direction = ?info.direction, service = ?info.service, "stream opened");
        PeerStream {
            io,
            info,
            bytes_in: 0,
            bytes_out: 0,
            core,
        }
    }

    /// The other end's name.
    pub fn peer(&self) -> &PeerName {
        &self.info.peer
    }

    /// The other end's instance (tells a restarted peer apart).
    pub fn peer_instance(&self) -> InstanceId {
        self.info.peer_instance
    }

    /// The other end's registry record, for streams we dialed.
    pub fn peer_record(&self) -> Option<&PeerRecord> {
        self.info.record.as_ref()
    }

    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.info.direction
    }

    /// The service requested by the dialer, if any.
    pub fn service(&self) -> Option<&str> {
        self.info.service.as_deref()
    }

    /// The transport the stream runs on.
    pub fn protocol(&self) -> Protocol {
        self.info.protocol
    }

    /// Bytes read from the stream so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Bytes written to the stream so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    fn report_closed(&mut self) {
        let core = &self.core;
        core.counters.streams_open.fetch_sub(1, Ordering::Relaxed);
        core.emit(NodeEvent::StreamClosed {
            peer: self.info.peer.clone(),
            direction: self.info.direction,
            service: self.info.service.clone(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        });
        core.stream_closed.notify_waiters();
        tracing::debug!(peer = %self.info.peer, bytes_in = self.bytes_in, bytes_out = self.bytes_out, "stream closed");
    }
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.report_closed();
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.bytes_in += n;
            this.core.counters.bytes_in.fetch_add(n, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.count_out(n);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.count_out(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl PeerStream {
    #[inline]
    fn count_out(&mut self, n: usize) {
        if n > 0 {
            self.bytes_out += n as u64;
            self.core.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerStream")
            .field("peer", &self.info.peer)
            .field("instance", &self.info.peer_instance)
            .field("direction", &self.info.direction)
            .field("service", &self.info.service)
            .field("protocol", &self.info.protocol)
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .finish()
    }
}
