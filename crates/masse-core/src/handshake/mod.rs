//! The per-stream handshake (DESIGN §5): who is dialing whom, and may it.
//!
//! Built like quinn-proto: the [`codec`] turns bytes into
//! [`Message`]s, and two state machines without I/O, [`Dialer`] and
//! [`Acceptor`], decide what to send and when the stream is open. The node's
//! async glue only reads a frame, feeds it, writes what comes out, and runs
//! the lookups and wrappers the machines ask for.
//!
//! # Message sequences
//!
//! Plain (no namespace secret, TCP): the dialer writes its `Hello` and may
//! write application data right behind it; the acceptor checks the `Hello`,
//! runs its wrappers, then answers. The dialer reads the answer before the
//! first byte of the acceptor's data, so a connect by name plus an echo costs
//! the round trips of a raw connect plus an echo.
//!
//! Each side holds its message back to send it in one write with the first
//! data: the dialer's `Hello` goes out with the application's first write
//! (or before its first read, on flush or shutdown), the acceptor's `Welcome`
//! with the first reply (or before a read that would wait, or on flush). If
//! the application does none of these within a millisecond, a timer sends
//! the message alone, so an idle stream still opens on both ends.
//!
//! ```text
//! dialer                                   acceptor
//!   Hello{to, expected instance}, data… ───▶ check version, namespace, name,
//!                                            name not lost, instance, service
//!                                            admit: queue slot, wrappers
//!                              ◀──────────── Welcome{instance}, data…
//! ```
//!
//! Refused: any check, the queue (`Busy`) or a wrapper (`WrapperFailed`) can
//! refuse; the acceptor writes one `Refuse{code, reason}` and closes, the
//! dialer's first read or write (or
//! [`PeerStream::established`](crate::PeerStream::established)) fails with
//! the refusal's error. Codes that say the dialer's record is stale
//! (`WrongPeer`, `WrongInstance`, `NameLost`, see
//! [`RefuseCode::is_stale`](crate::RefuseCode::is_stale)) make the dialer
//! drop its cached record, look the name up once more and, if the fresh record
//! differs, dial it and replay the data it had written, so the application
//! never sees the stale address.
//!
//! ```text
//!   Hello, data… ──────────────────────────▶
//!                              ◀──────────── Refuse{code, reason}, close
//! ```
//!
//! TLS and QUIC, pinned: the transport handshake proves which certificate
//! each side holds and the dialer checks the acceptor's against the record it
//! dialed; the acceptor asks its node whether the dialer's certificate is
//! the one registered for the name in the `Hello`
//! ([`AcceptorStep::CheckIdentity`]) before admitting, from its cache first.
//! The sequence is the plain one; a mismatch is `Refuse{Unauthorized}`, a
//! registry it cannot reach while the cache does not know the dialer is
//! `Refuse{RegistryUnavailable}`.
//!
//! With a namespace secret (an HMAC-SHA-256 challenge-response): the dialer's
//! `Hello` carries a fresh nonce ([`EXT_NONCE`]); the acceptor answers with a
//! [`Challenge`] (its instance, its own fresh nonce, and a proof that it
//! knows the secret); the dialer checks it and answers with a [`Proof`], then
//! may write data at once. Both proofs cover both nonces and every field of
//! the `Hello`, so nothing can be replayed or redirected to another name. One
//! round trip more than the plain sequence.
//!
//! ```text
//!   Hello{nonce} ──────────────────────────▶
//!                              ◀──────────── Challenge{instance, nonce, proof}
//!   Proof, data… ──────────────────────────▶ verify, admit
//!                              ◀──────────── Welcome | Refuse
//! ```
//!
//! # For wrapper authors
//!
//! On the accepting side the wrappers run *before* the answer: a wrapper may
//! read what the dialer's wrappers wrote (a token, a version) and fail, and
//! the dialer gets `Refuse{WrapperFailed, <the wrapper's error>}`. The
//! `Welcome` goes out just before the first byte any acceptor wrapper writes,
//! or when the chain is done: a wrapper that fails after writing can no
//! longer refuse, its stream just closes. So check first, write after. On
//! the dialing side the wrappers run over a stream whose first read returns
//! the acceptor's answer first (or fails with the refusal); a wrapper that
//! only writes lets `connect` return without waiting for it. A wrapper's
//! `poll_flush` must flush the stream it wraps.

mod acceptor;
pub mod codec;
mod dialer;
mod secret;

pub use acceptor::{Acceptor, AcceptorStep, IdentityCheck, Local, Rejection, Status};
pub use codec::{
    Challenge, DEFAULT_DEADLINE, EXT_INSTANCE, EXT_NONCE, Extensions, Hello, MAGIC, MAX_EXTENSIONS,
    MAX_FRAME, MAX_REASON, Message, NONCE_LEN, PROOF_LEN, Proof, Refuse, VERSION, Welcome, decode,
    encode, read_message, write_message,
};
pub use dialer::{Dialer, DialerStep, refusal};
pub use secret::Secret;
pub(crate) use secret::nonce;

#[cfg(test)]
mod tests;
