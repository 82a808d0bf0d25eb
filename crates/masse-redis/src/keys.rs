//! The key layout. Every key of a namespace carries the hash tag `{<ns>}`, so
//! a namespace lives in one cluster slot and one Lua script can touch all of it.
//!
//! | key                        | type        | holds                                                    |
//! |----------------------------|-------------|----------------------------------------------------------|
//! | `masse:{ns}:peer:<name>`   | hash        | `instance`, `record` (JSON), `expires` (ms, server clock), `key_expires` (its `PEXPIREAT`) |
//! | `masse:{ns}:index`         | sorted set  | member `<name>`, score = expiry in ms (server clock)     |
//! | `masse:{ns}:events`        | stream      | one entry per change: `seq`, `type`, `name`, `instance`, `record` |
//! | `masse:{ns}:seq`           | string      | the number of events ever appended (`INCR`)              |
//! | `masse:{ns}:sweeping`      | string      | the id of the handle sweeping due records, for one `sweep_interval` |
//!
//! A peer hash has a `PEXPIREAT` at least half of [`GRACE_MS`] past its
//! expiry (`key_expires` says when; heartbeats push it out only when less
//! than half is left): the sorted set and `expires` decide liveness; the key
//! expiry only collects what no sweeper removed.

use masse_core::{Namespace, PeerName};

/// Every key starts with this.
pub(crate) const ROOT: &str = "masse";

/// How long a peer hash outlives its expiry, so that the sweeper still knows
/// which instance expired (10 minutes).
pub(crate) const GRACE_MS: u64 = 600_000;

/// The keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NsKeys {
    /// `masse:{ns}:peer:` — prefix of the per-name hashes.
    pub(crate) peer_prefix: String,
    /// `masse:{ns}:index`
    pub(crate) index: String,
    /// `masse:{ns}:events`
    pub(crate) events: String,
    /// `masse:{ns}:seq`
    pub(crate) seq: String,
    /// `masse:{ns}:sweeping`
    pub(crate) sweeping: String,
}

impl NsKeys {
    pub(crate) fn new(ns: &Namespace) -> Self {
        let base = format!("{ROOT}:{{{ns}}}:");
        NsKeys {
            peer_prefix: format!("{base}peer:"),
            index: format!("{base}index"),
            events: format!("{base}events"),
            seq: format!("{base}seq"),
            sweeping: format!("{base}sweeping"),
        }
    }

    /// `masse:{ns}:peer:<name>`
    pub(crate) fn peer(&self, name: &PeerName) -> String {
        format!("{}{name}", self.peer_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = NsKeys::new(&"prod".parse().unwrap());
        assert_eq!(k.index, "masse:{prod}:index");
        assert_eq!(k.events, "masse:{prod}:events");
        assert_eq!(k.seq, "masse:{prod}:seq");
        assert_eq!(k.sweeping, "masse:{prod}:sweeping");
        assert_eq!(k.peer(&"db-1".parse().unwrap()), "masse:{prod}:peer:db-1");
    }
}
