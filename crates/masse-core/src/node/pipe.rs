//! The stream layers that let data flow around the handshake: on the
//! accepting side [`Gate`] (bytes read past the `Hello`, and the `Welcome`
//! written before the first byte out), on the dialing side [`Verdict`] (the
//! acceptor's answer read before the first byte in, and a replay to the fresh
//! holder of the name after a stale refusal).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::task::{ArcWake, AtomicWaker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, Result};
use crate::handshake::{Dialer, DialerStep, MAX_FRAME, Message, decode, encode};
use crate::io::BoxIo;
use crate::record::{InstanceId, PeerRecord};

/// Accumulates bytes until a whole handshake frame is there; bytes read past
/// it stay for the application.
#[derive(Debug, Default)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// The next message, reading from `io` as needed.
    pub(crate) fn poll_message<R>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Message>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if len > MAX_FRAME {
                    return Poll::Ready(Err(Error::protocol(format!(
                        "handshake frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
                    ))));
                }
                if self.buf.len() >= 2 + len {
                    let msg = decode(&self.buf[2..2 + len]);
                    self.buf.drain(..2 + len);
                    return Poll::Ready(msg);
                }
            }
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(Error::protocol(format!(
                    "handshake truncated: the stream closed after {} bytes of a frame",
                    self.buf.len()
                ))));
            }
            self.buf.extend_from_slice(rb.filled());
        }
    }

    /// The next message within `deadline`.
    pub(crate) async fn read<R>(&mut self, io: &mut R, deadline: Duration) -> Result<Message>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let read = std::future::poll_fn(|cx| self.poll_message(io, cx));
        match tokio::time::timeout(deadline, read).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: "handshake",
                after: deadline,
            }),
        }
    }

    /// Serves buffered bytes into `out`; true if there were any.
    fn serve(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.drain(..n);
        true
    }
}

/// Writes all of `frame[*sent..]`.
fn poll_write_all(
    io: &mut BoxIo,
    cx: &mut Context<'_>,
    frame: &[u8],
    sent: &mut usize,
) -> Poll<std::io::Result<()>> {
    while *sent < frame.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &frame[*sent..]))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        *sent += n;
    }
    Poll::Ready(Ok(()))
}

// ------------------------------------------------------------------ accepting

/// The acceptor's stream under its wrappers: serves the bytes read past the
/// `Hello` first, and writes the `Welcome` before the first byte out (or
/// before the first read once [`armed`](Self::armed), that is once the
/// wrappers are done).
pub(crate) struct Gate {
    inner: BoxIo,
    leftover: FrameBuf,
    welcome: Vec<u8>,
    sent: usize,
    armed: Arc<AtomicBool>,
    /// Where the connection goes if the gate is dropped before any of the
    /// `Welcome` went out (a wrapper failed), so the refusal can be written.
    give_back: Option<tokio::sync::oneshot::Sender<BoxIo>>,
}

impl Gate {
    pub(crate) fn new(inner: BoxIo, leftover: FrameBuf, welcome: &Message) -> Self {
        Gate {
            inner,
            leftover,
            welcome: encode(welcome),
            sent: 0,
            armed: Arc::new(AtomicBool::new(false)),
            give_back: None,
        }
    }

