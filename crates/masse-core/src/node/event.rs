//! [`NodeEvent`]: what a node tells its application.

use std::time::Duration;

use crate::endpoint::Protocol;
use crate::error::Error;
use crate::name::PeerName;
use crate::record::{InstanceId, PeerRecord};
use crate::wrapper::Direction;

/// Something that happened to or around a node; see [`Node::events`](crate::Node::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A peer joined the namespace.
    PeerJoined(PeerRecord),
    /// A peer re-published its record (new endpoints, or a new instance took the name).
    PeerUpdated(PeerRecord),
    /// A peer unpublished itself.
    PeerLeft {
        /// Its name.
        name: PeerName,
        /// The instance that left.
        instance: InstanceId,
    },
    /// A peer's record expired (it stopped heart-beating).
    PeerExpired {
        /// Its name.
        name: PeerName,
        /// The instance that expired.
        instance: InstanceId,
    },
    /// A peer missed a heartbeat: less than half its TTL is left and it has
    /// not expired yet (opt-in, see
    /// [`NodeBuilder::liveness_events`](crate::NodeBuilder::liveness_events)).
    /// Followed by [`PeerAlive`](NodeEvent::PeerAlive) if it refreshes in
    /// time, or by [`PeerExpired`](NodeEvent::PeerExpired).
    PeerEvasive {
        /// Its name.
        name: PeerName,
        /// The evasive instance.
        instance: InstanceId,
        /// Time until it expires without a refresh, by the registry's clock
        /// when it was seen.
        expires_in: Duration,
    },
    /// An evasive peer refreshed its record again (opt-in, see
    /// [`NodeBuilder::liveness_events`](crate::NodeBuilder::liveness_events)).
    PeerAlive {
        /// Its name.
        name: PeerName,
        /// The instance.
        instance: InstanceId,
    },
    /// A stream was opened, by us or to us, after the handshake and wrappers.
    StreamOpened {
        /// The other end.
        peer: PeerName,
        /// Who dialed.
        direction: Direction,
        /// The service, if one was requested.
        service: Option<String>,
        /// The transport.
        protocol: Protocol,
    },
    /// A stream was dropped.
    StreamClosed {
        /// The other end.
        peer: PeerName,
        /// Who dialed.
        direction: Direction,
        /// The service, if one was requested.
        service: Option<String>,
        /// Bytes read by the application.
        bytes_in: u64,
        /// Bytes written by the application.
        bytes_out: u64,
    },
    /// The registry stopped answering; the node serves from its cache and retries.
    RegistryUnavailable {
        /// The failure that started the outage.
        error: Error,
    },
    /// The registry answers again; the node's record is published.
    RegistryRestored,
    /// Another instance holds this node's name now; the node no longer
    /// publishes it (open streams and outbound dials keep working).
    NameLost {
        /// The instance that holds the name, if known.
        holder: Option<InstanceId>,
    },
    /// This receiver fell behind and missed `missed` events.
    Lagged {
        /// How many events were dropped for this receiver.
        missed: u64,
    },
}
