//! [`Latency`]: a wrapper that simulates a slow link.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::io::{BoxIo, Io};
use crate::wrapper::{StreamContext, Wrapper};

/// Longest delay or jitter honoured; longer values are clamped to it.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Bytes a pump holds back per direction before it stops reading (backpressure).
const MAX_IN_FLIGHT: usize = 1 << 20;
/// Largest chunk a pump reads and releases at once.
const MAX_CHUNK: usize = 16 * 1024;
/// Smallest chunk when a bandwidth cap is set.
const MIN_CAPPED_CHUNK: usize = 256;
/// Buffer of the in-memory pipes between the application and the pumps.
const PIPE: usize = 64 * 1024;

/// Simulates a slow link: delays the bytes of every stream it wraps, in both
/// directions, and optionally caps their bandwidth.
///
/// On the node that adds it, every byte the application writes reaches the
/// underlying stream `delay` later, and every byte that arrives on the
/// underlying stream reaches the application `delay` later. Added on one node
/// only, a request-response round trip therefore takes at least `2 × delay`
/// longer; added on both, `4 × delay`.
///
/// - [`Latency::jitter`] adds a uniformly random extra `0..=jitter` per chunk,
///   but release times never go backwards, so bytes are never reordered (a
///   late chunk holds back the ones behind it, like a FIFO link).
/// - [`Latency::bandwidth`] caps each direction at `bytes_per_sec`: a chunk of
///   `n` bytes occupies the link for `n / bytes_per_sec` seconds after the
///   previous one (a token bucket without burst), then travels `delay`.
/// - Half-close and EOF travel like data: after the bytes written before
///   them. A read error of the underlying stream reaches the application after
///   the data received before it; a write error fails the application's next
///   write (or flush) with the same [`io::ErrorKind`].
/// - At most 1 MiB is held back per direction; beyond that the application's
///   writes wait (backpressure), so throughput is at most 1 MiB per `delay`.
///   Delays and jitter are clamped to one hour.
///
/// Each wrapped stream runs two small Tokio tasks, one per direction. They
/// end when both directions are closed: once the application drops (or shuts
/// down and stops reading) its end after the pending bytes are delivered, or
/// when the underlying stream fails.
///
/// ```
/// use std::time::Duration;
/// use masse_core::wrappers::Latency;
///
/// let wan = Latency::jitter(Duration::from_millis(40), Duration::from_millis(10))
///     .bandwidth(1_000_000);
/// assert_eq!(wan.delay(), Duration::from_millis(40));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    delay: Duration,
    jitter: Duration,
    bandwidth: Option<u64>,
}

impl Latency {
    /// A link that delays every byte by exactly `delay` in each direction.
    pub fn fixed(delay: Duration) -> Self {
        Latency {
            delay: delay.min(MAX_DELAY),
            jitter: Duration::ZERO,
            bandwidth: None,
        }
    }

    /// A link that delays every chunk by `base` plus a uniformly random
    /// `0..=jitter`, never reordering bytes.
    pub fn jitter(base: Duration, jitter: Duration) -> Self {
        Latency {
            delay: base.min(MAX_DELAY),
            jitter: jitter.min(MAX_DELAY),
            bandwidth: None,
        }
    }

    /// Caps each direction at `bytes_per_sec`; `0` removes the cap.
    pub fn bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.bandwidth = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    /// The base delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The largest random extra delay.
    pub fn max_jitter(&self) -> Duration {
        self.jitter
    }

    /// The bandwidth cap in bytes per second, if any.
    pub fn bandwidth_limit(&self) -> Option<u64> {
        self.bandwidth
    }

    /// Wraps any stream, outside a node. Fails with [`Error::Unsupported`]
    /// when called outside a Tokio runtime (the wrapper spawns two tasks).
    pub fn wrap_io<T: Io + 'static>(&self, io: T) -> Result<LatencyIo> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Unsupported("the Latency wrapper needs a Tokio runtime".into()))?;
        let (from_peer, to_peer) = tokio::io::split(io);
        let (app_writer, from_app) = tokio::io::duplex(PIPE);
        let (app_reader, to_app) = tokio::io::duplex(PIPE);
        let read_error = Arc::new(ErrorSlot::default());
        let write_error = Arc::new(ErrorSlot::default());
        let (closed_tx, closed_rx) = oneshot::channel();
        let seed = random_seed();
        rt.spawn(outbound(
            from_app,
            to_peer,
            Link::new(self, seed),
            write_error.clone(),
        ));
        rt.spawn(inbound(
            from_peer,
            to_app,
            Link::new(self, seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15),
            read_error.clone(),
            closed_rx,
        ));
        Ok(LatencyIo {
            reader: app_reader,
            writer: app_writer,
            read_error,
            write_error,
            _closed: closed_tx,
        })
    }
}

