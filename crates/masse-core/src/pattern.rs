//! [`Pattern`]: a compiled glob over peer names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result, clip};
use crate::name::{PeerName, is_name_byte};

/// One compiled glob element. Every element but `Star` matches exactly one byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    /// One exact byte.
    Byte(u8),
    /// `?`: any one byte.
    Any,
    /// `*`: any run of bytes, including none.
    Star,
    /// `[...]` / `[!...]`: a set of ASCII bytes as a bitmap.
    Set(u128),
}

impl Token {
    #[inline]
    fn matches(self, b: u8) -> bool {
        match self {
            Token::Byte(x) => x == b,
            Token::Any => true,
            Token::Star => false,
            Token::Set(bits) => b < 128 && bits & (1u128 << b) != 0,
        }
    }
}

/// A compiled glob over peer names: `*` (any run), `?` (any one character),
/// `[a-z0-9]` (a set, with ranges), `[!x]` (a negated set). A name without
/// metacharacters is a pattern that matches exactly that name.
///
/// Matching never allocates.
///
/// ```
/// use masse_core::Pattern;
/// let p: Pattern = "worker-[0-9]*".parse()?;
/// assert!(p.matches("worker-12"));
/// assert!(!p.matches("worker-x"));
/// assert!(Pattern::new("db-1")?.is_exact());
/// # Ok::<(), masse_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Pattern {
    source: Arc<str>,
    kind: Kind,
}

/// How a [`Pattern`] matches.
#[derive(Clone)]
enum Kind {
    /// No metacharacters: by comparing names.
    Exact(PeerName),
    Glob(Arc<[Token]>),
}

impl Pattern {
    /// Longest accepted pattern source, in bytes.
    pub const MAX_LEN: usize = 512;

    /// Compiles `pattern`; the error tells what is wrong and at which byte.
    pub fn new(pattern: &str) -> Result<Self> {
        let err = |position: usize, reason: &'static str| Error::InvalidPattern {
            input: clip(pattern),
            position,
            reason,
        };
        if pattern.is_empty() {
            return Err(err(0, "pattern must not be empty"));
        }
        if pattern.len() > Self::MAX_LEN {
            return Err(err(Self::MAX_LEN, "pattern is longer than 512 bytes"));
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match b {
                b'*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'[' => {
                    let start = i;
                    i += 1;
                    let negated = matches!(bytes.get(i), Some(b'!' | b'^'));
                    if negated {
                        i += 1;
                    }
                    let mut bits: u128 = 0;
                    let mut empty = true;
                    loop {
                        let Some(&c) = bytes.get(i) else {
                            return Err(err(start, "unclosed '['"));
                        };
                        if c == b']' {
                            i += 1;
                            break;
                        }
                        if !is_name_byte(c) {
                            return Err(err(i, "character not allowed in a name set"));
                        }
                        // A range `a-z`, unless '-' is last in the set.
                        if bytes.get(i + 1) == Some(&b'-')
                            && bytes.get(i + 2).is_some_and(|&e| e != b']')
                        {
                            let end = bytes[i + 2];
                            if !is_name_byte(end) {
                                return Err(err(i + 2, "character not allowed in a name set"));
                            }
                            if end < c {
                                return Err(err(i, "range end is before range start"));
                            }
                            for x in c..=end {
                                bits |= 1u128 << x;
                            }
                            i += 3;
                        } else {
                            bits |= 1u128 << c;
                            i += 1;
                        }
                        empty = false;
                    }
                    if empty {
                        return Err(err(start, "empty set '[]'"));
                    }
                    if negated {
                        bits = !bits;
                    }
                    // Only name bytes can ever match.
                    bits &= NAME_BYTES;
                    tokens.push(Token::Set(bits));
                }
                _ if is_name_byte(b) => {
                    tokens.push(Token::Byte(b));
                    i += 1;
                }
                _ => {
                    return Err(err(
                        i,
                        "character not allowed (names use A-Z, a-z, 0-9, '.', '_', '-'; globs add * ? [ ])",
                    ));
                }
            }
        }
        if tokens.iter().all(|t| matches!(t, Token::Byte(_))) {
            return Ok(Pattern::from(PeerName::new(pattern)?));
        }
        Ok(Pattern {
            source: Arc::from(pattern),
            kind: Kind::Glob(tokens.into()),
        })
    }

    /// The pattern that matches every name.
    pub fn any() -> Self {
        Pattern::new("*").expect("'*' is a valid pattern")
    }

    /// Does `name` match? Never allocates.
    pub fn matches(&self, name: &str) -> bool {
        match &self.kind {
            Kind::Exact(exact) => exact.as_str() == name,
            Kind::Glob(tokens) => glob_match(tokens, name.as_bytes()),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True if the pattern has no metacharacters and so names exactly one peer.
    pub fn is_exact(&self) -> bool {
        matches!(self.kind, Kind::Exact(_))
    }

    /// The one name this pattern matches, if it has no metacharacters.
    pub fn as_exact(&self) -> Option<&PeerName> {
        match &self.kind {
            Kind::Exact(name) => Some(name),
            Kind::Glob(_) => None,
        }
    }

    /// The literal bytes every match starts with (empty for `*…`). Backends
    /// use it to narrow a range scan before matching.
    pub fn literal_prefix(&self) -> &str {
        let Kind::Glob(tokens) = &self.kind else {
            // Exact: the whole name.
            return &self.source;
        };
        let n = tokens
            .iter()
            .take_while(|t| matches!(t, Token::Byte(_)))
            .count();
        // Every `Byte` token is one source byte until the first metacharacter.
        &self.source[..n]
    }
}

/// Bitmap of the bytes allowed in names.
const NAME_BYTES: u128 = {
    let mut bits = 0u128;
    let mut b = 0u8;
    while b < 128 {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            bits |= 1u128 << b;
        }
        b += 1;
    }
    bits
};

