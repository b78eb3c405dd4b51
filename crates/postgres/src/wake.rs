//! Waking the delivery workers after a commit, not inside it.
//!
//! A transaction that runs `NOTIFY` takes a database-wide lock at commit and keeps it until
//! its commit record is flushed, so writers that notify commit one at a time (pgbench, 16
//! clients, the journal alone: 2,700 transactions/s with the `NOTIFY` in the transaction,
//! 4,800/s without it). So a transaction run by [`in_tx!`](crate::in_tx) only *marks* that
//! it made deliveries due ([`mark_or_notify`]); once it has committed, [`committed`] sends
//! the `NOTIFY` from a short transaction of its own, coalesced per pool: while one is being
//! sent, further commits only ask for one more after it. A burst of writes thus costs a few
//! notifications, and the last commit of any burst is always followed by one. Workers of
//! the same process are woken directly as well ([`wake_here`]), without the round trip.
//!
//! Outside such a scope (inside a request-wide `Idempotency-Key` transaction, or a caller's
//! own transaction) [`mark_or_notify`] notifies inside the transaction, as before. A lost
//! notification (the process stops between the commit and the send) only delays: workers
//! also poll.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use diesel_async::AsyncPgConnection;
use tokio::sync::Notify;

use crate::Pool;

tokio::task_local! {
    /// Set while a transaction of [`in_tx!`](crate::in_tx) runs: whether it made
    /// deliveries due.
    static DUE: Cell<bool>;
}

/// Runs `f` (a transaction) with its wake-ups deferred: returns its output and whether it
/// made deliveries due (via [`mark_or_notify`]).
pub async fn deferred<F: Future>(f: F) -> (F::Output, bool) {
    DUE.scope(Cell::new(false), async move {
        let out = f.await;
        (out, DUE.with(Cell::get))
    })
    .await
}

/// Whether the running task's transaction defers its wake-ups; if so, records that it made
/// deliveries due. `false`: the caller must notify inside its transaction.
pub fn mark() -> bool {
    DUE.try_with(|due| due.set(true)).is_ok()
}

/// Whether the running task's transaction defers its wake-ups to its commit.
pub fn deferring() -> bool {
    DUE.try_with(|_| ()).is_ok()
}

/// Records that the transaction on `conn` made deliveries due: deferred to its commit
/// inside [`deferred`], else a `NOTIFY` in the transaction.
pub async fn mark_or_notify(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    if mark() {
        Ok(())
    } else {
        notify(conn).await
    }
}

/// Wakes the delivery workers: a `NOTIFY` on their channel, delivered when the transaction
/// it runs in commits (at once outside one).
pub(crate) async fn notify(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "SELECT pg_notify('{}', '')",
            crate::journal::DELIVERY_CHANNEL
        )),
        conn,
    )
    .await?;
    Ok(())
}

/// Coalesces sends per key: at most one in flight per key, and one more after it when asked
/// for meanwhile. A key is present while a send is in flight; its value says whether
/// another is wanted after it.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    sending: Mutex<HashMap<usize, bool>>,
}

impl Coalescer {
    fn sending(&self) -> std::sync::MutexGuard<'_, HashMap<usize, bool>> {
        self.sending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a send on `key`: `true` when the caller must send now (then call
    /// [`Coalescer::sent`] after each send until it answers `false`); `false` when a send in
    /// flight will be followed by another.
    pub(crate) fn request(&self, key: usize) -> bool {
        let mut sending = self.sending();
        match sending.get_mut(&key) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                sending.insert(key, false);
                true
            }
        }
    }

    /// After a send on `key`: `true` when another must follow (a commit came meanwhile).
    pub(crate) fn sent(&self, key: usize) -> bool {
        let mut sending = self.sending();
        match sending.get_mut(&key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                sending.remove(&key);
                false
            }
        }
    }

    /// Gives `key` up without sending (no runtime to send from, or the sender stopped):
    /// the next request sends again.
    pub(crate) fn release(&self, key: usize) {
        self.sending().remove(&key);
    }
}

static SENDERS: LazyLock<Coalescer> = LazyLock::new(Coalescer::default);

/// The wake-ups of this process's workers (registered by
/// [`listen_for_deliveries`](crate::listen_for_deliveries)).
static LOCAL: LazyLock<Mutex<Vec<Weak<Notify>>>> = LazyLock::new(Mutex::default);

/// Registers a worker of this process: [`committed`] wakes it at once, without waiting for
/// the `NOTIFY` to come back through the database.
pub fn wake_here(wake: &Arc<Notify>) {
    let mut local = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
    local.retain(|w| w.strong_count() > 0);
    local.push(Arc::downgrade(wake));
}

/// Call after a transaction that made deliveries due committed on a connection of `pool`:
/// wakes this process's workers at once and every worker of the database with a coalesced
/// `NOTIFY` sent in the background.
pub fn committed(pool: &Pool) {
    {
        let local = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
        for wake in local.iter().filter_map(Weak::upgrade) {
            wake.notify_one();
        }
    }
    // The pool's manager lives as long as the pool, at one address: the pool's identity.
    let key = std::ptr::from_ref(pool.manager()) as usize;
    if !SENDERS.request(key) {
        return;
    }
    let pool = pool.clone();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        SENDERS.release(key);
        return;
    };
    runtime.spawn(async move {
        // Frees the key however the task ends (a panic or a runtime shutting down included).
        struct Release(usize, bool);
        impl Drop for Release {
            fn drop(&mut self) {
                if !self.1 {
                    SENDERS.release(self.0);
                }
            }
        }
        let mut release = Release(key, false);
        loop {
            match pool.get().await {
                Ok(mut conn) => {
                    if let Err(e) = notify(&mut conn).await {
                        tracing::warn!(error = %e, "delivery NOTIFY failed; workers will poll");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery NOTIFY: no connection; workers will poll")
                }
            }
            if !SENDERS.sent(key) {
                release.1 = true;
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_request_sends_once() {
        let c = Coalescer::default();
        assert!(c.request(1));
        assert!(!c.sent(1));
        // Free again: the next request sends.
        assert!(c.request(1));
        assert!(!c.sent(1));
    }

    #[test]
    fn requests_during_a_send_make_exactly_one_more() {
        let c = Coalescer::default();
        assert!(c.request(1));
        for _ in 0..10 {
            assert!(!c.request(1));
        }
        assert!(c.sent(1), "commits came during the send: one more");
        assert!(!c.sent(1), "none came during the second");
        assert!(c.request(1));
    }

    #[test]
    fn a_released_key_sends_again() {
        let c = Coalescer::default();
        assert!(c.request(1));
        assert!(!c.request(1));
        c.release(1);
        assert!(c.request(1));
    }

    #[test]
    fn keys_are_apart() {
        let c = Coalescer::default();
        assert!(c.request(1));
        assert!(c.request(2));
        assert!(!c.request(1));
        assert!(!c.sent(2));
        assert!(c.sent(1));
        assert!(!c.sent(1));
    }

    #[tokio::test]
    async fn marks_only_inside_a_deferred_scope() {
        assert!(!mark(), "no scope: the caller notifies in its transaction");
        let ((), due) = deferred(async {}).await;
        assert!(!due);
        let (marked, due) = deferred(async { mark() }).await;
        assert!(marked && due);
    }
}
