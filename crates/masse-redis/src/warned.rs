//! Logging a malformed entry once, not on every lookup, sweep or poll.

use std::collections::HashSet;
use std::sync::Mutex;

/// How many distinct problems a handle remembers; past that it forgets them
/// all and may warn about each once more (a bound on memory, not a goal).
const CAP: usize = 4096;

/// The problems a registry handle has already logged, by key and kind.
#[derive(Debug, Default)]
pub(crate) struct Warned {
    seen: Mutex<HashSet<String>>,
}

impl Warned {
    /// True the first time `key` (with `what`) is reported: log at `warn`
    /// then; afterwards the caller logs at `debug` at most.
    pub(crate) fn first(&self, key: &str, what: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let id = format!("{key}\u{0}{what}");
        if seen.contains(&id) {
            return false;
        }
        if seen.len() >= CAP {
            seen.clear();
        }
        seen.insert(id);
        true
    }
}

/// Logs a malformed entry: at `warn` the first time this handle sees it
/// (`$key` and `$what` identify it), at `debug` afterwards.
macro_rules! warn_once {
    ($warned:expr, $key:expr, $what:expr, $($rest:tt)+) => {{
        let key: &str = $key;
        let what: &str = $what;
        if $warned.first(key, what) {
            tracing::warn!(key, problem = what, $($rest)+);
        } else {
            tracing::debug!(key, problem = what, $($rest)+);
        }
    }};
}
pub(crate) use warn_once;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_and_problem() {
        let w = Warned::default();
        assert!(w.first("masse:{a}:peer:x", "unreadable"));
        assert!(!w.first("masse:{a}:peer:x", "unreadable"));
        assert!(w.first("masse:{a}:peer:x", "wrongtype"));
        assert!(w.first("masse:{a}:peer:y", "unreadable"));
        for i in 0..CAP + 10 {
            w.first(&format!("k{i}"), "p");
        }
        assert!(w.seen.lock().unwrap().len() <= CAP);
    }
}
