//! The dial path: cached lookup, endpoint choice, handshake, wrappers; and
//! [`Reach`], the stream of streams behind [`Node::to`](crate::Node::to).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

use super::core::Core;
use super::pipe::{Reached, Redial, Verdict};
use super::stats::DialStep;
use super::stream::{PeerStream, StreamInfo};
use crate::endpoint::Endpoint;
use crate::error::{ConnectStep, Error, Result};
use crate::handshake::{self, Dialer, DialerStep, Hello, Message};
use crate::interface::{ConnectContext, DynInterface};
use crate::io::BoxIo;
use crate::name::PeerName;
use crate::pattern::Pattern;
use crate::record::PeerRecord;
use crate::registry::RegistryEvent;
use crate::wrapper::{Direction, StreamContext};

/// A connection opened by [`Core::race`], its `Hello` prepared.
struct Opened {
    ep: Endpoint,
    io: BoxIo,
    dialer: Dialer,
    /// The held-back `Hello` (empty if sent).
    hello: Vec<u8>,
}

/// Endpoints that failed (or lost a race) recently, per node: tried last
/// for a while. Bounded; entries age out.
#[derive(Debug, Default)]
pub(crate) struct EndpointMemory {
    failed: Mutex<HashMap<Endpoint, tokio::time::Instant>>,
}

impl EndpointMemory {
    /// How long a failure is remembered.
    const TTL: Duration = Duration::from_secs(30);
    /// At most this many endpoints are remembered.
    const MAX: usize = 1024;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Endpoint, tokio::time::Instant>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn failed_recently(&self, ep: &Endpoint) -> bool {
        self.lock()
            .get(ep)
            .is_some_and(|at| at.elapsed() < Self::TTL)
    }

    fn failed(&self, ep: Endpoint) {
        let mut failed = self.lock();
        if failed.len() >= Self::MAX {
            failed.retain(|_, at| at.elapsed() < Self::TTL);
            if failed.len() >= Self::MAX {
                // Still full of fresh failures: forget the oldest.
                if let Some(oldest) = failed
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(e, _)| e.clone())
                {
                    failed.remove(&oldest);
                }
            }
        }
        failed.insert(ep, tokio::time::Instant::now());
    }

    fn succeeded(&self, ep: &Endpoint) {
        let mut failed = self.lock();
        if !failed.is_empty() {
            failed.remove(ep);
        }
    }
}

/// How long past the connect timeout the node waits for an interface that
/// does not keep it.
const CONNECT_BACKSTOP: Duration = Duration::from_secs(1);

