//! The [`Registry`] trait: where peers are. A registry may be unable to
//! watch; see [Registries that cannot watch](Registry#registries-that-cannot-watch).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::liveness::Lease;
use crate::name::{Namespace, PeerName};
use crate::pattern::Pattern;
use crate::record::{InstanceId, PeerRecord};

/// What [`Registry::publish`] does when another live instance holds the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NamePolicy {
    /// Replace the other instance's record (it gets `NameLost` on its next
    /// refresh) and emit [`RegistryEvent::Updated`].
    #[default]
    Takeover,
    /// Fail with [`Error::NameTaken`](crate::Error::NameTaken).
    Exclusive,
}

/// A change in a namespace, as delivered by [`Registry::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A name that was free was published.
    Joined(PeerRecord),
    /// A live name was published again: new endpoints or metadata, or another
    /// instance took it over.
    Updated(PeerRecord),
    /// The instance unpublished itself.
    Left {
        /// The name it held.
        name: PeerName,
        /// The instance that left.
        instance: InstanceId,
    },
    /// The instance's record ran out of time without a refresh.
    Expired {
        /// The name it held.
        name: PeerName,
        /// The instance that expired.
        instance: InstanceId,
    },
    /// The backend may have lost events (for example a reconnect past the end
    /// of its event log): whoever keeps state from events must list again.
    Resync,
}

impl RegistryEvent {
    /// The name the event is about (`None` for [`RegistryEvent::Resync`]).
    pub fn name(&self) -> Option<&PeerName> {
        match self {
            RegistryEvent::Joined(r) | RegistryEvent::Updated(r) => Some(&r.name),
            RegistryEvent::Left { name, .. } | RegistryEvent::Expired { name, .. } => Some(name),
            RegistryEvent::Resync => None,
        }
    }

    /// The instance the event is about (`None` for [`RegistryEvent::Resync`]).
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            RegistryEvent::Joined(r) | RegistryEvent::Updated(r) => Some(r.instance),
            RegistryEvent::Left { instance, .. } | RegistryEvent::Expired { instance, .. } => {
                Some(*instance)
            }
            RegistryEvent::Resync => None,
        }
    }
}

/// Where peers are: a shared store of [`PeerRecord`]s with expiry and a stream of changes.
///
/// Implementations must meet these semantics (checked by
/// `testkit::registry_conformance` with feature `testkit`):
///
/// - [`publish`](Registry::publish) is an atomic upsert that expires after `ttl`.
///   [`NamePolicy::Takeover`] replaces another instance's record and emits
///   [`RegistryEvent::Updated`]; [`NamePolicy::Exclusive`] fails with
///   [`Error::NameTaken`](crate::Error::NameTaken) while another live instance holds the name.
///   Publishing a free name emits [`RegistryEvent::Joined`].
/// - [`refresh`](Registry::refresh) extends the expiry only if `instance` still owns the
///   name, and fails with [`Error::NameLost`](crate::Error::NameLost) otherwise.
/// - [`unpublish`](Registry::unpublish) removes only the caller's own instance and
///   emits [`RegistryEvent::Left`]; for anyone else's record it does nothing.
/// - An expired record is invisible to [`lookup`](Registry::lookup) at once and
///   produces exactly one [`RegistryEvent::Expired`] per namespace, whatever the
///   number of watchers and of handles on the same backend.
/// - [`watch`](Registry::watch) delivers every event that happens after it returns,
///   in order per name; after a reconnect it resumes without loss or yields
///   [`RegistryEvent::Resync`]. A registry that cannot watch returns
///   [`Error::Unsupported`](crate::Error::Unsupported) instead, and is polled
///   (see [below](Registry#registries-that-cannot-watch)).
/// - A stored record that cannot be parsed is skipped with a `tracing::warn!`.
/// - It is [`Debug`](std::fmt::Debug), so that nodes and errors can say which
///   registry they use; print the server with [`redact`](crate::redact)ed
///   credentials, never a password.
///
/// # Registries that cannot watch
///
/// Watching is optional. A store with no change feed (a file, a key-value
/// store without notifications, an HTTP API) implements
/// [`Registry::watch`] by returning
/// [`Error::Unsupported`](crate::Error::Unsupported), and nothing else:
/// [`CachingRegistry`](crate::CachingRegistry), which every node puts in
/// front of its registry, then lists the namespace every
/// [`CachingConfig::with_poll_interval`](crate::CachingConfig::with_poll_interval)
/// (1 s by default) and diffs the listings into the same
/// [`RegistryEvent`]s, so nodes still get `PeerJoined`, `PeerUpdated`,
/// `PeerExpired`, … within about one interval, and cached lookups are at
/// most one interval old. What a polled namespace cannot tell: an unpublish
/// from an expiry (a name that vanished is `Expired`), and several changes
/// of one name between two polls (they are one event). The other rules
/// above hold for such a registry all the same.
#[async_trait]
pub trait Registry: std::fmt::Debug + Send + Sync + 'static {
    /// Inserts or replaces `record` under its namespace and name, expiring after `ttl`.
    async fn publish(&self, record: &PeerRecord, ttl: Duration, policy: NamePolicy) -> Result<()>;

    /// Extends the expiry of `instance`'s record to `ttl` from now.
    async fn refresh(
        &self,
        ns: &Namespace,
        name: &PeerName,
        instance: InstanceId,
        ttl: Duration,
    ) -> Result<()>;

    /// Removes `instance`'s record, if it still holds `name`.
    async fn unpublish(&self, ns: &Namespace, name: &PeerName, instance: InstanceId) -> Result<()>;

    /// Every live record in `ns` whose name matches `pattern`, sorted by name.
    async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>>;

    /// Like [`lookup`](Registry::lookup), with each record's time left
    /// before it expires, by the registry's clock: what tells an
    /// [evasive](crate::Liveness::Evasive) peer. Never cached (the time left
    /// changes with every heartbeat).
    ///
    /// The default answers `expires_in: None` for every record (the backend
    /// cannot tell); a backend that stores expiry times overrides it and
    /// documents how it computes the time left.
    async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
        Ok(self
            .lookup(ns, pattern)
            .await?
            .into_iter()
            .map(|record| Lease::new(record, None))
            .collect())
    }

    /// The changes in `ns` from now on.
    ///
    /// A registry that has no change feed returns
    /// [`Error::Unsupported`](crate::Error::Unsupported), always (not after a
    /// failure: an outage is [`Error::RegistryUnavailable`](crate::Error::RegistryUnavailable));
    /// [`CachingRegistry`](crate::CachingRegistry) then polls the namespace
    /// with [`lookup`](Registry::lookup) (see
    /// [Registries that cannot watch](Registry#registries-that-cannot-watch)).
    async fn watch(&self, ns: &Namespace) -> Result<BoxStream<'static, Result<RegistryEvent>>>;
}

