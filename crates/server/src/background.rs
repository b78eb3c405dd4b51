//! The background work of a process, owned by one handle: every task is spawned through
//! it, sees one stop signal, and [`Background::stop`] returns only when each has ended.

use std::future::Future;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Owns the background tasks of a process (the delivery and replay workers, the LISTEN
/// wake-ups, the audit sealer, the partition keeper, the queue gauges).
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    /// No task yet.
    pub fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// The stop signal a task watches: it turns true once, when [`stop`](Self::stop) is
    /// called; a task must then finish what it holds and return.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Spawns `task` on the current runtime under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// The names of the tasks running, in the order they were started.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(name, _)| *name).collect()
    }

    /// Signals every task to stop and waits for each to end; an error names a task that
    /// panicked.
    pub async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        for (name, task) in self.tasks {
            task.await
                .with_context(|| format!("background task {name} failed"))?;
            tracing::debug!(task = name, "stopped");
        }
        Ok(())
    }
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn stop_returns_once_every_task_has_seen_the_signal_and_ended() {
        let mut bg = Background::new();
        let ended = Arc::new(AtomicUsize::new(0));
        for name in ["a", "b", "c"] {
            let mut stopping = bg.stopping();
            let ended = ended.clone();
            bg.spawn(name, async move {
                while !*stopping.borrow() {
                    if stopping.changed().await.is_err() {
                        return;
                    }
                }
                // Work left to finish after the signal.
                tokio::task::yield_now().await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(bg.names(), ["a", "b", "c"]);
        tokio::task::yield_now().await;
        assert_eq!(
            ended.load(Ordering::SeqCst),
            0,
            "no task ends before the signal"
        );
        bg.stop().await.unwrap();
        assert_eq!(ended.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_task_that_panicked_is_named() {
        let mut bg = Background::new();
        bg.spawn("sealer", async { panic!("boom") });
        let e = bg.stop().await.unwrap_err();
        assert!(format!("{e:#}").contains("sealer"), "{e:#}");
    }
}
