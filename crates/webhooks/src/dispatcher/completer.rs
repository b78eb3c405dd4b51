//! Completion batching: results are written back in batches, retried while storage fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error};

use super::{
    stopping, wait_for_shutdown, DispatcherStats, STORAGE_BACKOFF_MAX, STORAGE_BACKOFF_MIN,
};
use crate::{Completion, DeliveryQueue};

/// Writes completions in batches; retries failed writes until shutdown.
///
/// An urgent completion (the head of a FIFO lane: the next delivery of its webhook waits for
/// it) is written without waiting for company, and the claim loop is woken after it.
pub(super) async fn run_completer(
    queue: Arc<dyn DeliveryQueue>,
    mut rx: mpsc::Receiver<(Completion, bool)>,
    batch: usize,
    flush: Duration,
    stats: Arc<DispatcherStats>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut incoming = Vec::with_capacity(batch);
    let mut buf = Vec::with_capacity(batch);
    loop {
        if rx.recv_many(&mut incoming, batch).await == 0 {
            return;
        }
        let mut urgent = take(&mut incoming, &mut buf);
        let deadline = tokio::time::Instant::now() + flush;
        while buf.len() < batch && !urgent {
            let room = batch - buf.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut incoming, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => urgent = take(&mut incoming, &mut buf),
            }
        }
        stats.completed_batch(buf.len());
        write_completions(queue.as_ref(), &mut buf, &mut shutdown).await;
        if urgent {
            wake.notify_one();
        }
    }
}

/// Moves `incoming` into `buf`; whether any of them was urgent.
fn take(incoming: &mut Vec<(Completion, bool)>, buf: &mut Vec<Completion>) -> bool {
    let mut urgent = false;
    for (c, u) in incoming.drain(..) {
        urgent |= u;
        buf.push(c);
    }
    urgent
}

/// Writes `buf` and empties it, retrying storage errors with backoff until shutdown.
async fn write_completions(
    queue: &dyn DeliveryQueue,
    buf: &mut Vec<Completion>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(STORAGE_BACKOFF_MIN, STORAGE_BACKOFF_MAX);
    loop {
        match queue.complete(buf.clone()).await {
            Ok(applied) => {
                if applied < buf.len() {
                    debug!(
                        skipped = buf.len() - applied,
                        "some completions were not applied: their leases had expired"
                    );
                }
                buf.clear();
                return;
            }
            Err(e) if stopping(shutdown) => {
                error!(
                    error = %e,
                    dropped = buf.len(),
                    "could not record delivery results while shutting down; their leases will expire and they will be attempted again"
                );
                buf.clear();
                return;
            }
            Err(e) => {
                let wait = backoff.next_delay();
                error!(
                    error = %e,
                    pending = buf.len(),
                    retry_in_ms = millis(wait),
                    "recording delivery results failed; will retry"
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wait_for_shutdown(shutdown) => {}
                }
            }
        }
    }
}

/// Doubling delays between storage retries.
pub(super) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = current.saturating_mul(2).min(self.max);
        current
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
