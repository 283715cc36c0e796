//! Where the store claims, this process's liveness in it: a heartbeat
//! before the first claim and renewed every second. Another replica takes
//! over its claims once it stops (a crash), and it stops sending
//! (cancelling requests in flight) before then if it cannot renew.

use crate::leader::Leadership;
use crate::store::Queue;
use std::sync::Arc;
use std::time::Duration;

/// How long one heartbeat says this process is alive.
const ALIVE_FOR: Duration = Duration::from_secs(6);
/// How often it renews, and how much earlier than the store it gives up.
const RENEW_EVERY: Duration = Duration::from_secs(1);
const ALIVE_MARGIN: Duration = Duration::from_secs(2);

/// Registers `claimant` (retrying with backoff); `false` if `shutdown`
/// came first. `alive` is extended to just short of the heartbeat's end.
pub async fn register(
    queue: &dyn Queue,
    claimant: &str,
    alive: &Leadership,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        let sent = tokio::time::Instant::now();
        match queue.heartbeat(claimant, ALIVE_FOR).await {
            Ok(()) => {
                alive.extend(sent + ALIVE_FOR - ALIVE_MARGIN);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "the store does not take this replica's heartbeat yet")
            }
        }
        tokio::select! {
            _ = shutdown.as_mut() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Renews the heartbeat; gives up (cancelling what is in flight) once the
/// last one taken is about to run out in the store.
pub async fn keep_alive(queue: Arc<dyn Queue>, claimant: String, alive: Leadership) {
    loop {
        let deadline = alive.deadline().unwrap_or_else(tokio::time::Instant::now);
        let sent = tokio::time::Instant::now();
        let renewed = tokio::time::timeout_at(deadline, queue.heartbeat(&claimant, ALIVE_FOR)).await;
        match renewed {
            Ok(Ok(())) => alive.extend(sent + ALIVE_FOR - ALIVE_MARGIN),
            Ok(Err(e)) => tracing::warn!(error = %e, "the store did not take this replica's heartbeat"),
            Err(_) => {}
        }
        if !alive.may_act() {
            tracing::warn!("no heartbeat taken in time; this replica's claims go to others");
            alive.lose();
            return;
        }
        let next = alive.deadline().unwrap_or_else(tokio::time::Instant::now);
        tokio::time::sleep_until((tokio::time::Instant::now() + RENEW_EVERY).min(next)).await;
    }
}
