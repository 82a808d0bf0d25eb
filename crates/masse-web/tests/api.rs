//! The routes, driven in process (tower `oneshot`, no socket) against a
//! `MemoryRegistry`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use masse_core::{
    DynRegistry, InstanceId, MemoryRegistry, NamePolicy, Namespace, PeerName, PeerRecord, Registry,
};
use masse_web::Dashboard;
use serde_json::Value;
use tower::ServiceExt;

async fn get(app: &Router, uri: &str, auth: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

async fn json(app: &Router, uri: &str) -> Value {
    let (status, ctype, body) = get(app, uri, None).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `check` on `/api/peers` every 20 ms for up to 10 s.
async fn until(app: &Router, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json(app, "/api/peers").await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}"
        );
        // The interval of a bounded poll: a peer's state follows the wall
        // clock (evasive below half its ttl), so the listing is asked again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peer<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["namespaces"][0]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

fn record(name: &str, ttl: Duration) -> PeerRecord {
    let mut r = PeerRecord::new(
        Namespace::new("prod").unwrap(),
        PeerName::new(name).unwrap(),
        InstanceId::random(),
    );
    r.ttl_ms = Some(ttl.as_millis() as u64);
    r.services.push("rpc".into());
    r.metadata.insert("zone".into(), "b".into());
    r
}

fn dashboard(registry: &MemoryRegistry) -> Dashboard {
    let registry: DynRegistry = std::sync::Arc::new(registry.clone());
    Dashboard::builder(registry)
        .namespace(Namespace::new("prod").unwrap())
        .poll_interval(Duration::from_millis(50))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_joins_turns_evasive_and_leaves() {
    let registry = MemoryRegistry::new();
    let dash = dashboard(&registry);
    let app = dash.router();
    until(&app, "the first listing", |v| {
        v["namespaces"][0]["registry"]["reachable"] == true
    })
    .await;

    let ttl = Duration::from_millis(1200);
    let a = record("a-1", ttl);
    registry
        .publish(&a, ttl, NamePolicy::Takeover)
        .await
        .unwrap();
    let v = until(&app, "a-1 alive", |v| {
        peer(v, "a-1").is_some_and(|p| p["state"] == "alive")
    })
    .await;
    let p = peer(&v, "a-1").unwrap();
    assert_eq!(p["services"][0], "rpc");
    assert_eq!(p["metadata"]["zone"], "b");
    assert_eq!(p["ttl_ms"], 1200);
    assert!(p["expires_in_ms"].as_u64().unwrap() <= 1200);
    assert_eq!(p["instance"], a.instance.to_string());

    // Nobody refreshes it: below half its ttl it is evasive.
    until(&app, "a-1 evasive", |v| {
        peer(v, "a-1").is_some_and(|p| p["state"] == "evasive")
    })
    .await;
    registry
        .refresh(&a.namespace, &a.name, a.instance, ttl)
        .await
        .unwrap();
    until(&app, "a-1 alive again", |v| {
        peer(v, "a-1").is_some_and(|p| p["state"] == "alive")
    })
    .await;
    registry
        .unpublish(&a.namespace, &a.name, a.instance)
        .await
        .unwrap();
    until(&app, "a-1 gone", |v| peer(v, "a-1").is_none()).await;

    let events = json(&app, "/api/events").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "a-1")
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["joined", "evasive", "alive", "left"], "{events:#}");
    let next = events["next"].as_u64().unwrap();
    let later = json(&app, &format!("/api/events?since={next}")).await;
    assert!(later["events"].as_array().unwrap().is_empty(), "{later}");
    let one = json(&app, "/api/events?since=0&limit=1").await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    assert_eq!(one["truncated"], true);

    let (status, ctype, metrics) = get(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for line in [
        "masse_peers{namespace=\"prod\",state=\"alive\"} 0\n",
        "masse_registry_events_total{namespace=\"prod\",kind=\"evasive\"} 1\n",
        "masse_registry_events_total{namespace=\"prod\",kind=\"left\"} 1\n",
        "masse_registry_up{namespace=\"prod\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("masse_registry_latency_seconds{namespace=\"prod\"} "));
    dash.shutdown();
}

#[tokio::test]
async fn filters_and_bad_input() {
    let registry = MemoryRegistry::new();
    for name in ["web-1", "web-2", "db-1"] {
        let ttl = Duration::from_secs(30);
        registry
            .publish(&record(name, ttl), ttl, NamePolicy::Takeover)
            .await
            .unwrap();
    }
    let dash = dashboard(&registry);
    let app = dash.router();
    until(&app, "three peers", |v| {
        v["namespaces"][0]["peers"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    let v = json(&app, "/api/peers?pattern=web-*&namespace=prod").await;
    let names: Vec<&str> = v["namespaces"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);

    for (uri, status) in [
        ("/api/peers?pattern=[", StatusCode::BAD_REQUEST),
        ("/api/peers?namespace=bad%20ns", StatusCode::BAD_REQUEST),
        ("/api/peers?namespace=other", StatusCode::NOT_FOUND),
        ("/api/peers?nonsense=1", StatusCode::BAD_REQUEST),
        ("/api/events?since=-1", StatusCode::BAD_REQUEST),
        ("/api/events?since=abc", StatusCode::BAD_REQUEST),
        (
            "/api/events?limit=99999999999999999999999",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/stream?x=1", StatusCode::BAD_REQUEST),
        ("/nowhere", StatusCode::NOT_FOUND),
    ] {
        let (got, ctype, body) = get(&app, uri, None).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(ctype.starts_with("application/json"), "{uri}: {ctype}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{uri}: {body}");
    }

    let (status, ctype, page) = get(&app, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"));
    assert!(page.contains("<script>") && page.contains("EventSource"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external resource"
    );
}

#[tokio::test]
async fn a_token_guards_everything_but_healthz() {
    let registry: DynRegistry = std::sync::Arc::new(MemoryRegistry::new());
    let dash = Dashboard::builder(registry).token("s3cret/+").start();
    let app = dash.router();
    for uri in ["/", "/api/peers", "/api/events", "/api/stream", "/metrics"] {
        let (status, _, _) = get(&app, uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let (status, _, _) = get(&app, uri, Some("Bearer wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (status, _, _) = get(&app, "/api/peers", Some("Bearer s3cret/+")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&app, "/api/peers?token=s3cret%2F%2B", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&app, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The default namespace is watched when none is named.
    assert_eq!(dash.namespaces(), [Namespace::default()]);
}

#[tokio::test]
async fn the_stream_starts_with_a_snapshot() {
    let registry: DynRegistry = std::sync::Arc::new(MemoryRegistry::new());
    let dash = Dashboard::builder(registry).start();
    let app = dash.router();
    let res = app
        .oneshot(Request::get("/api/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = res.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
    assert!(text.starts_with("event: peers\ndata: {"), "{text}");
}

#[tokio::test]
async fn it_mounts_under_a_prefix() {
    let registry: DynRegistry = std::sync::Arc::new(MemoryRegistry::new());
    let dash = Dashboard::builder(registry).start();
    let app = Router::new().nest("/masse", dash.router());
    let (status, ctype, _) = get(&app, "/masse", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"));
    let (status, _, body) = get(&app, "/masse/api/peers", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = get(&app, "/masse/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
}
