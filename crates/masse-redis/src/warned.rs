//! Logging a malformed entry once, not on every lookup, sweep or poll:
//! each handle keeps a [`WarnOnce`](masse_core::WarnOnce).

/// Logs a malformed entry: at `warn` the first time this handle sees it
/// (`$key` and `$what` identify it), at `debug` afterwards.
macro_rules! warn_once {
    ($warned:expr, $key:expr, $what:expr, $($rest:tt)+) => {{
        let key: &str = $key;
        let what: &str = $what;
        if $warned.first(&format!("{key}\u{0}{what}")) {
            tracing::warn!(key, problem = what, $($rest)+);
        } else {
            tracing::debug!(key, problem = what, $($rest)+);
        }
    }};
}
pub(crate) use warn_once;
