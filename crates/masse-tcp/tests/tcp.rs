//! TcpInterface behaviour beyond the conformance suite: wildcard binds,
//! advertised addresses, address reuse, timeouts, wrong protocols.

use std::net::SocketAddr;
use std::time::Duration;

use masse_core::testkit::fixtures::{plain_bind_ctx, plain_connect_ctx, record};
use masse_core::{Endpoint, Error, Interface, Protocol};
use masse_tcp::TcpInterface;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Dials `ep`, sends a line, and expects the acceptor (`listener`) to see it
/// and the remote address to be the dialer's local one.
async fn round_trip(
    tcp: &TcpInterface,
    listener: &mut Box<dyn masse_core::Listener>,
    ep: Endpoint,
) {
    let mut dialed = timeout(
        Duration::from_secs(10),
        tcp.connect(&ep, &record(&ep, None), &plain_connect_ctx()),
    )
    .await
    .expect("connect hung")
    .unwrap_or_else(|e| panic!("connect to {ep}: {e}"));
    let accepted = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("accept hung")
        .expect("accept");
    assert!(accepted.remote_addr.is_some());
    let mut io = accepted.io;
    dialed.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn loopback_bind_advertises_exactly_that_address() {
    let tcp = TcpInterface::new("127.0.0.1:0");
    let mut listener = tcp.bind(&plain_bind_ctx()).await.unwrap();
    let eps = listener.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(*eps[0].protocol(), Protocol::TCP);
    assert_eq!(eps[0].socket_addr().unwrap().ip().to_string(), "127.0.0.1");
    assert_ne!(eps[0].socket_addr().unwrap().port(), 0);
    round_trip(&tcp, &mut listener, eps[0].clone()).await;
}

#[tokio::test]
async fn wildcard_bind_advertises_reachable_host_addresses() {
    let tcp = TcpInterface::new("0.0.0.0:0");
    let mut listener = tcp.bind(&plain_bind_ctx()).await.unwrap();
    let eps = listener.endpoints();
    assert!(!eps.is_empty());
    let port = eps[0].socket_addr().unwrap().port();
    assert_ne!(port, 0);
    for ep in &eps {
        assert!(ep.socket_addr().unwrap().is_ipv4(), "{ep}");
        assert!(!ep.socket_addr().unwrap().ip().is_unspecified(), "{ep}");
        assert_eq!(ep.socket_addr().unwrap().port(), port, "{ep}");
    }
    let non_loopback = eps
        .iter()
        .filter(|e| !e.socket_addr().unwrap().ip().is_loopback())
        .count();
    assert!(
        non_loopback == eps.len() || eps.len() == 1,
        "loopback is advertised only when nothing else is: {eps:?}"
    );
    // The host's own addresses reach the wildcard listener.
    for ep in eps {
        round_trip(&tcp, &mut listener, ep).await;
    }
}

#[tokio::test]
async fn wildcard_with_include_loopback_lists_loopback_last() {
    let tcp = TcpInterface::new("0.0.0.0:0").include_loopback(true);
    let listener = tcp.bind(&plain_bind_ctx()).await.unwrap();
    let eps = listener.endpoints();
    let last = eps.last().expect("endpoints");
    assert!(last.socket_addr().unwrap().ip().is_loopback(), "{eps:?}");
}

#[tokio::test]
async fn advertise_overrides_and_fills_the_port() {
    let public: SocketAddr = "203.0.113.9:0".parse().unwrap();
    let fixed: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let tcp = TcpInterface::new("127.0.0.1:0")
        .advertise(public)
        .advertise(fixed);
    let listener = tcp.bind(&plain_bind_ctx()).await.unwrap();
    let eps = listener.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert_eq!(eps[0].socket_addr().unwrap().ip(), public.ip());
    assert_ne!(eps[0].socket_addr().unwrap().port(), 0);
    assert_eq!(eps[1], Endpoint::new(Protocol::TCP, fixed));
}

#[tokio::test]
async fn bind_in_use_is_an_io_error() {
    let tcp = TcpInterface::new("127.0.0.1:0");
    let listener = tcp.bind(&plain_bind_ctx()).await.unwrap();
    let taken = listener.endpoints()[0].socket_addr().unwrap();
    let again = TcpInterface::from_addr(taken);
    match again.bind(&plain_bind_ctx()).await {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
            assert!(e.to_string().contains(&taken.to_string()), "{e}");
        }
        Err(other) => panic!("expected Error::Io, got {other:?}"),
        Ok(_) => panic!("bound {taken} twice"),
    }
    drop(listener);
}

#[tokio::test]
async fn invalid_address_is_reported_by_bind() {
    let tcp = TcpInterface::new("localhost:4100");
    match tcp.bind(&plain_bind_ctx()).await {
        Err(Error::InvalidAddress { reason, .. }) => {
            assert!(reason.contains("host names"), "{reason}")
        }
        Err(other) => panic!("expected InvalidAddress, got {other:?}"),
        Ok(_) => panic!("bound a host name"),
    }
    assert!(matches!(
        TcpInterface::try_new("localhost:4100"),
        Err(Error::InvalidAddress { .. })
    ));
}

#[tokio::test]
async fn refused_connect_is_a_transient_io_error() {
    let tcp = TcpInterface::new("127.0.0.1:0");
    let listener = tcp.bind(&plain_bind_ctx()).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    drop(listener);
    let err = match tcp
        .connect(&ep, &record(&ep, None), &plain_connect_ctx())
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&ep.to_string()), "{err}");
}

#[tokio::test]
async fn other_protocols_are_unsupported() {
    let tcp = TcpInterface::new("127.0.0.1:0");
    let ep: Endpoint = "quic://127.0.0.1:4433".parse().unwrap();
    assert!(matches!(
        tcp.connect(&ep, &record(&ep, None), &plain_connect_ctx())
            .await,
        Err(Error::Unsupported(_))
    ));
}

/// A listener that never accepts, with a full queue, drops further SYNs
/// (Linux): the next dial can only end by the connect timeout.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn connect_timeout_is_honoured() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = socket.listen(1).unwrap();
    let ep = Endpoint::new(Protocol::TCP, stuck.local_addr().unwrap());
    let tcp = TcpInterface::new("127.0.0.1:0");
    let limit = Duration::from_millis(300);
    let ctx = plain_connect_ctx().with_connect_timeout(limit);
    let mut held = Vec::new();
    for _ in 0..16 {
        let started = std::time::Instant::now();
        match timeout(
            Duration::from_secs(5),
            tcp.connect(&ep, &record(&ep, None), &ctx),
        )
        .await
        .expect("connect ignored its timeout")
        {
            Ok(io) => held.push(io),
            Err(Error::Timeout { what, after }) => {
                assert_eq!(what, masse_core::Operation::Connect);
                assert_eq!(after, limit);
                assert!(started.elapsed() < Duration::from_secs(2));
                return;
            }
            Err(other) => panic!("expected Timeout, got {other:?}"),
        }
    }
    panic!("{} dials to a full accept queue all succeeded", held.len());
}

#[test]
fn public_types_are_debug_and_clone() {
    let tcp = TcpInterface::new("[::]:0").nodelay(false).backlog(8);
    let copy = tcp.clone();
    let s = format!("{copy:?}");
    assert!(s.contains("TcpInterface"), "{s}");
    assert!(format!("{:?}", TcpInterface::default()).contains("0.0.0.0:0"));
}
