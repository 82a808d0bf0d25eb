//! The acceptor's side of the handshake, without I/O.

use std::sync::Arc;

use super::codec::{Challenge, Message, NONCE_LEN, Refuse, VERSION, Welcome};
use super::secret::{Secret, Side};
use crate::error::{Error, RefuseCode};
use crate::name::{Namespace, PeerName};
use crate::record::{Fingerprint, InstanceId};

/// Who the accepting node is; shared by all its handshakes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Local {
    /// The node's namespace.
    pub namespace: Namespace,
    /// The node's name.
    pub name: PeerName,
    /// The node's instance.
    pub instance: InstanceId,
    /// The services it offers.
    pub services: Vec<String>,
    /// The namespace secret, if the namespace has one.
    pub secret: Option<Secret>,
}

impl Local {
    /// A node offering no service, without a namespace secret.
    pub fn new(namespace: Namespace, name: PeerName, instance: InstanceId) -> Self {
        Local {
            namespace,
            name,
            instance,
            services: Vec::new(),
            secret: None,
        }
    }

    /// Offers `services`.
    pub fn with_services(mut self, services: Vec<String>) -> Self {
        self.services = services;
        self
    }

    /// Requires the namespace secret.
    pub fn with_secret(mut self, secret: Option<Secret>) -> Self {
        self.secret = secret;
        self
    }
}

/// The node's state when a connection arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// False once the node is shutting down.
    pub accepting: bool,
    /// True once another instance took the node's name over.
    pub name_lost: bool,
}

impl Status {
    /// Running and holding its name.
    pub const SERVING: Status = Status {
        accepting: true,
        name_lost: false,
    };

    /// A status from both flags.
    pub fn new(accepting: bool, name_lost: bool) -> Self {
        Status {
            accepting,
            name_lost,
        }
    }
}

/// The answer to [`AcceptorStep::CheckIdentity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCheck {
    /// The registry (or the node's cache of it) lists this certificate for the name.
    Listed,
    /// It lists another certificate, or none, or no such peer.
    NotListed,
    /// Neither the cache nor the registry could answer; the reason is logged
    /// and sent to the dialer.
    Unavailable(String),
}

/// Why the node could not take a stream that passed every check of the
/// handshake (the answer to [`AcceptorStep::Admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The queue the stream would go to is full.
    Busy(String),
    /// A wrapper failed; its error, as text.
    Wrapper(String),
}

/// What the glue does next; every method of [`Acceptor`] returns one.
#[derive(Debug)]
#[must_use]
pub enum AcceptorStep {
    /// Write this message, then feed the dialer's next message to
    /// [`Acceptor::message`].
    Send(Message),
    /// Check that the transport's peer certificate is the one registered for
    /// `name`, then call [`Acceptor::identity_checked`].
    CheckIdentity {
        /// The name the dialer claims.
        name: PeerName,
        /// The certificate it proved it holds.
        fingerprint: Fingerprint,
    },
    /// Every check passed: reserve the stream's place and run the wrapper
    /// chain over a stream that writes `welcome` before anything else, then
    /// call [`Acceptor::admitted`].
    Admit {
        /// The answer to write before the first byte the wrappers or the
        /// application write, or once the wrappers are done.
        welcome: Welcome,
    },
    /// The stream is open: make sure the `Welcome` is written, hand the
    /// stream over.
    Open,
    /// Write `refuse` (best effort) and close; `error` is what the node logs
    /// and counts.
    Refuse {
        /// The message for the dialer.
        refuse: Refuse,
        /// The same, as an error.
        error: Error,
    },
    /// The dialer broke the protocol: close without an answer.
    Close(Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    CheckingIdentity,
    AwaitProof { dialer_nonce: [u8; NONCE_LEN] },
    Admitting,
    Done,
}

/// The acceptor's handshake as a state machine: it reads decoded messages,
/// identity checks and admission results, and says what to send and when the
/// stream is open or refused. No I/O, no clock, no randomness (the nonce comes
/// in through [`new`](Self::new)), so it is tested without sockets.
///
/// Checks, in order: the version, the namespace, the dialed name, the name
/// not lost to a takeover, the expected instance, the node accepting, the
/// service; then the transport certificate
/// ([`CheckIdentity`](AcceptorStep::CheckIdentity)), then the namespace secret
/// (Challenge/Proof), then admission (queue and wrappers).
#[derive(Debug)]
pub struct Acceptor {
    local: Arc<Local>,
    status: Status,
    peer_identity: Option<Fingerprint>,
    nonce: [u8; NONCE_LEN],
    hello: Option<super::codec::Hello>,
    state: State,
}

impl Acceptor {
    /// A handshake for a new connection: `peer_identity` is the certificate
    /// the transport proved the dialer holds (TLS, QUIC), `nonce` a fresh
    /// random value for the secret's challenge.
    pub fn new(
        local: Arc<Local>,
        status: Status,
        peer_identity: Option<Fingerprint>,
        nonce: [u8; NONCE_LEN],
    ) -> Self {
        Acceptor {
            local,
            status,
            peer_identity,
            nonce,
            hello: None,
            state: State::AwaitHello,
        }
    }

    /// The dialer's `Hello`, once received.
    pub fn hello(&self) -> Option<&super::codec::Hello> {
        self.hello.as_ref()
    }

