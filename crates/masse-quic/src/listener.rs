//! The accepting side: the endpoint's accept loop, one task per connection
//! yielding its streams, and [`QuicListener`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use masse_core::tls::peer_fingerprint;
use masse_core::{
    Accepted, Endpoint, Error, Fingerprint, HandshakeBudget, Listener, Protocol, Result, Ticket,
    async_trait,
};
use quinn::VarInt;
use quinn::rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::interface::{STREAMS_BLOCKED, Settings, Shared, lock};

/// Application error code on streams reset because no listener is bound.
const NO_LISTENER: u32 = 1;
/// Application error code closing a connection without a client certificate.
const NO_IDENTITY: u32 = 2;

/// Where accepted streams go: the bound listener's channel, if any.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    generation: u64,
    tx: Option<mpsc::Sender<Accepted>>,
    /// The bound node's handshake budget and deadline, if it gave them.
    budget: Option<(Arc<HandshakeBudget>, Duration)>,
}

impl Sink {
    /// Routes streams to `tx`, counting connection handshakes in `budget`
    /// (with its deadline) if given; returns the generation that identifies it.
    pub(crate) fn open(
        &mut self,
        tx: mpsc::Sender<Accepted>,
        budget: Option<(Arc<HandshakeBudget>, Duration)>,
    ) -> u64 {
        self.generation += 1;
        self.tx = Some(tx);
        self.budget = budget;
        self.generation
    }

    /// Stops routing, if `generation` is still the current listener.
    fn close(&mut self, generation: u64) {
        if self.generation == generation {
            self.tx = None;
        }
    }

    /// Is a listener bound (and still receiving)?
    pub(crate) fn is_open(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    fn sender(&self) -> Option<mpsc::Sender<Accepted>> {
        self.tx.clone().filter(|tx| !tx.is_closed())
    }
}

/// Accepts incoming connections for as long as the endpoint lives: refuses
/// them while no listener is bound, otherwise handshakes each in its own
/// task (bounded by `settings`) and then serves its streams.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    sink: Arc<Mutex<Sink>>,
    settings: Settings,
) {
    let own = HandshakeBudget::new(settings.max_handshakes);
    let mut connections = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while connections.try_join_next().is_some() {}
        let (open, budget) = {
            let sink = lock(&sink);
            (sink.is_open(), sink.budget.clone())
        };
        if !open {
            tracing::debug!(remote = %incoming.remote_address(), "no quic listener bound; connection refused");
            incoming.refuse();
            continue;
        }
        let (budget, limit) = match budget {
            Some((b, t)) => (b, t.min(settings.handshake_timeout)),
            None => (own.clone(), settings.handshake_timeout),
        };
        // Silent for the whole QUIC handshake (quinn tells nothing of the
        // peer's progress): under a flood of handshakes that stall, the one
        // stalled the longest gives way.
        let ticket = budget.admit();
        connections.spawn(serve_connection(
            incoming,
            sink.clone(),
            limit,
            ticket,
            settings.max_streams,
        ));
    }
}

/// Completes one incoming connection's handshake, then hands each stream the
/// peer opens to the listener bound at that moment, and answers the peer's
/// requests for stream credit (see [`grant_credit`]).
async fn serve_connection(
    incoming: quinn::Incoming,
    sink: Arc<Mutex<Sink>>,
    limit: Duration,
    ticket: Ticket,
    max_streams: u32,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "quic connection failed before its handshake");
            return;
        }
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(limit, connecting) => r,
        () = ticket.evicted() => {
            tracing::debug!(%remote, "stalled quic handshake evicted by a newer one; connection dropped");
            return;
        }
    };
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "quic handshake failed; connection dropped");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, ?limit, "quic handshake timed out; connection dropped");
            return;
        }
    };
    // Each stream's masse handshake is counted on its own by the node.
    drop(ticket);
    let Some(fingerprint) = client_fingerprint(&conn) else {
        // Client authentication is mandatory, so this does not happen.
        tracing::debug!(%remote, "quic client without a usable certificate; connection closed");
        conn.close(
            VarInt::from_u32(NO_IDENTITY),
            b"client certificate required",
        );
        return;
    };
    tracing::debug!(%remote, peer_identity = %fingerprint.short(), "quic connection accepted");
    // Both end with the connection; on this task, so that the accept loop's
    // end ends them too.
    tokio::select! {
        () = serve_streams(&conn, remote, fingerprint, &sink) => {}
        () = grant_credit(&conn, max_streams) => {}
    }
}

