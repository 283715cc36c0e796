//! The delivery engine: takes due deliveries from the store's schedule and
//! makes attempts under a per-webhook and a global concurrency limit, so a
//! slow webhook never holds up another. One loop for every store: the
//! Kubernetes store's schedule watches Delivery objects and hands them out
//! as they come due (one leader delivers); the Postgres store's schedule
//! claims them for this replica (every replica delivers, each within its
//! room).

pub mod attempt;
pub mod auth;
pub mod deactivation;
#[cfg(test)]
mod engine_tests;
pub mod history;
pub mod http;
pub mod liveness;
pub mod notify;
pub mod outcome;
pub mod relay;
pub mod request;
pub mod retry;
pub mod signing;
pub mod slots;

use crate::leader::Leadership;
use crate::metrics::{Metrics, StateLabel};
use crate::resources::delivery::Delivery;
use crate::resources::{Hub, Webhook};
use crate::secret_cache::SecretCache;
use crate::store::{Due, Limits, Loaded, Queue, Scope, Settled};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests in flight to one webhook unless its hub says otherwise.
pub const DEFAULT_CONCURRENCY_PER_WEBHOOK: u32 = 4;
/// After the longest request timeout, how long shutdown waits for the
/// records of attempts in flight.
const RECORD_GRACE: Duration = Duration::from_secs(15);
/// How long a deposed leader tries to record outcomes it already has (its
/// writes are conditional, so they cannot overwrite the new leader's).
const LOST_GRACE: Duration = Duration::from_secs(5);
/// Whole deliveries waiting for a slot at most; more wait in brief.
const MAX_WAITING_WHOLE: usize = 1024;
/// How often the store's housekeeping runs (retention, gauges).
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often a replica without room (or not yet alive) looks again.
const ROOM_POLL: Duration = Duration::from_millis(250);

type Key = (String, String);

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// Where the store claims: it did not take this process's heartbeat in
    /// time, so its claims are others' now. Start again with a new engine
    /// (a new claimant).
    LostContact,
}

/// What the controller decides for every engine it runs.
#[derive(Clone)]
pub struct Options {
    /// Requests in flight at once, shared fairly by tenants and all engines.
    pub global: Arc<slots::Slots>,
    pub leadership: Leadership,
    pub egress_floor: crate::egress::Floor,
    /// The operator's proxy every request goes through, if any.
    pub egress_proxy: Option<Arc<relay::EgressProxy>>,
    /// The size a Delivery may reach as stored.
    pub delivery_budget: usize,
    /// Where deliveries live.
    pub store: crate::store::Store,
}

/// Shared by every attempt.
pub struct Engine {
    pub(crate) client: Client,
    pub(crate) webhooks: Store<Webhook>,
    pub(crate) hubs: Store<Hub>,
    pub(crate) secrets: Arc<SecretCache>,
    pub(crate) http: http::Clients,
    pub(crate) tokens: auth::Tokens,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) summaries: history::Summaries,
    global: Arc<slots::Slots>,
    per_webhook: Mutex<HashMap<Key, (u32, Arc<Semaphore>)>>,
    /// Webhooks this engine deactivated: treated as inactive until the cache
    /// shows a generation newer than the deactivating write (`None` while
    /// that write is under way), so no attempt slips out in between.
    deactivated: Mutex<HashMap<Key, (Option<i64>, String)>>,
    recorder: Recorder,
    /// Whether this process may send; checked before each request.
    pub(crate) leadership: Leadership,
    /// Networks no delivery may reach, whatever a Hub says.
    pub(crate) egress_floor: crate::egress::Floor,
    pub(crate) delivery_budget: usize,
    /// The deliveries as this process writes them (notifications).
    pub(crate) deliveries: Arc<dyn crate::store::Deliveries>,
    /// Where attempts are recorded.
    pub(crate) records: Arc<dyn crate::store::Records>,
    /// Webhooks' turns at their rate limits.
    pub(crate) turns: Arc<dyn crate::store::Turns>,
    /// Where deliveries live (the schedule `run` takes them from).
    store: crate::store::Store,
    /// Who this process is in the store's claims.
    pub(crate) claimant: String,
    /// Cancelled on shutdown: attempts not yet started are not started.
    stop_starting: CancellationToken,
    /// Every attempt task, so shutdown can wait for them to be recorded.
    in_flight: TaskTracker,
    /// Whole deliveries waiting for a slot (see `MAX_WAITING_WHOLE`).
    waiting_whole: AtomicUsize,
    /// This engine's share of the webhook gauges (engines share them).
    reported_webhooks: Mutex<(i64, i64)>,
}

