//! The interface conformance suite: bind, echo, half-close, resilience, many
//! concurrent streams and failing dials, checked against a real transport.
//!
//! A transport crate runs it with one test:
//!
//! ```no_run
//! # async fn doc(make: fn() -> masse_core::DynInterface) {
//! use masse_core::testkit::InterfaceConformance;
//! InterfaceConformance::new(|| async move { make() })
//!     .streams(1000)
//!     .payload_max(64 * 1024)
//!     .run()
//!     .await;
//! # }
//! ```
//!
//! Every case calls the factory for a fresh interface, binds it, and dials the
//! endpoints its listener advertises with the interface's own `connect`, so
//! the suite makes no assumption about the transport: an IP transport's
//! factory binds a loopback address (`127.0.0.1:0`, `[::1]:0`), a Unix
//! socket's a fresh path, a third-party one whatever its scheme needs. A
//! failed case panics with a message that starts with
//! `interface conformance [<protocol>/<case>]`. Each case also runs alone
//! ([`InterfaceConformance::run_case`] with an [`InterfaceCase`]), to give
//! each its own test or to skip one a transport cannot meet.
//!
//! An interface that authenticates peers at the transport layer (`tls`,
//! `quic`) runs the suite with [`InterfaceConformance::identity`]: contexts
//! then carry that identity and dialed records list its fingerprint.
//!
//! The concurrency case keeps two sockets per stream open at once (dialer and
//! acceptor side), so 1000 streams need an open-file limit above 2000
//! (`ulimit -n`); lower [`InterfaceConformance::streams`] where that is not possible.
//!
//! Progress is logged with `tracing` (`info` per case); install a subscriber in
//! the test to see it.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout};

use crate::{
    BindContext, BoxIo, ConnectContext, DynInterface, Endpoint, Error, Identity, InstanceId,
    Listener, Namespace, PeerName, PeerRecord,
};

/// Runs the whole interface conformance suite with default settings
/// (1000 concurrent streams of up to 64 KiB, a 1 MiB echo).
///
/// `factory` is called once per case and must return a fresh interface that
/// binds a loopback address. Panics, naming the case, on the first violation.
pub async fn interface_conformance<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = DynInterface>,
{
    InterfaceConformance::new(factory).run().await
}

/// The interface conformance suite, with settings for slower or more limited
/// transports. Build with [`InterfaceConformance::new`], finish with
/// [`run`](InterfaceConformance::run).
#[must_use = "call .run().await"]
pub struct InterfaceConformance<F> {
    factory: F,
    streams: usize,
    payload_max: usize,
    echo_bytes: usize,
    case_timeout: Duration,
    step_timeout: Duration,
    connect_timeout: Duration,
    identity: Option<Arc<Identity>>,
}

