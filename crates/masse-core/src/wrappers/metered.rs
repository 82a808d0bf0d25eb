//! [`Metered`]: a wrapper that counts bytes and streams.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Result;
use crate::io::{BoxIo, Io};
use crate::wrapper::{StreamContext, Wrapper};

/// Totals shared by every stream of one meter, updated as bytes pass.
///
/// "In" is what the application read from its streams, "out" what it wrote
/// (bytes accepted by the stream underneath).
#[derive(Debug, Default)]
pub struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    streams_opened: AtomicU64,
    streams_open: AtomicU64,
}

impl Counters {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current values (each read atomically; together, a close
    /// approximation while streams are busy).
    pub fn snapshot(&self) -> MeterSnapshot {
        MeterSnapshot {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            streams_open: self.streams_open.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MeterSnapshot {
    /// Bytes read by the application, over all streams.
    pub bytes_in: u64,
    /// Bytes written by the application, over all streams.
    pub bytes_out: u64,
    /// Streams wrapped so far.
    pub streams_opened: u64,
    /// Streams wrapped and not yet dropped.
    pub streams_open: u64,
}

/// A wrapper that counts the bytes and streams passing through it.
///
/// Clones share their totals. It adds no copy and no task: reads and writes
/// go straight to the stream underneath, plus two relaxed atomic additions.
///
/// ```
/// use masse_core::wrappers::Metered;
///
/// let meter = Metered::new();
/// // node_builder.wrap(meter.clone()) ... later:
/// let totals = meter.totals();
/// assert_eq!(totals.streams_open, 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Metered {
    counters: Arc<Counters>,
}

impl Metered {
    /// A meter with fresh totals.
    pub fn new() -> Self {
        Self::default()
    }

    /// A meter that adds to existing totals.
    pub fn with_counters(counters: Arc<Counters>) -> Self {
        Metered { counters }
    }

    /// The shared totals.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The totals now.
    pub fn totals(&self) -> MeterSnapshot {
        self.counters.snapshot()
    }

    /// Meters `io` into these totals, outside a node.
    pub fn meter<T>(&self, io: T) -> MeteredIo<T> {
        MeteredIo::new(io, self.counters.clone())
    }
}

#[async_trait]
impl Wrapper for Metered {
    async fn wrap(&self, io: BoxIo, _ctx: &StreamContext) -> Result<BoxIo> {
        Ok(Box::new(self.meter(io)))
    }
}

#[derive(Debug, Default)]
struct StreamCounts {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    closed: AtomicBool,
}

/// A handle on one [`MeteredIo`]'s counts that stays readable after the
/// stream was boxed, moved to another task or dropped.
#[derive(Debug, Clone)]
pub struct StreamMeter(Arc<StreamCounts>);

impl StreamMeter {
    /// Bytes the application read from the stream.
    pub fn bytes_in(&self) -> u64 {
        self.0.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes the application wrote to the stream.
    pub fn bytes_out(&self) -> u64 {
        self.0.bytes_out.load(Ordering::Relaxed)
    }

    /// True once the stream was dropped.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

type OnClose = Box<dyn FnOnce(&StreamMeter) + Send>;

/// A stream that counts its bytes, per stream and into shared [`Counters`].
///
/// Creating one counts a stream opened (and open) in the totals; dropping it
/// counts it closed and runs the [`on_close`](MeteredIo::on_close) callback,
/// where a node can emit its `StreamClosed { bytes_in, bytes_out }` event.
pub struct MeteredIo<T> {
    inner: T,
    stream: StreamMeter,
    totals: Arc<Counters>,
    on_close: Option<OnClose>,
}

impl<T> MeteredIo<T> {
    /// Meters `io`, adding to `totals`.
    pub fn new(io: T, totals: Arc<Counters>) -> Self {
        totals.streams_opened.fetch_add(1, Ordering::Relaxed);
        totals.streams_open.fetch_add(1, Ordering::Relaxed);
        MeteredIo {
            inner: io,
            stream: StreamMeter(Arc::default()),
            totals,
            on_close: None,
        }
    }

    /// Runs `f` with the final counts when the stream is dropped (replacing
    /// an earlier callback).
    pub fn on_close(mut self, f: impl FnOnce(&StreamMeter) + Send + 'static) -> Self {
        self.on_close = Some(Box::new(f));
        self
    }

    /// Bytes the application read from this stream so far.
    pub fn bytes_in(&self) -> u64 {
        self.stream.bytes_in()
    }

    /// Bytes the application wrote to this stream so far.
    pub fn bytes_out(&self) -> u64 {
        self.stream.bytes_out()
    }

    /// A handle on this stream's counts that outlives it.
    pub fn meter(&self) -> StreamMeter {
        self.stream.clone()
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The stream underneath, mutably (bytes moved through it are not counted).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn count_in(&self, n: usize) {
        self.stream
            .0
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        self.totals.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn count_out(&self, n: usize) {
        self.stream
            .0
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
        self.totals.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<T> Drop for MeteredIo<T> {
    fn drop(&mut self) {
        self.totals.streams_open.fetch_sub(1, Ordering::Relaxed);
        self.stream.0.closed.store(true, Ordering::Release);
        if let Some(f) = self.on_close.take() {
            f(&self.stream);
        }
    }
}

impl<T> fmt::Debug for MeteredIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredIo")
            .field("bytes_in", &self.bytes_in())
            .field("bytes_out", &self.bytes_out())
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len().saturating_sub(before);
        self.count_in(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.count_out(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.count_out(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// `MeteredIo<BoxIo>` is what the wrapper returns; make sure it stays an `Io`.
const _: fn() = || {
    fn is_io<T: Io>() {}
    is_io::<MeteredIo<BoxIo>>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use crate::endpoint::Protocol;
    use crate::record::InstanceId;
    use crate::wrapper::{Direction, DynWrapper};

    fn ctx() -> StreamContext {
        StreamContext::new(
            "ns".parse().unwrap(),
            "me".parse().unwrap(),
            "you".parse().unwrap(),
            InstanceId::from_u128(1),
            Direction::Inbound,
            Protocol::TCP,
            Some("rpc".into()),
        )
    }

    #[tokio::test]
    async fn counts_exact_bytes_both_ways() {
        let meter = Metered::new();
        let w: DynWrapper = Arc::new(meter.clone());
        let (a, mut b) = duplex(64);
        let (c, mut d) = duplex(64);
        let mut s1 = w.wrap(Box::new(a), &ctx()).await.unwrap();
        let mut s2 = w.wrap(Box::new(c), &ctx()).await.unwrap();
        assert_eq!(meter.totals().streams_opened, 2);
        assert_eq!(meter.totals().streams_open, 2);

        let out = vec![7u8; 1000];
        let writer = tokio::spawn(async move {
            let mut got = vec![0u8; 1000];
            b.read_exact(&mut got).await.unwrap();
            b.write_all(&[1u8; 333]).await.unwrap();
            b
        });
        s1.write_all(&out).await.unwrap();
        let mut back = [0u8; 333];
        s1.read_exact(&mut back).await.unwrap();
        let b = writer.await.unwrap();

        s2.write_all(b"12345").await.unwrap();
        d.write_all(b"xy").await.unwrap();
        let mut two = [0u8; 2];
        s2.read_exact(&mut two).await.unwrap();

        let t = meter.totals();
        assert_eq!((t.bytes_out, t.bytes_in), (1005, 335));
        drop(s1);
        assert_eq!(meter.totals().streams_open, 1);
        drop(s2);
        let t = meter.totals();
        assert_eq!((t.streams_opened, t.streams_open), (2, 0));
        drop((b, d));
    }

    #[tokio::test]
    async fn per_stream_counts_and_on_close() {
        let totals = Arc::new(Counters::new());
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let (a, mut b) = duplex(64);
        let mut s = MeteredIo::new(a, totals.clone()).on_close(move |m| {
            *seen2.lock().unwrap() = Some((m.bytes_in(), m.bytes_out(), m.is_closed()));
        });
        let handle = s.meter();
        s.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        drop(b);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!((s.bytes_in(), s.bytes_out()), (3, 5));
        assert!(!handle.is_closed());
        assert!(format!("{s:?}").contains("bytes_in: 3"));
        drop(s);
        assert!(handle.is_closed());
        assert_eq!((handle.bytes_in(), handle.bytes_out()), (3, 5));
        assert_eq!(*seen.lock().unwrap(), Some((3, 5, true)));
        assert_eq!(
            totals.snapshot(),
            MeterSnapshot {
                bytes_in: 3,
                bytes_out: 5,
                streams_opened: 1,
                streams_open: 0
            }
        );
    }

    #[tokio::test]
    async fn vectored_writes_are_counted() {
        let meter = Metered::new();
        let (a, mut b) = duplex(64);
        let mut s = meter.meter(a);
        let n = s
            .write_vectored(&[io::IoSlice::new(b"ab"), io::IoSlice::new(b"cde")])
            .await
            .unwrap();
        assert_eq!(s.bytes_out(), n as u64);
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(meter.totals().bytes_out, n as u64);
    }
}
