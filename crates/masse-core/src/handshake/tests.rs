//! A [`Dialer`] and an [`Acceptor`] driven against each other in memory, every
//! message through the wire codec: properties over every combination of the
//! handshake's inputs, with the outcome computed independently from the
//! documented check order, and unit tests for the edges.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::error::{Error, RefuseCode};
use crate::name::{Namespace, PeerName};
use crate::record::{Fingerprint, InstanceId};

const KEY: &[u8] = b"the namespace secret, 32 bytes!!";
const OTHER_KEY: &[u8] = b"another secret of the same size!";
const ACCEPTOR: u128 = 0xacce;
const OTHER_INSTANCE: u128 = 0x0e1;
const DIALER: u128 = 0xd1a1;
const FINGERPRINT: Fingerprint = Fingerprint([7; 32]);

fn ns(s: &str) -> Namespace {
    s.parse().unwrap()
}

fn peer(s: &str) -> PeerName {
    s.parse().unwrap()
}

fn secret(key: &[u8]) -> Secret {
    Secret::new(key).unwrap()
}

/// Encodes `m` as a frame and decodes its body: what the other side reads.
fn wire(m: &Message) -> Message {
    let frame = encode(m);
    assert!(frame.len() - 2 <= MAX_FRAME);
    assert_eq!(
        usize::from(u16::from_be_bytes([frame[0], frame[1]])),
        frame.len() - 2
    );
    let got = decode(&frame[2..]).unwrap();
    assert_eq!(&got, m, "the wire changed the message");
    got
}

// ------------------------------------------------------------------ cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialerSecret {
    None,
    Same,
    Different,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    None,
    Offered,
    NotOffered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    None,
    Acceptor,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Listed,
    NotListed,
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Ok,
    Busy,
    Wrapper,
}

/// One combination of everything the handshake depends on.
#[derive(Debug, Clone)]
struct Case {
    dialer_secret: DialerSecret,
    acceptor_secret: bool,
    service: Service,
    dials_acceptor: bool,
    same_namespace: bool,
    expected: Expected,
    accepting: bool,
    name_lost: bool,
    identity: bool,
    answer: Answer,
    admission: Admission,
    dialer_nonce: [u8; NONCE_LEN],
    acceptor_nonce: [u8; NONCE_LEN],
    /// The text of an `Unavailable` answer or a `Rejection`.
    why: String,
}

impl Case {
    fn local(&self) -> Local {
        Local::new(ns("prod"), peer("db-1"), InstanceId::from_u128(ACCEPTOR))
            .with_services(vec!["rpc".into(), "admin".into()])
            .with_secret(self.acceptor_secret.then(|| secret(KEY)))
    }

    fn dialer(&self) -> Dialer {
        let namespace = if self.same_namespace {
            "prod"
        } else {
            "staging"
        };
        let to = if self.dials_acceptor { "db-1" } else { "db-2" };
        let mut hello = Hello::new(
            ns(namespace),
            peer("web-1"),
            InstanceId::from_u128(DIALER),
            peer(to),
        );
        hello = match self.service {
            Service::None => hello,
            Service::Offered => hello.with_service("rpc").unwrap(),
            Service::NotOffered => hello.with_service("metrics").unwrap(),
        };
        hello = match self.expected {
            Expected::None => hello,
            Expected::Acceptor => hello.expecting(InstanceId::from_u128(ACCEPTOR)),
            Expected::Other => hello.expecting(InstanceId::from_u128(OTHER_INSTANCE)),
        };
        let key = match self.dialer_secret {
            DialerSecret::None => None,
            DialerSecret::Same => Some(secret(KEY)),
            DialerSecret::Different => Some(secret(OTHER_KEY)),
        };
        Dialer::new(hello, key, self.dialer_nonce)
    }

    fn acceptor(&self) -> Acceptor {
        Acceptor::new(
            Arc::new(self.local()),
            Status::new(self.accepting, self.name_lost),
            self.identity.then_some(FINGERPRINT),
            self.acceptor_nonce,
        )
    }

    fn identity_check(&self) -> IdentityCheck {
        match self.answer {
            Answer::Listed => IdentityCheck::Listed,
            Answer::NotListed => IdentityCheck::NotListed,
            Answer::Unavailable => IdentityCheck::Unavailable(self.why.clone()),
        }
    }