impl<F> fmt::Debug for InterfaceConformance<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterfaceConformance")
            .field("streams", &self.streams)
            .field("payload_max", &self.payload_max)
            .field("echo_bytes", &self.echo_bytes)
            .field("case_timeout", &self.case_timeout)
            .field("step_timeout", &self.step_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl<F, Fut> InterfaceConformance<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = DynInterface>,
{
    /// The suite with default settings. `factory` is called once per case and
    /// must return a fresh interface that binds a loopback address.
    pub fn new(factory: F) -> Self {
        InterfaceConformance {
            factory,
            streams: 1000,
            payload_max: 64 * 1024,
            echo_bytes: 1024 * 1024,
            case_timeout: Duration::from_secs(60),
            step_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(2),
            identity: None,
        }
    }

    /// How many streams the concurrency case opens at once (default 1000,
    /// at least 1).
    pub fn streams(mut self, n: usize) -> Self {
        self.streams = n.max(1);
        self
    }

    /// The largest payload one stream carries in the concurrency case
    /// (default 64 KiB, at least 1 byte, at most 4 GiB - 1). Lengths are
    /// random in `1..=payload_max`; the first stream sends 1 byte and the
    /// second exactly `payload_max`.
    pub fn payload_max(mut self, bytes: usize) -> Self {
        self.payload_max = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// How many bytes the echo case sends through each advertised endpoint
    /// (default 1 MiB).
    pub fn echo_bytes(mut self, bytes: usize) -> Self {
        self.echo_bytes = bytes;
        self
    }

    /// The limit for one whole case, beyond which it fails as hung (default 60 s).
    pub fn case_timeout(mut self, limit: Duration) -> Self {
        self.case_timeout = limit;
        self
    }

    /// The limit for one step of a case (a bind, a connect, an accept, one
    /// exchange), beyond which it fails as hung (default 20 s).
    pub fn step_timeout(mut self, limit: Duration) -> Self {
        self.step_timeout = limit;
        self
    }

    /// The [`ConnectContext::connect_timeout`] used when dialing an endpoint
    /// nobody listens on (default 2 s). The dial must fail within this plus
    /// 3 s.
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// For interfaces that authenticate peers (`tls`, `quic`): every
    /// [`BindContext`] and [`ConnectContext`] of the suite carries `identity`,
    /// and every [`PeerRecord`] it dials lists its fingerprint, so the
    /// listener and the dialer present the same identity and each accepts the
    /// other. Default: none (contexts and records without identity).
    pub fn identity(mut self, identity: Arc<Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Runs every case in turn; panics, naming the case, on the first failure.
    pub async fn run(&self) {
        tracing::info!(?self, "interface conformance: starting");
        for case in InterfaceCase::ALL {
            self.run_case(case).await;
        }
        tracing::info!("interface conformance: all cases passed");
    }

    /// Runs one case with a fresh interface; panics, naming it, on failure.
    pub async fn run_case(&self, which: InterfaceCase) {
        let suite = Suite {
            streams: self.streams,
            payload_max: self.payload_max,
            echo_bytes: self.echo_bytes,
            step: self.step_timeout,
            connect_timeout: self.connect_timeout,
            seed: InstanceId::random().as_u128() as u64,
            identity: self.identity.clone(),
        };
        let iface = (self.factory)().await;
        let label = Case(format!("{}/{}", iface.protocol(), which.name()));
        tracing::info!(case = %label.0, seed = suite.seed, "interface conformance: case started");
        let started = Instant::now();
        let body = async {
            match which {
                InterfaceCase::Bind => suite.bind_case(&label, iface).await,
                InterfaceCase::Echo => suite.echo(&label, iface).await,
                InterfaceCase::HalfClose => suite.half_close(&label, iface).await,
                InterfaceCase::Resilience => suite.resilience(&label, iface).await,
                InterfaceCase::Concurrency => suite.concurrency(&label, iface).await,
                InterfaceCase::Unreachable => suite.unreachable(&label, iface).await,
            }
        };
        if timeout(self.case_timeout, body).await.is_err() {
            label.fail(format_args!(
                "the case did not finish within {:?} (a hang)",
                self.case_timeout
            ));
        }
        tracing::info!(
            case = %label.0,
            elapsed = ?started.elapsed(),
            "interface conformance: case passed"
        );
    }
}

/// One case of the interface suite (see [`InterfaceConformance::run_case`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InterfaceCase {
    /// Binding advertises endpoints of the interface's scheme (a socket
    /// address with its real port, not 0).
    Bind,
    /// A payload (1 MiB by default) echoed through every advertised endpoint.
    Echo,
    /// The dialer half-closes; the acceptor reads to EOF, replies, closes;
    /// the dialer reads the reply to EOF.
    HalfClose,
    /// Dialers that drop at once, write garbage or half a message and leave
    /// do not break the listener: proper dials still echo.
    Resilience,
    /// Many concurrent streams, each with a checksummed payload.
    Concurrency,
    /// Dialing an endpoint whose listener is gone fails within the connect
    /// timeout (no hang).
    Unreachable,
}

impl InterfaceCase {
    /// Every case, in the order [`InterfaceConformance::run`] runs them.
    pub const ALL: [InterfaceCase; 6] = [
        InterfaceCase::Bind,
        InterfaceCase::Echo,
        InterfaceCase::HalfClose,
        InterfaceCase::Resilience,
        InterfaceCase::Concurrency,
        InterfaceCase::Unreachable,
    ];

    /// The case's name in failure messages: `bind`, `echo`, `half-close`, ...
    pub fn name(self) -> &'static str {
        match self {
            InterfaceCase::Bind => "bind",
            InterfaceCase::Echo => "echo",
            InterfaceCase::HalfClose => "half-close",
            InterfaceCase::Resilience => "resilience",
            InterfaceCase::Concurrency => "concurrency",
            InterfaceCase::Unreachable => "unreachable",
        }
    }
}

/// The name of the running case, for failure messages.
struct Case(String);

impl Case {
    #[track_caller]
    fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("interface conformance [{}]: {msg}", self.0)
    }

    /// Awaits `fut` within `limit`; fails the case on an error or a hang.
    async fn step<T, E: std::error::Error + 'static>(
        &self,
        what: impl fmt::Display,
        limit: Duration,
        fut: impl Future<Output = std::result::Result<T, E>>,
    ) -> T {
        match within(&what, limit, fut).await {
            Ok(v) => v,
            Err(e) => self.fail(e),
        }
    }
}

