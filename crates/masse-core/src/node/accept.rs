//! Accept loops and the acceptor side of the handshake.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Instrument;

use super::core::{Core, Destination, Handler};
use super::pipe::{FrameBuf, Gate};
use super::stream::{PeerStream, StreamInfo};
use crate::endpoint::Protocol;
use crate::error::{Error, RefuseCode, Result};
use crate::handshake::{self, Acceptor, AcceptorStep, IdentityCheck, Message, Rejection};
use crate::interface::{Accepted, Listener};
use crate::io::BoxIo;
use crate::name::PeerName;
use crate::pattern::Pattern;
use crate::record::{Fingerprint, PeerRecord};
use crate::wrapper::{Direction, StreamContext};

/// Accepts on one listener until the node stops; each connection's handshake
/// runs in a task of its own, at most `max_pending_handshakes` at once.
pub(crate) async fn accept_loop(
    core: Arc<Core>,
    mut listener: Box<dyn Listener>,
    index: usize,
    protocol: Protocol,
) {
    let check_every = (core.config.ttl / 3).max(Duration::from_millis(500));
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    let stopped = core.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(acc) => {
                    let span = tracing::debug_span!("stream", direction = "inbound", remote = ?acc.remote_addr);
                    if acc.is_deferred() {
                        // The transport's own handshake (TLS) takes round
                        // trips: straight to a task of its own.
                        tokio::spawn(inbound(core.clone(), acc, protocol.clone()).instrument(span));
                        continue;
                    }
                    let mut handshake = Box::pin(inbound(core.clone(), acc, protocol.clone()).instrument(span.clone()));
                    // The Hello is usually here already: run the handshake
                    // right away, and give it a task only if it must wait.
                    // A `serve` handler always runs on a task of its own,
                    // never on this loop's.
                    match poll_once(handshake.as_mut()).await {
                        std::task::Poll::Ready(Some((handler, stream))) => {
                            tokio::spawn(handler(stream).instrument(span));
                        }
                        std::task::Poll::Ready(None) => {}
                        std::task::Poll::Pending => {
                            tokio::spawn(async move {
                                if let Some((handler, stream)) = handshake.await {
                                    handler(stream).await;
                                }
                            }.instrument(span));
                        }
                    }
                }
                Err(Error::Closed(_)) => {
                    tracing::debug!(%protocol, "listener closed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%protocol, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = check.tick() => {
                // Interface addresses can change under us (DHCP): re-publish if so.
                let now = listener.endpoints();
                let changed = {
                    let mut all = core.listener_endpoints.lock().unwrap_or_else(|p| p.into_inner());
                    if all.get(index).is_some_and(|old| *old != now) {
                        all[index] = now;
                        true
                    } else {
                        false
                    }
                };
                if changed {
                    super::lifecycle::republish_endpoints(&core).await;
                }
            }
            () = &mut stopped => {
                listener.close().await;
                return;
            }
        }
    }
}

/// Polls `fut` once with the current task's waker (a spurious wake-up of
/// the caller later is harmless).
async fn poll_once<F: std::future::Future + Unpin>(mut fut: F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx))).await
}

/// Finishes the transport's handshake if the listener deferred it, then
/// reads the Hello, checks it, answers, wraps and routes the stream: the
/// `serve` handler and the stream to run it on, if it goes to one (a
/// deferred stream's task runs the handler itself). Any failure closes this
/// stream only, with a debug log.
async fn inbound(
    core: Arc<Core>,
    acc: Accepted,
    protocol: Protocol,
) -> Option<(Handler, PeerStream)> {
    let deferred = acc.is_deferred();
    // Everything, the transport's handshake and the wrappers included,
    // under one deadline: a stalled peer holds its place in the budget for
    // a bounded time (and gives it up to a newer connection if the budget
    // is full).
    let deadline = core.config.handshake_timeout;
    let result = tokio::time::timeout(deadline, async {
        // A failed transport handshake was logged by its listener.
        let Some(mut acc) = acc.finish().await else {
            return Ok(None);
        };
        // The listener's own handshake's ticket, if it ran one.
        let ticket = acc
            .ticket
            .take()
            .unwrap_or_else(|| core.handshake_budget.admit());
        handshake_inbound(&core, acc, protocol, &ticket).await
    })
    .await;
    let to_serve = match result {
        Ok(Ok(to_serve)) => to_serve,
        Ok(Err(e)) => {
            core.counters
                .handshakes_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "inbound stream rejected");
            None
        }
        Err(_) => {
            core.counters
                .handshakes_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(after = ?deadline, "inbound handshake timed out");
            None
        }
    };
    match to_serve {
        Some((handler, stream)) if deferred => {
            handler(stream).await;
            None
        }
        other => other,
    }
}