impl Engine {
    pub fn new(
        client: Client,
        webhooks: Store<Webhook>,
        hubs: Store<Hub>,
        secrets: Arc<SecretCache>,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Arc<Self> {
        let Options {
            global,
            leadership,
            egress_floor,
            egress_proxy,
            delivery_budget,
            store,
        } = options;
        let (deliveries, records) = (store.deliveries(&client), store.records(&client));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hookrelay".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Self {
            summaries: history::Summaries::new(client.clone(), webhooks.clone()),
            client,
            webhooks,
            hubs,
            secrets,
            http: http::Clients::new(egress_proxy),
            tokens: auth::Tokens::default(),
            metrics,
            global,
            per_webhook: Mutex::default(),
            deactivated: Mutex::default(),
            recorder,
            leadership,
            egress_floor,
            delivery_budget,
            deliveries,
            records,
            turns: store.turns(),
            store,
            // Unique per process: a restarted Pod keeps its name, not its claims.
            claimant: format!("{}/{}", crate::identity(), uuid::Uuid::new_v4().simple()),
            stop_starting: CancellationToken::new(),
            in_flight: TaskTracker::new(),
            reported_webhooks: Mutex::default(),
            waiting_whole: AtomicUsize::new(0),
        })
    }

    /// Updates the active/inactive webhook gauges from the cache.
    fn count_webhooks(&self) {
        let (active, inactive) = self
            .webhooks
            .state()
            .iter()
            .fold((0, 0), |(a, i), w| if w.spec.active { (a + 1, i) } else { (a, i + 1) });
        let mut reported = self.reported_webhooks.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = |state: &str| {
            self.metrics
                .webhooks
                .get_or_create(&StateLabel { state: state.into() })
                .clone()
        };
        gauge("active").inc_by(active - reported.0);
        gauge("inactive").inc_by(inactive - reported.1);
        *reported = (active, inactive);
    }

    /// The limiter of one webhook, sized from its hub's setting but never
    /// above a quarter of the global limit.
    fn webhook_limit(&self, ns: &str, webhook: &str) -> Arc<Semaphore> {
        let size = self.webhook_limit_size(ns, webhook);
        let mut limits = self.per_webhook.lock().unwrap_or_else(|e| e.into_inner());
        let entry = limits
            .entry((ns.to_string(), webhook.to_string()))
            .or_insert_with(|| (size, Arc::new(Semaphore::new(size as usize))));
        if entry.0 != size {
            *entry = (size, Arc::new(Semaphore::new(size as usize)));
        }
        entry.1.clone()
    }

    fn webhook_limit_size(&self, ns: &str, webhook: &str) -> u32 {
        self.webhooks
            .get(&ObjectRef::new(webhook).within(ns))
            .and_then(|w| self.hubs.get(&ObjectRef::new(&w.spec.hub).within(ns)))
            .and_then(|h| h.spec.delivery.as_ref().and_then(|d| d.concurrency_per_webhook))
            .unwrap_or(DEFAULT_CONCURRENCY_PER_WEBHOOK)
            .min((self.global.size() / 4).max(1) as u32)
    }

    /// The limits of watched webhooks that differ from the default, for
    /// the store's schedule (which applies the default to the rest): a
    /// claim need not carry every webhook. A paused webhook's is 0.
    fn webhook_limits(&self) -> Vec<(String, String, u32)> {
        let default = self.default_webhook_limit();
        self.webhooks
            .state()
            .iter()
            .filter_map(|w| {
                let ns = w.namespace().unwrap_or_default();
                let limit = match w.spec.paused {
                    true => 0,
                    false => self.webhook_limit_size(&ns, &w.name_any()),
                };
                (limit != default).then(|| (ns, w.name_any(), limit))
            })
            .collect()
    }

    /// The limit of a webhook no cache knows yet.
    fn default_webhook_limit(&self) -> u32 {
        DEFAULT_CONCURRENCY_PER_WEBHOOK.min((self.global.size() / 4).max(1) as u32)
    }

    /// What a store that claims needs to respect each webhook's limit
    /// across replicas.
    fn limits(&self) -> Limits {
        Limits {
            webhooks: self.webhook_limits(),
            default: self.default_webhook_limit(),
            per_namespace: self.global.per_tenant(),
        }
    }

    /// Delivers what the store's schedule for `namespace` (all, `None`)
    /// hands out until `shutdown` resolves (or, where the store claims,
    /// contact with it is lost), then waits for the attempts in flight to be
    /// recorded (after a lost lease or contact only briefly). Where the
    /// store claims, the engine's leadership is this process's liveness in
    /// the store (it must start expired) and `lease` how long a claim lasts.
    pub async fn run(
        self: Arc<Self>,
        namespace: Option<String>,
        lease: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Ended {
        tokio::pin!(shutdown);
        let queue = self.store.queue(Scope {
            client: self.client.clone(),
            namespace,
            webhooks: self.webhooks.clone(),
            hubs: self.hubs.clone(),
            metrics: self.metrics.clone(),
        });
        let alive = if queue.claims() {
            // Alive first: nothing is claimed before the store knows this claimant.
            if !liveness::register(queue.as_ref(), &self.claimant, &self.leadership, &mut shutdown).await {
                return Ended::Shutdown;
            }
            Some(tokio::spawn(liveness::keep_alive(
                queue.clone(),
                self.claimant.clone(),
                self.leadership.clone(),
            )))
        } else {
            None
        };
        let summaries = {
            let engine = self.clone();
            tokio::spawn(async move { engine.summaries.run().await })
        };
        // Off the delivery loop: a slow sweep (one tenant's large history)
        // must not hold up anyone's deliveries.
        let housekeeping = tokio::spawn(housekeeping(self.clone(), queue.clone()));
        let room = Room::default();
        let stop = CancellationToken::new();
        let (due_tx, mut due_rx) = mpsc::unbounded_channel::<Vec<Due>>();
        let feeder = tokio::spawn(feed(
            self.clone(),
            queue.clone(),
            lease,
            room.clone(),
            stop.clone(),
            due_tx,
        ));
        let ended = loop {
            tokio::select! {
                _ = &mut shutdown => break Ended::Shutdown,
                _ = self.leadership.lost(), if queue.claims() => break Ended::LostContact,
                batch = due_rx.recv() => match batch {
                    Some(batch) => {
                        for due in batch {
                            self.clone().spawn_attempt(queue.clone(), due, room.clone());
                        }
                    }
                    None => break Ended::Shutdown,
                },
            }
        };
        stop.cancel();
        let _ = feeder.await;
        // Handed out but never started: given back.
        due_rx.close();
        while let Ok(batch) = due_rx.try_recv() {
            for due in batch {
                queue.settle(&due, &self.claimant, Settled::NotSent).await;
            }
        }
        self.drain().await;
        housekeeping.abort();
        let _ = housekeeping.await;
        if let Some(alive) = alive {
            alive.abort();
        }
        summaries.abort();
        if queue.claims() || !self.leadership.is_lost() {
            self.summaries.flush().await;
        }
        ended
    }

    /// A webhook's `delivery.rateLimit` (else its hub's), from the caches.
    fn rate_of(&self, ns: &str, webhook: &str) -> Option<crate::store::turns::Rate> {
        let webhook = self.webhooks.get(&ObjectRef::new(webhook).within(ns))?;
        let hub = self.hubs.get(&ObjectRef::new(&webhook.spec.hub).within(ns));
        let limit = webhook.spec.rate_limit(hub.as_ref().map(|h| &h.spec))?;
        Some(crate::store::turns::Rate::of(&limit))
    }

    /// Waits for a delivery's turn at its webhook's rate: `Ok(how long it
    /// waited)` once it has one; `Err(how long until its turn)` when the
    /// wait would outlast its claim (it is given back, unattempted: waiting
    /// is not an attempt).
    async fn wait_for_turn(&self, due: &Due, rate: crate::store::turns::Rate) -> Result<Duration, Duration> {
        let started = std::time::Instant::now();
        loop {
            let wait = match self.turns.take_turn(&due.namespace, &due.webhook, rate).await {
                Ok(None) => return Ok(started.elapsed()),
                Ok(Some(wait)) => wait,
                Err(e) => {
                    tracing::warn!(webhook = %due.webhook, namespace = %due.namespace, error = %e, "could not take a turn at the rate limit; trying again shortly");
                    return Err(crate::store::DEFER);
                }
            };
            self.metrics.rate_limit_waits.inc();
            self.metrics.rate_limit_wait_seconds.inc_by(wait.as_secs_f64());
            let needed = std::time::Instant::now() + wait + self.longest_request() * 2 + attempt::CLAIM_MARGIN;
            if due.claimed_until.is_some_and(|until| needed > until) {
                return Err(wait);
            }
            // At least a millisecond: a turn due in a hair is not a busy loop.
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Makes an attempt of a due delivery once it holds its slots, and tells
    /// the store what became of it.
    fn spawn_attempt(self: Arc<Self>, queue: Arc<dyn Queue>, mut due: Due, room: Room) {
        let tracker = self.in_flight.clone();
        tracker.spawn(async move {
            // A whole delivery waits for a slot only while few do: past that
            // it waits in brief and is loaded when its turn comes, so a
            // backlog coming due at once costs little memory.
            let waiting = match due.delivery {
                Some(_) if self.waiting_whole.fetch_add(1, AtomicOrdering::Relaxed) >= MAX_WAITING_WHOLE => {
                    self.waiting_whole.fetch_sub(1, AtomicOrdering::Relaxed);
                    due.delivery = None;
                    false
                }
                Some(_) => true,
                None => false,
            };
            // The webhook's own limit first, then its turn at its rate
            // limit: waiting for either holds no global permit, so a slow
            // or rate-limited webhook cannot starve the others.
            let webhook_limit = self.webhook_limit(&due.namespace, &due.webhook);
            let permits = async {
                let w = webhook_limit.acquire_owned().await;
                let waited = match self.rate_of(&due.namespace, &due.webhook) {
                    Some(rate) => self.wait_for_turn(&due, rate).await?,
                    None => Duration::ZERO,
                };
                let g = self.global.acquire(&due.namespace).await;
                Ok((w, g, waited))
            };
            let permits = tokio::select! {
                p = permits => Some(p),
                _ = self.stop_starting.cancelled() => None,
            };
            if waiting {
                self.waiting_whole.fetch_sub(1, AtomicOrdering::Relaxed);
            }
            let settled = match permits {
                _ if self.stop_starting.is_cancelled() => Settled::NotSent,
                None => Settled::NotSent,
                // No turn within its claim: given back, due at its turn.
                Some(Err(after)) => Settled::Later(after),
                Some(Ok((_webhook_permit, _global_permit, waited))) => {
                    tracing::debug!(target: crate::metrics::STAGES, delivery = %due.name, stage = "slot", "slots granted");
                    // Boxed: a task waiting for its slot holds only what is above.
                    Box::pin(self.attempt_due(&queue, &due, waited)).await
                }
            };
            queue.settle(&due, &self.claimant, settled).await;
            room.free();
        });
    }

    /// The attempt of a due delivery holding its slots. One handed out
    /// without the delivery is loaded only now (a backlog coming due at
    /// once is read as fast as it can be sent, not all at once).
    async fn attempt_due(self: &Arc<Self>, queue: &Arc<dyn Queue>, due: &Due, rate_limit_wait: Duration) -> Settled {
        let (ns, name) = (&due.namespace, &due.name);
        let delivery: Arc<Delivery> = match &due.delivery {
            Some(d) => d.clone(),
            None => match queue.load(due).await {
                Ok(Loaded::Due(d)) => Arc::new(d),
                // Changed meanwhile (finished, or due later): rescheduled.
                Ok(Loaded::NotDue(d)) => return Settled::Superseded(d),
                Ok(Loaded::Gone) => return Settled::Gone,
                Err(why) => {
                    tracing::warn!(delivery = %name, namespace = %ns, reason = %why, "nothing sent; trying again shortly");
                    return Settled::Deferred;
                }
            },
        };
        match attempt::run(self, &delivery, due.claimed_until, rate_limit_wait).await {
            attempt::Outcome::Recorded(stored, deactivation) => {
                if let Some(deactivation) = &deactivation {
                    // Before anything else of the webhook is attempted.
                    self.mark_deactivated(ns, &due.webhook, deactivation);
                }
                let (engine, queue, recorded) = (self.clone(), queue.clone(), stored.clone());
                // Tracked: a stop waits for the decision to be written (within
                // its grace), not only for the record.
                self.in_flight.spawn(async move {
                    let deactivating = deactivation.is_some();
                    engine.after_record(&recorded, deactivation).await;
                    if deactivating {
                        // Its other unfinished deliveries: attempted now,
                        // which records them Cancelled with the reason.
                        let ns = recorded.namespace().unwrap_or_default();
                        queue.hasten(&ns, &recorded.spec.webhook).await;
                    }
                });
                Settled::Recorded(*stored)
            }
            attempt::Outcome::Superseded(stored) => Settled::Superseded(*stored),
            attempt::Outcome::Gone => Settled::Gone,
            attempt::Outcome::NotSent => Settled::NotSent,
            attempt::Outcome::Paused => Settled::Paused,
            attempt::Outcome::Deferred(why) => {
                tracing::warn!(delivery = %name, namespace = %ns, reason = %why, "nothing sent; trying again shortly");
                Settled::Deferred
            }
            attempt::Outcome::Unrecorded(why) => {
                tracing::error!(delivery = %name, namespace = %ns, reason = %why, "an attempt's outcome is not recorded");
                Settled::Unrecorded(delivery.metadata.resource_version.clone())
            }
        }
    }

    /// Stops starting attempts and waits for those in flight: for a
    /// graceful stop as long as the longest request allowed plus time to
    /// record it; after losing the lease only briefly (requests were
    /// cancelled, and records are conditional).
    async fn drain(&self) {
        self.stop_starting.cancel();
        self.in_flight.close();
        let grace = if self.leadership.is_lost() {
            LOST_GRACE
        } else {
            self.longest_request() + RECORD_GRACE
        };
        if !self.in_flight.is_empty() {
            tracing::info!(
                attempts = self.in_flight.len(),
                grace_s = grace.as_secs(),
                "waiting for attempts in flight to finish and be recorded"
            );
        }
        if tokio::time::timeout(grace, self.in_flight.wait()).await.is_err() {
            tracing::warn!(
                attempts = self.in_flight.len(),
                "attempts still unrecorded at shutdown; the next leader sends them again under the same id"
            );
        }
    }

    /// The longest a request may take under any watched hub's settings.
    fn longest_request(&self) -> Duration {
        self.hubs
            .state()
            .iter()
            .filter_map(|h| h.spec.delivery.as_ref())
            .map(|d| {
                d.timeout.map(Into::into).unwrap_or(attempt::DEFAULT_TIMEOUT)
                    + d.connect_timeout
                        .map(Into::into)
                        .unwrap_or(attempt::DEFAULT_CONNECT_TIMEOUT)
            })
            .max()
            .unwrap_or(attempt::DEFAULT_TIMEOUT + attempt::DEFAULT_CONNECT_TIMEOUT)
    }
}

/// Deliveries handed to this engine and not yet settled, for stores that
/// claim only as many as there is room for.
#[derive(Clone, Default)]
struct Room {
    taken: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl Room {
    fn free(&self) {
        self.taken.fetch_sub(1, AtomicOrdering::Relaxed);
        self.freed.notify_one();
    }
}

/// Takes due deliveries from the schedule for the engine until `stop`:
/// where the store claims, as many as there is room for (none while this
/// process may not act).
async fn feed(
    engine: Arc<Engine>,
    queue: Arc<dyn Queue>,
    lease: Duration,
    room: Room,
    stop: CancellationToken,
    out: mpsc::UnboundedSender<Vec<Due>>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let free = if !queue.claims() {
            usize::MAX
        } else if engine.leadership.may_act() {
            engine
                .global
                .size()
                .saturating_sub(room.taken.load(AtomicOrdering::Relaxed))
        } else {
            0
        };
        if free == 0 {
            tokio::select! {
                _ = room.freed.notified() => {}
                _ = tokio::time::sleep(ROOM_POLL) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        // Long enough for a token request and the longest request any hub
        // allows (OAuth 2.0): an attempt never starts a request its claim
        // might not outlast.
        let lease = lease.max(engine.longest_request() * 2 + attempt::CLAIM_MARGIN + Duration::from_secs(5));
        let limits = if queue.reads_limits() {
            engine.limits()
        } else {
            Limits::default()
        };
        let next = tokio::select! {
            next = queue.next(&engine.claimant, free, lease, &limits) => next,
            _ = stop.cancelled() => return,
        };
        match next {
            // None due (the store waited a little): asked again with the
            // limits as they are now.
            Ok(batch) if batch.is_empty() => backoff = Duration::from_millis(200),
            Ok(batch) => {
                backoff = Duration::from_millis(200);
                room.taken.fetch_add(batch.len(), AtomicOrdering::Relaxed);
                if out.send(batch).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "could not take due deliveries");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Every `HOUSEKEEPING`: the webhook gauges and the store's housekeeping.
async fn housekeeping(engine: Arc<Engine>, queue: Arc<dyn Queue>) {
    let mut every = tokio::time::interval(HOUSEKEEPING);
    for round in 0u64.. {
        every.tick().await;
        engine.count_webhooks();
        queue.housekeeping(round).await;
    }
}
