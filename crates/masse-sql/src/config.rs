//! [`SqlConfig`]: tuning knobs of a [`SqlRegistry`](crate::SqlRegistry).

use std::time::Duration;

use masse_core::{Error, Result};

/// Settings of a [`SqlRegistry`](crate::SqlRegistry), built with chained setters:
///
/// ```
/// use std::time::Duration;
/// use masse_sql::SqlConfig;
///
/// let config = SqlConfig::new()
///     .with_poll_interval(Duration::from_millis(100))
///     .with_event_retention(Duration::from_secs(600))
///     .with_pool_size(8);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct SqlConfig {
    pub(crate) poll_interval: Duration,
    pub(crate) event_retention: Duration,
    pub(crate) max_events: u64,
    pub(crate) pool_size: u32,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) busy_timeout: Duration,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            poll_interval: Duration::from_millis(250),
            event_retention: Duration::from_secs(3600),
            max_events: 100_000,
            pool_size: 5,
            idle_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqlConfig {
    /// The defaults: poll every 250 ms, keep events for 1 h (at most 100 000),
    /// up to 5 pooled connections closed after 2 s idle, 5 s connect and
    /// lookup timeouts, 5 s SQLite busy timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// How often each handle reads new events for its watchers and sweeps
    /// expired records (default 250 ms). On PostgreSQL, `LISTEN`/`NOTIFY`
    /// wakes watchers at once and polling is the fallback: while
    /// notifications flow, watchers read only every 5 s (or this interval if
    /// longer), and at this interval again whenever the listener is down. An
    /// `Expired` event arrives at most about two intervals after the deadline.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long events stay in `masse_events` (default 1 h). A watcher whose
    /// cursor falls behind what was pruned (it was disconnected for longer)
    /// receives [`RegistryEvent::Resync`](masse_core::RegistryEvent::Resync).
    pub fn with_event_retention(mut self, retention: Duration) -> Self {
        self.event_retention = retention;
        self
    }

    /// At most about this many events are kept (default 100 000), whatever their age.
    pub fn with_max_events(mut self, max: u64) -> Self {
        self.max_events = max;
        self
    }

    /// The most connections in the pool of each handle (default 5; an
    /// in-memory SQLite database always uses one).
    ///
    /// On PostgreSQL and MySQL/MariaDB each handle keeps **one background
    /// connection** for good (on PostgreSQL, the `LISTEN` connection) and
    /// runs on it its heartbeats, event polls, expiry sweeps, pruning,
    /// publish, unpublish, and any lookup no other call is running beside.
    /// The pool only takes lookups that overlap: its connections open on
    /// demand and close after
    /// [`idle_timeout`](Self::with_idle_timeout), so a handle holds:
    ///
    /// - **at rest** (publishing with heartbeats, watching, no lookups
    ///   missing the cache): exactly 1 server connection;
    /// - **under a burst** of calls: at most `1 + pool_size` (default 6),
    ///   falling back to 1 within about two idle timeouts after it.
    ///
    /// Size the server for it. With `n` handles (nodes, each with its own
    /// handle) of which at most `b` burst at the same time:
    ///
    /// ```text
    /// max_connections ≥ n + b × pool_size + reserved
    /// ```
    ///
    /// where `reserved` is what the server keeps aside (PostgreSQL:
    /// `superuser_reserved_connections`, 3 by default) plus your own tools.
    /// PostgreSQL's default of 100 thus serves 97 resting nodes, or 90
    /// resting nodes of which one bursts with `pool_size(5)` (90 + 5 + 3 = 98).
    /// A handle that cannot get a pooled connection waits for one up to
    /// [`connect_timeout`](Self::with_connect_timeout); a server that refuses it
    /// (too many connections) fails that call, not the handle: background
    /// work and calls already connected go on.
    pub fn with_pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// How long a pooled connection may stay unused before it is closed
    /// (default 2 s; PostgreSQL and MySQL/MariaDB). Pooled connections only
    /// serve bursts (see [`pool_size`](Self::with_pool_size)); the pool checks
    /// every `idle_timeout`, so an unused connection is closed between one
    /// and two timeouts after its last call. Longer keeps connections warm
    /// for lookups that come often, at the cost of server connections.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long to wait for a connection, at start and for every call
    /// afterwards (default 5 s). A database that cannot be reached within it
    /// is [`Error::RegistryUnavailable`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest one registry call (lookup, and also publish, refresh,
    /// unpublish and setting up a watch) may take before it fails with
    /// [`Error::Timeout`] (default 5 s).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// SQLite only: how long a writer waits for another process's write
    /// transaction on the same file (default 5 s).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// See [`with_poll_interval`](Self::with_poll_interval).
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// See [`with_event_retention`](Self::with_event_retention).
    pub fn event_retention(&self) -> Duration {
        self.event_retention
    }

    /// See [`with_max_events`](Self::with_max_events).
    pub fn max_events(&self) -> u64 {
        self.max_events
    }

    /// See [`with_pool_size`](Self::with_pool_size).
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// See [`with_idle_timeout`](Self::with_idle_timeout).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// See [`with_connect_timeout`](Self::with_connect_timeout).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// See [`with_call_timeout`](Self::with_call_timeout).
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// See [`with_busy_timeout`](Self::with_busy_timeout).
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let nonzero = [
            ("poll_interval", self.poll_interval),
            ("event_retention", self.event_retention),
            ("connect_timeout", self.connect_timeout),
            ("call_timeout", self.call_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        for (what, d) in nonzero {
            if d.is_zero() {
                return Err(Error::Config(format!(
                    "SqlConfig::{what} must be greater than zero"
                )));
            }
        }
        if self.pool_size == 0 {
            return Err(Error::Config(
                "SqlConfig::pool_size must be at least 1".into(),
            ));
        }
        if self.max_events == 0 {
            return Err(Error::Config(
                "SqlConfig::max_events must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// How often the event log is pruned.
    pub(crate) fn prune_every(&self) -> Duration {
        (self.event_retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_is_not() {
        assert!(SqlConfig::new().validate().is_ok());
        assert!(matches!(
            SqlConfig::new()
                .with_poll_interval(Duration::ZERO)
                .validate(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            SqlConfig::new().with_pool_size(0).validate(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            SqlConfig::new().with_max_events(0).validate(),
            Err(Error::Config(_))
        ));
        assert_eq!(SqlConfig::new().prune_every(), Duration::from_secs(60));
        assert_eq!(
            SqlConfig::new()
                .with_event_retention(Duration::from_millis(10))
                .prune_every(),
            Duration::from_secs(1)
        );
    }
}
