//! A bounded fan-out of events to subscribers that allocates nothing until
//! an event is queued: what [`CachingRegistry::subscribe`] hands out.
//!
//! A `tokio::sync::broadcast` channel allocates every slot up front, and
//! every node subscribes to its namespace, so its buffer was most of an idle
//! node's memory. Here each subscriber has its own queue, which grows with
//! the events actually waiting for it and is released once drained. The
//! semantics are those of a broadcast receiver: a subscriber that falls
//! more than the capacity behind loses the oldest events and is told how
//! many with [`RecvError::Lagged`], then goes on with the newest.
//!
//! [`CachingRegistry::subscribe`]: crate::CachingRegistry::subscribe

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;
pub use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Queues larger than this are given back to the allocator once drained,
/// so a burst does not stay resident in an idle subscriber.
const KEEP_CAPACITY: usize = 16;

struct Queue<T> {
    items: VecDeque<T>,
    /// Items dropped since the subscriber last heard of it.
    missed: u64,
    /// The sending side is gone: the subscriber sees `Closed` once drained.
    closed: bool,
}

struct Slot<T> {
    queue: Mutex<Queue<T>>,
    ready: Notify,
    capacity: usize,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A panic while holding this lock cannot leave the queue
        // inconsistent (every update is one push, pop or flag).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side: one per namespace, held by the cache.
pub(crate) struct Fanout<T> {
    subscribers: Vec<Weak<Slot<T>>>,
    capacity: usize,
}

impl<T: Clone> Fanout<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Fanout {
            subscribers: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    /// A new subscriber, which receives what is sent from now on.
    pub(crate) fn subscribe(&mut self) -> Subscription<T> {
        let slot = Arc::new(Slot {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                missed: 0,
                closed: false,
            }),
            ready: Notify::new(),
            capacity: self.capacity,
        });
        self.subscribers.push(Arc::downgrade(&slot));
        Subscription { slot }
    }

    /// Queues `value` for every live subscriber and forgets the dropped ones.
    pub(crate) fn send(&mut self, value: &T) {
        self.subscribers.retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            {
                let mut q = slot.lock();
                if q.items.len() == slot.capacity {
                    q.items.pop_front();
                    q.missed += 1;
                }
                q.items.push_back(value.clone());
            }
            // One receiver per slot: a stored permit wakes it even if it
            // is not waiting yet.
            slot.ready.notify_one();
            true
        });
    }

    /// How many subscribers are still alive.
    #[cfg(test)]
    pub(crate) fn receivers(&mut self) -> usize {
        self.subscribers.retain(|w| w.strong_count() > 0);
        self.subscribers.len()
    }
}

impl<T> Drop for Fanout<T> {
    fn drop(&mut self) {
        for slot in self.subscribers.iter().filter_map(Weak::upgrade) {
            slot.lock().closed = true;
            slot.ready.notify_one();
        }
    }
}

impl<T> fmt::Debug for Fanout<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field("subscribers", &self.subscribers.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The events of one namespace as a [`CachingRegistry`](crate::CachingRegistry)
/// applies them: the receiving end of
/// [`subscribe`](crate::CachingRegistry::subscribe).
///
/// It behaves like a `tokio::sync::broadcast::Receiver`: events arrive in
/// the order the cache applied them; one that falls more than 1 024 events
/// behind loses the oldest and gets [`RecvError::Lagged`] with how many,
/// then the newest; [`RecvError::Closed`] comes once the cache is dropped
/// and everything queued was read. Unlike a broadcast receiver it holds no
/// memory while nothing is queued.
pub struct Subscription<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Subscription<T> {
    /// The next event, waiting for one. Cancel-safe: dropping the future
    /// loses nothing.
    pub async fn recv(&mut self) -> Result<T, RecvError> {
        loop {
            match self.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => self.slot.ready.notified().await,
            }
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut q = self.slot.lock();
        if q.missed > 0 {
            return Err(TryRecvError::Lagged(std::mem::take(&mut q.missed)));
        }
        match q.items.pop_front() {
            Some(v) => {
                if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
                    q.items = VecDeque::new();
                }
                Ok(v)
            }
            None if q.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.slot.lock().items.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.slot.lock();
        f.debug_struct("Subscription")
            .field("queued", &q.items.len())
            .field("missed", &q.missed)
            .field("closed", &q.closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let mut tx = Fanout::new(8);
        let mut a = tx.subscribe();
        tx.send(&1);
        let mut b = tx.subscribe();
        tx.send(&2);
        tx.send(&3);
        assert_eq!(a.recv().await, Ok(1));
        assert_eq!(a.recv().await, Ok(2));
        assert_eq!(b.recv().await, Ok(2));
        assert_eq!(a.recv().await, Ok(3));
        assert_eq!(b.recv().await, Ok(3));
        assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed_then_gets_the_newest() {
        let mut tx = Fanout::new(3);
        let mut slow = tx.subscribe();
        for i in 0..10 {
            tx.send(&i);
        }
        assert_eq!(slow.len(), 3);
        assert_eq!(slow.recv().await, Err(RecvError::Lagged(7)));
        assert_eq!(slow.recv().await, Ok(7));
        assert_eq!(slow.recv().await, Ok(8));
        assert_eq!(slow.recv().await, Ok(9));
        assert_eq!(slow.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn dropping_the_sender_closes_after_the_queue_is_read() {
        let mut tx = Fanout::new(4);
        let mut rx = tx.subscribe();
        tx.send(&"last");
        drop(tx);
        assert_eq!(rx.recv().await, Ok("last"));
        assert_eq!(rx.recv().await, Err(RecvError::Closed));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_on_send() {
        let tx = Arc::new(Mutex::new(Fanout::new(4)));
        let mut rx = tx.lock().unwrap().subscribe();
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.lock().unwrap().send(&5u32);
        assert_eq!(waiter.await.unwrap(), Ok(5));
    }

    #[test]
    fn dropped_subscribers_are_forgotten_and_drained_queues_released() {
        let mut tx = Fanout::new(1024);
        let mut rx = tx.subscribe();
        let gone = tx.subscribe();
        drop(gone);
        for i in 0..500u32 {
            tx.send(&i);
        }
        assert_eq!(tx.receivers(), 1);
        for i in 0..500u32 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(rx.slot.lock().items.capacity(), 0);
    }
}
