//! [`BoundedQueue`]: a FIFO that drops its oldest entry when full, and
//! counts what it dropped.
//!
//! Upstream data waits here while EnOS is unreachable. Dropping the oldest
//! keeps the newest readings, which is what a monitoring system wants after
//! an outage; the count makes the loss visible in the status.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

/// A bounded, drop-oldest, multi-producer queue.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    /// The entries, oldest first.
    items: Mutex<VecDeque<T>>,
    /// At most this many entries are kept.
    capacity: usize,
    /// Entries dropped because the queue was full, since start.
    dropped: AtomicU64,
    /// Wakes the consumer when something was pushed.
    pushed: Notify,
}

impl<T> BoundedQueue<T> {
    /// An empty queue holding at most `capacity` (at least 1) entries.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        BoundedQueue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
            capacity,
            dropped: AtomicU64::new(0),
            pushed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A panic while holding the lock cannot leave a VecDeque broken.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `item`; when full, drops the oldest entry first and returns
    /// `true`.
    pub fn push(&self, item: T) -> bool {
        let dropped = {
            let mut items = self.lock();
            let dropped = if items.len() >= self.capacity {
                items.pop_front();
                true
            } else {
                false
            };
            items.push_back(item);
            dropped
        };
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.pushed.notify_one();
        dropped
    }

    /// Puts back an entry taken by [`BoundedQueue::pop`] that could not be
    /// delivered, at the front. Dropped (and counted) if newer entries have
    /// filled the queue meanwhile: they win.
    pub fn push_front(&self, item: T) {
        let mut items = self.lock();
        if items.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            items.push_front(item);
        }
    }

    /// Takes the oldest entry.
    pub fn pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves once something is (or was, since the last call) pushed.
    pub async fn wait_pushed(&self) {
        if !self.is_empty() {
            return;
        }
        self.pushed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_and_counts() {
        let q = BoundedQueue::new(3);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.pop(), Some(2));
        q.push_front(2);
        q.push(5);
        // Full again: a put-back entry loses to the newer ones.
        q.push_front(1);
        assert_eq!(q.dropped(), 4);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, [3, 4, 5]);
    }

    #[tokio::test]
    async fn wakes_the_consumer() {
        let q = std::sync::Arc::new(BoundedQueue::new(2));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.wait_pushed().await;
            q2.pop()
        });
        tokio::task::yield_now().await;
        q.push("x");
        assert_eq!(waiter.await.expect("task"), Some("x"));
    }
}
