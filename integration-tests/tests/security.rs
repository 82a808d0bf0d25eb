//! Names you can trust: identities pinned through the registry on tls and
//! quic, the namespace secret on plain tcp, and the attacks they stop. Real
//! sockets on loopback, several nodes in one process.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use masse::handshake::{self, Hello, Message};
use masse::{
    ConnectContext, Error, Identity, InstanceId, Interface, MemoryRegistry, NamePolicy, Namespace,
    Node, NodeBuilder, PeerName, PeerRecord, Protocol, QuicInterface, RefuseCode, Registry,
    RegistryEvent, TcpInterface, TlsInterface,
};
use masse_integration_tests::{echo_forever, eventually, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn base(name: &str, ns: &str) -> NodeBuilder {
    init_tracing();
    Node::builder(name)
        .namespace(ns)
        .ttl(Duration::from_secs(3))
}

fn tls(name: &str, ns: &str) -> NodeBuilder {
    base(name, ns).interface(TlsInterface::new("127.0.0.1:0"))
}

async fn roundtrip(n: &Node, to: &str) -> masse::Result<masse::PeerStream> {
    let mut s = n.connect(to).await?;
    s.write_all(b"ping").await?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    assert_eq!(&b, b"ping");
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_quic_streams_are_authenticated_both_ways() {
    let reg = MemoryRegistry::new();
    for (ns, proto) in [("sec-tls", Protocol::TLS), ("sec-quic", Protocol::QUIC)] {
        let build = |name: &str| {
            let b = base(name, ns).registry(reg.clone());
            match proto {
                Protocol::TLS => b.interface(TlsInterface::new("127.0.0.1:0")),
                _ => b.interface(QuicInterface::new("127.0.0.1:0")),
            }
        };
        let a = build("a").start().await.unwrap();
        let b = build("b").start().await.unwrap();
        echo_forever(&b).await;
        assert!(
            a.record().identity.is_some(),
            "the record carries the fingerprint"
        );
        assert_eq!(*a.record().endpoints[0].protocol(), proto);
        let s = timeout(T, roundtrip(&a, "b")).await.unwrap().unwrap();
        assert_eq!(*s.protocol(), proto);
        assert_eq!(s.peer_instance(), b.instance());
    }
}

/// A registry view that rewrites the records one name resolves to, as a
/// network attacker redirecting traffic (or a stale cache) would make a
/// dialer see them. Writes go through untouched.
#[derive(Clone)]
struct Rewrite {
    inner: MemoryRegistry,
    name: &'static str,
    rewrite: Arc<dyn Fn(&mut PeerRecord) + Send + Sync>,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrite")
            .field("inner", &self.inner)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Rewrite {
    fn apply(&self, mut r: PeerRecord) -> PeerRecord {
        if r.name.as_str() == self.name {
            (self.rewrite)(&mut r);
        }
        r
    }
}

#[masse::async_trait]
impl Registry for Rewrite {
    async fn publish(&self, r: &PeerRecord, ttl: Duration, p: NamePolicy) -> masse::Result<()> {
        self.inner.publish(r, ttl, p).await
    }
    async fn refresh(
        &self,
        ns: &Namespace,
        n: &PeerName,
        i: InstanceId,
        ttl: Duration,
    ) -> masse::Result<()> {
        self.inner.refresh(ns, n, i, ttl).await
    }
    async fn unpublish(&self, ns: &Namespace, n: &PeerName, i: InstanceId) -> masse::Result<()> {
        self.inner.unpublish(ns, n, i).await
    }
    async fn lookup(&self, ns: &Namespace, p: &masse::Pattern) -> masse::Result<Vec<PeerRecord>> {
        Ok(self
            .inner
            .lookup(ns, p)
            .await?
            .into_iter()
            .map(|r| self.apply(r))
            .collect())
    }
    async fn lookup_leases(
        &self,
        ns: &Namespace,
        p: &masse::Pattern,
    ) -> masse::Result<Vec<masse::Lease>> {
        Ok(self
            .inner
            .lookup_leases(ns, p)
            .await?
            .into_iter()
            .map(|l| masse::Lease::new(self.apply(l.record), l.expires_in))
            .collect())
    }
    async fn watch(
        &self,
        ns: &Namespace,
    ) -> masse::Result<masse::BoxStream<'static, masse::Result<RegistryEvent>>> {
        let this = self.clone();
        let events = self.inner.watch(ns).await?;
        Ok(Box::pin(events.map(move |e| {
            e.map(|e| match e {
                RegistryEvent::Joined(r) => RegistryEvent::Joined(this.apply(r)),
                RegistryEvent::Updated(r) => RegistryEvent::Updated(this.apply(r)),
                other => other,
            })
        })))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_is_refused_by_dialers_holding_the_victims_record() {
    let reg = MemoryRegistry::new();
    let victim = tls("victim", "sec-imp")
        .registry(reg.clone())
        .start()
        .await
        .unwrap();
    echo_forever(&victim).await;
    let victim_record = victim.record();
    let victim_port = victim_record.endpoints[0].socket_addr().unwrap().port();

    // The dialer keeps seeing the victim's record (fingerprint and address),
    // as a cache that has not heard of the takeover yet would.
    let frozen = victim_record.clone();
    let dialer = tls("dialer", "sec-imp")
        .registry(Rewrite {
            inner: reg.clone(),
            name: "victim",
            rewrite: Arc::new(move |r| *r = frozen.clone()),
        })
        .start()
        .await
        .unwrap();
    timeout(T, roundtrip(&dialer, "victim"))
        .await
        .unwrap()
        .unwrap();

    // The victim goes away; an impostor takes its name AND its address, with its own key.
    drop(victim);
    // Its port is let go once its listener has closed.
    eventually(T, "the victim's port to be free", || async {
        std::net::TcpListener::bind(("127.0.0.1", victim_port)).is_ok()
    })
    .await;
    let impostor = base("victim", "sec-imp")
        .registry(reg.clone())
        .interface(TlsInterface::new(format!("127.0.0.1:{victim_port}")))
        .start()
        .await
        .unwrap();
    echo_forever(&impostor).await;
    assert_eq!(
        impostor.record().endpoints,
        victim_record.endpoints,
        "same address"
    );
    assert_ne!(
        impostor.record().identity,
        victim_record.identity,
        "another key"
    );
    match timeout(T, dialer.connect("victim"))
        .await
        .unwrap()
        .map_err(Error::into_root)
    {
        Err(Error::Unauthorized { reason }) => assert!(reason.contains("fingerprint"), "{reason}"),
        other => {
            panic!("a dialer pinned to the victim's key must refuse the impostor, got {other:?}")
        }
    }

    // A dialer that reads the impostor's record reaches the impostor and only
    // the impostor: registry write access is the trust boundary.
    let fresh = tls("fresh", "sec-imp")
        .registry(reg.clone())
        .start()
        .await
        .unwrap();
    let s = timeout(T, fresh.connect("victim")).await.unwrap().unwrap();
    assert_eq!(s.peer_instance(), impostor.instance());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_must_be_the_one_registered_for_its_name() {
    let reg = MemoryRegistry::new();
    let acceptor = tls("acceptor", "sec-client")
        .registry(reg.clone())
        .start()
        .await
        .unwrap();
    echo_forever(&acceptor).await;
    let x = tls("x", "sec-client")
        .registry(reg.clone())
        .start()
        .await
        .unwrap();
    let y = tls("y", "sec-client")
        .registry(reg.clone())
        .start()
        .await
        .unwrap();
    timeout(T, roundtrip(&x, "acceptor"))
        .await
        .unwrap()
        .unwrap();

    // Claiming to be `x` with a certificate nobody registered, and with `y`'s
    // (registered, but for another name): both refused with Unauthorized.
    let stranger = Arc::new(Identity::generate("stranger").unwrap());
    // `z` is registered with an identity this test holds: a genuine
    // certificate, but of another name.
    let z_identity = Arc::new(Identity::generate("z").unwrap());
    let _z = tls("z", "sec-client")
        .registry(reg.clone())
        .identity((*z_identity).clone())
        .start()
        .await
        .unwrap();
    for (what, cert) in [
        ("unregistered", stranger),
        ("another name's", z_identity.clone()),
    ] {
        let iface = TlsInterface::new("127.0.0.1:0");
        let target = acceptor.record();
        let ctx = ConnectContext::new(
            "sec-client".parse().unwrap(),
            "x".parse().unwrap(),
            x.instance(),
        )
        .with_identity(cert);
        let mut io = iface
            .connect(&target.endpoints[0], &target, &ctx)
            .await
            .unwrap();
        let hello = Hello::new(
            "sec-client".parse().unwrap(),
            "x".parse().unwrap(),
            x.instance(),
            "acceptor".parse().unwrap(),
        );
        handshake::write_message(&mut io, &Message::Hello(hello))
            .await
            .unwrap();
        match handshake::read_message(&mut io, T).await.unwrap() {
            Message::Refuse(r) => assert_eq!(
                r.code,
                RefuseCode::Unauthorized,
                "{what} certificate: {}",
                r.reason
            ),
            other => panic!("{what} certificate must be refused, got {other:?}"),
        }
    }
    // The real `x` and `y` still get through.
    timeout(T, roundtrip(&x, "acceptor"))
        .await
        .unwrap()
        .unwrap();
    timeout(T, roundtrip(&y, "acceptor"))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_secret_is_required_both_ways_on_plain_tcp() {
    let reg = MemoryRegistry::new();
    let tcp = |name: &str| {
        base(name, "sec-secret")
            .registry(reg.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
    };
    let secret = b"correct horse battery staple";
    let a = tcp("a").secret(secret).start().await.unwrap();
    let b = tcp("b").secret(secret).start().await.unwrap();
    echo_forever(&b).await;
    let wrong = tcp("wrong")
        .secret(b"incorrect horse battery staple")
        .start()
        .await
        .unwrap();
    echo_forever(&wrong).await;
    let none = tcp("none").start().await.unwrap();
    echo_forever(&none).await;

    timeout(T, roundtrip(&a, "b"))
        .await
        .unwrap()
        .expect("same secret");
    let cases: [(&Node, &str, &str); 4] = [
        (&wrong, "b", "could not prove"),
        (&a, "wrong", "could not prove"),
        (&none, "b", "requires the namespace secret"),
        (&a, "none", "did not prove"),
    ];
    for (from, to, why) in cases {
        let open = async {
            let s = from.connect(to).await?;
            s.established().await
        };
        match timeout(T, open).await.unwrap().map_err(Error::into_root) {
            Err(Error::Unauthorized { reason }) => {
                assert!(reason.contains(why), "{} -> {to}: {reason}", from.name())
            }
            other => panic!(
                "{} -> {to} must be Unauthorized, got {other:?}",
                from.name()
            ),
        }
    }
    assert!(b.stats().handshakes_rejected >= 2, "{:?}", b.stats());
    // The refused attempts did not disturb the legitimate pair.
    timeout(T, roundtrip(&a, "b")).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_its_own_certificate_cannot_sit_in_the_middle() {
    let reg = MemoryRegistry::new();
    let victim = tls("victim", "sec-mitm")
        .registry(reg.clone())
        .start()
        .await
        .unwrap();
    echo_forever(&victim).await;
    let victim_record = victim.record();

    // The relay terminates TLS with its own identity and forwards to the victim.
    let relay_identity = Arc::new(Identity::generate("relay").unwrap());
    let relay_iface = TlsInterface::new("127.0.0.1:0").identity(relay_identity.clone());
    let ctx = masse::BindContext::new(
        "sec-mitm".parse().unwrap(),
        "relay".parse().unwrap(),
        InstanceId::random(),
    )
    .with_identity(relay_identity.clone());
    let mut listener = relay_iface.bind(&ctx).await.unwrap();
    let relay_ep = listener.endpoints()[0].clone();
    let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = forwarded.clone();
    let upstream = victim_record.clone();
    tokio::spawn(async move {
        while let Ok(acc) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let upstream = upstream.clone();
            let relay_identity = relay_identity.clone();
            tokio::spawn(async move {
                let ctx = ConnectContext::new(
                    "sec-mitm".parse().unwrap(),
                    "relay".parse().unwrap(),
                    InstanceId::random(),
                )
                .with_identity(relay_identity);
                if let Ok(mut up) = TlsInterface::new("127.0.0.1:0")
                    .connect(&upstream.endpoints[0], &upstream, &ctx)
                    .await
                {
                    let mut down = acc.io;
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });

    // Traffic for the victim is redirected to the relay; the fingerprint the
    // dialer pins is still the victim's.
    let dialer = tls("dialer", "sec-mitm")
        .registry(Rewrite {
            inner: reg.clone(),
            name: "victim",
            rewrite: Arc::new(move |r| r.endpoints = vec![relay_ep.clone()]),
        })
        .start()
        .await
        .unwrap();
    match timeout(T, dialer.connect("victim"))
        .await
        .unwrap()
        .map_err(Error::into_root)
    {
        Err(Error::Unauthorized { reason }) => assert!(reason.contains("fingerprint"), "{reason}"),
        other => panic!("the relay's certificate must be refused, got {other:?}"),
    }
    assert_eq!(
        forwarded.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the TLS handshake failed before any stream was relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialers_use_their_first_interface_the_peer_offers_and_fall_back() {
    let reg = MemoryRegistry::new();
    let ns = "sec-proto";
    let server = base("server", ns)
        .registry(reg.clone())
        .interface(TlsInterface::new("127.0.0.1:0"))
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    echo_forever(&server).await;
    let protos: Vec<Protocol> = server
        .record()
        .endpoints
        .iter()
        .map(|e| e.protocol().clone())
        .collect();
    assert_eq!(
        protos,
        [Protocol::TLS, Protocol::TCP],
        "every endpoint is advertised, in interface order"
    );

    let quic_then_tcp = base("c1", ns)
        .registry(reg.clone())
        .interface(QuicInterface::new("127.0.0.1:0"))
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let s = timeout(T, roundtrip(&quic_then_tcp, "server"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*s.protocol(), Protocol::TCP, "QUIC is not offered: TCP");

    let tls_then_tcp = base("c2", ns)
        .registry(reg.clone())
        .interface(TlsInterface::new("127.0.0.1:0"))
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let s = timeout(T, roundtrip(&tls_then_tcp, "server"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *s.protocol(),
        Protocol::TLS,
        "the dialer's first interface wins"
    );

    // The TLS endpoint stops answering: the same dialer falls back to TCP.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let fallback = base("c3", ns)
        .registry(Rewrite {
            inner: reg.clone(),
            name: "server",
            rewrite: Arc::new(move |r| r.endpoints[0] = r.endpoints[0].with_socket_addr(dead)),
        })
        .interface(TlsInterface::new("127.0.0.1:0"))
        .interface(TcpInterface::new("127.0.0.1:0"))
        .start()
        .await
        .unwrap();
    let s = timeout(T, roundtrip(&fallback, "server"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*s.protocol(), Protocol::TCP, "TLS refused, TCP next");
}