/// A failed step: what to tell, and whether the process ran out of file
/// descriptors (worth a hint about `ulimit -n`).
#[derive(Debug)]
struct Failure {
    msg: String,
    out_of_fds: bool,
}

impl From<String> for Failure {
    fn from(msg: String) -> Self {
        Failure {
            msg,
            out_of_fds: false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<Failure> for String {
    fn from(f: Failure) -> Self {
        f.msg
    }
}

/// Whether `e`, or an error under it, is EMFILE or ENFILE (too many open
/// files in the process or the system: 24 and 23 on Linux and the BSDs).
fn out_of_fds(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        let io = err
            .downcast_ref::<std::io::Error>()
            .or_else(|| err.downcast_ref::<Arc<std::io::Error>>().map(|a| &**a));
        if io
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == 23 || code == 24)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// Awaits `fut` within `limit`, turning an error or a hang into a message.
async fn within<T, E: std::error::Error + 'static>(
    what: &impl fmt::Display,
    limit: Duration,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, Failure> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure {
            msg: format!("{what} failed: {e}"),
            out_of_fds: out_of_fds(&e),
        }),
        Err(_) => Err(format!("{what} did not finish within {limit:?} (a hang)").into()),
    }
}

struct Suite {
    streams: usize,
    payload_max: usize,
    echo_bytes: usize,
    step: Duration,
    connect_timeout: Duration,
    seed: u64,
    identity: Option<Arc<Identity>>,
}

fn namespace() -> Namespace {
    Namespace::new("conformance").expect("valid namespace")
}

fn acceptor_name() -> PeerName {
    PeerName::new("conformance-acceptor").expect("valid name")
}

impl Suite {
    fn bind_ctx(&self) -> BindContext {
        let ctx = BindContext::new(namespace(), acceptor_name(), InstanceId::random());
        match &self.identity {
            Some(id) => ctx.with_identity(id.clone()),
            None => ctx,
        }
    }

    fn connect_ctx(&self) -> ConnectContext {
        let ctx = ConnectContext::new(
            namespace(),
            PeerName::new("conformance-dialer").expect("valid name"),
            InstanceId::random(),
        );
        match &self.identity {
            Some(id) => ctx.with_identity(id.clone()),
            None => ctx,
        }
    }

    fn peer_for(&self, endpoint: &Endpoint) -> PeerRecord {
        let record = PeerRecord::new(namespace(), acceptor_name(), InstanceId::random())
            .with_endpoint(endpoint.clone());
        match &self.identity {
            Some(id) => record.with_identity(id.fingerprint()),
            None => record,
        }
    }

