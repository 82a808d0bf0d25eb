//! `JsonFileRegistry` passes masse's registry conformance suite as a
//! registry without watch, and two nodes on a `json://` URL find each other
//! and see each other come and go through polling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use masse::prelude::*;
use masse::testkit::RegistryConformance;
use masse::{DynRegistry, Node, NodeEvent, TcpInterface};
use masse_examples::json_registry::{self, JsonFileRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_file_registry_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("registry.json");
    let raw = JsonFileRegistry::new(&path);
    RegistryConformance::new(move || {
        let handle = JsonFileRegistry::new(&path);
        async move { Arc::new(handle) as DynRegistry }
    })
    .without_watch()
    .raw_writer(move |ns, name, bytes| {
        let raw = raw.clone();
        async move { raw.write_raw(&ns, &name, bytes).await.expect("raw write") }
    })
    .run()
    .await;
}

/// Everything the code logs at `warn` or above, on this thread.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Warnings {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Warnings {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The next event about `peer` that `pick` accepts, within `within`.
async fn event_about(
    events: &mut masse::Events,
    within: Duration,
    pick: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    let deadline = Instant::now() + within;
    loop {
        match timeout(deadline - Instant::now(), events.next()).await {
            Ok(Some(ev)) if pick(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("node events ended"),
            Err(_) => panic!("no such event within {within:?}"),
        }
    }
}

/// Two nodes started with `registry_from_url("json://…")`: no warning at
/// start, each sees the other join within about one poll interval (1 s by
/// default), they talk by name, and when one shuts down the other hears of
/// it within about one interval. (A current-thread runtime, so that every
/// task logs to this test's subscriber.)
#[tokio::test]
async fn two_nodes_meet_through_a_json_file() {
    let warnings = Warnings::default();
    let writer = warnings.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    json_registry::register().expect("register json://");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("json://{}", dir.path().join("peers.json").display());
    // The URL works through the facade's scheme table.
    masse::registry_from_url(&url).await.expect("json:// URL");

    let start = |name: &'static str| {
        Node::builder(name)
            .namespace("json-test")
            .registry_from_url(url.clone())
            .interface(TcpInterface::new("127.0.0.1:0"))
            .start()
    };
    let alpha = start("alpha").await.expect("alpha starts");
    let mut alpha_events = alpha.events();
    let beta = start("beta").await.expect("beta starts");
    let interval = masse::CachingConfig::default().poll_interval();
    // About one interval: the poll, plus the time a listing takes.
    let within = interval + Duration::from_millis(500);

    let joined = event_about(
        &mut alpha_events,
        within,
        |e| matches!(e, NodeEvent::PeerJoined(r) if r.name.as_str() == "beta"),
    )
    .await;
    let NodeEvent::PeerJoined(record) = joined else {
        unreachable!()
    };
    assert_eq!(record.instance, beta.instance());

    // By name, both ways.
    let mut incoming = beta.incoming();
    let mut s = alpha.connect("beta").await.expect("alpha reaches beta");
    s.write_all(b"ping").await.unwrap();
    let mut r = timeout(within, incoming.accept())
        .await
        .expect("accepted in time")
        .expect("a stream");
    assert_eq!(r.peer().as_str(), "alpha");
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop((s, r));
    assert!(beta.connect("alpha").await.is_ok(), "beta reaches alpha");

    // Beta leaves: alpha hears of it at its next poll. A listing cannot
    // tell an unpublish from an expiry, so it is reported expired.
    let beta_instance = beta.instance();
    beta.shutdown().await.expect("beta shuts down");
    let left = event_about(&mut alpha_events, within, |e| {
        matches!(e, NodeEvent::PeerLeft { name, .. } | NodeEvent::PeerExpired { name, .. } if name.as_str() == "beta")
    })
    .await;
    match left {
        NodeEvent::PeerLeft { instance, .. } | NodeEvent::PeerExpired { instance, .. } => {
            assert_eq!(instance, beta_instance)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        alpha.peers("beta").await.expect("lookup").is_empty(),
        "gone from lookups too"
    );
    alpha.shutdown().await.expect("alpha shuts down");

    let logged = warnings.text();
    assert!(logged.is_empty(), "no warning: {logged}");
}
