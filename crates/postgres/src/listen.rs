//! Wake-ups: `LISTEN` on the channel the journal notifies, on a connection of its own.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};

use crate::journal::DELIVERY_CHANNEL;

/// Wakes `wake` whenever new deliveries are committed, until `shutdown`. Reconnects after
/// any failure; workers also poll, so a lost notification only delays, never loses.
pub async fn listen_for_deliveries(
    database_url: String,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Commits in this process wake it directly too.
    crate::wake::wake_here(&wake);
    let mut backoff = Duration::from_millis(250);
    while !*shutdown.borrow() {
        match listen_once(&database_url, &wake, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "delivery LISTEN connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn listen_once(
    url: &str,
    wake: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), diesel::result::Error> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| diesel::result::Error::QueryBuilderError(Box::new(e)))?;
    diesel::sql_query(format!("LISTEN {DELIVERY_CHANNEL}"))
        .execute(&mut conn)
        .await?;
    // The queue may have filled while we were not listening.
    wake.notify_one();
    let mut stream = std::pin::pin!(conn.notifications_stream());
    loop {
        tokio::select! {
            n = stream.next() => match n {
                Some(Ok(_)) => wake.notify_one(),
                Some(Err(e)) => return Err(e),
                None => return Err(diesel::result::Error::BrokenTransactionManager),
            },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
