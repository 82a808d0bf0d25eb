//! The namespace secret: an HMAC-SHA-256 challenge-response inside the
//! handshake, so a node without the secret can neither be reached as, nor
//! reach, a node of the namespace over plain TCP.

use std::fmt;

use ring::hmac;

use crate::error::{Error, Result};
use crate::handshake::{Hello, Message, NONCE_LEN, PROOF_LEN, encode};
use crate::record::InstanceId;

/// A namespace secret, ready to sign and verify handshake transcripts.
///
/// Nodes that share one run the challenge-response of the handshake (see the
/// [module docs](super)); it holds the HMAC key only, never printed.
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
}

/// Which side a proof is from: the two proofs must differ, or one side could
/// reflect the other's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Acceptor,
    Dialer,
}

impl Secret {
    /// A secret from at least 16 bytes (fails with [`Error::Config`] otherwise).
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 16 {
            return Err(Error::Config(format!(
                "a namespace secret needs at least 16 bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Secret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// The proof of `side` over everything both ends agreed on.
    pub(crate) fn prove(
        &self,
        side: Side,
        hello: &Hello,
        acceptor: InstanceId,
        dialer_nonce: &[u8; NONCE_LEN],
        acceptor_nonce: &[u8; NONCE_LEN],
    ) -> [u8; PROOF_LEN] {
        let msg = transcript(side, hello, acceptor, dialer_nonce, acceptor_nonce);
        let tag = hmac::sign(&self.key, &msg);
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks `proof` in constant time.
    pub(crate) fn verify(
        &self,
        side: Side,
        hello: &Hello,
        acceptor: InstanceId,
        dialer_nonce: &[u8; NONCE_LEN],
        acceptor_nonce: &[u8; NONCE_LEN],
        proof: &[u8; PROOF_LEN],
    ) -> bool {
        let msg = transcript(side, hello, acceptor, dialer_nonce, acceptor_nonce);
        hmac::verify(&self.key, &msg, proof).is_ok()
    }
}

/// A fresh random nonce.
pub(crate) fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // `InstanceId::random` draws from the OS generator (with a fallback).
    n.copy_from_slice(&InstanceId::random().as_u128().to_le_bytes());
    n
}

/// What both proofs cover: the side, the whole `Hello` as encoded on the
/// wire (version, names, service, the dialer's instance and nonce, the
/// instance it expects, every extension), the acceptor's instance and both
/// nonces.
fn transcript(
    side: Side,
    hello: &Hello,
    acceptor: InstanceId,
    dialer_nonce: &[u8; NONCE_LEN],
    acceptor_nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let frame = encode(&Message::Hello(hello.clone()));
    let mut m = Vec::with_capacity(64 + frame.len());
    m.extend_from_slice(match side {
        Side::Acceptor => b"masse v2 acceptor proof",
        Side::Dialer => b"masse v2 dialer proof",
    });
    // The frame starts with its own length: unambiguous.
    m.extend_from_slice(&frame);
    m.extend_from_slice(&acceptor.as_u128().to_be_bytes());
    m.extend_from_slice(dialer_nonce);
    m.extend_from_slice(acceptor_nonce);
    m
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello::new(
            "ns".parse().unwrap(),
            "a".parse().unwrap(),
            InstanceId::from_u128(1),
            "b".parse().unwrap(),
        )
    }

    #[test]
    fn proofs_bind_every_field_and_side() {
        let s = Secret::new(b"0123456789abcdef").unwrap();
        let (nc, ns) = (nonce(), nonce());
        let acc = InstanceId::from_u128(2);
        let p = s.prove(Side::Acceptor, &hello(), acc, &nc, &ns);
        assert!(s.verify(Side::Acceptor, &hello(), acc, &nc, &ns, &p));
        assert!(
            !s.verify(Side::Dialer, &hello(), acc, &nc, &ns, &p),
            "sides differ"
        );
        assert!(!s.verify(
            Side::Acceptor,
            &hello(),
            InstanceId::from_u128(3),
            &nc,
            &ns,
            &p
        ));
        assert!(
            !s.verify(Side::Acceptor, &hello(), acc, &ns, &nc, &p),
            "nonces are ordered"
        );
        let other = Hello::new(
            "ns".parse().unwrap(),
            "a".parse().unwrap(),
            InstanceId::from_u128(1),
            "c".parse().unwrap(),
        );
        assert!(
            !s.verify(Side::Acceptor, &other, acc, &nc, &ns, &p),
            "the dialed name is covered"
        );
        assert!(
            !s.verify(
                Side::Acceptor,
                &hello().expecting(InstanceId::from_u128(9)),
                acc,
                &nc,
                &ns,
                &p
            ),
            "the extensions (the expected instance) are covered"
        );
        let wrong = Secret::new(b"0123456789abcdeF").unwrap();
        assert!(!wrong.verify(Side::Acceptor, &hello(), acc, &nc, &ns, &p));
        assert!(matches!(Secret::new(b"short"), Err(Error::Config(_))));
        assert_ne!(nonce(), nonce());
    }
}
