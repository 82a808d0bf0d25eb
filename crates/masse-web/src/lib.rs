#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
mod auth;
mod metrics;
mod router;
mod stats;
mod tasks;
mod view;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use masse_core::{DynRegistry, Namespace, Node};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::view::{DashEvent, View};

/// How to build a [`Dashboard`]; see [`Dashboard::builder`].
pub struct DashboardBuilder {
    registry: DynRegistry,
    namespaces: Vec<Namespace>,
    poll_interval: Duration,
    stats_interval: Duration,
    event_capacity: usize,
    token: Option<String>,
    nodes: Vec<Arc<Node>>,
}

impl fmt::Debug for DashboardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DashboardBuilder")
            .field("namespaces", &self.namespaces)
            .field("poll_interval", &self.poll_interval)
            .field("stats_interval", &self.stats_interval)
            .field("event_capacity", &self.event_capacity)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl DashboardBuilder {
    /// Watches `ns` too (repeatable; with none, `default` is watched).
    pub fn namespace(mut self, ns: Namespace) -> Self {
        if !self.namespaces.contains(&ns) {
            self.namespaces.push(ns);
        }
        self
    }

    /// How often each namespace is listed with
    /// [`Registry::lookup_leases`](masse_core::Registry::lookup_leases) to
    /// see the time each peer has left, its liveness and the registry's
    /// latency (default 1 s; at least 50 ms). Joins, updates and departures
    /// come from the registry's watch as they happen, not from this.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(50));
        self
    }

    /// How often the figures of peers that expose them are fetched, when the
    /// dashboard was given a node ([`stats_node`](Self::stats_node); default
    /// 2 s, at least 100 ms).
    pub fn stats_interval(mut self, every: Duration) -> Self {
        self.stats_interval = every.max(Duration::from_millis(100));
        self
    }

    /// How many events `/api/events` and the page's feed keep (default 1 000).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// Requires `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for the
    /// page and its event stream) on every route except `/healthz`. An empty
    /// token is ignored.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// A node joined in one of the watched namespaces, through which the
    /// dashboard fetches the traffic and dial figures of the peers there that
    /// expose them. Without one the dashboard never joins: it only reads the
    /// registry. Its namespace is watched too.
    pub fn stats_node(mut self, node: Arc<Node>) -> Self {
        let ns = node.namespace().clone();
        self.nodes.push(node);
        self.namespace(ns)
    }

    /// Starts watching (spawns its tasks on the current tokio runtime) and
    /// returns the dashboard. Panics outside a tokio runtime, like
    /// `tokio::spawn`.
    pub fn start(mut self) -> Dashboard {
        if self.namespaces.is_empty() {
            self.namespaces.push(Namespace::default());
        }
        let (updates, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            view: Mutex::new(View::new(self.namespaces.clone(), self.event_capacity)),
            updates,
            token: self.token,
            namespaces: self.namespaces,
        });
        let tasks = tasks::spawn(
            &shared,
            self.registry,
            self.nodes,
            self.poll_interval,
            self.stats_interval,
        );
        Dashboard {
            shared,
            tasks: Arc::new(TaskSet(tasks)),
        }
    }
}

/// What the tasks tell the open event streams.
#[derive(Debug, Clone)]
pub(crate) enum Update {
    /// A new line in the event feed.
    Event(Arc<DashEvent>),
    /// Peers, liveness, health or figures changed: time for a snapshot.
    Changed,
}

/// State shared by the tasks and the handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) view: Mutex<View>,
    pub(crate) updates: broadcast::Sender<Update>,
    pub(crate) token: Option<String>,
    pub(crate) namespaces: Vec<Namespace>,
}

impl Shared {
    /// The view, even if a panicking thread poisoned the lock (the view is
    /// consistent after every method returns).
    pub(crate) fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the streams about `events` and that something changed.
    pub(crate) fn publish(&self, events: Vec<DashEvent>) {
        for e in events {
            let _ = self.updates.send(Update::Event(Arc::new(e)));
        }
        let _ = self.updates.send(Update::Changed);
    }
}

#[derive(Debug)]
struct TaskSet(Vec<JoinHandle<()>>);

impl Drop for TaskSet {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A live view of one or more namespaces of a registry, served as a web page,
/// JSON and Prometheus metrics by [`router`](Self::router).
///
/// Cheap to clone; the watching stops when the last clone (and the last
/// router made from it) is dropped, or at [`shutdown`](Self::shutdown).
#[derive(Debug, Clone)]
pub struct Dashboard {
    shared: Arc<Shared>,
    tasks: Arc<TaskSet>,
}

impl Dashboard {
    /// A dashboard of `registry` (nothing runs until
    /// [`start`](DashboardBuilder::start)).
    pub fn builder(registry: DynRegistry) -> DashboardBuilder {
        DashboardBuilder {
            registry,
            namespaces: Vec::new(),
            poll_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(2),
            event_capacity: 1000,
            token: None,
            nodes: Vec::new(),
        }
    }

    /// The namespaces it watches.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.shared.namespaces
    }

    /// The routes: `/` (the page), `/api/peers`, `/api/events`,
    /// `/api/stream`, `/metrics` and `/healthz` (see the crate docs). Mount
    /// it in an application's own server with `Router::nest` or `merge`, or
    /// run it alone with [`serve`](Self::serve).
    pub fn router(&self) -> axum::Router {
        router::router(self.shared.clone(), self.tasks.clone())
    }

    /// Serves [`router`](Self::router) on `listener` until `shutdown`
    /// resolves. Binding is the caller's choice: bind loopback unless the
    /// dashboard has a [`token`](DashboardBuilder::token).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Stops watching; the routes keep answering with what was last seen.
    pub fn shutdown(&self) {
        for t in &self.tasks.0 {
            t.abort();
        }
    }

    /// The JSON of `/api/peers` (every watched namespace, no filter).
    pub fn peers_json(&self) -> serde_json::Value {
        api::peers(&self.shared, None, None, masse_core::now_millis())
    }

    /// The text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        metrics::render(&self.shared)
    }
}
