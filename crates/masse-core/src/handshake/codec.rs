//! The wire format: frames, messages, extensions, and their codec.
//!
//! Every message is one *frame*: a 2-byte big-endian body length followed by
//! the body, at most [`MAX_FRAME`] (4096) bytes. Every body starts with the
//! same 7-byte header, so a stream that is not masse is recognised at once:
//!
//! | field      | size          | notes                                              |
//! |------------|---------------|----------------------------------------------------|
//! | magic      | 5             | `b"MASSE"`                                         |
//! | version    | 1             | sender's protocol version, never 0 ([`VERSION`])  |
//! | type       | 1             | `0x01` Hello, `0x02` Welcome, `0x03` Refuse, `0x04` Challenge, `0x05` Proof |
//! | payload    | …             | per type, below                                    |
//! | extensions | 1 + …         | count, then `type:u8 len:u16 value` each           |
//!
//! Payloads (strings are UTF-8, prefixed by their length; ids are 16 bytes
//! big-endian):
//!
//! | message | payload                                                                                  |
//! |---------|------------------------------------------------------------------------------------------|
//! | Hello   | namespace `u8`+bytes, from `u8`+bytes, from_instance 16, to `u8`+bytes, service `u8`+bytes (length 0 = none) |
//! | Welcome | instance 16                                                                              |
//! | Refuse  | code `u8` ([`RefuseCode::to_u8`]), reason `u16`+bytes (at most [`MAX_REASON`] bytes)    |
//! | Challenge | instance 16, nonce 16, proof 32                                                        |
//! | Proof   | proof 32                                                                                 |
//!
//! The decoder validates every name through [`Namespace::new`],
//! [`PeerName::new`] and [`validate_service`], rejects unknown message types
//! and refuse codes, truncated fields and trailing bytes, and never reads past
//! the frame. Decoding is canonical: whatever [`decode`] accepts, [`encode`]
//! writes back byte for byte (replies are re-encoded with this build's
//! [`VERSION`]).
//!
//! # Versions and extensions
//!
//! The layout above is frozen for every version: a newer dialer's `Hello`
//! still decodes here, so an older acceptor can read its `version` and answer
//! `Refuse { code: Unsupported }` (which the newer dialer can decode too).
//! New information travels in the [`Extensions`] area that closes every
//! message: a list of `type`/`value` pairs that a decoder keeps without
//! interpreting, so older peers skip what they do not know. Types `0x01`–`0x3f`
//! are reserved for masse itself: [`EXT_NONCE`] carries the dialer's nonce of
//! the namespace-secret challenge, [`EXT_INSTANCE`] the instance the dialer
//! expects to reach. Types `0x40`–`0xff` are free for experiments. The
//! extension area is at most [`MAX_EXTENSIONS`] bytes, so any valid message
//! fits in a frame.
//!
//! Version 2 changed what the messages mean, not their layout: the acceptor
//! answers after its wrappers ran, refuses a `Hello` meant for another
//! instance, and the dialer may send data right after its `Hello`. A version
//! 1 peer on either side gets `Refuse { code: Unsupported }` naming both
//! versions.
//!
//! ```
//! use masse_core::handshake::{self, Hello, Message};
//! use masse_core::InstanceId;
//!
//! let hello = Hello::new(
//!     "prod".parse()?,
//!     "web-1".parse()?,
//!     InstanceId::random(),
//!     "db-1".parse()?,
//! )
//! .with_service("rpc")?;
//! let frame = handshake::encode(&Message::Hello(hello.clone()));
//! assert_eq!(&frame[2..7], b"MASSE");
//! assert_eq!(handshake::decode(&frame[2..])?, Message::Hello(hello));
//! # Ok::<(), masse_core::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, RefuseCode, Result};
use crate::name::{Namespace, PeerName, validate_service};
use crate::record::InstanceId;

/// The magic bytes every message body starts with.
pub const MAGIC: &[u8; 5] = b"MASSE";

/// The protocol version this build speaks.
pub const VERSION: u8 = 2;

/// The largest body a frame may carry, in bytes (the 2-byte length prefix not
/// included).
pub const MAX_FRAME: usize = 4096;

/// The longest refuse reason, in bytes; longer reasons are truncated on encode.
pub const MAX_REASON: usize = 1024;

/// The largest extension area (every `type`, `len` and `value` together, the
/// count byte not included), in bytes.
pub const MAX_EXTENSIONS: usize = 2048;

/// How long a handshake may take unless configured otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

const HEADER_LEN: usize = MAGIC.len() + 2;
const TYPE_HELLO: u8 = 0x01;
const TYPE_WELCOME: u8 = 0x02;
const TYPE_REFUSE: u8 = 0x03;
const TYPE_CHALLENGE: u8 = 0x04;
const TYPE_PROOF: u8 = 0x05;

/// `Hello` extension: the dialer's 16-byte nonce, sent when it holds a
/// namespace secret (see [`Challenge`]).
pub const EXT_NONCE: u8 = 0x01;

/// `Hello` extension: the 16-byte instance id (big-endian) the dialer expects
/// to reach, from the record it dialed. An acceptor of another instance
/// refuses with [`RefuseCode::WrongInstance`].
pub const EXT_INSTANCE: u8 = 0x02;

/// Length of a [`Challenge`] nonce.
pub const NONCE_LEN: usize = 16;

/// Length of an HMAC-SHA-256 proof.
pub const PROOF_LEN: usize = 32;
const EXTENSION_HEADER: usize = 3;
const MAX_EXTENSION_COUNT: usize = u8::MAX as usize;

