//! `setup_time`: how long a new authenticated connection takes, until a
//! 1-byte echo has come back through it (so the acceptor's side of the
//! handshake is included).
//!
//! - `tls`: a fresh `TlsInterface` per sample, so every handshake is a full
//!   one (certificate signatures checked both ways).
//! - `tls_resumed`: one `TlsInterface` for all samples: after the first,
//!   TLS 1.3 session resumption skips the certificates.
//! - `quic`: a fresh `QuicInterface` per sample: a new UDP socket and a full
//!   QUIC handshake.
//! - `quic_long_lived`: one `QuicInterface` for all samples, as a running
//!   node has, dialing a peer it has no connection to yet (a fresh server
//!   per sample, started outside the timing): a full QUIC handshake from the
//!   interface's existing socket.
//! - `quic_raw_fresh_server`: the same with raw quinn, from one long-lived
//!   client endpoint to a fresh raw quinn server per sample: the baseline
//!   of `quic_long_lived`. (Against the one long-lived server of `quic_raw`
//!   a client resumes its TLS session and meets a warm endpoint, which a
//!   peer dialed for the first time cannot offer.)
//! - `quic_raw`: a new raw quinn connection from one long-lived endpoint,
//!   same configuration: the QUIC handshake without the new socket.
//! - `quic_raw_new_socket`: the same from a new quinn client endpoint (new
//!   UDP socket) per sample, with a configuration built once: what a fresh
//!   `QuicInterface` has to do at least.
//! - `tcp`: a plain TCP connection, the floor.
//!
//! Each iteration takes one sample of each, rotating which goes first.

use masse::{Interface, QuicInterface, TlsInterface};

use crate::latency::{micros, raw_connect_echo};
use crate::secure::{Peers, boxed, echo_accepted, echo_quinn, timed_echo};
use crate::stats::percentile;
use crate::{BoxError, Figure, Mode};

fn iterations(mode: Mode) -> usize {
    match mode {
        Mode::Full => 1000,
        Mode::Quick => 100,
    }
}

pub(crate) fn describe(mode: Mode) -> String {
    format!(
        "setup_time: {} interleaved iterations after {} warm-up",
        iterations(mode),
        iterations(mode) / 10
    )
}

pub(crate) fn run(mode: Mode) -> Result<Vec<Figure>, BoxError> {
    crate::on_workers(bench(iterations(mode) / 10, iterations(mode)))
}

