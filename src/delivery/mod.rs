//! The delivery engine: watches Deliveries, keeps the unfinished ones in a
//! timer queue at their due time, and makes attempts under a per-webhook and
//! a global concurrency limit, so a slow webhook never holds up another.
//!
//! Only unfinished Deliveries are held in memory, and those due more than
//! 30 s ahead only in brief (read again when due); finished ones pass
//! through the watch and are dropped. State lives in the Delivery status, so
//! a restarted engine resumes every unfinished delivery at `nextAttemptAt`.

pub mod attempt;
pub mod auth;
pub mod claims;
pub mod deactivation;
pub mod history;
pub mod http;
pub mod notify;
pub mod ordering;
pub mod outcome;
pub mod request;
pub mod retry;
pub mod signing;
pub mod slots;

use crate::leader::Leadership;
use crate::metrics::{Metrics, StateLabel};
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::{Hub, Webhook};
use crate::secret_cache::SecretCache;
use crate::store::retention;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};

/// Requests in flight to one webhook unless its hub says otherwise.
pub const DEFAULT_CONCURRENCY_PER_WEBHOOK: u32 = 4;
/// Wait before trying again an attempt that was deferred before sending.
const DEFER: Duration = Duration::from_secs(5);
/// The latest a retry can be due: the longest retry window allowed, plus
/// slack. A later `nextAttemptAt` is nonsense written by someone else.
const LATEST_DUE: Duration = Duration::from_secs(169 * 3600);
/// After the longest request timeout, how long shutdown waits for the
/// records of attempts in flight.
const RECORD_GRACE: Duration = Duration::from_secs(15);
/// How long a deposed leader tries to record outcomes it already has (its
/// writes are conditional, so they cannot overwrite the new leader's).
const LOST_GRACE: Duration = Duration::from_secs(5);
/// Whole deliveries waiting for a slot at most; more wait in brief.
const MAX_WAITING_WHOLE: usize = 1024;
/// A delivery read when due counts as due this early (clocks of writers differ).
const DUE_TOLERANCE: Duration = Duration::from_secs(1);
/// How often finished Deliveries are checked against the retention policy.
const RETENTION_SWEEP: Duration = Duration::from_secs(5);

type Key = (String, String);

/// What the controller decides for every engine it runs.
#[derive(Clone)]
pub struct Options {
    /// Requests in flight at once, shared fairly by tenants and all engines.
    pub global: Arc<slots::Slots>,
    pub leadership: Leadership,
    pub egress_floor: crate::egress::Floor,
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
    pub(crate) queue: Arc<dyn crate::store::Queue>,
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

/// Where a tracked delivery is.
enum Slot {
    Queued {
        timer: delay_queue::Key,
        delivery: Held,
    },
    /// An attempt is running; `latest` is the newest object seen meanwhile.
    InFlight {
        latest: Option<Arc<Delivery>>,
    },
    /// Due, but an earlier delivery with the same ordering key is
    /// unfinished: queued again the moment that one finishes.
    Waiting {
        delivery: Held,
    },
}

/// A delivery due further ahead than this is held in brief and read again
/// when due.
const WHOLE_WITHIN: Duration = Duration::from_secs(30);

/// A tracked delivery as held until its attempt: the whole object when it
/// is due soon (no read before sending), else only what the schedule needs,
/// so a backlog of 100,000 Retrying deliveries costs megabytes, not
/// gigabytes. A brief one is read from the API server when it is due.
#[derive(Clone)]
enum Held {
    Whole(Arc<Delivery>),
    Brief(Arc<Brief>),
}

/// What the schedule needs of a delivery.
struct Brief {
    webhook: String,
    attempts: u32,
    resource_version: Option<String>,
    waiting_for: Option<String>,
}

impl Held {
    /// How to hold `delivery`, due in `delay`.
    fn of(delivery: Arc<Delivery>, delay: Duration) -> Held {
        if delay <= WHOLE_WITHIN {
            return Held::Whole(delivery);
        }
        Held::brief(&delivery)
    }

    fn brief(delivery: &Delivery) -> Held {
        Held::Brief(Arc::new(Brief {
            webhook: delivery.spec.webhook.clone(),
            attempts: attempts(delivery),
            resource_version: delivery.resource_version(),
            waiting_for: delivery.status.as_ref().and_then(|s| s.waiting_for.clone()),
        }))
    }

