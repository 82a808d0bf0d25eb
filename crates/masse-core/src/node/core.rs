//! The state shared by a node's handle, its tasks and its streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, watch};

use super::event::NodeEvent;
use super::stats::Counters;
use super::stream::PeerStream;
use crate::caching::CachingRegistry;
use crate::endpoint::{Endpoint, Protocol};
use crate::handshake::{Local, Secret, Status};
use crate::identity::Identity;
use crate::interface::DynInterface;
use crate::name::{Namespace, PeerName};
use crate::record::{InstanceId, PeerRecord};
use crate::registry::{DynRegistry, NamePolicy, RegistryEvent};
use crate::wrapper::DynWrapper;
use crate::wrappers::Counters as MeterCounters;

/// Settings of a running node (from the builder).
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) ttl: Duration,
    pub(crate) policy: NamePolicy,
    pub(crate) handshake_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) race_delay: Duration,
    pub(crate) concurrency: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) incoming_capacity: usize,
    pub(crate) max_pending_handshakes: usize,
    pub(crate) advertise: Vec<Advertise>,
    pub(crate) secret: Option<Secret>,
    /// Poll interval of the opt-in evasive/alive events (`None`: off).
    pub(crate) liveness_poll: Option<Duration>,
}

/// What [`Node::serve`](super::Node::serve) runs on each accepted stream.
pub(crate) type Handler =
    Arc<dyn Fn(PeerStream) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Where an admitted stream goes.
pub(crate) enum Destination {
    /// A reserved slot in an `incoming` queue.
    Queue(mpsc::OwnedPermit<PeerStream>),
    /// A handler, run on the stream's own task.
    Handler(Handler),
}

/// A queue of accepted streams and its receiving end, shared by every
/// [`Incoming`](super::Incoming) on it.
pub(crate) struct Route {
    pub(crate) tx: mpsc::Sender<PeerStream>,
    pub(crate) rx: Arc<tokio::sync::Mutex<mpsc::Receiver<PeerStream>>>,
}

impl Route {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Route {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

pub(crate) struct Core {
    /// Who this node is, for the acceptor's handshake.
    pub(crate) local: Arc<Local>,
    /// True once another instance took the name over: streams for it are
    /// refused with `NameLost` from then on.
    pub(crate) name_lost: AtomicBool,
    pub(crate) name: PeerName,
    pub(crate) namespace: Namespace,
    pub(crate) instance: InstanceId,
    pub(crate) identity: Arc<Identity>,
    pub(crate) registry: CachingRegistry<DynRegistry>,
    pub(crate) interfaces: Vec<DynInterface>,
    pub(crate) wrappers: Vec<DynWrapper>,
    pub(crate) config: NodeConfig,
    pub(crate) record: RwLock<PeerRecord>,
    /// The endpoints each listener advertises, in interface order.
    pub(crate) listener_endpoints: Mutex<Vec<Vec<Endpoint>>>,
    pub(crate) events: LazyBroadcast<NodeEvent>,
    pub(crate) registry_events: LazyBroadcast<RegistryEvent>,
    /// Accepted streams without a service (or whose service has no route of its own).
    pub(crate) default_route: Route,
    /// Accepted streams per service, for `incoming_service`.
    pub(crate) service_routes: Mutex<HashMap<String, Route>>,
    /// True once shutdown began (or the node was dropped).
    pub(crate) stopping: watch::Sender<bool>,
    pub(crate) accepting: AtomicBool,
    pub(crate) counters: Counters,
    /// Bytes and open streams, fed by every `PeerStream`.
    pub(crate) meter: Arc<MeterCounters>,
    pub(crate) stream_closed: Notify,
    /// Sends the handshake messages that streams hold back, if their
    /// applications take their time.
    pub(crate) hold_back: Arc<super::pipe::HoldBack>,
    /// Handlers set with `serve` (key `None`) and `serve_service`.
    pub(crate) handlers: RwLock<HashMap<Option<String>, Handler>>,
    /// Inbound handshakes in progress, on every listener (see `HandshakeBudget`).
    pub(crate) handshake_budget: Arc<crate::HandshakeBudget>,
    /// Every stream opened, to close those still open after the shutdown grace.
    pub(crate) streams: Mutex<Vec<std::sync::Weak<super::stream::Closer>>>,
    /// Endpoints that failed recently, tried last.
    pub(crate) endpoint_memory: super::dial::EndpointMemory,
}

/// A broadcast channel whose buffer is allocated at the first
/// subscription: a node nobody listens to does not carry one (each slot
/// holds an event, so 1 024 of them are a good part of an idle node's
/// memory). Sending before anyone subscribed drops the event, as a channel
/// without receivers does.
#[derive(Debug)]
pub(crate) struct LazyBroadcast<T> {
    capacity: usize,
    tx: std::sync::OnceLock<broadcast::Sender<T>>,
}

impl<T: Clone> LazyBroadcast<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        LazyBroadcast {
            capacity,
            tx: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<T> {
        self.tx
            .get_or_init(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Sends to the current receivers, if any.
    pub(crate) fn send(&self, value: T) {
        if let Some(tx) = self.tx.get() {
            // No receiver left is fine.
            let _ = tx.send(value);
        }
    }
}

impl Core {
    pub(crate) fn emit(&self, event: NodeEvent) {
        // No receiver is fine: events are for whoever listens.
        self.events.send(event);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Remembers a new stream's closer (and forgets those of closed streams
    /// now and then).
    pub(crate) fn track_stream(&self, closer: &Arc<super::stream::Closer>) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.len() >= 64 && streams.len().is_power_of_two() {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(closer));
    }

    /// Closes every stream still open: their next (or pending) read or
    /// write fails with `Closed`.
    pub(crate) fn close_streams(&self) -> usize {
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|p| p.into_inner()));
        let mut closed = 0;
        for c in streams.iter().filter_map(std::sync::Weak::upgrade) {
            c.close();
            closed += 1;
        }
        closed
    }

