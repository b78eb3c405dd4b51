//! Combining the writes to one hot row: while a transaction holds a row's lock, the writes
//! that arrive for the same row queue here, in the process, instead of each holding a
//! connection while it waits on the row lock in PostgreSQL. When the transaction commits,
//! the writes that queued meanwhile run together as the next batch, in one transaction that
//! takes the lock once and applies them in arrival order.
//!
//! The order of the writes to one row and each one's result are exactly those of running
//! them one after the other: a batch only saves the lock hand-overs, the `BEGIN`/`COMMIT`
//! round trips and the re-reads of the row between them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// Per key, the writes waiting for the key's batch in progress to commit. A key is in the
/// map exactly while a batch of it is in progress.
pub(crate) struct Combiner<K, J> {
    queues: Mutex<HashMap<K, Vec<J>>>,
    max_batch: usize,
}

impl<K: Eq + Hash + Copy, J> Combiner<K, J> {
    /// A combiner whose batches hold at most `max_batch` writes (at least one).
    pub(crate) fn new(max_batch: usize) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues `job` behind the batch in progress on `key` and returns `None`; or, when no
    /// batch is in progress, marks `key` busy and hands `job` back: the caller runs it as a
    /// batch of its own and then asks [`next`](Self::next).
    pub(crate) fn join(&self, key: K, job: J) -> Option<J> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.get_mut(&key) {
            Some(waiting) => {
                waiting.push(job);
                None
            }
            None => {
                queues.insert(key, Vec::new());
                Some(job)
            }
        }
    }

    /// After a batch of `key` committed (or failed): the next batch, the oldest writes
    /// queued meanwhile (at most `max_batch`), which the caller runs next; or an empty
    /// batch, and `key` is free again.
    pub(crate) fn next(&self, key: K) -> Vec<J> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(waiting) = queues.get_mut(&key) else {
            return Vec::new();
        };
        if waiting.is_empty() {
            queues.remove(&key);
            return Vec::new();
        }
        let n = waiting.len().min(self.max_batch);
        waiting.drain(..n).collect()
    }

    /// Frees `key` and drops the writes queued on it (their callers see their reply channel
    /// closed): for a batch runner that stopped without finishing.
    pub(crate) fn abandon(&self, key: K) {
        let dropped = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        drop(dropped);
    }

    /// Keys with a batch in progress.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_write_leads_and_the_others_queue_in_order() {
        let c = Combiner::new(10);
        assert_eq!(c.join(1, "a"), Some("a"));
        assert_eq!(c.join(1, "b"), None);
        assert_eq!(c.join(1, "c"), None);
        // Another key is independent.
        assert_eq!(c.join(2, "x"), Some("x"));
        assert_eq!(c.next(1), vec!["b", "c"]);
        // Queued while b and c ran.
        assert_eq!(c.join(1, "d"), None);
        assert_eq!(c.next(1), vec!["d"]);
        assert!(c.next(1).is_empty());
        // Free again: the next write leads.
        assert_eq!(c.join(1, "e"), Some("e"));
        assert_eq!(c.busy(), 2);
    }

    #[test]
    fn batches_hold_at_most_max_batch_writes() {
        let c = Combiner::new(2);
        assert_eq!(c.join(7, 0), Some(0));
        for i in 1..=5 {
            assert_eq!(c.join(7, i), None);
        }
        assert_eq!(c.next(7), vec![1, 2]);
        assert_eq!(c.next(7), vec![3, 4]);
        assert_eq!(c.next(7), vec![5]);
        assert!(c.next(7).is_empty());
        assert_eq!(c.busy(), 0);
    }

    #[test]
    fn abandon_frees_the_key_and_drops_the_queue() {
        let c = Combiner::new(4);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        assert!(c.join(1, None).is_some());
        assert!(c.join(1, Some(tx)).is_none());
        c.abandon(1);
        // The queued write's reply channel is closed.
        assert!(rx.recv().is_err());
        assert_eq!(c.busy(), 0);
        assert!(c.join(1, None).is_some());
    }
}