    fn webhook(&self) -> &str {
        match self {
            Held::Whole(d) => &d.spec.webhook,
            Held::Brief(b) => &b.webhook,
        }
    }

    fn attempts(&self) -> u32 {
        match self {
            Held::Whole(d) => attempts(d),
            Held::Brief(b) => b.attempts,
        }
    }

    fn resource_version(&self) -> Option<String> {
        match self {
            Held::Whole(d) => d.resource_version(),
            Held::Brief(b) => b.resource_version.clone(),
        }
    }

    fn waiting_for(&self) -> Option<&str> {
        match self {
            Held::Whole(d) => d.status.as_ref().and_then(|s| s.waiting_for.as_deref()),
            Held::Brief(b) => b.waiting_for.as_deref(),
        }
    }
}

/// When `delivery` should next be attempted, or `None` if it is finished
/// (and no redelivery was asked for).
pub fn due_at(delivery: &Delivery) -> Option<Timestamp> {
    if attempt::redelivery_request(delivery).is_some() {
        return Some(Timestamp::UNIX_EPOCH);
    }
    match delivery.status.as_ref() {
        None => Some(Timestamp::UNIX_EPOCH),
        Some(s) if s.phase.is_finished() => None,
        Some(s) => match s.phase {
            Phase::Retrying => Some(s.next_attempt_at.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH)),
            _ => Some(Timestamp::UNIX_EPOCH),
        },
    }
}

