//! Accept loops and the acceptor side of the handshake.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::core::Core;
use super::secret::{self, Secret, Side};
use super::stream::{PeerStream, StreamInfo};
use crate::endpoint::Protocol;
use crate::error::{Error, RefuseCode, Result};
use crate::handshake::{self, Challenge, EXT_NONCE, Hello, Message, NONCE_LEN, Refuse, Welcome};
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
    let pending = Arc::new(Semaphore::new(core.config.max_pending_handshakes.max(1)));
    let check_every = (core.config.ttl / 3).max(Duration::from_millis(500));
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(acc) => match pending.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let core = core.clone();
                        let span = tracing::debug_span!("stream", direction = "inbound", remote = ?acc.remote_addr);
                        tokio::spawn(async move {
                            inbound(core, acc, protocol).await;
                            drop(permit);
                        }.instrument(span));
                    }
                    Err(_) => {
                        core.counters.handshakes_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(remote = ?acc.remote_addr, "too many handshakes in progress; dropping connection");
                    }
                },
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
            _ = core.stopped() => return,
        }
    }
}

/// Reads the Hello, checks it, answers, wraps and routes the stream. Any
/// failure closes this stream only, with a debug log.
async fn inbound(core: Arc<Core>, acc: Accepted, protocol: Protocol) {
    // Everything, wrappers included, under one deadline: a stalled peer costs
    // one permit for a bounded time.
    let deadline = core.config.handshake_timeout * 2;
    match tokio::time::timeout(deadline, handshake_inbound(&core, acc, protocol)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            core.counters
                .handshakes_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "inbound stream rejected");
        }
        Err(_) => {
            core.counters
                .handshakes_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(after = ?deadline, "inbound handshake timed out");
        }
    }
}

async fn handshake_inbound(core: &Arc<Core>, acc: Accepted, protocol: Protocol) -> Result<()> {
    let peer_identity = acc.peer_identity;
    let mut io = acc.io;
    let hello = match handshake::read_message(&mut io, core.config.handshake_timeout).await? {
        Message::Hello(h) => h,
        other => {
            return Err(Error::protocol(format!(
                "expected Hello, got {}",
                other.kind()
            )));
        }
    };
    let refusal = if hello.version != handshake::VERSION {
        Some((
            RefuseCode::Unsupported,
            format!(
                "protocol version {} is not supported (this node speaks {})",
                hello.version,
                handshake::VERSION
            ),
        ))
    } else if hello.namespace != core.namespace {
        Some((
            RefuseCode::WrongNamespace,
            format!("this is namespace {}", core.namespace),
        ))
    } else if hello.to != core.name {
        // The dialer's cached address is stale: tell it who we are.
        Some((RefuseCode::WrongPeer, core.name.to_string()))
    } else if let Some(s) = hello
        .service
        .as_deref()
        .filter(|s| !core.services.iter().any(|o| o == s))
    {
        Some((
            RefuseCode::NoSuchService,
            format!("{} does not offer service {s:?}", core.name),
        ))
    } else if !core.is_accepting() {
        Some((RefuseCode::Busy, "shutting down".to_owned()))
    } else {
        None
    };
    if let Some((code, reason)) = refusal {
        tracing::debug!(from = %hello.from, %code, %reason, "refusing stream");
        let _ =
            handshake::write_message(&mut io, &Message::Refuse(Refuse::new(code, reason.clone())))
                .await;
        return Err(Error::Refused { code, reason });
    }
    // On tls and quic the transport proved which certificate the dialer holds:
    // it must be the one the registry lists for the name it claims.
    if let Some(fingerprint) = peer_identity
        && !identity_matches(core, &hello.from, fingerprint).await?
    {
        let reason = format!(
            "certificate {} is not the one registered for {}",
            fingerprint.short(),
            hello.from
        );
        tracing::warn!(from = %hello.from, %reason, "refusing stream");
        let _ = handshake::write_message(
            &mut io,
            &Message::Refuse(Refuse::new(RefuseCode::Unauthorized, reason.clone())),
        )
        .await;
        return Err(Error::Unauthorized { reason });
    }
    if let Some(secret) = &core.config.secret {
        challenge(core, secret, &hello, &mut io).await?;
    }
    let Ok(slot) = core.route_for(hello.service.as_deref()).try_reserve_owned() else {
        let reason = "incoming queue is full".to_owned();
        let _ = handshake::write_message(
            &mut io,
            &Message::Refuse(Refuse::new(RefuseCode::Busy, reason.clone())),
        )
        .await;
        return Err(Error::Refused {
            code: RefuseCode::Busy,
            reason,
        });
    };
    handshake::write_message(&mut io, &Message::Welcome(Welcome::new(core.instance))).await?;
    let ctx = StreamContext::new(
        core.namespace.clone(),
        core.name.clone(),
        hello.from.clone(),
        hello.from_instance,
        Direction::Inbound,
        protocol,
        hello.service.clone(),
    );
    for w in &core.wrappers {
        io = w.wrap(io, &ctx).await?;
    }
    let info = StreamInfo {
        peer: hello.from,
        peer_instance: hello.from_instance,
        record: None,
        direction: Direction::Inbound,
        service: hello.service,
        protocol,
    };
    slot.send(PeerStream::new(core.clone(), io, info));
    Ok(())
}

