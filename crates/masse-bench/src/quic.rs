//! The QUIC benches, each against a raw quinn baseline with the same
//! certificates, TLS configuration and transport settings:
//!
//! - `quic_throughput`: one stream per round on an established connection,
//!   64 KiB writes; raw `open_bi` against `QuicInterface::connect` (pooled
//!   connection). Times from the first write until the acceptor has read
//!   end-of-stream; rounds alternate as in `tcp_throughput`.
//! - `quic_new_stream_latency`: a new stream on an established connection
//!   plus a 1-byte echo (masse and raw quinn), against a new TCP connection
//!   plus a 1-byte echo. Each iteration takes one sample of each, rotating
//!   which goes first.

use masse::{Interface, QuicInterface};

use crate::latency::{micros, raw_connect_echo};
use crate::secure::{
    Peers, boxed, count_accepted, count_quinn, echo_accepted, echo_quinn, send_counted, timed_echo,
};
use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

const ROUNDS: usize = 5;

fn bytes_per_round(mode: Mode) -> u64 {
    match mode {
        Mode::Full => 512 << 20,
        Mode::Quick => 128 << 20,
    }
}

fn iterations(mode: Mode) -> usize {
    match mode {
        Mode::Full => 2000,
        Mode::Quick => 200,
    }
}

pub(crate) fn describe_throughput(mode: Mode) -> String {
    format!(
        "quic_throughput: {ROUNDS}+{ROUNDS} interleaved rounds x {} MiB, 64 KiB writes, on 2 workers then on 1 thread",
        bytes_per_round(mode) >> 20
    )
}

pub(crate) fn describe_stream(mode: Mode) -> String {
    format!(
        "quic_new_stream_latency: {} interleaved iterations after {} warm-up",
        iterations(mode),
        iterations(mode) / 10
    )
}

pub(crate) fn run_throughput(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers_then_one_thread(|| throughput(bytes_per_round(mode)))
}

pub(crate) fn run_stream(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers(new_stream(iterations(mode) / 10, iterations(mode)))
}

async fn throughput(per_round: u64) -> Result<Vec<Figure>, BoxError> {
    let peers = Peers::generate()?;

    // Raw quinn: one connection, one new stream per round.
    let server = peers.quinn_server()?;
    let server_addr = server.local_addr()?;
    let (mut raw_counts, raw_task) = count_quinn(server);
    let (_client_endpoint, conn) = peers.quinn_connect(server_addr).await?;
    let raw_round = async |bytes: u64, counts: &mut _| -> Result<f64, BoxError> {
        let (send, _recv) = conn.open_bi().await?;
        send_counted(send, counts, bytes).await
    };

    // masse: QuicInterface to QuicInterface.
    let server_quic = QuicInterface::new("127.0.0.1:0");
    let listener = server_quic.bind(&peers.bind_ctx()?).await?;
    let record = peers.record(listener.endpoints().first().cloned().ok_or("no endpoint")?)?;
    let (mut masse_counts, masse_task) = count_accepted(listener);
    let client_quic = QuicInterface::new("127.0.0.1:0");
    let ctx = peers.connect_ctx()?;
    let ep = record.endpoints[0].clone();
    let masse_round = async |bytes: u64, counts: &mut _| -> Result<f64, BoxError> {
        let io = client_quic.connect(&ep, &record, &ctx).await?;
        send_counted(io, counts, bytes).await
    };

    raw_round(per_round / 8, &mut raw_counts).await?;
    masse_round(per_round / 8, &mut masse_counts).await?;

    let (mut raw_rates, mut masse_rates) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        if i % 2 == 0 {
            raw_rates.push(raw_round(per_round, &mut raw_counts).await?);
            masse_rates.push(masse_round(per_round, &mut masse_counts).await?);
        } else {
            masse_rates.push(masse_round(per_round, &mut masse_counts).await?);
            raw_rates.push(raw_round(per_round, &mut raw_counts).await?);
        }
    }
    raw_task.abort();
    masse_task.abort();
    Ok(crate::throughput::rate_figures(
        "quic_throughput",
        &raw_rates,
        &masse_rates,
    ))
}

async fn new_stream(warmup: usize, iterations: usize) -> Result<Vec<Figure>, BoxError> {
    let peers = Peers::generate()?;

    // The TCP baseline: a raw echo server.
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    let tcp_task = tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(crate::latency::echo(s));
        }
    });

    // Raw quinn: echo on every stream of an established connection.
    let server = peers.quinn_server()?;
    let server_addr = server.local_addr()?;
    let raw_task = echo_quinn(server);
    let (_client_endpoint, conn) = peers.quinn_connect(server_addr).await?;

    // masse: echo on every stream the listener accepts; the first connect
    // establishes the pooled connection.
    let server_quic = QuicInterface::new("127.0.0.1:0");
    let listener = server_quic.bind(&peers.bind_ctx()?).await?;
    let record = peers.record(listener.endpoints().first().cloned().ok_or("no endpoint")?)?;
    let masse_task = echo_accepted(listener);
    let client_quic = QuicInterface::new("127.0.0.1:0");
    let ctx = peers.connect_ctx()?;
    let ep = record.endpoints[0].clone();

    let masse_sample =
        async || timed_echo(async { boxed(client_quic.connect(&ep, &record, &ctx).await) }).await;
    let raw_sample = async || {
        timed_echo(async {
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, BoxError>(tokio::io::join(recv, send))
        })
        .await
    };

    let (mut masse, mut raw, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + iterations {
        let (m, r, t) = match i % 3 {
            0 => {
                let m = masse_sample().await?;
                let r = raw_sample().await?;
                (m, r, raw_connect_echo(tcp_addr).await?)
            }
            1 => {
                let r = raw_sample().await?;
                let t = raw_connect_echo(tcp_addr).await?;
                (masse_sample().await?, r, t)
            }
            _ => {
                let t = raw_connect_echo(tcp_addr).await?;
                let m = masse_sample().await?;
                (m, raw_sample().await?, t)
            }
        };
        if i >= warmup {
            masse.push(micros(m));
            raw.push(micros(r));
            tcp.push(micros(t));
        }
    }
    if client_quic.pooled_connections() != 1 {
        println!(
            "# quic_new_stream_latency: the dialer holds {} connections, expected 1",
            client_quic.pooled_connections()
        );
    }
    tcp_task.abort();
    raw_task.abort();
    masse_task.abort();
    Ok(vec![
        Figure::new(
            "quic_new_stream_masse_p50",
            percentile(&masse, 50.0),
            1,
            "us",
        ),
        Figure::new(
            "quic_new_stream_masse_p99",
            percentile(&masse, 99.0),
            1,
            "us",
        ),
        Figure::new("quic_new_stream_raw_p50", percentile(&raw, 50.0), 1, "us"),
        Figure::new("quic_new_stream_raw_p99", percentile(&raw, 99.0), 1, "us"),
        Figure::new("tcp_new_connection_p50", percentile(&tcp, 50.0), 1, "us"),
        Figure::new("tcp_new_connection_p99", percentile(&tcp, 99.0), 1, "us"),
    ])
}