fn attempts(delivery: &Delivery) -> u32 {
    delivery.status.as_ref().map(|s| s.attempt_count).unwrap_or(0)
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
            delivery_budget,
            store,
        } = options;
        let (deliveries, queue) = (store.deliveries(&client), store.queue(&client));
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
            http: http::Clients::default(),
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
            queue,
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

    /// Delivers until `shutdown` resolves, then waits for the attempts in
    /// flight to be recorded (or, when leadership was lost, for a short
    /// while). `namespace` limits the watch.
    pub async fn run(self: Arc<Self>, namespace: Option<String>, shutdown: impl std::future::Future<Output = ()>) {
        // Each Delivery is decoded on its own: one that cannot be is
        // reported and skipped, never fatal to the watch.
        let api: Api<DeserializeGuard<Delivery>> = match &namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Key, attempt::Outcome, Held)>();
        let mut state = Tracking::default();
        // Keys seen during a (re)list; those not seen were deleted meanwhile.
        let mut relisting: Option<HashSet<Key>> = None;
        let mut finished = retention::Index::default();
        let mut reported_pending = 0i64;
        let mut sweep = tokio::time::interval(RETENTION_SWEEP);
        let summaries = {
            let engine = self.clone();
            tokio::spawn(async move { engine.summaries.run().await })
        };
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = events.next() => {
                    let Some(event) = event else { break };
                    let event = match event {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(error = %e, "delivery watch error; retrying");
                            continue;
                        }
                    };
                    match event {
                        watcher::Event::Init => {
                            relisting = Some(HashSet::new());
                            finished.clear();
                        }
                        watcher::Event::InitApply(DeserializeGuard(d)) => {
                            let Some(d) = self.decoded(d) else { continue };
                            if let Some(seen) = relisting.as_mut() {
                                seen.insert(key_of(&d));
                            }
                            index_finished(&d, &mut finished);
                            self.consider(slim(d), &mut state);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = relisting.take() {
                                let gone: Vec<Key> = state.tracked.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                                for key in gone {
                                    self.forget(&key, &mut state);
                                }
                            }
                        }
                        watcher::Event::Apply(DeserializeGuard(d)) => {
                            let Some(d) = self.decoded(d) else { continue };
                            index_finished(&d, &mut finished);
                            self.consider(slim(d), &mut state);
                        }
                        watcher::Event::Delete(DeserializeGuard(d)) => {
                            let key = match &d {
                                Ok(d) => {
                                    finished.forget(d);
                                    key_of(d)
                                }
                                Err(invalid) => (
                                    invalid.metadata.namespace.clone().unwrap_or_default(),
                                    invalid.metadata.name.clone().unwrap_or_default(),
                                ),
                            };
                            self.forget(&key, &mut state);
                        }
                    }
                }
                Some(expired) = state.queue.next(), if !state.queue.is_empty() => {
                    let key = expired.into_inner();
                    if let Some(Slot::Queued { delivery, .. }) = state.tracked.remove(&key) {
                        if let Some(blocker) = state.order.blocker(&key) {
                            self.note_waiting(&key, &delivery, &blocker);
                            state.tracked.insert(key, Slot::Waiting { delivery });
                            continue;
                        }
                        state.tracked.insert(key.clone(), Slot::InFlight { latest: None });
                        let early = state.cancelling.remove(&key);
                        self.clone().spawn_attempt(key, delivery, early, done_tx.clone());
                    }
                }
                _ = sweep.tick() => {
                    self.count_webhooks();
                    let policy_of = |ns: &str, webhook: &str| {
                        let hub = self
                            .webhooks
                            .get(&ObjectRef::new(webhook).within(ns))
                            .and_then(|w| self.hubs.get(&ObjectRef::new(&w.spec.hub).within(ns)));
                        retention::Policy::of(hub.as_deref())
                    };
                    let expired = finished.sweep(policy_of, Timestamp::now());
                    if !expired.is_empty() {
                        let client = self.client.clone();
                        tokio::spawn(delete_expired(client, expired));
                    }
                }
                Some((key, outcome, sent)) = done_rx.recv() => {
                    let latest = match state.tracked.remove(&key) {
                        Some(Slot::InFlight { latest }) => latest,
                        _ => None,
                    };
                    self.settle(key, outcome, sent, latest, &mut state);
                }
            }
            // Several engines (one per namespace) share the gauge: add deltas.
            let pending = state.tracked.len() as i64;
            self.metrics.pending.inc_by(pending - reported_pending);
            reported_pending = pending;
        }
        self.metrics.pending.dec_by(reported_pending);
        self.drain().await;
        summaries.abort();
        if !self.leadership.is_lost() {
            self.summaries.flush().await;
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

    /// A Delivery from the watch, or `None` (reported) if it could not be decoded.
    fn decoded(&self, d: Result<Delivery, kube::core::error_boundary::InvalidObject>) -> Option<Delivery> {
        match d {
            Ok(d) => Some(d),
            Err(invalid) => {
                self.metrics.invalid_deliveries.inc();
                let (ns, name) = (
                    invalid.metadata.namespace.clone().unwrap_or_default(),
                    invalid.metadata.name.clone().unwrap_or_default(),
                );
                tracing::error!(delivery = %name, namespace = %ns, error = %invalid.error, "a Delivery cannot be decoded; skipped");
                self.report(
                    &ns,
                    &name,
                    format!("the Delivery cannot be decoded and is skipped: {}", invalid.error),
                );
                None
            }
        }
    }

    /// A Warning Event on a Delivery that is malformed (never fails the caller).
    fn report(&self, ns: &str, name: &str, note: String) {
        let recorder = self.recorder.clone();
        let reference = ObjectReference {
            api_version: Some(Delivery::api_version(&()).into()),
            kind: Some(Delivery::kind(&()).into()),
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        };
        tokio::spawn(async move {
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidDelivery".into(),
                note: Some(note),
                action: "Schedule".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish an InvalidDelivery event");
            }
        });
    }

    /// What to do once an attempt is over.
    fn settle(
        self: &Arc<Self>,
        key: Key,
        outcome: attempt::Outcome,
        sent: Held,
        latest: Option<Arc<Delivery>>,
        state: &mut Tracking,
    ) {
        match outcome {
            attempt::Outcome::Recorded(stored, deactivation) => {
                let deactivating = deactivation.is_some();
                if let Some(deactivation) = &deactivation {
                    self.mark_deactivated(&key.0, sent.webhook(), deactivation);
                }
                {
                    let (engine, stored) = (self.clone(), stored.clone());
                    tokio::spawn(async move { engine.after_record(&stored, deactivation).await });
                }
                // The stored object is newer than anything the watch
                // delivered during the attempt.
                self.consider(slim(*stored), state);
                if deactivating {
                    // Its other pending deliveries: attempted now, which
                    // records them Cancelled with the reason.
                    for (k, slot) in state.tracked.iter_mut() {
                        if let Slot::Queued { timer, delivery } = slot
                            && k.0 == key.0
                            && delivery.webhook() == sent.webhook()
                        {
                            state.queue.reset(timer, Duration::ZERO);
                            state.cancelling.insert(k.clone());
                        }
                    }
                }
            }
            attempt::Outcome::Superseded(stored) => self.consider(slim(*stored), state),
            attempt::Outcome::Gone | attempt::Outcome::NotSent => {}
            attempt::Outcome::Deferred(why) => {
                tracing::warn!(delivery = %key.1, namespace = %key.0, reason = %why, "nothing sent; trying again shortly");
                let timer = state.queue.insert(key.clone(), DEFER);
                state.tracked.insert(
                    key,
                    Slot::Queued {
                        timer,
                        delivery: latest.map(Held::Whole).unwrap_or(sent),
                    },
                );
            }
            attempt::Outcome::Unrecorded(why) => {
                tracing::error!(delivery = %key.1, namespace = %key.0, reason = %why, "an attempt's outcome is not recorded");
                // Not attempted again until the object changes: a record
                // the API server refuses must not become a resend loop.
                let version = match latest {
                    Some(d) => d.resource_version(),
                    None => sent.resource_version(),
                };
                state.held.insert(key, version);
            }
        }
    }

    /// Tracks, reschedules or drops a delivery after seeing its latest state.
    fn consider(&self, delivery: Arc<Delivery>, state: &mut Tracking) {
        let key = key_of(&delivery);
        if let Some(version) = state.held.get(&key) {
            if *version == delivery.resource_version() {
                return;
            }
            state.held.remove(&key);
        }
        let Some(due) = due_at(&delivery) else {
            self.forget(&key, state);
            return;
        };
        match state.tracked.get_mut(&key) {
            Some(Slot::InFlight { latest }) => {
                *latest = Some(delivery);
                return;
            }
            Some(Slot::Waiting { delivery: waiting, .. }) => {
                // Still waiting for the earlier one, for as long as that
                // takes: in brief.
                *waiting = Held::brief(&delivery);
                return;
            }
            Some(Slot::Queued { delivery: queued, .. }) if attempts(&delivery) < queued.attempts() => {
                // An older state than the one we hold (a late watch event).
                return;
            }
            _ => {}
        }
        // Its place is fixed by stored state: worked out (payload parsed)
        // once per delivery, not on every watch event.
        if !state.order.contains(&key)
            && let Some(group) = self.ordering_group(&delivery)
        {
            state.order.enter(key.clone(), group, &delivery);
        }
        let now = Timestamp::now();
        let problems = status_problems(&delivery, now);
        if !problems.is_empty() && state.reported.insert((key.clone(), delivery.resource_version())) {
            self.metrics.invalid_deliveries.inc();
            let problems = problems.join("; ");
            tracing::warn!(delivery = %key.1, namespace = %key.0, %problems, "a Delivery's status makes no sense; scheduling it within the allowed bounds");
            self.report(&key.0, &key.1, format!("status makes no sense: {problems}"));
        }
        // Clamped: a far-future time written by anyone must not stall (or,
        // past the timer wheel's range, crash) the engine.
        let delay = Duration::try_from(due.duration_since(now))
            .unwrap_or_default()
            .min(LATEST_DUE);
        let delivery = Held::of(delivery, delay);
        match state.tracked.get_mut(&key) {
            Some(Slot::Queued {
                timer,
                delivery: queued,
            }) => {
                state.queue.reset(timer, delay);
                *queued = delivery;
            }
            _ => {
                let timer = state.queue.insert(key.clone(), delay);
                state.tracked.insert(key, Slot::Queued { timer, delivery });
            }
        }
    }

    /// Stops tracking a delivery (finished or gone) and lets the next one of
    /// its ordering key, if it was waiting, go now.
    fn forget(&self, key: &Key, state: &mut Tracking) {
        state.untrack(key);
        let Some(next) = state.order.leave(key) else { return };
        if let Some(Slot::Waiting { delivery, .. }) = state.tracked.remove(&next) {
            let timer = state.queue.insert(next.clone(), Duration::ZERO);
            state.tracked.insert(next, Slot::Queued { timer, delivery });
        }
    }

    /// The ordering group of a delivery whose webhook orders by a key that
    /// this delivery's event has.
    fn ordering_group(&self, delivery: &Delivery) -> Option<ordering::Group> {
        let ns = delivery.namespace().unwrap_or_default();
        let webhook = self.webhooks.get(&ObjectRef::new(&delivery.spec.webhook).within(&ns))?;
        let path = &webhook.spec.ordering.as_ref()?.key;
        let document = request::event_document(delivery).ok()?;
        let value = crate::filters::first_value(path, &document).ok()??;
        Some((ns, delivery.spec.webhook.clone(), value))
    }

    /// Says in the Delivery's status which one it waits for (once).
    fn note_waiting(&self, key: &Key, delivery: &Held, blocker: &str) {
        if delivery.waiting_for() == Some(blocker) {
            return;
        }
        let api: Api<Delivery> = Api::namespaced(self.client.clone(), &key.0);
        let (name, patch) = (
            key.1.clone(),
            serde_json::json!({ "status": { "waitingFor": blocker } }),
        );
        tokio::spawn(async move {
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(delivery = %name, error = %e, "could not note what the delivery waits for");
            }
        });
    }

    /// Makes an attempt of a due delivery (or, `early`, of one brought
    /// forward to be cancelled with its deactivated webhook).
    async fn read_brief(&self, key: &Key, brief: &Brief) -> Result<Option<Delivery>, String> {
        let params = brief
            .resource_version
            .as_deref()
            .map(kube::api::GetParams::at)
            .unwrap_or_default();
        attempt::read_with::<Delivery>(self, &key.0, &key.1, &params).await
    }

    fn spawn_attempt(
        self: Arc<Self>,
        key: Key,
        held: Held,
        early: bool,
        done: mpsc::UnboundedSender<(Key, attempt::Outcome, Held)>,
    ) {
        let tracker = self.in_flight.clone();
        tracker.spawn(async move {
            // A whole object waits for a slot only while few do: past that
            // it waits in brief and is read when its turn comes, so a
            // backlog coming due at once costs little memory.
            let (held, waiting) = match held {
                Held::Whole(d) if self.waiting_whole.fetch_add(1, AtomicOrdering::Relaxed) >= MAX_WAITING_WHOLE => {
                    self.waiting_whole.fetch_sub(1, AtomicOrdering::Relaxed);
                    (Held::brief(&d), false)
                }
                Held::Whole(d) => (Held::Whole(d), true),
                brief => (brief, false),
            };
            // The webhook's own limit first: waiting for it holds no global
            // permit, so a slow webhook cannot starve the others.
            let webhook_limit = self.webhook_limit(&key.0, held.webhook());
            let permits = async {
                let w = webhook_limit.acquire_owned().await;
                let g = self.global.acquire(&key.0).await;
                (w, g)
            };
            let permits = tokio::select! {
                p = permits => Some(p),
                _ = self.stop_starting.cancelled() => None,
            };
            if waiting {
                self.waiting_whole.fetch_sub(1, AtomicOrdering::Relaxed);
            }
            let Some(_permits) = permits.filter(|_| !self.stop_starting.is_cancelled()) else {
                return;
            };
            // Boxed: a task waiting for its slot holds only what is above.
            Box::pin(self.clone().attempt_now(key, held, early, done)).await;
        });
    }

    /// The attempt of a delivery holding its slots. A brief one is read
    /// only now (a backlog coming due at once is read as fast as it can be
    /// sent, not all at once), from the API server's cache but never older
    /// than the version the engine saw: as fresh as holding it whole would
    /// have been, without a round trip to etcd.
    async fn attempt_now(
        self: Arc<Self>,
        key: Key,
        held: Held,
        early: bool,
        done: mpsc::UnboundedSender<(Key, attempt::Outcome, Held)>,
    ) {
        let delivery = match &held {
            Held::Whole(d) => d.clone(),
            Held::Brief(brief) => match self.read_brief(&key, brief).await {
                Ok(Some(d)) if due_at(&d).is_some_and(|due| early || due <= Timestamp::now() + DUE_TOLERANCE) => {
                    slim(d)
                }
                // Changed meanwhile (finished, or due later): rescheduled.
                Ok(Some(d)) => {
                    let _ = done.send((key, attempt::Outcome::Superseded(Box::new(d)), held));
                    return;
                }
                Ok(None) => {
                    let _ = done.send((key, attempt::Outcome::Gone, held));
                    return;
                }
                Err(why) => {
                    let _ = done.send((key, attempt::Outcome::Deferred(why), held));
                    return;
                }
            },
        };
        let outcome = attempt::run(&self, &delivery, None).await;
        let _ = done.send((key, outcome, Held::Whole(delivery)));
    }
}

