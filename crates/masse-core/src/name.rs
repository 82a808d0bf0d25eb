//! Validated names: [`Namespace`], [`PeerName`] and service names.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result, clip};

/// True for the bytes allowed in names, namespaces and services: `[A-Za-z0-9._-]`.
#[inline]
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Checks `input` against the name alphabet and a length limit.
pub(crate) fn validate(kind: &'static str, input: &str, max: usize) -> Result<()> {
    let invalid = |position: Option<usize>, reason: String| Error::InvalidName {
        kind,
        input: clip(input),
        position,
        reason,
    };
    if input.is_empty() {
        return Err(invalid(None, "must not be empty".into()));
    }
    if input.len() > max {
        return Err(invalid(
            Some(max),
            format!("is {} bytes long, at most {max} are allowed", input.len()),
        ));
    }
    if let Some((pos, ch)) = input
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || !is_name_byte(c as u8))
    {
        return Err(invalid(
            Some(pos),
            format!(
                "character {ch:?} at byte {pos} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"
            ),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Longest valid value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            pub fn new(s: &str) -> Result<Self> {
                validate($kind, s, Self::MAX_LEN)?;
                Ok(Self(Arc::from(s)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(&s)
            }
        }

        impl TryFrom<&String> for $ty {
            type Error = Error;
            fn try_from(s: &String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl From<&$ty> for $ty {
            fn from(s: &$ty) -> Self {
                s.clone()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name a node is reached by, unique among live nodes of a namespace:
    /// 1–128 bytes of `[A-Za-z0-9._-]`.
    ///
    /// ```
    /// use masse_core::PeerName;
    /// let name: PeerName = "billing-7".parse()?;
    /// assert_eq!(name.as_str(), "billing-7");
    /// assert!(matches!("billing 7".parse::<PeerName>(), Err(masse_core::Error::InvalidName { .. })));
    /// # Ok::<(), masse_core::Error>(())
    /// ```
    PeerName,
    "peer name",
    128
);

name_type!(
    /// A namespace: nodes only see and reach nodes of their own namespace.
    /// 1–64 bytes of `[A-Za-z0-9._-]`.
    Namespace,
    "namespace",
    64
);

impl PeerName {
    /// The name's string, shared (no copy).
    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl Default for Namespace {
    /// The namespace `"default"`.
    fn default() -> Self {
        Namespace(Arc::from("default"))
    }
}

/// Validates a service name (1–64 bytes of `[A-Za-z0-9._-]`).
pub fn validate_service(service: &str) -> Result<()> {
    validate("service", service, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet() {
        for ok in ["a", "billing-7", "A.b_c-9", &"x".repeat(128)] {
            assert_eq!(PeerName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_with_position() {
        match PeerName::new("bill ing") {
            Err(Error::InvalidName { position, kind, .. }) => {
                assert_eq!(position, Some(4));
                assert_eq!(kind, "peer name");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = PeerName::new("né").unwrap_err().to_string();
        assert!(e.contains("'é'") && e.contains("byte 1"), "{e}");
        assert!(matches!(PeerName::new(""), Err(Error::InvalidName { .. })));
        assert!(matches!(
            PeerName::new(&"x".repeat(129)),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            Namespace::new(&"x".repeat(65)),
            Err(Error::InvalidName { .. })
        ));
        assert!(Namespace::new(&"x".repeat(64)).is_ok());
        assert!(matches!(
            PeerName::new("a/b"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            PeerName::new("a*"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn serde_validates() {
        let n: PeerName = serde_json::from_str("\"db-1\"").unwrap();
        assert_eq!(n, "db-1");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"db-1\"");
        let e = serde_json::from_str::<PeerName>("\"db 1\"").unwrap_err();
        assert!(e.to_string().contains("peer name"), "{e}");
    }

    #[test]
    fn long_input_is_clipped_in_errors() {
        let long = "é".repeat(1000);
        let msg = PeerName::new(&long).unwrap_err().to_string();
        assert!(msg.len() < 600, "{}", msg.len());
    }
}
