//! Waiting for a condition the tests cannot be told about by an event (a
//! row in a database, a record back in the registry, a port let go): poll
//! it, briefly at first, and fail clearly at a deadline.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What a check of [`eventually`] returns: whether the condition holds
/// (with a value to hand back), and if not, maybe why.
pub trait Check {
    /// What [`eventually`] returns once the condition holds.
    type Value;
    /// `Ok` once the condition holds; otherwise what was seen, if anything
    /// worth telling (shown when the wait times out).
    fn check(self) -> Result<Self::Value, Option<String>>;
}

impl Check for bool {
    type Value = ();
    fn check(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Check for Result<Option<T>, E> {
    type Value = T;
    fn check(self) -> Result<T, Option<String>> {
        match self {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(None),
            Err(e) => Err(Some(e.to_string())),
        }
    }
}

/// Polls `check` until it holds (`true`, `Some(v)`, `Ok(Some(v))`) and
/// returns its value; panics naming `what` (and the last error seen, if
/// any) if it still does not hold after `within`, or if a check is still
/// running then.
///
/// The first polls come quickly (5 ms apart), later ones up to 100 ms
/// apart, so that a condition that holds at once costs nothing and a slow
/// one does not keep the machine busy.
pub async fn eventually<C, F, Fut>(within: Duration, what: &str, mut check: F) -> C::Value
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    let mut last: Option<String> = None;
    loop {
        let Ok(outcome) = tokio::time::timeout_at(deadline, check()).await else {
            panic!("timed out after {within:?} waiting for {what} (a check did not return)");
        };
        match outcome.check() {
            Ok(v) => return v,
            Err(Some(seen)) => last = Some(seen),
            Err(None) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            match last {
                Some(seen) => {
                    panic!("timed out after {within:?} waiting for {what} (last: {seen})")
                }
                None => panic!("timed out after {within:?} waiting for {what}"),
            }
        }
        // Polling, not synchronising: the condition is checked again after
        // each pause, and the deadline bounds the whole wait.
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The first node event within `within` that `pick` turns into a value.
///
/// Panics, naming `what`, if the node's events lag (some were lost, so
/// the one awaited may be among them), end, or nothing picked arrives in
/// time.
pub async fn node_event<X>(
    events: &mut masse::Events,
    within: Duration,
    what: &str,
    mut pick: impl FnMut(&masse::NodeEvent) -> Option<X>,
) -> X {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(masse::NodeEvent::Lagged { .. })) => {
                panic!("node events lagged while waiting for {what}")
            }
            Ok(Some(ev)) => {
                if let Some(x) = pick(&ev) {
                    return x;
                }
            }
            Ok(None) => panic!("node events ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}
