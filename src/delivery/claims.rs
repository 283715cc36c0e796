//! Delivering from the Postgres store. Every replica runs this loop: it
//! claims due deliveries (as many as it has free slots, within each
//! webhook's limit counted across replicas) and attempts them with the same
//! code as the Kubernetes store. Nothing is held in memory between
//! attempts: a Retrying delivery waits in the database until it is due and
//! whichever replica claims it then sends it. Each replica keeps a
//! heartbeat in the store; a crashed replica's claims are taken over once
//! its heartbeat runs out (seconds), and a replica that cannot renew its
//! heartbeat stops sending before that happens.

use super::{DEFER, Engine, RETENTION_SWEEP, attempt};
use crate::resources::delivery::Delivery;
use crate::store::postgres::{ClaimLimits, Claimed, Postgres};
use crate::store::retention;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Every how many housekeeping rounds (`RETENTION_SWEEP`) waiting
/// deliveries are checked for one whose turn came unnoticed.
const SAFETY_NET_EVERY: u64 = 12;
/// How often the loop looks for due deliveries when nothing woke it
/// (ingest's notifications wake it for new ones; this catches retries).
const POLL: Duration = Duration::from_millis(250);
/// How long one heartbeat says this process is alive. Another replica
/// takes over its claims this long after it stops (a crash), and it stops
/// sending (cancelling requests in flight) before then if it cannot renew.
const ALIVE_FOR: Duration = Duration::from_secs(6);
/// How often it renews, and how much earlier than the database it gives up.
const RENEW_EVERY: Duration = Duration::from_secs(1);
const ALIVE_MARGIN: Duration = Duration::from_secs(2);

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// The store did not take this process's heartbeat in time: its claims
    /// are others' now. Start again with a new engine (a new claimant).
    LostContact,
}

