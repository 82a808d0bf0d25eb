//! TlsInterface: the interface conformance suite, and the trust model at the
//! interface level (pinned server fingerprint, mandatory client certificate,
//! TLS 1.3 only, handshakes that cannot stall the listener).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use masse_core::testkit::InterfaceConformance;
use masse_core::{
    ConnectContext, DynInterface, Endpoint, Error, Identity, InstanceId, Interface, Listener,
    Protocol,
};
use masse_tcp::TlsInterface;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;

use masse_core::testkit::fixtures::{
    accept_within, bind_ctx, connect_ctx, identity, init_tracing, record,
};

const STEP: Duration = Duration::from_secs(10);

/// `client` dials the listener of `server` at `ep`, pinning its fingerprint.
async fn dial(
    tls: &TlsInterface,
    ep: &Endpoint,
    server: &Identity,
    client: &Arc<Identity>,
) -> masse_core::BoxIo {
    tls.connect(
        ep,
        &record(ep, Some(server.fingerprint())),
        &connect_ctx(client),
    )
    .await
    .unwrap_or_else(|e| panic!("dial {ep}: {e}"))
}

/// A 1-byte echo through a dialed stream and the accepted one.
async fn echo_once(dialed: &mut masse_core::BoxIo, accepted: &mut masse_core::BoxIo) {
    dialed.write_all(b"x").await.unwrap();
    dialed.flush().await.unwrap();
    let mut b = [0u8; 1];
    timeout(STEP, accepted.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    accepted.write_all(&b).await.unwrap();
    accepted.flush().await.unwrap();
    timeout(STEP, dialed.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_ipv4_loopback() {
    init_tracing();
    InterfaceConformance::new(|| async {
        Arc::new(TlsInterface::new("127.0.0.1:0")) as DynInterface
    })
    .identity(identity("conformance"))
    .streams(1000)
    .payload_max(64 * 1024)
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_ipv6_loopback() {
    init_tracing();
    if common::without_ipv6_loopback("conformance_ipv6_loopback") {
        return;
    }
    InterfaceConformance::new(|| async { Arc::new(TlsInterface::new("[::1]:0")) as DynInterface })
        .identity(identity("conformance6"))
        .streams(200)
        .run()
        .await;
}

#[tokio::test]
async fn accepted_stream_reports_the_dialer_fingerprint() {
    init_tracing();
    let (server_id, client_id) = (identity("server"), identity("client"));
    let tls = TlsInterface::new("127.0.0.1:0");
    let mut listener = tls.bind(&bind_ctx(&server_id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    assert_eq!(*ep.protocol(), Protocol::TLS);
    let mut dialed = dial(&tls, &ep, &server_id, &client_id).await;
    let mut accepted = accept_within(&mut listener, STEP).await;
    assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
    assert!(accepted.remote_addr.is_some());
    echo_once(&mut dialed, &mut accepted.io).await;

    // A second dial (TLS session resumption) still reports the client.
    let mut dialed = dial(&tls, &ep, &server_id, &client_id).await;
    let mut accepted = accept_within(&mut listener, STEP).await;
    echo_once(&mut dialed, &mut accepted.io).await;
    assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
}

#[tokio::test]
async fn wrong_fingerprint_is_unauthorized_and_the_listener_keeps_working() {
    init_tracing();
    let (server_id, client_id, impostor) =
        (identity("server"), identity("client"), identity("impostor"));
    let tls = TlsInterface::new("127.0.0.1:0");
    let mut listener = tls.bind(&bind_ctx(&server_id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();

    for _ in 0..3 {
        let wrong = record(&ep, Some(impostor.fingerprint()));
        match tls.connect(&ep, &wrong, &connect_ctx(&client_id)).await {
            Err(Error::Unauthorized { reason }) => {
                assert!(
                    reason.contains(&impostor.fingerprint().to_string()),
                    "{reason}"
                );
                assert!(
                    reason.contains(&server_id.fingerprint().to_string()),
                    "{reason}"
                );
            }
            Err(other) => panic!("expected Unauthorized, got {other:?}"),
            Ok(_) => panic!("dialed a server whose fingerprint differs from the record's"),
        }
    }

    // Nothing was accepted, and a correct dial still works.
    let mut dialed = dial(&tls, &ep, &server_id, &client_id).await;
    let mut accepted = accept_within(&mut listener, STEP).await;
    assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
    echo_once(&mut dialed, &mut accepted.io).await;
}

#[tokio::test]
async fn record_without_identity_cannot_be_dialed() {
    let id = identity("any");
    let tls = TlsInterface::new("127.0.0.1:0");
    let listener = tls.bind(&bind_ctx(&id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    match tls
        .connect(&ep, &record(&ep, None), &connect_ctx(&id))
        .await
    {
        Err(Error::Unauthorized { reason }) => assert!(reason.contains("no identity"), "{reason}"),
        Err(other) => panic!("expected Unauthorized, got {other:?}"),
        Ok(_) => panic!("dialed a record without identity"),
    }
}

#[tokio::test]
async fn dialing_without_our_identity_is_a_config_error() {
    let id = identity("server");
    let tls = TlsInterface::new("127.0.0.1:0").identity(id.clone());
    let listener = tls.bind(&bind_ctx(&id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    let bare = TlsInterface::new("127.0.0.1:0");
    let ctx = ConnectContext::new(
        "test".parse().unwrap(),
        "dialer".parse().unwrap(),
        InstanceId::random(),
    );
    match bare
        .connect(&ep, &record(&ep, Some(id.fingerprint())), &ctx)
        .await
    {
        Err(Error::Config(msg)) => assert!(msg.contains("identity"), "{msg}"),
        Err(other) => panic!("expected Config, got {other:?}"),
        Ok(_) => panic!("dialed without an identity"),
    }
    // The interface's own identity stands in for a context without one.
    assert!(
        tls.connect(&ep, &record(&ep, Some(id.fingerprint())), &ctx)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn wrong_protocol_is_unsupported() {
    let id = identity("x");
    let tls = TlsInterface::new("127.0.0.1:0");
    let ep = Endpoint::new(Protocol::TCP, "127.0.0.1:1".parse().unwrap());
    assert!(matches!(
        tls.connect(&ep, &record(&ep, Some(id.fingerprint())), &connect_ctx(&id))
            .await,
        Err(Error::Unsupported(_))
    ));
}

/// A raw rustls client pinned to `server`, with or without a client
/// certificate, TLS 1.3 only unless `tls12_only`.
fn raw_client(
    server: &Identity,
    client_cert: Option<&Identity>,
    tls12_only: bool,
) -> tokio_rustls::TlsConnector {
    use masse_core::tls::PinnedServerVerifier;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ClientConfig::builder_with_provider(masse_core::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(
            server.fingerprint(),
        )));
    let mut config = match client_cert {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert_der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der().to_vec())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![masse_core::tls::ALPN.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    masse_core::tls::server_name()
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    init_tracing();
    let (server_id, client_id) = (identity("server"), identity("client"));
    let tls = TlsInterface::new("127.0.0.1:0");
    let mut listener = tls.bind(&bind_ctx(&server_id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();

    let tcp = TcpStream::connect(ep.socket_addr().unwrap()).await.unwrap();
    // In TLS 1.3 the client finishes its side first; the refusal comes as an
    // alert on the first read.
    let outcome = match raw_client(&server_id, None, false)
        .connect(server_name(), tcp)
        .await
    {
        Err(e) => Err(e),
        Ok(mut s) => {
            let _ = s.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            match timeout(STEP, s.read(&mut buf)).await.expect("read hung") {
                Ok(0) => Ok(()),
                Ok(n) => panic!("read {n} bytes from a server that must refuse us"),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = &outcome {
        let text = e.to_string();
        assert!(
            text.contains("CertificateRequired") || text.contains("certificate"),
            "{text}"
        );
    }
    // The listener yields nothing for it (a window: nothing may be accepted) ...
    assert!(
        matches!(
            timeout(Duration::from_millis(300), listener.accept()).await,
            Err(tokio::time::error::Elapsed { .. })
        ),
        "a client without a certificate was accepted"
    );
    // ... and a client with a certificate is accepted, reporting its fingerprint.
    let tcp = TcpStream::connect(ep.socket_addr().unwrap()).await.unwrap();
    let mut s = raw_client(&server_id, Some(&client_id), false)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    s.write_all(b"x").await.unwrap();
    s.flush().await.unwrap();
    let mut accepted = accept_within(&mut listener, STEP).await;
    assert_eq!(accepted.peer_identity, Some(client_id.fingerprint()));
    let mut b = [0u8; 1];
    accepted.io.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
}

#[tokio::test]
async fn tls12_is_refused() {
    init_tracing();
    let (server_id, client_id) = (identity("server"), identity("client"));
    let tls = TlsInterface::new("127.0.0.1:0");
    let mut listener = tls.bind(&bind_ctx(&server_id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    let tcp = TcpStream::connect(ep.socket_addr().unwrap()).await.unwrap();
    let result = raw_client(&server_id, Some(&client_id), true)
        .connect(server_name(), tcp)
        .await;
    match result {
        Err(e) => assert!(
            matches!(
                e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::ProtocolVersion
                ))
            ),
            "{e:?}"
        ),
        Ok(_) => panic!("a TLS 1.2 handshake succeeded"),
    }
    // A window in which nothing may be accepted.
    assert!(
        matches!(
            timeout(Duration::from_millis(300), listener.accept()).await,
            Err(tokio::time::error::Elapsed { .. })
        ),
        "a failed handshake was accepted"
    );
}

#[tokio::test]
async fn silent_clients_do_not_stall_accept_and_time_out() {
    init_tracing();
    let (server_id, client_id) = (identity("server"), identity("client"));
    let tls = TlsInterface::new("127.0.0.1:0").handshake_timeout(Duration::from_millis(300));
    let mut listener = tls.bind(&bind_ctx(&server_id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();

    // Connections that never send a ClientHello, and one that sends half of one.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(ep.socket_addr().unwrap()).await.unwrap());
    }
    let mut partial = TcpStream::connect(ep.socket_addr().unwrap()).await.unwrap();
    partial
        .write_all(b"\x16\x03\x01\x02\x00\x01")
        .await
        .unwrap();

    // A real dial is accepted at once regardless.
    let started = std::time::Instant::now();
    let mut dialed = dial(&tls, &ep, &server_id, &client_id).await;
    let mut accepted = accept_within(&mut listener, STEP).await;
    echo_once(&mut dialed, &mut accepted.io).await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // The silent ones are dropped after the handshake timeout.
    for s in silent.iter_mut().chain(std::iter::once(&mut partial)) {
        let mut buf = [0u8; 64];
        let r = timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("a silent client was not dropped after the handshake timeout");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}

#[tokio::test]
async fn limited_handshakes_still_serve_everyone() {
    init_tracing();
    let (server_id, client_id) = (identity("server"), identity("client"));
    let tls = TlsInterface::new("127.0.0.1:0").max_concurrent_handshakes(2);
    let listener = tls.bind(&bind_ctx(&server_id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    let server = tokio::spawn(async move {
        let mut listener = listener;
        for _ in 0..20 {
            let mut a = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                a.io.read_exact(&mut b).await.unwrap();
                a.io.write_all(&b).await.unwrap();
                a.io.flush().await.unwrap();
            });
        }
    });
    let mut dials = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (tls, client_id, ep) = (tls.clone(), client_id.clone(), ep.clone());
        let rec = record(&ep, Some(server_id.fingerprint()));
        dials.spawn(async move {
            let mut s = tls
                .connect(&ep, &rec, &connect_ctx(&client_id))
                .await
                .unwrap();
            s.write_all(b"y").await.unwrap();
            s.flush().await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"y");
        });
    }
    while let Some(r) = timeout(STEP, dials.join_next()).await.unwrap() {
        r.unwrap();
    }
    timeout(STEP, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropped_listener_refuses() {
    let id = identity("x");
    let tls = TlsInterface::new("127.0.0.1:0");
    let listener = tls.bind(&bind_ctx(&id)).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    drop(listener);
    let addr: SocketAddr = ep.socket_addr().unwrap();
    // Dropping aborts the task that owns the socket: it closes once the
    // runtime has run the abort. Until then a connect still gets through (or
    // is reset, caught in the backlog of the closing socket).
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let closing = match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => format!("{e}"),
            Err(e) => panic!("expected a refused connection, got {e}"),
            Ok(_) => "connected".to_owned(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still not refusing {STEP:?} after its listener was dropped: {closing}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn deferred_handshakes_run_where_the_binder_finishes_them() {
    init_tracing();
    let (server_id, client_id) = (identity("server"), identity("client"));
    let tls = TlsInterface::new("127.0.0.1:0").handshake_timeout(Duration::from_millis(300));
    let ctx = bind_ctx(&server_id).with_deferred_handshakes();
    let mut listener = tls.bind(&ctx).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    let addr = ep.socket_addr().unwrap();

    // A silent client is accepted at once, deferred: its io fails until
    // finished, and finishing ends as None after the handshake timeout.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let accepted = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    assert!(accepted.is_deferred());
    assert_eq!(accepted.peer_identity, None);
    let mut io = accepted.io;
    let mut b = [0u8; 1];
    let err = io.read(&mut b).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
    let silent = TcpStream::connect(addr).await.unwrap();
    let deferred = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    assert!(timeout(STEP, deferred.finish()).await.unwrap().is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    drop(silent);

    // A real dial finishes with the client's fingerprint and a budget
    // ticket, but only while someone runs `finish`: both at once.
    let finishing = async {
        let deferred = timeout(STEP, listener.accept()).await.unwrap().unwrap();
        deferred.finish().await
    };
    let (mut dialed, finished) = tokio::join!(dial(&tls, &ep, &server_id, &client_id), finishing);
    let mut finished = finished.expect("the handshake failed");
    assert!(!finished.is_deferred());
    assert_eq!(finished.peer_identity, Some(client_id.fingerprint()));
    assert!(finished.ticket.is_some());
    echo_once(&mut dialed, &mut finished.io).await;

    // A client without a certificate finishes as None.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let finishing = async {
        let deferred = timeout(STEP, listener.accept()).await.unwrap().unwrap();
        deferred.finish().await
    };
    let (_, finished) = tokio::join!(
        raw_client(&server_id, None, false).connect(server_name(), tcp),
        finishing
    );
    assert!(
        finished.is_none(),
        "a client without a certificate finished"
    );
}
