//! The dialer's side of the handshake, without I/O.

use super::codec::{EXT_NONCE, Hello, Message, NONCE_LEN, Proof, Refuse};
use super::secret::{Secret, Side};
use crate::error::{Error, RefuseCode};
use crate::record::InstanceId;

/// What the glue does next; [`Dialer::message`] returns one.
#[derive(Debug)]
#[must_use]
pub enum DialerStep {
    /// Write this message (the secret's `Proof`); application data may
    /// follow it at once, then feed the next message.
    Send(Message),
    /// The acceptor took the stream; it is that instance.
    Open {
        /// The acceptor's instance.
        instance: InstanceId,
    },
    /// The handshake failed: a refusal (as its typed error) or a protocol
    /// violation.
    Fail(Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hello sent: a Welcome, a Refuse or (with a secret) a Challenge comes next.
    AwaitReply,
    /// Proof sent to this instance: a Welcome or a Refuse comes next.
    AwaitVerdict {
        challenged_by: InstanceId,
    },
    Done,
}

/// The dialer's handshake as a state machine: it makes the `Hello`, takes
/// the acceptor's messages and says what to send and how the handshake ended.
/// No I/O, no clock, no randomness (the nonce comes in through
/// [`new`](Self::new)).
///
/// Without a namespace secret the dialer may write application data right
/// after the `Hello` ([`pipelines`](Self::pipelines)): the acceptor's verdict
/// is read before the first byte of its data. With a secret the `Challenge`
/// must be answered first, one round trip.
#[derive(Debug)]
pub struct Dialer {
    hello: Hello,
    secret: Option<Secret>,
    nonce: [u8; NONCE_LEN],
    state: State,
}

impl Dialer {
    /// A handshake that will send `hello` (with the secret's nonce added if
    /// there is a `secret`).
    pub fn new(mut hello: Hello, secret: Option<Secret>, nonce: [u8; NONCE_LEN]) -> Self {
        if secret.is_some() {
            // 19 bytes: always fits.
            let _ = hello.extensions.insert(EXT_NONCE, nonce.to_vec());
        }
        Dialer {
            hello,
            secret,
            nonce,
            state: State::AwaitReply,
        }
    }

    /// The `Hello` to send first.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// True if application data may follow the `Hello` at once (no
    /// challenge to answer first).
    pub fn pipelines(&self) -> bool {
        self.secret.is_none()
    }

    /// True once the handshake ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds one message from the acceptor.
    pub fn message(&mut self, msg: Message) -> DialerStep {
        let to = &self.hello.to;
        match (self.state, msg) {
            (State::AwaitReply, Message::Challenge(c)) => {
                let Some(secret) = &self.secret else {
                    return self.fail(Error::Unauthorized {
                        reason: format!(
                            "{to} requires the namespace secret, which this node does not have"
                        ),
                    });
                };
                if !secret.verify(
                    Side::Acceptor,
                    &self.hello,
                    c.instance,
                    &self.nonce,
                    &c.nonce,
                    &c.proof,
                ) {
                    return self.fail(Error::Unauthorized {
                        reason: format!("{to} could not prove the namespace secret"),
                    });
                }
                if let Err(e) = self.check_instance(c.instance, "Challenge") {
                    return self.fail(e);
                }
                let proof =
                    secret.prove(Side::Dialer, &self.hello, c.instance, &self.nonce, &c.nonce);
                self.state = State::AwaitVerdict {
                    challenged_by: c.instance,
                };
                DialerStep::Send(Message::Proof(Proof::new(proof)))
            }
            (State::AwaitReply, Message::Welcome(_)) if self.secret.is_some() => {
                self.fail(Error::Unauthorized {
                    reason: format!("{to} did not prove the namespace secret"),
                })
            }
            (State::AwaitReply, Message::Welcome(w)) => self.open(w.instance),
            (State::AwaitVerdict { challenged_by }, Message::Welcome(w)) => {
                if w.instance == challenged_by {
                    self.open(w.instance)
                } else {
                    self.fail(Error::protocol(
                        "Welcome from another instance than the Challenge",
                    ))
                }
            }
            (State::AwaitReply | State::AwaitVerdict { .. }, Message::Refuse(r)) => {
                let e = refusal(to, r);
                self.fail(e)
            }
            (State::Done, msg) => self.fail(Error::protocol(format!(
                "handshake: {} after the handshake ended",
                msg.kind()
            ))),
            (_, msg) => self.fail(Error::protocol(format!(
                "handshake: expected Welcome or Refuse, got {}",
                msg.kind()
            ))),
        }
    }

    fn check_instance(&self, got: InstanceId, what: &str) -> Result<(), Error> {
        match self.hello.expected_instance() {
            Ok(Some(want)) if want != got => Err(Error::protocol(format!(
                "handshake: {what} from instance {got}, the Hello asked for {want}"
            ))),
            _ => Ok(()),
        }
    }

    fn open(&mut self, instance: InstanceId) -> DialerStep {
        if let Err(e) = self.check_instance(instance, "Welcome") {
            return self.fail(e);
        }
        self.state = State::Done;
        DialerStep::Open { instance }
    }

    fn fail(&mut self, e: Error) -> DialerStep {
        self.state = State::Done;
        DialerStep::Fail(e)
    }
}

/// The one place a refusal becomes an error on the dialing side.
pub fn refusal(to: &crate::name::PeerName, r: Refuse) -> Error {
    match r.code {
        RefuseCode::WrongPeer => Error::WrongPeer {
            expected: to.to_string(),
            actual: r.reason,
        },
        RefuseCode::Unauthorized => Error::Unauthorized {
            reason: format!("{to} refused: {}", r.reason),
        },
        code => Error::Refused {
            code,
            reason: r.reason,
        },
    }
}