/// Optional `type`/`value` pairs at the end of every message, kept but not
/// interpreted by the decoder, so that later protocol features (such as the
/// HMAC challenge-response) reach older peers harmlessly.
///
/// Types are unique within a message and keep their order. The whole area is
/// limited to [`MAX_EXTENSIONS`] bytes and 255 entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The entries as on the wire, `type:u8 len:u16 value` each (without
    /// the count): one allocation however many there are, copied whole by
    /// the codec.
    area: Vec<u8>,
    /// How many entries `area` holds.
    count: usize,
}

impl Extensions {
    /// No extensions.
    pub const fn new() -> Self {
        Extensions {
            area: Vec::new(),
            count: 0,
        }
    }

    /// Sets extension `ty` to `value`, returning the previous value. Fails with
    /// [`Error::Config`] if the area would exceed [`MAX_EXTENSIONS`] bytes or
    /// 255 entries.
    pub fn insert(&mut self, ty: u8, value: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        self.insert_slice(ty, &value.into())
    }

    /// [`insert`](Self::insert) from a borrowed value.
    fn insert_slice(&mut self, ty: u8, value: &[u8]) -> Result<Option<Vec<u8>>> {
        let existing = self.find(ty);
        let old_len = existing.as_ref().map_or(0, |e| e.end - e.start);
        let new_size = self.area.len() - old_len + EXTENSION_HEADER + value.len();
        if new_size > MAX_EXTENSIONS {
            return Err(Error::Config(format!(
                "handshake extensions would take {new_size} bytes, at most {MAX_EXTENSIONS} are allowed"
            )));
        }
        match existing {
            Some(e) => {
                let old = self.area[e.start + EXTENSION_HEADER..e.end].to_vec();
                let entry = Self::entry(ty, value);
                self.area.splice(e.start..e.end, entry);
                Ok(Some(old))
            }
            None if self.count >= MAX_EXTENSION_COUNT => Err(Error::Config(format!(
                "at most {MAX_EXTENSION_COUNT} handshake extensions are allowed"
            ))),
            None => {
                self.area.reserve_exact(EXTENSION_HEADER + value.len());
                self.area.extend(Self::entry(ty, value));
                self.count += 1;
                Ok(None)
            }
        }
    }

    /// One entry's bytes. `value` is at most [`MAX_EXTENSIONS`] long.
    fn entry(ty: u8, value: &[u8]) -> impl Iterator<Item = u8> + '_ {
        let len = (value.len() as u16).to_be_bytes();
        [ty, len[0], len[1]]
            .into_iter()
            .chain(value.iter().copied())
    }

    /// The value of extension `ty`, if present.
    pub fn get(&self, ty: u8) -> Option<&[u8]> {
        self.find(ty)
            .map(|e| &self.area[e.start + EXTENSION_HEADER..e.end])
    }

    /// Removes extension `ty`, returning its value.
    pub fn remove(&mut self, ty: u8) -> Option<Vec<u8>> {
        let e = self.find(ty)?;
        let value = self.area[e.start + EXTENSION_HEADER..e.end].to_vec();
        self.area.drain(e.start..e.end);
        self.count -= 1;
        Some(value)
    }

    /// The extensions in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.spans()
            .map(|e| (e.ty, &self.area[e.start + EXTENSION_HEADER..e.end]))
    }

    /// How many extensions there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn find(&self, ty: u8) -> Option<Span> {
        self.spans().find(|e| e.ty == ty)
    }

    /// Where each entry lies in `area` (well formed by construction).
    fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let header = self.area.get(at..at + EXTENSION_HEADER)?;
            let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
            let span = Span {
                ty: header[0],
                start: at,
                end: at + EXTENSION_HEADER + len,
            };
            at = span.end;
            Some(span)
        })
    }
}

/// One entry of an [`Extensions`] area: its type and byte range, header included.
struct Span {
    ty: u8,
    start: usize,
    end: usize,
}

/// The dialer's opening message: who it is and whom it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hello {
    /// The dialer's protocol version ([`VERSION`] for this build; never 0).
    pub version: u8,
    /// The namespace the dialer lives in.
    pub namespace: Namespace,
    /// The dialer's name.
    pub from: PeerName,
    /// The dialer's instance.
    pub from_instance: InstanceId,
    /// The name the dialer wants to reach.
    pub to: PeerName,
    /// The service requested, if any (a valid service name, see
    /// [`validate_service`]).
    pub service: Option<String>,
    /// Extensions (see the [module docs](self)).
    pub extensions: Extensions,
}

impl Hello {
    /// A `Hello` of this build's [`VERSION`], without service or extensions.
    pub fn new(
        namespace: Namespace,
        from: PeerName,
        from_instance: InstanceId,
        to: PeerName,
    ) -> Self {
        Hello {
            version: VERSION,
            namespace,
            from,
            from_instance,
            to,
            service: None,
            extensions: Extensions::new(),
        }
    }

    /// Requests `service`, after validating it.
    pub fn with_service(mut self, service: impl Into<String>) -> Result<Self> {
        let service = service.into();
        validate_service(&service)?;
        self.service = Some(service);
        Ok(self)
    }

    /// Asks for `instance` only (extension [`EXT_INSTANCE`]).
    pub fn expecting(mut self, instance: InstanceId) -> Self {
        // 19 bytes: always fits.
        let _ = self
            .extensions
            .insert_slice(EXT_INSTANCE, &instance.as_u128().to_be_bytes());
        self
    }