    /// The connection comes back through the returned receiver if the gate
    /// is dropped before any byte of the `Welcome` was written.
    pub(crate) fn give_back(&mut self) -> tokio::sync::oneshot::Receiver<BoxIo> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.give_back = Some(tx);
        rx
    }

    /// Set it once the wrappers are done: reads then answer first too.
    pub(crate) fn armed(&self) -> Arc<AtomicBool> {
        self.armed.clone()
    }

    /// Returns a flag that turns true once the `Welcome` is out.
    fn poll_welcome(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.welcome.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(poll_write_all(
            &mut self.inner,
            cx,
            &self.welcome,
            &mut self.sent
        ))?;
        self.welcome = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.sent == 0
            && !self.welcome.is_empty()
            && let Some(tx) = self.give_back.take()
        {
            let inner = std::mem::replace(&mut self.inner, Box::new(tokio::io::empty()));
            let _ = tx.send(inner);
        }
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.welcome.is_empty() && this.armed.load(Ordering::Acquire) {
            ready!(this.poll_welcome(cx))?;
        }
        if this.leftover.serve(buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_welcome(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_welcome(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_welcome(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_welcome(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------- dialing

/// Who a dialed stream reached; updated if a stale refusal sent it elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Reached {
    pub(crate) instance: InstanceId,
    pub(crate) record: PeerRecord,
}

type Reopened = Result<Option<(BoxIo, Dialer, PeerRecord)>>;

/// A fresh dial after a stale refusal: `Ok(None)` if the fresh record is the
/// same (the refusal stands).
pub(crate) type Redial = Box<dyn FnOnce() -> BoxFuture<'static, Reopened> + Send>;

/// At most this many bytes written before the answer are kept for a replay;
/// past it, writes wait for the answer.
const REPLAY_LIMIT: usize = 64 * 1024;

enum State {
    /// Waiting for the acceptor's answer; writes go through and are kept.
    Pending,
    Open,
    Failed(Error),
    Redialing(BoxFuture<'static, Reopened>),
    /// Writing the kept bytes to the fresh stream.
    Replaying {
        sent: usize,
    },
}

/// Wakes everyone who waits for the answer (reader, writer,
/// [`Established`]): any of them may be the one driving its read, and none
/// may steal another's wake-up.
#[derive(Default)]
struct Wakers {
    read: AtomicWaker,
    write: AtomicWaker,
    established: AtomicWaker,
}

impl ArcWake for Wakers {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.read.wake();
        arc_self.write.wake();
        arc_self.established.wake();
    }
}

/// Everything about a dialed stream until the acceptor's answer is in.
struct Answer {
    /// `None` once the open stream moved to the [`Verdict`]'s fast path.
    io: Option<BoxIo>,
    dialer: Dialer,
    frame: FrameBuf,
    state: State,
    /// Bytes written before the answer, for a replay; `None` once past the limit.
    kept: Option<Vec<u8>>,
    shutdown: bool,
    deadline: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    redial: Option<Redial>,
    /// The stale refusal, while a redial runs.
    refusal: Option<Error>,
    reached: Arc<Mutex<Reached>>,
}

struct Shared {
    answer: Mutex<Answer>,
    wakers: Arc<Wakers>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Answer> {
        self.answer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives the answer (and a redial) until the stream is open or failed;
    /// the caller registered its waker in `wakers` first.
    fn poll_answer(&self, a: &mut Answer) -> Poll<Result<()>> {
        let waker = futures::task::waker(self.wakers.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            let Some(io) = a.io.as_mut() else {
                return Poll::Ready(match &a.state {
                    State::Failed(e) => Err(e.clone()),
                    _ => Ok(()),
                });
            };
            match &mut a.state {
                State::Open => return Poll::Ready(Ok(())),
                State::Failed(e) => return Poll::Ready(Err(e.clone())),
                State::Pending => {
                    let got = match a.frame.poll_message(io, &mut cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            if a.timer.as_mut().poll(&mut cx).is_pending() {
                                return Poll::Pending;
                            }
                            Err(Error::Timeout {
                                what: "handshake",
                                after: a.deadline,
                            })
                        }
                    };
                    let step = match got {
                        Ok(msg) => a.dialer.message(msg),
                        Err(e) => DialerStep::Fail(e),
                    };
                    a.state = match step {
                        DialerStep::Open { instance } => {
                            a.kept = None;
                            a.redial = None;
                            a.reached.lock().unwrap_or_else(|p| p.into_inner()).instance = instance;
                            State::Open
                        }
                        DialerStep::Fail(e) => {
                            let stale = match &e {
                                Error::Refused { code, .. } => code.is_stale(),
                                Error::WrongPeer { .. } => true,
                                _ => false,
                            };
                            match (stale, a.redial.take(), a.kept.is_some()) {
                                (true, Some(redial), true) => {
                                    tracing::debug!(error = %e, "stale record; dialing the name's fresh record");
                                    a.refusal = Some(e);
                                    State::Redialing(redial())
                                }
                                _ => State::Failed(e),
                            }
                        }
                        DialerStep::Send(m) => State::Failed(Error::protocol(format!(
                            "handshake: {} to send after the data began",
                            m.kind()
                        ))),
                    };
                }
                State::Redialing(fut) => {
                    a.state = match ready!(fut.as_mut().poll(&mut cx)) {
                        Ok(Some((io, dialer, record))) => {
                            a.io = Some(io);
                            a.dialer = dialer;
                            a.frame = FrameBuf::default();
                            a.timer = Box::pin(tokio::time::sleep(a.deadline));
                            a.reached.lock().unwrap_or_else(|p| p.into_inner()).record = record;
                            State::Replaying { sent: 0 }
                        }
                        Ok(None) => State::Failed(
                            a.refusal
                                .take()
                                .unwrap_or_else(|| Error::protocol("stale record")),
                        ),
                        Err(e) => State::Failed(e),
                    };
                }
                State::Replaying { sent } => {
                    let kept = a.kept.as_deref().unwrap_or_default();
                    if let Err(e) = ready!(poll_write_all(io, &mut cx, kept, sent)) {
                        a.state = State::Failed(e.into());
                        continue;
                    }
                    if a.shutdown
                        && let Err(e) = ready!(Pin::new(&mut *io).poll_shutdown(&mut cx))
                    {
                        a.state = State::Failed(e.into());
                        continue;
                    }
                    a.state = State::Pending;
                }
            }
        }
    }
}

/// The dialer's stream under its wrappers: application data flows right
/// after the `Hello`; the acceptor's answer is read before the first byte in
/// (a refusal fails that read, or the next write, with its error), within the
/// handshake deadline. After a stale refusal it dials the name's fresh record
/// and replays what was written, once.
pub(crate) struct Verdict {
    shared: Arc<Shared>,
    /// The fast path, once the answer is in.
    open: Option<BoxIo>,
    leftover: FrameBuf,
}

/// Waits for the answer of a [`Verdict`] from above the wrappers.
#[derive(Clone)]
pub(crate) struct Established(Arc<Shared>);

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Established(..)")
    }
}

impl Established {
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.0.wakers.established.register(cx.waker());
        let mut a = self.0.lock();
        self.0.poll_answer(&mut a)
    }
}

impl Verdict {
    pub(crate) fn new(
        io: BoxIo,
        dialer: Dialer,
        deadline: Duration,
        redial: Option<Redial>,
        reached: Arc<Mutex<Reached>>,
    ) -> (Self, Established) {
        let answer = Answer {
            io: Some(io),
            dialer,
            frame: FrameBuf::default(),
            state: State::Pending,
            kept: redial.is_some().then(Vec::new),
            shutdown: false,
            deadline,
            timer: Box::pin(tokio::time::sleep(deadline)),
            redial,
            refusal: None,
            reached,
        };
        let shared = Arc::new(Shared {
            answer: Mutex::new(answer),
            wakers: Arc::new(Wakers::default()),
        });
        let verdict = Verdict {
            shared: shared.clone(),
            open: None,
            leftover: FrameBuf::default(),
        };
        (verdict, Established(shared))
    }

    /// Once the answer is in: moves the stream to the fast path.
    fn take_open(&mut self, a: &mut Answer) {
        if matches!(a.state, State::Open) && self.open.is_none() {
            self.open = a.io.take();
            self.leftover = std::mem::take(&mut a.frame);
        }
    }

    /// Before the answer: may a write of `len` bytes go through now
    /// (`Ready(Ok)`), must it wait, or does it fail with the refusal?
    fn poll_before_write(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<Result<()>> {
        let shared = self.shared.clone();
        shared.wakers.write.register(cx.waker());
        let mut a = shared.lock();
        let pending = matches!(a.state, State::Pending);
        // A refusal already here fails this write; a redial makes it wait.
        if let Poll::Ready(r) = shared.poll_answer(&mut a) {
            self.take_open(&mut a);
            return Poll::Ready(r);
        }
        if !pending || !matches!(a.state, State::Pending) {
            return Poll::Pending;
        }
        match &a.kept {
            Some(k) if k.len() + len > REPLAY_LIMIT => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }

    /// A write before the answer: straight through, and kept for a replay.
    fn poll_write_pending(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut a = self.shared.lock();
        let Some(io) = a.io.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        let n = ready!(Pin::new(io).poll_write(cx, buf))?;
        if let Some(k) = &mut a.kept {
            k.extend_from_slice(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Verdict {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.open.is_none() {
            let shared = this.shared.clone();
            shared.wakers.read.register(cx.waker());
            let mut a = shared.lock();
            ready!(shared.poll_answer(&mut a))?;
            this.take_open(&mut a);
        }
        if this.leftover.serve(buf) {
            return Poll::Ready(Ok(()));
        }
        match &mut this.open {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Verdict {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_write(cx, buf);
        }
        ready!(this.poll_before_write(cx, buf.len()))?;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_write(cx, buf);
        }
        this.poll_write_pending(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_write_vectored(cx, bufs);
        }
        // Before the answer: one buffer at a time.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        ready!(this.poll_before_write(cx, first.len()))?;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_write_vectored(cx, bufs);
        }
        this.poll_write_pending(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.open.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_flush(cx);
        }
        let shared = this.shared.clone();
        shared.wakers.write.register(cx.waker());
        let mut a = shared.lock();
        if !matches!(a.state, State::Pending | State::Open) {
            ready!(shared.poll_answer(&mut a))?;
        }
        match a.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_shutdown(cx);
        }
        let shared = this.shared.clone();
        shared.wakers.write.register(cx.waker());
        let mut a = shared.lock();
        a.shutdown = true;
        if !matches!(a.state, State::Pending | State::Open) {
            // The replay shuts the fresh stream down after it.
            ready!(shared.poll_answer(&mut a))?;
            return Poll::Ready(Ok(()));
        }
        match a.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
