//! [`NodeBuilder`]: configures and starts a [`Node`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};

/// Events a subscriber of a node's events (`Node::events`, a following
/// `Reach`) may fall behind by before it is told it lagged.
const EVENT_CAPACITY: usize = 1024;

use super::core::{Core, NodeConfig, Route};
use super::{Node, accept, lifecycle};
use crate::caching::{CachingConfig, CachingRegistry};
use crate::endpoint::Protocol;
use crate::error::{Error, Result};
use crate::handshake::{Local, Secret};
use crate::identity::Identity;
use crate::interface::{BindContext, DynInterface, Interface};
use crate::memory::MemoryRegistry;
use crate::name::{Namespace, PeerName, validate_service};
use crate::record::{InstanceId, PeerRecord};
use crate::registry::{DynRegistry, NamePolicy, Registry};
use crate::wrapper::{DynWrapper, Wrapper};

/// Where the node's registry comes from.
enum RegistrySource {
    Ready(DynRegistry),
    Connect(BoxFuture<'static, Result<DynRegistry>>),
}

/// Where the node's identity comes from.
enum IdentitySource {
    Ready(Identity),
    File(PathBuf),
}

/// Configures a [`Node`]; made by [`Node::builder`], finished by [`start`](Self::start).
///
/// Invalid values (a bad name, a zero ttl) are reported by `start`, so the
/// builder chains without `?` at every step.
#[must_use = "a builder does nothing until .start().await"]
pub struct NodeBuilder {
    name: String,
    namespace: String,
    registry: Option<RegistrySource>,
    interfaces: Vec<DynInterface>,
    wrappers: Vec<DynWrapper>,
    services: Vec<String>,
    metadata: Vec<(String, String)>,
    identity: Option<IdentitySource>,
    secret: Option<Vec<u8>>,
    config: NodeConfig,
    cache: CachingConfig,
    expose_stats: bool,
}

impl NodeBuilder {
    pub(crate) fn new(name: &str) -> Self {
        NodeBuilder {
            name: name.to_owned(),
            namespace: "default".into(),
            registry: None,
            interfaces: Vec::new(),
            wrappers: Vec::new(),
            services: Vec::new(),
            metadata: Vec::new(),
            identity: None,
            secret: None,
            expose_stats: false,
            config: NodeConfig {
                ttl: Duration::from_secs(10),
                policy: NamePolicy::Takeover,
                handshake_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
                race_delay: Duration::from_millis(250),
                concurrency: 32,
                shutdown_grace: Duration::from_secs(5),
                incoming_capacity: 1024,
                max_pending_handshakes: 1024,
                advertise: Vec::new(),
                secret: None,
                liveness_poll: None,
            },
            cache: CachingConfig::default(),
        }
    }

    /// The namespace to live in (default `"default"`). Nodes only see and
    /// reach nodes of their own namespace.
    pub fn namespace(mut self, namespace: impl AsRef<str>) -> Self {
        namespace.as_ref().clone_into(&mut self.namespace);
        self
    }

    /// The registry that says who is where. Default: the process-wide
    /// [`MemoryRegistry::global`], which only reaches nodes of this process.
    pub fn registry(mut self, registry: impl Registry) -> Self {
        self.registry = Some(RegistrySource::Ready(Arc::new(registry)));
        self
    }

    /// A registry chosen at run time.
    pub fn registry_dyn(mut self, registry: DynRegistry) -> Self {
        self.registry = Some(RegistrySource::Ready(registry));
        self
    }

    /// A registry that [`start`](Self::start) connects to first (for example
    /// from a URL); its error, if any, is the error of `start`.
    pub fn registry_connect<F>(mut self, connect: F) -> Self
    where
        F: Future<Output = Result<DynRegistry>> + Send + 'static,
    {
        self.registry = Some(RegistrySource::Connect(Box::pin(connect)));
        self
    }

    /// Adds a transport. Several are allowed: the node accepts on all of them
    /// and dials with the first one that the peer also offers. At least one is
    /// required (the `masse` facade crate's defaults add TCP).
    pub fn interface(mut self, interface: impl Interface) -> Self {
        self.interfaces.push(Arc::new(interface));
        self
    }

    /// Adds a transport chosen at run time.
    pub fn interface_dyn(mut self, interface: DynInterface) -> Self {
        self.interfaces.push(interface);
        self
    }