#[async_trait]
impl Wrapper for Latency {
    async fn wrap(&self, io: BoxIo, _ctx: &StreamContext) -> Result<BoxIo> {
        Ok(Box::new(self.wrap_io(io)?))
    }
}

/// A stream seen through a [`Latency`] link; see there for its behaviour.
pub struct LatencyIo {
    /// Delayed bytes from the peer (the application only reads it).
    reader: DuplexStream,
    /// Bytes for the peer, before their delay (the application only writes it).
    writer: DuplexStream,
    read_error: Arc<ErrorSlot>,
    write_error: Arc<ErrorSlot>,
    /// Dropped with the stream: tells the inbound pump nobody reads any more.
    _closed: oneshot::Sender<()>,
}

impl fmt::Debug for LatencyIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyIo")
            .field("read_error", &self.read_error.get())
            .field("write_error", &self.write_error.get())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for LatencyIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let wanted = buf.remaining() > 0;
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.reader).poll_read(cx, buf))?;
        if wanted && buf.filled().len() == before {
            // End of the delayed data: a clean EOF, or the peer's read error.
            if let Some(e) = self.read_error.get() {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl LatencyIo {
    /// Replaces the pipe's `BrokenPipe` by the error that broke the link.
    fn map_write<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.write_error.get().unwrap_or(e))),
            other => other,
        }
    }
}

impl AsyncWrite for LatencyIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.writer).poll_write(cx, buf);
        self.map_write(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.writer).poll_write_vectored(cx, bufs);
        self.map_write(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.writer.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.write_error.get() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// An I/O error handed from a pump task to the application.
#[derive(Debug, Default)]
struct ErrorSlot(Mutex<Option<(io::ErrorKind, String)>>);

impl ErrorSlot {
    fn set(&self, e: &io::Error) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| (e.kind(), e.to_string()));
    }

    fn get(&self) -> Option<io::Error> {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }
}

/// The schedule of one direction.
struct Link {
    delay: Duration,
    jitter_nanos: u64,
    bandwidth: Option<u64>,
    chunk: usize,
    rng: u64,
    /// When the (bandwidth-capped) link finishes sending what it has.
    link_free: Instant,
    /// Release time of the last chunk: release times never decrease.
    last_due: Instant,
}

impl Link {
    fn new(cfg: &Latency, seed: u64) -> Self {
        let now = Instant::now();
        let chunk = match cfg.bandwidth {
            // About 10 ms worth of data per chunk keeps the rate smooth.
            Some(bw) => usize::try_from(bw / 100)
                .unwrap_or(MAX_CHUNK)
                .clamp(MIN_CAPPED_CHUNK, MAX_CHUNK),
            None => MAX_CHUNK,
        };
        Link {
            delay: cfg.delay,
            jitter_nanos: u64::try_from(cfg.jitter.as_nanos()).unwrap_or(u64::MAX),
            bandwidth: cfg.bandwidth,
            chunk,
            rng: seed | 1,
            link_free: now,
            last_due: now,
        }
    }

    /// xorshift64*: plenty for jitter, no dependency.
    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// When a chunk of `n` bytes read now is handed on.
    fn schedule(&mut self, n: usize) -> Instant {
        let now = Instant::now();
        let sent = match self.bandwidth {
            Some(bw) => {
                let start = now.max(self.link_free);
                self.link_free = start + Duration::from_secs_f64(n as f64 / bw as f64);
                self.link_free
            }
            None => now,
        };
        let extra = match self.jitter_nanos {
            0 => Duration::ZERO,
            j => Duration::from_nanos(self.next_u64() % j.saturating_add(1)),
        };
        let due = (sent + self.delay + extra).max(self.last_due);
        self.last_due = due;
        due
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Jitter does not need good randomness; the clock will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

/// How a pump ended.
#[derive(Debug)]
enum End {
    /// The source ended; everything was delivered and the destination shut down.
    SourceDone,
    /// The source failed; everything read before was delivered.
    SourceFailed(io::Error),
    /// Writing to the destination failed.
    SinkFailed(io::Error),
    /// The application dropped its end (inbound only).
    Closed,
}

/// Moves bytes from `src` to `dst`, each chunk at its scheduled time, in order.
async fn pump<S, D>(
    src: &mut S,
    dst: &mut D,
    link: &mut Link,
    closed: impl Future<Output = ()>,
) -> End
where
    S: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    tokio::pin!(closed);
    let mut queue: VecDeque<(Instant, Bytes)> = VecDeque::new();
    let mut queued = 0usize;
    let mut scratch = vec![0u8; link.chunk];
    let mut source_end: Option<io::Result<()>> = None;
    loop {
        if source_end.is_some() && queue.is_empty() {
            break;
        }
        let due = queue.front().map(|(due, _)| *due);
        let can_read = source_end.is_none() && queued < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            () = &mut closed => return End::Closed,
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                while queue.front().is_some_and(|(due, _)| *due <= now) {
                    let Some((_, chunk)) = queue.pop_front() else { break };
                    queued -= chunk.len();
                    if let Err(e) = dst.write_all(&chunk).await {
                        return End::SinkFailed(e);
                    }
                }
                if let Err(e) = dst.flush().await {
                    return End::SinkFailed(e);
                }
            }
            r = src.read(&mut scratch), if can_read => match r {
                Ok(0) => source_end = Some(Ok(())),
                Ok(n) => {
                    let due = link.schedule(n);
                    queue.push_back((due, Bytes::copy_from_slice(&scratch[..n])));
                    queued += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => source_end = Some(Err(e)),
            },
        }
    }
    match source_end {
        Some(Err(e)) => End::SourceFailed(e),
        _ => match dst.shutdown().await {
            Ok(()) => End::SourceDone,
            Err(e) => End::SinkFailed(e),
        },
    }
}