impl Core {
    /// Dials `name`: cached lookup, then [`dial_with_recovery`](Self::dial_with_recovery).
    pub(crate) async fn connect_name(
        self: &Arc<Self>,
        name: &PeerName,
        service: Option<&str>,
    ) -> Result<PeerStream> {
        self.check_running()?;
        let pattern = Pattern::from(name);
        let started = tokio::time::Instant::now();
        let found = self.registry.lookup_cached(&self.namespace, &pattern).await;
        self.counters.dial_step(DialStep::Lookup, started.elapsed());
        let found = match found {
            Ok(l) => l.records,
            Err(e) => {
                self.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e.in_connect(name, None, ConnectStep::Lookup));
            }
        };
        let Some(record) = found.first() else {
            self.counters
                .connect_not_found
                .fetch_add(1, Ordering::Relaxed);
            return Err(Error::NotFound {
                namespace: self.namespace.to_string(),
                name: name.to_string(),
            });
        };
        self.dial_with_recovery(record, service).await
    }

    /// Dials a known record; if the address looks stale (refused, wrong peer,
    /// unreachable), drops the cached entry, looks the name up once more, and
    /// dials the fresh record if it differs.
    pub(crate) async fn dial_with_recovery(
        self: &Arc<Self>,
        record: &PeerRecord,
        service: Option<&str>,
    ) -> Result<PeerStream> {
        let first = self.dial_record(record, service).await;
        let err = match first {
            Ok(s) => return self.count(Ok(s)),
            Err(e) if e.is_stale_address() => e,
            Err(e) => return self.count(Err(e)),
        };
        tracing::debug!(peer = %record.name, error = %err, "cached address looks stale; looking the name up again");
        self.registry.invalidate(&self.namespace, &record.name);
        let started = tokio::time::Instant::now();
        let fresh = self
            .registry
            .lookup_cached(&self.namespace, &Pattern::from(&record.name))
            .await;
        self.counters.dial_step(DialStep::Lookup, started.elapsed());
        let fresh = match fresh {
            Ok(l) => l.records.first().cloned(),
            Err(_) => return self.count(Err(err)),
        };
        match fresh {
            Some(fresh)
                if fresh.instance != record.instance || fresh.endpoints != record.endpoints =>
            {
                self.counters.stale_retries.fetch_add(1, Ordering::Relaxed);
                let second = self.dial_record(&fresh, service).await;
                self.count(second)
            }
            Some(_) => self.count(Err(err)),
            None => {
                self.counters
                    .connect_not_found
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::NotFound {
                    namespace: self.namespace.to_string(),
                    name: record.name.to_string(),
                })
            }
        }
    }

    fn count(&self, result: Result<PeerStream>) -> Result<PeerStream> {
        let c = &self.counters;
        match result.as_ref().map_err(Error::root) {
            Ok(_) => c.connect_ok.fetch_add(1, Ordering::Relaxed),
            Err(Error::Refused { .. } | Error::WrongPeer { .. } | Error::Unauthorized { .. }) => {
                c.connect_refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(Error::NotFound { .. }) => c.connect_not_found.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.connect_failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Opens the record's endpoints (see [`race`](Self::race)) and builds
    /// the stream on the one that wins.
    async fn dial_record(
        self: &Arc<Self>,
        record: &PeerRecord,
        service: Option<&str>,
    ) -> Result<PeerStream> {
        let opened = self.race(record, service).await?;
        self.dial_endpoint(opened, record, service).await
    }

    /// Opens a connection to one of the record's endpoints that this node's
    /// interfaces speak, happy-eyeballs style (RFC 8305): the candidates in
    /// interface order, those that failed recently last; the next attempt
    /// starts when the previous one fails or after the race delay, whichever
    /// is first; the first to connect wins and the others are dropped. A
    /// failure that is not about the address (see
    /// [`Error::is_stale_address`]) ends the race at once.
    async fn race(self: &Arc<Self>, record: &PeerRecord, service: Option<&str>) -> Result<Opened> {
        let mut candidates = self.candidates(record);
        if candidates.is_empty() {
            return Err(self.no_common_protocol(record));
        }
        if let [(iface, ep)] = candidates.as_slice() {
            // Nothing to race.
            let (io, dialer, hello) = self.open_endpoint(iface, ep, record, service).await?;
            return Ok(Opened {
                ep: ep.clone(),
                io,
                dialer,
                hello,
            });
        }
        // Stable: among equals, interface order stands.
        candidates.sort_by_key(|(_, ep)| self.endpoint_memory.failed_recently(ep));
        let mut queue = candidates.into_iter();
        let mut running = FuturesUnordered::new();
        let mut started: Vec<Endpoint> = Vec::new();
        let attempt = |iface: DynInterface, ep: Endpoint| {
            let core = self.clone();
            let record = record.clone();
            let service = service.map(str::to_owned);
            async move {
                let r = core
                    .open_endpoint(&iface, &ep, &record, service.as_deref())
                    .await;
                (ep, r)
            }
        };
        if let Some((iface, ep)) = queue.next() {
            started.push(ep.clone());
            running.push(attempt(iface, ep));
        }
        loop {
            let more = queue.len() > 0;
            let delay = tokio::time::sleep(self.config.race_delay);
            tokio::pin!(delay);
            tokio::select! {
                Some((ep, result)) = running.next() => match result {
                    Ok((io, dialer, hello)) => {
                        self.endpoint_memory.succeeded(&ep);
                        // Those still connecting, started before it, were overtaken.
                        for slow in started.iter().take_while(|e| **e != ep) {
                            self.endpoint_memory.failed(slow.clone());
                        }
                        return Ok(Opened { ep, io, dialer, hello });
                    }
                    Err(e) if e.is_stale_address() => {
                        tracing::debug!(peer = %record.name, endpoint = %ep, error = %e, "endpoint failed; trying the next");
                        started.retain(|s| *s != ep);
                        self.endpoint_memory.failed(ep);
                        match queue.next() {
                            Some((iface, ep)) => {
                                started.push(ep.clone());
                                running.push(attempt(iface, ep));
                            }
                            // The last one standing failed: its error stands.
                            None if running.is_empty() => return Err(e),
                            None => {}
                        }
                    }
                    Err(e) => return Err(e),
                },
                _ = &mut delay, if more => {
                    if let Some((iface, ep)) = queue.next() {
                        tracing::debug!(peer = %record.name, endpoint = %ep, "previous endpoint slow; racing the next");
                        self.counters.raced_endpoints.fetch_add(1, Ordering::Relaxed);
                        started.push(ep.clone());
                        running.push(attempt(iface, ep));
                    }
                }
            }
        }
    }

    /// The record's endpoints this node can dial, each with the first of its
    /// interfaces (in the order added) that speaks it, in interface order.
    /// The others are skipped: a peer may offer transports this node lacks.
    fn candidates(&self, record: &PeerRecord) -> Vec<(DynInterface, Endpoint)> {
        let mut out: Vec<(DynInterface, Endpoint)> = Vec::with_capacity(record.endpoints.len());
        for iface in &self.interfaces {
            for ep in &record.endpoints {
                if iface.speaks(ep.protocol()) && !out.iter().any(|(_, e)| e == ep) {
                    out.push((iface.clone(), ep.clone()));
                }
            }
        }
        if out.len() < record.endpoints.len() {
            for ep in record
                .endpoints
                .iter()
                .filter(|e| !out.iter().any(|(_, o)| o == *e))
            {
                tracing::debug!(peer = %record.name, endpoint = %ep, "skipping an endpoint no interface of this node speaks");
            }
        }
        out
    }

    fn no_common_protocol(&self, record: &PeerRecord) -> Error {
        let ours: Vec<String> = self
            .interfaces
            .iter()
            .map(|i| i.protocol().to_string())
            .collect();
        Error::Unsupported(format!(
            "{} advertises {:?}, none of which this node speaks ({})",
            record.name,
            record
                .endpoints
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
            ours.join(", ")
        ))
        .in_connect(&record.name, None, ConnectStep::Transport)
    }

    /// The dialed stream on an opened connection: the [`Verdict`] that
    /// reads the answer, under the node's wrappers.
    async fn dial_endpoint(
        self: &Arc<Self>,
        opened: Opened,
        record: &PeerRecord,
        service: Option<&str>,
    ) -> Result<PeerStream> {
        let Opened {
            ep,
            io,
            dialer,
            hello,
        } = opened;
        let ep = &ep;
        // One copy of the record, shared by the stream and its redial.
        let shared = Arc::new(record.clone());
        let reached = Arc::new(Mutex::new(Reached {
            instance: record.instance,
            record: shared.clone(),
            endpoint: ep.clone(),
        }));
        let redial: Redial = {
            let core = self.clone();
            let (record, service) = (shared, service.map(str::to_owned));
            Box::new(move || Box::pin(async move { core.redial(record, service).await }))
        };
        let (verdict, established) = Verdict::new(
            io,
            dialer,
            hello,
            &self.hold_back,
            self.config.handshake_timeout,
            Some(redial),
            reached.clone(),
        );
        let mut io: BoxIo = Box::new(verdict);
        let ctx = StreamContext::new(
            self.namespace.clone(),
            self.name.clone(),
            record.name.clone(),
            record.instance,
            Direction::Outbound,
            ep.protocol().clone(),
            service.map(str::to_owned),
        );
        for w in &self.wrappers {
            io = w
                .wrap(io, &ctx)
                .await
                .map_err(|e| e.in_connect(&record.name, Some(ep), ConnectStep::Wrapper))?;
        }
        let info = StreamInfo {
            peer: record.name.clone(),
            peer_instance: record.instance,
            reached: Some(reached),
            established: Some(established),
            direction: Direction::Outbound,
            service: ctx.service,
            protocol: ep.protocol().clone(),
            peer_credentials: None,
        };
        Ok(PeerStream::new(self.clone(), io, info))
    }

    /// Connects to `ep` and prepares the `Hello`: held back (returned
    /// encoded) to go out with the first data, or, with a namespace secret,
    /// sent and its challenge answered. The acceptor's verdict is read later,
    /// by [`Verdict`].
    async fn open_endpoint(
        &self,
        iface: &DynInterface,
        ep: &Endpoint,
        record: &PeerRecord,
        service: Option<&str>,
    ) -> Result<(BoxIo, Dialer, Vec<u8>)> {
        let started = tokio::time::Instant::now();
        let io = self.connect_transport(iface, ep, record).await;
        let connected = tokio::time::Instant::now();
        self.counters
            .dial_step(DialStep::Connect, connected - started);
        let io = io.map_err(|e| e.in_connect(&record.name, Some(ep), ConnectStep::Transport))?;
        let opened = self.send_hello(io, record, service).await;
        self.counters
            .dial_step(DialStep::Handshake, connected.elapsed());
        opened.map_err(|e| e.in_connect(&record.name, Some(ep), ConnectStep::Handshake))
    }

    async fn connect_transport(
        &self,
        iface: &DynInterface,
        ep: &Endpoint,
        record: &PeerRecord,
    ) -> Result<BoxIo> {
        let ctx = ConnectContext::new(self.namespace.clone(), self.name.clone(), self.instance)
            .with_connect_timeout(self.config.connect_timeout)
            .with_identity(self.identity.clone());
        // The interface keeps the connect timeout itself; this is a backstop
        // for one that does not, not a second timer racing the first.
        let backstop = self.config.connect_timeout + CONNECT_BACKSTOP;
        match tokio::time::timeout(backstop, iface.connect(ep, record, &ctx)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(protocol = %iface.protocol(), endpoint = %ep, "interface ignored its connect timeout");
                Err(Error::Timeout {
                    what: crate::Operation::Connect,
                    after: backstop,
                })
            }
        }
    }

    async fn send_hello(
        &self,
        mut io: BoxIo,
        record: &PeerRecord,
        service: Option<&str>,
    ) -> Result<(BoxIo, Dialer, Vec<u8>)> {
        let mut hello = Hello::new(
            self.namespace.clone(),
            self.name.clone(),
            self.instance,
            record.name.clone(),
        )
        .expecting(record.instance);
        if let Some(s) = service {
            hello = hello.with_service(s)?;
        }
        // A nonce only matters to the namespace secret's proofs.
        let nonce = match &self.config.secret {
            Some(_) => handshake::nonce(),
            None => [0; handshake::NONCE_LEN],
        };
        let mut dialer = Dialer::new(hello, self.config.secret.clone(), nonce);
        let msg = Message::Hello(dialer.hello().clone());
        msg.validate()?;
        let hello = handshake::encode(&msg);
        if dialer.pipelines() {
            return Ok((io, dialer, hello));
        }
        io.write_all(&hello).await?;
        io.flush().await?;
        let reply = handshake::read_message(&mut io, self.config.handshake_timeout).await?;
        match dialer.message(reply) {
            DialerStep::Send(proof) => handshake::write_message(&mut io, &proof).await?,
            DialerStep::Fail(e) => return Err(e),
            DialerStep::Open { .. } => {
                return Err(Error::protocol("handshake opened before the challenge"));
            }
        }
        Ok((io, dialer, Vec::new()))
    }

    /// After a stale refusal: drop the cached record, look the name up once
    /// more, and if the fresh record differs, open it (the caller replays).
    async fn redial(
        self: Arc<Self>,
        stale: Arc<PeerRecord>,
        service: Option<String>,
    ) -> super::pipe::Reopened {
        self.registry.invalidate(&self.namespace, &stale.name);
        let fresh = self
            .registry
            .lookup_cached(&self.namespace, &Pattern::from(&stale.name))
            .await
            .map_err(|e| e.in_connect(&stale.name, None, ConnectStep::Lookup))?
            .records
            .first()
            .cloned();
        let Some(fresh) =
            fresh.filter(|f| f.instance != stale.instance || f.endpoints != stale.endpoints)
        else {
            return Ok(None);
        };
        self.counters.stale_retries.fetch_add(1, Ordering::Relaxed);
        let o = self.race(&fresh, service.as_deref()).await?;
        Ok(Some((o.io, o.dialer, o.hello, Arc::new(fresh), o.ep)))
    }
}

/// Streams to every peer matching a pattern; made by [`Node::to`](crate::Node::to).
///
/// Configure it before the first poll: [`service`](Self::service),
/// [`follow`](Self::follow), [`include_self`](Self::include_self),
/// [`concurrency`](Self::concurrency). It yields `Ok(stream)` per reached peer
/// and `Err` per peer that could not be reached, and ends when every current
/// match was tried — or, with `follow`, when the node shuts down or the
/// `Reach` is dropped.
#[must_use = "a Reach does nothing until polled"]
pub struct Reach {
    core: Arc<Core>,
    pattern: Result<Pattern>,
    service: Option<String>,
    follow: bool,
    include_self: bool,
    concurrency: usize,
    inner: Option<BoxStream<'static, Result<PeerStream>>>,
}

impl Reach {
    pub(crate) fn new(core: Arc<Core>, pattern: Result<Pattern>) -> Self {
        let concurrency = core.config.concurrency;
        Reach {
            core,
            pattern,
            service: None,
            follow: false,
            include_self: false,
            concurrency,
            inner: None,
        }
    }

    /// Only peers whose record lists `service`, and open that service on each.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// After the current matches, also reach every matching instance that
    /// joins later (a restarted peer is a new instance), once each.
    pub fn follow(mut self) -> Self {
        self.follow = true;
        self
    }

    /// Include this node itself if it matches.
    pub fn include_self(mut self) -> Self {
        self.include_self = true;
        self
    }

    /// Dials at most `n` peers at once (default: the node's `concurrency`).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    fn start(&mut self) -> BoxStream<'static, Result<PeerStream>> {
        if let Err(e) = self.core.check_running() {
            return futures::stream::once(futures::future::ready(Err(e))).boxed();
        }
        let pattern = match &self.pattern {
            Ok(p) => p.clone(),
            Err(e) => return futures::stream::once(futures::future::ready(Err(e.clone()))).boxed(),
        };
        if let Some(s) = &self.service
            && let Err(e) = crate::name::validate_service(s)
        {
            return futures::stream::once(futures::future::ready(Err(e))).boxed();
        }
        let (tx, mut rx) = mpsc::channel(self.concurrency);
        let job = ReachJob {
            core: self.core.clone(),
            pattern,
            service: self.service.clone(),
            follow: self.follow,
            include_self: self.include_self,
            concurrency: self.concurrency,
        };
        tokio::spawn(job.run(tx));
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}

impl Stream for Reach {
    type Item = Result<PeerStream>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inner.is_none() {
            let s = self.start();
            self.inner = Some(s);
        }
        self.inner
            .as_mut()
            .map_or(Poll::Ready(None), |s| s.as_mut().poll_next(cx))
    }
}