    /// True once the handshake ended (opened, refused or closed).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds one message from the dialer.
    pub fn message(&mut self, msg: Message) -> AcceptorStep {
        match (self.state, msg) {
            (State::AwaitHello, Message::Hello(hello)) => self.on_hello(hello),
            (State::AwaitProof { dialer_nonce }, Message::Proof(p)) => {
                let (Some(secret), Some(hello)) = (&self.local.secret, &self.hello) else {
                    return self.close("a Proof without a challenge");
                };
                if secret.verify(
                    Side::Dialer,
                    hello,
                    self.local.instance,
                    &dialer_nonce,
                    &self.nonce,
                    &p.proof,
                ) {
                    self.admit()
                } else {
                    self.refuse(RefuseCode::Unauthorized, "wrong namespace secret".into())
                }
            }
            (State::Done, msg) => self.close(&format!("{} after the handshake ended", msg.kind())),
            (state, msg) => self.close(&format!(
                "expected {}, got {}",
                match state {
                    State::AwaitHello => "Hello",
                    State::AwaitProof { .. } => "Proof",
                    _ => "no message",
                },
                msg.kind()
            )),
        }
    }

    /// The answer to [`AcceptorStep::CheckIdentity`].
    pub fn identity_checked(&mut self, check: IdentityCheck) -> AcceptorStep {
        if self.state != State::CheckingIdentity {
            return self.close("an identity check nobody asked for");
        }
        let (from, short) = match (&self.hello, self.peer_identity) {
            (Some(h), Some(f)) => (h.from.clone(), f.short()),
            _ => return self.close("an identity check without a Hello"),
        };
        match check {
            IdentityCheck::Listed => self.after_identity(),
            IdentityCheck::NotListed => self.refuse(
                RefuseCode::Unauthorized,
                format!("certificate {short} is not the one registered for {from}"),
            ),
            IdentityCheck::Unavailable(why) => self.refuse(
                RefuseCode::RegistryUnavailable,
                format!("cannot check the certificate of {from} now: {why}"),
            ),
        }
    }

    /// The answer to [`AcceptorStep::Admit`].
    pub fn admitted(&mut self, result: Result<(), Rejection>) -> AcceptorStep {
        if self.state != State::Admitting {
            return self.close("an admission nobody asked for");
        }
        match result {
            Ok(()) => {
                self.state = State::Done;
                AcceptorStep::Open
            }
            Err(Rejection::Busy(reason)) => self.refuse(RefuseCode::Busy, reason),
            Err(Rejection::Wrapper(reason)) => self.refuse(RefuseCode::WrapperFailed, reason),
        }
    }

    fn on_hello(&mut self, hello: super::codec::Hello) -> AcceptorStep {
        let local = &self.local;
        let expected = match hello.expected_instance() {
            Ok(i) => i,
            Err(e) => {
                self.state = State::Done;
                return AcceptorStep::Close(e);
            }
        };
        let refusal = if hello.version != VERSION {
            Some((
                RefuseCode::Unsupported,
                format!(
                    "protocol version {} is not supported (this node speaks {VERSION})",
                    hello.version
                ),
            ))
        } else if hello.namespace != local.namespace {
            Some((
                RefuseCode::WrongNamespace,
                format!("this is namespace {}", local.namespace),
            ))
        } else if hello.to != local.name {
            // The dialer's record is stale: say who we are.
            Some((RefuseCode::WrongPeer, local.name.to_string()))
        } else if self.status.name_lost {
            Some((
                RefuseCode::NameLost,
                format!(
                    "instance {} lost {} to another instance",
                    local.instance, local.name
                ),
            ))
        } else if let Some(want) = expected.filter(|i| *i != local.instance) {
            Some((
                RefuseCode::WrongInstance,
                format!("{} is instance {}, not {want}", local.name, local.instance),
            ))
        } else if !self.status.accepting {
            Some((RefuseCode::Busy, "shutting down".to_owned()))
        } else {
            hello
                .service
                .as_deref()
                .filter(|s| !local.services.iter().any(|o| o == s))
                .map(|s| {
                    (
                        RefuseCode::NoSuchService,
                        format!("{} does not offer service {s:?}", local.name),
                    )
                })
        };
        let from = hello.from.clone();
        self.hello = Some(hello);
        if let Some((code, reason)) = refusal {
            return self.refuse(code, reason);
        }
        match self.peer_identity {
            Some(fingerprint) => {
                self.state = State::CheckingIdentity;
                AcceptorStep::CheckIdentity {
                    name: from,
                    fingerprint,
                }
            }
            None => self.after_identity(),
        }
    }

    fn after_identity(&mut self) -> AcceptorStep {
        let Some(secret) = &self.local.secret else {
            return self.admit();
        };
        let Some(hello) = &self.hello else {
            return self.close("no Hello");
        };
        let Some(dialer_nonce) = hello.nonce() else {
            return self.refuse(
                RefuseCode::Unauthorized,
                "this namespace requires the namespace secret".into(),
            );
        };
        let proof = secret.prove(
            Side::Acceptor,
            hello,
            self.local.instance,
            &dialer_nonce,
            &self.nonce,
        );
        self.state = State::AwaitProof { dialer_nonce };
        AcceptorStep::Send(Message::Challenge(Challenge::new(
            self.local.instance,
            self.nonce,
            proof,
        )))
    }

    fn admit(&mut self) -> AcceptorStep {
        self.state = State::Admitting;
        AcceptorStep::Admit {
            welcome: Welcome::new(self.local.instance),
        }
    }

    /// The one place a refusal is made.
    fn refuse(&mut self, code: RefuseCode, reason: String) -> AcceptorStep {
        self.state = State::Done;
        let refuse = Refuse::new(code, reason);
        let error = match code {
            RefuseCode::Unauthorized => Error::Unauthorized {
                reason: refuse.reason.clone(),
            },
            _ => Error::Refused {
                code,
                reason: refuse.reason.clone(),
            },
        };
        AcceptorStep::Refuse { refuse, error }
    }

    fn close(&mut self, what: &str) -> AcceptorStep {
        self.state = State::Done;
        AcceptorStep::Close(Error::protocol(format!("handshake: {what}")))
    }
}