/// The engine's schedule: what it tracks and when each is due.
#[derive(Default)]
struct Tracking {
    tracked: HashMap<Key, Slot>,
    queue: DelayQueue<Key>,
    /// Deliveries whose outcome could not be recorded, with the
    /// resourceVersion they had: not attempted again until it changes.
    held: HashMap<Key, Option<String>>,
    /// Malformed statuses already reported (by resourceVersion).
    reported: HashSet<(Key, Option<String>)>,
    /// Unfinished deliveries of ordered webhooks, per key, in accept order.
    order: ordering::Order,
    /// Deliveries brought forward because their webhook was deactivated:
    /// attempted (and so cancelled) although not due.
    cancelling: HashSet<Key>,
}

impl Tracking {
    fn untrack(&mut self, key: &Key) {
        if let Some(Slot::Queued { timer, .. }) = self.tracked.remove(key) {
            self.queue.remove(&timer);
        }
        self.held.remove(key);
        self.cancelling.remove(key);
        self.reported.retain(|(k, _)| k != key);
    }
}

/// What is wrong with a Delivery's status, as written by anyone with
/// `deliveries/status` rights (the engine schedules it within bounds anyway).
pub fn status_problems(delivery: &Delivery, now: Timestamp) -> Vec<String> {
    let Some(status) = delivery.status.as_ref() else {
        return vec![];
    };
    let mut problems = vec![];
    if let Some(next) = &status.next_attempt_at
        && next.0.duration_since(now) > jiff::SignedDuration::try_from(LATEST_DUE).expect("fits")
    {
        problems.push(format!(
            "nextAttemptAt {} is more than {}h ahead; it is treated as {}h ahead",
            next.0,
            LATEST_DUE.as_secs() / 3600,
            LATEST_DUE.as_secs() / 3600
        ));
    }
    if let Some(start) = status.round_start
        && (start == 0 || start > status.attempt_count.saturating_add(1))
    {
        problems.push(format!(
            "roundStart {start} is not between 1 and attemptCount + 1 ({}); the round is taken to start at attempt 1",
            status.attempt_count.saturating_add(1)
        ));
    }
    problems
}