impl fmt::Debug for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reach")
            .field("pattern", &self.pattern)
            .field("service", &self.service)
            .field("follow", &self.follow)
            .field("include_self", &self.include_self)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

struct ReachJob {
    core: Arc<Core>,
    pattern: Pattern,
    service: Option<String>,
    follow: bool,
    include_self: bool,
    concurrency: usize,
}

impl ReachJob {
    fn wanted(&self, r: &PeerRecord) -> bool {
        self.pattern.matches(r.name.as_str())
            && (self.include_self || (r.name != self.core.name && r.instance != self.core.instance))
            && self.service.as_deref().is_none_or(|s| r.offers(s))
    }

    async fn run(self, tx: mpsc::Sender<Result<PeerStream>>) {
        // Subscribe before listing, so a join between the two is not missed.
        let mut joins = self.follow.then(|| self.core.registry_events.subscribe());
        let mut seen = HashSet::new();
        let mut queue = VecDeque::new();
        match self.list().await {
            Ok(records) => {
                for r in records {
                    if seen.insert(r.instance) {
                        queue.push_back(r);
                    }
                }
            }
            Err(e) => {
                if tx.send(Err(e)).await.is_err() || !self.follow {
                    return;
                }
            }
        }
        let mut dials = FuturesUnordered::new();
        loop {
            while dials.len() < self.concurrency
                && let Some(r) = queue.pop_front()
            {
                let core = self.core.clone();
                let service = self.service.clone();
                dials.push(async move { core.dial_with_recovery(&r, service.as_deref()).await });
            }
            if dials.is_empty() && joins.is_none() {
                return;
            }
            tokio::select! {
                Some(result) = dials.next(), if !dials.is_empty() => {
                    if tx.send(result).await.is_err() {
                        return;
                    }
                }
                ev = recv_join(&mut joins) => match ev {
                    Ok(RegistryEvent::Joined(r) | RegistryEvent::Updated(r)) => {
                        if self.wanted(&r) && seen.insert(r.instance) {
                            queue.push_back(r);
                        }
                    }
                    Ok(RegistryEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Events were lost: list again and reach whoever is new.
                        if let Ok(records) = self.list().await {
                            for r in records {
                                if seen.insert(r.instance) {
                                    queue.push_back(r);
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => joins = None,
                },
                _ = self.core.stopped() => return,
                _ = tx.closed() => return,
            }
        }
    }

    async fn list(&self) -> Result<Vec<PeerRecord>> {
        let found = self
            .core
            .registry
            .lookup_cached(&self.core.namespace, &self.pattern)
            .await
            .map_err(|e| e.in_connect(&self.pattern, None, ConnectStep::Lookup))?;
        Ok(found
            .records
            .iter()
            .filter(|r| self.wanted(r))
            .cloned()
            .collect())
    }
}

async fn recv_join(
    joins: &mut Option<broadcast::Receiver<RegistryEvent>>,
) -> std::result::Result<RegistryEvent, broadcast::error::RecvError> {
    match joins {
        Some(rx) => rx.recv().await,
        None => futures::future::pending().await,
    }
}