    /// True if at least one interface was added.
    pub fn has_interface(&self) -> bool {
        !self.interfaces.is_empty()
    }

    /// True if a registry was set.
    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// Adds a wrapper; wrappers apply to every stream in the order added,
    /// after the handshake, on both dialed and accepted streams.
    pub fn wrap(mut self, wrapper: impl Wrapper) -> Self {
        self.wrappers.push(Arc::new(wrapper));
        self
    }

    /// Adds a wrapper chosen at run time.
    pub fn wrap_dyn(mut self, wrapper: DynWrapper) -> Self {
        self.wrappers.push(wrapper);
        self
    }

    /// How long the record lives without a heartbeat (default 10 s); the node
    /// refreshes it every `ttl / 3`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// A service this node accepts (listed in its record). A stream that asks
    /// for a service the node does not list is refused with `NoSuchService`;
    /// streams without a service are always accepted. The service's queue
    /// exists from [`start`](Self::start): a stream for it that arrives
    /// before the application calls
    /// [`Node::incoming_service`](crate::Node::incoming_service) waits there
    /// (up to `incoming_capacity`, then it is refused as `Busy`), never in
    /// [`Node::incoming`](crate::Node::incoming).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.services.push(service.into());
        self
    }

    /// With `true`, the node offers the reserved service
    /// [`STATS_SERVICE`](crate::STATS_SERVICE) (listed in its record) and
    /// answers each stream for it with its [`NodeStats`](crate::NodeStats)
    /// as one JSON document, then closes the stream; peers read it with
    /// [`Node::remote_stats`](crate::Node::remote_stats). Those streams go
    /// through the handshake, the namespace secret and the wrappers like any
    /// other, and never reach [`Node::incoming`](crate::Node::incoming) or
    /// [`Node::incoming_service`](crate::Node::incoming_service). Default: off.
    pub fn expose_stats(mut self, on: bool) -> Self {
        self.expose_stats = on;
        self
    }

