//! [`HandshakeBudget`]: how many inbound handshakes a node runs at once, and
//! who gives way when there are too many.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The inbound handshakes in progress on a node's listeners (the
/// transport's own, TLS, and the masse handshake after it), in two pools.
///
/// A connection starts *silent*: its peer has not yet sent what the
/// handshake waits for. Silent connections cost a socket and little else;
/// there may be [`max_silent`](Self::max_silent) of them, and when that pool
/// is full the one silent the longest is evicted (its [`Ticket::evicted`]
/// resolves; its owner refuses it as `Busy`, or closes it if it cannot speak
/// yet) to make room, if it has been silent for
/// [`SILENT_GRACE`](Self::SILENT_GRACE) (else the pool stretches, up to
/// twice its size, for a burst of dialers that connected a moment ago). Once the peer speaks ([`Ticket::heard`]) the handshake
/// needs one of [`max`](Self::max) places to go on, and waits for one.
///
/// So idle sockets, however many, cannot keep a dialer out: a dialer speaks
/// first and at once (a TLS `ClientHello`, a masse `Hello`), and places are
/// only taken by connections that spoke. A burst of real dialers on a busy
/// machine waits its turn instead of being dropped. Each handshake still
/// has its own deadline, which bounds a socket that trickles bytes.
///
/// One budget is shared by every listener of a node: the node hands it to
/// [`Interface::bind`](crate::Interface::bind) in
/// [`BindContext::handshake_budget`](crate::BindContext::handshake_budget);
/// a listener that runs a handshake of its own takes a [`Ticket`] for it and
/// passes it on in [`Accepted::ticket`](crate::Accepted::ticket), so the
/// masse handshake that follows is counted once.
pub struct HandshakeBudget {
    max: usize,
    max_silent: usize,
    state: Mutex<State>,
    /// Woken when a speaking place frees up.
    freed: Notify,
    evictions: AtomicU64,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Silent tickets, oldest first, with when they went silent.
    silent: VecDeque<(u64, Instant, Arc<Notify>)>,
    speaking: usize,
}

impl HandshakeBudget {
    /// How long a connection must have been silent before a newer one may
    /// evict it from a full silent pool (the pool takes up to twice its size
    /// of connections younger than this).
    pub const SILENT_GRACE: Duration = Duration::from_millis(100);

    /// A budget of `max` handshakes going on at once (at least 1), and four
    /// times as many silent connections (at least 64).
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Self::with_silent(max, max.saturating_mul(4).max(64))
    }

    /// A budget of `max` handshakes going on and `max_silent` silent
    /// connections at once (each at least 1).
    pub fn with_silent(max: usize, max_silent: usize) -> Arc<Self> {
        Arc::new(HandshakeBudget {
            max: max.max(1),
            max_silent: max_silent.max(1),
            state: Mutex::default(),
            freed: Notify::new(),
            evictions: AtomicU64::new(0),
        })
    }

    /// Counts a new connection in, silent. Never waits: if the silent pool
    /// is full, the connection silent the longest is evicted.
    pub fn admit(self: &Arc<Self>) -> Ticket {
        let evicted = Arc::new(Notify::new());
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        self.push_silent(&mut state, id, evicted.clone());
        Ticket {
            budget: self.clone(),
            id,
            evicted,
            phase: AtomicU8::new(SILENT),
        }
    }

    fn push_silent(&self, state: &mut State, id: u64, evicted: Arc<Notify>) {
        let now = Instant::now();
        if let Some((_, since, _)) = state.silent.front()
            && state.silent.len() >= self.max_silent
            // A burst of dialers that connected a moment ago is let in over
            // the pool, up to twice its size.
            && (now.duration_since(*since) >= Self::SILENT_GRACE
                || state.silent.len() >= self.max_silent.saturating_mul(2))
            && let Some((_, _, oldest)) = state.silent.pop_front()
        {
            // A stored permit: the owner sees it even if it is not waiting yet.
            oldest.notify_one();
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        state.silent.push_back((id, now, evicted));
    }

    /// Connections in a handshake now, silent or not.
    pub fn in_progress(&self) -> usize {
        let state = self.lock();
        state.speaking + state.silent.len()
    }

    /// Silent connections evicted so far to make room for newer ones.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The most handshakes going on at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The most silent connections at once.
    pub fn max_silent(&self) -> usize {
        self.max_silent
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for HandshakeBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeBudget")
            .field("max", &self.max)
            .field("max_silent", &self.max_silent)
            .field("in_progress", &self.in_progress())
            .field("evictions", &self.evictions())
            .finish()
    }
}

/// One connection's handshake in a [`HandshakeBudget`]; dropping it frees
/// its place.
pub struct Ticket {
    budget: Arc<HandshakeBudget>,
    id: u64,
    evicted: Arc<Notify>,
    /// [`SILENT`], [`WAITING`] (spoke, waits for a place) or [`SPEAKING`].
    phase: AtomicU8,
}

const SILENT: u8 = 0;
const WAITING: u8 = 1;
const SPEAKING: u8 = 2;

