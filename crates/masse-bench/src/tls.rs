//! `tls_throughput`: one TLS stream, 64 KiB writes, a raw tokio-rustls
//! stream against a masse `TlsInterface` stream, same certificates and
//! configurations.
//!
//! Both sides use the interfaces' building blocks directly (bind/connect and
//! a raw `TlsConnector`/`TlsAcceptor`), not a `Node`. Each round opens a
//! fresh connection (not timed, TLS session resumption allowed on both
//! sides), then times from the first write until the reader has seen
//! end-of-stream. Rounds alternate as in `tcp_throughput`.

use masse::{Interface, TlsInterface};
use tokio::net::{TcpListener, TcpStream};

use crate::secure::Peers;
use crate::throughput::transfer;
use crate::{BoxError, Figure, Mode};

const ROUNDS: usize = 5;

fn bytes_per_round(mode: Mode) -> u64 {
    match mode {
        Mode::Full => 512 << 20,
        Mode::Quick => 128 << 20,
    }
}

pub(crate) fn describe(mode: Mode) -> String {
    format!(
        "tls_throughput: {ROUNDS}+{ROUNDS} interleaved rounds x {} MiB, 64 KiB writes, on 2 workers then on 1 thread",
        bytes_per_round(mode) >> 20
    )
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| bench(bytes_per_round(mode)))
}

async fn bench(per_round: u64) -> Result<Vec<Figure>, BoxError> {
    let peers = Peers::generate()?;
    let mut raw = Raw::bind(&peers).await?;
    let mut masse = Masse::bind(&peers).await?;

    raw.round(per_round / 8).await?;
    masse.round(per_round / 8).await?;

    let (mut raw_rates, mut masse_rates) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        if i % 2 == 0 {
            raw_rates.push(raw.round(per_round).await?);
            masse_rates.push(masse.round(per_round).await?);
        } else {
            masse_rates.push(masse.round(per_round).await?);
            raw_rates.push(raw.round(per_round).await?);
        }
    }
    Ok(crate::throughput::rate_figures(
        "tls_throughput",
        &raw_rates,
        &masse_rates,
    ))
}

/// The baseline: tokio-rustls over `TcpStream`s with `TCP_NODELAY`.
struct Raw {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl Raw {
    async fn bind(peers: &Peers) -> Result<Self, BoxError> {
        Ok(Raw {
            listener: TcpListener::bind("127.0.0.1:0").await?,
            acceptor: peers.tls_acceptor()?,
            connector: peers.tls_connector()?,
        })
    }

    async fn round(&mut self, bytes: u64) -> Result<f64, BoxError> {
        let client = TcpStream::connect(self.listener.local_addr()?).await?;
        let (server, _) = self.listener.accept().await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (client, server) = tokio::try_join!(
            self.connector.connect(masse::tls::server_name(), client),
            self.acceptor.accept(server),
        )?;
        transfer(client, server, bytes).await
    }
}

/// masse: `TlsInterface::connect` to a `TlsInterface` listener.
struct Masse {
    tls: TlsInterface,
    listener: Box<dyn masse::Listener>,
    record: masse::PeerRecord,
    ctx: masse::ConnectContext,
}

impl Masse {
    async fn bind(peers: &Peers) -> Result<Self, BoxError> {
        let tls = TlsInterface::new("127.0.0.1:0");
        let listener = tls.bind(&peers.bind_ctx()?).await?;
        let ep = listener.endpoints().first().cloned().ok_or("no endpoint")?;
        Ok(Masse {
            tls,
            listener,
            record: peers.record(ep)?,
            ctx: peers.connect_ctx()?,
        })
    }

    async fn round(&mut self, bytes: u64) -> Result<f64, BoxError> {
        let ep = self.record.endpoints[0].clone();
        let client = self.tls.connect(&ep, &self.record, &self.ctx).await?;
        let server = self.listener.accept().await?;
        transfer(client, server.io, bytes).await
    }
}
