//! The stream layers that let data flow around the handshake: on the
//! accepting side [`Gate`] (bytes read past the `Hello`, and the `Welcome`
//! written before the first byte out), on the dialing side [`Verdict`] (the
//! acceptor's answer read before the first byte in, and a replay to the fresh
//! holder of the name after a stale refusal).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::task::{ArcWake, AtomicWaker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::endpoint::Endpoint;
use crate::error::{ConnectStep, Error, Result};
use crate::handshake::{Dialer, DialerStep, MAX_FRAME, Message, decode, encode};
use crate::io::BoxIo;
use crate::record::{InstanceId, PeerRecord};

/// How much [`FrameBuf`] reads at a time.
const READ_CHUNK: usize = 1024;

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
            // Small: a handshake frame is a few hundred bytes, and bytes
            // past it are better left to the application's own reads than
            // copied through here (nor is a large buffer zeroed per read).
            let mut tmp = [0u8; READ_CHUNK];
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

    /// The next message (the caller keeps the deadline).
    pub(crate) async fn read<R>(&mut self, io: &mut R) -> Result<Message>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        std::future::poll_fn(|cx| self.poll_message(io, cx)).await
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

/// Writes `prefix[*sent..]` (a held-back handshake message) and, if none of
/// it was written yet, as much of `buf` as fits in the same write. Returns
/// how many bytes of `buf` went out; 0 means the whole prefix is out and
/// `buf` is still to write.
fn poll_write_with_prefix(
    io: &mut BoxIo,
    cx: &mut Context<'_>,
    prefix: &[u8],
    sent: &mut usize,
    buf: &[u8],
) -> Poll<std::io::Result<usize>> {
    if *sent == 0 && !prefix.is_empty() && !buf.is_empty() {
        let take = buf.len().min(COALESCE_LIMIT);
        // The usual first write (a small handshake message and a request)
        // is put together on the stack; only a large one allocates.
        let mut small = [0u8; SMALL_COALESCE];
        let mut large = Vec::new();
        let both: &[u8] = if prefix.len() + take <= SMALL_COALESCE {
            small[..prefix.len()].copy_from_slice(prefix);
            small[prefix.len()..prefix.len() + take].copy_from_slice(&buf[..take]);
            &small[..prefix.len() + take]
        } else {
            large.reserve_exact(prefix.len() + take);
            large.extend_from_slice(prefix);
            large.extend_from_slice(&buf[..take]);
            &large
        };
        let n = ready!(Pin::new(&mut *io).poll_write(cx, both))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        *sent = n.min(prefix.len());
        if n > prefix.len() {
            return Poll::Ready(Ok(n - prefix.len()));
        }
    }
    ready!(poll_write_all(io, cx, prefix, sent))?;
    Poll::Ready(Ok(0))
}

/// At most this many bytes of the first write go out with a held-back
/// handshake message.
const COALESCE_LIMIT: usize = 16 * 1024;

/// A first write up to this size (handshake message included) is put
/// together without allocating.
const SMALL_COALESCE: usize = 1024;

/// How long a held-back handshake message (the acceptor's `Welcome`, the
/// dialer's `Hello`) waits for the application's first bytes before it goes
/// out alone.
const HOLD_BACK: Duration = Duration::from_millis(1);

/// A stream whose handshake message is held back: `nudge` tries to send it
/// (with a no-op waker) and says whether it is done with (sent, failed, or
/// the stream gone).
pub(crate) trait Nudge: Send + Sync {
    fn nudge(&self, cx: &mut Context<'_>) -> bool;
}

struct Held {
    due: tokio::time::Instant,
    until: tokio::time::Instant,
    stream: std::sync::Weak<dyn Nudge>,
}

/// The node's one timer for held-back handshake messages: sends each if its
/// application neither wrote nor waited to read within [`HOLD_BACK`]. One
/// task runs while something is held back, ticking every `HOLD_BACK`, instead
/// of a task per stream.
#[derive(Default)]
pub(crate) struct HoldBack {
    inner: Mutex<HoldBackInner>,
}

#[derive(Default)]
struct HoldBackInner {
    held: Vec<Held>,
    running: bool,
}

impl HoldBack {
    /// Watches `stream` until it is done with, or until `deadline` from now.
    pub(crate) fn hold(self: &Arc<Self>, stream: std::sync::Weak<dyn Nudge>, deadline: Duration) {
        let now = tokio::time::Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.held.push(Held {
            due: now + HOLD_BACK,
            until: now + deadline,
            stream,
        });
        if !inner.running {
            inner.running = true;
            tokio::spawn(self.clone().run());
        }
    }

