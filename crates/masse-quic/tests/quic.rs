//! QuicInterface beyond the conformance suite: the trust model (pinned
//! server fingerprint, mandatory client certificate), connection pooling and
//! recovery, stream limits, and a listener that is gone.

#![allow(clippy::print_stderr)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use masse_core::{
    Accepted, BindContext, BoxIo, ConnectContext, Endpoint, Error, Identity, InstanceId, Interface,
    Listener, PeerRecord, Protocol, RefuseCode,
};
use masse_quic::QuicInterface;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

use masse_core::testkit::fixtures::{
    accept_within, bind_ctx, connect_ctx, identity, init_tracing, record,
};

/// Sends one byte (which makes the stream visible), accepts it, echoes it.
async fn open_and_echo(dialed: &mut BoxIo, listener: &mut Box<dyn Listener>) -> Accepted {
    dialed.write_all(b"x").await.unwrap();
    dialed.flush().await.unwrap();
    let mut accepted = accept_within(listener, STEP).await;
    let mut b = [0u8; 1];
    timeout(STEP, accepted.io.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    accepted.io.write_all(&b).await.unwrap();
    accepted.io.flush().await.unwrap();
    timeout(STEP, dialed.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"x");
    accepted
}

struct Server {
    quic: QuicInterface,
    listener: Box<dyn Listener>,
    ep: Endpoint,
    id: Arc<Identity>,
}

impl Server {
    /// Its record: the endpoint, and the fingerprint a dialer pins.
    fn record(&self) -> PeerRecord {
        record(&self.ep, Some(self.id.fingerprint()))
    }

    /// `client` dials it through `quic`.
    async fn dial(&self, quic: &QuicInterface, client: &Arc<Identity>) -> BoxIo {
        quic.connect(&self.ep, &self.record(), &connect_ctx(client))
            .await
            .unwrap_or_else(|e| panic!("dial {}: {e}", self.ep))
    }
}

async fn server(quic: QuicInterface) -> Server {
    let id = identity("server");
    let listener = quic.bind(&bind_ctx(&id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    assert_eq!(*ep.protocol(), Protocol::QUIC);
    Server {
        quic,
        listener,
        ep,
        id,
    }
}

#[tokio::test]
async fn accepted_streams_report_the_dialer_and_share_one_connection() {
    init_tracing();
    let mut s = server(QuicInterface::new("127.0.0.1:0")).await;
    let client_id = identity("client");
    let client = QuicInterface::new("127.0.0.1:0");
    let rec = s.record();
    let mut remotes = Vec::new();
    for _ in 0..5 {
        let mut dialed = client
            .connect(&s.ep, &rec, &connect_ctx(&client_id))
            .await
            .unwrap();
        let accepted = open_and_echo(&mut dialed, &mut s.listener).await;
        assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
        remotes.push(accepted.remote_addr.unwrap());
    }
    assert!(remotes.iter().all(|r| *r == remotes[0]), "{remotes:?}");
    assert_eq!(client.pooled_connections(), 1);
    // Another identity on the same interface gets its own connection.
    let other_id = identity("other");
    let mut dialed = client
        .connect(&s.ep, &rec, &connect_ctx(&other_id))
        .await
        .unwrap();
    let accepted = open_and_echo(&mut dialed, &mut s.listener).await;
    assert_eq!(accepted.peer_identity, Some(other_id.fingerprint()));
    assert_eq!(client.pooled_connections(), 2);
}

#[tokio::test]
async fn a_node_dials_from_its_listening_socket() {
    init_tracing();
    /// `from` dials `to` with its own identity; what `to` accepts.
    async fn dial(from: &Server, to: &mut Server) -> Accepted {
        let mut dialed = to.dial(&from.quic, &from.id).await;
        open_and_echo(&mut dialed, &mut to.listener).await
    }
    let mut a = server(QuicInterface::new("127.0.0.1:0")).await;
    let mut b = server(QuicInterface::new("127.0.0.1:0")).await;
    let accepted = dial(&a, &mut b).await;
    assert_eq!(accepted.remote_addr, Some(a.ep.socket_addr().unwrap()));
    assert_eq!(accepted.peer_identity, Some(a.id.fingerprint()));
    // And the other way round.
    let accepted = dial(&b, &mut a).await;
    assert_eq!(accepted.remote_addr, Some(b.ep.socket_addr().unwrap()));
}

#[tokio::test]
async fn wrong_fingerprint_is_unauthorized_and_the_listener_keeps_working() {
    init_tracing();
    let mut s = server(QuicInterface::new("127.0.0.1:0")).await;
    let (client_id, impostor) = (identity("client"), identity("impostor"));
    let client = QuicInterface::new("127.0.0.1:0");
    for _ in 0..3 {
        let wrong = record(&s.ep, Some(impostor.fingerprint()));
        match client
            .connect(&s.ep, &wrong, &connect_ctx(&client_id))
            .await
        {
            Err(Error::Unauthorized { reason }) => {
                assert!(
                    reason.contains(&impostor.fingerprint().to_string()),
                    "{reason}"
                );
                assert!(reason.contains(&s.id.fingerprint().to_string()), "{reason}");
            }
            Err(other) => panic!("expected Unauthorized, got {other:?}"),
            Ok(_) => panic!("dialed a server whose fingerprint differs from the record's"),
        }
    }
    assert_eq!(client.pooled_connections(), 0);
    let right = s.record();
    let mut dialed = client
        .connect(&s.ep, &right, &connect_ctx(&client_id))
        .await
        .unwrap();
    let accepted = open_and_echo(&mut dialed, &mut s.listener).await;
    assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
}

#[tokio::test]
async fn record_without_identity_cannot_be_dialed() {
    let s = server(QuicInterface::new("127.0.0.1:0")).await;
    let id = identity("client");
    match QuicInterface::new("127.0.0.1:0")
        .connect(&s.ep, &record(&s.ep, None), &connect_ctx(&id))
        .await
    {
        Err(Error::Unauthorized { reason }) => assert!(reason.contains("no identity"), "{reason}"),
        Err(other) => panic!("expected Unauthorized, got {other:?}"),
        Ok(_) => panic!("dialed a record without identity"),
    }
}

#[tokio::test]
async fn missing_own_identity_is_a_config_error() {
    let bare = QuicInterface::new("127.0.0.1:0");
    let ctx = BindContext::new(
        "test".parse().unwrap(),
        "a".parse().unwrap(),
        InstanceId::random(),
    );
    assert!(matches!(bare.bind(&ctx).await, Err(Error::Config(_))));
    let s = server(QuicInterface::new("127.0.0.1:0")).await;
    let ctx = ConnectContext::new(
        "test".parse().unwrap(),
        "d".parse().unwrap(),
        InstanceId::random(),
    );
    let rec = s.record();
    match bare.connect(&s.ep, &rec, &ctx).await {
        Err(Error::Config(msg)) => assert!(msg.contains("identity"), "{msg}"),
        Err(other) => panic!("expected Config, got {other:?}"),
        Ok(_) => panic!("dialed without an identity"),
    }
    // The interface's own identity stands in for a context without one.
    let with_default = QuicInterface::new("127.0.0.1:0").identity(identity("default"));
    assert!(with_default.connect(&s.ep, &rec, &ctx).await.is_ok());
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    init_tracing();
    use masse_core::tls::{ALPN, PinnedServerVerifier, provider};
    use quinn::rustls;
    let mut s = server(QuicInterface::new("127.0.0.1:0")).await;

    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(s.id.fingerprint())))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            s.ep.socket_addr().unwrap(),
            "masse",
        )
        .unwrap();
    // In TLS 1.3 the client may finish first; the refusal then closes the
    // connection with CRYPTO_ERROR certificate_required.
    let reason = match timeout(STEP, connecting).await.expect("handshake hung") {
        Err(e) => e,
        Ok(conn) => {
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                let _ = send.write_all(b"hello").await;
            }
            timeout(STEP, conn.closed()).await.expect("not closed")
        }
    };
    let text = reason.to_string();
    assert!(
        text.contains("116") || text.to_lowercase().contains("certificate"),
        "{text}"
    );
    // A window in which nothing may be accepted.
    assert!(
        matches!(
            timeout(Duration::from_millis(300), s.listener.accept()).await,
            Err(tokio::time::error::Elapsed { .. })
        ),
        "a client without a certificate was accepted"
    );

    // The listener keeps serving authenticated clients.
    let client_id = identity("client");
    let mut dialed = s.dial(&QuicInterface::new("127.0.0.1:0"), &client_id).await;
    let accepted = open_and_echo(&mut dialed, &mut s.listener).await;
    assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
}