/// A delivery as held in memory until its attempt: without managedFields,
/// which are kilobytes per object and never read here.
fn slim(mut delivery: Delivery) -> Arc<Delivery> {
    delivery.metadata.managed_fields = None;
    Arc::new(delivery)
}

/// Notes a finished delivery for retention (the engine sees every one).
fn index_finished(delivery: &Delivery, index: &mut retention::Index) {
    if delivery.status.as_ref().is_some_and(|s| s.phase.is_finished()) && due_at(delivery).is_none() {
        index.finished(delivery);
    } else {
        index.forget(delivery);
    }
}

async fn delete_expired(client: Client, expired: Vec<(String, Vec<String>)>) {
    for (ns, names) in expired {
        let api: Api<Delivery> = Api::namespaced(client.clone(), &ns);
        for name in names {
            match api.delete(&name, &Default::default()).await {
                Ok(_) => tracing::debug!(delivery = %name, namespace = %ns, "retention: deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(delivery = %name, namespace = %ns, error = %e, "retention: could not delete"),
            }
        }
    }
}

fn key_of(d: &Delivery) -> Key {
    (d.namespace().unwrap_or_default(), d.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{DeliverySpec, DeliveryStatus, EventRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn delivery(status: Option<DeliveryStatus>) -> Delivery {
        let mut d = Delivery::new(
            "d",
            DeliverySpec {
                webhook: "w".into(),
                hub: "h".into(),
                event: EventRef {
                    id: "e".into(),
                    name: "n".into(),
                    received_at: MicroTime(Timestamp::now()),
                },
                payload: "{}".into(),
            },
        );
        d.status = status;
        d
    }

    #[test]
    fn new_and_pending_deliveries_are_due_now() {
        assert_eq!(due_at(&delivery(None)), Some(Timestamp::UNIX_EPOCH));
        assert_eq!(
            due_at(&delivery(Some(DeliveryStatus::default()))),
            Some(Timestamp::UNIX_EPOCH)
        );
    }

    #[test]
    fn retrying_deliveries_are_due_at_next_attempt_and_finished_never() {
        let at: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let retrying = DeliveryStatus {
            phase: Phase::Retrying,
            next_attempt_at: Some(MicroTime(at)),
            ..Default::default()
        };
        assert_eq!(due_at(&delivery(Some(retrying))), Some(at));
        for phase in [Phase::Succeeded, Phase::Failed, Phase::Cancelled] {
            assert_eq!(
                due_at(&delivery(Some(DeliveryStatus {
                    phase,
                    ..Default::default()
                }))),
                None
            );
        }
    }
}