    /// `Err(Closed)` once the node has shut down (or was dropped).
    pub(crate) fn check_running(&self) -> Result<(), crate::Error> {
        if self.is_stopping() {
            return Err(crate::Error::Closed("node"));
        }
        Ok(())
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The node's counters now.
    pub(crate) fn stats(&self) -> super::NodeStats {
        let mut stats = self
            .counters
            .snapshot(self.meter.snapshot(), self.registry.stats());
        stats.silent_evictions = self.handshake_budget.evictions();
        stats.handshakes_in_progress = self.handshake_budget.in_progress() as u64;
        stats
    }

    pub(crate) fn record(&self) -> PeerRecord {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The endpoints to publish: every listener's, with `advertise` applied.
    pub(crate) fn compute_endpoints(&self) -> Vec<Endpoint> {
        let listeners = self
            .listener_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        apply_advertise(&listeners, &self.config.advertise)
    }

    /// Which route a stream for `service` goes to.
    /// Where an accepted stream for `service` goes: the handler set with
    /// [`Node::serve`](super::Node::serve) / `serve_service`, else a slot in
    /// the queue of `incoming_service` / `incoming`; `None` if that queue is
    /// full.
    pub(crate) fn admit(&self, service: Option<&str>) -> Option<Destination> {
        let handler = {
            let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
            if handlers.is_empty() {
                None
            } else {
                let key = service.map(str::to_owned);
                handlers.get(&key).cloned().or_else(|| {
                    let queued = service.is_some_and(|s| {
                        self.service_routes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains_key(s)
                    });
                    // A service without a handler but with a queue keeps its queue.
                    (!queued).then(|| handlers.get(&None).cloned()).flatten()
                })
            }
        };
        match handler {
            Some(h) => Some(Destination::Handler(h)),
            None => self
                .route_for(service)
                .try_reserve_owned()
                .ok()
                .map(Destination::Queue),
        }
    }

    pub(crate) fn route_for(&self, service: Option<&str>) -> mpsc::Sender<PeerStream> {
        if let Some(s) = service {
            let routes = self
                .service_routes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(r) = routes.get(s) {
                return r.tx.clone();
            }
        }
        self.default_route.tx.clone()
    }

    pub(crate) fn streams_open(&self) -> u64 {
        self.meter.snapshot().streams_open
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// What the acceptor's handshake needs to know of the node right now.
    pub(crate) fn status(&self) -> Status {
        Status::new(self.is_accepting(), self.name_lost.load(Ordering::Acquire))
    }

    /// Marks the name as lost to `holder`; true the first time.
    pub(crate) fn lose_name(&self, holder: Option<InstanceId>) -> bool {
        if self.name_lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::warn!(holder = ?holder, "another instance took this node's name; refusing streams for it from now on");
        self.emit(NodeEvent::NameLost { holder });
        true
    }
}

/// An address to publish instead of the bound ones (see
/// [`NodeBuilder::advertise`](super::NodeBuilder::advertise)): for the
/// workspace's IP transports (`scheme` `None`), or for one scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advertise {
    pub(crate) scheme: Option<Protocol>,
    pub(crate) addr: SocketAddr,
}

/// Replaces the IPs of bound endpoints with the advertised addresses. An
/// advertised port of 0 keeps each listener's bound port. A listener whose
/// scheme has addresses of its own (`advertise_for`) takes those; one of
/// `tcp`, `tls` or `quic` takes the general ones; any other, and any
/// endpoint that is not at a socket address, is published as its
/// interface reports it.
pub(crate) fn apply_advertise(
    listeners: &[Vec<Endpoint>],
    advertise: &[Advertise],
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    let mut push = |ep: Endpoint| {
        if !out.contains(&ep) {
            out.push(ep);
        }
    };
    for eps in listeners {
        let Some(first) = eps.first() else { continue };
        let scheme = first.protocol();
        let own: Vec<SocketAddr> = advertise
            .iter()
            .filter(|a| a.scheme.as_ref() == Some(scheme))
            .map(|a| a.addr)
            .collect();
        let addrs = if !own.is_empty() {
            own
        } else if scheme.is_ip() {
            advertise
                .iter()
                .filter(|a| a.scheme.is_none())
                .map(|a| a.addr)
                .collect()
        } else {
            Vec::new()
        };
        let bound_port = first.socket_addr().map(|a| a.port());
        match bound_port {
            Some(bound_port) if !addrs.is_empty() => {
                for adv in addrs {
                    let port = if adv.port() == 0 {
                        bound_port
                    } else {
                        adv.port()
                    };
                    push(first.with_socket_addr(SocketAddr::new(adv.ip(), port)));
                }
            }
            _ => eps.iter().cloned().for_each(&mut push),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(addr: &str) -> Advertise {
        Advertise {
            scheme: None,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn advertise_replaces_ips_and_keeps_ports() {
        let tcp = vec![Endpoint::new(
            Protocol::TCP,
            "0.0.0.0:4100".parse().unwrap(),
        )];
        let quic = vec![Endpoint::new(
            Protocol::QUIC,
            "0.0.0.0:4433".parse().unwrap(),
        )];
        let listeners = vec![tcp.clone(), quic];
        assert_eq!(
            apply_advertise(&listeners, &[]),
            vec![tcp[0].clone(), listeners[1][0].clone()]
        );
        let adv = [all("10.1.2.3:0")];
        let got: Vec<String> = apply_advertise(&listeners, &adv)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(got, ["tcp://10.1.2.3:4100", "quic://10.1.2.3:4433"]);
        let adv = [all("10.1.2.3:9000")];
        let got: Vec<String> = apply_advertise(&listeners[..1], &adv)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(got, ["tcp://10.1.2.3:9000"]);
    }

    #[test]
    fn advertise_leaves_other_transports_alone_unless_named() {
        let unix = vec![Endpoint::unix("/run/app.sock").unwrap()];
        let ws = vec!["ws://0.0.0.0:80".parse::<Endpoint>().unwrap()];
        let tcp = vec!["tcp://0.0.0.0:4100".parse::<Endpoint>().unwrap()];
        let listeners = vec![unix, ws, tcp];
        let show = |adv: &[Advertise]| -> Vec<String> {
            apply_advertise(&listeners, adv)
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        assert_eq!(
            show(&[all("10.1.2.3:0")]),
            [
                "unix:///run/app.sock",
                "ws://0.0.0.0:80",
                "tcp://10.1.2.3:4100"
            ]
        );
        let ws_only = Advertise {
            scheme: Some(Protocol::new("ws").unwrap()),
            addr: "10.9.9.9:0".parse().unwrap(),
        };
        assert_eq!(
            show(&[all("10.1.2.3:0"), ws_only.clone()]),
            [
                "unix:///run/app.sock",
                "ws://10.9.9.9:80",
                "tcp://10.1.2.3:4100"
            ]
        );
        // An address for a scheme without socket addresses changes nothing.
        let unix_adv = Advertise {
            scheme: Some(Protocol::UNIX),
            addr: "10.9.9.9:1".parse().unwrap(),
        };
        assert_eq!(
            show(&[unix_adv]),
            [
                "unix:///run/app.sock",
                "ws://0.0.0.0:80",
                "tcp://0.0.0.0:4100"
            ]
        );
    }
}
