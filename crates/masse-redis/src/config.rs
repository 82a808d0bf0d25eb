//! [`RedisConfig`]: the knobs of a [`RedisRegistry`](crate::RedisRegistry).

use std::fmt;
use std::time::Duration;

use masse_core::{Error, Result};

/// Settings for [`RedisRegistry::connect_with`](crate::RedisRegistry::connect_with).
///
/// Every setting has a default that suits a LAN deployment; a builder method
/// changes one. Values are checked when the registry connects.
///
/// ```
/// use std::time::Duration;
/// use masse_redis::RedisConfig;
/// let config = RedisConfig::new()
///     .with_stream_maxlen(50_000)
///     .with_sweep_interval(Duration::from_millis(100))
///     .with_call_timeout(Duration::from_secs(2));
/// assert_eq!(config.stream_maxlen(), 50_000);
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) stream_maxlen: u64,
    pub(crate) block_timeout: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) max_sweep_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) cluster_nodes: Vec<String>,
    pub(crate) tls_root_cert: Option<Vec<u8>>,
    pub(crate) tls_client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            stream_maxlen: 10_000,
            block_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_millis(250),
            max_sweep_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
            cluster_nodes: Vec::new(),
            tls_root_cert: None,
            tls_client_cert: None,
        }
    }
}

impl RedisConfig {
    /// The defaults: stream of about 10 000 events, `XREAD BLOCK` of 10 s,
    /// expired records swept within about 250 ms of their expiry (a look at
    /// each namespace's earliest expiry at least every 10 s on average),
    /// connect and response timeouts of 1 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// About how many events each namespace's stream keeps (`XADD … MAXLEN ~ n`,
    /// default 10 000). A watcher that falls further behind than this (or is
    /// disconnected for that long) gets a `RegistryEvent::Resync`.
    pub fn with_stream_maxlen(mut self, n: u64) -> Self {
        self.stream_maxlen = n;
        self
    }

    /// How long one `XREAD BLOCK` waits for new events before asking again
    /// (default 10 s). A connection that breaks (the server restarts or
    /// closes it) fails the read at once; one that goes silent (a lost
    /// host) is given up after this plus
    /// [`call_timeout`](Self::with_call_timeout), so shorter notices that
    /// sooner, at the cost of one command per watch per timeout.
    pub fn with_block_timeout(mut self, timeout: Duration) -> Self {
        self.block_timeout = timeout;
        self
    }

    /// How late after its expiry a record is swept and its `Expired` event
    /// sent, at most, give or take (default 250 ms). An expired record is
    /// invisible to lookups at once either way.
    ///
    /// Each handle looks at the earliest expiry of the namespaces it uses
    /// (one `ZRANGE`, compared with the server time its scripts last
    /// returned) and looks again when that is due, plus a random part of this
    /// interval, so that the handles waking for the same expiry spread out
    /// and the first one sweeps for all (it marks the namespace as being
    /// swept for this long; the others then wait this long). While every
    /// peer heartbeats, the earliest expiry keeps moving away, so a handle
    /// looks once per `2/3 ttl` or so and sweeps nothing: the cost does not
    /// grow with the number of handles beyond that one command each.
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// The longest one handle goes without looking at a namespace's earliest
    /// expiry, on average (default 10 s, randomised ±25 %; a value below
    /// [`sweep_interval`](Self::with_sweep_interval) counts as that). It bounds
    /// how late the `Expired` event of a record comes when it expires before
    /// every record a handle saw at its last look (a short ttl published
    /// since by another handle that then vanished); a handle's own publishes
    /// make it look at once. See [`sweep_interval`](Self::with_sweep_interval).
    pub fn with_max_sweep_interval(mut self, interval: Duration) -> Self {
        self.max_sweep_interval = interval;
        self
    }

    /// How long to wait for a TCP (and TLS) connection to be set up (default 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to one call, whatever it is (default
    /// 1 s); a call that gets none in time fails with
    /// `Error::RegistryUnavailable`, as on every backend.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// More seed nodes of a Redis Cluster, as `host:port`. Setting any makes
    /// the registry talk to a cluster even with a plain `redis://` or
    /// `rediss://` URL (whose host is then the first seed); with a
    /// `redis+cluster://` URL they are added to the nodes it lists.
    pub fn with_cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// The certificate authority (PEM) that signed the server certificate, for
    /// `rediss://` servers whose CA is not in the system trust store.
    pub fn with_tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// A client certificate chain and private key (both PEM), for servers that
    /// require mutual TLS (`tls-auth-clients yes`).
    pub fn with_tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client_cert = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// See [`stream_maxlen`](Self::with_stream_maxlen).
    pub fn stream_maxlen(&self) -> u64 {
        self.stream_maxlen
    }

    /// See [`block_timeout`](Self::with_block_timeout).
    pub fn block_timeout(&self) -> Duration {
        self.block_timeout
    }

    /// See [`sweep_interval`](Self::with_sweep_interval).
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }

    /// See [`max_sweep_interval`](Self::with_max_sweep_interval).
    pub fn max_sweep_interval(&self) -> Duration {
        self.max_sweep_interval
    }

    /// See [`connect_timeout`](Self::with_connect_timeout).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// See [`call_timeout`](Self::with_call_timeout).
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// See [`cluster_nodes`](Self::with_cluster_nodes).
    pub fn cluster_nodes(&self) -> &[String] {
        &self.cluster_nodes
    }

    /// Checks that every value is usable.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("redis registry: {what}")));
        if self.stream_maxlen == 0 {
            return bad("stream_maxlen must be at least 1");
        }
        if self.block_timeout < Duration::from_millis(1) {
            return bad("block_timeout must be at least 1 ms (0 would block forever)");
        }
        if self.sweep_interval < Duration::from_millis(1) {
            return bad("sweep_interval must be at least 1 ms");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be greater than zero");
        }
        if self.call_timeout.is_zero() {
            return bad("call_timeout must be greater than zero");
        }
        for node in &self.cluster_nodes {
            if node.is_empty() || node.contains(['/', ',', '@', ' ']) {
                return bad("cluster_nodes must be plain host:port entries");
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("stream_maxlen", &self.stream_maxlen)
            .field("block_timeout", &self.block_timeout)
            .field("sweep_interval", &self.sweep_interval)
            .field("max_sweep_interval", &self.max_sweep_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("cluster_nodes", &self.cluster_nodes)
            .field("tls_root_certificate", &self.tls_root_cert.is_some())
            .field("tls_client_certificate", &self.tls_client_cert.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_checked() {
        assert!(RedisConfig::new().validate().is_ok());
        assert!(matches!(
            RedisConfig::new().with_stream_maxlen(0).validate(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            RedisConfig::new()
                .with_block_timeout(Duration::ZERO)
                .validate(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            RedisConfig::new()
                .with_sweep_interval(Duration::ZERO)
                .validate(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            RedisConfig::new()
                .with_cluster_nodes(["a:1,b:2"])
                .validate(),
            Err(Error::Config(_))
        ));
        let d = format!(
            "{:?}",
            RedisConfig::new().with_tls_client_certificate("CERT", "SECRET KEY")
        );
        assert!(!d.contains("SECRET"), "{d}");
    }
}