/// Runs the [`Acceptor`] over the connection: reads frames, answers the
/// identity check and admission it asks for, writes what it says.
async fn handshake_inbound(
    core: &Arc<Core>,
    acc: Accepted,
    protocol: Protocol,
    ticket: &crate::Ticket,
) -> Result<Option<(Handler, PeerStream)>> {
    let mut io = acc.io;
    let credentials = acc.peer_credentials;
    let mut frames = FrameBuf::default();
    // A nonce only matters to the namespace secret's proofs.
    let nonce = match &core.config.secret {
        Some(_) => handshake::nonce(),
        None => [0; handshake::NONCE_LEN],
    };
    let mut acceptor = Acceptor::new(core.local.clone(), core.status(), acc.peer_identity, nonce);
    let mut step = acceptor.message(read_frame(core, &mut io, &mut frames, ticket).await?);
    loop {
        step = match step {
            AcceptorStep::Send(msg) => {
                handshake::write_message(&mut io, &msg).await?;
                acceptor.message(read_frame(core, &mut io, &mut frames, ticket).await?)
            }
            AcceptorStep::CheckIdentity { name, fingerprint } => {
                acceptor.identity_checked(check_identity(core, &name, fingerprint).await)
            }
            AcceptorStep::Admit { welcome } => {
                let Some(hello) = acceptor.hello().cloned() else {
                    return Err(Error::protocol("admitted without a Hello"));
                };
                let Some(destination) = core.admit(hello.service.as_deref()) else {
                    core.counters.busy_refusals.fetch_add(1, Ordering::Relaxed);
                    step = acceptor.admitted(Err(Rejection::Busy("incoming queue is full".into())));
                    continue;
                };
                let (gate, handle) =
                    Gate::new(io, std::mem::take(&mut frames), &Message::Welcome(welcome));
                let ctx = StreamContext::new(
                    core.namespace.clone(),
                    core.name.clone(),
                    hello.from.clone(),
                    hello.from_instance,
                    Direction::Inbound,
                    protocol.clone(),
                    hello.service.clone(),
                )
                .with_peer_credentials(credentials);
                let wrapped = match wrap_all(core, Box::new(gate), &ctx).await {
                    Ok(io) => io,
                    Err(e) => {
                        tracing::debug!(from = %hello.from, error = %e, "a wrapper refused the stream");
                        // The connection comes back if nothing was written
                        // to it yet; else it just closes.
                        match handle.take_back() {
                            Some(raw) => io = raw,
                            None => return Err(e),
                        }
                        step = acceptor.admitted(Err(Rejection::Wrapper(e.to_string())));
                        continue;
                    }
                };
                match acceptor.admitted(Ok(())) {
                    AcceptorStep::Open => {}
                    _ => return Err(Error::protocol("admission did not open the stream")),
                }
                // The Welcome goes out with the first bytes, before a read
                // that would wait, or shortly.
                handle.arm(&core.hold_back, core.config.handshake_timeout);
                let info = StreamInfo {
                    peer: hello.from,
                    peer_instance: hello.from_instance,
                    reached: None,
                    established: None,
                    direction: Direction::Inbound,
                    service: hello.service,
                    protocol,
                    peer_credentials: credentials,
                };
                let stream = PeerStream::new(core.clone(), wrapped, info);
                return Ok(match destination {
                    Destination::Queue(slot) => {
                        slot.send(stream);
                        None
                    }
                    Destination::Handler(handler) => Some((handler, stream)),
                });
            }
            AcceptorStep::Open => return Ok(None),
            AcceptorStep::Refuse { refuse, error } => {
                let from = acceptor.hello().map(|h| h.from.to_string());
                match refuse.code {
                    RefuseCode::Unauthorized | RefuseCode::RegistryUnavailable => {
                        tracing::warn!(from = ?from, code = %refuse.code, reason = %refuse.reason, "refusing stream");
                    }
                    _ => {
                        tracing::debug!(from = ?from, code = %refuse.code, reason = %refuse.reason, "refusing stream");
                    }
                }
                let _ = handshake::write_message(&mut io, &Message::Refuse(refuse)).await;
                return Err(error);
            }
            AcceptorStep::Close(e) => return Err(e),
        };
    }
}

/// Reads the next handshake frame (silent in the handshake budget until it
/// comes, then waiting for a place to go on; within the deadline
/// [`inbound`] keeps over the whole handshake), unless a newer connection
/// evicts this one from the budget's silent pool first: then the dialer is
/// told `Busy`, not left to guess from a closed socket.
async fn read_frame(
    core: &Core,
    io: &mut BoxIo,
    frames: &mut FrameBuf,
    ticket: &crate::Ticket,
) -> Result<Message> {
    ticket.waiting();
    tokio::select! {
        m = frames.read(io) => {
            ticket.heard().await;
            return m;
        }
        () = ticket.evicted() => {}
    }
    core.counters.busy_refusals.fetch_add(1, Ordering::Relaxed);
    let refuse = Message::Refuse(handshake::Refuse::new(
        RefuseCode::Busy,
        "too many handshakes in progress",
    ));
    // The socket is idle or slow: do not wait on it.
    let _ = tokio::time::timeout(EVICTED_WRITE, handshake::write_message(io, &refuse)).await;
    Err(Error::Refused {
        code: RefuseCode::Busy,
        reason: "evicted by a newer handshake".into(),
    })
}

/// How long an evicted handshake may take to write its `Busy` refusal.
const EVICTED_WRITE: Duration = Duration::from_millis(50);

/// Runs the node's wrapper chain, outermost last.
async fn wrap_all(core: &Core, mut io: BoxIo, ctx: &StreamContext) -> Result<BoxIo> {
    for w in &core.wrappers {
        io = w.wrap(io, ctx).await?;
    }
    Ok(io)
}

/// Is `fingerprint` the certificate registered for `from`? From the cache
/// first; a mismatch there is checked once more against the backend (the
/// peer may have just restarted).
async fn check_identity(
    core: &Arc<Core>,
    from: &PeerName,
    fingerprint: Fingerprint,
) -> IdentityCheck {
    let pattern = Pattern::from(from);
    let listed =
        |records: &[PeerRecord]| records.first().and_then(|r| r.identity) == Some(fingerprint);
    let cached = core.registry.lookup_cached(&core.namespace, &pattern).await;
    if cached.as_ref().is_ok_and(|l| listed(&l.records)) {
        return IdentityCheck::Listed;
    }
    core.registry.invalidate(&core.namespace, from);
    match core.registry.lookup_cached(&core.namespace, &pattern).await {
        Ok(fresh) if listed(&fresh.records) => IdentityCheck::Listed,
        Ok(_) => IdentityCheck::NotListed,
        Err(e) => IdentityCheck::Unavailable(e.to_string()),
    }
}