/// Does the registry list `fingerprint` for `from`? A mismatch in the cache is
/// checked once more against the backend (the peer may have just restarted).
async fn identity_matches(
    core: &Arc<Core>,
    from: &PeerName,
    fingerprint: Fingerprint,
) -> Result<bool> {
    let pattern = Pattern::from(from);
    let listed =
        |records: &[PeerRecord]| records.first().and_then(|r| r.identity) == Some(fingerprint);
    let cached = core
        .registry
        .lookup_cached(&core.namespace, &pattern)
        .await?;
    if listed(&cached.records) {
        return Ok(true);
    }
    core.registry.invalidate(&core.namespace, from);
    let fresh = core
        .registry
        .lookup_cached(&core.namespace, &pattern)
        .await?;
    Ok(listed(&fresh.records))
}

/// The acceptor's half of the namespace-secret challenge-response.
async fn challenge(core: &Arc<Core>, secret: &Secret, hello: &Hello, io: &mut BoxIo) -> Result<()> {
    let refuse = async |io: &mut BoxIo, reason: String| {
        tracing::warn!(from = %hello.from, %reason, "refusing stream");
        let _ = handshake::write_message(
            io,
            &Message::Refuse(Refuse::new(RefuseCode::Unauthorized, reason.clone())),
        )
        .await;
        Err(Error::Unauthorized { reason })
    };
    let Some(dialer_nonce) = hello
        .extensions
        .get(EXT_NONCE)
        .and_then(|v| <[u8; NONCE_LEN]>::try_from(v).ok())
    else {
        return refuse(
            io,
            "this namespace requires the namespace secret".to_owned(),
        )
        .await;
    };
    let nonce = secret::nonce();
    let proof = secret.prove(Side::Acceptor, hello, core.instance, &dialer_nonce, &nonce);
    handshake::write_message(
        io,
        &Message::Challenge(Challenge::new(core.instance, nonce, proof)),
    )
    .await?;
    match handshake::read_message(io, core.config.handshake_timeout).await? {
        Message::Proof(p)
            if secret.verify(
                Side::Dialer,
                hello,
                core.instance,
                &dialer_nonce,
                &nonce,
                &p.proof,
            ) =>
        {
            Ok(())
        }
        Message::Proof(_) => refuse(io, "wrong namespace secret".to_owned()).await,
        other => Err(Error::protocol(format!(
            "expected Proof, got {}",
            other.kind()
        ))),
    }
}