    fn admission(&self) -> Result<(), Rejection> {
        match self.admission {
            Admission::Ok => Ok(()),
            Admission::Busy => Err(Rejection::Busy(self.why.clone())),
            Admission::Wrapper => Err(Rejection::Wrapper(self.why.clone())),
        }
    }
}

// ------------------------------------------------------ expected outcome

/// How the acceptor's side ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptorEnd {
    Open,
    Refuse(RefuseCode),
    /// Still waiting for the dialer's `Proof` when the dialer gave up.
    AwaitingProof,
}

/// How the dialer's side ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialerEnd {
    Open,
    /// The acceptor's refusal, as its typed error.
    Refused(RefuseCode),
    /// The dialer's own verdict (the acceptor could not prove the secret).
    OwnUnauthorized,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    acceptor: AcceptorEnd,
    dialer: DialerEnd,
    /// Every message on the wire, in order.
    messages: Vec<&'static str>,
}

/// The outcome the design promises, from the documented check order alone:
/// version, namespace, name, name lost, instance, accepting, service,
/// identity, secret, admission.
fn expected(case: &Case) -> Outcome {
    let refused = |code, messages: &[&'static str]| Outcome {
        acceptor: AcceptorEnd::Refuse(code),
        dialer: DialerEnd::Refused(code),
        messages: messages.to_vec(),
    };
    let early = if !case.same_namespace {
        Some(RefuseCode::WrongNamespace)
    } else if !case.dials_acceptor {
        Some(RefuseCode::WrongPeer)
    } else if case.name_lost {
        Some(RefuseCode::NameLost)
    } else if case.expected == Expected::Other {
        Some(RefuseCode::WrongInstance)
    } else if !case.accepting {
        Some(RefuseCode::Busy)
    } else if case.service == Service::NotOffered {
        Some(RefuseCode::NoSuchService)
    } else if case.identity && case.answer == Answer::NotListed {
        Some(RefuseCode::Unauthorized)
    } else if case.identity && case.answer == Answer::Unavailable {
        Some(RefuseCode::RegistryUnavailable)
    } else {
        None
    };
    if let Some(code) = early {
        return refused(code, &["Hello", "Refuse"]);
    }
    let rejection = match case.admission {
        Admission::Ok => None,
        Admission::Busy => Some(RefuseCode::Busy),
        Admission::Wrapper => Some(RefuseCode::WrapperFailed),
    };
    match (case.acceptor_secret, case.dialer_secret) {
        (true, DialerSecret::None) => refused(RefuseCode::Unauthorized, &["Hello", "Refuse"]),
        (true, DialerSecret::Different) => Outcome {
            acceptor: AcceptorEnd::AwaitingProof,
            dialer: DialerEnd::OwnUnauthorized,
            messages: vec!["Hello", "Challenge"],
        },
        (true, DialerSecret::Same) => match rejection {
            None => Outcome {
                acceptor: AcceptorEnd::Open,
                dialer: DialerEnd::Open,
                messages: vec!["Hello", "Challenge", "Proof", "Welcome"],
            },
            Some(code) => refused(code, &["Hello", "Challenge", "Proof", "Refuse"]),
        },
        (false, dialer) => match rejection {
            // A dialer that holds a secret insists on the acceptor proving it.
            None if dialer != DialerSecret::None => Outcome {
                acceptor: AcceptorEnd::Open,
                dialer: DialerEnd::OwnUnauthorized,
                messages: vec!["Hello", "Welcome"],
            },
            None => Outcome {
                acceptor: AcceptorEnd::Open,
                dialer: DialerEnd::Open,
                messages: vec!["Hello", "Welcome"],
            },
            Some(code) => refused(code, &["Hello", "Refuse"]),
        },
    }
}

// ------------------------------------------------------------ the driver

