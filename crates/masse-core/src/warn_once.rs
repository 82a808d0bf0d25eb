//! [`WarnOnce`]: log a malformed entry once, not on every poll.

use std::collections::HashSet;
use std::sync::Mutex;

/// How many distinct problems are remembered; past that they are all
/// forgotten (and each may be reported once more): a bound on memory.
const CAP: usize = 4096;

/// Remembers which problems were already reported, so that a malformed
/// registry entry met on every lookup, sweep or poll is logged at `warn`
/// once and at `debug` afterwards. Registry backends (this workspace's and
/// third-party ones) share it:
///
/// ```
/// use masse_core::WarnOnce;
/// static WARNED: WarnOnce = WarnOnce::new();
/// for _ in 0..3 {
///     if WARNED.first("masse:{prod}:peer:db-1 unreadable") {
///         // tracing::warn!(...) the first time only
///     }
/// }
/// assert!(!WARNED.first("masse:{prod}:peer:db-1 unreadable"));
/// ```
#[derive(Debug, Default)]
pub struct WarnOnce {
    seen: Mutex<Option<HashSet<u64>>>,
}

impl WarnOnce {
    /// Nothing reported yet; usable in a `static`.
    pub const fn new() -> Self {
        WarnOnce {
            seen: Mutex::new(None),
        }
    }

    /// True the first time `key` (what is wrong, and where) is reported.
    pub fn first(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = seen.get_or_insert_with(HashSet::new);
        if seen.len() >= CAP {
            seen.clear();
        }
        seen.insert(fnv1a(key.as_bytes()))
    }
}

/// FNV-1a: cheap and stable; a collision only silences one more warning.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_and_bounded() {
        let w = WarnOnce::new();
        assert!(w.first("a unreadable"));
        assert!(!w.first("a unreadable"));
        assert!(w.first("a wrong type"));
        assert!(w.first("b unreadable"));
        for i in 0..CAP + 10 {
            w.first(&format!("k{i}"));
        }
        let len = w.seen.lock().unwrap().as_ref().map_or(0, HashSet::len);
        assert!(len <= CAP, "{len}");
        assert!(
            w.first("a unreadable"),
            "forgotten past the bound, reported again"
        );
    }
}