    async fn run(self: Arc<Self>) {
        let waker = futures::task::noop_waker();
        loop {
            tokio::time::sleep(HOLD_BACK).await;
            let now = tokio::time::Instant::now();
            let due: Vec<Held> = {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let (due, later) = std::mem::take(&mut inner.held)
                    .into_iter()
                    .partition(|h| h.due <= now);
                inner.held = later;
                due
            };
            // Outside the lock: a nudge takes the stream's own lock.
            let again: Vec<Held> = due
                .into_iter()
                .filter(|h| {
                    h.until > now
                        && h.stream
                            .upgrade()
                            .is_some_and(|s| !s.nudge(&mut Context::from_waker(&waker)))
                })
                .collect();
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.held.extend(again);
            if inner.held.is_empty() {
                inner.running = false;
                return;
            }
        }
    }
}

// ------------------------------------------------------------------ accepting

/// An accepted connection until its `Welcome` is out; shared with the timer
/// that sends it if the application takes its time.
struct Unanswered {
    /// `None` once moved to the gate's fast path, or taken back to refuse.
    io: Option<BoxIo>,
    welcome: Vec<u8>,
    sent: usize,
    /// True once the wrappers are done: a read that would wait answers first.
    armed: bool,
}

impl Unanswered {
    fn poll_welcome(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        ready!(poll_write_all(io, cx, &self.welcome, &mut self.sent))?;
        Poll::Ready(Ok(()))
    }

    fn answered(&self) -> bool {
        self.sent == self.welcome.len()
    }
}

/// The acceptor's stream under its wrappers: serves the bytes read past the
/// `Hello` first, and writes the `Welcome` in the same write as the first
/// bytes out, or before a read that would wait (once the wrappers are done),
/// or on flush, or after [`HOLD_BACK`], whichever comes first.
pub(crate) struct Gate {
    /// The fast path, once the `Welcome` is out.
    open: Option<BoxIo>,
    leftover: FrameBuf,
    shared: Arc<Mutex<Unanswered>>,
}

impl Nudge for Mutex<Unanswered> {
    fn nudge(&self, cx: &mut Context<'_>) -> bool {
        let mut u = self.lock().unwrap_or_else(|p| p.into_inner());
        if u.answered() || u.io.is_none() {
            return true;
        }
        match u.poll_welcome(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "writing the Welcome failed");
                true
            }
            Poll::Pending => false,
        }
    }
}

/// The glue's handle on a [`Gate`] it gave to the wrappers.
pub(crate) struct GateHandle(Arc<Mutex<Unanswered>>);

