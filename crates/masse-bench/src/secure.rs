//! What the TLS and QUIC benches share: two identities, contexts and records
//! for the interfaces, the raw baselines' configurations (built by the same
//! `masse::tls` functions the interfaces use, so certificates, verifiers,
//! TLS version and cipher suites are the same on both sides), and a sink
//! that counts what arrives on accepted streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use masse::{
    BindContext, BoxIo, ConnectContext, Endpoint, Identity, InstanceId, Listener, PeerRecord,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::BoxError;
use crate::throughput::{CHUNK, MIB, discard};

/// The acceptor's and the dialer's identities.
pub(crate) struct Peers {
    pub(crate) server: Arc<Identity>,
    pub(crate) client: Arc<Identity>,
}

impl Peers {
    pub(crate) fn generate() -> Result<Self, BoxError> {
        Ok(Peers {
            server: Arc::new(Identity::generate("bench-server")?),
            client: Arc::new(Identity::generate("bench-client")?),
        })
    }

    pub(crate) fn bind_ctx(&self) -> Result<BindContext, BoxError> {
        Ok(BindContext::new(
            "bench-secure".parse()?,
            "server".parse()?,
            InstanceId::random(),
        )
        .with_identity(self.server.clone()))
    }

    pub(crate) fn connect_ctx(&self) -> Result<ConnectContext, BoxError> {
        Ok(ConnectContext::new(
            "bench-secure".parse()?,
            "client".parse()?,
            InstanceId::random(),
        )
        .with_identity(self.client.clone()))
    }

    /// The server's record, listing `endpoint` and its fingerprint.
    pub(crate) fn record(&self, endpoint: Endpoint) -> Result<PeerRecord, BoxError> {
        Ok(PeerRecord::new(
            "bench-secure".parse()?,
            "server".parse()?,
            InstanceId::random(),
        )
        .with_endpoint(endpoint)
        .with_identity(self.server.fingerprint()))
    }

    /// The raw tokio-rustls acceptor: masse's server configuration.
    pub(crate) fn tls_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, BoxError> {
        Ok(Arc::new(masse::tls::server_config(&self.server)?).into())
    }

    /// The raw tokio-rustls connector: masse's client configuration.
    pub(crate) fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector, BoxError> {
        Ok(Arc::new(masse::tls::client_config(
            &self.client,
            self.server.fingerprint(),
        )?)
        .into())
    }

    /// A raw quinn server endpoint on loopback, with masse's server
    /// configuration and transport settings.
    pub(crate) fn quinn_server(&self) -> Result<quinn::Endpoint, BoxError> {
        let crypto = QuicServerConfig::try_from(masse::tls::server_config(&self.server)?)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = transport();
        transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
        config.transport_config(Arc::new(transport));
        let addr: SocketAddr = "127.0.0.1:0".parse()?;
        Ok(quinn::Endpoint::server(config, addr)?)
    }

    /// A raw quinn connection to `server`, with masse's client configuration
    /// and transport settings.
    pub(crate) async fn quinn_connect(
        &self,
        server: SocketAddr,
    ) -> Result<(quinn::Endpoint, quinn::Connection), BoxError> {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let conn = endpoint
            .connect_with(self.quinn_client_config()?, server, "masse")?
            .await?;
        Ok((endpoint, conn))
    }

    /// masse's client configuration and transport settings, for raw quinn.
    pub(crate) fn quinn_client_config(&self) -> Result<quinn::ClientConfig, BoxError> {
        let tls = masse::tls::client_config(&self.client, self.server.fingerprint())?;
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        let mut transport = transport();
        transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// The transport settings `QuicInterface` uses by default.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(30)).ok());
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t
}

/// Counts the bytes of every stream a listener accepts, one count per
/// stream, until the listener fails or the receiver is dropped.
pub(crate) fn count_accepted(
    mut listener: Box<dyn Listener>,
) -> (mpsc::UnboundedReceiver<u64>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(accepted) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(n) = discard(accepted.io).await {
                    let _ = tx.send(n);
                }
            });
        }
    });
    (rx, task)
}

/// Counts the bytes of every stream opened on raw quinn connections to
/// `endpoint`.
pub(crate) fn count_quinn(
    endpoint: quinn::Endpoint,
) -> (mpsc::UnboundedReceiver<u64>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((_send, recv)) = conn.accept_bi().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Ok(n) = discard(recv).await {
                            let _ = tx.send(n);
                        }
                    });
                }
            });
        }
    });
    (rx, task)
}

/// Writes `bytes` in [`CHUNK`]-sized writes, shuts the writer down and
/// waits for the far side's count (see [`count_accepted`]); MiB/s from the
/// first write until the count arrives.
pub(crate) async fn send_counted<W>(
    mut writer: W,
    counts: &mut mpsc::UnboundedReceiver<u64>,
    bytes: u64,
) -> Result<f64, BoxError>
where
    W: AsyncWrite + Unpin,
{
    let chunk = vec![0xa5_u8; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        writer.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    writer.shutdown().await?;
    let received = counts.recv().await.ok_or("the receiving side stopped")?;
    let elapsed = start.elapsed();
    drop(writer);
    if received != bytes {
        return Err(format!("sent {bytes} bytes but the reader got {received}").into());
    }
    Ok(bytes as f64 / MIB / elapsed.as_secs_f64())
}

/// Runs an echo on every stream a listener accepts.
pub(crate) fn echo_accepted(mut listener: Box<dyn Listener>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(accepted) = listener.accept().await {
            tokio::spawn(crate::latency::echo(accepted.io));
        }
    })
}

/// A raw tokio-rustls echo server on loopback with masse's server
/// configuration (`TCP_NODELAY` on every accepted connection): its address
/// and the accepting task.
pub(crate) async fn tls_echo_server(
    peers: &Peers,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = peers.tls_acceptor()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                if let Ok(s) = acceptor.accept(s).await {
                    crate::latency::echo(s).await;
                }
            });
        }
    });
    Ok((addr, task))
}

/// Runs an echo on every stream of every raw quinn connection.
pub(crate) fn echo_quinn(endpoint: quinn::Endpoint) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(crate::latency::echo(tokio::io::join(recv, send)));
                }
            });
        }
    })
}

/// Times `connect` (returning a stream) plus a 1-byte echo on it.
pub(crate) async fn timed_echo<F, S>(connect: F) -> Result<Duration, BoxError>
where
    F: Future<Output = Result<S, BoxError>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut s = connect.await?;
    let elapsed = crate::latency::one_byte_echo(&mut s, start).await?;
    drop(s);
    Ok(elapsed)
}

/// A boxed masse stream as a bench error type.
pub(crate) fn boxed(r: masse::Result<BoxIo>) -> Result<BoxIo, BoxError> {
    r.map_err(Into::into)
}