macro_rules! forward_registry {
    ($ptr:ident) => {
        #[async_trait]
        impl<T: Registry + ?Sized> Registry for $ptr<T> {
            async fn publish(
                &self,
                record: &PeerRecord,
                ttl: Duration,
                policy: NamePolicy,
            ) -> Result<()> {
                (**self).publish(record, ttl, policy).await
            }
            async fn refresh(
                &self,
                ns: &Namespace,
                name: &PeerName,
                instance: InstanceId,
                ttl: Duration,
            ) -> Result<()> {
                (**self).refresh(ns, name, instance, ttl).await
            }
            async fn unpublish(
                &self,
                ns: &Namespace,
                name: &PeerName,
                instance: InstanceId,
            ) -> Result<()> {
                (**self).unpublish(ns, name, instance).await
            }
            async fn lookup(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<PeerRecord>> {
                (**self).lookup(ns, pattern).await
            }
            async fn lookup_leases(&self, ns: &Namespace, pattern: &Pattern) -> Result<Vec<Lease>> {
                (**self).lookup_leases(ns, pattern).await
            }
            async fn watch(
                &self,
                ns: &Namespace,
            ) -> Result<BoxStream<'static, Result<RegistryEvent>>> {
                (**self).watch(ns).await
            }
        }
    };
}

forward_registry!(Arc);
forward_registry!(Box);

/// A registry chosen at run time.
pub type DynRegistry = Arc<dyn Registry>;

/// The sending end of one watch stream fed by a backend's shared reader:
/// one reader per namespace that fans its events out to every watch stream
/// of that namespace on the handle (as masse-redis and masse-sql do).
///
/// A stream holds up to its capacity of unread events. One that falls that
/// far behind is marked lagging: the events meanwhile are dropped (the
/// reader never waits for it), and once it has room again it gets one
/// [`RegistryEvent::Resync`] before the next event, so that its caller lists
/// again.
#[derive(Debug)]
pub struct WatchSender {
    tx: tokio::sync::mpsc::Sender<Result<RegistryEvent>>,
    lagged: bool,
}

impl WatchSender {
    /// A sender and the receiving end of the stream it feeds, which holds
    /// up to `capacity` events (at least one).
    pub fn channel(
        capacity: usize,
    ) -> (
        WatchSender,
        tokio::sync::mpsc::Receiver<Result<RegistryEvent>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (WatchSender { tx, lagged: false }, rx)
    }

    /// Queues `event` without waiting (see the type's docs for a stream
    /// that lags).
    pub fn send(&mut self, event: RegistryEvent) {
        use tokio::sync::mpsc::error::TrySendError;
        if self.lagged {
            match self.tx.try_send(Ok(RegistryEvent::Resync)) {
                Ok(()) => self.lagged = false,
                Err(_) => return,
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Ok(event)) {
            tracing::warn!("a registry watch stream is not keeping up; it will get a Resync");
            self.lagged = true;
        }
    }

    /// True once the stream was dropped: the reader can forget it.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod watch_sender_tests {
    use super::*;

    fn left(i: u32) -> RegistryEvent {
        RegistryEvent::Left {
            name: format!("p{i}").parse().unwrap(),
            instance: InstanceId::random(),
        }
    }

    #[test]
    fn a_stream_that_lags_gets_one_resync_then_the_newer_events() {
        let (mut tx, mut rx) = WatchSender::channel(2);
        let (a, b, c, d) = (left(1), left(2), left(3), left(4));
        tx.send(a.clone());
        tx.send(b.clone());
        tx.send(c); // full: dropped, and the stream lags
        assert_eq!(rx.try_recv().unwrap().unwrap(), a);
        assert_eq!(rx.try_recv().unwrap().unwrap(), b);
        tx.send(d.clone());
        assert_eq!(rx.try_recv().unwrap().unwrap(), RegistryEvent::Resync);
        assert_eq!(rx.try_recv().unwrap().unwrap(), d);
        assert!(rx.try_recv().is_err());
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
    }
}