impl Gate {
    pub(crate) fn new(inner: BoxIo, leftover: FrameBuf, welcome: &Message) -> (Self, GateHandle) {
        let shared = Arc::new(Mutex::new(Unanswered {
            io: Some(inner),
            welcome: encode(welcome),
            sent: 0,
            armed: false,
        }));
        let gate = Gate {
            open: None,
            leftover,
            shared: shared.clone(),
        };
        (gate, GateHandle(shared))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Unanswered> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the connection to the fast path once the `Welcome` is out.
    fn promote(&mut self) {
        let io = {
            let mut u = self.lock();
            if !u.answered() {
                return;
            }
            // The Welcome is out: its bytes are not needed any more (an
            // empty one is answered too).
            u.welcome = Vec::new();
            u.sent = 0;
            u.io.take()
        };
        if io.is_some() {
            self.open = io;
        }
    }

    /// Sends the `Welcome` (if not yet), then runs `op` on the connection.
    fn poll_answered<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut BoxIo>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.open.is_none() {
            ready!(self.lock().poll_welcome(cx))?;
            self.promote();
        }
        match self.open.as_mut() {
            Some(io) => op(Pin::new(io), cx),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl GateHandle {
    /// The wrappers are done: a read that would wait sends the `Welcome`
    /// first, and a timer sends it after [`HOLD_BACK`] if nothing did.
    pub(crate) fn arm(&self, timer: &Arc<HoldBack>, deadline: Duration) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).armed = true;
        let weak: std::sync::Weak<dyn Nudge> = Arc::downgrade(&self.0) as _;
        timer.hold(weak, deadline);
    }

    /// The connection, if none of the `Welcome` was written yet (a wrapper
    /// failed): the refusal can still be sent on it.
    pub(crate) fn take_back(&self) -> Option<BoxIo> {
        let mut u = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if u.sent == 0 { u.io.take() } else { None }
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.leftover.serve(buf) {
            return Poll::Ready(Ok(()));
        }
        if let Some(io) = this.open.as_mut() {
            return Pin::new(io).poll_read(cx, buf);
        }
        let mut u = this.lock();
        let armed = u.armed;
        let Some(io) = u.io.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        if Pin::new(io).poll_read(cx, buf)?.is_ready() {
            return Poll::Ready(Ok(()));
        }
        // The application waits for the dialer: answer first.
        if armed && !u.answered() {
            ready!(u.poll_welcome(cx))?;
            drop(u);
            this.promote();
        }
        Poll::Pending
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(io) = this.open.as_mut() {
            return Pin::new(io).poll_write(cx, buf);
        }
        {
            // The Welcome and the first bytes in one write.
            let mut guard = this.lock();
            let u = &mut *guard;
            let Some(io) = u.io.as_mut() else {
                return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
            };
            let n = ready!(poll_write_with_prefix(io, cx, &u.welcome, &mut u.sent, buf))?;
            if n > 0 {
                drop(guard);
                this.promote();
                return Poll::Ready(Ok(n));
            }
        }
        this.poll_answered(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_answered(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.open.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_answered(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_answered(cx, |io, cx| io.poll_shutdown(cx))
    }
}

// ------------------------------------------------------------------- dialing

/// Who a dialed stream reached; updated if a stale refusal sent it elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Reached {
    pub(crate) instance: InstanceId,
    pub(crate) record: Arc<PeerRecord>,
    /// The endpoint the stream went to.
    pub(crate) endpoint: Endpoint,
}

/// A fresh connection after a redial: the stream, its dialer, its held-back
/// `Hello` (empty if sent), the fresh record and the endpoint dialed.
pub(crate) type Reopened = Result<Option<(BoxIo, Dialer, Vec<u8>, Arc<PeerRecord>, Endpoint)>>;

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
    /// The encoded `Hello`, held back to go out in one write with the first
    /// data (or before the first read, on flush or shutdown, or after
    /// [`HOLD_BACK`]); empty if it was sent already.
    hello: Vec<u8>,
    hello_sent: usize,
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

impl Answer {
    /// The failed state, the error put in the context of the dial.
    fn fail(&self, e: Error) -> State {
        let reached = self.reached.lock().unwrap_or_else(|p| p.into_inner());
        State::Failed(e.in_connect(
            &reached.record.name,
            Some(&reached.endpoint),
            ConnectStep::Handshake,
        ))
    }

    /// The state after `e`, put in the context of the dial: a redial if `e`
    /// says the address may be stale, the bytes written so far are kept and
    /// the stream has not redialed yet; else failed.
    fn fail_or_redial(&mut self, e: Error) -> State {
        match self.fail(e) {
            State::Failed(e) if e.is_stale_address() && self.kept.is_some() => {
                match self.redial.take() {
                    Some(redial) => {
                        tracing::debug!(error = %e, "stale record; dialing the name's fresh record");
                        self.refusal = Some(e);
                        State::Redialing(redial())
                    }
                    None => State::Failed(e),
                }
            }
            failed => failed,
        }
    }
}

struct Shared {
    /// `None` once the stream is open and the [`Verdict`] took it: what the
    /// handshake needed (the dialer, its timer, the replay) is freed then,
    /// not kept for the life of the stream.
    answer: Mutex<Option<Box<Answer>>>,
    wakers: Arc<Wakers>,
}

impl Nudge for Shared {
    fn nudge(&self, cx: &mut Context<'_>) -> bool {
        let mut guard = self.lock();
        let Some(a) = guard.as_deref_mut() else {
            return true;
        };
        if a.hello_sent == a.hello.len() {
            return true;
        }
        let Some(io) = a.io.as_mut() else {
            return true;
        };
        // Errors surface on the application's next read or write.
        poll_write_all(io, cx, &a.hello, &mut a.hello_sent).is_ready()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<Answer>>> {
        self.answer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives the answer (and a redial) until the stream is open or failed;
    /// the caller registered its waker in `wakers` first. With `send_hello`
    /// false (a write is about to carry it) a held-back `Hello` stays back.
    fn poll_answer(&self, a: &mut Answer, send_hello: bool) -> Poll<Result<()>> {
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
                    if !send_hello && a.hello_sent < a.hello.len() {
                        // No answer before the Hello is out.
                        return Poll::Pending;
                    }
                    if a.hello_sent < a.hello.len() {
                        match poll_write_all(io, &mut cx, &a.hello, &mut a.hello_sent) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(e)) => {
                                a.state = a.fail_or_redial(e.into());
                                continue;
                            }
                            Poll::Pending => {
                                if a.timer.as_mut().poll(&mut cx).is_pending() {
                                    return Poll::Pending;
                                }
                                a.state = a.fail(Error::Timeout {
                                    what: crate::Operation::Handshake,
                                    after: a.deadline,
                                });
                                continue;
                            }
                        }
                    }
                    let got = match a.frame.poll_message(io, &mut cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            if a.timer.as_mut().poll(&mut cx).is_pending() {
                                return Poll::Pending;
                            }
                            Err(Error::Timeout {
                                what: crate::Operation::Handshake,
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
                            // Nothing is replayed from here on; the Hello
                            // is out (it went before the answer could come).
                            a.kept = None;
                            a.redial = None;
                            a.hello = Vec::new();
                            a.hello_sent = 0;
                            a.reached.lock().unwrap_or_else(|p| p.into_inner()).instance = instance;
                            State::Open
                        }
                        DialerStep::Fail(e) => a.fail_or_redial(e),
                        DialerStep::Send(m) => a.fail(Error::protocol(format!(
                            "handshake: {} to send after the data began",
                            m.kind()
                        ))),
                    };
                }
                State::Redialing(fut) => {
                    a.state = match ready!(fut.as_mut().poll(&mut cx)) {
                        Ok(Some((io, dialer, hello, record, endpoint))) => {
                            a.io = Some(io);
                            a.dialer = dialer;
                            a.hello = hello;
                            a.hello_sent = 0;
                            a.frame = FrameBuf::default();
                            a.timer = Box::pin(tokio::time::sleep(a.deadline));
                            let mut reached = a.reached.lock().unwrap_or_else(|p| p.into_inner());
                            reached.record = record;
                            reached.endpoint = endpoint;
                            State::Replaying { sent: 0 }
                        }
                        Ok(None) => {
                            let refusal = a.refusal.take();
                            a.fail(refusal.unwrap_or_else(|| Error::protocol("stale record")))
                        }
                        Err(e) => a.fail(e),
                    };
                }
                State::Replaying { sent } => {
                    if let Err(e) = ready!(poll_write_all(io, &mut cx, &a.hello, &mut a.hello_sent))
                    {
                        a.state = a.fail(e.into());
                        continue;
                    }
                    let kept = a.kept.as_deref().unwrap_or_default();
                    if let Err(e) = ready!(poll_write_all(io, &mut cx, kept, sent)) {
                        a.state = a.fail(e.into());
                        continue;
                    }
                    if a.shutdown
                        && let Err(e) = ready!(Pin::new(&mut *io).poll_shutdown(&mut cx))
                    {
                        a.state = a.fail(e.into());
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
/// handshake deadline. After a stale refusal, or a connection that fails
/// before the answer (on a read, a write or a flush), it dials the name's
/// fresh record and replays what was written, once.
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
        match self.0.lock().as_deref_mut() {
            Some(a) => self.0.poll_answer(a, true),
            // The stream opened and moved to the fast path.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Verdict {
    /// `hello` is the encoded `Hello` if it was held back (empty if sent).
    pub(crate) fn new(
        io: BoxIo,
        dialer: Dialer,
        hello: Vec<u8>,
        timer: &Arc<HoldBack>,
        deadline: Duration,
        redial: Option<Redial>,
        reached: Arc<Mutex<Reached>>,
    ) -> (Self, Established) {
        let hold_back = !hello.is_empty();
        let answer = Answer {
            io: Some(io),
            hello,
            hello_sent: 0,
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
            answer: Mutex::new(Some(Box::new(answer))),
            wakers: Arc::new(Wakers::default()),
        });
        if hold_back {
            let weak: std::sync::Weak<dyn Nudge> = Arc::downgrade(&shared) as _;
            timer.hold(weak, deadline);
        }
        let verdict = Verdict {
            shared: shared.clone(),
            open: None,
            leftover: FrameBuf::default(),
        };
        (verdict, Established(shared))
    }

    /// Once the answer is in: moves the stream to the fast path and frees
    /// the handshake's state.
    fn take_open(&mut self, answer: &mut Option<Box<Answer>>) {
        if let Some(a) = answer.as_deref_mut()
            && matches!(a.state, State::Open)
            && self.open.is_none()
        {
            self.open = a.io.take();
            self.leftover = std::mem::take(&mut a.frame);
            *answer = None;
        }
    }

    /// Before the answer: may a write of `len` bytes go through now
    /// (`Ready(Ok)`), must it wait, or does it fail with the refusal?
    fn poll_before_write(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<Result<()>> {
        let shared = self.shared.clone();
        shared.wakers.write.register(cx.waker());
        let mut guard = shared.lock();
        let Some(a) = guard.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        let pending = matches!(a.state, State::Pending);
        // A refusal already here fails this write; a redial makes it wait.
        if let Poll::Ready(r) = shared.poll_answer(a, false) {
            self.take_open(&mut guard);
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
    /// `None` if the connection failed under it and the stream is redialing
    /// or failed now: the caller goes round again.
    fn poll_write_pending(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<Option<usize>>> {
        let mut guard = self.shared.lock();
        let Some(a) = guard.as_deref_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        let Some(io) = a.io.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        // The Hello and the first bytes in one write.
        let written = match poll_write_with_prefix(io, cx, &a.hello, &mut a.hello_sent, buf) {
            Poll::Ready(Ok(0)) => Pin::new(io).poll_write(cx, buf),
            written => written,
        };
        match ready!(written) {
            Ok(n) => {
                if let Some(k) = &mut a.kept {
                    k.extend_from_slice(&buf[..n]);
                }
                Poll::Ready(Ok(Some(n)))
            }
            Err(e) => {
                // The connection died before the answer (a pooled QUIC
                // connection the peer closed as the stream opened on it):
                // like a refusal, a reason to dial the fresh record.
                a.state = a.fail_or_redial(e.into());
                Poll::Ready(Ok(None))
            }
        }
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
            let mut guard = shared.lock();
            if let Some(a) = guard.as_deref_mut() {
                ready!(shared.poll_answer(a, true))?;
                this.take_open(&mut guard);
            }
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
        loop {
            if let Some(io) = &mut this.open {
                return Pin::new(io).poll_write(cx, buf);
            }
            ready!(this.poll_before_write(cx, buf.len()))?;
            if this.open.is_none()
                && let Some(n) = ready!(this.poll_write_pending(cx, buf))?
            {
                return Poll::Ready(Ok(n));
            }
        }
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
        loop {
            if let Some(io) = &mut this.open {
                return Pin::new(io).poll_write_vectored(cx, bufs);
            }
            ready!(this.poll_before_write(cx, first.len()))?;
            if this.open.is_none()
                && let Some(n) = ready!(this.poll_write_pending(cx, first))?
            {
                return Poll::Ready(Ok(n));
            }
        }
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
        let mut guard = shared.lock();
        let Some(a) = guard.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if !matches!(a.state, State::Pending | State::Open) {
                ready!(shared.poll_answer(a, true))?;
            }
            let Some(io) = a.io.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let flushed = match poll_write_all(io, cx, &a.hello, &mut a.hello_sent) {
                Poll::Ready(Ok(())) => Pin::new(io).poll_flush(cx),
                written => written,
            };
            match ready!(flushed) {
                Err(e) if matches!(a.state, State::Pending) => a.state = a.fail_or_redial(e.into()),
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(io) = &mut this.open {
            return Pin::new(io).poll_shutdown(cx);
        }
        let shared = this.shared.clone();
        shared.wakers.write.register(cx.waker());
        let mut guard = shared.lock();
        let Some(a) = guard.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        a.shutdown = true;
        loop {
            if !matches!(a.state, State::Pending | State::Open) {
                // The replay shuts the fresh stream down after it.
                ready!(shared.poll_answer(a, true))?;
                return Poll::Ready(Ok(()));
            }
            let Some(io) = a.io.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let shut = match poll_write_all(io, cx, &a.hello, &mut a.hello_sent) {
                Poll::Ready(Ok(())) => Pin::new(io).poll_shutdown(cx),
                written => written,
            };
            match ready!(shut) {
                Err(e) if matches!(a.state, State::Pending) => a.state = a.fail_or_redial(e.into()),
                done => return Poll::Ready(done),
            }
        }
    }
}