impl Ticket {
    /// Resolves once the connection was evicted from the silent pool for a
    /// newer one: give up on it (refuse it as busy if the protocol allows,
    /// else close it).
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// The peer sent what the handshake waited for: waits for a place among
    /// the handshakes going on (at once if there is one). Cancel-safe.
    pub async fn heard(&self) {
        if self.phase.load(Ordering::Acquire) == SPEAKING {
            return;
        }
        let budget = &self.budget;
        {
            // Out of the silent pool at once: a peer that spoke is never
            // evicted, even while it waits for a place.
            let mut state = budget.lock();
            if self.phase.swap(WAITING, Ordering::AcqRel) == SILENT
                && let Some(i) = state.silent.iter().position(|(id, _, _)| *id == self.id)
            {
                state.silent.remove(i);
            }
            // Usually there is a place: take it under the same lock.
            if state.speaking < budget.max {
                state.speaking += 1;
                self.phase.store(SPEAKING, Ordering::Release);
                return;
            }
        }
        loop {
            let freed = budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = budget.lock();
                if state.speaking < budget.max {
                    state.speaking += 1;
                    self.phase.store(SPEAKING, Ordering::Release);
                    return;
                }
            }
            freed.await;
        }
    }

    /// The handshake waits on the peer again: back to the silent pool, its
    /// place given up for someone else.
    pub fn waiting(&self) {
        // Only the owner moves a ticket out of the silent phase: nothing to do.
        if self.phase.load(Ordering::Acquire) == SILENT {
            return;
        }
        let budget = &self.budget;
        let mut state = budget.lock();
        match self.phase.swap(SILENT, Ordering::AcqRel) {
            SPEAKING => {
                state.speaking -= 1;
                budget.push_silent(&mut state, self.id, self.evicted.clone());
                drop(state);
                budget.freed.notify_one();
            }
            WAITING => budget.push_silent(&mut state, self.id, self.evicted.clone()),
            _ => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let budget = &self.budget;
        let mut state = budget.lock();
        match self.phase.load(Ordering::Acquire) {
            SPEAKING => {
                state.speaking -= 1;
                drop(state);
                budget.freed.notify_one();
            }
            SILENT => {
                if let Some(i) = state.silent.iter().rposition(|(id, _, _)| *id == self.id) {
                    state.silent.remove(i);
                }
            }
            _ => {}
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_silent_pool_evicts_the_longest_silent() {
        let budget = HandshakeBudget::with_silent(1, 2);
        // A burst stretches the pool up to twice its size.
        let burst: Vec<Ticket> = (0..4).map(|_| budget.admit()).collect();
        assert_eq!(budget.in_progress(), 4);
        assert_eq!(budget.evictions(), 0);
        drop(burst);
        let first = budget.admit();
        let second = budget.admit();
        tokio::time::sleep(HandshakeBudget::SILENT_GRACE).await;
        let third = budget.admit();
        assert_eq!(budget.in_progress(), 2);
        assert_eq!(budget.evictions(), 1);
        // The evicted one is told, even though it was not waiting yet.
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the longest silent is evicted");
        assert!(
            matches!(
                tokio::time::timeout(Duration::from_millis(20), second.evicted()).await,
                Err(tokio::time::error::Elapsed { .. })
            ),
            "only the longest silent is evicted"
        );
        drop(first);
        assert_eq!(budget.in_progress(), 2, "an evicted ticket held no place");
        drop((second, third));
        assert_eq!(budget.in_progress(), 0);
    }

    #[tokio::test]
    async fn speakers_take_places_and_wait_for_one_when_all_are_taken() {
        let budget = HandshakeBudget::with_silent(1, 10);
        let a = budget.admit();
        let b = budget.admit();
        a.heard().await;
        // b spoke too, but the one place is a's: b waits.
        let waiting = tokio::time::timeout(Duration::from_millis(20), b.heard()).await;
        assert!(
            matches!(waiting, Err(tokio::time::error::Elapsed { .. })),
            "b got the place a holds"
        );
        // a waits on its peer again: the place goes to b.
        a.waiting();
        tokio::time::timeout(Duration::from_secs(1), b.heard())
            .await
            .expect("the freed place");
        // A speaking ticket is never evicted, however full the silent pool.
        for _ in 0..20 {
            drop(budget.admit());
        }
        assert!(
            matches!(
                tokio::time::timeout(Duration::from_millis(20), b.evicted()).await,
                Err(tokio::time::error::Elapsed { .. })
            ),
            "a speaking ticket was evicted"
        );
        drop(b);
        a.heard().await;
        drop(a);
        assert_eq!(budget.in_progress(), 0);
        assert_eq!(budget.evictions(), 0);
    }

    #[tokio::test]
    async fn finished_handshakes_free_their_places() {
        let budget = HandshakeBudget::new(3);
        for _ in 0..100 {
            let t = budget.admit();
            t.heard().await;
            drop(t);
        }
        assert_eq!(budget.in_progress(), 0);
        assert_eq!(budget.evictions(), 0);
    }
}