async fn bench(warmup: usize, iterations: usize) -> Result<Vec<Figure>, BoxError> {
    let peers = Peers::generate()?;

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    let tcp_task = tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(crate::latency::echo(s));
        }
    });

    let tls_server = TlsInterface::new("127.0.0.1:0");
    let listener = tls_server.bind(&peers.bind_ctx()?).await?;
    let tls_record = peers.record(listener.endpoints().first().cloned().ok_or("no endpoint")?)?;
    let tls_task = echo_accepted(listener);

    let quic_server = QuicInterface::new("127.0.0.1:0");
    let listener = quic_server.bind(&peers.bind_ctx()?).await?;
    let quic_record = peers.record(listener.endpoints().first().cloned().ok_or("no endpoint")?)?;
    let quic_task = echo_accepted(listener);

    let quinn_server = peers.quinn_server()?;
    let quinn_addr = quinn_server.local_addr()?;
    let quinn_task = echo_quinn(quinn_server);
    let quinn_client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let quinn_config = peers.quinn_client_config()?;

    let ctx = peers.connect_ctx()?;
    let resumed = TlsInterface::new("127.0.0.1:0");
    let tls_full = async || {
        let tls = TlsInterface::new("127.0.0.1:0");
        let ep = tls_record.endpoints[0].clone();
        timed_echo(async { boxed(tls.connect(&ep, &tls_record, &ctx).await) }).await
    };
    let tls_resumed = async || {
        let ep = tls_record.endpoints[0].clone();
        timed_echo(async { boxed(resumed.connect(&ep, &tls_record, &ctx).await) }).await
    };
    let quic = async || {
        let quic = QuicInterface::new("127.0.0.1:0");
        let ep = quic_record.endpoints[0].clone();
        timed_echo(async { boxed(quic.connect(&ep, &quic_record, &ctx).await) }).await
    };

    let quic_raw = async || {
        timed_echo(async {
            let conn = quinn_client
                .connect_with(quinn_config.clone(), quinn_addr, "masse")?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, BoxError>(tokio::io::join(recv, send))
        })
        .await
    };

    let quic_raw_new_socket = async || {
        timed_echo(async {
            let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            let conn = client
                .connect_with(quinn_config.clone(), quinn_addr, "masse")?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, BoxError>(tokio::io::join(recv, send))
        })
        .await
    };

    let long_lived = QuicInterface::new("127.0.0.1:0");
    let quic_long_lived = async || {
        let server = QuicInterface::new("127.0.0.1:0");
        let listener = server.bind(&peers.bind_ctx()?).await?;
        let record = peers.record(listener.endpoints().first().cloned().ok_or("no endpoint")?)?;
        let task = echo_accepted(listener);
        let ep = record.endpoints[0].clone();
        let took = timed_echo(async { boxed(long_lived.connect(&ep, &record, &ctx).await) }).await;
        task.abort();
        took
    };

    let quic_raw_fresh_server = async || {
        let server = peers.quinn_server()?;
        let addr = server.local_addr()?;
        let task = echo_quinn(server);
        let took = timed_echo(async {
            let conn = quinn_client
                .connect_with(quinn_config.clone(), addr, "masse")?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, BoxError>(tokio::io::join(recv, send))
        })
        .await;
        task.abort();
        took
    };

    let mut samples: [Vec<f64>; 8] = Default::default();
    for i in 0..warmup + iterations {
        let mut taken = [0.0; 8];
        for k in 0..8 {
            let which = (i + k) % 8;
            let d = match which {
                0 => raw_connect_echo(tcp_addr).await?,
                1 => tls_full().await?,
                2 => tls_resumed().await?,
                3 => quic().await?,
                4 => quic_raw().await?,
                5 => quic_raw_new_socket().await?,
                6 => quic_long_lived().await?,
                _ => quic_raw_fresh_server().await?,
            };
            taken[which] = micros(d);
        }
        if i >= warmup {
            for (all, one) in samples.iter_mut().zip(taken) {
                all.push(one);
            }
        }
    }
    tcp_task.abort();
    tls_task.abort();
    quic_task.abort();
    quinn_task.abort();
    let [
        tcp,
        tls,
        tls_resumed,
        quic,
        quic_raw,
        quic_raw_new_socket,
        quic_long_lived,
        quic_raw_fresh_server,
    ] = samples;
    Ok(vec![
        Figure::new("setup_tcp_p50", percentile(&tcp, 50.0), 1, "us"),
        Figure::new("setup_tls_p50", percentile(&tls, 50.0), 1, "us"),
        Figure::new(
            "setup_tls_resumed_p50",
            percentile(&tls_resumed, 50.0),
            1,
            "us",
        ),
        Figure::new("setup_quic_p50", percentile(&quic, 50.0), 1, "us"),
        Figure::new("setup_quic_raw_p50", percentile(&quic_raw, 50.0), 1, "us"),
        Figure::new(
            "setup_quic_raw_new_socket_p50",
            percentile(&quic_raw_new_socket, 50.0),
            1,
            "us",
        ),
        Figure::new(
            "setup_quic_long_lived_p50",
            percentile(&quic_long_lived, 50.0),
            1,
            "us",
        ),
        Figure::new(
            "setup_quic_raw_fresh_server_p50",
            percentile(&quic_raw_fresh_server, 50.0),
            1,
            "us",
        ),
        Figure::new(
            "setup_quic_long_lived_vs_raw",
            percentile(&quic_long_lived, 50.0) / percentile(&quic_raw_fresh_server, 50.0),
            2,
            "x",
        ),
    ])
}