/// Runs the handshake of `case` to its end, checking every step against
/// what the machines promise, and returns how it ended.
fn run(case: &Case) -> Outcome {
    let mut dialer = case.dialer();
    let mut acceptor = case.acceptor();
    assert_eq!(
        dialer.pipelines(),
        case.dialer_secret == DialerSecret::None,
        "pipelines exactly without a secret"
    );
    assert_eq!(
        dialer.hello().nonce().is_some(),
        case.dialer_secret != DialerSecret::None
    );
    let local = case.local();
    let mut messages = vec![];
    let mut to_acceptor = Message::Hello(dialer.hello().clone());
    loop {
        // Dialer → acceptor.
        messages.push(to_acceptor.kind());
        let mut step = acceptor.message(wire(&to_acceptor));
        let mut welcome = None;
        let (reply, acceptor_end) = loop {
            match step {
                AcceptorStep::CheckIdentity { name, fingerprint } => {
                    assert!(case.identity, "an identity check without a certificate");
                    assert_eq!(name, peer("web-1"));
                    assert_eq!(fingerprint, FINGERPRINT);
                    assert!(!acceptor.is_done());
                    step = acceptor.identity_checked(case.identity_check());
                }
                AcceptorStep::Admit { welcome: w } => {
                    assert_eq!(w.instance, local.instance);
                    assert!(!acceptor.is_done());
                    welcome = Some(w);
                    step = acceptor.admitted(case.admission());
                }
                AcceptorStep::Open => {
                    let w = welcome.take().expect("Open only after Admit");
                    assert!(acceptor.is_done());
                    break (Message::Welcome(w), AcceptorEnd::Open);
                }
                AcceptorStep::Send(m) => {
                    assert!(!acceptor.is_done());
                    break (m, AcceptorEnd::AwaitingProof);
                }
                AcceptorStep::Refuse { refuse, error } => {
                    assert!(acceptor.is_done());
                    match (&error, refuse.code) {
                        (Error::Unauthorized { reason }, RefuseCode::Unauthorized) => {
                            assert_eq!(reason, &refuse.reason)
                        }
                        (Error::Refused { code, reason }, c) if c != RefuseCode::Unauthorized => {
                            assert_eq!(*code, c);
                            assert_eq!(reason, &refuse.reason);
                        }
                        other => panic!("a refusal's error does not match: {other:?}"),
                    }
                    let code = refuse.code;
                    break (Message::Refuse(refuse), AcceptorEnd::Refuse(code));
                }
                AcceptorStep::Close(e) => panic!("the acceptor closed on a valid dialer: {e}"),
            }
        };
        if let Message::Refuse(r) = &reply {
            match case.admission() {
                Err(Rejection::Busy(why)) if r.code == RefuseCode::Busy && case.accepting => {
                    assert_eq!(r.reason, why)
                }
                Err(Rejection::Wrapper(why)) if r.code == RefuseCode::WrapperFailed => {
                    assert_eq!(r.reason, why)
                }
                _ => {}
            }
            if r.code == RefuseCode::WrongPeer {
                assert_eq!(r.reason, "db-1", "a WrongPeer says who answered");
            }
        }
        // Acceptor → dialer.
        messages.push(reply.kind());
        assert!(!dialer.is_done());
        let dialer_end = match dialer.message(wire(&reply)) {
            DialerStep::Send(m) => {
                assert!(matches!(m, Message::Proof(_)), "{m:?}");
                assert!(!dialer.is_done());
                to_acceptor = m;
                continue;
            }
            DialerStep::Open { instance } => {
                assert_eq!(instance, local.instance, "the dialer learns the instance");
                DialerEnd::Open
            }
            DialerStep::Fail(Error::WrongPeer { expected, actual }) => {
                assert_eq!(expected, dialer.hello().to.to_string());
                assert_eq!(actual, "db-1");
                DialerEnd::Refused(RefuseCode::WrongPeer)
            }
            DialerStep::Fail(Error::Unauthorized { reason }) => match &reply {
                Message::Refuse(r) => {
                    assert_eq!(r.code, RefuseCode::Unauthorized);
                    assert!(reason.ends_with(&r.reason), "{reason}");
                    DialerEnd::Refused(RefuseCode::Unauthorized)
                }
                _ => DialerEnd::OwnUnauthorized,
            },
            DialerStep::Fail(Error::Refused { code, reason }) => {
                let Message::Refuse(r) = &reply else {
                    panic!("Refused without a Refuse: {code} {reason}");
                };
                assert_eq!((code, &reason), (r.code, &r.reason));
                assert!(
                    !matches!(code, RefuseCode::WrongPeer | RefuseCode::Unauthorized),
                    "{code} must have its own error type"
                );
                DialerEnd::Refused(code)
            }
            DialerStep::Fail(e) => panic!("unexpected dialer error: {e}"),
        };
        assert!(dialer.is_done());
        return Outcome {
            acceptor: acceptor_end,
            dialer: dialer_end,
            messages,
        };
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let want = expected(case);
    let got = run(case);
    prop_assert_eq!(&got, &want, "{:?}", case);
    // The secret costs exactly one round trip (Challenge/Proof) more than the
    // plain sequence, and only when both sides go through with it.
    let rounds = got.messages.len() / 2;
    if got.dialer == DialerEnd::Open {
        prop_assert_eq!(rounds, 1 + usize::from(case.acceptor_secret));
    }
    Ok(())
}

fn case() -> impl Strategy<Value = Case> {
    use proptest::sample::select;
    (
        (
            select(vec![
                DialerSecret::None,
                DialerSecret::Same,
                DialerSecret::Different,
            ]),
            any::<bool>(),
            select(vec![Service::None, Service::Offered, Service::NotOffered]),
            any::<bool>(),
            any::<bool>(),
            select(vec![Expected::None, Expected::Acceptor, Expected::Other]),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            select(vec![Answer::Listed, Answer::NotListed, Answer::Unavailable]),
            select(vec![Admission::Ok, Admission::Busy, Admission::Wrapper]),
            any::<[u8; NONCE_LEN]>(),
            any::<[u8; NONCE_LEN]>(),
            ".{0,40}",
        ),
    )
        .prop_map(
            |(
                (dialer_secret, acceptor_secret, service, dials_acceptor, same_namespace, expected),
                (accepting, name_lost, identity, answer, admission, dn, an, why),
            )| Case {
                dialer_secret,
                acceptor_secret,
                service,
                dials_acceptor,
                same_namespace,
                expected,
                accepting,
                name_lost,
                identity,
                answer,
                admission,
                dialer_nonce: dn,
                acceptor_nonce: an,
                why,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn dialer_and_acceptor_agree(case in case()) {
        check(&case)?;
    }
}

/// The same property over all 15 552 combinations, with fixed nonces: the
/// random run above may miss one.
#[test]
fn every_combination() {
    let mut count = 0;
    let mut opened = 0;
    for dialer_secret in [
        DialerSecret::None,
        DialerSecret::Same,
        DialerSecret::Different,
    ] {
        for acceptor_secret in [false, true] {
            for service in [Service::None, Service::Offered, Service::NotOffered] {
                for dials_acceptor in [false, true] {
                    for same_namespace in [false, true] {
                        for expected in [Expected::None, Expected::Acceptor, Expected::Other] {
                            for (accepting, name_lost) in
                                [(false, false), (false, true), (true, false), (true, true)]
                            {
                                for identity in [false, true] {
                                    for answer in
                                        [Answer::Listed, Answer::NotListed, Answer::Unavailable]
                                    {
                                        for admission in
                                            [Admission::Ok, Admission::Busy, Admission::Wrapper]
                                        {
                                            let case = Case {
                                                dialer_secret,
                                                acceptor_secret,
                                                service,
                                                dials_acceptor,
                                                same_namespace,
                                                expected,
                                                accepting,
                                                name_lost,
                                                identity,
                                                answer,
                                                admission,
                                                dialer_nonce: [1; NONCE_LEN],
                                                acceptor_nonce: [2; NONCE_LEN],
                                                why: "queue full".into(),
                                            };
                                            check(&case).unwrap();
                                            count += 1;
                                            opened += usize::from(expected_opens(&case));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(count, 15_552);
    // Opens: same namespace and name, not lost, accepting, instance none or
    // right (2), service none or offered (2), identity absent (3 answers) or
    // listed (1), admission Ok, and the secrets: none/none or same/same.
    assert_eq!(opened, 2 * 2 * 4 * 2);
}

fn expected_opens(case: &Case) -> bool {
    expected(case).dialer == DialerEnd::Open
}

// ------------------------------------------------------------- unit tests

fn plain() -> Case {
    Case {
        dialer_secret: DialerSecret::None,
        acceptor_secret: false,
        service: Service::Offered,
        dials_acceptor: true,
        same_namespace: true,
        expected: Expected::Acceptor,
        accepting: true,
        name_lost: false,
        identity: false,
        answer: Answer::Listed,
        admission: Admission::Ok,
        dialer_nonce: [1; NONCE_LEN],
        acceptor_nonce: [2; NONCE_LEN],
        why: String::new(),
    }
}

fn with_secret() -> Case {
    Case {
        dialer_secret: DialerSecret::Same,
        acceptor_secret: true,
        ..plain()
    }
}

#[test]
fn plain_and_secret_sequences() {
    assert_eq!(run(&plain()).messages, ["Hello", "Welcome"]);
    assert_eq!(
        run(&with_secret()).messages,
        ["Hello", "Challenge", "Proof", "Welcome"]
    );
}

#[test]
fn version_1_is_unsupported_naming_both_versions() {
    let case = plain();
    let mut hello = case.dialer().hello().clone();
    hello.version = 1;
    let mut acceptor = case.acceptor();
    let AcceptorStep::Refuse { refuse, error } = acceptor.message(wire(&Message::Hello(hello)))
    else {
        panic!("a version 1 Hello is refused");
    };
    assert!(acceptor.is_done());
    assert_eq!(refuse.code, RefuseCode::Unsupported);
    assert!(
        refuse.reason.contains("version 1") && refuse.reason.contains(&format!("speaks {VERSION}")),
        "{}",
        refuse.reason
    );
    assert!(matches!(
        error,
        Error::Refused {
            code: RefuseCode::Unsupported,
            ..
        }
    ));
    // A dialer reading it fails with the refusal.
    let mut dialer = case.dialer();
    match dialer.message(wire(&Message::Refuse(refuse))) {
        DialerStep::Fail(Error::Refused {
            code: RefuseCode::Unsupported,
            reason,
        }) => assert!(reason.contains("version 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// One of every message kind.
fn every_message() -> Vec<Message> {
    vec![
        Message::Hello(plain().dialer().hello().clone()),
        Message::Welcome(Welcome::new(InstanceId::from_u128(ACCEPTOR))),
        Message::Refuse(Refuse::new(RefuseCode::Busy, "later")),
        Message::Challenge(Challenge::new(
            InstanceId::from_u128(ACCEPTOR),
            [3; NONCE_LEN],
            [4; PROOF_LEN],
        )),
        Message::Proof(Proof::new([5; PROOF_LEN])),
    ]
}

fn is_protocol(e: &Error, what: &str) -> bool {
    matches!(e, Error::Protocol { reason } if reason.contains(what))
}

/// Acceptors in each of their end states: opened, refused, closed.
fn finished_acceptors() -> Vec<Acceptor> {
    let mut out = vec![];
    for case in [plain(), with_secret()] {
        let mut a = case.acceptor();
        let mut d = case.dialer();
        let mut step = a.message(wire(&Message::Hello(d.hello().clone())));
        if let AcceptorStep::Send(c) = step {
            let DialerStep::Send(p) = d.message(wire(&c)) else {
                panic!("the dialer answers the challenge");
            };
            step = a.message(wire(&p));
        }
        assert!(matches!(step, AcceptorStep::Admit { .. }), "{step:?}");
        assert!(matches!(a.admitted(Ok(())), AcceptorStep::Open));
        out.push(a);
    }
    let mut refused = Case {
        accepting: false,
        ..plain()
    }
    .acceptor();
    let step = refused.message(wire(&every_message()[0]));
    assert!(matches!(step, AcceptorStep::Refuse { .. }), "{step:?}");
    out.push(refused);
    let mut closed = plain().acceptor();
    let step = closed.message(wire(&every_message()[1]));
    assert!(matches!(step, AcceptorStep::Close(_)), "{step:?}");
    out.push(closed);
    out
}

#[test]
fn a_message_after_the_end_closes_the_acceptor() {
    for msg in every_message() {
        for mut a in finished_acceptors() {
            assert!(a.is_done());
            match a.message(wire(&msg)) {
                AcceptorStep::Close(e) => {
                    assert!(is_protocol(&e, "after the handshake ended"), "{e}")
                }
                other => panic!("{} after the end: {other:?}", msg.kind()),
            }
            assert!(a.is_done());
            assert!(matches!(
                a.identity_checked(IdentityCheck::Listed),
                AcceptorStep::Close(e) if is_protocol(&e, "nobody asked")
            ));
            assert!(matches!(
                a.admitted(Ok(())),
                AcceptorStep::Close(e) if is_protocol(&e, "nobody asked")
            ));
            assert!(a.is_done());
        }
    }
}

#[test]
fn a_message_after_the_end_fails_the_dialer() {
    for msg in every_message() {
        // Opened, refused, and failed on its own.
        let mut opened = plain().dialer();
        assert!(matches!(
            opened.message(wire(&every_message()[1])),
            DialerStep::Open { .. }
        ));
        let mut refused = plain().dialer();
        assert!(matches!(
            refused.message(wire(&every_message()[2])),
            DialerStep::Fail(Error::Refused { .. })
        ));
        let mut failed = plain().dialer();
        assert!(matches!(
            failed.message(wire(&every_message()[0])),
            DialerStep::Fail(Error::Protocol { .. })
        ));
        for mut d in [opened, refused, failed] {
            assert!(d.is_done());
            match d.message(wire(&msg)) {
                DialerStep::Fail(e) => {
                    assert!(is_protocol(&e, "after the handshake ended"), "{e}")
                }
                other => panic!("{} after the end: {other:?}", msg.kind()),
            }
            assert!(d.is_done());
        }
    }
}

#[test]
fn out_of_order_messages_close() {
    // Anything but a Hello first.
    for msg in every_message().into_iter().skip(1) {
        let mut a = plain().acceptor();
        assert!(matches!(
            a.message(wire(&msg)),
            AcceptorStep::Close(e) if is_protocol(&e, "expected Hello")
        ));
        assert!(a.is_done());
    }
    // Anything but a Proof after the Challenge.
    for (i, msg) in every_message().into_iter().enumerate() {
        if matches!(msg, Message::Proof(_)) {
            continue;
        }
        let case = with_secret();
        let mut a = case.acceptor();
        assert!(matches!(
            a.message(wire(&Message::Hello(case.dialer().hello().clone()))),
            AcceptorStep::Send(Message::Challenge(_))
        ));
        assert!(
            matches!(a.message(wire(&msg)), AcceptorStep::Close(e) if is_protocol(&e, "expected Proof")),
            "{i}"
        );
        assert!(a.is_done());
    }
    // A message while the identity check or the admission runs.
    for identity in [true, false] {
        let case = Case {
            identity,
            ..plain()
        };
        let mut a = case.acceptor();
        let step = a.message(wire(&every_message()[0]));
        assert!(
            matches!(
                (&step, identity),
                (AcceptorStep::CheckIdentity { .. }, true) | (AcceptorStep::Admit { .. }, false)
            ),
            "{step:?}"
        );
        assert!(matches!(
            a.message(wire(&every_message()[0])),
            AcceptorStep::Close(e) if is_protocol(&e, "got Hello")
        ));
        assert!(a.is_done());
    }
    // An answer nobody asked for.
    let mut a = plain().acceptor();
    assert!(matches!(
        a.identity_checked(IdentityCheck::Listed),
        AcceptorStep::Close(_)
    ));
    let mut a = plain().acceptor();
    assert!(matches!(a.admitted(Ok(())), AcceptorStep::Close(_)));
    // The dialer: a Hello or a Proof is never an answer.
    for msg in [every_message()[0].clone(), every_message()[4].clone()] {
        let mut d = plain().dialer();
        assert!(matches!(
            d.message(wire(&msg)),
            DialerStep::Fail(e) if is_protocol(&e, "expected Welcome or Refuse")
        ));
        assert!(d.is_done());
    }
}

#[test]
fn an_expected_instance_of_the_wrong_length_closes() {
    for len in [0, 1, 15, 17, 32] {
        for secret in [false, true] {
            let case = if secret { with_secret() } else { plain() };
            let mut hello = case.dialer().hello().clone();
            hello.extensions.insert(EXT_INSTANCE, vec![0; len]).unwrap();
            let mut a = case.acceptor();
            match a.message(wire(&Message::Hello(hello))) {
                AcceptorStep::Close(e) => assert!(
                    is_protocol(&e, &format!("expected instance is {len} bytes, not 16")),
                    "{e}"
                ),
                other => panic!("{len}: {other:?}"),
            }
            assert!(a.is_done());
        }
    }
}

#[test]
fn a_welcome_from_another_instance_than_the_challenge_fails() {
    let case = with_secret();
    let mut d = case.dialer();
    let mut a = case.acceptor();
    let AcceptorStep::Send(challenge) = a.message(wire(&Message::Hello(d.hello().clone()))) else {
        panic!("a challenge");
    };
    assert!(matches!(d.message(wire(&challenge)), DialerStep::Send(_)));
    let other = Welcome::new(InstanceId::from_u128(OTHER_INSTANCE));
    match d.message(wire(&Message::Welcome(other))) {
        DialerStep::Fail(e) => assert!(is_protocol(&e, "another instance"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(d.is_done());
}

#[test]
fn a_welcome_from_an_unexpected_instance_fails() {
    // Plain: the Hello asked for ACCEPTOR, another instance welcomes.
    let mut d = plain().dialer();
    let w = Welcome::new(InstanceId::from_u128(OTHER_INSTANCE));
    assert!(matches!(
        d.message(wire(&Message::Welcome(w))),
        DialerStep::Fail(e) if is_protocol(&e, "the Hello asked for")
    ));
    // Secret: a Challenge, validly signed, from another instance.
    let case = with_secret();
    let mut d = case.dialer();
    let other = Local {
        instance: InstanceId::from_u128(OTHER_INSTANCE),
        ..case.local()
    };
    let mut hello = d.hello().clone();
    hello.extensions.remove(EXT_INSTANCE);
    let mut a = Acceptor::new(Arc::new(other), Status::SERVING, None, [9; NONCE_LEN]);
    let AcceptorStep::Send(Message::Challenge(mut c)) = a.message(wire(&Message::Hello(hello)))
    else {
        panic!("a challenge");
    };
    // The proofs cover the whole Hello, extensions included: a Challenge
    // signed over the Hello without its expected instance (stripped on the
    // way) does not check out.
    match d.message(wire(&Message::Challenge(c.clone()))) {
        DialerStep::Fail(Error::Unauthorized { reason }) => {
            assert!(reason.contains("could not prove"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Signed over the dialer's own Hello by another instance.
    let mut d = case.dialer();
    let mut a = Acceptor::new(
        Arc::new(Local {
            instance: InstanceId::from_u128(OTHER_INSTANCE),
            ..case.local()
        }),
        Status::SERVING,
        None,
        [9; NONCE_LEN],
    );
    // The acceptor itself refuses the Hello meant for another instance ...
    assert!(matches!(
        a.message(wire(&Message::Hello(d.hello().clone()))),
        AcceptorStep::Refuse { refuse, .. } if refuse.code == RefuseCode::WrongInstance
    ));
    // ... and a forged Challenge (wrong proof) never opens.
    c.instance = InstanceId::from_u128(OTHER_INSTANCE);
    assert!(matches!(
        d.message(wire(&Message::Challenge(c))),
        DialerStep::Fail(_)
    ));
}

#[test]
fn secret_mismatches() {
    // The acceptor without the secret: the dialer notices its missing proof.
    let case = Case {
        acceptor_secret: false,
        ..with_secret()
    };
    let out = run(&case);
    assert_eq!(out.acceptor, AcceptorEnd::Open);
    assert_eq!(out.dialer, DialerEnd::OwnUnauthorized);
    // A Challenge to a dialer without a secret (its Hello carried a nonce
    // anyway).
    let case = with_secret();
    let mut hello = plain().dialer().hello().clone();
    hello
        .extensions
        .insert(EXT_NONCE, vec![1; NONCE_LEN])
        .unwrap();
    let mut a = case.acceptor();
    let AcceptorStep::Send(c) = a.message(wire(&Message::Hello(hello))) else {
        panic!("a challenge");
    };
    let mut d = plain().dialer();
    assert!(matches!(
        d.message(wire(&c)),
        DialerStep::Fail(Error::Unauthorized { reason }) if reason.contains("requires the namespace secret")
    ));
    // A nonce of the wrong length counts as none.
    let mut hello = plain().dialer().hello().clone();
    hello.extensions.insert(EXT_NONCE, vec![1; 15]).unwrap();
    let mut a = case.acceptor();
    assert!(matches!(
        a.message(wire(&Message::Hello(hello))),
        AcceptorStep::Refuse { refuse, error: Error::Unauthorized { .. } }
            if refuse.code == RefuseCode::Unauthorized
    ));
    // A wrong Proof is refused as Unauthorized.
    let mut a = case.acceptor();
    let d = case.dialer();
    assert!(matches!(
        a.message(wire(&Message::Hello(d.hello().clone()))),
        AcceptorStep::Send(_)
    ));
    assert!(matches!(
        a.message(wire(&Message::Proof(Proof::new([0; PROOF_LEN])))),
        AcceptorStep::Refuse { refuse, .. } if refuse.code == RefuseCode::Unauthorized
    ));
    assert!(a.is_done());
}
