//! Feeds arbitrary bytes to the handshake decoder (DESIGN §5).
//!
//! The decoder must never panic, and whatever it accepts must survive
//! encode → decode unchanged. Decoding is canonical, so the re-encoded body
//! must also equal the input byte for byte, except for the version byte of a
//! reply (replies are always re-encoded with this build's version).
//!
//! Run with `cargo +nightly fuzz run handshake_decode` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use masse_core::handshake::{self, MAX_FRAME, Message, VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = handshake::decode(data) else {
        return;
    };
    let frame = handshake::encode(&msg);
    let body = &frame[2..];
    assert_eq!(
        usize::from(u16::from_be_bytes([frame[0], frame[1]])),
        body.len()
    );
    assert!(body.len() <= MAX_FRAME);
    let again = handshake::decode(body).expect("a re-encoded message decodes");
    assert_eq!(again, msg);
    let is_hello = matches!(msg, Message::Hello(_));
    if is_hello || data[5] == VERSION {
        assert_eq!(body, data, "decoding is canonical");
    } else {
        assert_eq!(body[..5], data[..5]);
        assert_eq!(body[6..], data[6..]);
    }
});