#[tokio::test]
async fn garbage_datagrams_do_not_stall_the_listener() {
    init_tracing();
    let mut s = server(QuicInterface::new("127.0.0.1:0")).await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [1usize, 20, 1200, 1500] {
        let mut junk = vec![0xc3u8; len];
        if len >= 5 {
            // Looks like a QUIC v1 long header.
            junk[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        udp.send_to(&junk, s.ep.socket_addr().unwrap())
            .await
            .unwrap();
    }
    let client_id = identity("client");
    let mut dialed = s.dial(&QuicInterface::new("127.0.0.1:0"), &client_id).await;
    open_and_echo(&mut dialed, &mut s.listener).await;
}

/// Finishes both directions of a stream and drops both ends.
async fn close(mut d: BoxIo, mut a: Accepted) {
    d.shutdown().await.unwrap();
    a.io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(STEP, a.io.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    timeout(STEP, d.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn past_every_pooled_connection_s_stream_limit_connect_is_refused_as_busy_at_once() {
    init_tracing();
    let mut s = server(QuicInterface::new("127.0.0.1:0").max_concurrent_streams(2)).await;
    let client_id = identity("client");
    let client = QuicInterface::new("127.0.0.1:0").max_connections_per_peer(2);
    let rec = s.record();
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut d = client
            .connect(&s.ep, &rec, &connect_ctx(&client_id))
            .await
            .unwrap();
        let a = open_and_echo(&mut d, &mut s.listener).await;
        open.push((d, a));
    }
    assert_eq!(client.pooled_streams(), vec![vec![2, 2]]);
    // A generous connect timeout: the refusal must not wait for it.
    let patient = connect_ctx(&client_id).with_connect_timeout(Duration::from_secs(30));
    let started = tokio::time::Instant::now();
    match timeout(STEP, client.connect(&s.ep, &rec, &patient)).await {
        Ok(Err(e @ Error::Refused { .. })) => {
            assert_eq!(e.refuse_code(), Some(RefuseCode::Busy), "{e:?}");
            assert!(e.is_transient());
            assert!(!e.is_stale_address());
        }
        Ok(Err(other)) => panic!("expected Refused(Busy), got {other:?}"),
        Ok(Ok(_)) => panic!("opened a fifth stream past 2 connections of 2 streams"),
        Err(_) => panic!("connect waited for its timeout instead of failing"),
    }
    eprintln!("refused as busy after {:?}", started.elapsed());
    assert_eq!(client.pooled_connections(), 2);
    // Finishing one stream (both directions) frees a slot on its connection.
    // Its credit comes back after an acknowledgement and a round trip.
    let (d, a) = open.remove(0);
    close(d, a).await;
    common::until_streams(&client, "the closed stream uncounted", STEP, |c| {
        c == [vec![1, 2]]
    })
    .await;
    let mut d = timeout(STEP, async {
        loop {
            match client.connect(&s.ep, &rec, &patient).await {
                Err(e) if e.refuse_code() == Some(RefuseCode::Busy) => {
                    // Back-off of a retry until the credit is back.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other.unwrap(),
            }
        }
    })
    .await
    .expect("the freed stream's credit never came back");
    open_and_echo(&mut d, &mut s.listener).await;
    assert_eq!(client.pooled_streams(), vec![vec![2, 2]]);
}

#[tokio::test]
async fn streams_past_one_connection_s_limit_go_on_another_and_back_to_the_first() {
    init_tracing();
    let mut s = server(QuicInterface::new("127.0.0.1:0").max_concurrent_streams(3)).await;
    let client_id = identity("client");
    let client = QuicInterface::new("127.0.0.1:0");
    let rec = s.record();
    for round in 0..2 {
        let mut open = Vec::new();
        for _ in 0..7 {
            let mut d = client
                .connect(&s.ep, &rec, &connect_ctx(&client_id))
                .await
                .unwrap();
            let a = open_and_echo(&mut d, &mut s.listener).await;
            open.push((d, a));
        }
        assert_eq!(
            client.pooled_streams(),
            vec![vec![3, 3, 1]],
            "round {round}"
        );
        for (d, a) in open {
            close(d, a).await;
        }
        common::drained(&client, STEP).await;
        assert_eq!(client.pooled_connections(), 3);
        // The next stream goes on the first connection again, and the
        // extra ones, idle, are closed.
        let mut d = client
            .connect(&s.ep, &rec, &connect_ctx(&client_id))
            .await
            .unwrap();
        let a = open_and_echo(&mut d, &mut s.listener).await;
        assert_eq!(client.pooled_streams(), vec![vec![1]], "round {round}");
        close(d, a).await;
        common::drained(&client, STEP).await;
    }
}

#[tokio::test]
async fn without_a_listener_connections_are_refused_and_streams_reset() {
    init_tracing();
    let s = server(QuicInterface::new("127.0.0.1:0")).await;
    let client_id = identity("client");
    let client = QuicInterface::new("127.0.0.1:0");
    let rec = s.record();
    let mut listener = s.listener;
    let mut d = client
        .connect(&s.ep, &rec, &connect_ctx(&client_id))
        .await
        .unwrap();
    open_and_echo(&mut d, &mut listener).await;
    drop(listener);

    // A new stream on the pooled connection is reset by the acceptor.
    let mut d = client
        .connect(&s.ep, &rec, &connect_ctx(&client_id))
        .await
        .unwrap();
    let _ = d.write_all(b"hello").await;
    let _ = d.flush().await;
    let mut buf = [0u8; 8];
    match timeout(STEP, d.read(&mut buf)).await.expect("read hung") {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset stream, read {n} bytes"),
    }

    // A new connection is refused at once.
    let other = QuicInterface::new("127.0.0.1:0");
    match timeout(STEP, other.connect(&s.ep, &rec, &connect_ctx(&client_id))).await {
        Ok(Err(Error::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(Err(other)) => panic!("expected a refused connection, got {other:?}"),
        Ok(Ok(_)) => panic!("connected without a listener"),
        Err(_) => panic!("the dial hung"),
    }

    // Binding again serves again.
    let mut listener = s.quic.bind(&bind_ctx(&s.id)).await.unwrap();
    assert_eq!(listener.endpoints()[0], s.ep);
    let mut d = other
        .connect(&s.ep, &rec, &connect_ctx(&client_id))
        .await
        .unwrap();
    open_and_echo(&mut d, &mut listener).await;
}

#[tokio::test]
async fn a_second_listener_on_one_interface_is_refused() {
    let s = server(QuicInterface::new("127.0.0.1:0")).await;
    assert!(matches!(
        s.quic.bind(&bind_ctx(&s.id)).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn a_restarted_peer_is_redialed() {
    init_tracing();
    let s = server(QuicInterface::new("127.0.0.1:0")).await;
    let (addr, server_id) = (s.ep.socket_addr().unwrap(), s.id.clone());
    let client_id = identity("client");
    let client = QuicInterface::new("127.0.0.1:0");
    let rec = record(&s.ep, Some(server_id.fingerprint()));
    let mut listener = s.listener;
    let mut d = client
        .connect(&s.ep, &rec, &connect_ctx(&client_id))
        .await
        .unwrap();
    let a = open_and_echo(&mut d, &mut listener).await;
    assert_eq!(client.pooled_connections(), 1);

    // The peer goes away (its connection closes) and comes back on the same
    // address with the same identity.
    drop((d, a, listener, s.quic));
    let restarted = QuicInterface::from_addr(addr);
    let mut listener = None;
    for _ in 0..100 {
        match restarted.bind(&bind_ctx(&server_id)).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            // Back-off of a retry until the OS lets the address go.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut listener = listener.expect("could not rebind the restarted peer's address");
    let mut echoed = false;
    for _ in 0..3 {
        let Ok(mut d) = client
            .connect(&rec.endpoints[0], &rec, &connect_ctx(&client_id))
            .await
        else {
            continue;
        };
        if d.write_all(b"x").await.is_err() || d.flush().await.is_err() {
            continue;
        }
        let Ok(Ok(mut a)) = timeout(Duration::from_secs(2), listener.accept()).await else {
            continue;
        };
        let mut b = [0u8; 1];
        a.io.read_exact(&mut b).await.unwrap();
        echoed = true;
        break;
    }
    assert!(echoed, "the restarted peer was not reached");
    assert_eq!(client.pooled_connections(), 1);
}

#[tokio::test]
async fn wrong_protocol_and_bad_addresses() {
    let id = identity("x");
    let q = QuicInterface::new("127.0.0.1:0");
    let ep = Endpoint::new(Protocol::TCP, "127.0.0.1:1".parse().unwrap());
    assert!(matches!(
        q.connect(&ep, &record(&ep, Some(id.fingerprint())), &connect_ctx(&id))
            .await,
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        QuicInterface::try_new("localhost:4433"),
        Err(Error::InvalidAddress {
            kind: "quic socket address",
            ..
        })
    ));
    let bad = QuicInterface::new("nope").identity(id.clone());
    assert!(matches!(
        bad.bind(&bind_ctx(&id)).await,
        Err(Error::InvalidAddress { .. })
    ));
    let unspecified: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let q = QuicInterface::new("127.0.0.1:0").advertise(unspecified);
    assert!(matches!(
        q.bind(&bind_ctx(&id)).await,
        Err(Error::InvalidAddress {
            kind: "advertised address",
            ..
        })
    ));
}

#[tokio::test]
async fn dialing_works_with_an_unparsable_bind_address() {
    let mut s = server(QuicInterface::new("127.0.0.1:0")).await;
    let client_id = identity("client");
    let bad = QuicInterface::new("not an address");
    let mut d = s.dial(&bad, &client_id).await;
    open_and_echo(&mut d, &mut s.listener).await;
}