    /// Binds `iface` and checks what the listener advertises.
    async fn bind(&self, case: &Case, iface: &DynInterface) -> (Box<dyn Listener>, Vec<Endpoint>) {
        let listener = case
            .step("bind", self.step, iface.bind(&self.bind_ctx()))
            .await;
        let endpoints = listener.endpoints();
        if endpoints.is_empty() {
            case.fail("the listener advertises no endpoints");
        }
        for ep in &endpoints {
            if *ep.protocol() != iface.protocol() {
                case.fail(format_args!(
                    "advertised endpoint {ep} has scheme {}, but the interface's protocol is {}",
                    ep.protocol(),
                    iface.protocol()
                ));
            }
            if !iface.speaks(ep.protocol()) {
                case.fail(format_args!(
                    "the interface advertises {ep} but does not speak its scheme"
                ));
            }
            if ep.socket_addr().is_some_and(|a| a.port() == 0) {
                case.fail(format_args!(
                    "advertised endpoint {ep} has port 0; advertise the port actually bound"
                ));
            }
        }
        (listener, endpoints)
    }

    async fn connect(
        &self,
        case: &Case,
        iface: &DynInterface,
        ep: &Endpoint,
        ctx: &ConnectContext,
    ) -> BoxIo {
        case.step(
            format!("connect to {ep}"),
            self.step,
            iface.connect(ep, &self.peer_for(ep), ctx),
        )
        .await
    }

    /// a) binding advertises usable endpoints.
    async fn bind_case(&self, case: &Case, iface: DynInterface) {
        let (_listener, endpoints) = self.bind(case, &iface).await;
        tracing::info!(case = %case.0, ?endpoints, "bound");
    }

    /// b) 1 MiB echoed through every advertised endpoint.
    async fn echo(&self, case: &Case, iface: DynInterface) {
        let (listener, endpoints) = self.bind(case, &iface).await;
        let mut server = Server::start(listener, echo_handler);
        let ctx = self.connect_ctx();
        for (i, ep) in endpoints.iter().enumerate() {
            let data = random_bytes(self.seed ^ i as u64, self.echo_bytes);
            let io = self.connect(case, &iface, ep, &ctx).await;
            let back = case
                .step(
                    format!("echo of {} bytes through {ep}", data.len()),
                    self.step,
                    exchange(io, &data),
                )
                .await;
            if let Some(msg) = compare(&data, &back) {
                case.fail(format_args!(
                    "echo through {ep} came back different: {msg}{}",
                    server.notes()
                ));
            }
            tracing::debug!(case = %case.0, %ep, bytes = data.len(), "echo verified");
        }
        server.check_no_errors(case);
    }