/// Hands each stream the peer opens on `conn` to the listener bound at that
/// moment, until the connection ends.
async fn serve_streams(
    conn: &quinn::Connection,
    remote: SocketAddr,
    fingerprint: Fingerprint,
    sink: &Mutex<Sink>,
) {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "quic connection ended");
                return;
            }
        };
        let tx = lock(sink).sender();
        let Some(tx) = tx else {
            tracing::debug!(%remote, "no quic listener bound; stream reset");
            let _ = send.reset(VarInt::from_u32(NO_LISTENER));
            let _ = recv.stop(VarInt::from_u32(NO_LISTENER));
            continue;
        };
        tracing::trace!(%remote, stream = %send.id(), "quic stream accepted");
        let mut accepted = Accepted::new(Box::new(tokio::io::join(recv, send)), Some(remote));
        accepted.peer_identity = Some(fingerprint);
        // Waits while the listener's queue is full: the peer's further
        // streams then wait on its stream limit. Fails only if the listener
        // is gone (the stream is dropped).
        let _ = tx.send(accepted).await;
    }
}

/// Announces stream credit the connection holds back when the peer says it
/// is blocked on it ([`STREAMS_BLOCKED`], a datagram).
///
/// quinn announces the credit of closed streams (`MAX_STREAMS`) only once
/// more than an eighth of the limit has come back: with a limit of 8 a
/// single closed stream is never announced, and a dialer holding the other
/// 7 sees the connection full for as long as they stay open. Setting the
/// limit to 0 and back makes quinn announce what it holds at once (the
/// credit itself never shrinks: streams already allowed stay allowed).
async fn grant_credit(conn: &quinn::Connection, max_streams: u32) {
    while let Ok(datagram) = conn.read_datagram().await {
        if datagram[..] != STREAMS_BLOCKED[..] {
            tracing::debug!(remote = %conn.remote_address(), len = datagram.len(), "unknown quic datagram ignored");
            continue;
        }
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(max_streams));
    }
}

/// The fingerprint of the certificate the client presented.
fn client_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    peer_fingerprint(Some(&certs))
}

/// A bound QUIC listener: streams from the interface's accept loop.
pub(crate) struct QuicListener {
    /// Keeps the endpoint and its accept loop alive while bound.
    _shared: Arc<Shared>,
    sink: Arc<Mutex<Sink>>,
    generation: u64,
    rx: mpsc::Receiver<Accepted>,
    local: SocketAddr,
    advertise: Vec<SocketAddr>,
    include_loopback: bool,
}

impl QuicListener {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: Arc<Mutex<Sink>>,
        generation: u64,
        rx: mpsc::Receiver<Accepted>,
        local: SocketAddr,
        advertise: Vec<SocketAddr>,
        include_loopback: bool,
    ) -> Self {
        QuicListener {
            _shared: shared,
            sink,
            generation,
            rx,
            local,
            advertise,
            include_loopback,
        }
    }
}

impl fmt::Debug for QuicListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicListener")
            .field("local", &self.local)
            .field("advertise", &self.advertise)
            .field("include_loopback", &self.include_loopback)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        lock(&self.sink).close(self.generation);
    }
}

#[async_trait]
impl Listener for QuicListener {
    fn endpoints(&self) -> Vec<Endpoint> {
        masse_core::addr::advertised_endpoints(
            Protocol::QUIC,
            self.local,
            &self.advertise,
            self.include_loopback,
        )
    }

    async fn accept(&mut self) -> Result<Accepted> {
        self.rx.recv().await.ok_or(Error::Closed("quic listener"))
    }
}