    /// A metadata entry published in the record.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Publishes `addr` instead of the bound addresses of the `tcp`, `tls`
    /// and `quic` listeners (repeatable). A port of 0 keeps each listener's
    /// bound port. Other interfaces' endpoints (`unix://`, a third-party
    /// scheme) are published as their interface reports them; see
    /// [`advertise_for`](Self::advertise_for).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.config
            .advertise
            .push(super::core::Advertise { scheme: None, addr });
        self
    }

    /// Publishes `addr` instead of the bound addresses of the listeners of
    /// `protocol` only (repeatable; port 0 keeps the bound port). For a
    /// third-party transport at socket addresses, or to give one of the
    /// workspace's transports addresses of its own: these replace the
    /// general [`advertise`](Self::advertise) ones for that scheme. An
    /// interface whose endpoints are not socket addresses is left alone.
    pub fn advertise_for(mut self, protocol: Protocol, addr: SocketAddr) -> Self {
        self.config.advertise.push(super::core::Advertise {
            scheme: Some(protocol),
            addr,
        });
        self
    }

    /// What to do if another live instance holds the name at start
    /// (default [`NamePolicy::Takeover`]).
    pub fn name_policy(mut self, policy: NamePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Deadline for the masse handshake on each stream (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Deadline for each transport connect (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// When a peer has several endpoints (several interfaces or addresses),
    /// how long a dial waits for one before it starts the next in parallel,
    /// happy-eyeballs style (default 250 ms; RFC 8305 recommends 250 ms).
    /// The first to connect wins; endpoints that failed or were overtaken
    /// recently are tried last for 30 s.
    pub fn race_delay(mut self, delay: Duration) -> Self {
        self.config.race_delay = delay;
        self
    }

    /// How many dials [`Node::to`] runs at once (default 32).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// How long [`Node::shutdown`] waits for open streams (default 5 s).
    /// Streams still open then are closed: their next read or write (or one
    /// waiting) fails with [`Error::Closed`](crate::Error::Closed).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Accepted streams queued for [`Node::incoming`] before new ones are
    /// refused with `Busy` (default 1024).
    pub fn incoming_capacity(mut self, n: usize) -> Self {
        self.config.incoming_capacity = n;
        self
    }

    /// Inbound handshakes in progress at once, on all listeners together,
    /// transport handshakes (TLS) included (default 1024): the node's
    /// [`HandshakeBudget`](crate::HandshakeBudget); four times as many
    /// connections may sit silent (nothing sent yet), and when those are too
    /// many the one silent the longest is refused as `Busy` to make room, so
    /// idle sockets cannot keep dialers out.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.config.max_pending_handshakes = n;
        self
    }

    /// The key pair and certificate this node proves itself with on `tls` and
    /// `quic` (its fingerprint is published in the record). Default: a fresh
    /// ephemeral identity at every start.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(IdentitySource::Ready(identity));
        self
    }

    /// Loads the identity from `path`, creating it (mode 0600) on first use,
    /// so the node keeps its fingerprint across restarts.
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity = Some(IdentitySource::File(path.into()));
        self
    }

    /// A namespace secret (at least 16 bytes) shared by the nodes of the
    /// namespace: every handshake then runs an HMAC challenge-response, and
    /// peers without the same secret are refused with `Unauthorized` in both
    /// directions. This is what authenticates peers on plain `tcp`.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// Tuning of the node's registry cache.
    pub fn cache(mut self, config: CachingConfig) -> Self {
        self.cache = config;
        self
    }

    /// Opt-in: emit [`NodeEvent::PeerEvasive`](crate::NodeEvent::PeerEvasive)
    /// when a peer misses a heartbeat (less than half its TTL left, not
    /// expired yet) and [`NodeEvent::PeerAlive`](crate::NodeEvent::PeerAlive)
    /// when an evasive peer refreshes again (see [`Liveness`](crate::Liveness)).
    ///
    /// The node lists the namespace with
    /// [`Registry::lookup_leases`](crate::Registry::lookup_leases) every
    /// `poll` (at least 10 ms), uncached: one backend query per poll, whose
    /// cost grows with the namespace. A peer is seen evasive within `poll`
    /// of crossing half its TTL, so `poll` should be well under half the
    /// peers' TTL (at the default 10 s TTL, 1 s gives four or five polls of
    /// warning before expiry). Needs a backend that reports the time left
    /// (all in-tree backends do) and peers that publish their TTL (nodes of
    /// this version do); other peers are never reported evasive.
    pub fn liveness_events(mut self, poll: Duration) -> Self {
        self.config.liveness_poll = Some(poll.max(Duration::from_millis(10)));
        self
    }

    /// Binds every interface, publishes the record, and starts the heartbeat,
    /// watch and accept tasks.
    pub async fn start(self) -> Result<Node> {
        let name = PeerName::new(&self.name)?;
        let namespace = Namespace::new(&self.namespace)?;
        for s in &self.services {
            validate_service(s)?;
        }
        let mut config = self.config;
        if let Some(bytes) = &self.secret {
            config.secret = Some(Secret::new(bytes)?);
        }
        if config.ttl < Duration::from_millis(30) {
            return Err(Error::Config(format!(
                "ttl {:?} is too short (at least 30 ms)",
                config.ttl
            )));
        }
        if config.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.interfaces.is_empty() {
            return Err(Error::Config(
                "no interface: add one with .interface(...), e.g. TcpInterface::new(\"0.0.0.0:0\") from masse-tcp, \
                 or call .with_defaults() from masse::prelude"
                    .into(),
            ));
        }
        let backend = match self.registry {
            Some(RegistrySource::Ready(r)) => r,
            Some(RegistrySource::Connect(connect)) => connect.await?,
            None => Arc::new(MemoryRegistry::global()),
        };
        // Peers re-publish within one heartbeat (ttl/3) of a registry that
        // lost its data: a vanished name is suspect at least that long.
        let mut cache = self.cache;
        cache.resync_grace = cache
            .resync_grace
            .max(config.ttl / 3 + Duration::from_secs(2));
        let registry = CachingRegistry::with_config(backend, cache);
        let instance = InstanceId::random();
        let identity = Arc::new(match self.identity {
            Some(IdentitySource::Ready(i)) => i,
            Some(IdentitySource::File(path)) => Identity::load_or_create(path)?,
            None => Identity::generate(name.as_str())?,
        });

        let span = tracing::info_span!("node", name = %name, namespace = %namespace);
        let _enter = span.enter();

        let mut listeners = Vec::new();
        let mut listener_endpoints = Vec::new();
        let handshake_budget = crate::HandshakeBudget::new(config.max_pending_handshakes);
        let bind_ctx = BindContext::new(namespace.clone(), name.clone(), instance)
            .with_identity(identity.clone())
            .with_handshake_budget(handshake_budget.clone(), config.handshake_timeout)
            .with_deferred_handshakes();
        for iface in &self.interfaces {
            let l = iface.bind(&bind_ctx).await?;
            listener_endpoints.push(l.endpoints());
            listeners.push((l, iface.protocol()));
        }

        // Each declared service has its queue from the start: a stream for it
        // waits there until the application asks for it. The stats service
        // has a handler instead (below).
        let service_routes = self
            .services
            .iter()
            .map(|s| (s.clone(), Route::new(config.incoming_capacity)))
            .collect();
        let mut services = self.services;
        if self.expose_stats && !services.iter().any(|s| s == super::STATS_SERVICE) {
            services.push(super::STATS_SERVICE.to_owned());
        }
        let mut record = PeerRecord::new(namespace.clone(), name.clone(), instance);
        record.services = services.clone();
        record.metadata = self.metadata.into_iter().collect();
        record.identity = Some(identity.fingerprint());
        record.ttl_ms = Some(config.ttl.as_millis().min(u64::MAX as u128) as u64);
        let events = super::core::LazyBroadcast::new(EVENT_CAPACITY);
        let registry_events = super::core::LazyBroadcast::new(EVENT_CAPACITY);
        let (stopping, _) = watch::channel(false);
        let local = Arc::new(
            Local::new(namespace.clone(), name.clone(), instance)
                .with_services(services)
                .with_secret(config.secret.clone()),
        );
        let core = Arc::new(Core {
            local,
            name_lost: AtomicBool::new(false),
            name,
            namespace,
            instance,
            identity,
            registry,
            interfaces: self.interfaces,
            wrappers: self.wrappers,
            default_route: Route::new(config.incoming_capacity),
            config,
            record: RwLock::new(record),
            listener_endpoints: Mutex::new(listener_endpoints),
            events,
            registry_events,
            service_routes: Mutex::new(service_routes),
            stopping,
            accepting: AtomicBool::new(true),
            counters: Default::default(),
            meter: Default::default(),
            stream_closed: Notify::new(),
            hold_back: Arc::default(),
            endpoint_memory: Default::default(),
            handlers: Default::default(),
            handshake_budget,
            streams: Default::default(),
        });
        if self.expose_stats {
            let weak = Arc::downgrade(&core);
            let handler: super::core::Handler =
                Arc::new(move |s| Box::pin(super::stats::serve_stats(weak.clone(), s)));
            core.handlers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Some(super::STATS_SERVICE.to_owned()), handler);
        }
        core.record
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .endpoints = core.compute_endpoints();
        drop(_enter);

        // Subscribe before publishing, so no event after start is missed.
        let events = core.registry.subscribe(&core.namespace).await;
        if !core.registry.is_synced(&core.namespace) {
            tracing::warn!(parent: &span, "cannot watch the registry yet; retrying in the background");
        }
        let record = core.record();
        core.registry
            .publish(&record, core.config.ttl, core.config.policy)
            .await?;
        tracing::info!(parent: &span, instance = %core.instance, endpoints = ?record.endpoints, "node started");

        let mut tasks = Vec::new();
        for (listener, protocol) in listeners
            .into_iter()
            .enumerate()
            .map(|(i, (l, p))| ((i, l), p))
        {
            tasks.push(tokio::spawn(accept::accept_loop(
                core.clone(),
                listener.1,
                listener.0,
                protocol,
            )));
        }
        tasks.push(tokio::spawn(lifecycle::heartbeat(core.clone())));
        tasks.push(tokio::spawn(lifecycle::watch_loop(core.clone(), events)));
        if let Some(poll) = core.config.liveness_poll {
            tasks.push(tokio::spawn(lifecycle::liveness_loop(core.clone(), poll)));
        }
        Ok(Node {
            core,
            tasks: Mutex::new(tasks),
            span,
        })
    }
}

impl fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("interfaces", &self.interfaces.len())
            .field("wrappers", &self.wrappers.len())
            .field("services", &self.services)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
