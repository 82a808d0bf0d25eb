//! The axum routes and their handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use masse_core::metrics::PrometheusText;
use masse_core::{Namespace, Pattern};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::view::DashEvent;
use crate::{Shared, TaskSet, Update, api, auth, metrics};

/// The page: HTML, CSS and JS in one document, no external resource.
const PAGE: &str = concat!(
    include_str!("../assets/head.html"),
    "<style>\n",
    include_str!("../assets/app.css"),
    "</style>\n",
    include_str!("../assets/body.html"),
    "<script>\n",
    include_str!("../assets/app.js"),
    "</script>\n</body>\n</html>\n",
);

/// Most events one `/api/events` answer holds.
const MAX_EVENTS: usize = 1000;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    // Keeps the tasks alive as long as a router is.
    _tasks: Arc<TaskSet>,
}

pub(crate) fn router(shared: Arc<Shared>, tasks: Arc<TaskSet>) -> Router {
    let state = AppState {
        shared,
        _tasks: tasks,
    };
    let protected = Router::new()
        .route("/", get(page))
        .route("/api/peers", get(peers))
        .route("/api/events", get(events))
        .route("/api/stream", get(stream))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(protected)
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

/// A JSON error: `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.shared.token {
        let given = auth::presented(request.headers(), request.uri());
        let ok = given
            .as_deref()
            .is_some_and(|g| auth::constant_time_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"masse\""),
            );
            return r;
        }
    }
    next.run(request).await
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// The query of `/api/peers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersQuery {
    namespace: Option<String>,
    pattern: Option<String>,
    token: Option<String>,
}

/// Parses `?namespace=`: a valid namespace the dashboard watches.
fn watched(shared: &Shared, ns: Option<&str>) -> Result<Option<Namespace>, Response> {
    let Some(ns) = ns.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ns = Namespace::new(ns).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    if !shared.namespaces.contains(&ns) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("namespace {ns} is not watched by this dashboard"),
        ));
    }
    Ok(Some(ns))
}

fn bad_query(e: QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, e.body_text())
}

async fn peers(
    State(state): State<AppState>,
    query: Result<Query<PeersQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let _ = q.token;
    let ns = match watched(&state.shared, q.namespace.as_deref()) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let pattern = match q.pattern.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(p) => match Pattern::new(p) {
            Ok(p) => Some(p),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
    };
    let body = api::peers(
        &state.shared,
        ns.as_ref(),
        pattern.as_ref(),
        masse_core::now_millis(),
    );
    axum::Json(body).into_response()
}

/// The query of `/api/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
    namespace: Option<String>,
    token: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(e),
    };
    let _ = q.token;
    let ns = match watched(&state.shared, q.namespace.as_deref()) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS);
    axum::Json(api::events(
        &state.shared,
        q.since.unwrap_or(0),
        limit,
        ns.as_ref(),
    ))
    .into_response()
}

/// The query of `/api/stream` (only the token, if any).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    token: Option<String>,
}

async fn stream(
    State(state): State<AppState>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Response {
    match query {
        Err(e) => return bad_query(e),
        Ok(Query(q)) => drop(q.token),
    }
    let shared = state.shared.clone();
    let updates = shared.updates.subscribe();
    // First a snapshot, then every event and a snapshot after each change
    // (coalesced: one per batch of changes already queued).
    let first = snapshot(&shared);
    let events = futures::stream::unfold(
        (shared, updates, Some(first)),
        |(shared, mut updates, mut pending)| async move {
            if let Some(ev) = pending.take() {
                return Some((Ok::<_, Infallible>(ev), (shared, updates, None)));
            }
            match updates.recv().await {
                Ok(Update::Event(e)) => Some((Ok(event(&e)), (shared, updates, None))),
                Ok(Update::Changed) => {
                    // Coalesce the changes already queued behind this one
                    // into one snapshot; an event found meanwhile follows it.
                    let mut next = None;
                    loop {
                        match updates.try_recv() {
                            Ok(Update::Changed) => continue,
                            Ok(Update::Event(e)) => next = Some(event(&e)),
                            Err(TryRecvError::Lagged(_)) => {
                                next = Some(Event::default().event("resync").data("lagged"))
                            }
                            Err(_) => {}
                        }
                        break;
                    }
                    Some((Ok(snapshot(&shared)), (shared, updates, next)))
                }
                Err(RecvError::Lagged(_)) => {
                    // Missed some: the client re-reads /api/events from its
                    // cursor on a `resync`.
                    let ev = Event::default().event("resync").data("lagged");
                    let next = snapshot(&shared);
                    Some((Ok(ev), (shared, updates, Some(next))))
                }
                Err(RecvError::Closed) => None,
            }
        },
    );
    sse(events).into_response()
}

fn sse<S>(events: S) -> impl IntoResponse
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

fn event(e: &DashEvent) -> Event {
    Event::default()
        .event("event")
        .id(e.id.to_string())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"))
}

fn snapshot(shared: &Shared) -> Event {
    let body = api::peers(shared, None, None, masse_core::now_millis());
    Event::default().event("peers").data(body.to_string())
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, PrometheusText::CONTENT_TYPE)],
        metrics::render(&state.shared),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let view = state.shared.view();
    let registries: serde_json::Map<String, serde_json::Value> = view
        .namespaces
        .iter()
        .map(|(ns, v)| (ns.to_string(), json!(v.health.reachable)))
        .collect();
    axum::Json(json!({ "ok": true, "reachable": registries })).into_response()
}