    /// The instance the dialer expects ([`EXT_INSTANCE`]): `Ok(None)` if it
    /// did not say, an error if the extension is not 16 bytes.
    pub fn expected_instance(&self) -> Result<Option<InstanceId>> {
        match self.extensions.get(EXT_INSTANCE) {
            None => Ok(None),
            Some(v) => <[u8; 16]>::try_from(v)
                .map(|b| Some(InstanceId::from_u128(u128::from_be_bytes(b))))
                .map_err(|_| {
                    Error::protocol(format!(
                        "Hello's expected instance is {} bytes, not 16",
                        v.len()
                    ))
                }),
        }
    }

    /// The dialer's namespace-secret nonce ([`EXT_NONCE`]), if it sent one of
    /// the right length.
    pub fn nonce(&self) -> Option<[u8; NONCE_LEN]> {
        self.extensions
            .get(EXT_NONCE)
            .and_then(|v| <[u8; NONCE_LEN]>::try_from(v).ok())
    }
}

/// The acceptor's consent: the stream is open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Welcome {
    /// The acceptor's instance, so the dialer can tell a restarted peer apart.
    pub instance: InstanceId,
    /// Extensions (see the [module docs](self)).
    pub extensions: Extensions,
}

impl Welcome {
    /// A `Welcome` from `instance`, without extensions.
    pub fn new(instance: InstanceId) -> Self {
        Welcome {
            instance,
            extensions: Extensions::new(),
        }
    }
}

/// The acceptor's refusal; the stream is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refuse {
    /// Machine-readable reason.
    pub code: RefuseCode,
    /// Human-readable detail, at most [`MAX_REASON`] bytes on the wire.
    pub reason: String,
    /// Extensions (see the [module docs](self)).
    pub extensions: Extensions,
}

impl Refuse {
    /// A refusal; `reason` is truncated to [`MAX_REASON`] bytes (on a character
    /// boundary).
    pub fn new(code: RefuseCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        let keep = truncated_len(&reason, MAX_REASON);
        reason.truncate(keep);
        Refuse {
            code,
            reason,
            extensions: Extensions::new(),
        }
    }

    /// The [`Error::Refused`] a dialer reports for this refusal.
    pub fn into_error(self) -> Error {
        Error::Refused {
            code: self.code,
            reason: self.reason,
        }
    }
}

/// The acceptor's challenge, when it holds a namespace secret: proves it
/// knows the secret and asks the dialer to prove it too.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Challenge {
    /// The acceptor's instance (covered by both proofs).
    pub instance: InstanceId,
    /// The acceptor's fresh nonce.
    pub nonce: [u8; NONCE_LEN],
    /// HMAC-SHA-256 of the transcript under the secret, by the acceptor.
    pub proof: [u8; PROOF_LEN],
    /// Extensions (see the [module docs](self)).
    pub extensions: Extensions,
}

impl Challenge {
    /// A challenge without extensions.
    pub fn new(instance: InstanceId, nonce: [u8; NONCE_LEN], proof: [u8; PROOF_LEN]) -> Self {
        Challenge {
            instance,
            nonce,
            proof,
            extensions: Extensions::new(),
        }
    }
}

/// The dialer's answer to a [`Challenge`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Proof {
    /// HMAC-SHA-256 of the transcript under the secret, by the dialer.
    pub proof: [u8; PROOF_LEN],
    /// Extensions (see the [module docs](self)).
    pub extensions: Extensions,
}

impl Proof {
    /// A proof without extensions.
    pub fn new(proof: [u8; PROOF_LEN]) -> Self {
        Proof {
            proof,
            extensions: Extensions::new(),
        }
    }
}

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Dialer → acceptor.
    Hello(Hello),
    /// Acceptor → dialer: accepted.
    Welcome(Welcome),
    /// Acceptor → dialer: refused.
    Refuse(Refuse),
    /// Acceptor → dialer: prove the namespace secret.
    Challenge(Challenge),
    /// Dialer → acceptor: the namespace-secret proof.
    Proof(Proof),
}

impl Message {
    /// The message's name, for logs and errors: `"Hello"`, `"Welcome"`, `"Refuse"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Refuse(_) => "Refuse",
            Message::Challenge(_) => "Challenge",
            Message::Proof(_) => "Proof",
        }
    }

    /// Checks what the types cannot: a `Hello` version other than 0 and a
    /// valid service name. [`encode`] writes invalid messages anyway (the peer
    /// rejects them); [`write_message`] checks first.
    pub fn validate(&self) -> Result<()> {
        if let Message::Hello(h) = self {
            if h.version == 0 {
                return Err(Error::Config("handshake version 0 is reserved".into()));
            }
            if let Some(service) = &h.service {
                validate_service(service)?;
            }
        }
        Ok(())
    }
}

impl From<Hello> for Message {
    fn from(m: Hello) -> Self {
        Message::Hello(m)
    }
}

impl From<Welcome> for Message {
    fn from(m: Welcome) -> Self {
        Message::Welcome(m)
    }
}

