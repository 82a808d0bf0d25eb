//! [`PeerStream`]: a stream to or from a named peer.

use std::fmt;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::core::Core;
use super::event::NodeEvent;
use super::pipe::{Established, Reached};
use crate::endpoint::Protocol;
use crate::io::BoxIo;
use crate::name::PeerName;
use crate::record::{InstanceId, PeerRecord};
use crate::wrapper::Direction;
use crate::wrappers::MeteredIo;

/// What is known about the other end of a [`PeerStream`].
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    pub(crate) peer: PeerName,
    pub(crate) peer_instance: InstanceId,
    /// For dialed streams: whom the handshake reached (it may move to the
    /// name's fresh record after a stale refusal).
    pub(crate) reached: Option<Arc<Mutex<Reached>>>,
    /// For dialed streams: the acceptor's answer.
    pub(crate) established: Option<Established>,
    pub(crate) direction: Direction,
    pub(crate) service: Option<String>,
    pub(crate) protocol: Protocol,
    /// For accepted streams on transports that tell: who is at the other end.
    pub(crate) peer_credentials: Option<crate::PeerCredentials>,
}

/// A full-duplex byte stream to a named peer, after the masse handshake and
/// the node's wrappers.
///
/// It is [`AsyncRead`] + [`AsyncWrite`]: split it with [`tokio::io::split`],
/// frame it with `tokio_util::codec::Framed`, or hand it to an RPC transport.
/// Dropping it closes the stream and emits [`NodeEvent::StreamClosed`].
pub struct PeerStream {
    io: MeteredIo<BoxIo>,
    info: StreamInfo,
    closer: Arc<Closer>,
}

/// Closes a stream from outside when its node's shutdown grace is over: the
/// next read or write (or one waiting now) fails with
/// [`Error::Closed`](crate::Error::Closed).
#[derive(Default)]
pub(crate) struct Closer {
    closed: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl Closer {
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.read.wake();
        self.write.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn error() -> std::io::Error {
        crate::Error::Closed("node").into()
    }

    /// `Some(error)` if closed; else registers `waker` to be told.
    fn check<T>(
        &self,
        waiting: &AtomicWaker,
        cx: &Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_pending() {
            waiting.register(cx.waker());
            // Closed between the poll and the registration: not missed.
            if self.is_closed() {
                return Poll::Ready(Err(Self::error()));
            }
        }
        r
    }
}

impl PeerStream {
    pub(crate) fn new(core: Arc<Core>, io: BoxIo, info: StreamInfo) -> Self {
        match info.direction {
            Direction::Inbound => core.counters.streams_in.fetch_add(1, Ordering::Relaxed),
            Direction::Outbound => core.counters.streams_out.fetch_add(1, Ordering::Relaxed),
        };
        core.emit(NodeEvent::StreamOpened {
            peer: info.peer.clone(),
            direction: info.direction,
            service: info.service.clone(),
            protocol: info.protocol.clone(),
        });
        tracing::debug!(peer = %info.peer, direction = ?info.direction, service = ?info.service, "stream opened");
        let (peer, direction, service) = (info.peer.clone(), info.direction, info.service.clone());
        // The meter feeds the node's totals while the stream lives, and reports
        // the stream's own counts once it is dropped (after the totals count it closed).
        let closer = Arc::new(Closer::default());
        core.track_stream(&closer);
        let io = MeteredIo::new(io, core.meter.clone()).on_close(move |m| {
            tracing::debug!(%peer, bytes_in = m.bytes_in(), bytes_out = m.bytes_out(), "stream closed");
            core.emit(NodeEvent::StreamClosed {
                peer,
                direction,
                service,
                bytes_in: m.bytes_in(),
                bytes_out: m.bytes_out(),
            });
            core.stream_closed.notify_waiters();
        });
        PeerStream { io, info, closer }
    }

    /// Waits for the acceptor's answer to a dialed stream: `Ok` once it
    /// took the stream, the refusal's error otherwise (see
    /// [`RefuseCode`](crate::RefuseCode)), or a timeout after the handshake
    /// deadline. [`Node::connect`](crate::Node::connect) returns as soon as
    /// its `Hello` is sent so that data can follow at once; the first read
    /// (or the first write after the answer came) reports a refusal the same
    /// way, so calling this is only needed to know before sending anything.
    /// Accepted streams are established already.
    ///
    /// The future does not borrow the stream (a `PeerStream` is not `Sync`),
    /// so it is `Send` and may be awaited inside a spawned task.
    pub fn established(&self) -> impl Future<Output = crate::Result<()>> + Send + 'static {
        let established = self.info.established.clone();
        async move {
            match established {
                Some(e) => std::future::poll_fn(|cx| e.poll(cx)).await,
                None => Ok(()),
            }
        }
    }

    /// The other end's name.
    pub fn peer(&self) -> &PeerName {
        &self.info.peer
    }

    /// The other end's instance (tells a restarted peer apart). On a
    /// dialed stream, before the acceptor's answer is read, the instance of
    /// the record that was dialed; the acceptor refuses if it is not that
    /// instance, and the stream then moves to the name's fresh record.
    pub fn peer_instance(&self) -> InstanceId {
        match &self.info.reached {
            Some(r) => r.lock().unwrap_or_else(|p| p.into_inner()).instance,
            None => self.info.peer_instance,
        }
    }

    /// The other end's registry record, for streams we dialed.
    pub fn peer_record(&self) -> Option<PeerRecord> {
        self.info
            .reached
            .as_ref()
            .map(|r| PeerRecord::clone(&r.lock().unwrap_or_else(|p| p.into_inner()).record))
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
    pub fn protocol(&self) -> &Protocol {
        &self.info.protocol
    }

    /// On an accepted stream over a transport that knows it (`unix`): the
    /// user and process at the other end, as the operating system vouches
    /// for them.
    pub fn peer_credentials(&self) -> Option<crate::PeerCredentials> {
        self.info.peer_credentials
    }

    /// Bytes read from the stream so far.
    pub fn bytes_in(&self) -> u64 {
        self.io.bytes_in()
    }

    /// Bytes written to the stream so far.
    pub fn bytes_out(&self) -> u64 {
        self.io.bytes_out()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.closer.is_closed() {
            return Poll::Ready(Err(Closer::error()));
        }
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.closer.check(&this.closer.read, cx, r)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.closer.is_closed() {
            return Poll::Ready(Err(Closer::error()));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.closer.check(&this.closer.write, cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.closer.is_closed() {
            return Poll::Ready(Err(Closer::error()));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.closer.check(&this.closer.write, cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.closer.is_closed() {
            return Poll::Ready(Err(Closer::error()));
        }
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.closer.check(&this.closer.write, cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
            .field("bytes_in", &self.bytes_in())
            .field("bytes_out", &self.bytes_out())
            .finish()
    }
}
