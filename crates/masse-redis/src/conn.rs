//! Connections: a reconnecting one for commands, dedicated ones for `XREAD BLOCK`.

use std::time::Duration;

use masse_core::{Error, Result};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};

use crate::address::{Target, redact};
use crate::config::RedisConfig;
use crate::error;

/// One way to send commands; all of them multiplex and are cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    /// The shared, automatically reconnecting connection to one server.
    Manager(ConnectionManager),
    /// A dedicated connection to one server (a watcher's).
    Direct(MultiplexedConnection),
    /// A cluster connection (routes by key, follows MOVED/ASK, reconnects).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a registry handle needs to open connections.
#[allow(clippy::large_enum_variant)] // one per registry handle
pub(crate) enum Source {
    /// One server.
    Single(Client),
    /// A cluster: one client for commands, one (with a response timeout
    /// longer than the `XREAD BLOCK`) for watchers.
    Cluster(Box<ClusterClients>),
}

/// The two clients of a cluster [`Source`].
pub(crate) struct ClusterClients {
    commands: ClusterClient,
    watchers: ClusterClient,
}

impl Source {
    /// Builds the clients (no connection yet).
    pub(crate) fn new(url: &str, target: &Target, config: &RedisConfig) -> Result<Source> {
        let invalid = |reason: String| Error::InvalidAddress {
            kind: "registry url",
            input: redact(url),
            reason,
        };
        let certs = tls_certificates(config);
        if certs.is_some() && !target.tls() {
            return Err(Error::Config(
                "TLS certificates were configured but the registry URL is not TLS (use rediss://)"
                    .into(),
            ));
        }
        if target.tls() {
            ensure_crypto_provider();
        }
        match target {
            Target::Single { url: single, .. } => {
                let client = match certs {
                    Some(certs) => Client::build_with_tls(single.as_str(), certs),
                    None => Client::open(single.as_str()),
                }
                .map_err(|e| invalid(e.to_string()))?;
                Ok(Source::Single(client))
            }
            Target::Cluster { nodes, .. } => {
                let build = |call_timeout: Duration| {
                    let mut b = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(call_timeout)
                        .retries(3)
                        .min_retry_wait(50)
                        .max_retry_wait(500);
                    if let Some(certs) = certs.clone() {
                        b = b.certs(certs);
                    }
                    b.build().map_err(|e| invalid(e.to_string()))
                };
                Ok(Source::Cluster(Box::new(ClusterClients {
                    commands: build(config.call_timeout)?,
                    watchers: build(config.block_timeout + config.call_timeout)?,
                })))
            }
        }
    }

    /// Connects the shared command connection (and so checks address and credentials).
    pub(crate) async fn command_conn(&self, config: &RedisConfig) -> Result<Conn> {
        let deadline = connect_deadline(config);
        match self {
            Source::Single(client) => {
                let mc = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.call_timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let fut = ConnectionManager::new_with_config(client.clone(), mc);
                match tokio::time::timeout(deadline, fut).await {
                    Ok(r) => r.map(Conn::Manager).map_err(error::map),
                    Err(_) => Err(error::timed_out("the connection", deadline)),
                }
            }
            Source::Cluster(clients) => {
                match tokio::time::timeout(deadline, clients.commands.get_async_connection()).await
                {
                    Ok(r) => r.map(Conn::Cluster).map_err(error::map),
                    Err(_) => Err(error::timed_out("the connection", deadline)),
                }
            }
        }
    }

    /// Opens a connection of its own for one watcher.
    pub(crate) async fn watch_conn(&self, config: &RedisConfig) -> Result<Conn> {
        let deadline = connect_deadline(config);
        let fut = async {
            match self {
                Source::Single(client) => {
                    let cc = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(config.connect_timeout))
                        .set_response_timeout(Some(config.block_timeout + config.call_timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&cc)
                        .await
                        .map(Conn::Direct)
                }
                Source::Cluster(clients) => clients
                    .watchers
                    .get_async_connection()
                    .await
                    .map(Conn::Cluster),
            }
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r.map_err(error::map),
            Err(_) => Err(error::timed_out("the connection", deadline)),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Source::Cluster(_))
    }
}

/// Connecting includes a few quick retries and the handshake (AUTH, SELECT).
fn connect_deadline(config: &RedisConfig) -> Duration {
    config.connect_timeout * 3 + config.call_timeout + Duration::from_secs(1)
}

fn tls_certificates(config: &RedisConfig) -> Option<redis::TlsCertificates> {
    if config.tls_root_cert.is_none() && config.tls_client_cert.is_none() {
        return None;
    }
    Some(redis::TlsCertificates {
        client_tls: config
            .tls_client_cert
            .clone()
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: config.tls_root_cert.clone(),
    })
}

/// rustls needs a process-wide crypto provider; install ring's unless the
/// application already chose one.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one provider is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