impl From<Refuse> for Message {
    fn from(m: Refuse) -> Self {
        Message::Refuse(m)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncated_len(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

// ---------------------------------------------------------------- encoding

/// Encodes `msg` as one frame: the 2-byte big-endian length, then the body.
///
/// Infallible: the fields are validated types, a refuse reason is truncated to
/// [`MAX_REASON`] bytes and extensions are bounded, so a message always fits
/// in [`MAX_FRAME`]. A `service` that is not a valid service name (see
/// [`Message::validate`]) is written as is, clipped to 255 bytes, and rejected
/// by the peer.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(MAGIC);
    let (version, ty, extensions) = match msg {
        Message::Hello(h) => (h.version, TYPE_HELLO, &h.extensions),
        Message::Welcome(w) => (VERSION, TYPE_WELCOME, &w.extensions),
        Message::Refuse(r) => (VERSION, TYPE_REFUSE, &r.extensions),
        Message::Challenge(c) => (VERSION, TYPE_CHALLENGE, &c.extensions),
        Message::Proof(p) => (VERSION, TYPE_PROOF, &p.extensions),
    };
    out.push(version);
    out.push(ty);
    match msg {
        Message::Hello(h) => {
            put_str8(&mut out, h.namespace.as_str());
            put_str8(&mut out, h.from.as_str());
            out.extend_from_slice(&h.from_instance.as_u128().to_be_bytes());
            put_str8(&mut out, h.to.as_str());
            put_str8(&mut out, h.service.as_deref().unwrap_or(""));
        }
        Message::Welcome(w) => {
            out.extend_from_slice(&w.instance.as_u128().to_be_bytes());
        }
        Message::Refuse(r) => {
            out.push(r.code.to_u8());
            let reason = &r.reason[..truncated_len(&r.reason, MAX_REASON)];
            // MAX_REASON < u16::MAX, so the cast is exact.
            out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
        Message::Challenge(c) => {
            out.extend_from_slice(&c.instance.as_u128().to_be_bytes());
            out.extend_from_slice(&c.nonce);
            out.extend_from_slice(&c.proof);
        }
        Message::Proof(p) => {
            out.extend_from_slice(&p.proof);
        }
    }
    // At most 255 entries, enforced by `Extensions::insert` and `decode`.
    out.push(extensions.count as u8);
    out.extend_from_slice(&extensions.area);
    let body = (out.len() - 2) as u16;
    out[..2].copy_from_slice(&body.to_be_bytes());
    out
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u8::MAX as usize)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

// ---------------------------------------------------------------- decoding

/// Reads fields from a body, naming the field in every error.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(Error::protocol(format!(
                "handshake truncated at {field}: need {n} bytes at offset {}, the body has {left} left",
                self.pos
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn instance(&mut self, field: &str) -> Result<InstanceId> {
        let b = self.take(16, field)?;
        let mut raw = [0u8; 16];
        raw.copy_from_slice(b);
        Ok(InstanceId::from_u128(u128::from_be_bytes(raw)))
    }

    /// A string prefixed by a one-byte length.
    fn str8(&mut self, field: &str) -> Result<&'a str> {
        let n = self.u8(field)? as usize;
        let b = self.take(n, field)?;
        std::str::from_utf8(b)
            .map_err(|e| Error::protocol(format!("handshake {field} is not UTF-8: {e}")))
    }

    fn extensions(&mut self) -> Result<Extensions> {
        let count = self.u8("extension count")? as usize;
        let mut seen = [false; 256];
        let start = self.pos;
        for i in 0..count {
            let ty = self.u8("extension type")?;
            let len = self.u16("extension length")? as usize;
            self.take(len, "extension value")?;
            if std::mem::replace(&mut seen[ty as usize], true) {
                return Err(Error::protocol(format!(
                    "handshake extension {i} repeats type {ty:#04x}"
                )));
            }
            if self.pos - start > MAX_EXTENSIONS {
                return Err(Error::protocol(format!(
                    "handshake extensions exceed {MAX_EXTENSIONS} bytes"
                )));
            }
        }
        // Checked entry by entry above: copied whole.
        Ok(Extensions {
            area: self.buf[start..self.pos].to_vec(),
            count,
        })
    }

    fn finish(&self, kind: &str) -> Result<()> {
        let left = self.buf.len() - self.pos;
        if left > 0 {
            return Err(Error::protocol(format!(
                "handshake {kind} has {left} trailing bytes after offset {}",
                self.pos
            )));
        }
        Ok(())
    }
}

fn invalid(field: &str, e: Error) -> Error {
    Error::protocol(format!("handshake carries an invalid {field}: {e}"))
}

/// Decodes one message body (the frame without its length prefix).
///
/// Every failure is an [`Error::Protocol`] whose reason names the problem: bad
/// magic, version 0, unknown message type or refuse code, a field truncated,
/// trailing bytes, an oversized body, an invalid name or UTF-8. Never panics;
/// allocates at most the size of the body.
pub fn decode(body: &[u8]) -> Result<Message> {
    if body.len() > MAX_FRAME {
        return Err(Error::protocol(format!(
            "handshake body of {} bytes exceeds the {MAX_FRAME}-byte limit",
            body.len()
        )));
    }
    let mut r = Reader { buf: body, pos: 0 };
    let magic = r.take(MAGIC.len(), "magic")?;
    if magic != MAGIC {
        return Err(Error::protocol(format!(
            "handshake has bad magic {} (expected {:?}): not a masse peer",
            Hex(magic),
            "MASSE"
        )));
    }
    let version = r.u8("version")?;
    if version == 0 {
        return Err(Error::protocol("handshake version 0 is invalid"));
    }
    let ty = r.u8("message type")?;
    debug_assert_eq!(r.pos, HEADER_LEN);
    match ty {
        TYPE_HELLO => {
            let namespace =
                Namespace::new(r.str8("namespace")?).map_err(|e| invalid("namespace", e))?;
            let from = PeerName::new(r.str8("from")?).map_err(|e| invalid("`from` name", e))?;
            let from_instance = r.instance("from_instance")?;
            let to = PeerName::new(r.str8("to")?).map_err(|e| invalid("`to` name", e))?;
            let service = match r.str8("service")? {
                "" => None,
                s => {
                    validate_service(s).map_err(|e| invalid("service", e))?;
                    Some(s.to_owned())
                }
            };
            let extensions = r.extensions()?;
            r.finish("Hello")?;
            Ok(Message::Hello(Hello {
                version,
                namespace,
                from,
                from_instance,
                to,
                service,
                extensions,
            }))
        }
        TYPE_WELCOME => {
            let instance = r.instance("instance")?;
            let extensions = r.extensions()?;
            r.finish("Welcome")?;
            Ok(Message::Welcome(Welcome {
                instance,
                extensions,
            }))
        }
        TYPE_REFUSE => {
            let raw = r.u8("refuse code")?;
            let code = RefuseCode::from_u8(raw).ok_or_else(|| {
                Error::protocol(format!("handshake has unknown refuse code {raw}"))
            })?;
            let len = r.u16("reason length")? as usize;
            if len > MAX_REASON {
                return Err(Error::protocol(format!(
                    "handshake refuse reason is {len} bytes, at most {MAX_REASON} are allowed"
                )));
            }
            let reason = std::str::from_utf8(r.take(len, "reason")?)
                .map_err(|e| Error::protocol(format!("handshake refuse reason is not UTF-8: {e}")))?
                .to_owned();
            let extensions = r.extensions()?;
            r.finish("Refuse")?;
            Ok(Message::Refuse(Refuse {
                code,
                reason,
                extensions,
            }))
        }
        TYPE_CHALLENGE => {
            let instance = r.instance("instance")?;
            let nonce = r.array::<NONCE_LEN>("nonce")?;
            let proof = r.array::<PROOF_LEN>("proof")?;
            let extensions = r.extensions()?;
            r.finish("Challenge")?;
            Ok(Message::Challenge(Challenge {
                instance,
                nonce,
                proof,
                extensions,
            }))
        }
        TYPE_PROOF => {
            let proof = r.array::<PROOF_LEN>("proof")?;
            let extensions = r.extensions()?;
            r.finish("Proof")?;
            Ok(Message::Proof(Proof { proof, extensions }))
        }
        other => Err(Error::protocol(format!(
            "handshake has unknown message type {other:#04x}"
        ))),
    }
}

/// Hex dump for error messages.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- async I/O

/// Reads one frame from `r` and decodes it, all within `deadline`.
///
/// A length above [`MAX_FRAME`] is rejected before anything is allocated; the
/// stream closing mid-frame is an [`Error::Protocol`] saying `truncated`; a
/// peer too slow to deliver the frame is [`Error::Timeout`] with
/// `what: crate::Operation::Handshake`; a failing read is [`Error::Io`]. Every rejection is
/// logged with `tracing::debug!`. After an error the stream is in an unknown
/// state and should be closed.
pub async fn read_message<R>(r: &mut R, deadline: Duration) -> Result<Message>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let result = match tokio::time::timeout(deadline, read_frame_and_decode(r)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            what: crate::Operation::Handshake,
            after: deadline,
        }),
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "handshake message rejected");
    }
    result
}