/// Linear-time glob matching with a single backtrack point for the last `*`.
fn glob_match(tokens: &[Token], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if let Some(&t) = tokens.get(p) {
            if t == Token::Star {
                star = Some((p, n));
                p += 1;
                continue;
            }
            if t.matches(name[n]) {
                p += 1;
                n += 1;
                continue;
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    tokens[p..].iter().all(|&t| t == Token::Star)
}

impl FromStr for Pattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Pattern::new(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Pattern::new(s)
    }
}

impl TryFrom<String> for Pattern {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Pattern::new(&s)
    }
}

impl From<PeerName> for Pattern {
    /// Shares the name's string: no allocation.
    fn from(name: PeerName) -> Self {
        Pattern {
            source: name.shared(),
            kind: Kind::Exact(name),
        }
    }
}

impl From<&PeerName> for Pattern {
    fn from(name: &PeerName) -> Self {
        Pattern::from(name.clone())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.source.hash(state);
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.source)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).unwrap().matches(n)
    }

    #[test]
    fn basics() {
        assert!(m("*", "anything"));
        assert!(m("worker-*", "worker-1"));
        assert!(m("worker-*", "worker-"));
        assert!(!m("worker-*", "worke"));
        assert!(m("w?rker", "worker"));
        assert!(!m("w?rker", "wrker"));
        assert!(m("db-[0-9]", "db-7"));
        assert!(!m("db-[0-9]", "db-x"));
        assert!(m("db-[!0-9]", "db-x"));
        assert!(!m("db-[!0-9]", "db-7"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("*-[a-c-]", "x--"));
        assert!(m("a**b", "ab"));
        assert!(!m("abc", "abcd"));
        assert!(!m("[a-z]", " "), "sets only hold name bytes");
    }

    #[test]
    fn exact_and_prefix() {
        let p = Pattern::new("db-1").unwrap();
        assert_eq!(p.as_exact().map(|n| n.as_str()), Some("db-1"));
        assert_eq!(Pattern::new("work-*").unwrap().literal_prefix(), "work-");
        assert_eq!(Pattern::new("*x").unwrap().literal_prefix(), "");
        assert!(!Pattern::new("a?").unwrap().is_exact());
    }

    #[test]
    fn errors_point_at_the_problem() {
        for (p, pos) in [
            ("ab[cd", 2),
            ("a b", 1),
            ("[]", 0),
            ("x[z-a]", 2),
            ("a[b/]", 3),
            ("é", 0),
        ] {
            match Pattern::new(p) {
                Err(Error::InvalidPattern { position, .. }) => assert_eq!(position, pos, "{p}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        assert!(matches!(
            Pattern::new(""),
            Err(Error::InvalidPattern { .. })
        ));
    }

    fn reference(p: &str, n: &str) -> Option<bool> {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(false)
            .backslash_escape(false)
            .build()
            .ok()?;
        Some(g.compile_matcher().is_match(n))
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            4 => "[ab.-]".prop_map(|s| s),
            2 => Just("*".to_string()),
            1 => Just("?".to_string()),
            1 => Just("[a-b]".to_string()),
            1 => Just("[!a]".to_string()),
            1 => Just("[.b]".to_string()),
        ];
        proptest::collection::vec(atom, 1..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn agrees_with_globset(p in pattern_strategy(), n in "[ab.-]{1,10}") {
            let ours = Pattern::new(&p).unwrap().matches(&n);
            // globset refuses `**` outside path components; collapse as we do.
            let mut collapsed = p.clone();
            while collapsed.contains("**") {
                collapsed = collapsed.replace("**", "*");
            }
            if let Some(theirs) = reference(&collapsed, &n) {
                prop_assert_eq!(ours, theirs, "pattern {:?} name {:?}", p, n);
            }
        }

        #[test]
        fn never_panics(p in "\\PC{0,20}", n in "\\PC{0,20}") {
            if let Ok(pat) = Pattern::new(&p) {
                let _ = pat.matches(&n);
            }
        }
    }
}