    /// c) dialer half-closes; acceptor reads to EOF, replies, closes.
    async fn half_close(&self, case: &Case, iface: DynInterface) {
        let (mut listener, endpoints) = self.bind(case, &iface).await;
        let request = random_bytes(self.seed ^ 0xc1, 4096);
        let reply = random_bytes(self.seed ^ 0xc2, 256 * 1024);
        let (expected, answer, limit) = (request.clone(), reply.clone(), self.step);
        let acceptor: JoinHandle<std::result::Result<(), String>> = tokio::spawn(async move {
            let accepted = within(&"accept", limit, listener.accept()).await?;
            let mut io = accepted.io;
            let mut got = Vec::new();
            within(
                &"acceptor reading the request to EOF",
                limit,
                io.read_to_end(&mut got),
            )
            .await?;
            if let Some(msg) = compare(&expected, &got) {
                return Err(format!("acceptor received a different request: {msg}"));
            }
            within(&"acceptor writing the reply", limit, io.write_all(&answer)).await?;
            within(&"acceptor closing", limit, io.shutdown()).await?;
            drop(listener);
            Ok(())
        });

        let mut io = self
            .connect(case, &iface, &endpoints[0], &self.connect_ctx())
            .await;
        case.step(
            "dialer writing the request",
            self.step,
            io.write_all(&request),
        )
        .await;
        case.step(
            "dialer shutting down its write side",
            self.step,
            io.shutdown(),
        )
        .await;
        let mut got = Vec::new();
        case.step(
            "dialer reading the reply to EOF after its own shutdown",
            self.step,
            io.read_to_end(&mut got),
        )
        .await;
        match timeout(self.step, acceptor).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => case.fail(e),
            Ok(Err(e)) => case.fail(format_args!("the acceptor task failed: {e}")),
            Err(_) => case.fail("the acceptor did not finish (a hang)"),
        }
        if let Some(msg) = compare(&reply, &got) {
            case.fail(format_args!("dialer received a different reply: {msg}"));
        }
    }

    /// d) clients that drop at once do not break the listener.
    async fn resilience(&self, case: &Case, iface: DynInterface) {
        let (listener, endpoints) = self.bind(case, &iface).await;
        let mut server = Server::start(listener, echo_handler);
        let ep = &endpoints[0];
        let ctx = self.connect_ctx();
        for round in 0..3 {
            // Through the interface's own connect: one dropped without a
            // byte, one after garbage, one after a half-close with nothing
            // read.
            let leaves: [(&[u8], bool); 3] = [
                (b"", false),
                (b"\x16\x03\x01\x00\x05garbage\r\n\r\n", false),
                (b"\x00\x00\x10\x00half a message", true),
            ];
            for (garbage, half_close) in leaves {
                match timeout(self.step, iface.connect(ep, &self.peer_for(ep), &ctx)).await {
                    Ok(Ok(mut io)) => {
                        let _ = timeout(self.step, io.write_all(garbage)).await;
                        if half_close {
                            let _ = timeout(self.step, io.shutdown()).await;
                        }
                        drop(io);
                    }
                    Ok(Err(e)) => case.fail(format_args!(
                        "connect {round} to {ep} failed: {e}{}",
                        server.notes()
                    )),
                    Err(_) => case.fail(format_args!(
                        "connect {round} to {ep} hung{}",
                        server.notes()
                    )),
                }
            }
        }
        // Let the listener see them all before dialing properly.
        sleep(Duration::from_millis(100)).await;
        for i in 0..2 {
            let data = random_bytes(self.seed ^ (0xd0 + i), 64 * 1024);
            let io = match timeout(self.step, iface.connect(ep, &self.peer_for(ep), &ctx)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => case.fail(format_args!(
                    "connect after dropped clients failed: {e}{}",
                    server.notes()
                )),
                Err(_) => case.fail(format_args!(
                    "connect after dropped clients hung{}",
                    server.notes()
                )),
            };
            let back = match within(
                &"echo after dropped clients",
                self.step,
                exchange(io, &data),
            )
            .await
            {
                Ok(back) => back,
                Err(e) => case.fail(format_args!("{e}{}", server.notes())),
            };
            if let Some(msg) = compare(&data, &back) {
                case.fail(format_args!(
                    "echo after dropped clients came back different: {msg}"
                ));
            }
        }
        if let Some(end) = server.ended() {
            case.fail(format_args!("the listener stopped accepting: {end}"));
        }
    }

    /// e) many concurrent streams, each with a checksummed payload.
    async fn concurrency(&self, case: &Case, iface: DynInterface) {
        let (listener, endpoints) = self.bind(case, &iface).await;
        let (payload_max, limit) = (self.payload_max, self.step);
        let mut server =
            Server::start(listener, move |io| checksum_handler(io, payload_max, limit));
        let ep = endpoints[0].clone();
        let (go, ready) = watch::channel(false);
        let mut dialers = JoinSet::new();
        let mut rng = SplitMix(self.seed ^ 0xe0);
        for i in 0..self.streams {
            let len = match i {
                0 => 1,
                1 => payload_max,
                _ => 1 + (rng.next() % payload_max as u64) as usize,
            };
            let seed = rng.next();
            let (iface, mut ready) = (iface.clone(), ready.clone());
            let (ctx, peer, ep) = (self.connect_ctx(), self.peer_for(&ep), ep.clone());
            dialers.spawn(async move {
                // Start every dialer at the same moment.
                let _ = ready.wait_for(|go| *go).await;
                let data = random_bytes(seed, len);
                checksum_dialer(&iface, &ep, &peer, &ctx, &data, limit)
                    .await
                    .map_err(|e| Failure {
                        msg: format!("stream {i} ({len} bytes): {}", e.msg),
                        ..e
                    })
            });
        }
        drop(ready);
        let _ = go.send(true);
        tracing::info!(case = %case.0, streams = self.streams, "dialers released");

        let mut failures = Vec::new();
        let mut ok = 0usize;
        while let Some(res) = dialers.join_next().await {
            match res {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(Failure::from(format!("a dialer task failed: {e}"))),
            }
        }
        if !failures.is_empty() {
            let shown: Vec<_> = failures.iter().take(5).map(|f| f.msg.as_str()).collect();
            let out_of_fds = failures.iter().any(|f| f.out_of_fds);
            case.fail(format_args!(
                "{} of {} streams failed, first ones: [{}]{}{}",
                failures.len(),
                self.streams,
                shown.join("; "),
                server.notes(),
                if out_of_fds {
                    " (the open-file limit is below twice the stream count: \
                     raise `ulimit -n` or lower .streams())"
                } else {
                    ""
                }
            ));
        }
        server.check_no_errors(case);
        let accepted = server.accepted();
        if accepted != self.streams {
            case.fail(format_args!(
                "the listener accepted {accepted} streams, but {} were dialed",
                self.streams
            ));
        }
        tracing::info!(case = %case.0, streams = ok, "all streams verified");
    }

    /// f) dialing a dead endpoint is an error within the connect timeout.
    async fn unreachable(&self, case: &Case, iface: DynInterface) {
        let (mut listener, endpoints) = self.bind(case, &iface).await;
        listener.close().await;
        drop(listener);
        sleep(Duration::from_millis(50)).await;
        let ep = endpoints[0].clone();
        let ctx = self
            .connect_ctx()
            .with_connect_timeout(self.connect_timeout);
        let peer = self.peer_for(&ep);
        let limit = self.connect_timeout + Duration::from_secs(3);
        let started = Instant::now();
        let dial = tokio::spawn({
            let iface = iface.clone();
            let ep = ep.clone();
            async move { iface.connect(&ep, &peer, &ctx).await }
        });
        match timeout(limit, dial).await {
            Ok(Ok(Err(e))) => {
                tracing::info!(case = %case.0, %ep, error = %e, elapsed = ?started.elapsed(), "dial failed as expected");
            }
            Ok(Ok(Ok(_))) => case.fail(format_args!(
                "connect to {ep}, whose listener was dropped, succeeded"
            )),
            Ok(Err(e)) => case.fail(format_args!(
                "connect to a dropped listener at {ep} panicked: {e}"
            )),
            Err(_) => case.fail(format_args!(
                "connect to a dropped listener at {ep} did not fail within {limit:?}; \
                 interfaces must honour ConnectContext::connect_timeout ({:?})",
                self.connect_timeout
            )),
        }
    }
}