async fn read_frame_and_decode<R>(r: &mut R) -> Result<Message>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut len = [0u8; 2];
    read_full(r, &mut len, "frame length").await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::protocol(format!(
            "handshake frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    read_full(r, &mut body, "frame body").await?;
    decode(&body)
}

/// Fills `buf`, reporting how far it got if the stream ends first.
async fn read_full<R>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) => {
                return Err(Error::protocol(format!(
                    "handshake truncated: the stream closed after {got} of {} bytes of the {what}",
                    buf.len()
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Validates and encodes `msg` ([`Message::validate`], [`encode`]) and writes
/// the frame with one `write_all`, then flushes.
pub async fn write_message<W>(w: &mut W, msg: &Message) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    msg.validate()?;
    let frame = encode(msg);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello::new(
            "prod".parse().unwrap(),
            "web-1".parse().unwrap(),
            InstanceId::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            "db-1".parse().unwrap(),
        )
        .with_service("rpc")
        .unwrap()
    }

    fn samples() -> Vec<Message> {
        let mut with_ext = hello();
        with_ext.extensions.insert(0x01, vec![7; 32]).unwrap();
        with_ext.extensions.insert(0x40, Vec::new()).unwrap();
        let mut welcome_ext = Welcome::new(InstanceId::from_u128(1));
        welcome_ext
            .extensions
            .insert(0x02, b"proof".to_vec())
            .unwrap();
        vec![
            hello().into(),
            Hello::new(
                "a".parse().unwrap(),
                "b".parse().unwrap(),
                InstanceId::from_u128(0),
                "c".parse().unwrap(),
            )
            .into(),
            with_ext.into(),
            Welcome::new(InstanceId::from_u128(u128::MAX)).into(),
            welcome_ext.into(),
            Refuse::new(RefuseCode::WrongPeer, "I am db-2").into(),
            Refuse::new(RefuseCode::Busy, "").into(),
        ]
    }

    fn body(msg: &Message) -> Vec<u8> {
        encode(msg)[2..].to_vec()
    }

    #[track_caller]
    fn protocol_err(r: Result<Message>, needle: &str) -> String {
        match r {
            Err(Error::Protocol { reason }) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
                reason
            }
            other => panic!("expected a protocol error containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let f = encode(&hello().into());
        let len = u16::from_be_bytes([f[0], f[1]]) as usize;
        assert_eq!(len, f.len() - 2);
        assert_eq!(&f[2..7], b"MASSE");
        assert_eq!(f[7], VERSION);
        assert_eq!(f[8], TYPE_HELLO);
        assert_eq!(f[9] as usize, 4);
        assert_eq!(&f[10..14], b"prod");
        assert_eq!(&f[14..20], b"\x05web-1");
        assert_eq!(
            f[20..36],
            0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_be_bytes()
        );
        assert_eq!(&f[36..41], b"\x04db-1");
        assert_eq!(&f[41..45], b"\x03rpc");
        assert_eq!(&f[45..], &[0]);

        let w = encode(&Welcome::new(InstanceId::from_u128(5)).into());
        assert_eq!(w.len(), 2 + 7 + 16 + 1);
        assert_eq!(w[8], TYPE_WELCOME);

        let r = encode(&Refuse::new(RefuseCode::NoSuchService, "no").into());
        assert_eq!(&r[8..13], &[TYPE_REFUSE, 3, 0, 2, b'n']);
    }

    #[test]
    fn samples_roundtrip_canonically() {
        for m in samples() {
            let b = body(&m);
            assert_eq!(decode(&b).unwrap(), m);
            assert_eq!(body(&decode(&b).unwrap()), b);
        }
    }

    #[test]
    fn bad_magic() {
        let reason = protocol_err(decode(b"GET / HTTP/1.1\r\n"), "bad magic");
        assert!(reason.contains("47 45 54 20 2f"), "{reason}");
        let mut b = body(&hello().into());
        b[0] = b'm';
        protocol_err(decode(&b), "bad magic");
    }

    #[test]
    fn version_zero_is_rejected() {
        let mut b = body(&hello().into());
        b[5] = 0;
        protocol_err(decode(&b), "version 0");
        let mut h = hello();
        h.version = 0;
        assert!(matches!(
            Message::Hello(h).validate(),
            Err(Error::Config(reason)) if reason.contains("version 0")
        ));
    }

    #[test]
    fn newer_versions_decode() {
        let mut h = hello();
        h.version = 9;
        let m = Message::Hello(h);
        assert_eq!(decode(&body(&m)).unwrap(), m);
    }

    #[test]
    fn oversized_body() {
        let mut b = body(&hello().into());
        b.resize(MAX_FRAME + 1, 0);
        protocol_err(decode(&b), "exceeds");
    }

    #[test]
    fn truncated_at_every_offset() {
        for m in samples() {
            let b = body(&m);
            for cut in 0..b.len() {
                protocol_err(decode(&b[..cut]), "truncated");
            }
        }
        let reason = protocol_err(
            decode(&body(&hello().into())[..10]),
            "truncated at namespace",
        );
        assert!(reason.contains("offset 8"), "{reason}");
    }

    #[test]
    fn trailing_bytes() {
        for m in samples() {
            let mut b = body(&m);
            b.extend_from_slice(b"xyz");
            protocol_err(decode(&b), "3 trailing bytes");
        }
    }

    #[test]
    fn invalid_names() {
        let good = body(&hello().into());
        // namespace "prod" at body offsets 7 (length) and 8..12.
        let mut b = good.clone();
        b[9] = b' ';
        protocol_err(decode(&b), "invalid namespace");
        // from "web-1" at 13..18.
        let mut b = good.clone();
        b[13] = b'*';
        protocol_err(decode(&b), "invalid `from` name");
        // to "db-1" at 35..39.
        let mut b = good.clone();
        b[35] = b'/';
        protocol_err(decode(&b), "invalid `to` name");
        // service "rpc" at 40..43.
        let mut b = good.clone();
        b[40] = b'?';
        protocol_err(decode(&b), "invalid service");
        // Invalid UTF-8 in a name.
        let mut b = good.clone();
        b[13] = 0xff;
        protocol_err(decode(&b), "not UTF-8");
        // Empty names.
        let mut b = good.clone();
        b.splice(7..12, [0]);
        protocol_err(decode(&b), "invalid namespace");
        // A namespace of 65 bytes (valid alphabet, too long).
        let mut b = good;
        let long = [b'n'; 65];
        b.splice(7..12, std::iter::once(65).chain(long));
        protocol_err(decode(&b), "invalid namespace");
    }

    #[test]
    fn unknown_refuse_code() {
        let mut b = body(&Refuse::new(RefuseCode::Busy, "x").into());
        for code in [0u8, 11, 255] {
            b[7] = code;
            protocol_err(decode(&b), &format!("unknown refuse code {code}"));
        }
    }

    #[test]
    fn unknown_message_type() {
        let mut b = body(&Welcome::new(InstanceId::from_u128(1)).into());
        for ty in [0u8, 6, 0x7f, 0xff] {
            b[6] = ty;
            protocol_err(decode(&b), "unknown message type");
        }
    }

    #[test]
    fn refuse_reason_limits() {
        let long = "é".repeat(MAX_REASON); // 2048 bytes
        let r = Refuse::new(RefuseCode::Unsupported, long.clone());
        assert_eq!(r.reason.len(), MAX_REASON);
        // A reason set directly is truncated by encode too, on a char boundary.
        let mut direct = Refuse::new(RefuseCode::Unsupported, "");
        direct.reason = format!("x{long}");
        match decode(&body(&direct.into())).unwrap() {
            Message::Refuse(r) => assert_eq!(r.reason.len(), MAX_REASON - 1),
            other => panic!("{other:?}"),
        }
        // A reason over the limit on the wire is rejected.
        let mut b = body(&Refuse::new(RefuseCode::Busy, "").into());
        let n = MAX_REASON + 1;
        b.splice(8..10, (n as u16).to_be_bytes());
        b.splice(10..10, std::iter::repeat_n(b'a', n));
        protocol_err(decode(&b), "reason is 1025 bytes");
        // Invalid UTF-8 in the reason.
        let mut b = body(&Refuse::new(RefuseCode::Busy, "ab").into());
        b[10] = 0xc3;
        protocol_err(decode(&b), "not UTF-8");
        assert!(matches!(
            Refuse::new(RefuseCode::Busy, "later").into_error(),
            Error::Refused {
                code: RefuseCode::Busy,
                ..
            }
        ));
    }

    #[test]
    fn extensions_keep_their_order_when_a_middle_value_changes_length() {
        let mut e = Extensions::new();
        e.insert(7, vec![1, 1]).unwrap();
        e.insert(3, vec![2]).unwrap();
        e.insert(9, Vec::new()).unwrap();
        assert_eq!(e.insert(3, vec![5; 40]).unwrap(), Some(vec![2]));
        let entries: Vec<(u8, Vec<u8>)> = e.iter().map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(
            entries,
            [(7, vec![1, 1]), (3, vec![5; 40]), (9, Vec::new())]
        );
        assert_eq!(e.insert(3, Vec::new()).unwrap(), Some(vec![5; 40]));
        assert_eq!(e.get(9), Some(&[][..]));
        assert_eq!(e.remove(7), Some(vec![1, 1]));
        assert_eq!(e.iter().map(|(t, _)| t).collect::<Vec<_>>(), [3, 9]);
        assert_eq!(e.len(), 2);
        let w: Message = Welcome {
            instance: InstanceId::from_u128(3),
            extensions: e,
        }
        .into();
        assert_eq!(decode(&body(&w)).unwrap(), w);
    }

    #[test]
    fn extension_errors() {
        let mut e = Extensions::new();
        assert_eq!(e.insert(1, vec![1]).unwrap(), None);
        assert_eq!(e.insert(1, vec![2]).unwrap(), Some(vec![1]));
        assert_eq!(e.get(1), Some(&[2u8][..]));
        assert!(matches!(
            e.insert(2, vec![0; MAX_EXTENSIONS]),
            Err(Error::Config(_))
        ));
        assert_eq!(e.len(), 1);
        assert_eq!(e.remove(1), Some(vec![2]));
        assert!(e.is_empty());
        assert!(e.insert(2, vec![0; MAX_EXTENSIONS - 3]).is_ok());
        let mut many = Extensions::new();
        for t in 0..=254u8 {
            many.insert(t, Vec::new()).unwrap();
        }
        assert!(matches!(
            many.insert(255, Vec::new()),
            Err(Error::Config(_))
        ));
        let w: Message = Welcome {
            instance: InstanceId::from_u128(3),
            extensions: many,
        }
        .into();
        assert_eq!(decode(&body(&w)).unwrap(), w);

        // Duplicate type on the wire.
        let mut b = body(&Welcome::new(InstanceId::from_u128(1)).into());
        b.pop();
        b.extend_from_slice(&[2, 9, 0, 0, 9, 0, 0]);
        protocol_err(decode(&b), "repeats type 0x09");
        // Extension area too large on the wire (the frame itself is within limits).
        let mut b = body(&Welcome::new(InstanceId::from_u128(1)).into());
        b.pop();
        b.extend_from_slice(&[2, 1, 0x04, 0x00]);
        b.extend_from_slice(&[0; 1024]);
        b.extend_from_slice(&[2, 0x04, 0x00]);
        b.extend_from_slice(&[0; 1024]);
        protocol_err(decode(&b), "extensions exceed");
    }

    #[test]
    fn validate_catches_bad_service() {
        let mut h = hello();
        h.service = Some("no spaces".into());
        assert!(matches!(
            Message::Hello(h.clone()).validate(),
            Err(Error::InvalidName { .. })
        ));
        h.service = Some("x".repeat(300));
        // encode still produces a frame, which the peer rejects.
        protocol_err(decode(&body(&h.into())), "invalid service");
        assert!(matches!(
            hello().with_service("a b"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn max_sized_messages_fit_a_frame() {
        let mut h = Hello::new(
            "n".repeat(64).parse().unwrap(),
            "f".repeat(128).parse().unwrap(),
            InstanceId::from_u128(1),
            "t".repeat(128).parse().unwrap(),
        )
        .with_service("s".repeat(64))
        .unwrap();
        h.extensions.insert(1, vec![0; MAX_EXTENSIONS - 3]).unwrap();
        let mut r = Refuse::new(RefuseCode::Busy, "r".repeat(5000));
        r.extensions.insert(1, vec![0; MAX_EXTENSIONS - 3]).unwrap();
        for m in [Message::Hello(h), Message::Refuse(r)] {
            let f = encode(&m);
            assert!(f.len() - 2 <= MAX_FRAME, "{}", f.len());
            assert_eq!(decode(&f[2..]).unwrap(), m);
        }
    }

    // ------------------------------------------------------------ async

    #[tokio::test]
    async fn write_then_read() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let msgs = samples();
        let sent = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                write_message(&mut a, m).await.unwrap();
            }
        });
        for m in msgs {
            assert_eq!(read_message(&mut b, DEFAULT_DEADLINE).await.unwrap(), m);
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn write_rejects_invalid() {
        let (mut a, _b) = tokio::io::duplex(64);
        let mut h = hello();
        h.service = Some(String::new());
        assert!(matches!(
            write_message(&mut a, &h.into()).await,
            Err(Error::InvalidName { .. })
        ));
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Only the length prefix: if the reader tried to read 4097 bytes it
        // would time out instead.
        a.write_all(&((MAX_FRAME + 1) as u16).to_be_bytes())
            .await
            .unwrap();
        let r = read_message(&mut b, Duration::from_secs(5)).await;
        protocol_err(r, "exceeds");
        a.write_all(&[0xff, 0xff]).await.unwrap();
        protocol_err(read_message(&mut b, Duration::from_secs(5)).await, "65535");
    }

    #[tokio::test]
    async fn truncated_stream_at_every_offset() {
        let frame = encode(&hello().into());
        for cut in 0..frame.len() {
            let (mut a, mut b) = tokio::io::duplex(8192);
            a.write_all(&frame[..cut]).await.unwrap();
            drop(a);
            let r = read_message(&mut b, Duration::from_secs(5)).await;
            protocol_err(r, "truncated");
        }
    }

    #[tokio::test]
    async fn garbage_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"\x00\x10GET / HTTP/1.1\r\n").await.unwrap();
        protocol_err(read_message(&mut b, DEFAULT_DEADLINE).await, "bad magic");
    }

    #[tokio::test]
    async fn io_errors_are_io() {
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
            }
        }
        match read_message(&mut Failing, DEFAULT_DEADLINE).await {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_loris_times_out() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let frame = encode(&hello().into());
        let writer = tokio::spawn(async move {
            for byte in frame {
                if a.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let start = tokio::time::Instant::now();
        let deadline = Duration::from_millis(300);
        match read_message(&mut b, deadline).await {
            Err(Error::Timeout { what, after }) => {
                assert_eq!(what, crate::Operation::Handshake);
                assert_eq!(after, deadline);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(start.elapsed() >= deadline);
        drop(b);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_a, mut b) = tokio::io::duplex(64);
        assert!(matches!(
            read_message(&mut b, Duration::from_secs(5)).await,
            Err(Error::Timeout { .. })
        ));
    }

    // ------------------------------------------------------------ properties

    fn name(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{max}}}")).unwrap()
    }

    fn extensions() -> impl Strategy<Value = Extensions> {
        proptest::collection::btree_map(
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            0..6,
        )
        .prop_map(|m| {
            let mut e = Extensions::new();
            for (t, v) in m {
                e.insert(t, v).unwrap();
            }
            e
        })
    }

    fn message() -> impl Strategy<Value = Message> {
        let hello = (
            1..=u8::MAX,
            name(64),
            name(128),
            any::<u128>(),
            name(128),
            proptest::option::of(name(64)),
            extensions(),
        )
            .prop_map(|(version, ns, from, inst, to, service, extensions)| {
                Message::Hello(Hello {
                    version,
                    namespace: ns.parse().unwrap(),
                    from: from.parse().unwrap(),
                    from_instance: InstanceId::from_u128(inst),
                    to: to.parse().unwrap(),
                    service,
                    extensions,
                })
            });
        let welcome = (any::<u128>(), extensions()).prop_map(|(i, extensions)| {
            Message::Welcome(Welcome {
                instance: InstanceId::from_u128(i),
                extensions,
            })
        });
        let refuse = (
            proptest::sample::select(RefuseCode::ALL.to_vec()),
            ".{0,300}",
            extensions(),
        )
            .prop_map(|(code, reason, extensions)| {
                let mut r = Refuse::new(code, reason);
                r.extensions = extensions;
                Message::Refuse(r)
            });
        let challenge = (
            any::<u128>(),
            any::<[u8; NONCE_LEN]>(),
            any::<[u8; PROOF_LEN]>(),
            extensions(),
        )
            .prop_map(|(i, nonce, proof, extensions)| {
                let mut c = Challenge::new(InstanceId::from_u128(i), nonce, proof);
                c.extensions = extensions;
                Message::Challenge(c)
            });
        let proof = (any::<[u8; PROOF_LEN]>(), extensions()).prop_map(|(proof, extensions)| {
            let mut p = Proof::new(proof);
            p.extensions = extensions;
            Message::Proof(p)
        });
        prop_oneof![hello, welcome, refuse, challenge, proof]
    }

    proptest! {
        #[test]
        fn roundtrip(m in message()) {
            let frame = encode(&m);
            prop_assert!(frame.len() - 2 <= MAX_FRAME);
            prop_assert_eq!(u16::from_be_bytes([frame[0], frame[1]]) as usize, frame.len() - 2);
            prop_assert_eq!(decode(&frame[2..]).unwrap(), m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = decode(&bytes) {
                prop_assert_eq!(decode(&encode(&m)[2..]).unwrap(), m);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_frames(
            m in message(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = encode(&m)[2..].to_vec();
            for (i, v) in flips {
                let i = i.index(b.len());
                b[i] = v;
            }
            let keep = cut.index(b.len() + 1);
            b.truncate(keep);
            if let Ok(m) = decode(&b) {
                let again = encode(&m);
                prop_assert_eq!(decode(&again[2..]).unwrap(), m);
                if b[5] == VERSION || b[6] == TYPE_HELLO {
                    prop_assert_eq!(&again[2..], &b[..]);
                }
            }
        }
    }
}
