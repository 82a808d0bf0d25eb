//! Feeds arbitrary sequences of inputs to the handshake's `Acceptor`
//! (DESIGN §5): frames from the dialer, identity answers and admission
//! results, in any order, to a node that sometimes holds a namespace secret,
//! offers services, is shutting down, lost its name or has a TLS peer.
//!
//! Each input is one of:
//! - a frame body, through `handshake::decode` (skipped if it does not
//!   decode), then `Acceptor::message`;
//! - a well-formed `Hello` of a real `Dialer` (valid or not for this node),
//!   through the codec, so the checks past the namespace and name are reached;
//! - that dialer's answer to the last `Challenge` (its `Proof`), so the secret
//!   path can open;
//! - an identity answer (`identity_checked`) or an admission result
//!   (`admitted`), asked for or not.
//!
//! Asserts: no panic; once `is_done()`, every input returns `Close`; a
//! `Refuse`'s message survives encode → decode; `Open` only right after
//! `Admit`; `Admit` with a secret only after a `Proof`; `CheckIdentity` only
//! with a peer certificate; `Send` only a `Challenge`.
//!
//! Run with `cargo +nightly fuzz run handshake_acceptor` from `fuzz/`.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use masse_core::handshake::{
    self, Acceptor, AcceptorStep, Dialer, DialerStep, Hello, IdentityCheck, Local, Message,
    Rejection, Secret, Status,
};
use masse_core::{Fingerprint, InstanceId};

const KEY: &[u8] = b"the namespace secret, 32 bytes!!";
const OTHER_KEY: &[u8] = b"another secret of the same size!";

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

/// Encodes `m` and decodes the body: what the acceptor would read.
fn wire(m: &Message) -> Message {
    let frame = handshake::encode(m);
    handshake::decode(&frame[2..]).expect("an encoded message decodes")
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    u.arbitrary()
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let instance = InstanceId::from_u128(u.int_in_range(1..=3)?);
    let has_secret: bool = u.arbitrary()?;
    let mut local = Local::new("prod".parse().unwrap(), "db-1".parse().unwrap(), instance)
        .with_secret(has_secret.then(|| Secret::new(KEY).unwrap()));
    let offered: Vec<String> = ["rpc", "admin"]
        .into_iter()
        .filter(|_| u.arbitrary().unwrap_or(false))
        .map(String::from)
        .collect();
    local = local.with_services(offered);
    let status = Status::new(u.arbitrary()?, u.arbitrary()?);
    let peer_identity = if u.arbitrary()? {
        Some(Fingerprint(u.arbitrary()?))
    } else {
        None
    };
    let mut acceptor = Acceptor::new(Arc::new(local), status, peer_identity, u.arbitrary()?);

    let mut dialer: Option<Dialer> = None;
    let mut last_challenge: Option<Message> = None;
    let mut last_was_admit = false;
    let mut proof_seen = false;
    while !u.is_empty() {
        let was_done = acceptor.is_done();
        let mut is_proof = false;
        let step = match u.int_in_range(0..=4u8)? {
            0 => {
                let body: &[u8] = u.arbitrary()?;
                let Ok(msg) = handshake::decode(body) else {
                    continue;
                };
                is_proof = matches!(msg, Message::Proof(_));
                acceptor.message(msg)
            }
            1 => {
                let d = structured_dialer(u)?;
                let hello = Message::Hello(d.hello().clone());
                dialer = Some(d);
                acceptor.message(wire(&hello))
            }
            2 => {
                let (Some(d), Some(c)) = (dialer.as_mut(), last_challenge.take()) else {
                    continue;
                };
                let DialerStep::Send(proof) = d.message(c) else {
                    continue;
                };
                is_proof = true;
                acceptor.message(wire(&proof))
            }
            3 => {
                let check = match u.int_in_range(0..=2u8)? {
                    0 => IdentityCheck::Listed,
                    1 => IdentityCheck::NotListed,
                    _ => IdentityCheck::Unavailable(text(u)?),
                };
                acceptor.identity_checked(check)
            }
            _ => {
                let result = match u.int_in_range(0..=2u8)? {
                    0 => Ok(()),
                    1 => Err(Rejection::Busy(text(u)?)),
                    _ => Err(Rejection::Wrapper(text(u)?)),
                };
                acceptor.admitted(result)
            }
        };
        if was_done {
            assert!(
                matches!(step, AcceptorStep::Close(_)),
                "after the end: {step:?}"
            );
        }
        if is_proof {
            proof_seen = true;
        }
        let admit = matches!(step, AcceptorStep::Admit { .. });
        match step {
            AcceptorStep::Send(msg) => {
                assert!(!acceptor.is_done());
                assert!(has_secret, "a Challenge without a secret");
                assert!(matches!(msg, Message::Challenge(_)), "{msg:?}");
                assert_eq!(wire(&msg), msg);
                last_challenge = Some(wire(&msg));
            }
            AcceptorStep::CheckIdentity { fingerprint, .. } => {
                assert!(!acceptor.is_done());
                assert_eq!(Some(fingerprint), peer_identity);
            }
            AcceptorStep::Admit { welcome } => {
                assert!(!acceptor.is_done());
                assert_eq!(welcome.instance, instance);
                assert!(!has_secret || proof_seen, "admitted without a Proof");
            }
            AcceptorStep::Open => {
                assert!(acceptor.is_done());
                assert!(last_was_admit, "Open without an Admit right before");
            }
            AcceptorStep::Refuse { refuse, .. } => {
                assert!(acceptor.is_done());
                let msg = Message::Refuse(refuse);
                assert_eq!(wire(&msg), msg, "a Refuse survives the wire");
            }
            AcceptorStep::Close(_) => assert!(acceptor.is_done()),
        }
        last_was_admit = admit;
    }
    Ok(())
}

/// A real dialer's `Hello`, mostly close to what this node accepts.
fn structured_dialer(u: &mut Unstructured<'_>) -> Result<Dialer> {
    let namespace = if u.ratio(1, 8)? { "staging" } else { "prod" };
    let to = if u.ratio(1, 8)? { "db-2" } else { "db-1" };
    let mut hello = Hello::new(
        namespace.parse().unwrap(),
        "web-1".parse().unwrap(),
        InstanceId::from_u128(u.arbitrary()?),
        to.parse().unwrap(),
    );
    hello = match u.int_in_range(0..=2u8)? {
        0 => hello,
        1 => hello.with_service("rpc").unwrap(),
        _ => hello.with_service("metrics").unwrap(),
    };
    if u.arbitrary()? {
        hello = hello.expecting(InstanceId::from_u128(u.int_in_range(1..=3)?));
    }
    if u.ratio(1, 8)? {
        hello.version = u.int_in_range(1..=255)?;
    }
    let secret = match u.int_in_range(0..=2u8)? {
        0 => None,
        1 => Some(Secret::new(KEY).unwrap()),
        _ => Some(Secret::new(OTHER_KEY).unwrap()),
    };
    Ok(Dialer::new(hello, secret, u.arbitrary()?))
}