/// Writes `data` and shuts down the write side while reading everything that
/// comes back, until EOF.
async fn exchange(io: BoxIo, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(io);
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let read = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.map(|_| back)
    };
    let ((), back) = tokio::try_join!(write, read)?;
    Ok(back)
}

/// Describes how `got` differs from `want`, or `None` if equal.
fn compare(want: &[u8], got: &[u8]) -> Option<String> {
    if want == got {
        return None;
    }
    let first = want.iter().zip(got).position(|(a, b)| a != b);
    Some(match first {
        Some(at) => format!(
            "expected {} bytes, got {}; first difference at byte {at}",
            want.len(),
            got.len()
        ),
        None => format!(
            "expected {} bytes, got {} (equal up to the shorter length)",
            want.len(),
            got.len()
        ),
    })
}

async fn echo_handler(io: BoxIo) -> std::result::Result<(), String> {
    let (mut r, mut w) = tokio::io::split(io);
    tokio::io::copy(&mut r, &mut w)
        .await
        .map_err(|e| format!("echo copy failed: {e}"))?;
    w.shutdown()
        .await
        .map_err(|e| format!("echo shutdown failed: {e}"))
}

/// Reads `len: u32 BE`, `len` bytes and their FNV-1a checksum; verifies it and
/// answers with the checksum it computed itself, then closes.
async fn checksum_handler(
    mut io: BoxIo,
    payload_max: usize,
    limit: Duration,
) -> std::result::Result<(), String> {
    let len = within(&"acceptor reading the length", limit, io.read_u32()).await? as usize;
    if len == 0 || len > payload_max {
        return Err(format!(
            "acceptor read length {len}, outside 1..={payload_max}"
        ));
    }
    let mut data = vec![0u8; len];
    within(
        &"acceptor reading the payload",
        limit,
        io.read_exact(&mut data),
    )
    .await?;
    let sent = within(&"acceptor reading the checksum", limit, io.read_u64()).await?;
    let sum = fnv1a(&data);
    if sum != sent {
        return Err(format!(
            "acceptor computed checksum {sum:016x} over {len} bytes, the dialer sent {sent:016x}"
        ));
    }
    within(&"acceptor writing the checksum", limit, io.write_u64(sum)).await?;
    within(&"acceptor closing", limit, io.shutdown()).await?;
    Ok(())
}