/// Application → peer.
async fn outbound<T: Io>(
    mut from_app: DuplexStream,
    mut to_peer: WriteHalf<T>,
    mut link: Link,
    write_error: Arc<ErrorSlot>,
) {
    match pump(
        &mut from_app,
        &mut to_peer,
        &mut link,
        std::future::pending(),
    )
    .await
    {
        End::SinkFailed(e) => {
            tracing::debug!(error = %e, "latency link: writing to the peer failed");
            // Set before `from_app` drops, so the application's next write
            // reports this error rather than a bare broken pipe.
            write_error.set(&e);
        }
        End::SourceFailed(e) => {
            tracing::debug!(error = %e, "latency link: reading from the application failed");
        }
        End::SourceDone | End::Closed => {}
    }
}

/// Peer → application.
async fn inbound<T: Io>(
    mut from_peer: ReadHalf<T>,
    mut to_app: DuplexStream,
    mut link: Link,
    read_error: Arc<ErrorSlot>,
    closed: oneshot::Receiver<()>,
) {
    let closed = async move {
        // Resolves when the application drops its `LatencyIo`.
        let _ = closed.await;
    };
    match pump(&mut from_peer, &mut to_app, &mut link, closed).await {
        End::SourceFailed(e) => {
            tracing::debug!(error = %e, "latency link: reading from the peer failed");
            // Set before `to_app` drops, so the application sees the error
            // instead of a clean EOF.
            read_error.set(&e);
        }
        End::SourceDone | End::SinkFailed(_) | End::Closed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fixtures;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::duplex;

    const D: Duration = Duration::from_millis(100);

    /// A stream that records when it is dropped.
    struct Tracked<T> {
        inner: T,
        dropped: Arc<AtomicBool>,
    }

    impl<T> Drop for Tracked<T> {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{what} never happened"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn delays_writes() {
        let (a, mut b) = duplex(1024);
        let mut s = Latency::fixed(D).wrap_io(a).unwrap();
        let start = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(start.elapsed() >= D, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn delays_reads() {
        let (a, mut b) = duplex(1024);
        let mut s = Latency::fixed(D).wrap_io(a).unwrap();
        let start = Instant::now();
        b.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(start.elapsed() >= D, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn round_trip_pays_both_ways() {
        let (a, mut b) = duplex(1024);
        let mut s = Latency::fixed(Duration::from_millis(60))
            .wrap_io(a)
            .unwrap();
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).await.unwrap();
            b.write_all(&buf).await.unwrap();
            b
        });
        let start = Instant::now();
        s.write_all(b"echo").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"echo");
        assert!(
            start.elapsed() >= Duration::from_millis(120),
            "{:?}",
            start.elapsed()
        );
        drop(echo.await.unwrap());
    }

    fn payload(len: usize) -> Vec<u8> {
        fixtures::payload(0x1234_5678_9abc_def0, len)
    }

    #[tokio::test]
    async fn jitter_never_reorders() {
        let data = payload(1 << 20);
        let sum = fixtures::fnv1a(&data);
        let (a, b) = duplex(8 * 1024);
        let jitter = Latency::jitter(Duration::from_millis(5), Duration::from_millis(20));
        let mut s = jitter.wrap_io(a).unwrap();
        // The far end is slowed down too, to make chunks and jitter plentiful.
        let mut far = jitter.wrap_io(b).unwrap();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(3001) {
                s.write_all(piece).await.unwrap();
            }
            s.shutdown().await.unwrap();
            s
        });
        let mut got = Vec::with_capacity(data.len());
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert_eq!(fixtures::fnv1a(&got), sum);
        assert!(got == data);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn bandwidth_cap() {
        let (a, mut b) = duplex(64 * 1024);
        let mut s = Latency::fixed(Duration::ZERO)
            .bandwidth(256 * 1024)
            .wrap_io(a)
            .unwrap();
        let data = payload(64 * 1024);
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 64 * 1024);
        // 64 KiB at 256 KiB/s is 250 ms; allow for the first chunk.
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn shutdown_propagates_after_data() {
        let (a, mut b) = duplex(1024);
        let mut s = Latency::fixed(Duration::from_millis(50))
            .wrap_io(a)
            .unwrap();
        s.write_all(b"last words").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // The other direction still works after our half-close.
        b.write_all(b"reply").await.unwrap();
        drop(b);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply");
    }

    #[tokio::test]
    async fn peer_eof_reaches_the_app_after_data() {
        let (a, mut b) = duplex(1024);
        let mut s = Latency::fixed(Duration::from_millis(50))
            .wrap_io(a)
            .unwrap();
        b.write_all(b"bye").await.unwrap();
        b.shutdown().await.unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    /// A stream whose reads yield some data and then fail; writes fail at once.
    struct Broken {
        data: Option<&'static [u8]>,
    }

    impl AsyncRead for Broken {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.data.take() {
                Some(d) => {
                    buf.put_slice(d);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn errors_propagate() {
        let mut s = Latency::fixed(Duration::from_millis(20))
            .wrap_io(Broken {
                data: Some(b"partial"),
            })
            .unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"partial");
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);

        s.write_all(b"x").await.unwrap(); // accepted by the link...
        // ...and the peer's failure shows up on a later write or flush.
        let start = Instant::now();
        loop {
            match s.write_all(b"x").await.and(s.flush().await) {
                Ok(()) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(5));
        }
    }

    #[tokio::test]
    async fn no_task_outlives_the_stream() {
        let metrics = tokio::runtime::Handle::current().metrics();
        // The application drops its end first: pending data still goes out,
        // then both pumps end and release the inner stream.
        let dropped = Arc::new(AtomicBool::new(false));
        let (a, mut b) = duplex(1024);
        let mut s = Latency::fixed(Duration::from_millis(30))
            .wrap_io(Tracked {
                inner: a,
                dropped: dropped.clone(),
            })
            .unwrap();
        assert_eq!(metrics.num_alive_tasks(), 2);
        s.write_all(b"flushed on drop").await.unwrap();
        drop(s);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"flushed on drop");
        eventually("inner stream dropped", || dropped.load(Ordering::SeqCst)).await;
        eventually("tasks ended", || metrics.num_alive_tasks() == 0).await;

        // The peer goes away first, then the application.
        let dropped = Arc::new(AtomicBool::new(false));
        let (a, b) = duplex(1024);
        let mut s = Latency::fixed(Duration::from_millis(30))
            .wrap_io(Tracked {
                inner: a,
                dropped: dropped.clone(),
            })
            .unwrap();
        drop(b);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        drop(s);
        eventually("inner stream dropped", || dropped.load(Ordering::SeqCst)).await;
        eventually("tasks ended", || metrics.num_alive_tasks() == 0).await;
    }

    #[tokio::test]
    async fn works_as_a_wrapper() {
        let ctx = StreamContext::new(
            "ns".parse().unwrap(),
            "me".parse().unwrap(),
            "you".parse().unwrap(),
            crate::record::InstanceId::from_u128(1),
            crate::wrapper::Direction::Outbound,
            crate::endpoint::Protocol::TCP,
            None,
        );
        let (a, mut b) = duplex(1024);
        let w: crate::wrapper::DynWrapper = Arc::new(Latency::fixed(Duration::from_millis(10)));
        let mut s = w.wrap(Box::new(a), &ctx).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn needs_a_runtime() {
        let (a, _b) = duplex(16);
        assert!(matches!(
            Latency::fixed(D).wrap_io(a),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn config() {
        let l = Latency::jitter(D, Duration::from_secs(1_000_000)).bandwidth(0);
        assert_eq!(l.delay(), D);
        assert_eq!(l.max_jitter(), MAX_DELAY);
        assert_eq!(l.bandwidth_limit(), None);
        assert_eq!(Latency::fixed(D).bandwidth(5).bandwidth_limit(), Some(5));
        let mut link = Link::new(&Latency::jitter(D, D), 42);
        let mut last = Instant::now();
        for _ in 0..1000 {
            let due = link.schedule(10);
            assert!(due >= last);
            last = due;
        }
    }
}