/// Claims and delivers until `shutdown` resolves (or contact with the store
/// is lost), then waits for the attempts in flight to be recorded.
/// `namespace` limits the claims. The engine's leadership is this
/// process's liveness in the store: it must start expired.
pub async fn run(
    engine: Arc<Engine>,
    store: Arc<Postgres>,
    namespace: Option<String>,
    lease: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Ended {
    tokio::pin!(shutdown);
    // Alive first: nothing is claimed before the store knows this claimant.
    let mut backoff = Duration::from_millis(200);
    loop {
        let sent = tokio::time::Instant::now();
        match store.heartbeat(&engine.claimant, ALIVE_FOR).await {
            Ok(()) => {
                engine.leadership.extend(sent + ALIVE_FOR - ALIVE_MARGIN);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "postgres store: cannot register this replica yet")
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ended::Shutdown,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    let alive = tokio::spawn(keep_alive(
        store.clone(),
        engine.claimant.clone(),
        engine.leadership.clone(),
    ));
    let ended = deliver(&engine, &store, namespace, lease, shutdown).await;
    engine.drain().await;
    alive.abort();
    engine.summaries.flush().await;
    ended
}

/// Renews this process's heartbeat; gives up (cancelling what is in
/// flight) once the last one taken is about to run out in the store.
async fn keep_alive(store: Arc<Postgres>, claimant: String, alive: crate::leader::Leadership) {
    loop {
        let deadline = alive.deadline().unwrap_or_else(tokio::time::Instant::now);
        let sent = tokio::time::Instant::now();
        let renewed = tokio::time::timeout_at(deadline, store.heartbeat(&claimant, ALIVE_FOR)).await;
        match renewed {
            Ok(Ok(())) => alive.extend(sent + ALIVE_FOR - ALIVE_MARGIN),
            Ok(Err(e)) => tracing::warn!(error = %e, "postgres store: heartbeat not taken"),
            Err(_) => {}
        }
        if !alive.may_act() {
            tracing::warn!("postgres store: no heartbeat taken in time; this replica's claims go to others");
            alive.lose();
            return;
        }
        let next = alive.deadline().unwrap_or_else(tokio::time::Instant::now);
        tokio::time::sleep_until((tokio::time::Instant::now() + RENEW_EVERY).min(next)).await;
    }
}

async fn deliver(
    engine: &Arc<Engine>,
    store: &Arc<Postgres>,
    namespace: Option<String>,
    lease: Duration,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Ended {
    let namespaces: Vec<String> = namespace.into_iter().collect();
    let committed = store.listen();
    let freed = Arc::new(Notify::new());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let summaries = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.summaries.run().await })
    };
    // Off the claim loop: a slow sweep (one tenant's large history) must
    // not hold up anyone's claims.
    let reported_pending = Arc::new(AtomicI64::new(0));
    let housekeeping = tokio::spawn(housekeeping(
        engine.clone(),
        store.clone(),
        namespaces.clone(),
        reported_pending.clone(),
    ));
    let mut backoff = Duration::from_millis(200);
    let ended = loop {
        let room = if engine.leadership.may_act() {
            engine.global.size().saturating_sub(in_flight.load(Ordering::Relaxed))
        } else {
            0
        };
        let mut wait = POLL;
        // Long enough for the longest request any hub allows: an attempt
        // never starts a request its claim might not outlast.
        let lease = lease.max(engine.longest_request() + attempt::CLAIM_MARGIN + Duration::from_secs(5));
        if room > 0 {
            match store
                .claim(
                    &engine.claimant,
                    room,
                    lease,
                    &namespaces,
                    &ClaimLimits {
                        webhooks: &engine.webhook_limits(),
                        default: engine.default_webhook_limit() as i32,
                        per_namespace: engine.global.per_tenant(),
                    },
                )
                .await
            {
                Ok(claimed) => {
                    backoff = Duration::from_millis(200);
                    let full = claimed.len() == room;
                    for c in claimed {
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        spawn_attempt(engine, store, c, in_flight.clone(), freed.clone());
                    }
                    if full {
                        // More may be due: claim again once a slot frees.
                        wait = Duration::MAX;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "could not claim due deliveries");
                    wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let timer = tokio::time::sleep(wait.min(Duration::from_secs(3600)));
        tokio::select! {
            _ = &mut shutdown => break Ended::Shutdown,
            _ = engine.leadership.lost() => break Ended::LostContact,
            _ = committed.notified() => {}
            _ = freed.notified() => {}
            _ = timer => {}
        }
    };
    housekeeping.abort();
    let _ = housekeeping.await;
    engine.metrics.pending.dec_by(reported_pending.load(Ordering::Relaxed));
    summaries.abort();
    ended
}

/// Every `RETENTION_SWEEP`: webhook counts, the retention sweep, and the
/// pending gauge. `reported` is this engine's share of the gauge (engines
/// share it); every replica reports the store's count, so alerts take the
/// max, not the sum.
async fn housekeeping(engine: Arc<Engine>, store: Arc<Postgres>, namespaces: Vec<String>, reported: Arc<AtomicI64>) {
    let mut every = tokio::time::interval(RETENTION_SWEEP);
    for round in 0u64.. {
        every.tick().await;
        if round % SAFETY_NET_EVERY == SAFETY_NET_EVERY - 1 {
            match store.queue_firsts(&namespaces).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    deliveries = n,
                    "ordering keys: deliveries waiting on nothing were queued"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "ordering keys: could not check for deliveries waiting on nothing")
                }
            }
        }
        engine.count_webhooks();
        if let Err(e) = store.analyze_if_stale().await {
            tracing::debug!(error = %e, "could not refresh the deliveries table's statistics");
        }
        let (policies, default) = engine.retention_policies();
        if let Err(e) = store.sweep(&namespaces, &policies, default).await {
            tracing::warn!(error = %e, "retention: could not delete expired deliveries");
        }
        if let Ok(pending) = store.pending(&namespaces).await {
            engine
                .metrics
                .pending
                .inc_by(pending - reported.swap(pending, Ordering::Relaxed));
        }
    }
}

fn spawn_attempt(
    engine: &Arc<Engine>,
    store: &Arc<Postgres>,
    claimed: Claimed,
    in_flight: Arc<AtomicUsize>,
    freed: Arc<Notify>,
) {
    let (engine, store) = (engine.clone(), store.clone());
    engine.clone().in_flight.spawn(async move {
        attempt(&engine, &store, claimed).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        freed.notify_one();
    });
}

/// One claimed delivery: its slots, its attempt, and what follows.
async fn attempt(engine: &Arc<Engine>, store: &Postgres, Claimed { delivery, until }: Claimed) {
    let (ns, name) = (delivery.namespace().unwrap_or_default(), delivery.name_any());
    let webhook_limit = engine.webhook_limit(&ns, &delivery.spec.webhook);
    let permits = async {
        let w = webhook_limit.acquire_owned().await;
        let g = engine.global.acquire(&ns).await;
        (w, g)
    };
    let permits = tokio::select! {
        p = permits => Some(p),
        _ = engine.stop_starting.cancelled() => None,
    };
    let outcome = match permits {
        Some(_permits) if !engine.stop_starting.is_cancelled() => attempt::run(engine, &delivery, Some(until)).await,
        _ => attempt::Outcome::NotSent,
    };
    let release = |after: Duration| async move {
        if let Err(e) = store.release(&ns, &name, &engine.claimant, after).await {
            // The claim then simply runs out.
            tracing::debug!(delivery = %name, error = %e, "could not give a claim back");
        }
    };
    match outcome {
        attempt::Outcome::Recorded(stored, deactivation) => after_record(engine, store, &stored, deactivation).await,
        attempt::Outcome::Superseded(_) | attempt::Outcome::Gone => {}
        attempt::Outcome::NotSent => release(Duration::ZERO).await,
        attempt::Outcome::Deferred(why) => {
            tracing::warn!(delivery = %delivery.name_any(), reason = %why, "nothing sent; trying again shortly");
            release(DEFER).await;
        }
        attempt::Outcome::Unrecorded(why) => {
            // The claim runs out and the delivery is sent again, same id.
            tracing::error!(delivery = %delivery.name_any(), reason = %why, "an attempt's outcome is not recorded");
        }
    }
}

/// What follows a record (as in every store), and the deactivated
/// webhook's other deliveries brought forward to be cancelled.
async fn after_record(
    engine: &Arc<Engine>,
    store: &Postgres,
    stored: &Delivery,
    deactivation: Option<crate::resources::webhook::Deactivation>,
) {
    let deactivating = deactivation.is_some();
    engine.after_record(stored, deactivation).await;
    if deactivating {
        let ns = stored.namespace().unwrap_or_default();
        // Its other unfinished deliveries: attempted now, which records
        // them Cancelled with the reason.
        if let Err(e) = store.hasten(&ns, &stored.spec.webhook).await {
            tracing::warn!(webhook = %stored.spec.webhook, error = %e, "could not bring a deactivated webhook's deliveries forward; they are cancelled when due");
        }
    }
}

impl Engine {
    /// The limits of watched webhooks that differ from the default, for
    /// claims (which apply the default to the rest): a claim need not
    /// carry every webhook.
    fn webhook_limits(&self) -> Vec<(String, String, i32)> {
        let default = self.default_webhook_limit();
        self.webhooks
            .state()
            .iter()
            .filter_map(|w| {
                let ns = w.namespace().unwrap_or_default();
                let limit = self.webhook_limit_size(&ns, &w.name_any());
                (limit != default).then(|| (ns, w.name_any(), limit as i32))
            })
            .collect()
    }

    /// The limit of a webhook no cache knows yet.
    fn default_webhook_limit(&self) -> u32 {
        super::DEFAULT_CONCURRENCY_PER_WEBHOOK.min((self.global.size() / 4).max(1) as u32)
    }

    /// Every watched webhook's retention policy, and the default.
    fn retention_policies(&self) -> (Vec<(String, String, retention::Policy)>, retention::Policy) {
        let policies = self
            .webhooks
            .state()
            .iter()
            .map(|w| {
                let ns = w.namespace().unwrap_or_default();
                let hub = self.hubs.get(&ObjectRef::new(&w.spec.hub).within(&ns));
                (ns, w.name_any(), retention::Policy::of(hub.as_deref()))
            })
            .collect();
        (policies, retention::Policy::of(None))
    }
}