async fn checksum_dialer(
    iface: &DynInterface,
    ep: &Endpoint,
    peer: &PeerRecord,
    ctx: &ConnectContext,
    data: &[u8],
    limit: Duration,
) -> std::result::Result<(), Failure> {
    let mut io = within(&"connect", limit, iface.connect(ep, peer, ctx)).await?;
    let sum = fnv1a(data);
    let mut frame = Vec::with_capacity(data.len() + 12);
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    frame.extend_from_slice(&sum.to_be_bytes());
    within(&"writing the payload", limit, io.write_all(&frame)).await?;
    let back = within(&"reading the echoed checksum", limit, io.read_u64()).await?;
    if back != sum {
        return Err(format!("checksum came back as {back:016x}, expected {sum:016x}").into());
    }
    let mut rest = Vec::new();
    within(&"reading to EOF", limit, io.read_to_end(&mut rest)).await?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the checksum", rest.len()).into());
    }
    within(&"closing", limit, io.shutdown()).await?;
    Ok(())
}

/// An accept loop that runs `handler` on every stream; aborted on drop.
struct Server {
    task: JoinHandle<()>,
    errors: mpsc::UnboundedReceiver<String>,
    accepted: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
    ended: Arc<Mutex<Option<String>>>,
}

impl Server {
    fn start<H, HF>(mut listener: Box<dyn Listener>, handler: H) -> Server
    where
        H: Fn(BoxIo) -> HF + Send + Sync + 'static,
        HF: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let (tx, errors) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (accepted, log, ended) = (accepted.clone(), log.clone(), ended.clone());
            async move {
                let mut handlers = JoinSet::new();
                loop {
                    while handlers.try_join_next().is_some() {}
                    match listener.accept().await {
                        Ok(a) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let fut = handler(a.io);
                            let tx = tx.clone();
                            handlers.spawn(async move {
                                if let Err(e) = fut.await {
                                    let _ = tx.send(e);
                                }
                            });
                        }
                        Err(Error::Closed(what)) => {
                            *lock(&ended) = Some(format!("accept() returned Closed({what})"));
                            break;
                        }
                        Err(e) => {
                            // Allowed: an error for one incoming connection.
                            tracing::debug!(error = %e, "accept error; listener kept");
                            {
                                let mut log = lock(&log);
                                if log.len() < 10 {
                                    log.push(e.to_string());
                                }
                            }
                            sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                // Keep running handlers alive until the server is dropped.
                while handlers.join_next().await.is_some() {}
            }
        });
        Server {
            task,
            errors,
            accepted,
            log,
            ended,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn ended(&self) -> Option<String> {
        lock(&self.ended).clone()
    }

    /// Extra context for a failure message: acceptor-side errors and state.
    fn notes(&mut self) -> String {
        let mut out = String::new();
        let mut errors = Vec::new();
        while let Ok(e) = self.errors.try_recv() {
            errors.push(e);
        }
        if !errors.is_empty() {
            out.push_str(&format!(
                "; acceptor-side errors ({}): [{}]",
                errors.len(),
                errors
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        let log = lock(&self.log);
        if !log.is_empty() {
            out.push_str(&format!("; accept() errors: [{}]", log.join("; ")));
        }
        drop(log);
        if let Some(end) = self.ended() {
            out.push_str(&format!("; the accept loop ended: {end}"));
        }
        out
    }

    fn check_no_errors(&mut self, case: &Case) {
        let mut errors = Vec::new();
        while let Ok(e) = self.errors.try_recv() {
            errors.push(e);
        }
        if !errors.is_empty() {
            case.fail(format_args!(
                "{} acceptor-side errors, first ones: [{}]",
                errors.len(),
                errors
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use super::fixtures::fnv1a;

/// SplitMix64: a small, fast, seedable generator for test payloads.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn random_bytes_are_seeded() {
        assert_eq!(random_bytes(7, 13), random_bytes(7, 13));
        assert_ne!(random_bytes(7, 64), random_bytes(8, 64));
        assert_eq!(random_bytes(1, 0).len(), 0);
        assert_eq!(random_bytes(1, 1001).len(), 1001);
    }

    #[test]
    fn compare_reports_differences() {
        assert_eq!(compare(b"abc", b"abc"), None);
        assert!(compare(b"abc", b"abd").unwrap().contains("byte 2"));
        assert!(compare(b"abc", b"ab").unwrap().contains("shorter"));
    }

    #[tokio::test]
    async fn exchange_over_duplex() {
        let (a, b) = tokio::io::duplex(1024);
        tokio::spawn(echo_handler(Box::new(b)));
        let data = random_bytes(3, 100_000);
        let back = exchange(Box::new(a), &data).await.unwrap();
        assert_eq!(compare(&data, &back), None);
    }

    #[tokio::test]
    async fn checksum_protocol_over_duplex() {
        let (a, b) = tokio::io::duplex(1024);
        let server = tokio::spawn(checksum_handler(
            Box::new(b),
            10_000,
            Duration::from_secs(5),
        ));
        let mut a: BoxIo = Box::new(a);
        let data = random_bytes(4, 5000);
        a.write_u32(data.len() as u32).await.unwrap();
        a.write_all(&data).await.unwrap();
        a.write_u64(fnv1a(&data)).await.unwrap();
        assert_eq!(a.read_u64().await.unwrap(), fnv1a(&data));
        server.await.unwrap().unwrap();

        // A corrupted checksum is caught by the acceptor.
        let (a, b) = tokio::io::duplex(1024);
        let server = tokio::spawn(checksum_handler(
            Box::new(b),
            10_000,
            Duration::from_secs(5),
        ));
        let mut a: BoxIo = Box::new(a);
        a.write_u32(3).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        a.write_u64(1).await.unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn running_out_of_file_descriptors_is_found_under_any_context() {
        let emfile = || std::io::Error::from_raw_os_error(24);
        assert!(out_of_fds(&emfile()));
        let dialed = crate::Error::io_context(emfile(), "connect to tcp://127.0.0.1:1").in_connect(
            "peer",
            None,
            crate::ConnectStep::Transport,
        );
        assert!(out_of_fds(&dialed));
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(23)));
        let refused =
            crate::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!out_of_fds(&refused));
    }
}
